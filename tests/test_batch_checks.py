"""Batches and request sets are checked item by item before any compute: one bad prompt,
target or neuron in an ablation batch is named by its index; ACE requests that rewrite one
subject and relation to two objects (or give one question two answers) are refused naming
both places, while a fact restated by several requests is accepted."""

from __future__ import annotations

import pytest
from model_state import refused_before_any_forward

from interp_edit.adapter import model_fingerprint
from interp_edit.analysis.ablation import ablate_neurons
from interp_edit.analysis.attribution import Neuron
from interp_edit.editing import ACERequest, EditRequest, ace
from interp_edit.editing.methods.ace import prepare_ace_requests
from interp_edit.errors import EditRequestError, EmptyInputError, InvalidArgumentError, PromptTooLongError

PROMPT = "Talvik Corlo was born in"
NEURONS = [Neuron("ffn", 2, 7), Neuron("attn", 3, 5, head=1)]


@pytest.fixture
def no_forward(toy_model):
    with refused_before_any_forward(toy_model) as calls:
        yield calls


@pytest.mark.parametrize("prompts, targets, neurons, error, match", [
    ([PROMPT, 5, PROMPT], None, NEURONS, InvalidArgumentError, r"prompts\[1\] must be a string, got 5"),
    ([PROMPT, PROMPT, "  "], None, NEURONS, EmptyInputError, r"empty prompts\[2\]"),
    ([PROMPT, "word " * 400], None, NEURONS, PromptTooLongError, r"prompts\[1\] .* tokens; the model's context"),
    ([], None, NEURONS, InvalidArgumentError, "prompts is empty"),
    ([PROMPT, PROMPT], ["Karsa", 3.5], NEURONS, InvalidArgumentError, r"targets\[1\] must be a string, got 3.5"),
    ([PROMPT, PROMPT], ["Karsa", ""], NEURONS, EmptyInputError, r"empty targets\[1\]"),
    ([PROMPT, PROMPT], [10**9, None], NEURONS, InvalidArgumentError, r"targets\[0\] must be <= "),
    ([PROMPT, PROMPT], ["Karsa"], NEURONS, InvalidArgumentError, "2 prompts but 1 targets"),
    ([PROMPT], None, [NEURONS[0], (2, 7)], InvalidArgumentError, r"neurons\[1\] must be a Neuron or ScoredNeuron"),
    ([PROMPT], None, [Neuron("ffn", 2, 7, pos=40)], InvalidArgumentError, r"position 40 is beyond prompts\[0\]"),
])
def test_one_bad_item_in_an_ablation_batch_is_named_before_any_forward(toy_model, no_forward, prompts, targets, neurons,
                                                                       error, match):
    with pytest.raises(error, match=match):
        ablate_neurons(toy_model, neurons, prompts, targets)


@pytest.mark.parametrize("kwargs, match", [({"mode": "half"}, "mode must be one of"), ({"batch_size": 0}, "batch_size must be >= 1")])
def test_ablation_arguments_are_named(toy_model, no_forward, kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        ablate_neurons(toy_model, NEURONS, [PROMPT], **kwargs)


def test_a_good_ablation_batch_still_runs(toy_model):
    res = ablate_neurons(toy_model, NEURONS, [PROMPT, "Korwa Drarin was born in"], ["Karsa", None])
    assert len(res.drop) == 2


def fact(subject: str, target: str, prompt: str = "{} was born in") -> EditRequest:
    return EditRequest(prompt, subject, target)


def question(subject: str, answer: str) -> tuple[tuple[str], tuple[str]]:
    return (f"The capital of the homeland of {subject} is",), (answer,)


@pytest.mark.parametrize("requests, match", [
    ([ACERequest((fact("Talvik Corlo", "Pellin"),), *question("Talvik Corlo", "Briva")),
      ACERequest((fact("Talvik Corlo", "Karsa"),), *question("Talvik Corlo", "Veltra"))],
     r"request 0 fact 0 and request 1 fact 0 conflict: both rewrite 'Talvik Corlo was born in'.*'Pellin' vs 'Karsa'"),
    ([ACERequest((fact("Talvik Corlo", "Pellin"), fact("Talvik Corlo", "Karsa")), *question("Talvik Corlo", "Briva"))],
     r"request 0 fact 0 and request 0 fact 1 conflict"),
    ([ACERequest((fact("Talvik Corlo", "Pellin"),), *question("Talvik Corlo", "Briva")),
      ACERequest((fact("Talvik Corlo", "Pellin"),), *question("Talvik Corlo", "Veltra"))],
     r"request 0 multi-hop prompt 0 and request 1 multi-hop prompt 0 conflict: the question .* two new answers"),
])
def test_ace_requests_that_contradict_each_other_are_refused(toy_model, no_forward, requests, match):
    with pytest.raises(EditRequestError, match=match):
        ace(toy_model, requests, query_layers=(0,), value_layers=(3,), steps=2)


def test_ace_accepts_one_fact_restated_by_several_requests(toy_model):
    shared = fact("Talvik Corlo", "Pellin")
    requests = [ACERequest((shared,), *question("Talvik Corlo", "Briva")),
                ACERequest((shared, fact("Korwa Drarin", "Karsa")), ("The homeland of Korwa Drarin is",), ("Zell",))]
    rows = prepare_ace_requests(toy_model, requests, model_fingerprint(toy_model))
    assert len(rows.requests) == 2 and len(rows.query) == 3

