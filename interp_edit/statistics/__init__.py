"""Second-moment statistics of the keys an editor writes through (C = E[k kᵀ]): collection over a
corpus, the disk cache, provenance, ROME / MEMIT ``.npz`` files, the ``"auto"`` sample size, and
the corpus sources. This layer sits under :mod:`interp_edit.editing` and never imports it.

- :mod:`~interp_edit.statistics.keys` — the entry points: ``key_statistics``, ``second_moments``,
  ``editor_statistics``;
- :mod:`~interp_edit.statistics.collect` — the forward pass that accumulates C, and the cache;
- :mod:`~interp_edit.statistics.store` — the statistics and factorisations kept in memory on the
  model across edits (``clear_statistics_cache`` drops them);
- :mod:`~interp_edit.statistics.auto` — ``n_samples="auto"``: grow the sample until the edit stops
  changing;
- :mod:`~interp_edit.statistics.provenance` — ``KeyStatistics`` and ``StatsProvenance``;
- :mod:`~interp_edit.statistics.npz` — the authors' ``.npz`` layout, read and written;
- :mod:`~interp_edit.statistics.corpus` — where texts come from (lists, files, folders, hub).
"""

from interp_edit.statistics.corpus import Corpus, read_texts
from interp_edit.statistics.keys import editor_statistics, key_statistics, provenance_records, second_moments
from interp_edit.statistics.npz import read_npz, write_npz
from interp_edit.statistics.provenance import KeyStatistics, StatsProvenance
from interp_edit.statistics.store import clear_statistics_cache

__all__ = ["Corpus", "KeyStatistics", "StatsProvenance", "clear_statistics_cache", "editor_statistics", "key_statistics", "provenance_records",
           "read_npz", "read_texts", "second_moments", "write_npz"]
