"""Key statistics with their provenance: what each second moment C = E[k kᵀ] was computed from
(model fingerprint, site, layer, key dimension, corpus and its hash, texts, tokens, dtype,
where it came from), and the one check that a statistic suits a model, site and layer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

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


__all__ = ["SITES", "KeyStatistics", "StatsProvenance", "check_statistics", "site_dim"]
