"""The TransformerBridge backend (interp_edit.adapter.bridge) against the HookedTransformer one.

Where both backends load the same weights (the hooked model unprocessed: the bridge keeps the
Hugging Face weights), every result must agree: activations, traces, patching, attributions,
editors' deltas, fingerprints (an edit made on one backend applies on the other). The default
suite checks a representative subset of the shared families (:data:`PARITY`); the TransformerLens-4
CI job runs the whole family matrix on the bridge (``INTERP_EDIT_TEST_BACKEND=bridge``).
Tolerances, float32: 1e-5 relative to the values' scale for forward results (logits,
activations, traces, attributions); 5e-5 for patching grids, whose logit differences over
patched runs compound the rounding (measured: 1.0e-4 on Qwen2's head grid of scale 4.7). The
backends do not round alike: Hugging Face's RMSNorm and rotary run in float32 internally — even
in float64 — and its matmuls fuse the biases. The editors' deltas are compared in float64, to
1e-4 relative: they come out of gradient steps with early stopping and clamps, where float32
rounding can flip a branch (GPT-2's ROME delta: 1.4e-3 apart in float32, bitwise equal in
float64); on the RMSNorm / rotary families Hugging Face's float32 internals remain (the editors'
first gradients: 1.6e-6 apart at most, Llama-2). Adam's first step turns that rounding into steps
of different sizes where a gradient coordinate is near zero, so the bridge takes it with the
hooked backend's gradients, its own checked (:class:`_FirstAdamSteps`; without: Phi-3's MEMIT
deltas 4.9e-4 apart, Llama-2's ROME 1.2e-5; with: 9.4e-6 at most, Llama-2's FT)."""

from __future__ import annotations

import os

import pytest
import torch
from family_models import BRIDGE_FAMILY_NAMES, family_hf, family_model, toy_tokenizer

from interp_edit import activation_patch, causal_trace, direct_logit_attribution, load_model, neuron_attribution
from interp_edit.adapter import architecture, backend_of, bridge, bridge_attention, model_fingerprint
from interp_edit.adapter.tiny import BRIDGE_ONLY_FAMILIES, FAMILIES, tiny_hf_model
from interp_edit.errors import InvalidArgumentError, UnsupportedArchitectureError

needs_hooked = pytest.mark.skipif(not bridge.hooked_available(), reason="compares with HookedTransformer (TransformerLens 3.x)")

SHARED = tuple(f for f in BRIDGE_FAMILY_NAMES if f in FAMILIES)
PARITY = SHARED if os.environ.get("INTERP_EDIT_TEST_BACKEND") == "bridge" else ("gpt2", "llama3", "qwen3", "gemma2")

PROMPT = "As everyone knows, Talvik Corlo was born in"
SUBJECT, OTHER, TARGET = "Talvik Corlo", "Zellen Hul", " Karsa"
REQUEST = {"prompt": "{} was born in", "subject": "Talvik Corlo", "target_new": " Karsa"}


def _pair(family, dtype=None):
    return (family_model(family, processed=False, backend="hooked", dtype=dtype),
            family_model(family, backend="bridge", dtype=dtype))


def _tokens(model, text=PROMPT):
    return torch.tensor([[model.tokenizer.bos_token_id] + model.tokenizer.encode(text, add_special_tokens=False)])


@needs_hooked
@pytest.mark.parametrize("family", PARITY)
def test_same_architecture_fingerprint_and_activations(family):
    hooked, bridged = _pair(family)
    assert backend_of(hooked) == "hooked" and backend_of(bridged) == "bridge"
    assert architecture(bridged) == architecture(hooked)
    names = [f"blocks.{layer}.{site}" for layer in range(hooked.cfg.n_layers)
             for site in ("hook_resid_pre", "hook_resid_post", "hook_mlp_out", "hook_attn_out", "mlp.hook_post", "attn.hook_z")]
    from interp_edit.adapter import run_with_cache

    logits_h, cache_h = run_with_cache(hooked, _tokens(hooked), names)
    logits_b, cache_b = run_with_cache(bridged, _tokens(bridged), names)
    assert (logits_h - logits_b).abs().max().item() < 1e-5 * max(1.0, logits_h.abs().max().item())
    for name in names:
        assert (cache_h[name] - cache_b[name]).abs().max().item() < 1e-5 * max(1.0, cache_h[name].abs().max().item()), name
    assert model_fingerprint(bridged) == model_fingerprint(hooked)


@needs_hooked
@pytest.mark.parametrize("family", PARITY)
def test_trace_and_patching_agree(family):
    hooked, bridged = _pair(family)
    traces = [causal_trace(m, PROMPT, SUBJECT, TARGET, corruption="replace", replacement=OTHER, window=2, samples=1,
                           metric="logprob") for m in (hooked, bridged)]
    assert (traces[0].scores - traces[1].scores).abs().max().item() < 1e-5
    assert traces[0].scores.max() - traces[0].scores.min() > 0.05  # not trivially equal
    patches = [activation_patch(m, PROMPT, PROMPT.replace(SUBJECT, OTHER), answer=" Karsa", foil=" Veltra",
                                metric="logit_diff", sites=("resid_pre", "attn_out", "mlp_out", "head_out"))
               for m in (hooked, bridged)]
    for site, grid in patches[0].results.items():
        assert (grid - patches[1].results[site]).abs().max().item() < 5e-5 * max(1.0, grid.abs().max().item()), site


@needs_hooked
@pytest.mark.parametrize("family", PARITY)
def test_direct_logit_attribution_agrees(family):
    hooked, bridged = _pair(family)
    dla = [direct_logit_attribution(m, PROMPT, TARGET) for m in (hooked, bridged)]
    for part in ("heads", "attn_bias", "mlp"):
        a, b = getattr(dla[0], part), getattr(dla[1], part)
        assert (a - b).abs().max().item() < 1e-5 * max(1.0, a.abs().max().item()), part
    nla = [neuron_attribution(m, PROMPT, TARGET, top_k=3) for m in (hooked, bridged)]
    assert (nla[0].ffn_query_scores - nla[1].ffn_query_scores).abs().max().item() < 1e-5
    assert [n.neuron for n in nla[0].top_ffn] == [n.neuron for n in nla[1].top_ffn]


EDITOR_PARITY = PARITY if os.environ.get("INTERP_EDIT_TEST_BACKEND") == "bridge" else ("gemma2",)
EDITORS = ("rome", "memit", "alphaedit", "ft", "fine", "memit_csk", "intattn", "mega", "ace")  # every editor


#: torch's Adam, which _FirstAdamSteps' optimisers are
_ADAM = torch.optim.Adam


class _FirstAdamSteps:
    """Installed as ``torch.optim.Adam`` (``monkeypatch.setattr(torch.optim, "Adam", steps.adam)``):
    records the gradients of each optimiser's first step, in creation order (:attr:`grads`), and
    with ``replay`` (another run's :attr:`grads`) takes that step with those instead — the run's
    own are still recorded. Nothing else of the optimisation changes.

    Why the editor parity test needs it: Adam's first update is ``lr · g / (|g| + ε)`` per
    coordinate (its moment estimates are g and g² then), whose derivative ``lr · ε / (|g| + ε)²``
    is ``lr / ε`` = 5e7·lr at g = 0 (ε = 1e-8): a gradient coordinate within a few ε of zero turns
    the backends' rounding into steps of different sizes. Measured (Phi-3, MEMIT's target z at
    layer 1, float64 models): coordinate 17 of the first gradient is 1.0203e-8 hooked and 1.0639e-8
    on the bridge (the whole gradients, of norm 0.030, are 6.1e-7 apart: Hugging Face's float32
    internals, as on every rotary family), so the first steps are 0.5050·lr and 0.5155·lr, 5.23e-3
    apart at lr 0.5 (1.3e-3 of δ, every other coordinate 1e-7); z keeps it, and MEMIT's, AlphaEdit's
    and MEMIT-CSK's W_out deltas, linear in z − h, end 4.9e-4 apart. With the same first step they
    are 6.0e-7 apart (with ε = 1e-4 on both, 5.1e-7). Later steps divide by √v̂, which holds the
    earlier gradients too: no such gain unless a coordinate's gradients all stay at ε's scale."""

    def __init__(self, replay: list[list] | None = None):
        self.grads: list[list] = []
        record = self

        class Adam(_ADAM):
            def step(self, closure=None):
                if not getattr(self, "_first_taken", False):
                    self._first_taken = True
                    params = [p for group in self.param_groups for p in group["params"]]
                    record.grads.append([None if p.grad is None else p.grad.detach().clone() for p in params])
                    if replay is not None:
                        assert len(record.grads) <= len(replay), "the runs made different optimisers"
                        for p, given in zip(params, replay[len(record.grads) - 1], strict=True):
                            if given is not None:
                                p.grad.copy_(given)
                return super().step(closure)

        self.adam = Adam


def test_first_adam_steps_replay_the_first_step_only(monkeypatch):
    """The mechanism on Phi-3's measured coordinate: 4.4e-10 between the gradients, 5.23e-3
    between the first steps; replayed, the first step is the other run's, the second the run's own."""
    def run(grads, steps=None):
        monkeypatch.setattr(torch.optim, "Adam", steps.adam if steps else _ADAM)
        x = torch.zeros(2, requires_grad=True)
        optimiser = torch.optim.Adam([x], lr=0.5)
        path = []
        for g in grads:
            x.grad = torch.tensor(g)
            optimiser.step()
            path.append(x.detach().clone())
        return path

    hooked, own = _FirstAdamSteps(), [[1.0639e-8, 1.0], [2e-4, 1.0]]
    a = run([[1.0203e-8, 1.0], [1e-4, 1.0]], hooked)
    b = run(own)
    assert abs(a[0][0] - b[0][0]).item() == pytest.approx(5.23e-3, rel=1e-3) and a[0][1] == b[0][1]
    bridge = _FirstAdamSteps(replay=hooked.grads)
    c = run(own, bridge)
    assert torch.equal(c[0], a[0]) and not torch.equal(c[1], a[1])
    assert len(hooked.grads) == len(bridge.grads) == 1 and torch.equal(bridge.grads[0][0], torch.tensor(own[0]))
    assert torch.equal(hooked.grads[0][0], torch.tensor([1.0203e-8, 1.0]))


@needs_hooked
@pytest.mark.parametrize("family", EDITOR_PARITY)
@pytest.mark.parametrize("method", EDITORS)
def test_editor_deltas_agree_and_edits_cross_backends(family, method, tmp_path, monkeypatch):
    from model_state import assert_unchanged, snapshot
    from test_family_editing import _config, _kwargs, _requests

    from interp_edit.editing import editors

    hooked, bridged = _pair(family, torch.float64)
    settings = _config(method, hooked.cfg.n_layers)
    # each backend computes its own key statistics (the two share a fingerprint, hence a cache);
    # the bridge takes each optimisation's first Adam step with the hooked backend's gradients
    # (_FirstAdamSteps: that step amplifies rounding near g = 0); its own are checked against them
    first = _FirstAdamSteps()
    steps = (first, _FirstAdamSteps(replay=first.grads))
    edits = []
    for m, record in zip((hooked, bridged), steps, strict=True):
        monkeypatch.setattr(torch.optim, "Adam", record.adam)
        edits.append(editors()[method].fn(m, _requests(method), **_kwargs(method), **settings,
                                          cache_dir=tmp_path / backend_of(m)))
    monkeypatch.undo()
    # every editor here optimises with Adam; the bridge's own first gradients are checked (measured:
    # 1.6e-6 apart at most, Llama-2's), its first steps taken with the hooked backend's
    assert first.grads and len(steps[1].grads) == len(first.grads)
    for own, given in zip(steps[1].grads, first.grads, strict=True):
        for b, a in zip(own, given, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                assert (a.double() - b.double()).norm().item() <= 1e-5 * a.double().norm().item(), method
    assert sorted(edits[0].deltas) == sorted(edits[1].deltas) and sorted(edits[0].hooks) == sorted(edits[1].hooks)
    assert edits[0].deltas or edits[0].hooks
    for name in edits[0].deltas:
        a, b = edits[0].delta_matrix(name, hooked), edits[1].delta_matrix(name, bridged)
        assert (a - b).norm().item() <= 1e-4 * a.norm().item(), name
    for label, steer in edits[0].hooks.items():
        other = edits[1].hooks[label].tensors()
        for key, value in steer.tensors().items():
            assert (value.double() - other[key].double()).norm().item() <= 1e-4 * max(1e-12, value.double().norm().item()), (label, key)
    # an edit made on the hooked backend applies on the bridge, in place, and is undone exactly
    before = snapshot(bridged)
    tokens = _tokens(bridged, "Talvik Corlo was born in")
    with torch.no_grad():
        plain = bridged(tokens)
        with edits[0].applied(bridged):
            edited_b = bridged(tokens)
        with edits[0].applied(hooked):
            edited_h = hooked(tokens)
    assert_unchanged(bridged, before, no_edits=True)
    assert (edited_b - plain).abs().max().item() > 1e-4
    assert (edited_b - edited_h).abs().max().item() < 1e-4 * max(1.0, edited_h.abs().max().item())


# --- families only the bridge has ----------------------------------------------------------
@pytest.mark.parametrize("family", sorted(f for f in BRIDGE_ONLY_FAMILIES if f in BRIDGE_FAMILY_NAMES))
def test_bridge_only_families_default_to_the_bridge_and_trace_like_a_plain_loop(family):
    from test_family_tracing import _plain_trace

    model = load_model(f"tiny-{family}", hf_model=tiny_hf_model(family, vocab_size=len(toy_tokenizer())), tokenizer=toy_tokenizer())
    assert backend_of(model) == "bridge"
    result = causal_trace(model, PROMPT, SUBJECT, TARGET, corruption="replace", replacement=OTHER, window=2, samples=1,
                          metric="logprob")
    scores, clean, _ = _plain_trace(model, 2)
    assert abs(result.clean_score - clean) < 1e-6
    assert (result.scores.double() - scores.double()).abs().max().item() < 1e-5
    assert scores.max() - scores.min() > 0.05


def test_bridge_family_list_is_the_adapters():
    for family in BRIDGE_FAMILY_NAMES:
        assert type(family_hf(family)).__name__ in bridge.BRIDGE_ARCHITECTURES, family
    for family in set(FAMILIES) - set(BRIDGE_FAMILY_NAMES):
        name = type(family_hf(family)).__name__
        assert name in bridge.BRIDGE_GAPS or bridge.version_gap(name), family


@needs_hooked
def test_toyworld_on_the_bridge_equals_the_hooked_toyworld():
    hooked, bridged = load_model("toyworld"), load_model("toyworld", backend="bridge")
    assert backend_of(bridged) == "bridge" and bridged.checkpoint_config == hooked.checkpoint_config
    assert model_fingerprint(bridged) == model_fingerprint(hooked)
    with torch.no_grad():
        a, b = hooked(_tokens(hooked)), bridged(_tokens(bridged))
    assert (a - b).abs().max().item() < 1e-4


# --- bad input -----------------------------------------------------------------------------
def test_bridge_on_a_family_it_does_not_cover_names_the_hooked_backend():
    with pytest.raises(UnsupportedArchitectureError, match="backend='hooked'"):
        load_model("tiny-opt", hf_model=family_hf("opt"), tokenizer=toy_tokenizer(), backend="bridge")


#: The families whose attention TransformerLens' bridge hands whole to the Hugging Face module.
#: OPT is refused (bridge.BRIDGE_GAPS), on 3.9 and 4.x alike; GPT-J and GPT-Neo are refused on 3.9
#: (bridge.BRIDGE_MIN_VERSIONS) and, from 4 on, run with interp_edit's own attention
#: (interp_edit.adapter.bridge_attention).
DELEGATED_ATTENTION = ("gptj", "opt", "gptneo")
ROUTED_ATTENTION = ("gptj", "gptneo")


def test_bridge_refuses_opt_whose_attention_it_delegates():
    with pytest.raises(UnsupportedArchitectureError, match=r"fires attn\.hook_pattern only after it has run"):
        load_model("tiny-opt", hf_model=family_hf("opt"), tokenizer=toy_tokenizer(), backend="bridge")


@pytest.mark.parametrize("family", ROUTED_ATTENTION)
def test_the_routed_families_load_from_4_and_are_refused_on_3_9_naming_why(family):
    hf = tiny_hf_model(family, vocab_size=len(toy_tokenizer()))  # its own instance: the bridge wraps it
    if bridge.version_gap(type(hf).__name__) is not None:
        with pytest.raises(UnsupportedArchitectureError, match=r"TransformerLens 3\.9's bridge hands .* attention whole.*"
                                                              r"install transformer-lens>=4"):
            load_model(f"tiny-{family}", hf_model=hf, tokenizer=toy_tokenizer(), backend="bridge")
        return
    model = load_model(f"tiny-{family}", hf_model=hf, tokenizer=toy_tokenizer(), backend="bridge")
    assert backend_of(model) == "bridge" and bridge_attention.routed(model)


def _attend_to_the_first_token(model, tokens):
    """The logits with block 1's pattern forced onto token 0, the hook names fired in order, and
    block 1's z and v."""
    import warnings

    fired, store = [], {}

    def attend_to_the_first_token(pattern, hook):
        fired.append(hook.name)
        edited = torch.zeros_like(pattern)
        edited[..., 0] = 1.0
        return edited

    def keep(name):
        def hook(tensor, hook):
            fired.append(hook.name)
            store[name] = tensor
        return hook

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 4.x warns that the edit is discarded
        edited = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_attn_scores", keep("scores")),
                                                         ("blocks.1.attn.hook_pattern", attend_to_the_first_token),
                                                         ("blocks.1.attn.hook_v", keep("v")),
                                                         ("blocks.1.attn.hook_z", keep("z"))])
    return edited, fired, store


@pytest.mark.parametrize("family", DELEGATED_ATTENTION)
def test_the_bridges_delegated_attention_still_ignores_pattern_edits(family, monkeypatch):
    """The measured reason of the refusals above and of interp_edit's own attention, kept true:
    TransformerLens' own bridge booted around the family (past the refusal, without interp_edit's
    routing) either fires no attn.hook_pattern or discards an edit of it. When this fails, the
    installed TransformerLens' bridge honours the edits: run the family matrix on it and lift the
    refusal (OPT) or the routing (GPT-J, GPT-Neo) from that version on."""
    monkeypatch.setattr(bridge_attention, "route", lambda model, hf_architecture: None)
    model = bridge.boot(f"tiny-{family}", tiny_hf_model(family, vocab_size=len(toy_tokenizer())), toy_tokenizer(), "cpu",
                        torch.float32)
    assert not bridge_attention.routed(model)
    tokens = _tokens(model)
    with torch.no_grad():
        plain = model(tokens)
    edited, fired, _ = _attend_to_the_first_token(model, tokens)
    assert "blocks.1.attn.hook_pattern" not in fired or torch.equal(edited, plain)


@pytest.mark.parametrize("family", ROUTED_ATTENTION)
def test_interp_edits_attention_honours_pattern_edits(family):
    """GPT-J / GPT-Neo on the bridge with interp_edit's attention: Hugging Face's logits, the
    hooks fire scores -> pattern -> z, and forcing the pattern onto token 0 makes z exactly v at
    token 0 (and changes the logits)."""
    hf = tiny_hf_model(family, vocab_size=len(toy_tokenizer()))  # its own instance: the bridge wraps it
    if bridge.version_gap(type(hf).__name__) is not None:
        pytest.skip("TransformerLens 3.9: refused (test_the_routed_families_load_from_4_and_are_refused_on_3_9_naming_why)")
    reference = tiny_hf_model(family, vocab_size=len(toy_tokenizer()))
    model = load_model(f"tiny-{family}", hf_model=hf, tokenizer=toy_tokenizer(), backend="bridge")
    tokens = _tokens(model)
    with torch.no_grad():
        plain = model(tokens)
        assert (plain - reference(tokens).logits).abs().max().item() < 1e-4
    edited, fired, store = _attend_to_the_first_token(model, tokens)
    assert fired == [f"blocks.1.attn.hook_{n}" for n in ("v", "attn_scores", "pattern", "z")]
    assert torch.equal(store["z"], store["v"][:, :1].expand_as(store["z"]))
    assert (edited - plain).abs().max().item() > 0.1


@needs_hooked
def test_hooked_on_a_bridge_only_family_names_the_bridge():
    with pytest.raises(UnsupportedArchitectureError, match="backend='bridge'"):
        load_model("tiny-starcoder2", hf_model=family_hf("starcoder2"), tokenizer=toy_tokenizer(), backend="hooked")


def test_hooked_under_transformer_lens_4_names_the_bridge(monkeypatch):
    monkeypatch.setattr(bridge, "hooked_available", lambda: False)
    with pytest.raises(InvalidArgumentError, match="backend='bridge'"):
        load_model("toyworld", backend="hooked")
    assert backend_of(load_model("toyworld")) == "bridge"  # and the default follows


@pytest.mark.parametrize("kwargs, match", [(dict(backend="Bridge"), "backend"), (dict(backend="bridge", fold_ln=True), "fold_ln")])
def test_bad_backend_arguments(kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        load_model("tiny-gpt2", hf_model=family_hf("gpt2"), tokenizer=toy_tokenizer(), **kwargs)


def test_a_second_bridge_over_the_same_hugging_face_model_is_refused():
    """The bridge wraps the Hugging Face modules in place; a second one over the same object
    would rewire the first one's hooks (a test harness that did this broke the first bridge's
    caches). Refused, naming the argument, with the first bridge and the object unchanged."""
    from model_state import assert_unchanged, snapshot

    hf = tiny_hf_model("gpt2", vocab_size=len(toy_tokenizer()))
    first = load_model("tiny-gpt2", hf_model=hf, tokenizer=toy_tokenizer(), backend="bridge")
    tokens = _tokens(first)
    with torch.no_grad():
        before_logits = first(tokens)
    before = snapshot(first)
    with pytest.raises(InvalidArgumentError, match="hf_model: this Hugging Face model already backs a TransformerBridge"):
        load_model("tiny-gpt2", hf_model=hf, tokenizer=toy_tokenizer(), backend="bridge", dtype=torch.float64)
    assert_unchanged(first, before)
    assert next(hf.parameters()).dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(first(tokens), before_logits)
