"""How edits compose over time: an edit active through ``hooked`` counts as active for ``apply``
and ``hooked`` (its effect is never added twice), and a hook's settings are part of an edit's
content (two steering edits that differ only in their scale are different edits)."""

from __future__ import annotations

import pytest
import torch

from interp_edit.adapter import hook_counts, model_fingerprint
from interp_edit.editing import Edit, LowRankDelta, applied_edits
from interp_edit.editing.hooks import AdditiveSteering
from interp_edit.errors import EditApplicationError

PROMPT = "As everyone knows, Talvik Corlo was born in"


def logits(model):
    return model(model.to_tokens(PROMPT))


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(model, state):
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


def weight_edit(model, seed: int = 0) -> Edit:
    g = torch.Generator().manual_seed(seed)
    delta = LowRankDelta(torch.randn(model.cfg.d_mlp, 2, generator=g), torch.randn(2, model.cfg.d_model, generator=g))
    return Edit("test", {"blocks.1.mlp.W_out": delta}, model_fingerprint(model))


def steering(model, scale: float) -> Edit:
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    return Edit("steer", {}, model_fingerprint(model), hooks={"s": AdditiveSteering("blocks.1.hook_resid_post", vector, scale)})


def test_an_edit_active_through_hooks_is_not_applied_or_hooked_again(tiny_model, tmp_path):
    before = snapshot(tiny_model)
    edit = weight_edit(tiny_model)
    twin = Edit.load(edit.save(tmp_path / "twin"))  # the same content, another object
    with edit.applied(tiny_model):
        once = logits(tiny_model)
    for other in (edit, twin):
        with edit.hooked(tiny_model):
            with pytest.raises(EditApplicationError, match="active through hooks"):
                other.apply(tiny_model)
            with pytest.raises(EditApplicationError, match="active through hooks"), other.hooked(tiny_model):
                pass
            assert applied_edits(tiny_model) == []  # refused before anything changed
            assert_same(tiny_model, before)
            assert (logits(tiny_model) - once).abs().max() < 1e-4  # the effect counted once
    # the block's end (also by an exception) forgets it: the edit applies again
    with pytest.raises(KeyError), edit.hooked(tiny_model):
        raise KeyError("inside")
    with edit.applied(tiny_model):
        assert torch.equal(logits(tiny_model), once)
    assert_same(tiny_model, before)
    assert hook_counts(tiny_model) == {}


def test_a_hooks_settings_are_part_of_the_edits_content(tiny_model, tmp_path):
    base = logits(tiny_model)
    one, three = steering(tiny_model, 1.0), steering(tiny_model, 3.0)
    assert one.content_hash() != three.content_hash()
    loaded = Edit.load(three.save(tmp_path / "three"))
    assert loaded.content_hash() == three.content_hash()
    with one.applied(tiny_model), three.applied(tiny_model):  # two different steering edits stack
        with pytest.raises(EditApplicationError, match="same content"):
            loaded.apply(tiny_model)  # the same steering edit twice is still refused
        assert len(applied_edits(tiny_model)) == 2
    assert hook_counts(tiny_model) == {} and torch.equal(logits(tiny_model), base)


def _distinct_people(records, n: int) -> list:
    seen, out = set(), []
    for r in records:
        if r.subject not in seen:
            seen.add(r.subject)
            out.append(r)
        if len(out) == n:
            break
    return out


def test_a_sequential_editor_refuses_a_batch_whose_previous_edit_is_not_applied(toy_model, person_records):
    from interp_edit.editing import AlphaEditor, UltraEditState, ultraedit

    records = _distinct_people(person_records, 6)
    editor = AlphaEditor(toy_model)
    first = editor(toy_model, records[:2])
    preserved = {k: v.clone() for k, v in editor.preserved.items()}
    with pytest.raises(EditApplicationError, match="AlphaEditor .2 edits preserved. .*not applied"):
        editor(toy_model, records[2:4])  # the first batch's keys are preserved, its values never written
    assert editor.n_edited == 2 and all(torch.equal(editor.preserved[k], v) for k, v in preserved.items())
    with first.applied(toy_model):
        second = editor(toy_model, records[2:4])
        with second.applied(toy_model):
            pass
        with pytest.raises(EditApplicationError, match="undone since"):
            editor(toy_model, records[4:6])  # the second batch was undone
    state = UltraEditState()
    one = ultraedit(toy_model, records[:2], state=state)
    with pytest.raises(EditApplicationError, match="argument 'state'"):
        ultraedit(toy_model, records[2:4], state=state)
    assert state.n_batches == 1
    resumed = UltraEditState.from_state_dict(state.state_dict())  # (a sequential run resumes from it)
    with one.hooked(toy_model):  # hooked counts as applied
        ultraedit(toy_model, records[2:4], state=resumed)
    assert resumed.n_batches == 2


def test_wise_refuses_to_continue_a_memory_active_through_hooks(toy_model, person_records):
    from interp_edit.editing import wise
    from interp_edit.errors import EditConfigError

    records = _distinct_people(person_records, 2)
    memory = wise(toy_model, records[:1], n_iter=2)
    with memory.hooked(toy_model), pytest.raises(EditConfigError, match="argument 'memory'.*undo it first"):
        wise(toy_model, records[1:], memory=memory, n_iter=2)  # its hooks would act while training the extension
