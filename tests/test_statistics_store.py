"""The in-memory statistics store on the model: a warm store gives the same edit as a cleared
one (ROME, MEMIT, AlphaEdit), reads no cache file, clearing frees what it held, and the
factorised solves equal the dense solves (a reference that shares no code with them)."""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import interp_edit
from interp_edit.editing import alphaedit, memit, rome
from interp_edit.editing.closed_form import memit_left_factor, moment_solve
from interp_edit.statistics import clear_statistics_cache, key_statistics
from interp_edit.statistics.store import STORE_ATTR, statistics_store

ROME_FAST = dict(steps=4, n_prefixes=2, prefix_length=4)
MEMIT_FAST = dict(layers=(0, 1), steps=4, n_prefixes=2, prefix_length=4)


def _dense(edit):
    return {name: delta.dense() for name, delta in edit.deltas.items()}


@pytest.mark.parametrize("editor", ["rome", "memit", "alphaedit"])
def test_a_warm_store_gives_the_edit_of_a_cleared_one(toy_model, person_records, monkeypatch, editor):
    import interp_edit.statistics.collect as collect

    # the session's statistics cache folder (computing the toy statistics again is slow)
    run = {"rome": lambda: rome(toy_model, person_records[:2], **ROME_FAST),
           "memit": lambda: memit(toy_model, person_records[:4], **MEMIT_FAST),
           "alphaedit": lambda: alphaedit(toy_model, person_records[:4], **MEMIT_FAST)}[editor]
    clear_statistics_cache(toy_model)
    first = run()  # reads (or computes) the statistics, fills the store
    assert len(statistics_store(toy_model)) > 0
    reads = []
    monkeypatch.setattr(collect, "load_cache_file", lambda path: reads.append(path))  # a read would fail the edit
    warm = run()
    assert reads == []  # nothing read from disk: the store answered
    monkeypatch.undo()
    clear_statistics_cache(toy_model)
    assert len(statistics_store(toy_model)) == 0
    cold = run()  # from the disk cache, factorised again
    for name, delta in _dense(cold).items():
        assert torch.equal(_dense(warm)[name], delta), name
        assert torch.equal(_dense(first)[name], delta), name
    assert warm.info["stats"] == cold.info["stats"]


def test_clearing_frees_the_statistics_and_factors(toy_model):
    clear_statistics_cache(toy_model)
    stats = key_statistics(toy_model, [0], n_samples=4000, progress=False)[0]
    moment = weakref.ref(stats.moment)
    key = torch.ones(stats.moment.shape[0], dtype=torch.float64)
    moment_solve(toy_model, stats.moment, key, "test")
    store = getattr(toy_model, STORE_ATTR)
    factor = weakref.ref(next(iter(store.factors.values()))[1][0])  # the LU tensor
    del stats
    gc.collect()
    assert moment() is not None and factor() is not None  # held by the store
    interp_edit.clear_statistics_cache()  # every model's store
    assert moment() is None and factor() is None
    assert len(store) == 0


def test_a_replaced_cache_file_is_read_again(toy_model, tmp_path):
    clear_statistics_cache(toy_model)
    texts = ["Korwa Drarin plays the harp.", "Talvik Corlo was born in Karsa."]
    first = key_statistics(toy_model, [0], corpus=texts, n_samples=2, cache_dir=tmp_path, progress=False)[0]
    assert key_statistics(toy_model, [0], corpus=texts, n_samples=2, cache_dir=tmp_path,
                          progress=False)[0].moment is first.moment  # from the store
    path = first.provenance.path
    with safe_open(path, "pt") as handle:
        meta = handle.metadata()
    from interp_edit.statistics.collect import moment_checksum

    # another statistic written in the same file, with its own checksum
    save_file({"moment": 2 * first.moment}, path, metadata={**meta, "crc32": moment_checksum(2 * first.moment)})
    again = key_statistics(toy_model, [0], corpus=texts, n_samples=2, cache_dir=tmp_path, progress=False)[0]
    assert torch.equal(again.moment, 2 * first.moment) and json.loads(meta["provenance"])["layer"] == 0
    # other texts are another entry
    other = key_statistics(toy_model, [0], corpus=texts[:1], n_samples=2, cache_dir=tmp_path, progress=False)[0]
    assert not torch.equal(other.moment, first.moment)


def test_a_cache_file_written_in_float32_is_read_as_float64(toy_model, tmp_path):
    from interp_edit.errors import StatisticsMismatchError
    from interp_edit.statistics.collect import load_cache_file, moment_checksum

    clear_statistics_cache(toy_model)
    texts = ["Korwa Drarin plays the harp.", "Talvik Corlo was born in Karsa."]
    first = key_statistics(toy_model, [0], corpus=texts, n_samples=2, cache_dir=tmp_path, progress=False)[0]
    assert first.moment.dtype == torch.float64
    path = first.provenance.path
    with safe_open(path, "pt") as handle:
        meta = handle.metadata()
    narrow = first.moment.float()  # a user's file, written in float32 with its checksum
    save_file({"moment": narrow}, path, metadata={**meta, "crc32": moment_checksum(narrow)})
    clear_statistics_cache(toy_model)
    again = key_statistics(toy_model, [0], corpus=texts, n_samples=2, cache_dir=tmp_path, progress=False)[0]
    assert again.moment.dtype == torch.float64 and torch.equal(again.moment, narrow.double())
    given = key_statistics(toy_model, [0], stats=[path], progress=False)[0]
    assert given.moment.dtype == torch.float64 and torch.equal(given.moment, narrow.double())
    counts = torch.ones_like(narrow, dtype=torch.int64)  # not a moment at all
    save_file({"moment": counts}, path, metadata={**meta, "crc32": moment_checksum(counts)})
    with pytest.raises(StatisticsMismatchError, match=r"its moment holds torch.int64 values"):
        load_cache_file(Path(path))
    clear_statistics_cache(toy_model)


@pytest.mark.parametrize("weight", [1.0, 100.0, 20_000.0])
def test_the_woodbury_memit_solve_equals_the_dense_solve(toy_model, weight):
    cov = key_statistics(toy_model, [1], n_samples=4000, progress=False)[1].moment
    torch.manual_seed(0)
    keys = torch.randn(cov.shape[0], 40, dtype=torch.float64) * cov.diagonal().sqrt()[:, None]
    dense = torch.linalg.solve(weight * cov + keys @ keys.T, keys)
    got = memit_left_factor(toy_model, cov, weight, keys, "test")
    assert float((got - dense).abs().max() / dense.abs().max()) < 1e-9
    # the kept factor serves a second batch of other keys
    keys2 = keys.flip(1)[:, :7]
    assert torch.allclose(memit_left_factor(toy_model, cov, weight, keys2, "test"),
                          torch.linalg.solve(weight * cov + keys2 @ keys2.T, keys2), rtol=1e-9, atol=1e-12)
    # λ = 0 and a singular C fall back to the dense solve
    singular = torch.zeros_like(cov)  # rank d - 40, and the 40 keys span the rest
    singular[40:, 40:] = torch.eye(len(cov) - 40, dtype=torch.float64)
    assert torch.allclose(memit_left_factor(toy_model, singular, weight, keys, "test"),
                          torch.linalg.solve(weight * singular + keys @ keys.T, keys))
    clear_statistics_cache(toy_model)


def test_the_moment_solve_equals_the_dense_solve_and_refuses_a_singular_system(toy_model):
    from interp_edit.errors import EditOptimizationError

    cov = key_statistics(toy_model, [0], n_samples=4000, progress=False)[0].moment
    rhs = torch.arange(cov.shape[0], dtype=torch.float64)
    assert torch.allclose(moment_solve(toy_model, cov, rhs, "test"), torch.linalg.solve(cov, rhs), rtol=1e-10)
    ridged = cov + 0.1 * cov.diagonal().mean() * torch.eye(len(cov), dtype=torch.float64)
    assert torch.allclose(moment_solve(toy_model, cov, rhs, "test", ridge=0.1), torch.linalg.solve(ridged, rhs), rtol=1e-10)
    with pytest.raises(EditOptimizationError, match="the test solve is singular"):
        moment_solve(toy_model, torch.zeros_like(cov), rhs, "test")
    clear_statistics_cache(toy_model)


@pytest.mark.parametrize("editor", ["rome", "memit"])
def test_statistics_thinner_than_the_key_width_are_warned_about_and_shown(toy_model, person_records, editor):
    """C from fewer tokens than the key width is rank-deficient: the edit may be huge and spill
    over (ROME's ‖Δ‖ 359 against 15 on 20 texts of the toy world). A ThinStatisticsWarning names
    the layer and both counts, and the edit's repr says so; statistics of enough tokens do not."""
    import warnings

    from interp_edit.errors import ThinStatisticsWarning

    run = {"rome": lambda **kw: rome(toy_model, person_records[:1], **ROME_FAST, **kw),
           "memit": lambda **kw: memit(toy_model, person_records[:2], **MEMIT_FAST, **kw)}[editor]
    with pytest.warns(ThinStatisticsWarning, match=f"{editor.upper()}: key statistics of mlp_post layer 0 come from "
                                                   rf"\d+ tokens, fewer than the key width {toy_model.cfg.d_mlp}"):
        thin = run(stats_samples=4)
    assert all(r["n_tokens"] < r["dim"] for r in thin.info["stats"])
    assert "WARNING: key statistics of mlp_post layer 0" in repr(thin)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ThinStatisticsWarning)
        enough = run()
    assert "key statistics" not in repr(enough)
