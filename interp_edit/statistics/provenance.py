"""Key statistics with their provenance: what each second moment C = E[k kᵀ] was computed from
(model fingerprint, site, layer, key dimension, corpus and its hash, texts, tokens, dtype,
where it came from), and the one check that a statistic suits a model, site and layer."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from interp_edit.errors import StatisticsMismatchError

SITES = ("mlp_post", "z")


def site_dim(model, site: str) -> int:
    """The key width at ``site``: ``d_mlp`` for ``mlp_post``, ``n_heads · d_head`` for ``z``."""
    return model.cfg.d_mlp if site == "mlp_post" else model.cfg.n_heads * model.cfg.d_head


@dataclass(frozen=True)
class StatsProvenance:
    """Where one layer's statistic came from. ``corpus_hash`` is None for an imported file that
    does not record it (ROME / MEMIT / EasyEdit files name only the data set and sample size);
    ``file_sha256`` then identifies the file's contents."""

    model_fingerprint: str
    site: str
    layer: int
    dim: int
    #: a description of the corpus (``interp_edit.statistics.corpus.describe``, or the data set an imported file names)
    corpus: str
    corpus_hash: str | None
    n_texts: int | None
    n_tokens: int
    #: the dtype the second-moment sums were accumulated / stored in
    dtype: str
    #: ``"computed"``, ``"cache"``, ``"rome-npz"`` (ROME / MEMIT layout), ``"easyedit-npz"`` or ``"given"``
    source: str
    path: str | None = None
    #: the model the file says it belongs to (imported files), else None
    model_name: str | None = None
    file_sha256: str | None = None
    #: ``stats_samples="auto"``: tolerance, the schedule tried and each step's relative change
    auto: dict[str, Any] | None = None
    #: how texts became token rows (``interp_edit.statistics.collect.PACKINGS``: ``"bos"``,
    #: ``"rome"``); None where the file does not say (imported files, caches written before)
    packing: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: an estimate of C's numerical rank (:func:`numerical_rank`), filled in where an editor reads
    #: the statistics (``edit.info["stats"]``); None where not estimated (cache files, imported files)
    rank: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> StatsProvenance:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class KeyStatistics:
    """One layer's uncentred second moment of the keys (float64, CPU) and its provenance."""

    moment: Float[Tensor, "key key"]
    provenance: StatsProvenance


def check_statistics(stats: KeyStatistics, model, site: str, layer: int, *, what: str) -> None:
    """Raise :class:`StatisticsMismatchError` unless ``stats`` is of ``model`` (its fingerprint;
    a file that records none is checked by the caller), ``site``, ``layer`` and the site's key
    width; the message says which differs."""
    from interp_edit.adapter.params import fingerprint_matches, model_fingerprint

    prov = stats.provenance
    dim = site_dim(model, site)
    if prov.site != site:
        raise StatisticsMismatchError(f"{what} are of site {prov.site!r}; the edit needs site {site!r} (layer {layer})")
    if prov.layer != layer:
        raise StatisticsMismatchError(f"{what} are of layer {prov.layer}; the edit needs layer {layer} (site {site!r})")
    shape = tuple(stats.moment.shape)
    if shape != (dim, dim):
        raise StatisticsMismatchError(f"{what} have key dimension {shape}; this model's {site!r} keys have dimension "
                                      f"{dim} (layer {layer})")
    fingerprint = model_fingerprint(model)
    if prov.model_fingerprint and not fingerprint_matches(prov.model_fingerprint, model):
        raise StatisticsMismatchError(f"{what} are of another model (fingerprint {prov.model_fingerprint}"
                                      f"{', ' + repr(prov.model_name) if prov.model_name else ''}); this model's is {fingerprint}")
    check_second_moment(stats.moment, what=f"{what} (site {site!r}, layer {layer})")


#: relative tolerances of :func:`check_second_moment`: asymmetry, and the shift of the diagonal
#: (× the trace) under which a PSD matrix stored in float32 still factors
SYMMETRY_RTOL = 1e-5
PSD_JITTER = 1e-6


def check_second_moment(moment: Tensor, *, what: str) -> None:
    """Raise :class:`StatisticsMismatchError` unless ``moment`` can be a second moment
    E[k kᵀ]: finite, symmetric (to ``SYMMETRY_RTOL`` × its largest entry, the rounding of a
    float32 file) and positive semidefinite (a Cholesky factorisation of ``moment +
    PSD_JITTER · trace · I`` exists — rounding cannot make an eigenvalue that negative, a
    covariance computed wrongly or a corrupted file does). Costs one Cholesky (n³/3 flops)."""
    moment = moment.detach().to("cpu", torch.float64)
    if not torch.isfinite(moment).all():
        raise StatisticsMismatchError(f"{what} hold non-finite values (NaN or inf)")
    scale = float(moment.abs().max()) if moment.numel() else 0.0
    asymmetry = float((moment - moment.T).abs().max()) if moment.numel() else 0.0
    if asymmetry > SYMMETRY_RTOL * max(scale, 1e-300):
        raise StatisticsMismatchError(
            f"{what} are not a second moment: the matrix is not symmetric (max |C - Cᵀ| = {asymmetry:.3g}, "
            f"largest entry {scale:.3g}); E[k kᵀ] always is — the file is corrupted or holds something else")
    diagonal = torch.diagonal(moment)
    if moment.numel() and float(diagonal.min()) < -SYMMETRY_RTOL * scale:
        index = int(diagonal.argmin())
        raise StatisticsMismatchError(f"{what} are not a second moment: diagonal entry {index} is {float(diagonal[index]):.3g} < 0 "
                                      "(a mean square cannot be negative)")
    jitter = PSD_JITTER * max(float(diagonal.sum()), 1e-300)
    _, info = torch.linalg.cholesky_ex(moment + jitter * torch.eye(len(moment), dtype=moment.dtype))
    if int(info) != 0:
        raise StatisticsMismatchError(
            f"{what} are not a second moment: the matrix is not positive semidefinite (its leading {int(info)}×{int(info)} "
            f"block has a negative eigenvalue beyond {PSD_JITTER:g} × the trace); E[k kᵀ] is PSD — the file is corrupted "
            "or holds something else (e.g. a difference of two moments)")


#: :func:`numerical_rank`: an eigenvalue of C below ``RANK_RTOL`` × its mean eigenvalue (mean of the
#: diagonal) counts as zero (float64 rounding leaves the null directions of repeated keys near 1e-14 ×
#: the mean; the smallest eigenvalue of the toy world's 4,000-text statistics is 8e-3 × the mean); the
#: trace of ``(C + τ I)⁻¹`` is estimated with ``RANK_PROBES`` fixed random ±1 probes (exact up to that width)
RANK_RTOL = 1e-10
RANK_PROBES = 256


def numerical_rank(moment: Tensor, *, device: torch.device | str | None = None) -> int | None:
    """An estimate of the numerical rank of a second moment C (float64, on ``device``, else
    ``moment``'s): the effective rank ``Σ λᵢ / (λᵢ + τ) = n - τ · tr((C + τ I)⁻¹)``, τ =
    ``RANK_RTOL`` · mean(diag C), so each eigenvalue well above τ counts 1 and each one at
    rounding level counts 0. Costs one Cholesky factorisation (n³/3 flops, half the LU the ROME
    solve builds) and ``RANK_PROBES`` triangular solves (n² flops each); no eigendecomposition.
    Up to ``RANK_PROBES`` wide the trace is exact; wider, it is estimated from fixed random ±1
    probes (Hutchinson; deterministic for a given C, its error at most about √(n / 256) counts
    where C has a null space, and far below one where C is of full rank). None when C is not
    finite or not positive semidefinite (:func:`check_second_moment` says why)."""
    n = moment.shape[0]
    if n == 0:
        return 0
    c = moment.detach().to(device if device is not None else moment.device, torch.float64)
    mean = float(c.diagonal().mean())
    if not math.isfinite(mean) or mean < 0:
        return None
    if mean == 0:
        return 0
    tau = RANK_RTOL * mean
    shifted = c + tau * torch.eye(n, dtype=c.dtype, device=c.device)
    del c
    factor, info = torch.linalg.cholesky_ex(shifted)
    del shifted
    if int(info) != 0:
        return None
    if n <= RANK_PROBES:  # the exact trace: the columns of I as probes
        probes = torch.eye(n, dtype=torch.float64)
    else:
        probes = torch.randint(0, 2, (n, RANK_PROBES), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    solved = torch.linalg.solve_triangular(factor, probes.to(factor.device), upper=False)  # ‖L⁻¹z‖² = zᵀ(C + τI)⁻¹z
    nullity = tau * float((solved * solved).sum()) * n / (probes * probes).sum().item()
    if not math.isfinite(nullity):
        return None
    return int(min(n, max(0, round(n - nullity))))


__all__ = ["RANK_RTOL", "SITES", "KeyStatistics", "StatsProvenance", "check_second_moment", "check_statistics",
           "numerical_rank", "site_dim"]


def thin_statistics_note(record: Mapping[str, Any]) -> str | None:
    """What a statistic's provenance record (:meth:`StatsProvenance.as_dict`) says against it:
    counted from fewer tokens than the key width, or its recorded rank estimate (``"rank"``,
    :func:`numerical_rank`) is below the key width (repeated or too similar texts) — either way C
    is rank-deficient; else None."""
    n_tokens, dim, rank = record.get("n_tokens"), record.get("dim"), record.get("rank")
    if not isinstance(dim, int):
        return None
    where = f"key statistics of {record.get('site')} layer {record.get('layer')}"
    if isinstance(n_tokens, int) and n_tokens < dim:
        return (f"{where} come from {n_tokens} tokens, fewer than the key width {dim}: C is rank-deficient and the edit "
                "may be large and spill over (raise stats_samples)")
    if isinstance(rank, int) and not isinstance(rank, bool) and rank < dim:
        counted = f" although {n_tokens} tokens were counted" if isinstance(n_tokens, int) else ""
        return (f"{where} are rank-deficient: C's numerical rank is about {rank}, below the key width {dim}{counted} "
                "(repeated or too similar texts span too few key directions), so the edit may be large and spill over "
                "(collect them from more, more varied texts: a larger stats_samples or another corpus)")
    return None
