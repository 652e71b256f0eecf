"""Key statistics: the batched pass equals a plain per-text computation, the disk cache is
keyed and used, and a corrupted cache file is recomputed with a warning."""

from __future__ import annotations

import pytest
import torch

from interp_edit.errors import EditConfigError
from interp_edit.statistics.collect import collect_second_moments
from interp_edit.statistics.keys import second_moments

TEXTS = ["Talvik Corlo was born in Karsa.", "People say that Lisvo Pimlo speaks Heskian.", "Korwa Drarin plays the harp.",
         "As everyone knows, Beldel Nordel works as a doctor."]


def test_second_moment_equals_a_plain_loop(toy_model):
    moments = collect_second_moments(toy_model, [1, 3], "mlp_post", TEXTS, batch_size=3, progress=False)
    zs = collect_second_moments(toy_model, [2], "z", TEXTS, batch_size=2, progress=False)
    for layer, site, got in ((1, "mlp_post", moments[1]), (3, "mlp_post", moments[3]), (2, "z", zs[2])):
        keys = []
        for text in TEXTS:
            _, cache = toy_model.run_with_cache(text)
            act = cache[f"blocks.{layer}.mlp.hook_post" if site == "mlp_post" else f"blocks.{layer}.attn.hook_z"][0]
            keys.append(act.reshape(act.shape[0], -1)[1:].double())  # BOS excluded
        keys = torch.cat(keys)
        assert torch.allclose(got, keys.T @ keys / len(keys), atol=1e-5, rtol=1e-4)  # batched float32 forwards


def test_cache_is_keyed_reused_and_recomputed_when_corrupt(toy_model, tmp_path):
    first = second_moments(toy_model, [0, 1], corpus=TEXTS, cache_dir=tmp_path, progress=False)
    files = sorted(tmp_path.glob("*.safetensors"))
    assert len(files) == 2 and all("mlp_post" in f.name for f in files)
    again = second_moments(toy_model, [0, 1], corpus=TEXTS, cache_dir=tmp_path, progress=False)
    assert all(torch.equal(first[k], again[k]) for k in first)
    second_moments(toy_model, [0], corpus=TEXTS[:3], cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3  # another corpus, another file
    files[0].write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable.*recomputing"):
        fixed = second_moments(toy_model, [0, 1], corpus=TEXTS, cache_dir=tmp_path, progress=False)
    assert all(torch.allclose(first[k], fixed[k]) for k in first)


def test_bad_statistics_arguments(toy_model, tmp_path):
    with pytest.raises(EditConfigError, match="out of range"):
        second_moments(toy_model, [6], corpus=TEXTS, cache_dir=tmp_path)
    with pytest.raises(EditConfigError, match="unknown statistics site"):
        second_moments(toy_model, [0], site="resid", corpus=TEXTS, cache_dir=tmp_path)
    with pytest.raises(EditConfigError, match="corpus item 1 is not a string"):
        second_moments(toy_model, [0], corpus=["ok", 3], cache_dir=tmp_path)


def test_statistics_are_not_computed_on_an_edited_model(toy_model, tmp_path):
    from interp_edit.adapter import model_fingerprint
    from interp_edit.editing import Edit, LowRankDelta

    cfg = toy_model.cfg
    edit = Edit("test", {"blocks.0.mlp.W_out": LowRankDelta(torch.ones(cfg.d_mlp, 1), torch.ones(1, cfg.d_model))},
                model_fingerprint(toy_model))
    cached = second_moments(toy_model, [0], corpus=TEXTS, cache_dir=tmp_path, progress=False)
    with edit.applied(toy_model):
        again = second_moments(toy_model, [0], corpus=TEXTS, cache_dir=tmp_path, progress=False)  # from the cache
        with pytest.raises(EditConfigError, match=r"layers \[1\] are not cached.*edits are applied"):
            second_moments(toy_model, [1], corpus=TEXTS, cache_dir=tmp_path, progress=False)
    assert torch.equal(cached[0], again[0])
