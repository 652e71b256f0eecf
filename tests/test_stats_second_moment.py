"""Statistics files must hold a second moment E[k kᵀ] of the layer asked for: a matrix that is
not symmetric, not positive semidefinite, or of another layer is refused before any forward
with the model unchanged — from a ROME ``.npz``, a ``{layer: KeyStatistics}`` dict and our
cache alike — while true moments (rank-deficient, stored in float32) are accepted. A
property test throws random arrays at the importer: it loads them or raises
``StatisticsMismatchError``, nothing else."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model_state import refused_before_any_forward

from interp_edit.adapter import model_fingerprint
from interp_edit.editing.methods.rome import rome
from interp_edit.errors import StatisticsMismatchError
from interp_edit.statistics.collect import read_cache, write_cache
from interp_edit.statistics.npz import read_npz
from interp_edit.statistics.provenance import KeyStatistics, StatsProvenance, check_second_moment

FAST = dict(layer=0, steps=2, n_prefixes=1, prefix_length=3, prefix_lengths=None)
REQUEST = {"prompt": "{} was born in", "subject": "Talvik Corlo", "target_new": "Karsa"}
MODULE = "transformer.h.{}.mlp.c_proj"


def rome_file(root, sums: np.ndarray, count: int = 50, layer: int = 0):
    """A ROME-layout file, written with numpy and ROME's key names."""
    folder = root / "toyworld" / "wikipedia_stats"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{MODULE.format(layer)}_{sums.dtype.name}_mom2_10.npz"
    np.savez(path, **{"mom2.constructor": np.array("util.runningstats.SecondMoment()"), "mom2.count": np.array(count),
                      "mom2.mom2": sums, "sample_size": np.array(10)})
    return path


def true_sums(d: int, n_tokens: int, seed: int = 0) -> np.ndarray:
    keys = np.random.default_rng(seed).standard_normal((n_tokens, d)) * np.linspace(0.1, 3.0, d)
    return keys.T @ keys


def not_psd(d: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((d, d)))
    eigen = np.linspace(1.0, 2.0, d)
    eigen[d // 2] = -0.5  # one negative direction, every diagonal entry still positive
    out = (q * eigen) @ q.T
    out = (out + out.T) / 2
    assert np.diag(out).min() > 0
    return out * 50


def test_non_moments_are_refused_before_any_forward(toy_model, tmp_path):
    d = toy_model.cfg.d_mlp
    sums = true_sums(d, 2 * d)
    skew = sums.copy()
    skew[0, 1] += 0.01 * np.abs(sums).max()
    negative = sums.copy()
    negative[2, 2] = -np.abs(sums).max()
    cases = {"not symmetric": skew, "not positive semidefinite": not_psd(d), "diagonal entry 2 is .* < 0": negative}
    with refused_before_any_forward(toy_model):
        for i, (message, matrix) in enumerate(cases.items()):
            path = rome_file(tmp_path / str(i), matrix.astype(np.float64))
            with pytest.raises(StatisticsMismatchError, match=message):
                read_npz(path, toy_model)
            with pytest.raises(StatisticsMismatchError, match=message):
                rome(toy_model, [REQUEST], stats=path, cache_dir=tmp_path / "cache", **FAST)


def test_true_moments_pass_rank_deficient_and_in_float32(toy_model, tmp_path):
    d = toy_model.cfg.d_mlp
    for i, (n_tokens, dtype) in enumerate([(d // 4, np.float32), (2 * d, np.float32), (3, np.float64)]):
        path = rome_file(tmp_path / str(i), true_sums(d, n_tokens, seed=i).astype(dtype), count=n_tokens)
        got = read_npz(path, toy_model)
        assert got.moment.shape == (d, d)


def test_dict_and_cache_statistics_are_checked_too(toy_model, tmp_path):
    d = toy_model.cfg.d_mlp
    prov = StatsProvenance(model_fingerprint=model_fingerprint(toy_model), site="mlp_post", layer=0, dim=d, corpus="x",
                           corpus_hash="h", n_texts=1, n_tokens=50, dtype="float64", source="computed")
    bad = KeyStatistics(torch.from_numpy(not_psd(d)), prov)
    with pytest.raises(StatisticsMismatchError, match="the given statistics .*not positive semidefinite"):
        rome(toy_model, [REQUEST], stats={0: bad}, cache_dir=tmp_path / "cache", **FAST)
    write_cache(tmp_path / "c.safetensors", bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_cache(tmp_path / "c.safetensors", toy_model, "mlp_post", 0) is None  # recomputed, not used
    assert any("not positive semidefinite" in str(w.message) for w in caught)


def test_a_file_of_another_layer_is_refused_whichever_way_it_comes(toy_model, tmp_path):
    d = toy_model.cfg.d_mlp
    path = rome_file(tmp_path, true_sums(d, 2 * d), layer=3)
    with pytest.raises(StatisticsMismatchError, match="are of layer 3; the edit needs layer 0"):
        read_npz(path, toy_model, layer=0)
    with pytest.raises(StatisticsMismatchError, match="layer 3"):
        rome(toy_model, [REQUEST], stats={0: path}, cache_dir=tmp_path / "cache", **FAST)
    assert read_npz(path, toy_model).provenance.layer == 3  # asked for no layer: the file's own


def test_the_check_itself():
    eye = torch.eye(4, dtype=torch.float64)
    check_second_moment(eye, what="eye")
    check_second_moment(torch.zeros(4, 4, dtype=torch.float64), what="zeros")  # no tokens varied: PSD
    with pytest.raises(StatisticsMismatchError, match="non-finite"):
        check_second_moment(eye * float("nan"), what="nan")
    rank_one = torch.ones(4, 4, dtype=torch.float64)  # eigenvalues 4, 0, 0, 0: PSD and singular
    check_second_moment(rank_one, what="rank one")
    bad = rank_one - torch.diag(torch.tensor([0.0, 0.0, 0.0, 0.5], dtype=torch.float64))  # v = e3 - e2: vᵀCv = -0.5
    with pytest.raises(StatisticsMismatchError, match="not positive semidefinite"):
        check_second_moment(bad, what="x")
    with pytest.raises(StatisticsMismatchError, match="not symmetric"):
        check_second_moment(eye + torch.triu(torch.ones(4, 4, dtype=torch.float64), 1) * 1e-3, what="x")


def random_matrix(d: int, shape: str, kind: str, seed: int, scale: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dims = {"square": (d, d), "wide": (d, d + 1), "small": (d - 1, d - 1), "vector": (d,)}[shape]
    if kind in ("moment", "skewed"):
        keys = rng.standard_normal((int(rng.integers(1, 2 * d)), dims[-1]))
        out = keys.T @ keys if len(dims) == 2 else (keys ** 2).sum(0)
        out = out[: dims[0]] if len(dims) == 2 else out
        if kind == "skewed" and len(dims) == 2:  # a true moment whose upper triangle is off
            out = out + np.triu(rng.standard_normal(out.shape), 1) * np.abs(out).max() * 0.01
        return out * scale
    out = rng.standard_normal(dims) * scale
    if kind in ("symmetrised", "indefinite") and len(dims) == 2 and dims[0] == dims[1]:
        out = (out + out.T) / 2
        if kind == "indefinite":  # every diagonal entry positive, yet not PSD
            np.fill_diagonal(out, np.abs(np.diag(out)) + 0.1 * scale)
    if kind in ("nan", "inf"):
        out.flat[int(rng.integers(out.size))] = np.nan if kind == "nan" else np.inf
    return out


files = st.tuples(st.sampled_from(["square", "square", "wide", "small", "vector"]),
                  st.sampled_from(["moment", "moment", "skewed", "indefinite", "random", "symmetrised", "nan", "inf"]),
                  st.integers(0, 2**16), st.sampled_from([1e-30, 1e-3, 1.0, 1e4, 1e30]), st.integers(-2, 100),
                  st.sampled_from(["float32", "float64", "float16"]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=files)
def test_random_files_load_or_raise_the_named_error(toy_model, tmp_path, case):
    shape, kind, seed, scale, count, dtype = case
    d = toy_model.cfg.d_mlp
    with np.errstate(all="ignore"):
        sums = random_matrix(d, shape, kind, seed, scale).astype(dtype)
    path = tmp_path / "toyworld" / "wikipedia_stats" / f"{MODULE.format(0)}_{dtype}_mom2_10.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{"mom2.count": np.array(count), "mom2.mom2": sums})
    try:
        got = read_npz(path, toy_model)
    except StatisticsMismatchError as err:
        assert str(path) in str(err)
        return
    # accepted: then the file holds a second moment of this layer (a true one, or e.g. all zeros
    # after float16 underflow), checked here with numpy's eigenvalues, not the implementation's rule
    stored = sums.astype(np.float64)
    assert got.moment.shape == (d, d) and count >= 1 and np.isfinite(stored).all()
    assert np.allclose(stored, stored.T, rtol=1e-4, atol=0)
    eigen = np.linalg.eigvalsh((stored + stored.T) / 2)
    assert eigen.min() >= -1e-5 * max(float(np.trace(stored)), 1e-300)
    assert torch.allclose(got.moment, torch.from_numpy(stored) / count)
