"""IntAttn-Edit: a MEMIT-style batch edit written jointly into the MLP ``W_out`` and the attention
``W_O`` of the critical layers (methods.md B6; α from A6).

The target is MEMIT's: a residual z_i per request at the residual stream after the last MLP
layer (``resid_post`` of ``max(mlp_layers)``), optimised as in :mod:`interp_edit.editing.targets`.
The change Z − H₀ is then written in the model's computation order (the attention of a layer
before its MLP), one least-squares write per layer:

- MLP layer l: keys = the MLP hidden activations at the edit token (``mlp_post``, averaged over
  the context prefixes), statistics C = E[k kᵀ] of ``mlp_post``,
  ``ΔW_out = (λ C + K Kᵀ)⁻¹ K R`` (MEMIT's solve, λ = ``mom2_update_weight``);
- attention layer a: keys = the concatenated head outputs z (the input of ``W_O``,
  [n_heads·d_head]) at the edit token, averaged the same way, statistics of ``z``,
  ``ΔW_O = (λ_a C_z + K Kᵀ)⁻¹ K R`` (λ_a = ``attn_mom2_update_weight``), ``W_O`` seen as a
  [n_heads·d_head, d_model] matrix.

**The split (our choice: the paper says only "share α·R to W_O, (1−α)·R to W_out").** Each
attention layer has weight α / |attn_layers| and each MLP layer (1 − α) / |mlp_layers|, so the
attention layers together carry α of the residual and the MLP layers 1 − α. Before every write
the remaining residual Z − H at the target layer is re-measured on the model with the earlier
writes in place (as MEMIT does) and the write takes ``R = (Z − H) · w / (sum of the weights of
the writes left)``. With α = 0 the attention writes have weight zero and are skipped (the
edit has *no* ``W_O`` delta) and the MLP writes are exactly MEMIT's on ``mlp_layers``; with
α = 1 there are no ``W_out`` deltas. Attention layers may come before, among or at the MLP
layers (the paper pairs attention layers 2–4 with MLP layers 4–8 of a 7B model) but not after
the last MLP layer, whose residual is the target.

**What a ``W_O`` write touches.** The update is solved for z at the edit token (by default
the subject's last), but ``W_O`` is shared by every position: the attention output changes at
every token whose z has a component along the update's keys, in particular at later tokens of
the prompt. That is inherent to editing ``W_O`` (the statistics term keeps it small for
corpus-like z); the neighbourhood score measures what it costs.

**α.** ``alpha`` fixed (published: 0.3 for Qwen2.5-7B, 0.1 for Mistral-7B), or ``None``: α is
traced on the unedited model from the first ``trace_samples`` requests — a causal trace of each
(Gaussian noise on the subject, MLP and attention restorations of ``trace_window`` layers,
logit difference true − new answer by default) gives α_i = Σ attention effect / (Σ attention +
Σ MLP effect) (:func:`interp_edit.analysis.layers.attention_mlp_balance`), and α is their mean.
The per-request values (and the requests skipped because their trace had no positive effect)
are recorded in ``edit.info``. How many facts to trace and which trace settings the paper used
are not stated: these are config fields.

``edit.info`` holds ``alpha`` and ``alpha_source`` ("config" or "trace"; with a trace also
``traced_alpha``: the per-request values and the skipped requests), and per write (``writes``)
its kind, layer, weight, the mean norms of the remaining residual and of the share, and
``realised_fraction`` — how much of its share the write moved the target residual by (projected,
averaged over requests; 1 = all of it). A large λ_a keeps the attention writes from realising
their share (the MLP writes after them then pick up the rest), so α is only honoured where
``realised_fraction`` is near 1.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

from jaxtyping import Float
from torch import Tensor

from interp_edit.adapter import architecture, model_fingerprint, post_norm_preimage
from interp_edit.editing.closed_form import (
    add_low_rank,
    check_finite,
    check_statistics_weight,
    memit_left_factor,
    raw_values_at_edit_tokens,
    scratch_weights,
    values_at_edit_tokens,
    w_o_name,
    w_out_name,
)
from interp_edit.editing.config import SubjectTokenConfig, check_layers, resolve
from interp_edit.editing.edit import Edit, LowRankDelta
from interp_edit.editing.edit_token_choice import prepare_at_edit_tokens
from interp_edit.editing.methods.memit import MEMITConfig
from interp_edit.editing.requests import TokenizedRequest
from interp_edit.editing.targets import compute_keys, optimise_targets, prefixes_for
from interp_edit.errors import EditConfigError, InvalidArgumentError
from interp_edit.statistics.keys import editor_statistics, provenance_records

_TRACE_METRICS = ("logit_diff", "prob", "logprob")


@dataclass(frozen=True)
class IntAttnConfig(SubjectTokenConfig):
    """IntAttn-Edit's settings. The defaults are GPT-2 XL's: MEMIT's MLP layers 13–17 and
    targets (λ 20,000, clamp 0.75, 5 prefixes); the attention layers 11–13 (two layers before
    the first MLP layer up to it, the pattern of the paper's attention 2–4 / MLP 4–8) and
    λ_a = λ are our choice (the paper gives no GPT-2 XL or GPT-J settings). Presets:
    ``Qwen2.5-7B`` (α 0.3) and ``Mistral-7B-v0.1`` (α 0.1) with attention 2–4 / MLP 4–8 as
    published; ``toyworld`` (MEMIT's toy preset, attention and MLP layers 0–1, where the toy
    model's causal trace peaks for both).

    >>> cfg = IntAttnConfig.for_model(model, alpha=0.2)   # alpha=None: traced per batch
    >>> cfg.preset, cfg.attn_layers, cfg.mlp_layers, cfg.alpha
    ('toyworld', (0, 1), (0, 1), 0.2)
    """

    #: layers whose MLP ``W_out`` is written (increasing); the target z is after the last
    mlp_layers: tuple[int, ...] = (13, 14, 15, 16, 17)
    #: layers whose attention ``W_O`` is written (increasing, none after the last MLP layer)
    attn_layers: tuple[int, ...] = (11, 12, 13)
    #: the attention share of the residual, in [0, 1]; None = traced (see the module docstring)
    alpha: float | None = None
    #: λ of the MLP writes (MEMIT's mom2_update_weight)
    mom2_update_weight: float = 20_000.0
    #: λ_a of the attention writes, on the z statistics (the paper leaves it open; λ by default).
    #: Toy world: 100 realises the attention share (λ_a 1,000 realises under half of it)
    attn_mom2_update_weight: float = 20_000.0
    clamp_norm_factor: float = 0.75
    n_prefixes: int = 5
    #: requests traced for α when ``alpha`` is None (the first ones of the batch)
    trace_samples: int = 10
    #: layers restored together in the trace's MLP / attention restorations
    trace_window: int = 10
    #: trace noise, in multiples of the subject embeddings' std
    trace_noise: float = 3.0
    #: noise draws per trace
    trace_noise_samples: int = 10
    #: the trace metric: "logit_diff" (true answer − new answer, the paper's) or "prob" / "logprob"
    trace_metric: str = "logit_diff"

    PRESETS = MappingProxyType({
        "gpt2-xl": {},
        "gpt-j-6B": {"mlp_layers": (3, 4, 5, 6, 7, 8), "attn_layers": (1, 2, 3), "mom2_update_weight": 15_000.0,
                     "attn_mom2_update_weight": 15_000.0},
        "Qwen2.5-7B": {"mlp_layers": (4, 5, 6, 7, 8), "attn_layers": (2, 3, 4), "alpha": 0.3},
        "Mistral-7B-v0.1": {"mlp_layers": (4, 5, 6, 7, 8), "attn_layers": (2, 3, 4), "alpha": 0.1},
        "toyworld": {**{k: v for k, v in MEMITConfig.PRESETS["toyworld"].items() if k != "layers"},
                     "mlp_layers": (0, 1), "attn_layers": (0, 1), "attn_mom2_update_weight": 100.0,
                     "trace_window": 1, "trace_noise_samples": 5},
    })

    @classmethod
    def generic(cls, model):
        last = round(0.35 * (model.cfg.n_layers - 1))
        first = max(0, last - 4)
        return {"mlp_layers": tuple(range(first, last + 1)), "attn_layers": tuple(range(max(0, first - 2), first + 1))}

    def validate(self) -> None:
        super().validate()
        for name in ("mlp_layers", "attn_layers"):
            layers = getattr(self, name)
            if not layers or list(layers) != sorted(set(layers)):
                raise EditConfigError(f"field {name!r} must be increasing and non-empty, got {layers}")
        if max(self.attn_layers) > max(self.mlp_layers):
            raise EditConfigError(
                f"field 'attn_layers': {self.attn_layers} has layers after the last MLP layer {max(self.mlp_layers)}, "
                "where the target residual is; they cannot write it"
            )
        if self.alpha is not None and (isinstance(self.alpha, bool) or not 0.0 <= self.alpha <= 1.0):
            raise EditConfigError(f"field 'alpha' must be in [0, 1] or None (traced), got {self.alpha!r}")
        for name in ("mom2_update_weight", "attn_mom2_update_weight"):
            if not getattr(self, name) >= 0:
                raise EditConfigError(f"field {name!r} must be >= 0, got {getattr(self, name)}")
        for name in ("trace_samples", "trace_window", "trace_noise_samples"):
            if getattr(self, name) < 1:
                raise EditConfigError(f"field {name!r} must be >= 1, got {getattr(self, name)}")
        if not self.trace_noise > 0:
            raise EditConfigError(f"field 'trace_noise' must be > 0, got {self.trace_noise}")
        if self.trace_metric not in _TRACE_METRICS:
            raise EditConfigError(f"field 'trace_metric' must be one of {_TRACE_METRICS}, got {self.trace_metric!r}")


@dataclass(frozen=True)
class WriteStep:
    """One write of the schedule: ``kind`` "attn" (``W_O``) or "mlp" (``W_out``) of ``layer``."""

    kind: str
    layer: int
    weight: float

    @property
    def parameter(self) -> str:
        return w_o_name(self.layer) if self.kind == "attn" else w_out_name(self.layer)


def write_schedule(mlp_layers: Sequence[int], attn_layers: Sequence[int], alpha: float) -> list[WriteStep]:
    """The writes in computation order (attention of a layer before its MLP), weights summing
    to 1 (attention α in total, MLP 1 − α); writes of weight zero are left out. The weights
    are scaled by |mlp_layers|·|attn_layers| so that with α = 0 each MLP write divides the
    remaining residual by the exact count of MLP layers left, as MEMIT does."""
    n_mlp, n_attn = len(mlp_layers), len(attn_layers)
    steps = [WriteStep("attn", layer, alpha * n_mlp) for layer in attn_layers]
    steps += [WriteStep("mlp", layer, (1.0 - alpha) * n_attn) for layer in mlp_layers]
    steps.sort(key=lambda s: (s.layer, s.kind == "mlp"))
    return [s for s in steps if s.weight > 0]


def traced_alpha(model, treqs: Sequence[TokenizedRequest], cfg: IntAttnConfig) -> dict:
    """α as the mean of per-request attention/MLP balances of causal traces (module docstring)."""
    from interp_edit.analysis.layers import attention_mlp_balance
    from interp_edit.analysis.tracing import causal_trace

    values, skipped = [], []
    for treq in treqs[: cfg.trace_samples]:
        request = treq.request
        trace = causal_trace(
            model, request.text, request.subject, request.target_true, kinds=("mlp", "attn"),
            noise=cfg.trace_noise, samples=cfg.trace_noise_samples, window=cfg.trace_window, metric=cfg.trace_metric,
            seed=cfg.seed, foil=request.target_new if cfg.trace_metric == "logit_diff" else None,
        )
        try:
            values.append(attention_mlp_balance(trace))
        except InvalidArgumentError:  # no positive effect: this fact says nothing about the balance
            skipped.append(treq.index)
    if not values:
        raise EditConfigError(
            f"field 'alpha' is None (traced), but none of the traced requests {[t.index for t in treqs[: cfg.trace_samples]]} "
            "has a positive MLP or attention effect; set alpha explicitly"
        )
    return {"alpha": sum(values) / len(values), "per_request": values, "skipped": skipped}


def _realised_fraction(achieved: Float[Tensor, "request d_model"], share: Float[Tensor, "request d_model"]) -> float:
    """Mean over requests of the achieved change's projection on the intended share, as a
    fraction of the share (1 = the write moved the target residual exactly by its share)."""
    return ((achieved * share).sum(-1) / share.pow(2).sum(-1).clamp_min(1e-12)).mean().item()


def intattn(model, requests, config: IntAttnConfig | None = None, *, corpus=None, cache_dir=None, stats=None,
            progress: bool = False, **overrides) -> Edit:
    """One IntAttn-Edit batch edit of all ``requests`` (``W_O`` and ``W_out`` deltas). The model
    is unchanged; apply the returned :class:`Edit` with ``edit.apply(model)``.

    >>> e = intattn(model, records[::4][:2], alpha=0.2, stats_samples=500)   # two people
    >>> sorted({row["parameter"].split(".")[-1] for row in e.summary()})   # both sublayers
    ['W_O', 'W_out']
    >>> e.info["alpha"], e.info["alpha_source"]
    (0.2, 'config')
    """
    cfg = resolve(IntAttnConfig, model, config, overrides)
    check_layers(model, cfg.mlp_layers, "mlp_layers")
    check_layers(model, cfg.attn_layers, "attn_layers")
    fingerprint = model_fingerprint(model)
    treqs, token_info = prepare_at_edit_tokens(model, requests, fingerprint, cfg, cfg.mlp_layers)
    if cfg.alpha != 1:  # the sites written (alpha None: traced, both may be)
        check_statistics_weight(model, cfg.mom2_update_weight, len(treqs), "mlp_post", "mom2_update_weight", "IntAttn")
    if cfg.alpha != 0:
        check_statistics_weight(model, cfg.attn_mom2_update_weight, len(treqs), "z", "attn_mom2_update_weight", "IntAttn")
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    trace = traced_alpha(model, treqs, cfg) if cfg.alpha is None else None
    alpha = trace["alpha"] if trace is not None else float(cfg.alpha)
    seconds["trace"] = time.perf_counter() - start
    schedule = write_schedule(cfg.mlp_layers, cfg.attn_layers, alpha)

    start = time.perf_counter()
    stats_given, stats, provenance = stats, {}, []
    for kind, site in (("mlp", "mlp_post"), ("attn", "z")):
        layers = [s.layer for s in schedule if s.kind == kind]
        if layers:
            # stats=: a folder (searched for both sites) or a {site: statistics} dict
            given = stats_given.get(site) if isinstance(stats_given, dict) and set(stats_given) <= {"mlp_post", "z"} else stats_given
            full = editor_statistics(model, cfg, layers, site=site, corpus=corpus, cache_dir=cache_dir, progress=progress,
                                     stats=given, method="IntAttn")
            provenance += provenance_records(full)
            stats[kind] = {layer: s.moment for layer, s in full.items()}
    seconds["stats"] = time.perf_counter() - start

    start = time.perf_counter()
    prefixes = prefixes_for(model, cfg)
    z_layer = max(cfg.mlp_layers)
    targets = optimise_targets(model, treqs, z_layer, prefixes, cfg.target_config(), initial_site="resid_post")
    check_finite("target z", targets.target, treqs)
    seconds["targets"] = time.perf_counter() - start
    seconds.update(keys=0.0, update=0.0)
    target = targets.target.double()
    deltas: dict[str, LowRankDelta] = {}
    writes: list[dict] = []
    previous = None  # (remaining before, share) of the last write

    def measure_remaining():
        remaining = target - values_at_edit_tokens(model, treqs, z_layer, "resid_post").double()  # [n, d_model]
        if previous is not None:  # how much of its share the last write achieved at the target layer
            writes[-1]["realised_fraction"] = _realised_fraction(previous[0] - remaining, previous[1])
        return remaining

    with scratch_weights(model, [s.parameter for s in schedule]):
        for i, step in enumerate(schedule):
            start = time.perf_counter()
            site = "z" if step.kind == "attn" else "mlp_post"
            keys = compute_keys(model, treqs, step.layer, prefixes, site=site).double().T  # [key, n]
            remaining = measure_remaining()
            seconds["keys"] += time.perf_counter() - start
            start = time.perf_counter()
            share = remaining / (sum(s.weight for s in schedule[i:]) / step.weight)
            arch = architecture(model)
            if not arch.writes_raw_output:  # the raw W_O / W_out output change that adds ``share``
                raw = raw_values_at_edit_tokens(model, treqs, step.layer, step.kind) if arch.post_norms else None
                share = post_norm_preimage(model, step.layer, step.kind, raw, share)
            lam = cfg.attn_mom2_update_weight if step.kind == "attn" else cfg.mom2_update_weight
            left = memit_left_factor(model, stats[step.kind][step.layer], lam, keys, f"IntAttn {step.kind} layer {step.layer}")
            check_finite(f"{step.kind} update of layer {step.layer}", left.T, treqs)
            delta = LowRankDelta(left.float().cpu(), share.float().cpu())
            add_low_rank(model, step.parameter, delta)
            deltas[step.parameter] = delta
            writes.append({"kind": step.kind, "layer": step.layer, "weight": step.weight / sum(s.weight for s in schedule),
                           "remaining_norm": remaining.norm(dim=-1).mean().item(), "share_norm": share.norm(dim=-1).mean().item()})
            previous = (remaining, share)
            seconds["update"] += time.perf_counter() - start
        final = measure_remaining()
    info = {
        "stats": provenance,
        "alpha": alpha,
        "alpha_source": "config" if trace is None else "trace",
        "writes": writes,
        "final_remaining_norm": final.norm(dim=-1).mean().item(),
        "target_nll": targets.nll.tolist(),
        "prefixes": list(prefixes),
        "seconds": seconds,
        "edit_token": token_info, "key_collisions": token_info["key_collisions"],
    }
    if trace is not None:
        info["traced_alpha"] = {"per_request": trace["per_request"], "skipped_requests": trace["skipped"]}
    return Edit("intattn", deltas, fingerprint, cfg.as_dict(), [r.request.as_dict() for r in treqs], info)
