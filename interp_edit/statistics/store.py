"""The in-memory statistics store kept on the model object: the key statistics an editor loaded
(per model fingerprint, site, layer, corpus and sample count) and the factorisations its solves
reuse (ROME's LU factor of C, MEMIT's factor of λC, AlphaEdit's null-space projector P), so that
a second edit reads no cache file, moves no moment to the device and factorises nothing again;
and the context prefixes the editors sample from the unedited model (sampled once per settings,
as the authors' code keeps its context templates).

    import interp_edit
    edit = interp_edit.rome(model, requests)     # reads the statistics, factorises C, keeps both
    edit = interp_edit.rome(model, more)         # reuses them: only the method's own arithmetic
    interp_edit.clear_statistics_cache(model)    # drops them (and their device memory)
    interp_edit.clear_statistics_cache()         # ... on every model of this process

Rules (the disk cache's, unchanged): statistics belong to the *base* model, named by its
fingerprint (:func:`~interp_edit.adapter.model_fingerprint`), so edits applied in place do not
invalidate them; a model whose fingerprint changes (other embeddings) gets fresh ones. A stored
entry is used only while its cache file is the one it was read from (same path, size and
modification time): a replaced or deleted file is read (or recomputed) again, as without the store;
and, when a weight was written in place since (no edit applied), only while the blocks below its
key site are those it was computed with (the disk cache's digest rule).
Factorisations are kept per moment tensor (weakly: a moment nobody holds frees its factors).
The store lives on the model (attribute ``_interp_edit_statistics_store``), never in module state.
"""

from __future__ import annotations

import gc
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from interp_edit.statistics.provenance import KeyStatistics

STORE_ATTR = "_interp_edit_statistics_store"
T = TypeVar("T")


def _file_signature(path: str | Path | None) -> tuple | None:
    """(path, size, mtime, inode) of a file, or None when it is not a readable file."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ino)


def corpus_key(corpus) -> tuple | None:
    """A hashable key that names the texts of ``corpus`` (``None`` = the model's default), or
    None when it cannot be named without consuming it (an iterator) — such a corpus is not stored.
    A local file or folder is named by its files' sizes and modification times."""
    from interp_edit.statistics.corpus import Corpus, as_corpus, corpus_hash

    if corpus is None:
        return ("default",)
    try:
        spec = as_corpus(corpus)
    except Exception:
        return None
    if isinstance(spec, Corpus):
        path = Path(spec.source).expanduser()
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
        else:  # a hub name (or a missing path, which the reader refuses)
            return ("corpus", spec) if not path.exists() else None
        return ("corpus", spec, tuple(_file_signature(p) for p in files))
    if isinstance(spec, (list, tuple)) and all(isinstance(text, str) for text in spec):
        return ("texts", len(spec), corpus_hash(spec))
    return None


def weight_versions(model) -> tuple | None:
    """Each parameter's storage address and in-place version counter: an optimiser step,
    ``load_state_dict`` or any in-place write through the parameter changes them (a write
    through ``.data``, as the Edit type makes, does not: :func:`clear_statistics_cache` after
    such a change of your own). None when a parameter keeps no counter (made under
    ``torch.inference_mode``): then every read checks the blocks."""
    params = list(model.parameters())
    if any(p.is_inference() for p in params):
        return None
    return tuple((p.data_ptr(), p._version) for p in params)


@dataclass
class _Entry:
    stats: KeyStatistics
    signature: tuple | None  # the cache file it came from
    versions: tuple | None = None  # the weights' versions when it was last checked (weight_versions)


@dataclass
class StatisticsStore:
    """Loaded statistics and the factorisations of their moments, for one model (see the module
    docstring). ``entries`` maps (fingerprint, site, layer, corpus key, samples, cache folder) to
    the statistic; ``factors`` maps (id of a moment, what) to a factorisation built from it."""

    entries: dict[tuple, _Entry] = field(default_factory=dict)
    factors: dict[tuple, tuple[weakref.ref, Any]] = field(default_factory=dict)
    #: other values an editor derives once from the unedited model (its context prefixes)
    values: dict[tuple, Any] = field(default_factory=dict)

    def get(self, key: tuple, model=None) -> KeyStatistics | None:
        """The kept statistic of ``key``, or None: when its cache file changed or went, and (with
        ``model``) when the model's blocks were changed in place by something other than an
        applied edit (a fine-tune, ``load_state_dict`` of another checkpoint with the same
        embeddings): the disk cache's rule, :func:`~interp_edit.adapter.block_digest.key_site_digest`
        compared with the one the statistic records, checked only when a weight was written since."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.signature is not None and _file_signature(entry.signature[0]) != entry.signature:
            del self.entries[key]  # the cache file changed or went: read it again
            return None
        if model is not None:
            versions = weight_versions(model)
            if versions is None or versions != entry.versions:
                if not _blocks_as_recorded(model, entry.stats):
                    del self.entries[key]
                    return None
                entry.versions = versions
        return entry.stats

    def put(self, key: tuple, stats: KeyStatistics, model=None) -> KeyStatistics:
        """Keep ``stats`` (read back later as from the disk cache); returns what is kept.
        ``model``: the model whose weights :meth:`get` watches (see there)."""
        kept = KeyStatistics(stats.moment, stats.provenance.replace(source="cache")) \
            if stats.provenance.source == "computed" else stats
        self.entries[key] = _Entry(kept, _file_signature(stats.provenance.path),
                                   None if model is None else weight_versions(model))
        return kept

    def factor(self, moment: Tensor, what: tuple, build: Callable[[], T]) -> T:
        """``build()`` the first time for this ``moment`` tensor and ``what`` (a hashable
        description: the kind of factorisation, its parameters, device); the kept one after."""
        key = (id(moment), what)
        hit = self.factors.get(key)
        if hit is not None and hit[0]() is moment:
            return hit[1]
        value = build()
        for stale in [k for k, (ref, _) in self.factors.items() if ref() is None]:
            del self.factors[stale]
        self.factors[key] = (weakref.ref(moment), value)
        return value

    def remember(self, key: tuple, build: Callable[[], T]) -> T:
        """``build()`` the first time for ``key`` (a hashable description naming the base model,
        e.g. by its fingerprint, and every setting the value depends on); the kept value after."""
        if key not in self.values:
            self.values[key] = build()
        return self.values[key]

    def clear(self) -> None:
        self.entries.clear()
        self.factors.clear()
        self.values.clear()

    def __len__(self) -> int:
        return len(self.entries) + len(self.factors) + len(self.values)


def _blocks_as_recorded(model, stats: KeyStatistics) -> bool:
    """Whether the weights that compute ``stats``' keys are those it was computed with: true while
    an edit is applied (the statistics are the base model's) or when it records no digest."""
    from interp_edit.adapter import applied_edit_stack
    from interp_edit.adapter.block_digest import digests_match, key_site_digest

    recorded = (stats.provenance.extra or {}).get("blocks_digest")
    if recorded is None or applied_edit_stack(model):
        return True
    return digests_match(recorded, key_site_digest(model, stats.provenance.layer, stats.provenance.site))


def statistics_store(model) -> StatisticsStore:
    """The model's store (created empty on first use)."""
    store = getattr(model, STORE_ATTR, None)
    if store is None:
        store = StatisticsStore()
        object.__setattr__(model, STORE_ATTR, store)
    return store


def cached_factor(model, moment: Tensor, what: tuple, build: Callable[[], T]) -> T:
    """:meth:`StatisticsStore.factor` on ``model``'s store."""
    return statistics_store(model).factor(moment, what, build)


def clear_statistics_cache(model=None) -> None:
    """Drop the statistics and factorisations kept in memory for ``model`` (every model of this
    process when None), freeing their memory (device memory included: the CUDA caching
    allocator's free blocks are released too). The next edit reads them again (from the disk
    cache, or computes them). Nothing on disk is touched.

    >>> e = rome(model, records[:1])        # collects (or reuses) layer 0's key statistics
    >>> clear_statistics_cache(model)       # this model's only; clear_statistics_cache(): all
    >>> e2 = rome(model, records[:1])       # collects them again
    >>> torch.equal(e2.delta_matrix("blocks.0.mlp.W_out", model), e.delta_matrix("blocks.0.mlp.W_out", model))
    True
    """
    stores = [getattr(model, STORE_ATTR, None)] if model is not None else \
        [obj for obj in gc.get_objects() if isinstance(obj, StatisticsStore)]
    for store in stores:
        if store is not None:
            store.clear()
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


__all__ = ["STORE_ATTR", "StatisticsStore", "cached_factor", "clear_statistics_cache", "corpus_key", "statistics_store"]
