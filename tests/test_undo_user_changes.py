"""``Edit.undo`` respects what the user did after applying: a changed edited weight is refused
by default (nothing changes, the edit stays applied), or undone by subtracting ΔW so the
user's change is kept; changes to weights the edit did not touch are always kept."""

from __future__ import annotations

import pytest
import torch

from interp_edit.adapter import get_parameter, model_fingerprint, weight_checksum
from interp_edit.editing import Edit, applied_edits
from interp_edit.editing.edit import LowRankDelta, SparseRowDelta
from interp_edit.errors import EditApplicationError

W = "blocks.1.mlp.W_out"


def low_rank(model) -> Edit:
    gen = torch.Generator().manual_seed(0)
    delta = LowRankDelta(torch.randn(model.cfg.d_mlp, 2, generator=gen) * 1e-2, torch.randn(2, model.cfg.d_model, generator=gen))
    return Edit("rome", {W: delta}, model_fingerprint(model))


def sparse(model, rows=(3, 7)) -> Edit:
    values = torch.full((len(rows), model.cfg.d_model), 0.25)
    return Edit("fine", {W: SparseRowDelta(torch.tensor(rows), values)}, model_fingerprint(model))


@pytest.fixture
def weight(toy_model):
    param = get_parameter(toy_model, W)
    original = param.data.clone()
    yield param
    param.data.copy_(original)
    while applied_edits(toy_model):
        applied_edits(toy_model)[-1].undo(toy_model, changed="subtract")
    assert torch.equal(param.data, original)


def test_untouched_weights_restore_bit_for_bit(toy_model, weight):
    original = weight.data.clone()
    edit = low_rank(toy_model).apply(toy_model)
    other = get_parameter(toy_model, "blocks.2.mlp.W_out")
    before = other.data.clone()
    other.data[0, 0] += 1.0  # a weight the edit did not touch: kept by undo
    edit.undo(toy_model)
    assert torch.equal(weight.data, original) and other.data[0, 0] == before[0, 0] + 1.0
    other.data.copy_(before)


@pytest.mark.parametrize("make", [low_rank, sparse], ids=["low_rank", "sparse_rows"])
def test_a_changed_edited_weight_is_refused_and_nothing_moves(toy_model, weight, make):
    original = weight.data.clone()
    edit = make(toy_model).apply(toy_model)
    weight.data[5, 4] += 0.5  # the user's change, inside what the edit wrote (row 5 of a dense ΔW; see below for sparse)
    if isinstance(edit.deltas[W], SparseRowDelta):
        weight.data[3, 1] -= 0.125
    now = weight.data.clone()
    with pytest.raises(EditApplicationError, match=rf"parameter\(s\) \['{W}'\] no longer hold what the edit left"):
        edit.undo(toy_model)
    assert torch.equal(weight.data, now) and applied_edits(toy_model) == [edit]  # refused: nothing changed
    edit.undo(toy_model, changed="subtract")  # keeps the change: W_now - ΔW
    expected = now.double() - edit.delta_matrix(W, toy_model).double()
    assert torch.allclose(weight.data.double(), expected, atol=1e-6)
    user = weight.data.double() - original.double()
    assert user[5, 4] == pytest.approx(0.5, abs=1e-6) and applied_edits(toy_model) == []
    changed_entries = (user.abs() > 1e-6).sum()
    assert changed_entries == (2 if isinstance(edit.deltas[W], SparseRowDelta) else 1)


def test_a_change_outside_a_sparse_edits_rows_is_kept_and_its_rows_restored_exactly(toy_model, weight):
    original = weight.data.clone()
    edit = sparse(toy_model, rows=(3, 7)).apply(toy_model)
    weight.data[4, 0] += 1.0  # a row the edit did not write
    edit.undo(toy_model)  # not refused
    assert torch.equal(weight.data[[3, 7]], original[[3, 7]]) and weight.data[4, 0] == original[4, 0] + 1.0


def test_undo_argument_is_checked(toy_model, weight):
    edit = low_rank(toy_model).apply(toy_model)
    with pytest.raises(EditApplicationError, match="changed='keep'.*'refuse' or 'subtract'"):
        edit.undo(toy_model, changed="keep")
    assert applied_edits(toy_model) == [edit]
    edit.undo(toy_model)


def test_the_checksum_sees_any_single_bit(toy_model):
    weight = get_parameter(toy_model, W).data.clone()
    base = weight_checksum(weight)
    assert weight_checksum(weight.clone()) == base
    for i, j in [(0, 0), (100, 17), (weight.shape[0] - 1, weight.shape[1] - 1)]:
        flipped = weight.clone()
        flipped.view(torch.int32)[i, j] ^= 1  # the lowest mantissa bit
        assert weight_checksum(flipped) != base
    swapped = weight.clone()
    swapped[[0, 1]] = swapped[[1, 0]]  # same values, other places
    assert weight_checksum(swapped) != base
    within = weight.clone()
    within[:, [0, 1]] = within[:, [1, 0]]  # the same rows' sums, values in other columns
    assert weight_checksum(within) != base
    assert weight_checksum(weight, chunk_rows=7) == base  # the chunks do not matter
    assert weight_checksum(weight.to(torch.bfloat16)) != base  # another dtype's bits
