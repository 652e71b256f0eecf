"""EMMET (Gupta, Sajnani & Anumanchipalli 2024, "A unified framework for model editing"):
batched ROME — a batch of edits written as *equality* constraints, each request's key mapped
exactly to its target, while keys distributed like the corpus statistics move as little as
possible.

For the keys of a batch K_E ([d_mlp, B], one column per request), the residuals R ([B, d_model]:
the targets minus what the layer now writes there) and the preserved keys' second moment
C₀ = λ·C + ν·I (C: the same key statistics as ROME / MEMIT, λ = ``mom2_update_weight``,
ν = ``update_norm_lambda``), in TransformerLens orientation (``W_out``: [d_mlp, d_model], the
layer writes ``k @ W_out``):

    ``ΔW_out = C₀⁻¹ K_E D⁻¹ R``,  ``D = K_Eᵀ C₀⁻¹ K_E + μ·I``  (μ = ``emmet_lambda``, only when B > 1)

so that, with μ = 0, ``K_Eᵀ (W_out + ΔW_out) = K_Eᵀ W_out + R`` for every request. With B = 1
this is ROME's closed form ``C⁻¹k rᵀ / (kᵀC⁻¹k)`` (no μ: the authors' code adds it only to a
batch, against an ill-conditioned D). Solved in float64, as the code does.

Everything but the update is MEMIT's, as in the authors' code (scalable-model-editing/
unified-model-editing, ``emmet/emmet_main.py``; its ``compute_z`` / ``compute_ks`` are MEMIT's
unchanged): targets z optimised at the residual after the last edited layer, keys averaged by
template type, the 5 start-word context templates, and MEMIT's layer spreading
(``R_l = (Z − H_l) / (layers left)``, lowest layer first) when ``layers`` holds more than one
layer — the published settings edit one layer. Where this differs from the code: C⁻¹K_E is
solved (the code inverts C₀ and D explicitly; it falls back to a pseudo-inverse of a singular D,
which here is an error before any compute when μ = 0 and two requests share a key).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import MappingProxyType

import torch
from jaxtyping import Float
from torch import Tensor

from interp_edit.adapter import model_fingerprint
from interp_edit.editing.closed_form import moment_solve, solve
from interp_edit.editing.config import check_layers, resolve
from interp_edit.editing.edit import Edit
from interp_edit.editing.edit_token_choice import prepare_at_edit_tokens
from interp_edit.editing.methods.memit import MEMITConfig
from interp_edit.editing.requests import describe_collisions
from interp_edit.editing.spread import probe_keys, spread_update
from interp_edit.errors import EditConfigError, EditRequestError
from interp_edit.statistics.auto import solved
from interp_edit.statistics.keys import editor_statistics, provenance_records


@dataclass(frozen=True)
class EMMETConfig(MEMITConfig):
    """EMMET's settings; defaults are the published GPT-2 XL ones (``hparams/EMMET/gpt2-xl.json``:
    layer 17 alone, λ = 1000, μ = 0.1, ν = 0, clamp 0.75, 20 steps = 19 updates, lr 0.5, weight
    decay 0.5, KL(edited ‖ original) × 0.0625, MEMIT's context templates and key average).

    >>> cfg = EMMETConfig.for_model(model)
    >>> cfg.preset, cfg.layers
    ('toyworld', (0,))
    >>> EMMETConfig.for_model(model, emmet_lambda=0.0).emmet_lambda
    0.0
    """

    layers: tuple[int, ...] = (17,)
    #: λ: C₀ = λ·C + ν·I (the code's ``mom2_update_weight``)
    mom2_update_weight: float = 1000.0
    #: μ, added to the diagonal of D = K_Eᵀ C₀⁻¹ K_E when the batch has more than one request
    #: (the code's ``emmet_lambda``; 0 = exact equality constraints)
    emmet_lambda: float = 0.1
    #: ν, added to the diagonal of λ·C (the code's ``update_norm_lambda``)
    update_norm_lambda: float = 0.0

    # ``preset="paper"``: the reference settings at this model's own layer(s) and sample size
    PAPER_MODEL_FIELDS = ("layers", "stats_samples")
    # Published settings (scalable-model-editing/unified-model-editing hparams/EMMET), keyed by
    # interp_edit.adapter.identity.known_model; every one sets emmet_lambda 0.1, update_norm_lambda 0
    PRESETS = MappingProxyType({
        # hparams/EMMET/gpt2-xl.json: the class defaults
        "gpt2-xl": {},
        # hparams/EMMET/EleutherAI_gpt-j-6B.json
        "gpt-j-6B": {"layers": (5,), "steps": 25, "mom2_update_weight": 1.0},
        # hparams/EMMET/llama2-7b.json
        "Llama-2-7b-hf": {"layers": (5,), "clamp_norm_factor": 4.0, "steps": 25, "lr": 0.5, "weight_decay": 1e-3,
                          "mom2_update_weight": 1.0},
        # measured on the toy world (tests/test_emmet.py): MEMIT's toy-world targets at ROME's layer
        "toyworld": {**MEMITConfig.PRESETS["toyworld"], "layers": (0,), "mom2_update_weight": 100.0},
    })

    @classmethod
    def generic(cls, model):
        return {"layers": (round(0.35 * (model.cfg.n_layers - 1)),)}

    def validate(self) -> None:
        super().validate()
        for name in ("emmet_lambda", "update_norm_lambda"):
            if getattr(self, name) < 0:
                raise EditConfigError(f"field {name!r} must be >= 0, got {getattr(self, name)}")
        if self.mom2_update_weight == 0 and self.update_norm_lambda == 0:
            raise EditConfigError("fields 'mom2_update_weight' and 'update_norm_lambda' are both 0: C₀ = λ·C + ν·I "
                                  "is zero and EMMET's update needs its inverse; raise either above 0")


def emmet_left_factor(model, moment: Float[Tensor, "key key"], keys: Float[Tensor, "key n"], cfg: EMMETConfig,
                      what: str) -> Float[Tensor, "key n"]:
    """``C₀⁻¹ K (Kᵀ C₀⁻¹ K + μ I)⁻¹`` in float64 (μ only when K has more than one column), C₀ =
    λ·``moment`` + ν·I; ``ΔW_out = left @ R``.

    >>> cfg = EMMETConfig.for_model(model, emmet_lambda=0.0)
    >>> keys = torch.randn(model.cfg.d_mlp, 3, dtype=torch.float64)
    >>> left = emmet_left_factor(model, torch.eye(model.cfg.d_mlp), keys, cfg, "example")
    >>> torch.allclose(keys.T @ left, torch.eye(3, dtype=torch.float64))   # each key maps to its own residual
    True
    """
    keys = keys.double()
    if cfg.update_norm_lambda:
        eye = torch.eye(len(moment), dtype=torch.float64, device=keys.device)
        x = solve(cfg.mom2_update_weight * moment.to(keys.device, torch.float64) + cfg.update_norm_lambda * eye, keys, what)
    else:  # through the LU factor of λC that the model's statistics store keeps
        x = moment_solve(model, moment, keys, what, scale=cfg.mom2_update_weight)
    inner = keys.T @ x
    if inner.shape[0] > 1:
        inner = inner + cfg.emmet_lambda * torch.eye(len(inner), dtype=inner.dtype, device=inner.device)
    inner = (inner + inner.T) / 2  # symmetric in exact arithmetic
    return solve(inner, x.T, f"{what} (D = KᵀC₀⁻¹K)").T


def emmet_probe(cfg: EMMETConfig):
    """What ``stats_samples="auto"`` watches for EMMET: C₀⁻¹K."""
    def probe(layer, cov, keys):
        eye = torch.eye(len(cov), dtype=torch.float64, device=cov.device)
        return solved(cfg.mom2_update_weight * cov.double() + cfg.update_norm_lambda * eye, keys)

    probe.label = f"({cfg.mom2_update_weight}·C + {cfg.update_norm_lambda}·I)⁻¹K"
    return probe


def emmet(model, requests, config: EMMETConfig | None = None, *, corpus=None, cache_dir=None, stats=None,
          progress: bool = False, **overrides) -> Edit:
    """One EMMET batch edit of all ``requests`` (EditRequests, CounterFact records or dicts).
    The model is unchanged; apply the returned :class:`Edit` with ``edit.apply(model)``.
    ``corpus`` / ``stats`` / ``cache_dir``: where the key statistics come from (see
    :mod:`interp_edit.statistics.collect`).

    >>> people = records[::4][:3]                       # three people (one key each)
    >>> e = emmet(model, people)                        # or edit(model, people, "emmet")
    >>> e.layers(), {row["rank"] for row in e.summary()}
    ([0], {3})
    """
    cfg = resolve(EMMETConfig, model, config, overrides)
    check_layers(model, cfg.layers, "layers")
    fingerprint = model_fingerprint(model)
    treqs, token_info = prepare_at_edit_tokens(model, requests, fingerprint, cfg, cfg.layers)
    groups = token_info["key_collisions"]
    if groups and cfg.emmet_lambda == 0 and len(treqs) > 1:  # D would be singular: refuse before any compute
        raise EditRequestError(describe_collisions(model, treqs, groups, "EMMET")
                               + "; with emmet_lambda=0 their equality constraints contradict each other (D is "
                               "singular): raise emmet_lambda above 0 or edit them in separate batches")
    if cfg.emmet_lambda == 0 and len(treqs) > model.cfg.d_mlp:
        raise EditRequestError(f"{len(treqs)} requests in one batch, more than the key width {model.cfg.d_mlp}: with "
                               "emmet_lambda=0 their equality constraints cannot all hold (D is singular); raise "
                               "emmet_lambda above 0 or split the batch")
    start = time.perf_counter()
    statistics = editor_statistics(model, cfg, cfg.layers, corpus=corpus, cache_dir=cache_dir, progress=progress,
                                   stats=stats, probe_keys=lambda: probe_keys(model, treqs, cfg, cfg.layers),
                                   probe=emmet_probe(cfg), method="EMMET")
    covs = {layer: s.moment for layer, s in statistics.items()}
    stats_seconds = time.perf_counter() - start

    def left_factor(layer: int, keys: Tensor) -> Tensor:
        return emmet_left_factor(model, covs[layer], keys, cfg, f"EMMET layer {layer}")

    result = spread_update(model, treqs, cfg, cfg.layers, left_factor)
    return Edit("emmet", result.deltas, fingerprint, cfg.as_dict(), [r.request.as_dict() for r in treqs],
                {"target_nll": result.target_nll, "seconds": {"stats": stats_seconds, **result.timings},
                 "edit_token": token_info, "key_collisions": groups, "stats": provenance_records(statistics)})


__all__ = ["EMMETConfig", "emmet", "emmet_left_factor"]
