"""The attribution analyses on every model family (tests/family_models.py), each checked against
an independent reference that runs the model with TransformerLens hooks and shares no code
with the function under test:

- DLA components sum to the (pre-cap) logit difference, per layer they equal the sublayer
  output read through the frozen final norm; the logit lens ends at the model's output;
- NLKA readout exact: a neuron's score is the log-prob change measured by running the model's
  own final norm (scale frozen) and unembedding on the base residual with and without that
  neuron's contribution, which is itself measured by running the layer with only that neuron
  active (post-sublayer norm scales frozen);
- layer scores, FFN and attention query shares and Q-V pathway weights: pre-activation changes
  measured by feeding each residual component into the layer with its input norm frozen;
- per-position attention-neuron ablation on grouped / multi-query attention equals changing
  only that query head's output by the pattern times the value change (which kv head each query
  head reads is found by running the model);
- attribution_diff runs (parallel blocks have no ``resid_mid``).

Besides the family matrix, ``postnorm`` is a Gemma-2-shaped HookedTransformer built directly
from a TransformerLens config (post-sublayer RMSNorms, attention and final-logit soft-caps at
small values so that they bite, GQA, gated MLP), so that post-norms and soft-caps are checked
whether or not the Hugging Face Gemma-2 model loads yet.
"""

from __future__ import annotations

import pytest
import torch
from family_models import BACKEND, FAMILY_NAMES, family_model, toy_tokenizer

from interp_edit import Neuron, ablate_neurons, direct_logit_attribution, logit_lens, neuron_attribution, qv_pathways
from interp_edit.adapter import hook_counts
from interp_edit.analysis import attribution_diff, layer_attribution_scores
from interp_edit.analysis.attribution import ScoredNeuron, attention_query_scores, ffn_query_layer_scores
from interp_edit.batching import prompt_tokens

PROMPT = "As everyone knows, Talvik Corlo was born in"
OTHER = "Talvik Corlo lives in"
#: and two families without TransformerLens' weight processing (norm gains and biases unfolded),
#: and the HookedTransformer-built ``postnorm`` model; on the bridge (never processed, no
#: HookedTransformer under TransformerLens 4) the bridge's families
CASES = FAMILY_NAMES + (("postnorm", "gptj-raw", "llama3-raw") if BACKEND == "hooked" else ())

pytestmark = pytest.mark.usefixtures("one_thread")


def _postnorm_model():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tok = toy_tokenizer()
    cfg = HookedTransformerConfig(
        n_layers=3, d_model=64, n_ctx=64, d_head=16, n_heads=4, d_mlp=128, d_vocab=len(tok), act_fn="gelu_pytorch_tanh",
        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=16, gated_mlp=True, n_key_value_heads=2,
        use_normalization_before_and_after=True, output_logits_soft_cap=3.0, attn_scores_soft_cap=5.0,
        original_architecture="Gemma2ForCausalLM", initializer_range=0.2, seed=0, device="cpu")
    model = HookedTransformer(cfg, tokenizer=tok)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".w"):
                p.uniform_(0.5, 1.5)
            elif name.rsplit(".", 1)[-1].startswith("b_"):
                p.normal_(0.0, 0.05)
    return model.eval()


_POSTNORM: list = []


@pytest.fixture(params=CASES)
def model(request):
    return _load(request.param)


def _load(family):
    if family == "postnorm":
        if not _POSTNORM:
            _POSTNORM.append(_postnorm_model())
        return _POSTNORM[0]
    if family.endswith("-raw"):
        return family_model(family.removesuffix("-raw"), processed=False)
    return family_model(family)


# --- independent references: the model run with TransformerLens hooks --------------------

def _clean(model, prompt=PROMPT):
    tokens = prompt_tokens(model, prompt)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    return tokens, logits, cache


def _frozen(cache, names):
    """Hooks returning the clean run's value at each of ``names`` (broadcast over a batch)."""
    def fix(act, hook):
        return cache[hook.name].expand_as(act).clone()

    return [(n, fix) for n in names]


def _post_scales(model, layer):
    return [n for n in model.hook_dict if n.startswith(f"blocks.{layer}.ln") and "_post.hook_scale" in n]


def _input_scales(model, layer, norm):
    """The input norm ``norm``'s (``ln1`` / ``ln2``) scale hook of ``layer`` to freeze; none in a
    block that has no input norm (OLMo-2: the sublayer reads the raw residual, and its only norms
    are the post-sublayer ones)."""
    name = f"blocks.{layer}.{norm}.hook_scale"
    if name in model.hook_dict:
        return [name]
    block = model.blocks[layer]
    assert getattr(block, norm, None) is None and getattr(block, f"{norm}_post", None) is not None, name
    return []


def _logit_scale(model) -> float:
    """What the model's logits are multiplied by after ``lm_head``, read from the Hugging Face
    config (Cohere's ``logit_scale``, Granite's ``1 / logits_scaling``); TransformerLens'
    ``unembed`` on the bridge is the bare ``lm_head``."""
    config = getattr(getattr(model, "original_model", None), "config", None)
    if config is None:
        return 1.0
    return float(getattr(config, "logit_scale", None) or 1.0) / float(getattr(config, "logits_scaling", None) or 1.0)


def _final_logprob(model, cache, residual, target):
    """log p(target) from a last-position residual: the model's own final norm (scale frozen at
    the clean run), unembedding and soft-cap, called as the model's own modules."""
    scale = cache["ln_final.hook_scale"][:, -1:]
    with torch.no_grad(), model.hooks(fwd_hooks=[("ln_final.hook_scale", lambda act, hook: scale)]):
        logits = model.unembed(model.ln_final(residual.reshape(1, 1, -1))) * _logit_scale(model)
    cap = model.cfg.output_logits_soft_cap
    if cap and cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return torch.log_softmax(logits[0, -1].double(), -1)[target].item()


def _ffn_vectors(model, tokens, cache, layer, units, pos):
    """Row r: what FFN neuron ``units[r]`` of ``layer`` at ``pos`` adds to the residual there
    (hook_mlp_out with only that activation kept minus with none, post-norm scale frozen)."""
    units = list(units)
    post = cache[f"blocks.{layer}.mlp.hook_post"]

    def only(act, hook):
        out = torch.zeros_like(act)
        for r, u in enumerate(units):
            out[r, pos, u] = post[0, pos, u]
        return out

    seen = {}
    batch = tokens.expand(len(units) + 1, -1)  # the last row keeps nothing
    hooks = [(f"blocks.{layer}.mlp.hook_post", only)] + _frozen(cache, _post_scales(model, layer))
    hooks.append((f"blocks.{layer}.hook_mlp_out", lambda act, hook: seen.setdefault("out", act.clone())))
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(batch, stop_at_layer=layer + 1)
    return seen["out"][:-1, pos] - seen["out"][-1:, pos]


def _attn_vector(model, tokens, cache, layer, head, dim, pos):
    """What attention neuron (layer, head, dim) from source ``pos`` adds to the residual at the
    last position: the pattern of (head, last query) set to α at ``pos`` only, z kept only at
    (last, head, dim), minus everything zero; post-norm scale frozen."""
    alpha = cache[f"blocks.{layer}.attn.hook_pattern"][0, head, -1, pos]

    def pattern(act, hook):
        out = torch.zeros_like(act)
        out[0, head, -1, pos] = alpha
        return out

    def z(act, hook):
        out = torch.zeros_like(act)
        out[0, -1, head, dim] = act[0, -1, head, dim]
        return out

    seen = {}
    batch = tokens.expand(2, -1)
    hooks = [(f"blocks.{layer}.attn.hook_pattern", pattern), (f"blocks.{layer}.attn.hook_z", z)]
    hooks += _frozen(cache, _post_scales(model, layer))
    hooks.append((f"blocks.{layer}.hook_attn_out", lambda act, hook: seen.setdefault("out", act.clone())))
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(batch, stop_at_layer=layer + 1)
    return seen["out"][0, -1] - seen["out"][1, -1]  # row 1 got z = 0 from the same hooks (only row 0 kept)


def _ffn_reads(model):
    return "hook_resid_pre" if model.cfg.parallel_attn_mlp else "hook_resid_mid"


def _pre_activation_changes(model, tokens, cache, layer, units, vectors, pos=-1):
    """[vector, unit]: how much ``vectors`` (each put alone at the FFN input of ``layer`` at
    ``pos``, ln2 scale frozen) move ``mlp.hook_pre[..., unit]`` (what the nonlinearity reads)."""
    rows = torch.cat([vectors, torch.zeros_like(vectors[:1])])
    site = f"blocks.{layer}.{_ffn_reads(model)}"

    def put(act, hook):
        out = act.clone()
        out[:, pos] = rows
        return out

    seen = {}
    hooks = [(site, put)] + _frozen(cache, _input_scales(model, layer, "ln2"))
    hooks.append((f"blocks.{layer}.mlp.hook_pre", lambda act, hook: seen.setdefault("pre", act.clone())))
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(tokens.expand(len(rows), -1), stop_at_layer=layer + 1)
    pre = seen["pre"][:, pos][:, list(units)]
    return pre[:-1] - pre[-1:]


def _kv_head_of(model, tokens, layer):
    """[n_heads]: the key/value head each query head of ``layer`` reads, found by running the
    model: a change to kv head k's values moves the outputs (``hook_z``) of the query heads that
    read it and no others (no assumption about how grouped heads are laid out)."""
    n_kv = _hook_shape(model, tokens, f"blocks.{layer}.attn.hook_v")[2]
    reads = torch.full((model.cfg.n_heads,), -1)
    for k in range(n_kv):
        def bump(act, hook, k=k):
            out = act.clone()
            out[:, :, k] += 1.0
            return out

        zs = {}
        for name, hooks in (("base", []), ("bumped", [(f"blocks.{layer}.attn.hook_v", bump)])):
            hooks = hooks + [(f"blocks.{layer}.attn.hook_z", lambda act, hook, name=name, zs=zs: zs.setdefault(name, act.clone()))]
            with torch.no_grad(), model.hooks(fwd_hooks=hooks):
                model(tokens, stop_at_layer=layer + 1)
        moved = (zs["bumped"] - zs["base"]).abs().amax(dim=(0, 1, 3)) > 1e-3  # [n_heads]
        assert torch.all(reads[moved] == -1), "a query head reads two kv heads"
        reads[moved] = k
    assert torch.all(reads >= 0), "a query head reads no kv head"
    return reads


def _hook_shape(model, tokens, name):
    seen = {}

    def keep(act, hook):
        seen["x"] = act.shape

    with torch.no_grad(), model.hooks(fwd_hooks=[(name, keep)]):
        model(tokens, stop_at_layer=int(name.split(".")[1]) + 1)
    return seen["x"]


def _value_changes(model, tokens, cache, layer, vectors, pos):
    """[vector, head, d_head]: how ``vectors`` (each alone at resid_pre of ``layer`` at ``pos``,
    ln1 scale frozen) move the values read by each query head (the kv head it reads, found by
    :func:`_kv_head_of`)."""
    rows = torch.cat([vectors, torch.zeros_like(vectors[:1])])

    def put(act, hook):
        out = act.clone()
        out[:, pos] = rows
        return out

    seen = {}
    hooks = [(f"blocks.{layer}.hook_resid_pre", put)] + _frozen(cache, _input_scales(model, layer, "ln1"))
    hooks.append((f"blocks.{layer}.attn.hook_v", lambda act, hook: seen.setdefault("v", act.clone())))
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(tokens.expand(len(rows), -1), stop_at_layer=layer + 1)
    v = seen["v"][:, pos][:, _kv_head_of(model, tokens, layer)]  # [row, query head, d_head]
    return v[:-1] - v[-1:]


def _components(model, cache):
    """The residual components at the last position: embeddings, then (attn_out, mlp_out) per layer."""
    embed = cache["hook_embed"][0, -1]
    if "hook_pos_embed" in cache:
        embed = embed + cache["hook_pos_embed"][0, -1]
    out = [embed]
    for layer in range(model.cfg.n_layers):
        out += [cache[f"blocks.{layer}.hook_attn_out"][0, -1], cache[f"blocks.{layer}.hook_mlp_out"][0, -1]]
    return torch.stack(out)


# --- tests -----------------------------------------------------------------------------------

def test_dla_components_sum_to_the_logit(model):
    tokens, logits, cache = _clean(model)
    res = direct_logit_attribution(model, PROMPT, "Karsa", "the")
    parts = res.embed + res.pos_embed + res.heads.sum().item() + res.attn_bias.sum().item() + res.mlp.sum().item() + res.constant
    assert parts == pytest.approx(res.total, abs=1e-4)
    t, f = (model.tokenizer.encode(" " + w, add_special_tokens=False)[0] for w in ("Karsa", "the"))
    raw = model.unembed(model.ln_final(cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]))[0, -1] * _logit_scale(model)
    cap = model.cfg.output_logits_soft_cap
    capped = cap * torch.tanh(raw / cap) if cap and cap > 0 else raw
    assert torch.allclose(capped, logits[0, -1], atol=1e-5)  # the reference is the model's output
    assert res.total == pytest.approx((raw[t] - raw[f]).item(), abs=1e-5)
    assert res.model_total == pytest.approx((logits[0, -1, t] - logits[0, -1, f]).item(), abs=1e-5)
    direction = (model.W_U[:, t] - model.W_U[:, f]) * _logit_scale(model)
    for layer in range(model.cfg.n_layers):
        for kind, got in (("attn", res.attn[layer]), ("mlp", res.mlp[layer])):
            x = cache[f"blocks.{layer}.hook_{kind}_out"][:, -1:]
            with torch.no_grad(), model.hooks(fwd_hooks=_frozen(cache, ["ln_final.hook_scale"])):
                lin = model.ln_final(torch.cat([x, torch.zeros_like(x)], 0).expand(-1, tokens.shape[1], -1).clone())
            ref = ((lin[0, -1] - lin[1, -1]) @ direction).item()
            assert got.item() == pytest.approx(ref, abs=1e-4), (kind, layer)


def test_logit_lens_ends_at_the_model_output(model):
    _, logits, _ = _clean(model)
    res = logit_lens(model, PROMPT, "Karsa", k=3)
    t = model.tokenizer.encode(" Karsa", add_special_tokens=False)[0]
    assert torch.allclose(res.target_probs[-1], torch.softmax(logits[0].double(), -1)[:, t].float(), atol=1e-6)


def test_nlka_scores_are_measured_log_prob_changes(model):
    tokens, logits, cache = _clean(model)
    res = neuron_attribution(model, PROMPT, None, keep_bias=True, top_k=3, n_tokens=0)
    t = res.target_id
    n = model.cfg.n_layers
    assert res.logprob == pytest.approx(torch.log_softmax(logits[0, -1].double(), -1)[t].item(), abs=1e-5)
    gen = torch.Generator().manual_seed(0)
    ffn = [(s.neuron.layer, s.neuron.index) for s in res.top_ffn[:2]]
    ffn += [(int(torch.randint(n, (1,), generator=gen)), int(torch.randint(model.cfg.d_mlp, (1,), generator=gen)))]
    for layer, unit in ffn:
        base = cache[f"blocks.{layer}.hook_resid_post"][0, -1] - cache[f"blocks.{layer}.hook_mlp_out"][0, -1]
        vec = _ffn_vectors(model, tokens, cache, layer, [unit], -1)[0]
        ref = _final_logprob(model, cache, base + vec, t) - _final_logprob(model, cache, base, t)
        assert res.ffn_scores[layer, unit].item() == pytest.approx(ref, abs=1e-5), ("ffn", layer, unit)
    attn = [(s.neuron.layer, s.neuron.head, s.neuron.index, s.neuron.pos) for s in res.top_attn[:2]]
    attn += [(n - 1, head, 3, 2) for head in range(model.cfg.n_heads)]  # every head: each reads its own kv head
    for layer, head, dim, pos in attn:
        base = cache[f"blocks.{layer}.hook_resid_pre"][0, -1]
        vec = _attn_vector(model, tokens, cache, layer, head, dim, pos)
        ref = _final_logprob(model, cache, base + vec, t) - _final_logprob(model, cache, base, t)
        assert res.attn_scores[layer, head, dim, pos].item() == pytest.approx(ref, abs=1e-5), ("attn", layer, head, dim, pos)
    # layer scores: attention then FFN, whatever the block order
    layers = layer_attribution_scores(model, PROMPT, t, keep_bias=True)
    for layer in range(n):
        pre, post = cache[f"blocks.{layer}.hook_resid_pre"][0, -1], cache[f"blocks.{layer}.hook_resid_post"][0, -1]
        mid = pre + cache[f"blocks.{layer}.hook_attn_out"][0, -1]
        lp = [_final_logprob(model, cache, x, t) for x in (pre, mid, post)]
        assert layers[layer].tolist() == pytest.approx([lp[1] - lp[0], lp[2] - lp[1]], abs=1e-5)


def test_ffn_query_shares_are_pre_activation_shares(model):
    """A value neuron's query shares: each residual component's part of its gate pre-activation
    (parallel blocks: never the same layer's attention, which the FFN does not read)."""
    tokens, _, cache = _clean(model)
    n = model.cfg.n_layers
    comps = _components(model, cache)  # [2n + 1, d_model]
    layer, unit = n - 1, 5
    x = cache[f"blocks.{layer}.{_ffn_reads(model)}"][0, -1]
    changes = _pre_activation_changes(model, tokens, cache, layer, [unit], torch.cat([comps, x[None]]))[:, 0]
    shares = changes[:-1] / changes[-1]
    read = 2 * layer + 1 + (0 if model.cfg.parallel_attn_mlp else 1)
    shares[read:] = 0.0  # components the FFN does not read
    assert shares.sum().item() == pytest.approx(1.0, abs=1e-4)  # the reference decomposes the input
    got, embed = ffn_query_layer_scores(model, cache, [ScoredNeuron(Neuron("ffn", layer, unit), 1.0, 0.0)])
    assert embed == pytest.approx(shares[0].item(), abs=1e-4)
    assert torch.allclose(got.flatten(), shares[1:].float(), atol=1e-4)


def test_attention_query_shares_are_value_shares(model):
    """FFN neuron (l', i) at source position p: its share of the value that attention neuron
    (l, h, j, p) reads, through the FFN's post-norm (if any) and the attention's input norm."""
    tokens, _, cache = _clean(model)
    layer, head, dim, pos = model.cfg.n_layers - 1, 1, 2, 3  # head 1: kv head 0 of 2 (a tiled mapping gives 1)
    x = cache[f"blocks.{layer}.hook_resid_pre"][0, pos]
    total_v = _value_changes(model, tokens, cache, layer, x[None], pos)[0, head, dim]
    got = attention_query_scores(model, cache, [ScoredNeuron(Neuron("attn", layer, dim, head=head, pos=pos), 1.0, 0.0)])
    for source in range(layer):
        units = list(range(0, model.cfg.d_mlp, 9))
        vectors = _ffn_vectors(model, tokens, cache, source, units, pos)
        ref = _value_changes(model, tokens, cache, layer, vectors, pos)[:, head, dim] / total_v
        assert torch.allclose(got[source, units], ref.float(), atol=1e-4), source
    assert torch.all(got[layer:] == 0)


def test_pathway_weights_are_pre_activation_changes(model):
    tokens, _, cache = _clean(model)
    res = qv_pathways(model, [PROMPT], n_value=4, top_pathways=6)
    assert res.pathways
    for p in res.pathways:
        vec = _ffn_vectors(model, tokens, cache, p.query.layer, [p.query.index], -1)
        ref = _pre_activation_changes(model, tokens, cache, p.value.layer, [p.value.index], vec)[0, 0].item()
        assert p.weight == pytest.approx(ref, rel=1e-4, abs=1e-5), p.label
    two = qv_pathways(model, [PROMPT, OTHER], n_value=4, top_pathways=3)
    assert two.pathway_weights.shape == (model.cfg.n_layers, model.cfg.d_mlp, 4)


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_per_position_attention_ablation_equals_value_ablation_for_one_query_head(model, mode):
    """Ablating attention neuron (l, h, j, p) sets the value query head h reads at source p,
    dim j, and nothing another head reads (grouped heads share a kv head): the reference adds
    pattern[h, q, p] * (new - old value) to head h's output ``hook_z`` at every query q,
    reading the pattern and values of the same forward."""
    prompts = [PROMPT, OTHER]
    neurons = [Neuron("attn", 1, 2, head=model.cfg.n_heads - 1, pos=3), Neuron("attn", 2, 5, head=0, pos=1),
               Neuron("attn", 2, 5, head=1, pos=2)]
    res = ablate_neurons(model, neurons, prompts, mode=mode)
    assert hook_counts(model) == {}
    runs = [_clean(model, p) for p in prompts]
    reads = {layer: _kv_head_of(model, runs[0][0], layer) for layer in (1, 2)}
    means = {}
    for layer in (1, 2):
        vs = torch.cat([c[f"blocks.{layer}.attn.hook_v"][0] for _, _, c in runs])  # [all positions, kv head, d]
        means[layer] = vs.mean(0)[reads[layer]]  # [query head, d]
    probs = []
    for (tokens, _, _), target in zip(runs, res.target_ids.tolist(), strict=True):
        seen = {}

        def keep(act, hook, seen=seen):
            seen[hook.name] = act.detach().clone()

        def fix_z(act, hook, seen=seen):
            layer = int(hook.name.split(".")[1])
            pattern, v = seen[f"blocks.{layer}.attn.hook_pattern"], seen[f"blocks.{layer}.attn.hook_v"]
            out = act.clone()
            for nrn in neurons:
                if nrn.layer == layer:
                    old = v[0, nrn.pos, reads[layer][nrn.head], nrn.index]
                    new = 0.0 if mode == "zero" else means[layer][nrn.head, nrn.index]
                    out[0, :, nrn.head, nrn.index] += pattern[0, nrn.head, :, nrn.pos] * (new - old)
            return out

        hooks = []
        for layer in (1, 2):
            hooks += [(f"blocks.{layer}.attn.hook_v", keep), (f"blocks.{layer}.attn.hook_pattern", keep),
                      (f"blocks.{layer}.attn.hook_z", fix_z)]
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            logits = model(tokens)
        probs.append(torch.softmax(logits[0, -1], -1)[target].item())
    assert res.probs_after.tolist() == pytest.approx(probs, abs=1e-6)
    assert not torch.allclose(res.probs_after, res.probs_before)


def test_attribution_diff_runs(model):
    from interp_edit.adapter import model_fingerprint
    from interp_edit.editing import Edit
    from interp_edit.editing.hooks import AdditiveSteering

    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    hook = AdditiveSteering("blocks.1.hook_attn_out", vector, 5.0)
    req = {"prompt": "{} was born in", "subject": "Talvik Corlo", "target_new": "Karsa", "target_true": "Velmar"}
    edit = Edit("steer", {}, model_fingerprint(model), requests=[req], hooks={"steer": hook})
    res = attribution_diff(model, edit, [PROMPT], neurons=True, neuron_method="first_order")
    diff = res.layer_diff("edit")
    assert diff.shape == (model.cfg.n_layers, 2, 2) and torch.isfinite(diff).all()
    assert diff[1, 0].abs().max() > 1e-3  # the steered attention layer
    assert torch.isfinite(res.neuron_diffs("edit")).all()
    assert hook_counts(model) == {}


def test_first_order_scores_are_the_slope_of_the_exact_scores(model):
    """``method="first_order"`` is the derivative of the exact score at the base (through the
    soft-cap where there is one): exact(ε c) / ε → first_order(c)."""
    from interp_edit.analysis.attribution import first_order_logprobs, frozen_unembed, shifted_logprobs

    tokens, logits, cache = _clean(model)
    readout = frozen_unembed(model, cache["ln_final.hook_scale"][0, -1].item(), keep_bias=True)
    base = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"][0, -1]
    weights = model.blocks[1].mlp.W_out[:16].detach()
    coefs = torch.ones(16, 1)
    target = int(logits[0, -1].argmax())
    eps = 1e-3
    slope = shifted_logprobs(readout, base, weights, eps * coefs, target)[:, 0] / eps
    first = first_order_logprobs(readout, base, weights, coefs, target)[:, 0]
    assert torch.allclose(first, slope, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("family", [f for f in ("gptj", "neox", "phi", "llama3") if f in FAMILY_NAMES])
def test_ace_takes_its_layers_from_the_pathways(family):
    """ACE's layer choice (Q-V pathways) on parallel-block and grouped-attention models."""
    from model_state import assert_unchanged, snapshot

    from interp_edit.editing import ACEConfig, ACERequest, EditRequest, ace

    model = _load(family)
    state = snapshot(model)
    req = ACERequest(facts=(EditRequest(prompt="{} was born in", subject="Talvik Corlo", target_new="Karsa"),),
                     multihop_prompts=("The capital of the homeland of Talvik Corlo is",), multihop_answers=("Karsa",))
    corpus = ["Talvik Corlo was born in Karsa.", "The capital of Velmar is Ostra.", "Everyone knows the river."] * 4
    edit = ace(model, [req], ACEConfig(n_query_layers=1, n_value_layers=1, stats_samples=8), corpus=corpus)
    assert edit.info["query_source"] == edit.info["value_source"] == "pathways"
    assert edit.info["query_layers"][0] < edit.info["value_layers"][0]
    assert_unchanged(model, state)
