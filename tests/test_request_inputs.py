"""Inputs of the evaluation entry points and of dict edit requests: what one format can be
read as unambiguously is converted (a public CounterFact dict for ``counterfact_scores``,
EasyEdit's request keys for ``edit``), anything else is refused before any compute with an
error naming the item's index and the field."""

from __future__ import annotations

import dataclasses
import math

import pytest
from model_state import assert_unchanged, refused_before_any_forward, snapshot

from interp_edit.editing import EditRequest, edit
from interp_edit.editing.requests import as_request
from interp_edit.errors import EditRequestError, InvalidArgumentError
from interp_edit.evaluation import evaluate_cases, ripple_scores
from interp_edit.evaluation.commonsense import commonsense_scores
from interp_edit.evaluation.counterfact import counterfact_scores
from interp_edit.evaluation.multihop_edits import multihop_edit_scores, toy_multihop_edit_cases


def _request(record) -> EditRequest:
    return EditRequest(record.prompt, record.subject, record.target_new, record.target_true)


# --- counterfact_scores and its siblings ------------------------------------------------------

def test_counterfact_scores_of_public_counterfact_dicts_equal_the_records(toy_model, person_records):
    records = person_records[:3]
    dicts = [r.to_counterfact() for r in records]
    expected, got = counterfact_scores(toy_model, records), counterfact_scores(toy_model, dicts)
    assert len(got) == len(expected) == 3
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert (math.isnan(a[key]) and math.isnan(b[key])) or a[key] == b[key], key
    # without the toolkit's extension (same_subject_prompts) and the case id, the rest is the same
    bare = [{k: v for k, v in d.items() if k not in ("same_subject_prompts", "case_id")} for d in dicts]
    for a, b in zip(counterfact_scores(toy_model, bare), expected, strict=True):
        assert math.isnan(a["same_subject"])
        assert {k: v for k, v in a.items() if k != "same_subject"} == {k: v for k, v in b.items() if k != "same_subject"}


def test_counterfact_scores_refuses_an_edit_request_saying_what_it_needs(toy_model, person_records):
    good = person_records[0]
    with refused_before_any_forward(toy_model), pytest.raises(InvalidArgumentError) as info:
        counterfact_scores(toy_model, [good, _request(person_records[1])])
    message = str(info.value)
    assert message.startswith("records[1]: expected a CounterFactRecord, got EditRequest")
    for needed in ("paraphrase", "neighbourhood", "counterfact_records", "requested_rewrite", "load_dataset"):
        assert needed in message
    with refused_before_any_forward(toy_model), pytest.raises(InvalidArgumentError, match=r"records\[1\]: a dict without 'requested_rewrite'"):
        counterfact_scores(toy_model, [good, _request(person_records[1]).as_dict()])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(target_true=None), r"records\[1\]: field 'target_true' of the CounterFactRecord must be str, got None"),
        (dict(target_new=" "), r"records\[1\]: field 'target_new' of the CounterFactRecord is an empty string"),
        (dict(paraphrase_prompts=("fine", 3)), r"records\[1\]: field 'paraphrase_prompts\[1\]' .*must be str, got 3"),
        (dict(same_subject_prompts=(("Talvik Corlo works as a", None),)), r"records\[1\]: field 'same_subject_prompts\[0\]\[1\]'"),
    ],
)
def test_counterfact_scores_names_the_index_and_field_of_a_bad_record(toy_model, person_records, change, match):
    bad = dataclasses.replace(person_records[1], **change)
    with refused_before_any_forward(toy_model), pytest.raises(InvalidArgumentError, match=match):
        counterfact_scores(toy_model, [person_records[0], bad])


@pytest.mark.parametrize(
    ("edit_dict", "match"),
    [
        (lambda d: d.pop("paraphrase_prompts"), r"record 1: field 'paraphrase_prompts': missing"),
        (lambda d: d["requested_rewrite"].update(target_true=None), r"record 1: field 'requested_rewrite.target_true': missing"),
        (lambda d: d["requested_rewrite"]["target_new"].update(str=""), r"record 1: field 'requested_rewrite.target_new'"),
        (lambda d: d.update(same_subject_prompts=["a prompt"]), r"records\[1\]: field 'same_subject_prompts'"),
    ],
)
def test_counterfact_scores_names_the_index_and_field_of_a_bad_dict(toy_model, person_records, edit_dict, match):
    bad = person_records[1].to_counterfact()
    edit_dict(bad)
    with refused_before_any_forward(toy_model), pytest.raises(InvalidArgumentError, match=match):
        counterfact_scores(toy_model, [person_records[0].to_counterfact(), bad])


def test_sibling_scores_check_their_cases_the_same_way(toy_model, toy_world, person_records):
    cases = toy_multihop_edit_cases(toy_world, n=2)
    no_truth = dataclasses.replace(cases[1], fact=dataclasses.replace(cases[1].fact, target_true=None))
    with refused_before_any_forward(toy_model), pytest.raises(InvalidArgumentError, match=r"cases\[1\]: field 'fact.target_true'"):
        multihop_edit_scores(toy_model, [cases[0], no_truth])
    with refused_before_any_forward(toy_model), pytest.raises(InvalidArgumentError, match=r"cases\[0\]: expected a RippleCase, got EditRequest"):
        ripple_scores(toy_model, [_request(person_records[0])])
    with refused_before_any_forward(toy_model), pytest.raises(InvalidArgumentError, match=r"cases\[0\]: expected a CommonsenseCase, got CounterFactRecord"):
        commonsense_scores(toy_model, None, [person_records[0]])
    with refused_before_any_forward(toy_model), pytest.raises(InvalidArgumentError, match=r"cases\[0\]: expected a CounterFactCase or ZsRECase"):
        evaluate_cases(toy_model, [person_records[0]])


# --- dict requests: EasyEdit's keys, unknown keys -----------------------------------------------

def test_easyedit_keys_are_read_as_the_request_fields():
    request = as_request({"prompt": "Talvik Corlo was born in", "subject": "Talvik Corlo", "target_new": "Gemmel",
                          "ground_truth": "Karsa", "rephrase_prompt": "Talvik Corlo is a native of",
                          "locality_prompt": "Lisvo Pimlo was born in", "locality_ground_truth": "Karsa",
                          "portability": {}, "locality": {}})
    assert request == EditRequest("{} was born in", "Talvik Corlo", "Gemmel", "Karsa", ("Talvik Corlo is a native of",))
    listed = as_request({"prompt": "{} was born in", "subject": "Talvik Corlo", "target_new": "Gemmel",
                         "ground_truth": "Karsa", "rephrase_prompt": ["a", "b"]})
    assert listed.paraphrases == ("a", "b") and listed.target_true == "Karsa"
    with pytest.raises(EditRequestError, match=r"request 2: fields 'target_true' and 'ground_truth'.*differ"):
        as_request({"prompt": "{} was born in", "subject": "Talvik Corlo", "target_new": "Gemmel",
                    "target_true": "Karsa", "ground_truth": "Gemmel"}, 2)


def test_easyedit_request_with_ground_truth_equal_to_target_new_is_refused_before_compute(toy_model, person_records):
    good = person_records[0]
    answer = good.target_true  # what the model already answers
    easyedit = {"prompt": good.prompt, "subject": good.subject, "target_new": answer, "ground_truth": answer,
                "rephrase_prompt": good.paraphrase_prompts[0]}
    state = snapshot(toy_model)
    with refused_before_any_forward(toy_model), pytest.raises(
            EditRequestError, match=r"request 1: field 'target_new' equals target_true .*nothing to edit"):
        edit(toy_model, [person_records[1], easyedit], "rome")
    assert_unchanged(toy_model, state, no_edits=True)


def test_an_unknown_request_key_is_refused_naming_index_and_key(toy_model, person_records):
    good = person_records[0]
    typo = {"prompt": good.prompt, "subject": good.subject, "target_new": good.target_new, "groundtruth": good.target_true}
    with refused_before_any_forward(toy_model), pytest.raises(EditRequestError) as info:
        edit(toy_model, [person_records[1], typo], "rome")
    message = str(info.value)
    assert message.startswith("request 1: unknown key 'groundtruth'")
    for accepted in ("'target_true'", "'paraphrases'", "'ground_truth'", "'rephrase_prompt'", "'case_id'", "requested_rewrite"):
        assert accepted in message


def test_legitimate_flat_dicts_are_accepted(person_records):
    record = person_records[0]
    flat = dataclasses.asdict(record)  # a CounterFactRecord's fields
    assert as_request(flat) == as_request(record)
    assert as_request(_request(record).as_dict()) == _request(record)
    assert as_request({**_request(record).as_dict(), "case_id": 7}) == _request(record)
    assert as_request(record.to_counterfact()) == as_request(record)
