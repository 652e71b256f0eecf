"""The target optimisation's reused prefix (``optimise_targets(reuse_prefix=...)``): each step
runs only the positions from a row's edit token on, attending to the unedited run's keys and
values before it (left-padded: every row's prefix has its own length). It gives the targets
of the run that recomputes every position, on the toy model and on every family (rotary
positions, grouped keys, q/k norms, post-sublayer norms), for v* and z, with essence rows and
with requests that stop early; the bridge backend, which reuses no prefix, refuses it. With
TransformerLens' modules (``kernels="transformer_lens"``) the two agree within 1e-5; with the
fused kernels (the default) the reused prefix's attention is a masked kernel and the recomputed
one a causal kernel, whose rounding the optimisation carries further (within 1e-3)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from family_models import BACKEND, FAMILY_NAMES, family_model

from interp_edit.adapter import model_fingerprint, supports_padded_prefix_kv
from interp_edit.editing import EditRequest, MEMITConfig, ROMEConfig, prepare_requests
from interp_edit.editing.targets import optimise_targets
from interp_edit.errors import EditConfigError

#: context prefixes of different token lengths: the rows' edit tokens sit at different positions
PREFIXES = ("", "Yes.", "It was a long and quiet day in the old town by the river.")
#: the largest difference (relative to the largest value) per ``kernels`` setting
TOLERANCES = {"transformer_lens": 1e-5, "fused": 1e-3}
TOL = TOLERANCES["transformer_lens"]


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / max(1.0, float(a.abs().max())))


def _both(model, treqs, layer, tcfg, site):
    full = optimise_targets(model, treqs, layer, PREFIXES, tcfg, initial_site=site, reuse_prefix=False)
    reused = optimise_targets(model, treqs, layer, PREFIXES, tcfg, initial_site=site, reuse_prefix=True)
    return full, reused


def _assert_same(full, reused, tol=TOL):
    assert reused.steps == full.steps
    assert torch.equal(reused.initial, full.initial)  # read from the same unedited forward's site
    for name in ("delta", "nll", "loss"):
        assert _close(getattr(full, name), getattr(reused, name)) <= tol, name


@pytest.mark.skipif(BACKEND != "hooked", reason="the hooked backend reuses a key/value prefix")
@pytest.mark.parametrize("kernels", TOLERANCES)
@pytest.mark.parametrize("site", ["mlp_out", "resid_post"])
def test_reused_prefix_gives_the_recomputed_targets_on_the_toy_model(toy_model, person_records, site, kernels):
    treqs = prepare_requests(toy_model, person_records[:6], model_fingerprint(toy_model))
    tcfg = dataclasses.replace(MEMITConfig.for_model(toy_model).target_config(), steps=8, early_stop_loss=0.0,
                               kernels=kernels)
    full, reused = _both(toy_model, treqs, 1, tcfg, site)
    assert float(full.delta.norm(dim=-1).min()) > 0.1  # the optimisation moved every δ
    _assert_same(full, reused, TOLERANCES[kernels])
    # requests that stop early, at different steps
    stop = float(full.loss.quantile(0.5))
    full, reused = _both(toy_model, treqs, 1, dataclasses.replace(tcfg, early_stop_loss=stop), site)
    assert min(full.steps) < max(full.steps)
    _assert_same(full, reused, TOLERANCES[kernels])


@pytest.mark.skipif(BACKEND != "hooked", reason="the hooked backend reuses a key/value prefix")
def test_reused_prefix_is_the_default_where_the_backend_supports_it(toy_model, person_records):
    treqs = prepare_requests(toy_model, person_records[:2], model_fingerprint(toy_model))
    tcfg = dataclasses.replace(ROMEConfig.for_model(toy_model).target_config(), steps=3)
    default = optimise_targets(toy_model, treqs, 0, PREFIXES, tcfg)
    reused = optimise_targets(toy_model, treqs, 0, PREFIXES, tcfg, reuse_prefix=True)
    assert torch.equal(default.delta, reused.delta)


@pytest.mark.parametrize("kernels", TOLERANCES)
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_reused_prefix_gives_the_recomputed_targets_on_every_family(family, kernels):
    model = family_model(family)
    request = EditRequest("{} was born in", "Talvik Corlo", target_new="Karsa", target_true="Veltra")
    other = EditRequest("{} plays the", "Zellen Hul", target_new="harp", target_true="drum")
    treqs = prepare_requests(model, [request, other], model_fingerprint(model))
    tcfg = dataclasses.replace(ROMEConfig.for_model(model).target_config(), steps=4, early_stop_loss=0.0,
                               kernels=kernels)
    layer = model.cfg.n_layers // 2
    if not supports_padded_prefix_kv(model):
        with pytest.raises(EditConfigError, match="reuse_prefix"):
            optimise_targets(model, treqs, layer, PREFIXES, tcfg, reuse_prefix=True)
        return
    full, reused = _both(model, treqs, layer, tcfg, "mlp_out")
    assert float(full.delta.norm(dim=-1).min()) > 0
    _assert_same(full, reused, TOLERANCES[kernels])


@pytest.mark.skipif(BACKEND != "hooked", reason="the hooked backend reuses a key/value prefix")
def test_reused_prefix_gives_the_recomputed_pmet_targets(toy_model, person_records):
    """PMET's δ at the attention and the MLP output of one layer (the same unedited run)."""
    from interp_edit.editing.methods.pmet import PMETConfig, optimise_pmet_targets

    treqs = prepare_requests(toy_model, person_records[:4], model_fingerprint(toy_model))
    cfg = dataclasses.replace(PMETConfig.for_model(toy_model), steps=6, early_stop_loss=0.0)
    full = optimise_pmet_targets(toy_model, treqs, 1, PREFIXES, cfg, reuse_prefix=False)
    reused = optimise_pmet_targets(toy_model, treqs, 1, PREFIXES, cfg, reuse_prefix=True)
    assert reused.steps == full.steps
    for kind in ("attn", "mlp"):
        assert float(full.delta[kind].norm(dim=-1).min()) > 0
        assert _close(full.delta[kind], reused.delta[kind]) <= TOL, kind
    assert _close(full.nll, reused.nll) <= TOL


def test_no_padded_prefix_where_attention_counts_columns(toy_model):
    """Dynamic-NTK rotary and log-n attention scaling read positions from the column count, which
    a left-padded prefix shifts: no reuse by default, and ``reuse_prefix=True`` is refused."""
    from types import SimpleNamespace

    from interp_edit.editing.targets import prefix_reuse

    assert prefix_reuse(toy_model, None) is (BACKEND == "hooked")
    for field in ("use_dynamic_ntk_rope", "use_logn_attn"):
        model = SimpleNamespace(cfg=SimpleNamespace(**{field: True}))
        assert not supports_padded_prefix_kv(model)
        assert prefix_reuse(model, None) is False
        with pytest.raises(EditConfigError, match="supports_padded_prefix_kv"):
            prefix_reuse(model, True)


def test_the_bridge_refuses_a_key_value_prefix():
    """The bridge recomputes every position: both partial forwards refuse a given prefix."""
    from family_models import BRIDGE_FAMILY_NAMES

    from interp_edit.adapter import forward_from_layer, residual_from_layer

    model = family_model(BRIDGE_FAMILY_NAMES[0], backend="bridge")
    residual = torch.zeros(1, 2, model.cfg.d_model)
    kv = ([torch.zeros(1, 1, 1, 1)], [torch.zeros(1, 1, 1, 1)])
    with pytest.raises(ValueError, match="reuses no key/value prefix"):
        residual_from_layer(model, residual, 0, [], kv)
    with pytest.raises(ValueError, match="reuses no key/value prefix"):
        forward_from_layer(model, residual, 0, [], None, kv)
