"""Key statistics with their provenance: what each second moment C = E[k kᵀ] was computed from
(model fingerprint, site, layer, key dimension, corpus and its hash, texts, tokens, dtype,
where it came from), and the one check that a statistic suits a model, site and layer."""

from __future__ import annotations

import dataclasses
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
    from interp_edit.adapter.params import model_fingerprint

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
    if prov.model_fingerprint and prov.model_fingerprint != fingerprint:
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


__all__ = ["SITES", "KeyStatistics", "StatsProvenance", "check_second_moment", "check_statistics", "site_dim"]


def thin_statistics_note(record: Mapping[str, Any]) -> str | None:
    """What a statistic's provenance record (:meth:`StatsProvenance.as_dict`) says against it:
    counted from fewer tokens than the key width (C is rank-deficient); else None."""
    n_tokens, dim = record.get("n_tokens"), record.get("dim")
    if not isinstance(n_tokens, int) or not isinstance(dim, int) or n_tokens >= dim:
        return None
    return (f"key statistics of {record.get('site')} layer {record.get('layer')} come from {n_tokens} tokens, fewer "
            f"than the key width {dim}: C is rank-deficient and the edit may be large and spill over (raise stats_samples)")
