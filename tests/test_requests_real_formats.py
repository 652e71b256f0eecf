"""Edit requests in the layouts users bring: EasyEdit's KnowEdit ZsRE records (``cond``,
``locality``, ``portability`` and a list ``ground_truth``), a data set case's ``Rewrite``
objects, and a raw MQuAKE record (refused, naming the request and pointing to
``case.rewrites()``). The expected requests are written out by hand here."""

from __future__ import annotations

import copy
import json

import pytest

from interp_edit.data import load_dataset
from interp_edit.editing import edit
from interp_edit.editing.requests import EditRequest, as_request
from interp_edit.errors import EditRequestError

#: a ZsRE record in KnowEdit's layout (EasyEdit examples/KnowEdit.md), with toy-world entities
KNOWEDIT_ZSRE = {
    "subject": "Talvik Corlo", "target_new": "Gemmel", "prompt": "Talvik Corlo was born in",
    "ground_truth": ["Karsa"], "rephrase_prompt": "As everyone knows, Talvik Corlo is a native of",
    "cond": "Karsa >> Gemmel || Talvik Corlo was born in",
    "locality": {"Relation_Specificity": [{"prompt": "Talvik Corlo plays the", "ground_truth": ["oboe"]}]},
    "portability": {"Reasoning": [{"prompt": "Talvik Corlo comes from the country of", "ground_truth": "Heskia"}]},
}
EXPECTED = EditRequest("{} was born in", "Talvik Corlo", "Gemmel", "Karsa",
                       ("As everyone knows, Talvik Corlo is a native of",))

MQUAKE = {
    "case_id": 7,
    "requested_rewrite": [{"prompt": "{} was born in", "subject": "Talvik Corlo", "relation_id": "born_in",
                           "target_new": {"str": "Pellin"}, "target_true": {"str": "Karsa"}},
                          {"prompt": "{} was born in", "subject": "Zellen Hulra", "relation_id": "born_in",
                           "target_new": {"str": "Ulmora"}, "target_true": {"str": "Tivel"}}],
    "questions": ["The capital of the homeland of Talvik Corlo is"], "answer": "Elvast", "new_answer": "Briva",
}


def test_a_knowedit_zsre_record_is_a_request():
    assert as_request(KNOWEDIT_ZSRE) == EXPECTED


def test_a_knowedit_zsre_record_is_edited(toy_model):
    e = edit(toy_model, [KNOWEDIT_ZSRE], "ft", steps=1)
    assert e.requests[0]["target_true"] == "Karsa" and e.requests[0]["prompt"] == "{} was born in"


@pytest.mark.parametrize("value, field", [([], "'ground_truth'"), ([3], "'ground_truth[0]'"), ([""], "'ground_truth[0]'"),
                                          (5, "'ground_truth'")])
def test_a_bad_ground_truth_is_named_as_written(value, field):
    record = dict(copy.deepcopy(KNOWEDIT_ZSRE), ground_truth=value)
    with pytest.raises(EditRequestError) as err:
        as_request(record, 4)
    assert "request 4" in str(err.value) and field in str(err.value) and "target_true" not in str(err.value)


def test_a_bad_rephrase_prompt_is_named_as_written():
    record = dict(copy.deepcopy(KNOWEDIT_ZSRE), rephrase_prompt=["ok", 3])
    with pytest.raises(EditRequestError, match="request 0: field 'rephrase_prompt'"):
        as_request(record)


def test_an_unknown_key_is_still_refused():
    with pytest.raises(EditRequestError, match="unknown key 'conditions'"):
        as_request(dict(KNOWEDIT_ZSRE, conditions="x"))


def test_a_raw_mquake_record_is_refused_naming_the_request_and_the_way(toy_model):
    with pytest.raises(EditRequestError, match=r"request 1: field 'requested_rewrite' is a list of 2 rewrites.*rewrites\(\)"):
        edit(toy_model, [EXPECTED, MQUAKE], "ft", steps=1)


def test_rewrites_of_cases_are_requests(toy_model, tmp_path):
    path = tmp_path / "mquake.json"
    path.write_text(json.dumps([MQUAKE]))
    case = load_dataset(path)[0]
    e = edit(toy_model, list(case.rewrites()), "ft", steps=1)
    # the requests as the record writes them
    assert [(r["prompt"], r["subject"], r["target_new"], r["target_true"]) for r in e.requests] == [
        ("{} was born in", "Talvik Corlo", "Pellin", "Karsa"), ("{} was born in", "Zellen Hulra", "Ulmora", "Tivel")]
    assert edit(toy_model, case.rewrite, "ft", steps=1).requests[0]["subject"] == "Talvik Corlo"  # one Rewrite alone
