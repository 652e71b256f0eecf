"""The authors' code's semantics as named options, pinned without the reference code: the KL
direction (against a hand-made distribution and an independent forward), the step count (a
counted optimiser), ROME's two variants (which key maps to v*), MEMIT's key averaging, and
AlphaEdit's null-space rules (dimensions, scale, warnings)."""

from __future__ import annotations

import math
import types
import warnings

import pytest
import torch

from interp_edit.adapter import model_fingerprint
from interp_edit.editing import AlphaEditor, EditRequest, ROMEConfig, prepare_requests, rome
from interp_edit.editing.methods.alphaedit import AlphaEditConfig, null_space_basis
from interp_edit.editing.methods.memit import MEMITConfig
from interp_edit.editing.targets import TargetConfig, compute_keys, kl_rows, optimise_targets
from interp_edit.errors import EditConfigError

REQUEST = EditRequest("{} was born in", "Talvik Corlo", target_new="Gemmel", target_true="Karsa")


def test_kl_directions_on_a_hand_made_distribution():
    original = torch.tensor([[0.5, 0.5]]).log()
    edited = torch.tensor([[0.9, 0.1]]).log()
    # KL(edited ‖ original) = 0.9 ln 1.8 + 0.1 ln 0.2; KL(original ‖ edited) = 0.5 ln(5/9) + 0.5 ln 5
    assert float(kl_rows(original, edited, "edited||original")) == pytest.approx(0.9 * math.log(1.8) + 0.1 * math.log(0.2), abs=1e-6)
    assert float(kl_rows(original, edited, "original||edited")) == pytest.approx(0.5 * math.log(5 / 9) + 0.5 * math.log(5), abs=1e-6)


@pytest.mark.parametrize("direction", ["edited||original", "original||edited"])
def test_the_optimised_loss_holds_the_chosen_kl(tiny_model, direction):
    """One Adam update from δ = 0 (where both KLs vanish), then the reported loss minus the NLL is
    kl_factor × the chosen KL, recomputed here with a plain hooked forward of the essence prompt."""
    layer = 1
    treq = prepare_requests(tiny_model, [REQUEST], model_fingerprint(tiny_model))
    cfg = TargetConfig(steps=1, step_count="updates", lr=2.0, kl_factor=1.0, weight_decay=0.0, early_stop_loss=0.0,
                       n_prefixes=0, kl_direction=direction)
    out = optimise_targets(tiny_model, treq, layer, ("",), cfg)
    tokens = tiny_model.to_tokens("Talvik Corlo is a")
    pos = 2  # BOS, " Talvik", " Corlo"
    with torch.no_grad():
        clean = torch.log_softmax(tiny_model(tokens)[0, pos].float(), -1)

    def add(act, hook):
        act = act.clone()
        act[0, pos] += out.delta[0]
        return act

    with torch.no_grad():
        edited = torch.log_softmax(tiny_model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.hook_mlp_out", add)])[0, pos].float(), -1)
    forward = float((edited.exp() * (edited - clean)).sum())  # KL(edited ‖ original)
    backward = float((clean.exp() * (clean - edited)).sum())  # KL(original ‖ edited)
    assert abs(forward - backward) > 1e-3  # the two directions are told apart here
    kl = float(out.loss[0] - out.nll[0])
    assert kl == pytest.approx(forward if direction == "edited||original" else backward, abs=2e-5)


@pytest.mark.parametrize(("rule", "updates"), [("reference", 4), ("updates", 5)])
def test_step_count_counts_adam_updates(tiny_model, monkeypatch, rule, updates):
    """``steps=5``: the authors' loop evaluates the loss 5 times and updates 4 times; "updates" updates 5 times."""
    counts = {"step": 0, "forward": 0}
    real_adam = torch.optim.Adam

    class CountingAdam(real_adam):
        def step(self, *args, **kwargs):
            counts["step"] += 1
            return super().step(*args, **kwargs)

    import interp_edit.editing.targets as targets

    real_forward = targets.residual_from_layer

    def counting_forward(*args, **kwargs):
        counts["forward"] += 1
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", CountingAdam)
    monkeypatch.setattr(targets, "residual_from_layer", counting_forward)
    treq = prepare_requests(tiny_model, [REQUEST], model_fingerprint(tiny_model))
    cfg = TargetConfig(steps=5, step_count=rule, early_stop_loss=0.0, n_prefixes=0)
    out = optimise_targets(tiny_model, treq, 1, ("",), cfg)
    assert counts == {"step": updates, "forward": updates + 1}
    assert out.steps == [updates]


@pytest.mark.parametrize("variant", ["original", "r-rome"])
def test_rome_variant_chooses_the_key_that_maps_to_v_star(toy_model, person_records, variant):
    record = person_records[3]
    result = rome(toy_model, [record], variant=variant)
    cfg = ROMEConfig.for_model(toy_model, variant=variant)
    treq = prepare_requests(toy_model, [record], model_fingerprint(toy_model))
    prefixes = tuple(result.info["prefixes"])
    averaged = compute_keys(toy_model, treq, cfg.layer, prefixes)[0]
    bare = compute_keys(toy_model, treq, cfg.layer, ("",))[0]
    v_star = optimise_targets(toy_model, treq, cfg.layer, prefixes, cfg.target_config()).target[0]
    mlp = toy_model.blocks[cfg.layer].mlp
    with result.applied(toy_model):
        errors = {name: float((key @ mlp.W_out + mlp.b_out - v_star).detach().abs().max()) for name, key in
                  (("bare", bare), ("averaged", averaged))}
    exact, other = ("bare", "averaged") if variant == "original" else ("averaged", "bare")
    assert errors[exact] < 1e-4
    assert errors[other] > 1e-2


def test_memit_key_average_by_type_is_the_mean_of_bare_and_prefixed_means(toy_model, person_records):
    treq = prepare_requests(toy_model, person_records[:3], model_fingerprint(toy_model))
    prefixes = ("", "One two.", "Three four five.", "Six.")
    by_type = compute_keys(toy_model, treq, 0, prefixes, average="by_type")
    keys = [compute_keys(toy_model, treq, 0, (p,)) for p in prefixes]
    assert torch.allclose(by_type, (keys[0] + (keys[1] + keys[2] + keys[3]) / 3) / 2, atol=1e-5)
    flat = compute_keys(toy_model, treq, 0, prefixes)
    assert torch.allclose(flat, sum(keys) / 4, atol=1e-5)
    assert (flat - by_type).abs().max() > 1e-3


def test_presets_state_their_semantics():
    xl = types.SimpleNamespace(cfg=types.SimpleNamespace(model_name="gpt2-xl", n_layers=48))
    toy = types.SimpleNamespace(cfg=types.SimpleNamespace(model_name="toyworld", n_layers=6))
    rome_xl, rome_toy = ROMEConfig.for_model(xl), ROMEConfig.for_model(toy)
    assert (rome_xl.variant, rome_xl.step_count, rome_xl.kl_direction, rome_xl.prefix_join) == (
        "original", "reference", "edited||original", "reference")
    assert rome_xl.prefix_lengths == ((5, 10), (10, 10))
    assert (rome_toy.variant, rome_toy.step_count, rome_toy.kl_direction) == ("r-rome", "updates", "original||edited")
    memit_xl = MEMITConfig.for_model(xl)
    assert (memit_xl.key_average, memit_xl.step_count, memit_xl.prefix_starts[0]) == ("by_type", "reference", "The")
    assert MEMITConfig.for_model(toy).key_average == "flat"
    assert (AlphaEditConfig.for_model(xl).nullspace_rule, AlphaEditConfig.for_model(xl).nullspace_threshold) == ("absolute", 2e-2)


@pytest.mark.parametrize(("fields", "name"), [({"variant": "rome2"}, "variant"), ({"kl_direction": "both"}, "kl_direction"),
                                              ({"step_count": "all"}, "step_count"), ({"key_average": "mean"}, "key_average"),
                                              ({"prefix_lengths": ((1, 3),)}, "prefix_lengths")])
def test_bad_semantic_fields_are_named(toy_model, fields, name):
    with pytest.raises(EditConfigError, match=name):
        ROMEConfig.for_model(toy_model, **fields)


def test_null_space_rules_on_a_hand_made_covariance():
    values = torch.tensor([10.0, 1.0, 0.1, 0.001], dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    cov = rotation @ torch.diag(values) @ rotation.T
    assert null_space_basis(cov, "absolute", 2e-2).shape[1] == 1
    assert null_space_basis(cov, "relative", 0.05).shape[1] == 2  # below 0.5
    assert null_space_basis(cov, "energy", 0.9).shape[1] == 3  # 10 of 11.101 is >= 90% of the trace
    assert null_space_basis(cov, "energy", 0.95).shape[1] == 2
    basis = null_space_basis(cov, "absolute", 2e-2)
    assert torch.allclose(basis.T @ cov @ basis, torch.tensor([[0.001]], dtype=torch.float64), atol=1e-12)
    # scale-free rules ignore the keys' scale; the published absolute one does not
    for rule, tau in (("relative", 0.05), ("energy", 0.9)):
        assert null_space_basis(cov * 1e4, rule, tau).shape[1] == null_space_basis(cov, rule, tau).shape[1]
    assert null_space_basis(cov * 1e4, "absolute", 2e-2).shape[1] == 0
    # every rule under the authors' precision (singular vectors in float32): the same null spaces
    for rule, tau in (("absolute", 2e-2), ("relative", 0.05), ("energy", 0.9)):
        ours, theirs = null_space_basis(cov, rule, tau), null_space_basis(cov, rule, tau, "float32")
        assert theirs.dtype == torch.float64
        assert torch.allclose(theirs @ theirs.T, ours @ ours.T, atol=1e-6)


def test_alphaedit_float32_projector_is_the_authors_float32_svd():
    """``nullspace_precision="float32"``: P is the code's ``U[:, S < τ] U[:, S < τ]ᵀ`` from
    ``torch.linalg.svd`` of C in float32 (to float32 rounding of the product), and differs from
    the float64 one by more than that."""
    keys = torch.randn(400, 24, generator=torch.Generator().manual_seed(1)) * torch.logspace(0, -2.5, 24)
    cov = (keys.T @ keys / 400).double()
    U, S, _ = torch.linalg.svd(cov.float(), full_matrices=False)
    reference = U[:, S < 2e-2] @ U[:, S < 2e-2].T
    basis = null_space_basis(cov, "absolute", 2e-2, "float32")
    assert basis.shape[1] == int((S < 2e-2).sum()) > 0
    assert torch.allclose((basis @ basis.T).float(), reference, atol=1e-6)
    double = null_space_basis(cov, "absolute", 2e-2)
    assert not torch.allclose(double @ double.T, basis @ basis.T, atol=1e-9, rtol=0)
    with pytest.raises(EditConfigError, match="nullspace_precision"):
        AlphaEditConfig(nullspace_precision="float16").validate()


def test_alphaedit_reports_and_warns_about_degenerate_null_spaces(tiny_model, toy_world, tmp_path):
    from interp_edit.toyworld.corpus import CorpusSampler

    sampler = CorpusSampler(toy_world, seed=3)
    corpus = [sampler.sample() for _ in range(60)]  # enough varied tokens for a full-rank C
    common = dict(corpus=corpus, cache_dir=tmp_path, layers=(1,), stats_samples=60, n_prefixes=0, steps=3)
    with pytest.warns(UserWarning, match="empty"):
        editor = AlphaEditor(tiny_model, nullspace_threshold=1e-30, **common)
    result = editor(tiny_model, [REQUEST])
    assert result.info["nullspace_dims"] == {1: 0} and result.info["key_dim"] == tiny_model.cfg.d_mlp
    assert torch.count_nonzero(result.deltas["blocks.1.mlp.W_out"].dense()) == 0
    with pytest.warns(UserWarning, match="every direction"):
        full = AlphaEditor(tiny_model, nullspace_threshold=1e30, **common)
    assert full.nullspace_dims == {1: tiny_model.cfg.d_mlp}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        some = AlphaEditor(tiny_model, nullspace_rule="energy", nullspace_threshold=0.9, **common)
    assert 0 < some.nullspace_dims[1] < tiny_model.cfg.d_mlp
    with pytest.raises(EditConfigError, match="nullspace_rule"):
        AlphaEditor(tiny_model, nullspace_rule="spectral", **common)
