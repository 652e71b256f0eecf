"""ROME (Meng et al. 2022): a rank-one update of one layer's ``W_out`` that maps the
subject's averaged key k* to the optimised MLP output v*, moving keys distributed like the
corpus statistics C as little as possible.

TransformerLens orientation (``W_out``: [d_mlp, d_model]):
``ΔW_out = (C⁻¹k*) ⊗ (v* − k*ᵀW_out − b_out) / (k*ᵀC⁻¹k*)``, so that
``k*ᵀ(W_out + ΔW_out) + b_out = v*`` exactly. The *same* averaged k* is used in both places
(r-ROME's fix). Several requests are edited one after another (each on the model with the
earlier ones applied), giving one ``Edit`` of rank = number of requests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import MappingProxyType

import torch

from interp_edit.editing.closed_form import add_low_rank, check_finite, check_layers, scratch_weights, solve, w_out_name
from interp_edit.editing.config import SubjectTokenConfig, resolve
from interp_edit.editing.edit import Edit, LowRankDelta
from interp_edit.editing.edit_token_choice import prepare_at_edit_tokens
from interp_edit.editing.stats import second_moments
from interp_edit.editing.targets import compute_keys, context_prefixes, optimise_targets
from interp_edit.model import get_parameter, model_fingerprint


@dataclass(frozen=True)
class ROMEConfig(SubjectTokenConfig):
    """ROME's settings; defaults are the published GPT-2 XL ones (layer 17, 20 steps, lr 0.5,
    weight decay 0.5, KL 0.0625, clamp 4, 20 context prefixes)."""

    #: the edited layer (its MLP's W_out)
    layer: int = 17
    #: added to C's diagonal, relative to its mean diagonal (0 = plain C⁻¹)
    cov_ridge: float = 0.0
    n_prefixes: int = 20

    PRESETS = MappingProxyType({
        "gpt2-xl": {},
        "gpt-j-6B": {"layer": 5},
        "toyworld": {"layer": 0, "stats_samples": 4000, "n_prefixes": 5, "prefix_length": 8,
                     "steps": 15, "lr": 1.0, "clamp_norm_factor": 4.0, "kl_factor": 0.0625},
    })

    @classmethod
    def generic(cls, model):
        return {"layer": round(0.35 * (model.cfg.n_layers - 1))}

    def validate(self) -> None:
        super().validate()
        if self.cov_ridge < 0:
            from interp_edit.errors import EditConfigError

            raise EditConfigError(f"field 'cov_ridge' must be >= 0, got {self.cov_ridge}")


def rome(model, requests, config: ROMEConfig | None = None, *, corpus=None, cache_dir=None, progress: bool = False,
         **overrides) -> Edit:
    """ROME edit(s) of ``requests`` (EditRequests, CounterFact records or dicts). The model is
    unchanged; apply the returned :class:`Edit` with ``edit.apply(model)``."""
    cfg = resolve(ROMEConfig, model, config, overrides)
    check_layers(model, [cfg.layer], "layer")
    fingerprint = model_fingerprint(model)
    treqs, token_info = prepare_at_edit_tokens(model, requests, fingerprint, cfg, [cfg.layer])
    timings = {}
    start = time.perf_counter()
    cov = second_moments(model, [cfg.layer], corpus=corpus, n_samples=cfg.stats_samples,
                         batch_size=cfg.stats_batch_size, cache_dir=cache_dir, progress=progress)[cfg.layer]
    cov = cov.to(model.cfg.device)
    if cfg.cov_ridge:
        cov = cov + cfg.cov_ridge * cov.diagonal().mean() * torch.eye(len(cov), dtype=cov.dtype, device=cov.device)
    timings["stats"] = time.perf_counter() - start
    name = w_out_name(cfg.layer)
    prefixes = context_prefixes(model, cfg.n_prefixes, cfg.prefix_length, cfg.seed)
    lefts, rights, losses, steps = [], [], [], []
    timings.update(keys=0.0, targets=0.0, update=0.0)
    with scratch_weights(model, [name]):
        for request in treqs:
            start = time.perf_counter()
            key = compute_keys(model, [request], cfg.layer, prefixes)[0].double()
            timings["keys"] += time.perf_counter() - start
            start = time.perf_counter()
            target = optimise_targets(model, [request], cfg.layer, prefixes, cfg.target_config(), initial_site="mlp_out")
            timings["targets"] += time.perf_counter() - start
            start = time.perf_counter()
            check_finite("v*", target.target, [request])
            weight = get_parameter(model, name).data.double()
            bias = get_parameter(model, f"blocks.{cfg.layer}.mlp.b_out").data.double()
            right = target.target[0].double() - (key @ weight + bias)
            cinv_key = solve(cov, key, f"ROME C⁻¹k (layer {cfg.layer})")
            left = cinv_key / (key @ cinv_key)
            check_finite("update", left[None], [request])
            delta = LowRankDelta(left[:, None].float(), right[None].float())
            add_low_rank(model, name, delta)  # later requests see this one
            lefts.append(delta.left)
            rights.append(delta.right)
            losses.append(float(target.nll[0]))
            steps.append(target.steps[0])
            timings["update"] += time.perf_counter() - start
    delta = LowRankDelta(torch.cat(lefts, 1).cpu(), torch.cat(rights, 0).cpu())
    return Edit("rome", {name: delta}, fingerprint, cfg.as_dict(), [r.request.as_dict() for r in treqs],
                {"target_nll": losses, "steps": steps, "prefixes": list(prefixes), "seconds": timings, "edit_token": token_info})
