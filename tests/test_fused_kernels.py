"""``adapter.fused_kernels``: TransformerLens' norms, attention and tanh GELU run as PyTorch's fused kernels
within float rounding of TransformerLens' own forward (its modules are the reference), every
hooked module computed exactly as TransformerLens computes it, and every module as it was on
leaving; the editors' ``kernels`` field selects it."""

from __future__ import annotations

import pytest
import torch
from family_models import BACKEND, FAMILY_NAMES, family_model

from interp_edit import load_model
from interp_edit.adapter import fused_kernels, residual_from_layer, run_with_hooks, shared_first_norm
from interp_edit.adapter.fused import _FusedActivation, _FusedAttention, _FusedNorm
from interp_edit.adapter.shared_norm import _SharedNorm
from interp_edit.errors import EditConfigError

pytestmark = pytest.mark.skipif(BACKEND != "hooked", reason="TransformerLens' HookedTransformer modules")

#: families whose every attention layer the fused call reproduces (the rest: query/key norms
#: (Qwen3), soft-capped scores (Gemma-2), local layers (GPT-Neo: its global ones only))
NOT_FUSED_ATTENTION = {"qwen3": 0, "gemma2": 0, "gptneo": 2}


@pytest.fixture(scope="module")
def toy():
    return load_model("toyworld", fold_ln=False, center_writing_weights=False, center_unembed=False)


def _tokens(model, n=2, length=9):
    g = torch.Generator().manual_seed(0)
    return torch.randint(3, model.cfg.d_vocab, (n, length), generator=g)


def _wrapped(model):
    """(norms, attention modules) running the fused kernels now."""
    forwards = [vars(m).get("forward") for m in model.modules()]
    return (sum(isinstance(f, _FusedNorm) for f in forwards), sum(isinstance(f, _FusedAttention) for f in forwards))


def _activations(model) -> int:
    """MLPs running the fused tanh GELU now."""
    return sum(isinstance(vars(m).get("act_fn"), _FusedActivation) for m in model.modules())


def _none_wrapped(model) -> bool:
    return not any(isinstance(vars(m).get("forward"), (_FusedNorm, _FusedAttention, _SharedNorm))
                   or isinstance(vars(m).get("act_fn"), _FusedActivation) for m in model.modules())


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("processed", [True, False], ids=["processed", "unprocessed"])
def test_every_family_within_float_rounding(family, processed):
    model = family_model(family, processed=processed)
    tokens = _tokens(model)
    with torch.no_grad():
        reference = model(tokens)
        with fused_kernels(model):
            norms, attentions = _wrapped(model)
            activations = _activations(model)
            fused = model(tokens)
    assert norms >= 2 * model.cfg.n_layers + 1 or family in ("gptj", "phi")  # GPT-J / Phi-2: one norm per block
    assert norms >= model.cfg.n_layers + 1
    assert attentions == NOT_FUSED_ATTENTION.get(family, model.cfg.n_layers)
    assert activations == (model.cfg.n_layers if model.cfg.act_fn in ("gelu_new", "gelu_fast") else 0)
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=5e-5)
    assert not torch.equal(fused, reference)  # the fused kernels did run
    assert _none_wrapped(model)


def test_gradients_within_float_rounding(toy):
    start = torch.randn(2, 7, toy.cfg.d_model, generator=torch.Generator().manual_seed(1))
    grads = []
    for fused in (False, True):
        x = start.clone().requires_grad_(True)
        with torch.enable_grad(), fused_kernels(toy, fused):
            out = residual_from_layer(toy, x, 0)
            (out[:, -1] ** 2).sum().backward()
        grads.append(x.grad)
    scale = grads[0].abs().max()
    assert scale > 1e-3
    assert (grads[1] - grads[0]).abs().max() / scale < 1e-5


def test_half_precision_within_its_rounding():
    model = family_model("llama3", processed=False, dtype=torch.bfloat16)
    tokens = _tokens(model)
    with torch.no_grad():
        reference = model(tokens).float()
        with fused_kernels(model):
            fused = model(tokens).float()
    assert fused.dtype == reference.dtype
    torch.testing.assert_close(fused, reference, rtol=0.05, atol=0.25)  # logits of up to 10 in bfloat16
    assert (fused - reference).abs().mean() < 0.02


@pytest.mark.parametrize("name", ["gelu_new", "gelu_fast"])
def test_the_tanh_gelu_and_its_gradient_within_float_rounding(name):
    """The fused activation against TransformerLens' elementwise one, over values from -12 to 12."""
    from transformer_lens.utilities import activation_functions

    written_out = getattr(activation_functions, name)
    x = torch.linspace(-12, 12, 4001, dtype=torch.float64).float().requires_grad_(True)
    fused = _FusedActivation(torch.nn.Module(), written_out)(x)
    (fused_grad,) = torch.autograd.grad(fused.sum(), x)
    reference = written_out(x)
    (reference_grad,) = torch.autograd.grad(reference.sum(), x)
    torch.testing.assert_close(fused, reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused_grad, reference_grad, rtol=1e-5, atol=5e-6)  # gradients of up to 1.13
    assert not torch.equal(fused, reference)  # a different computation


def test_a_hooked_mlp_keeps_transformer_lens_activation(toy):
    """A hook on an MLP's hook point: that MLP's activation is TransformerLens' function, called
    with the same tensor; the other MLPs' are fused."""
    calls = []

    def previous(x):
        calls.append(x)
        return "transformer_lens"

    mlp = toy.blocks[1].mlp
    wrapper = _FusedActivation(mlp, previous)
    x = torch.randn(2, 3, toy.cfg.d_mlp)
    assert torch.equal(wrapper(x), torch.nn.functional.gelu(x, approximate="tanh")) and not calls
    with toy.hooks(fwd_hooks=[("blocks.1.mlp.hook_post", lambda act, hook: act)]):
        assert wrapper(x) == "transformer_lens" and calls[0] is x
    hooked_post = []
    with torch.no_grad(), fused_kernels(toy):
        assert _activations(toy) == toy.cfg.n_layers
        reference = toy.blocks[1].mlp.act_fn.previous
        run_with_hooks(toy, _tokens(toy), [("blocks.1.mlp.hook_pre", lambda act, hook: hooked_post.append(act))])
    assert reference.__name__ == "gelu_new"
    assert len(hooked_post) == 1


def test_with_every_hook_point_hooked_it_is_transformer_lens_bit_for_bit(toy):
    """``run_with_cache`` hooks every hook point, so every module keeps TransformerLens' forward
    and the logits and every cached activation are exactly TransformerLens'."""
    tokens = _tokens(toy)
    with torch.no_grad():
        logits, cache = toy.run_with_cache(tokens)
        with fused_kernels(toy):
            fused_logits, fused_cache = toy.run_with_cache(tokens)
    assert torch.equal(fused_logits, logits)
    assert all(torch.equal(fused_cache[name], cache[name]) for name in cache)


def test_a_hook_inside_attention_fires_and_holds(toy):
    """A hook on one layer's pattern fires once per forward, its change takes effect, and that
    layer is TransformerLens' computation (the other layers run fused)."""
    tokens = _tokens(toy)
    fired = []

    def uniform(pattern, hook):
        fired.append(hook.name)
        return torch.tril(torch.ones_like(pattern)) / torch.arange(1, pattern.shape[-1] + 1)[:, None]

    hooks = [("blocks.2.attn.hook_pattern", uniform)]
    with torch.no_grad():
        reference = run_with_hooks(toy, tokens, hooks)
        plain = toy(tokens)
        with fused_kernels(toy):
            fused = run_with_hooks(toy, tokens, hooks)
    assert fired == ["blocks.2.attn.hook_pattern"] * 2
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=5e-5)
    assert (fused - plain).abs().max() > 1e-2


def test_calls_it_does_not_reproduce_go_to_transformer_lens(toy):
    """An additive mask, a position bias, per-head inputs: the module's own forward, given exactly
    the same arguments."""
    attn = toy.blocks[0].attn
    seen = []

    def previous(*args, **kwargs):
        seen.append((args, kwargs))
        return "transformer_lens"

    wrapper = _FusedAttention(attn, previous)
    x = torch.randn(1, 4, toy.cfg.d_model)
    for kwargs in (dict(additive_attention_mask=torch.zeros(1, 1, 1, 4)), dict(position_bias=torch.zeros(1)),
                   dict(attention_mask=torch.ones(1, 4), position_bias=torch.zeros(1))):
        assert wrapper(x, x, x, **kwargs) == "transformer_lens"
        assert seen[-1][1] == kwargs
    split = torch.randn(1, 4, toy.cfg.n_heads, toy.cfg.d_model)
    assert wrapper(split, split, split) == "transformer_lens"
    assert len(seen) == 4
    assert wrapper(x, x, x, attention_mask=torch.ones(1, 4)).shape == x.shape and len(seen) == 4  # fused


def _prefix(model, batch=3, prefix=6, new=4):
    """A left-padded key/value prefix (rows of 6, 4 and 1 real positions) as the editors reuse it,
    and the residual of the positions after it."""
    from interp_edit.adapter import cached_keys_values

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, model.cfg.d_vocab, (batch, prefix), generator=g)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    pairs = [cached_keys_values(model, layer, cache[f"blocks.{layer}.attn.hook_k"], cache[f"blocks.{layer}.attn.hook_v"])
             for layer in range(model.cfg.n_layers)]
    mask = torch.ones(batch, prefix, dtype=torch.bool)
    mask[1, :2] = False
    mask[2, :5] = False
    residual = torch.randn(batch, new, model.cfg.d_model, generator=g)
    return ([k for k, _ in pairs], [v for _, v in pairs]), mask, residual


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_reused_prefix_is_fused_within_float_rounding(family, monkeypatch):
    """The editors' prefix reuse: TransformerLens' frozen key/value cache and the left-padded
    prefix's mask (its rotary positions counted from the mask)."""
    from interp_edit.adapter import supports_padded_prefix_kv

    model = family_model(family, processed=False)
    prefix_kv, mask, residual = _prefix(model)
    mask = mask if supports_padded_prefix_kv(model) else None
    with torch.no_grad():
        reference = residual_from_layer(model, residual, 0, prefix_kv=prefix_kv, prefix_mask=mask)
        calls = _count_calls(monkeypatch, _FusedAttention)
        with fused_kernels(model):
            fused = residual_from_layer(model, residual, 0, prefix_kv=prefix_kv, prefix_mask=mask)
    assert len(calls) == NOT_FUSED_ATTENTION.get(family, model.cfg.n_layers)
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-4)  # residuals of up to 40
    assert not torch.equal(fused, reference) or NOT_FUSED_ATTENTION.get(family) == 0


@pytest.mark.parametrize("family", ["gpt2", "llama3", "gemma", "phi"])
def test_a_padded_batch_within_float_rounding(family):
    """A left-padded batch with its attention mask: a padded position that may attend to no key
    gets TransformerLens' zero pattern (its attention output is the bias alone)."""
    model = family_model(family, processed=False)
    tokens = _tokens(model, n=3, length=8)
    mask = torch.ones(3, 8, dtype=torch.int64)
    mask[1, :2] = 0
    mask[2, :5] = 0
    with torch.no_grad():
        reference = model(tokens, attention_mask=mask)
        with fused_kernels(model):
            fused = model(tokens, attention_mask=mask)
    assert torch.isfinite(reference).all()
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=5e-5)


def test_restored_on_leaving_and_after_an_exception(toy):
    def fail(act, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), fused_kernels(toy):
        assert _wrapped(toy) == (2 * toy.cfg.n_layers + 1, toy.cfg.n_layers)
        assert _activations(toy) == toy.cfg.n_layers
        run_with_hooks(toy, _tokens(toy), [("blocks.2.hook_resid_mid", fail)])
    assert _none_wrapped(toy)


def test_nested_and_with_the_shared_norm_in_either_order(toy):
    tokens = _tokens(toy)
    with torch.no_grad():
        with fused_kernels(toy):
            alone = toy(tokens)
            with fused_kernels(toy):
                assert _wrapped(toy) == (2 * toy.cfg.n_layers + 1, toy.cfg.n_layers)
                assert _activations(toy) == toy.cfg.n_layers
                assert isinstance(toy.blocks[0].mlp.act_fn.previous, type(lambda: 0))  # not wrapped twice
                assert torch.equal(toy(tokens), alone)
            assert _wrapped(toy) == (2 * toy.cfg.n_layers + 1, toy.cfg.n_layers)  # the outer one still holds
            with shared_first_norm(toy):
                shared = vars(toy.blocks[0].ln1)["forward"]
                assert isinstance(shared, _SharedNorm) and isinstance(shared.compute, _FusedNorm)
                assert torch.equal(toy(tokens), alone)  # the shared norm reuses the fused one's value
            assert isinstance(vars(toy.blocks[0].ln1)["forward"], _FusedNorm)
        with shared_first_norm(toy), fused_kernels(toy):
            torch.testing.assert_close(toy(tokens), alone, rtol=0, atol=0)
        assert _none_wrapped(toy)
        assert not toy._forward_pre_hooks


def test_disabled_enters_nothing(toy):
    with fused_kernels(toy, enabled=False):
        assert _wrapped(toy) == (0, 0) and _activations(toy) == 0


def _count_calls(monkeypatch, cls):
    calls = []
    original = cls.__call__

    def counting(self, *args, **kwargs):
        calls.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", counting)
    return calls


@pytest.mark.parametrize("method, settings", [
    ("ft", dict(steps=5)),
    ("pmet", dict(steps=3, n_prefixes=1, stats_samples=300)),  # C from fewer texts is ill-conditioned
    ("mega", dict(steps=3, stats_samples=300)),
])
def test_the_editors_kernels_field(toy, monkeypatch, method, settings):
    """``kernels="fused"`` (the default) runs the optimisation's forwards fused;
    ``"transformer_lens"`` runs none fused; both edits agree within rounding; anything else is
    refused by name, before any compute."""
    from interp_edit.editing import edit
    from interp_edit.toyworld import counterfact_records, world_of

    record = counterfact_records(world_of(toy))[0]
    calls = _count_calls(monkeypatch, _FusedNorm)
    edits = {}
    for kernels in ("fused", "transformer_lens"):
        calls.clear()
        edits[kernels] = edit(toy, [record], method, kernels=kernels, **settings)
        assert edits[kernels].config["kernels"] == kernels
        assert (len(calls) > 0) == (kernels == "fused")
    for name in edits["fused"].deltas:
        fused, plain = (edits[k].delta_matrix(name, toy) for k in ("fused", "transformer_lens"))
        scale, differ = plain.abs().max(), (fused - plain).abs()
        # within rounding, but where Adam's normalised step (±lr at first) magnifies the rounding of
        # a gradient entry near zero: one entry in 65,536 of FT-L's change differs by 1% of the scale
        assert scale > 0 and differ.max() <= 5e-2 * scale
        assert (differ > 1e-3 * scale).float().mean() <= 1e-3
    assert _none_wrapped(toy)
    with pytest.raises(EditConfigError, match="kernels"):
        edit(toy, [record], method, kernels="fast", **settings)


def test_the_editors_adam():
    """``kernels="fused"``: PyTorch's fused Adam, within rounding of the default after 25 steps;
    ``"transformer_lens"``: the default implementation, bit for bit ``torch.optim.Adam``'s."""
    from interp_edit.editing.optimiser import adam

    g = torch.Generator().manual_seed(5)
    target = torch.randn(64, 32, generator=g)
    results = {}
    for kind in ("fused", "transformer_lens", "torch"):
        x = torch.zeros(64, 32, requires_grad=True)
        optimiser = torch.optim.Adam([x], lr=0.05) if kind == "torch" else adam([x], 0.05, kind)
        assert bool(optimiser.defaults["fused"]) == (kind == "fused")
        for _ in range(25):
            optimiser.zero_grad()
            ((x - target) ** 2 * torch.linspace(0.01, 1, 32)).sum().backward()
            optimiser.step()
        results[kind] = x.detach()
    assert torch.equal(results["transformer_lens"], results["torch"])
    torch.testing.assert_close(results["fused"], results["torch"], rtol=1e-5, atol=1e-6)


def test_ft_runs_its_attention_fused(toy, monkeypatch):
    from interp_edit.editing import edit
    from interp_edit.toyworld import counterfact_records, world_of

    calls = _count_calls(monkeypatch, _FusedAttention)
    edit(toy, [counterfact_records(world_of(toy))[0]], "ft", steps=2)
    assert len(calls) >= toy.cfg.n_layers


def test_target_optimisation_runs_fused(toy, monkeypatch):
    """ROME's target optimisation (reusing the unedited prefix's keys and values) runs its norms
    and attention fused, and agrees with TransformerLens' within rounding."""
    from interp_edit.editing import edit
    from interp_edit.toyworld import counterfact_records, world_of

    record = counterfact_records(world_of(toy))[0]
    calls = _count_calls(monkeypatch, _FusedNorm)
    attention = _count_calls(monkeypatch, _FusedAttention)
    settings = dict(steps=3, n_prefixes=1, stats_samples=20)
    fused = edit(toy, [record], "rome", **settings)
    assert len(calls) > 0 and len(attention) > 0
    attention.clear()
    calls.clear()
    plain = edit(toy, [record], "rome", kernels="transformer_lens", **settings)
    assert not calls and not attention
    name = next(iter(fused.deltas))
    torch.testing.assert_close(fused.delta_matrix(name, toy), plain.delta_matrix(name, toy), rtol=1e-3, atol=1e-5)


def test_a_trace_with_fused_kernels(monkeypatch):
    """``causal_trace(kernels="fused")``: every forward of the trace fused, scores within float
    rounding of the default (TransformerLens' modules, none fused), the setting recorded; a bad
    value is refused by name before any forward."""
    from interp_edit.analysis.tracing import causal_trace
    from interp_edit.errors import InvalidArgumentError

    model = load_model("toyworld")
    calls = _count_calls(monkeypatch, _FusedAttention)
    args = ("Talvik Corlo was born in", "Talvik Corlo")
    default = causal_trace(model, *args, samples=2)
    assert not calls and default.settings.kernels == "transformer_lens"
    fused = causal_trace(model, *args, samples=2, kernels="fused")
    assert len(calls) >= model.cfg.n_layers and fused.settings.kernels == "fused"
    assert (fused.scores - default.scores).abs().max() < 1e-5
    assert default.scores.max() - default.scores.min() > 1e-2
    assert _none_wrapped(model)
    forwards = []
    handle = model.register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        with pytest.raises(InvalidArgumentError, match="kernels"):
            causal_trace(model, *args, samples=2, kernels="fast")
    finally:
        handle.remove()
    assert not forwards


def _aie(model, kernels, merge="auto"):
    from interp_edit.analysis.aie import average_indirect_effect
    from interp_edit.toyworld import counterfact_records, world_of

    facts = counterfact_records(world_of(model))[:2]
    return average_indirect_effect(model, facts, samples=2, progress=False, kernels=kernels, merge=merge).effects


def _token_aie(model, kernels, merge="auto"):
    from interp_edit.analysis.edit_token_aie import TokenFact, edit_token_aie

    facts = [TokenFact("Talvik Corlo was born in", "Talvik Corlo", None, 2)]  # the last subject token
    res = edit_token_aie(model, facts, samples=2, kernels=kernels, merge=merge)
    return torch.stack([res.hidden, res.severed])


def _patch(model, kernels, merge="auto"):
    from interp_edit.analysis.patching import activation_patch

    res = activation_patch(model, "Talvik Corlo was born in", "Beldel Kordor was born in", answer="Karsa",
                           sites=("mlp_out", "head_out"), kernels=kernels, merge=merge)
    assert res.settings["kernels"] == kernels
    return torch.cat([v.flatten() for v in res.results.values()])


@pytest.mark.parametrize("run", [_aie, _token_aie, _patch], ids=["aie", "edit_token_aie", "activation_patch"])
def test_the_analyses_kernels_and_merge_options(run, monkeypatch):
    """The AIE, the AIE at an edit token and activation patching take ``kernels`` and ``merge``
    as :func:`causal_trace` does: every forward fused, values within float rounding of the
    default and independent of ``merge``; nothing left wrapped; a bad value refused by name
    before any forward."""
    from interp_edit.errors import InvalidArgumentError

    model = load_model("toyworld")
    calls = _count_calls(monkeypatch, _FusedAttention)
    default = run(model, "transformer_lens")
    assert not calls
    fused = run(model, "fused")
    assert len(calls) >= model.cfg.n_layers and _none_wrapped(model)
    finite = default.isfinite()
    assert torch.equal(finite, fused.isfinite()) and default[finite].abs().max() > 1e-2
    assert (fused[finite] - default[finite]).abs().max() < 1e-5
    assert torch.allclose(run(model, "transformer_lens", merge="all")[finite], default[finite], atol=1e-6)
    forwards = []
    handle = model.register_forward_pre_hook(lambda *a: forwards.append(1))
    try:
        for bad in (dict(kernels="fast"), dict(merge="everything")):
            with pytest.raises(InvalidArgumentError, match=next(iter(bad))):
                run(model, **{"kernels": "transformer_lens", **bad})
    finally:
        handle.remove()
    assert not forwards
