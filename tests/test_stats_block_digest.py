"""Statistics cached for one model are not read for another with the same embeddings but other
blocks (a saved edited model, a merged adapter): the cache file records what the weights below
the key site sum to (``key_site_digest``), the same on either backend."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

from interp_edit.adapter.block_digest import key_site_digest
from interp_edit.statistics.keys import second_moments
from interp_edit.statistics.store import clear_statistics_cache
from tests.family_models import FAMILY_NAMES, family_hf, family_model

TEXTS = ["Talvik Corlo was born in Karsa.", "People say that Lisvo Pimlo speaks Heskian.", "Korwa Drarin plays the harp.",
         "As everyone knows, Beldel Nordel works as a doctor."]

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")


def _hf_block_sums(hf) -> tuple[float, float]:
    """Σw, Σw² over every matrix in the Hugging Face model's decoder layers, read off its state
    dict by name (no interp_edit code)."""
    total, squares = 0.0, 0.0
    for name, tensor in hf.state_dict().items():
        if tensor.dim() == 2 and _LAYER.search(name):
            values = tensor.double()
            total += values.sum().item()
            squares += (values * values).sum().item()
    return total, squares


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_digest_sums_the_checkpoints_block_matrices_on_either_backend(family):
    model = family_model(family, processed=False)
    last = model.cfg.n_layers - 1
    known: dict = {}
    digest = key_site_digest(model, last, "mlp_post", known)
    out_sums = known[last]["mlp_out"]
    expected = _hf_block_sums(family_hf(family))
    got = (digest[0] + out_sums[0], digest[1] + out_sums[1])
    assert got[1] == pytest.approx(expected[1], rel=1e-9)
    assert got[0] == pytest.approx(expected[0], rel=1e-9, abs=1e-9 * expected[1])
    # the keys below the site depend on less than those above it
    assert key_site_digest(model, last, "z")[1] < digest[1]
    assert key_site_digest(model, 0, "mlp_post")[1] < key_site_digest(model, 1, "z")[1] + 1e-12


def _moments(model, layers, tmp_path):
    """Read through the disk cache (a fresh model object's view: the in-memory store dropped)."""
    clear_statistics_cache(model)
    return second_moments(model, layers, corpus=TEXTS, cache_dir=tmp_path, progress=False)


def _no_warning_moments(model, layers, tmp_path):
    clear_statistics_cache(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return second_moments(model, layers, corpus=TEXTS, cache_dir=tmp_path, progress=False)


def test_cache_of_a_model_with_other_blocks_is_recomputed(toy_model, tmp_path):
    base = _no_warning_moments(toy_model, [1, 2], tmp_path)
    assert torch.equal(base[1], _no_warning_moments(toy_model, [1, 2], tmp_path)[1])  # read back, no warning
    w_in = toy_model.blocks[0].mlp.W_in
    w_out = toy_model.blocks[1].mlp.W_out
    saved_in, saved_out = w_in.detach().clone(), w_out.detach().clone()
    try:
        with torch.no_grad():  # the blocks of a merged checkpoint: embeddings (fingerprint) as they were
            w_in.add_(1e-3 * torch.randn(w_in.shape, generator=torch.Generator().manual_seed(0)))
        with pytest.warns(UserWarning, match=r"blocks up to layer 1 differ.*recomputing") as caught:
            other = _moments(toy_model, [1, 2], tmp_path)
        assert len([w for w in caught if "differ" in str(w.message)]) == 2  # both layers' files
        assert not torch.allclose(other[1], base[1], rtol=1e-6, atol=0)
        assert torch.equal(other[1], _no_warning_moments(toy_model, [1, 2], tmp_path)[1])  # rewritten for it
    finally:
        with torch.no_grad():
            w_in.copy_(saved_in)
    with pytest.warns(UserWarning, match="differ"):  # the base again: its statistics again
        again = _moments(toy_model, [1, 2], tmp_path)
    assert torch.allclose(again[1], base[1], rtol=1e-12, atol=0)
    try:  # a change to the weight written at layer 1 (W_out) leaves layer 1's keys: only layer 2 is recomputed
        with torch.no_grad():
            w_out.add_(1e-3)
        with pytest.warns(UserWarning, match="differ") as caught:
            _moments(toy_model, [1, 2], tmp_path)
        assert [w for w in caught if "differ" in str(w.message)][0].message.args[0].count("_L2.safetensors") == 1
        assert len([w for w in caught if "differ" in str(w.message)]) == 1
    finally:
        with torch.no_grad():
            w_out.copy_(saved_out)


def test_edits_applied_in_place_read_the_base_models_cache(toy_model, tmp_path):
    from interp_edit.adapter import model_fingerprint
    from interp_edit.editing import Edit, LowRankDelta

    cfg = toy_model.cfg
    base = _no_warning_moments(toy_model, [1, 2], tmp_path)
    edit = Edit("test", {"blocks.1.mlp.W_out": LowRankDelta(torch.ones(cfg.d_mlp, 1), torch.ones(1, cfg.d_model))},
                model_fingerprint(toy_model))
    edit.apply(toy_model)
    try:  # the statistics belong to the base model, whose digest the file holds
        again = _no_warning_moments(toy_model, [1, 2], tmp_path)
    finally:
        edit.undo(toy_model)
    assert torch.equal(again[2], base[2])


def _kept_moments(model, layers, tmp_path):
    """Read with the in-memory store as it is (a second edit's view), no warning allowed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return second_moments(model, layers, corpus=TEXTS, cache_dir=tmp_path, progress=False)


def test_kept_statistics_follow_blocks_changed_in_place_without_an_edit(toy_model, tmp_path):
    """The in-memory store (what a second edit reads) applies the disk cache's rule: after a
    fine-tune of block 0 in place (embeddings unchanged, no Edit), layer 1's statistics are those
    of the changed model (what a fresh model object reads), not the kept ones; once the weights
    are back, the base's again."""
    clear_statistics_cache(toy_model)
    base = _kept_moments(toy_model, [1], tmp_path)[1]
    w_in = toy_model.blocks[0].mlp.W_in
    saved = w_in.detach().clone()
    try:
        with torch.no_grad():
            w_in.mul_(1.5)
        changed = _kept_moments(toy_model, [1], tmp_path)[1]
        assert not torch.allclose(changed, base, rtol=1e-6, atol=0)
        assert torch.equal(changed, _no_warning_moments(toy_model, [1], tmp_path)[1])  # what a fresh read gives
    finally:
        with torch.no_grad():
            w_in.copy_(saved)
    assert torch.allclose(_kept_moments(toy_model, [1], tmp_path)[1], base, rtol=1e-12, atol=0)


def test_kept_statistics_stay_while_an_edit_is_applied(toy_model, tmp_path):
    """While an edit is applied the statistics are the base model's, even after an in-place write
    (the edit's W_out is in layer 2's digest): the kept tensor itself is returned, nothing is
    recomputed or re-read."""
    from interp_edit.adapter import model_fingerprint
    from interp_edit.editing import Edit, LowRankDelta

    cfg = toy_model.cfg
    clear_statistics_cache(toy_model)
    base = _kept_moments(toy_model, [2], tmp_path)[2]
    edit = Edit("test", {"blocks.1.mlp.W_out": LowRankDelta(torch.ones(cfg.d_mlp, 1), torch.ones(1, cfg.d_model))},
                model_fingerprint(toy_model))
    with edit.applied(toy_model):
        with torch.no_grad():  # an in-place write while it is applied (same values): the weights' versions move
            toy_model.blocks[0].mlp.W_in.mul_(1.0)
        assert _kept_moments(toy_model, [2], tmp_path)[2] is base
    assert _kept_moments(toy_model, [2], tmp_path)[2] is base  # undone bit for bit: still the base's
