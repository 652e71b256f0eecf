"""Requests a key-value editor cannot tell apart are found before any compute: one subject's
facts of several relations share the subject's last-token key, so MEMIT / ROME / AlphaEdit /
IntAttn give them one value. A named warning gives the indices (an error with
``strict=True``), ``edit.info["key_collisions"]`` records them and the edit's repr says so;
requests with their own keys raise nothing."""

from __future__ import annotations

import warnings

import pytest
from model_state import refused_before_any_forward

from interp_edit.editing import EditRequest, edit
from interp_edit.editing.requests import key_collisions, prepare_requests
from interp_edit.errors import EditRequestError, KeyCollisionWarning

FAST = {"memit": dict(layers=(1, 2), steps=2, n_prefixes=1, prefix_length=3, prefix_lengths=None),
        "rome": dict(layer=0, steps=2, n_prefixes=1, prefix_length=3, prefix_lengths=None),
        "alphaedit": dict(layers=(1, 2), steps=2, n_prefixes=1, prefix_length=3, prefix_lengths=None),
        "intattn": dict(mlp_layers=(1,), steps=2, n_prefixes=1, prefix_length=3, prefix_lengths=None)}
SUBJECT = "Talvik Corlo"
SAME_SUBJECT = [EditRequest("{} was born in", SUBJECT, "Karsa"), EditRequest("{} works as a", SUBJECT, "baker"),
                EditRequest("{} was born in", "Korwa Drarin", "Veltra"), EditRequest("{} speaks", SUBJECT, "Dovish")]


@pytest.fixture
def no_forward(toy_model):
    with refused_before_any_forward(toy_model) as calls:
        yield calls


def test_one_subjects_relations_share_its_last_token_key(toy_model):
    treqs = prepare_requests(toy_model, SAME_SUBJECT, "fp")
    assert key_collisions(treqs) == [[0, 1, 3]]
    # keyed at the prompt's last token the prompts differ, so each has its own key
    assert key_collisions(prepare_requests(toy_model, SAME_SUBJECT, "fp", edit_token="prompt_last")) == []
    # subjects sharing a first token: one key at the first token, two at the last
    shared_first = [EditRequest("{} was born in", SUBJECT, "Karsa"), EditRequest("{} was born in", "Talvik Drarin", "Veltra")]
    assert key_collisions(prepare_requests(toy_model, shared_first, "fp")) == []
    assert key_collisions(prepare_requests(toy_model, shared_first, "fp", edit_token="subject_first")) == [[0, 1]]
    # the same key with the same target is no collision (one value serves both)
    agree = [EditRequest("{} was born in", SUBJECT, "Karsa"), EditRequest("{} is from", SUBJECT, "Karsa")]
    assert key_collisions(prepare_requests(toy_model, agree, "fp")) == []


@pytest.mark.parametrize("method", ["memit", "rome", "alphaedit", "intattn"])
def test_strict_refuses_before_any_forward_naming_the_requests(toy_model, no_forward, method):
    with pytest.raises(EditRequestError, match=r"requests \[0, 1, 3\] \('Talvik Corlo', keyed at token .*share one key"):
        edit(toy_model, SAME_SUBJECT, method, strict=True, **FAST[method])


def test_the_warning_the_info_and_the_repr_say_which_requests(toy_model):
    with pytest.warns(KeyCollisionWarning, match=r"MEMIT: requests \[0, 1, 3\].*new targets \['Karsa', 'baker', 'Dovish'\]"):
        e = edit(toy_model, SAME_SUBJECT, "memit", **FAST["memit"])
    assert e.info["key_collisions"] == [[0, 1, 3]] and e.info["edit_token"]["key_collisions"] == [[0, 1, 3]]
    assert "WARNING: requests [0, 1, 3] share one key" in repr(e)
    assert e.warnings() == ["requests [0, 1, 3] share one key (at most one of their targets can hold)"]


def test_distinct_subjects_raise_nothing_and_the_repr_names_preset_and_variant(toy_model):
    distinct = [EditRequest("{} was born in", SUBJECT, "Karsa"), EditRequest("{} was born in", "Korwa Drarin", "Veltra")]
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeyCollisionWarning)
        e = edit(toy_model, distinct, "rome", strict=True, **FAST["rome"])
    assert e.info["key_collisions"] == [] and "WARNING" not in repr(e)
    assert repr(e).startswith("Edit(method='rome', preset='toyworld', variant='r-rome', requests=2")


CSK_FAST = dict(layers=(1, 2), steps=2, n_prefixes=1, prefix_length=3, prefix_lengths=None)
CSK_SAME_SUBJECT = [EditRequest("{} was born in", SUBJECT, "Karsa", verb="was born in"),
                    EditRequest("{} works as a", SUBJECT, "baker", verb="works as a")]


def test_memit_csk_checks_keys_at_its_edit_token_before_any_forward(toy_model, no_forward):
    """MEMIT-CSK keys on a chosen token: one subject's two statements collide at the subject's
    last token (refused under strict before any forward), not at the verb's."""
    with pytest.raises(EditRequestError, match=r"MEMITCSK: requests \[0, 1\] \('Talvik Corlo'.*share one key"):
        edit(toy_model, CSK_SAME_SUBJECT, "memit_csk", strict=True, edit_token="subject_last", **CSK_FAST)


def test_memit_csk_warns_and_records_collisions_but_not_at_distinct_verbs(toy_model):
    with pytest.warns(KeyCollisionWarning, match=r"MEMITCSK: requests \[0, 1\]"):
        e = edit(toy_model, CSK_SAME_SUBJECT, "memit_csk", edit_token="subject_last", **CSK_FAST)
    assert e.info["key_collisions"] == [[0, 1]] and "WARNING: requests [0, 1] share one key" in repr(e)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeyCollisionWarning)
        e = edit(toy_model, CSK_SAME_SUBJECT, "memit_csk", strict=True, edit_token="verb_last", **CSK_FAST)
    assert e.info["key_collisions"] == [] and "WARNING" not in repr(e)
