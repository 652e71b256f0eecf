"""The entry points of key statistics: :func:`key_statistics` (given, cached or computed, fixed
or ``"auto"`` sample size), :func:`second_moments` (the moments alone), :func:`editor_statistics`
(with an editor config's ``stats_*`` fields) and :func:`provenance_records`. Collection and the
disk cache are in :mod:`interp_edit.statistics.collect`; the ``"auto"`` sample size in
:mod:`interp_edit.statistics.auto`."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from jaxtyping import Float
from torch import Tensor

from interp_edit.adapter import model_fingerprint
from interp_edit.errors import EditConfigError, ThinStatisticsWarning
from interp_edit.statistics.auto import auto_statistics
from interp_edit.statistics.collect import (
    AUTO_TOLERANCE,
    _fixed_statistics,
    cache_folder,
    check_layers_and_site,
    check_packing,
    forward_dtype,
    given_statistics,
)
from interp_edit.statistics.provenance import RANK_RTOL, KeyStatistics, numerical_rank, thin_statistics_note
from interp_edit.statistics.store import cached_factor, corpus_key, statistics_store
from interp_edit.validation import check_int


def _check_args(model, layers, site, n_samples, batch_size=1) -> list[int]:
    layers = check_layers_and_site(model, layers, site)
    if n_samples != "auto" and (isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1):
        raise EditConfigError(f"n_samples must be an integer >= 1 or 'auto', got {n_samples!r}")
    check_int(batch_size, "batch_size", minimum=1, error=EditConfigError)
    return layers


def key_statistics(
    model,
    layers: Iterable[int],
    *,
    site: str = "mlp_post",
    corpus=None,
    n_samples: int | str = 2000,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    stats=None,
    probe_keys: Callable[[], Mapping[int, Tensor]] | None = None,
    probe: Callable[[int, Tensor, Tensor], Tensor] | None = None,
    tolerance: float = AUTO_TOLERANCE,
    max_samples: int = 100_000,
    packing: str = "bos",
) -> dict[int, KeyStatistics]:
    """:class:`KeyStatistics` (C = E[k kᵀ] in float64 on the CPU, and its provenance) of the
    keys at ``site`` for each of ``layers``: from ``stats`` where given (checked), else from
    the disk cache, else computed (the layers not cached share one pass over the corpus).
    A fixed sample's statistics are kept in memory on the model after the first call
    (:mod:`interp_edit.statistics.store`; :func:`clear_statistics_cache` drops them).
    ``n_samples="auto"`` grows the sample (:func:`auto_statistics`; needs ``probe_keys``).
    ``packing``: how texts become token rows (:data:`~interp_edit.statistics.collect.PACKINGS`:
    ``"bos"``, ours, or ``"rome"``, ROME's ``layer_stats``: each text cut to the context, every
    token counted); each packing has its own cache files."""
    layers = _check_args(model, layers, site, n_samples, batch_size)
    check_packing(packing)
    cache_folder(cache_dir)  # a cache_dir that cannot be a folder: named before any forward
    if n_samples == "auto" and packing != "bos":
        raise EditConfigError(f"packing={packing!r} is not available with n_samples='auto' (it samples with packing 'bos'); "
                              "give an integer sample size")
    found = given_statistics(model, stats, site, layers) if stats is not None else {}
    missing = [layer for layer in layers if layer not in found]
    if missing and n_samples == "auto":
        if probe_keys is None:
            raise EditConfigError("n_samples='auto' needs the request keys (probe_keys) it watches; this caller gives none: "
                                  "pass an integer stats_samples")
        found.update(auto_statistics(model, missing, site, corpus, probe_keys,
                                     probe=probe, tolerance=tolerance, max_samples=max_samples, batch_size=batch_size,
                                     cache_dir=cache_dir, progress=progress))
    elif missing:
        found.update(_stored_fixed_statistics(model, missing, site, corpus, n_samples, batch_size, cache_dir, progress, packing))
    return {layer: found[layer] for layer in layers}


def _stored_fixed_statistics(model, layers, site, corpus, n_samples, batch_size, cache_dir, progress, packing="bos"
                             ) -> dict[int, KeyStatistics]:
    """The fixed-size statistics of ``layers``: from the model's in-memory store
    (:mod:`interp_edit.statistics.store`) where it holds them, else from the disk cache or
    computed (and then kept in the store)."""
    spec = corpus_key(corpus)
    if spec is None:  # an iterator of texts: nothing names it without consuming it
        return _fixed_statistics(model, layers, site, corpus, n_samples, batch_size, cache_dir, progress, packing=packing)
    store = statistics_store(model)
    base = (model_fingerprint(model), forward_dtype(model), model.cfg.n_ctx, site, spec, n_samples, packing,
            str(cache_folder(cache_dir)))
    found = {layer: store.get((*base, layer), model) for layer in layers}
    missing = [layer for layer in layers if found[layer] is None]
    if missing:
        for layer, stats in _fixed_statistics(model, missing, site, corpus, n_samples, batch_size, cache_dir, progress,
                                              packing=packing).items():
            store.put((*base, layer), stats, model)
            found[layer] = stats
    return found


def second_moments(model, layers: Iterable[int], *, site: str = "mlp_post", corpus=None, n_samples: int = 2000,
                   batch_size: int = 32, cache_dir: str | Path | None = None, progress: bool = True,
                   stats=None) -> dict[int, Float[Tensor, "key key"]]:
    """C = E[k kᵀ] (float64, on the CPU) of the keys at ``site`` for each of ``layers`` (the
    moments of :func:`key_statistics`, without their provenance)."""
    out = key_statistics(model, layers, site=site, corpus=corpus, n_samples=n_samples, batch_size=batch_size,
                         cache_dir=cache_dir, progress=progress, stats=stats)
    return {layer: s.moment for layer, s in out.items()}


def editor_statistics(model, cfg, layers: Sequence[int], *, site: str = "mlp_post", corpus=None, cache_dir=None,
                      progress: bool = False, stats=None, probe_keys=None, probe=None, method: str = "this editor"
                      ) -> dict[int, KeyStatistics]:
    """:func:`key_statistics` with an editor config's ``stats_*`` fields. An editor that gives
    no ``probe_keys`` cannot use ``stats_samples="auto"`` (an error naming ``method``)."""
    if cfg.stats_samples == "auto" and probe_keys is None:
        raise EditConfigError(f"field 'stats_samples': 'auto' watches the request keys of ROME / MEMIT / MEMIT-CSK; {method} "
                              "computes its statistics without them: give an integer")
    found = key_statistics(model, layers, site=site, corpus=corpus, n_samples=cfg.stats_samples,
                           batch_size=cfg.stats_batch_size, cache_dir=cache_dir, progress=progress, stats=stats,
                           probe_keys=probe_keys, probe=probe, tolerance=cfg.stats_tolerance,
                           max_samples=cfg.stats_max_samples, packing=cfg.stats_packing)
    found = {layer: with_rank(model, statistic) for layer, statistic in found.items()}
    for _, statistic in sorted(found.items()):
        note = thin_statistics_note(statistic.provenance.as_dict())
        if note:
            who = type(cfg).__name__.removesuffix("Config") if method == "this editor" else method
            warnings.warn(f"{who}: {note}", ThinStatisticsWarning, stacklevel=3)
    return found


def with_rank(model, statistic: KeyStatistics) -> KeyStatistics:
    """``statistic`` with its provenance's ``rank`` filled in (:func:`numerical_rank`, on the
    model's device): estimated once per moment tensor and kept in the model's statistics store
    with the solves' factorisations, so a second edit with the same statistics pays nothing."""
    if statistic.provenance.rank is not None:
        return statistic
    device = getattr(model.cfg, "device", None)
    rank = cached_factor(model, statistic.moment, ("rank", RANK_RTOL, str(device)),
                         lambda: numerical_rank(statistic.moment, device=device))
    return KeyStatistics(statistic.moment, statistic.provenance.replace(rank=rank)) if rank is not None else statistic


def provenance_records(statistics: Mapping[int, KeyStatistics]) -> list[dict]:
    """The provenance of each layer's statistic, for ``edit.info["stats"]``."""
    return [s.provenance.as_dict() for _, s in sorted(statistics.items())]
