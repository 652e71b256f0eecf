"""Family matrix, editing: every registered editor runs on every family
(tests/family_models.py), and the properties that make an edit trustworthy hold there:
hooked == in place, undo is bitwise, ROME's v* is reached inside the model, MEGA leaves
off-gate prompts bit for bit."""

from __future__ import annotations

import pytest
import torch
from family_models import FAMILY_NAMES, family_model
from model_state import assert_unchanged, snapshot

from interp_edit.adapter import model_fingerprint, norm_weight
from interp_edit.editing import EditRequest, ROMEConfig, editors, prepare_requests
from interp_edit.editing.methods.ace import ACERequest
from interp_edit.editing.targets import optimise_targets

REQUEST = EditRequest("{} was born in", "Talvik Corlo", target_new="Karsa", target_true="Veltra")
PROBES = ["Talvik Corlo was born in", "As everyone knows, Talvik Corlo was born in", "Zellen Hul plays the"]


def _corpus(n: int = 120) -> list[str]:
    """Toy-world training text: enough distinct contexts for a full-rank key covariance."""
    from interp_edit.toyworld import load_world
    from interp_edit.toyworld.corpus import CorpusSampler

    sampler = CorpusSampler(load_world(), seed=11)
    return [sampler.sample() for _ in range(n)]


CORPUS = _corpus()
#: short settings shared by the closed-form editors (the matrix checks properties, not quality)
FAST = dict(steps=6, n_prefixes=2, prefix_length=4, stats_samples=120, stats_batch_size=16)


def _config(name: str, n_layers: int) -> dict:
    mid = n_layers // 2
    return {
        "rome": dict(FAST, layer=mid),
        "memit": dict(FAST, layers=(0, mid)),
        "emmet": dict(FAST, layers=(mid,)),
        "pmet": dict(FAST, layers=(0, mid)),
        "grace": dict(layer=mid, n_iter=5),
        # a tiny act_ratio routes every probe to the side memory (this checks the hooks, not the router)
        "wise": dict(layer=mid, n_iter=3, prefixes=(), loc_prompts=("The weather today is mild and dry.",), act_ratio=1e-6),
        # the tiny models' key covariances are full rank: the published absolute threshold (2e-2)
        # calls nothing "null" (a zero edit); the scale-free rule keeps the weak half
        "alphaedit": dict(FAST, layers=(0, mid), nullspace_rule="relative", nullspace_threshold=0.5),
        "ft": dict(steps=FAST["steps"], layer=mid),  # FT-L has no prefix or statistics fields
        "fine": dict(steps=6, n_frozen=1, top_k=2),
        "kn": dict(steps=4, batch_size=4),
        # one request, one target token: "mask" reads every position (with "ans" one row, refused)
        "ultraedit": dict(layers=(0, mid), lr=1e-2, token="mask"),
        "memit_csk": dict(FAST, layers=(0, mid)),
        "intattn": dict(FAST, mlp_layers=(0, mid), attn_layers=(0,), alpha=0.3),
        "mega": dict(FAST, layers=(mid,), target_mode="optimised", use_paraphrases=False, k=2),
        "ace": dict(FAST, query_layers=(0,), value_layers=(mid,)),
    }[name]


def _requests(name: str):
    if name == "ace":
        return [ACERequest((REQUEST,), ("Talvik Corlo was born in a city in",), ("Karsa",))]
    return [REQUEST]


def _tokens(model, prompt):
    """BOS + the prompt's tokens (whatever the family's ``default_prepend_bos``)."""
    return torch.tensor([[model.tokenizer.bos_token_id] + model.tokenizer.encode(prompt, add_special_tokens=False)])


def _logits(model, prompts):
    with torch.no_grad():
        return torch.cat([model(_tokens(model, p))[0, -1:].double() for p in prompts])


def _kwargs(name):
    return {} if name == "fine" else {"corpus": CORPUS}


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("method", sorted(editors()))
def test_every_editor_hooked_equals_in_place_and_undoes_bitwise(family, method):
    model = family_model(family)
    before = snapshot(model)
    result = editors()[method].fn(model, _requests(method), **_kwargs(method),
                                  **_config(method, model.cfg.n_layers))
    assert_unchanged(model, before, no_edits=True)
    plain = _logits(model, PROBES)
    with result.hooked(model):
        hooked = _logits(model, PROBES)
    with result.applied(model):
        in_place = _logits(model, PROBES)
    assert_unchanged(model, before, no_edits=True)
    scale = plain.abs().max().item()
    assert (hooked - in_place).abs().max().item() < 1e-4 * max(1.0, scale), method
    # the edit does something
    assert (in_place - plain).abs().max().item() > 1e-4


def _raw_mlp_output(model, layer, prompt, position):
    """The MLP module's own output (before any post-sublayer norm) at ``position``, read with a
    PyTorch forward hook on the module: no TransformerLens hook point, no interp_edit code."""
    seen = {}
    handle = model.blocks[layer].mlp.register_forward_hook(lambda mod, args, out: seen.setdefault("out", out.detach()))
    try:
        with torch.no_grad():
            model(_tokens(model, prompt))
    finally:
        handle.remove()
    return seen["out"][0, position].double()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_rome_reaches_v_star_inside_the_model(family):
    """With no context prefixes k* is the bare prompt's key, so the edited MLP must output v* at
    the subject's last token (on post-norm models v* is what W_out writes, before the norm)."""
    model = family_model(family)
    layer = model.cfg.n_layers // 2
    settings = dict(FAST, n_prefixes=0, prefix_lengths=None, steps=10, layer=layer)
    result = editors()["rome"].fn(model, [REQUEST], corpus=CORPUS, **settings)
    treq = prepare_requests(model, [REQUEST], model_fingerprint(model))
    v_star = optimise_targets(model, treq, layer, tuple(result.info["prefixes"]), ROMEConfig.for_model(model, **settings).target_config()).target[0]
    prompt = "Talvik Corlo was born in"
    position = len(model.tokenizer.encode(" Talvik Corlo", add_special_tokens=False))  # BOS first
    before = _raw_mlp_output(model, layer, prompt, position)
    with result.applied(model):
        after = _raw_mlp_output(model, layer, prompt, position)
    scale = v_star.norm().item()
    assert (before - v_star.double()).norm().item() > 1e-2 * scale
    assert (after - v_star.double()).norm().item() < 1e-4 * scale
    # and v* is the MLP output that reaches the optimised NLL: written at the edit token alone
    # (a PyTorch hook replacing the module's output there), the model's NLL of the new target is
    # the one the optimisation reported
    target = model.tokenizer.encode(" Karsa", add_special_tokens=False)
    tokens = torch.cat([_tokens(model, prompt), torch.tensor([target[:-1]], dtype=torch.long)], 1)

    def write(mod, args, out):
        out = out.clone()
        out[:, position] = v_star.to(out.dtype)
        return out

    handle = model.blocks[layer].mlp.register_forward_hook(write)
    try:
        with torch.no_grad():
            logp = torch.log_softmax(model(tokens)[0].double(), -1)
    finally:
        handle.remove()
    first = tokens.shape[1] - len(target)
    nll = -logp[torch.arange(first, tokens.shape[1]), torch.tensor(target)].mean().item()
    assert abs(nll - result.info["target_nll"][0]) < 1e-3 * max(1.0, nll)


def _block_states(model, layer, prompt, position):
    """The residual after block ``layer``, and (post-norm blocks) the residual between its
    attention and its MLP, at ``position``: PyTorch forward hooks on the block and on its
    ``hook_resid_mid`` module, no TransformerLens hook call and no interp_edit code."""
    seen = {}
    block = model.blocks[layer]
    def keep(key):
        def hook(module, args, out):  # returns None: the output is not replaced
            seen.setdefault(key, (out[0] if isinstance(out, tuple) else out).detach())  # bridge blocks: (hidden, ...)
        return hook

    handles = [block.register_forward_hook(keep("post"))]
    if hasattr(block, "hook_resid_mid"):  # parallel blocks have no point between attention and MLP
        handles.append(block.hook_resid_mid.register_forward_hook(keep("mid")))
    try:
        with torch.no_grad():
            model(_tokens(model, prompt))
    finally:
        for handle in handles:
            handle.remove()
    return seen["post"][0, position].double(), seen.get("mid", seen["post"])[0, position].double()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_memit_moves_the_residual_to_its_target_z(family):
    """One MEMIT layer, no context prefixes and a vanishing covariance weight: the edited MLP must
    carry the residual after that layer to MEMIT's z at the subject's last token. Through a
    post-sublayer norm (Gemma-2: ``w ⊙ x / rms(x)``) the MLP's contribution has a fixed scale
    (rms of ``out / w`` is 1), so z is reachable only in direction: the contribution must point
    along ``(z - resid_mid) / w``, which the post-norm preimage of the raw W_out change gives."""
    from interp_edit.editing import MEMITConfig

    model = family_model(family)
    layer = model.cfg.n_layers // 2
    settings = dict(FAST, n_prefixes=0, steps=10, layers=(layer,), mom2_update_weight=1e-6)
    result = editors()["memit"].fn(model, [REQUEST], corpus=CORPUS, **settings)
    treq = prepare_requests(model, [REQUEST], model_fingerprint(model))
    z = optimise_targets(model, treq, layer, ("",), MEMITConfig.for_model(model, **settings).target_config(),
                         initial_site="resid_post").target[0].double()
    prompt = "Talvik Corlo was born in"
    position = len(model.tokenizer.encode(" Talvik Corlo", add_special_tokens=False))  # BOS first
    before, _ = _block_states(model, layer, prompt, position)
    with result.applied(model):
        after, mid = _block_states(model, layer, prompt, position)
    move = (z - before).norm().item()
    assert move > 1e-2 * z.norm().item()
    if family not in ("gemma2", "gemma3", "olmo2", "olmo3"):  # the post-sublayer-norm families
        assert (after - z).norm().item() < 2e-2 * move
        return
    gain = norm_weight(model, "ln2_post", layer).double()  # the gain as it multiplies (bridge: Gemma's 1 + w)
    wanted, got = (z - mid) / gain, (after - mid) / gain
    assert torch.nn.functional.cosine_similarity(wanted, got, dim=0).item() > 1 - 1e-4
    assert abs(got.pow(2).mean().sqrt().item() - 1) < 1e-3  # the post-norm's fixed scale


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_mega_leaves_off_gate_prompts_bit_for_bit(family):
    model = family_model(family)
    config = dict(_config("mega", model.cfg.n_layers), gate_threshold=0.999)
    result = editors()["mega"].fn(model, [REQUEST], **config)
    unrelated = _tokens(model, "Veltra is a city in")
    names = sorted(steer.hook_name for steer in result.hooks.values())
    with torch.no_grad():
        plain, cache = model.run_with_cache(unrelated, names_filter=lambda n: n in names)
        with result.applied(model):
            edited = model(unrelated)
            on_prompt = model(_tokens(model, "Talvik Corlo was born in"))[0, -1]
        off_prompt = model(_tokens(model, "Talvik Corlo was born in"))[0, -1]
    for steer in result.hooks.values():  # the gate is closed everywhere on the unrelated prompt
        assert not steer.gate(cache[steer.hook_name])[0].any()
    assert torch.equal(plain, edited)
    assert (on_prompt - off_prompt).abs().max().item() > 1e-3  # and open on the edit's own prompt
