"""MEMIT's layer-spreading loop, shared by MEMIT, AlphaEdit, MEMIT-CSK and ACE: optimise the
target residual z at the last edited layer, then per layer (lowest first) measure the keys and
the remaining residual on the model with the lower layers already updated, and write the share
``R_l = (Z − H_l) / (layers left)`` through ``ΔW_out = left_factor(layer, K) @ R_l``. Each editor
gives its own ``left_factor`` (MEMIT's ``(λC + KKᵀ)⁻¹K``, AlphaEdit's null-space projection)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import Tensor

from interp_edit.adapter import architecture, post_norm_preimage
from interp_edit.editing.closed_form import (
    add_low_rank,
    check_finite,
    raw_values_at_edit_tokens,
    scratch_weights,
    values_at_edit_tokens,
    w_out_name,
)
from interp_edit.editing.config import EditorConfig
from interp_edit.editing.edit import LowRankDelta
from interp_edit.editing.requests import TokenizedRequest
from interp_edit.editing.targets import compute_keys, optimise_targets, prefixes_for


@dataclass
class SpreadResult:
    deltas: dict[str, LowRankDelta]
    keys: dict[int, Tensor] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    target_nll: list[float] = field(default_factory=list)


def spread_update(model, treqs: Sequence[TokenizedRequest], cfg: EditorConfig, layers: Sequence[int],
                  left_factor: Callable[[int, Tensor], Tensor]) -> SpreadResult:
    """MEMIT's layer-spreading loop, shared with AlphaEdit: optimise z at the last layer, then
    per layer measure keys K ([d_mlp, n]) and the remaining residual, and write
    ``ΔW_out = left_factor(layer, K) @ R_l``. The model is unchanged afterwards."""
    out = SpreadResult({})
    start = time.perf_counter()
    prefixes = prefixes_for(model, cfg)
    z_layer = layers[-1]
    targets = optimise_targets(model, treqs, z_layer, prefixes, cfg.target_config(), initial_site="resid_post")
    check_finite("target z", targets.target, treqs)
    out.target_nll = targets.nll.tolist()
    out.timings["targets"] = time.perf_counter() - start
    out.timings.update(keys=0.0, update=0.0)
    with scratch_weights(model, [w_out_name(layer) for layer in layers]):
        for i, layer in enumerate(layers):
            start = time.perf_counter()
            keys = compute_keys(model, treqs, layer, prefixes, average=cfg.key_average).double().T  # [d_mlp, n]
            current = values_at_edit_tokens(model, treqs, z_layer, "resid_post").double()
            out.timings["keys"] += time.perf_counter() - start
            start = time.perf_counter()
            residual = (targets.target.double() - current) / (len(layers) - i)  # [n, d_model]
            arch = architecture(model)
            if not arch.writes_raw_output:  # the raw W_out output change that adds ``residual`` to the stream
                raw = raw_values_at_edit_tokens(model, treqs, layer, "mlp") if arch.post_norms else None
                residual = post_norm_preimage(model, layer, "mlp", raw, residual)
            left = left_factor(layer, keys)
            check_finite(f"update of layer {layer}", left.T, treqs)
            delta = LowRankDelta(left.float().cpu(), residual.float().cpu())
            add_low_rank(model, w_out_name(layer), delta)
            out.deltas[w_out_name(layer)] = delta
            out.keys[layer] = keys
            out.timings["update"] += time.perf_counter() - start
    return out


def probe_keys(model, treqs, cfg, layers) -> dict[int, Tensor]:
    """The requests' keys at each of ``layers`` on the base model ([request, d_mlp]), which
    ``stats_samples="auto"`` watches."""
    prefixes = prefixes_for(model, cfg)
    return {layer: compute_keys(model, treqs, layer, prefixes, average=cfg.key_average) for layer in layers}


__all__ = ["SpreadResult", "probe_keys", "spread_update"]
