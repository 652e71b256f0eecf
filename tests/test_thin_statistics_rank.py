"""Rank-deficient key statistics counted from enough tokens: a corpus of a few texts repeated
has more tokens than the key width, but its keys span only a few directions, so C is singular
and ROME's update is huge (‖Δ‖ ~1e7 on the tiny Llama). The editors warn about it as about
statistics of too few tokens (ThinStatisticsWarning, and a note in the edit's repr), from a
rank estimate of C; full-rank statistics do not warn. The reference rank here is
``torch.linalg.matrix_rank`` (an SVD), not the toolkit's estimate."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
from family_models import family_model

from interp_edit.editing import EditRequest, editors
from interp_edit.errors import ThinStatisticsWarning
from interp_edit.statistics import key_statistics
from interp_edit.statistics.provenance import numerical_rank, thin_statistics_note

REQUEST = EditRequest("{} was born in", "Talvik Corlo", target_new="Karsa", target_true="Veltra")
FAST = dict(steps=2, n_prefixes=0, prefix_lengths=None, stats_batch_size=16)


def _texts(n: int, seed: int) -> list[str]:
    from interp_edit.toyworld import load_world
    from interp_edit.toyworld.corpus import CorpusSampler

    sampler = CorpusSampler(load_world(), seed=seed)
    return [sampler.sample() for _ in range(n)]


REPEATED = _texts(3, seed=5) * 12  # 36 texts, 3 distinct
VARIED = _texts(120, seed=11)


def _reference_rank(moment: torch.Tensor) -> int:
    return int(torch.linalg.matrix_rank(moment.double()))


@pytest.mark.parametrize("d, rank, slack", [(96, 0, 0), (96, 1, 0), (96, 17, 0), (96, 60, 0), (96, 96, 0),
                                             (600, 5, 3), (600, 300, 4), (600, 599, 2), (600, 600, 0)])
def test_rank_estimate_matches_the_svd_rank(d, rank, slack):
    """C = KᵀK / N of float32 keys K [N, d] spanning ``rank`` directions (N > d): the estimate is
    the SVD rank at any scale of C — exactly up to 256 wide, within ``slack`` wider (the trace
    is estimated there), and exactly for a full-rank C."""
    gen = torch.Generator().manual_seed(rank)
    n = d + 300
    keys = (torch.randn(n, rank, generator=gen) @ torch.randn(rank, d, generator=gen)).float().double()
    moment = keys.T @ keys / n
    reference = _reference_rank(moment) if rank else 0
    assert reference == rank
    for scale in (1.0, 1e-6, 1e6):
        assert abs(numerical_rank(moment * scale) - reference) <= slack


def test_the_note_names_a_rank_below_the_key_width():
    record = dict(site="mlp_post", layer=2, dim=128, n_tokens=400, rank=37)
    note = thin_statistics_note(record)
    assert note.startswith("key statistics of mlp_post layer 2 are rank-deficient: C's numerical rank is about 37, "
                           "below the key width 128 although 400 tokens were counted")
    assert "more varied texts" in note
    assert thin_statistics_note({**record, "rank": 128}) is None
    assert thin_statistics_note({**record, "rank": None}) is None  # not estimated (e.g. a cache file's record)
    assert "fewer than the key width 128" in thin_statistics_note({**record, "n_tokens": 100})


def test_repeated_texts_warn_although_they_count_more_tokens_than_the_key_width():
    model = family_model("llama")
    layer, dim = 1, model.cfg.d_mlp
    rome = editors()["rome"].fn
    moment = key_statistics(model, [layer], corpus=REPEATED, n_samples=len(REPEATED), progress=False)[layer].moment
    reference = _reference_rank(moment)
    assert reference < dim  # the premise: repeated texts give a singular C

    with pytest.warns(ThinStatisticsWarning, match=rf"ROME: key statistics of mlp_post layer {layer} are rank-deficient: "
                                                   rf"C's numerical rank is about \d+, below the key width {dim}") as caught:
        thin = rome(model, [REQUEST], corpus=REPEATED, stats_samples=len(REPEATED), layer=layer, **FAST)
    (record,) = thin.info["stats"]
    assert record["n_tokens"] >= dim  # the old token-count rule alone misses it
    message = next(str(w.message) for w in caught if issubclass(w.category, ThinStatisticsWarning))
    assert abs(int(re.search(r"rank is about (\d+)", message).group(1)) - reference) <= 2
    assert abs(record["rank"] - reference) <= 2
    assert f"WARNING: key statistics of mlp_post layer {layer} are rank-deficient" in repr(thin)

    with warnings.catch_warnings():  # varied texts: full rank, no warning
        warnings.simplefilter("error", ThinStatisticsWarning)
        varied = rome(model, [REQUEST], corpus=VARIED, stats_samples=len(VARIED), layer=layer, **FAST)
    moment = key_statistics(model, [layer], corpus=VARIED, n_samples=len(VARIED), progress=False)[layer].moment
    assert _reference_rank(moment) == dim == varied.info["stats"][0]["rank"]
    assert "WARNING" not in repr(varied)


def test_a_cache_file_without_a_rank_is_read_and_estimated(tmp_path):
    """Cache files written before the rank was recorded (no ``rank`` in their provenance) are
    read as before; the editor estimates the rank of statistics given as such a file."""
    from safetensors.torch import save_file

    from interp_edit.statistics.collect import load_cache_file, moment_checksum

    model = family_model("llama")
    layer = 1
    stats = key_statistics(model, [layer], corpus=REPEATED, n_samples=len(REPEATED), progress=False,
                           cache_dir=tmp_path)[layer]
    record = stats.provenance.replace(path=None).as_dict()
    record.pop("rank")
    old = tmp_path / "old.safetensors"
    moment = stats.moment.contiguous()
    save_file({"moment": moment}, str(old), metadata={"provenance": json.dumps(record), "crc32": moment_checksum(moment)})
    assert load_cache_file(old).provenance.rank is None
    with pytest.warns(ThinStatisticsWarning, match="rank-deficient"):
        edit = editors()["rome"].fn(model, [REQUEST], stats=str(old), layer=layer, **FAST)
    assert edit.info["stats"][0]["rank"] < model.cfg.d_mlp
