"""Defects an adversarial review of the key statistics and the figures found: malformed ROME
``.npz`` fields (a fractional or boolean token count, complex or text moments, a layer the model
lacks) are refused by name, never read silently wrong nor raised as a raw ``TypeError``; bad
statistics arguments are named before any forward; the forward dtype keys the cache (a
bfloat16-stored checkpoint loaded in float32 and in bfloat16 has one fingerprint)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_state import refused_before_any_forward

from interp_edit.errors import EditConfigError, StatisticsMismatchError
from interp_edit.statistics.collect import collect_second_moments
from interp_edit.statistics.keys import key_statistics
from interp_edit.statistics.npz import read_npz

TEXTS = ["Talvik Corlo was born in Karsa.", "People say that Lisvo Pimlo speaks Heskian.", "Korwa Drarin plays the harp."]
MODULE = "transformer.h.{}.mlp.c_proj"


def rome_file(root, arrays: dict, layer: int = 0):
    folder = root / "toyworld" / "wikipedia_stats"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{MODULE.format(layer)}_float32_mom2_10.npz"
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def good_arrays(toy_model):
    d = toy_model.cfg.d_mlp
    keys = np.random.default_rng(0).standard_normal((2 * d, d))
    return {"mom2.constructor": np.array("util.runningstats.SecondMoment()"), "mom2.count": np.array(2 * d),
            "mom2.mom2": (keys.T @ keys).astype(np.float32), "sample_size": np.array(10)}


@pytest.mark.parametrize("change, match", [
    ({"mom2.count": np.array(1.7)}, "mom2.count"),  # was read as count 1: C a thousand times too large
    ({"mom2.count": np.array(True)}, "mom2.count"),
    ({"mom2.count": np.array([1024, 3])}, "mom2.count"),
    ({"mom2.count": np.array("1024x")}, "mom2.count"),
    ({"mom2.count": np.array(np.nan)}, "mom2.count"),
    ({"mom2.mom2": "complex"}, "complex"),  # was read with the imaginary part dropped
    ({"mom2.mom2": "bool"}, "bool"),
    ({"mom2.mom2": "text"}, "not real numbers"),
    ({"sample_size": np.array("all")}, "sample size"),
    ({"interp_edit.site": np.array("mlp_post")}, "interp_edit.layer"),
    ({"interp_edit.site": np.array("resid"), "interp_edit.layer": np.array(0)}, "not a key site"),
])
def test_malformed_npz_fields_are_refused_by_name(toy_model, good_arrays, tmp_path, change, match):
    arrays = dict(good_arrays)
    for key, value in change.items():
        if key == "mom2.mom2":
            sums = good_arrays["mom2.mom2"]
            value = {"complex": sums.astype(np.complex64) + 1j, "bool": np.eye(len(sums), dtype=bool),
                     "text": np.full(sums.shape, "a")}[value]
        arrays[key] = value
    path = rome_file(tmp_path, arrays)
    with pytest.raises(StatisticsMismatchError, match=match) as err:
        read_npz(path, toy_model)
    assert str(path) in str(err.value)
    # the good file itself loads, with C = Σ/count
    good = read_npz(rome_file(tmp_path / "good", good_arrays), toy_model)
    assert torch.allclose(good.moment, torch.from_numpy(good_arrays["mom2.mom2"].astype(np.float64)) / good_arrays["mom2.count"])


def test_npz_of_a_layer_the_model_lacks_is_refused(toy_model, good_arrays, tmp_path):
    path = rome_file(tmp_path, good_arrays, layer=toy_model.cfg.n_layers + 3)
    with pytest.raises(StatisticsMismatchError, match=f"layer {toy_model.cfg.n_layers + 3}; this model has"):
        read_npz(path, toy_model)


@pytest.mark.parametrize("kwargs, match", [
    (dict(layers=1), "statistics layers must be a list"),
    (dict(layers="12"), "statistics layers must be a list"),  # was read as layers [1, 2]
    (dict(layers=[1.5]), r"statistics layers\[0\] must be an integer"),  # was layer 1
    (dict(layers=[None]), r"statistics layers\[0\] must be an integer"),
    (dict(layers=[]), "statistics layers is empty"),
    (dict(layers=[1], batch_size=0), "batch_size must be >= 1"),
    (dict(layers=[1], batch_size="4"), "batch_size must be an integer"),
    (dict(layers=[1], n_samples="auto", probe_keys=lambda: {2: torch.ones(1, 512)}), "request keys of layers"),
])
def test_bad_statistics_arguments_are_named_before_any_forward(toy_model, tmp_path, kwargs, match):
    layers = kwargs.pop("layers")
    with refused_before_any_forward(toy_model), pytest.raises(EditConfigError, match=match):
        key_statistics(toy_model, layers, corpus=TEXTS, cache_dir=tmp_path, progress=False, **kwargs)


def test_bad_stats_dict_keys_and_collect_arguments_are_named(toy_model, tmp_path):
    with refused_before_any_forward(toy_model), pytest.raises(StatisticsMismatchError, match="dict keys must be layer numbers"):
        key_statistics(toy_model, [0], corpus=TEXTS, cache_dir=tmp_path, progress=False, stats={"a": "x.npz"})
    with refused_before_any_forward(toy_model):
        with pytest.raises(EditConfigError, match="out of range"):
            collect_second_moments(toy_model, [toy_model.cfg.n_layers], "mlp_post", TEXTS, progress=False)
        with pytest.raises(EditConfigError, match="unknown statistics site"):
            collect_second_moments(toy_model, [0], "resid", TEXTS, progress=False)
    # numpy integers are layers too
    got = key_statistics(toy_model, np.array([1]), corpus=TEXTS, cache_dir=tmp_path, progress=False)
    assert list(got) == [1]


def test_the_forward_dtype_keys_the_cache(tmp_path):
    from interp_edit import load_model
    from interp_edit.adapter import model_fingerprint
    from interp_edit.adapter.params import forget_fingerprint

    as_float32 = load_model("toyworld")
    with torch.no_grad():  # a checkpoint stored in bfloat16 (as most published ones), loaded in float32
        for p in as_float32.parameters():
            p.copy_(p.bfloat16().float())
    forget_fingerprint(as_float32)
    as_bf16 = load_model("toyworld", dtype=torch.bfloat16)
    assert model_fingerprint(as_float32) == model_fingerprint(as_bf16)
    first = key_statistics(as_float32, [3], corpus=TEXTS, cache_dir=tmp_path, progress=False)[3]
    other = key_statistics(as_bf16, [3], corpus=TEXTS, cache_dir=tmp_path, progress=False)[3]
    assert other.provenance.source == "computed" and other.provenance.path != first.provenance.path
    assert not torch.equal(first.moment, other.moment)
    again = key_statistics(as_bf16, [3], corpus=TEXTS, cache_dir=tmp_path, progress=False)[3]
    assert again.provenance.source == "cache" and torch.equal(again.moment, other.moment)
    # a float32 file copied over the bfloat16 one's name is recomputed, not used
    from interp_edit.statistics import clear_statistics_cache

    clear_statistics_cache(as_bf16)
    import shutil

    shutil.copy(first.provenance.path, other.provenance.path)
    with pytest.warns(UserWarning, match="computed by the model in float32, not bfloat16"):
        fixed = key_statistics(as_bf16, [3], corpus=TEXTS, cache_dir=tmp_path, progress=False)[3]
    assert fixed.provenance.source == "computed" and torch.equal(fixed.moment, other.moment)


def test_the_context_texts_are_cut_to_keys_the_cache(tmp_path):
    """The fingerprint leaves n_ctx out (TransformerLens caps some families' context, the bridge
    does not): a model whose context cuts the corpus' texts shorter read the other's C."""
    from interp_edit import load_model
    from interp_edit.adapter import model_fingerprint

    texts = [" ".join(TEXTS * 4)] * 3  # about 40 tokens each
    full, capped = load_model("toyworld"), load_model("toyworld")
    capped.cfg.n_ctx = 12
    assert model_fingerprint(full) == model_fingerprint(capped)
    first = key_statistics(full, [2], corpus=texts, cache_dir=tmp_path, progress=False)[2]
    other = key_statistics(capped, [2], corpus=texts, cache_dir=tmp_path, progress=False)[2]
    assert other.provenance.source == "computed" and other.provenance.path != first.provenance.path
    assert other.provenance.n_tokens < first.provenance.n_tokens and not torch.equal(first.moment, other.moment)
    from interp_edit.statistics import clear_statistics_cache

    clear_statistics_cache(capped)
    import shutil

    shutil.copy(first.provenance.path, other.provenance.path)  # a full-context file under the capped name
    with pytest.warns(UserWarning, match="cut to 64 tokens, this model's context is 12"):
        fixed = key_statistics(capped, [2], corpus=texts, cache_dir=tmp_path, progress=False)[2]
    assert fixed.provenance.source == "computed" and torch.equal(fixed.moment, other.moment)


def test_an_edit_token_aie_without_a_gap_warns_in_repr_and_title(toy_model):
    from interp_edit.analysis.edit_token_aie import TokenFact, edit_token_aie

    # noise far too small to corrupt anything: clean = corrupted, the curves are flat noise
    flat = edit_token_aie(toy_model, [TokenFact("Talvik Corlo was born in", "Talvik Corlo", "Karsa", 4)], samples=2,
                          noise=1e-6)
    assert abs(flat.mean_clean_score - flat.mean_corrupted_score) < 1e-3
    assert "WARNING=" in repr(flat) and "noise-level" in repr(flat)
    assert "WARNING" in flat.plot().layout.title.text


@pytest.mark.parametrize("path, match", [("", "names a folder"), (".", "names a folder"), ("out/", "names a folder"),
                                         ("afile/fig", "is a file, not a folder")])
def test_figure_export_refuses_bad_paths_by_name(tmp_path, monkeypatch, path, match):
    import plotly.graph_objects as go

    from interp_edit.errors import ExportError
    from interp_edit.viz.export import save_figure

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ExportError, match=match):
        save_figure(go.Figure(), path, plotlyjs="inline")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing written


def test_an_existing_folder_given_as_the_path_is_refused_not_written_beside(tmp_path):
    import plotly.graph_objects as go

    from interp_edit.errors import ExportError
    from interp_edit.viz.export import save_figure

    (tmp_path / "figs").mkdir()
    with pytest.raises(ExportError, match="names a folder"):
        save_figure(go.Figure(), tmp_path / "figs", plotlyjs="inline")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figs"] and not list((tmp_path / "figs").iterdir())


@pytest.mark.parametrize("scale", [0, -1.0, float("nan"), "2"])
def test_figure_export_refuses_a_bad_scale(tmp_path, scale):
    import plotly.graph_objects as go

    from interp_edit.errors import ExportError
    from interp_edit.viz.export import save_figure

    with pytest.raises(ExportError, match="scale"):
        save_figure(go.Figure(), tmp_path / "fig", plotlyjs="inline", scale=scale)
    assert list(tmp_path.iterdir()) == []


def _rewrite_moment(path, moment):
    """Rewrite a cache file's moment, keeping its metadata (provenance and checksum) as written."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    save_file({"moment": moment.contiguous()}, str(path), metadata=meta)


def test_a_cache_file_changed_after_it_was_written_is_not_used(toy_model, tmp_path):
    from interp_edit.statistics import clear_statistics_cache

    first = key_statistics(toy_model, [1], corpus=TEXTS, cache_dir=tmp_path, progress=False)[1]
    clear_statistics_cache(toy_model)
    changed = first.moment.clone()
    changed[0, 0] += 1e-3  # provenance and size as written: only the checksum tells
    _rewrite_moment(first.provenance.path, changed)
    with pytest.warns(UserWarning, match="does not match the checksum"):
        fixed = key_statistics(toy_model, [1], corpus=TEXTS, cache_dir=tmp_path, progress=False)[1]
    assert fixed.provenance.source == "computed" and torch.equal(fixed.moment, first.moment)
    # a file given by path is refused outright, naming it
    _rewrite_moment(first.provenance.path, changed)
    with pytest.raises(StatisticsMismatchError, match="does not match the checksum"):
        key_statistics(toy_model, [1], cache_dir=tmp_path, progress=False, stats={1: first.provenance.path})
    # an unchanged file is read back as written
    _rewrite_moment(first.provenance.path, first.moment)
    clear_statistics_cache(toy_model)
    again = key_statistics(toy_model, [1], corpus=TEXTS, cache_dir=tmp_path, progress=False)[1]
    assert again.provenance.source == "cache" and torch.equal(again.moment, first.moment)


def test_a_folder_where_a_cache_file_goes_is_named_before_any_forward(toy_model, tmp_path):
    from interp_edit.statistics import clear_statistics_cache

    first = key_statistics(toy_model, [2], corpus=TEXTS, cache_dir=tmp_path, progress=False)[2]
    clear_statistics_cache(toy_model)
    path = first.provenance.path
    import os

    os.remove(path)
    os.mkdir(path)
    with refused_before_any_forward(toy_model), pytest.raises(EditConfigError, match="is a folder") as err:
        key_statistics(toy_model, [2], corpus=TEXTS, cache_dir=tmp_path, progress=False)
    assert str(path) in str(err.value)
