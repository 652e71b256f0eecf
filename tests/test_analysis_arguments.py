"""The arguments of the analyses are checked where they enter, before any forward: Q-V
pathways (prompts, targets, counts, ``keep_bias``), the layer window (its curve and width),
the contrast study's bootstrap settings, the attribution diff's targets and batch size, and the
neurons given to an ablation. Each error names the argument or the item (``prompts[2]``,
``neurons[1]``) and leaves the model as it was."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from model_state import refused_before_any_forward

from interp_edit.adapter import model_fingerprint
from interp_edit.analysis import attribution_diff, qv_pathways, select_layer_window
from interp_edit.analysis.ablation import ablate_neurons
from interp_edit.analysis.attribution import Neuron
from interp_edit.errors import EmptyInputError, InvalidArgumentError
from interp_edit.evaluation import contrast_study
from interp_edit.evaluation.contrast import contrast_from_records

PROMPT = "Talvik Corlo was born in"
PROMPT2 = "Beldel Kordor was born in"
NAN = math.nan


@pytest.fixture
def no_forward(toy_model):
    with refused_before_any_forward(toy_model) as calls:
        yield calls


# --- qv_pathways ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args, kwargs, error, match", [
    (("Talvik",), {}, InvalidArgumentError, r"prompts must be a list, got 'Talvik'"),
    (([PROMPT, PROMPT2, ""],), {}, EmptyInputError, r"empty prompts\[2\]"),
    (([PROMPT, 7],), {}, InvalidArgumentError, r"prompts\[1\] must be a string, got 7"),
    (([PROMPT, PROMPT2], [None, 10**6]), {}, InvalidArgumentError, r"targets\[1\] must be <= .*1000000"),
    (([PROMPT, PROMPT2], ["Karsa", ""]), {}, EmptyInputError, r"empty targets\[1\]"),
    (([PROMPT, PROMPT2], ["Karsa", 2.5]), {}, InvalidArgumentError, r"targets\[1\] must be a string, got 2.5"),
    (([PROMPT], "Karsa"), {}, InvalidArgumentError, r"targets must be a list, got 'Karsa'"),
    (([PROMPT],), {"n_value": 2.5}, InvalidArgumentError, r"n_value must be an integer, got 2.5"),
    (([PROMPT],), {"n_value": "5"}, InvalidArgumentError, r"n_value must be an integer, got '5'"),
    (([PROMPT],), {"top_pathways": True}, InvalidArgumentError, r"top_pathways must be an integer, got True"),
    (([PROMPT],), {"min_value_layer": 1.5}, InvalidArgumentError, r"min_value_layer must be an integer, got 1.5"),
    (([PROMPT],), {"chunk_elements": 0}, InvalidArgumentError, r"chunk_elements must be >= 1"),
    (([PROMPT],), {"keep_bias": "no"}, InvalidArgumentError, r"keep_bias must be True or False, got 'no'"),
    (([PROMPT],), {"method": ["exact"]}, InvalidArgumentError, r"unknown method \['exact'\]"),
])
def test_qv_pathways_arguments_are_named_before_any_forward(toy_model, no_forward, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        qv_pathways(toy_model, *args, **{"n_value": 5, **kwargs})


# --- select_layer_window -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def one_fact_aie(toy_model):
    """A two-token subject: no fact has a middle subject token, so that role's curve is all NaN."""
    from interp_edit.analysis import average_indirect_effect

    return average_indirect_effect(toy_model, [(PROMPT, "Talvik Corlo", "Karsa")], samples=2, kinds=("mlp",),
                                   progress=False)


@pytest.mark.parametrize("curve, width, match", [
    (torch.full((6,), NAN), 3, r"the curve has no finite value .*no signal"),
    (torch.rand(3, 6), 3, r"the curve must be 1-D .*shape \(3, 6\)"),
    (torch.rand(6), 2.5, r"width must be an integer, got 2.5"),
    (torch.rand(6), True, r"width must be an integer, got True"),
    (torch.rand(6), 0, r"width must be >= 1, got 0"),
])
def test_select_layer_window_refuses_a_bad_curve_or_width(curve, width, match):
    with pytest.raises(InvalidArgumentError, match=match):
        select_layer_window(curve, width)


def test_select_layer_window_refuses_an_empty_role_and_unknown_names(one_fact_aie):
    assert one_fact_aie.curve("mlp", "middle_subject").isnan().all()
    with pytest.raises(InvalidArgumentError, match=r"mlp × middle_subject curve has no finite value.*no traced fact had that role"):
        select_layer_window(one_fact_aie, 3, role="middle_subject")
    with pytest.raises(InvalidArgumentError, match=r"kind must be one of \['mlp'\], got 'attn'"):
        select_layer_window(one_fact_aie, 3, kind="attn")
    with pytest.raises(InvalidArgumentError, match=r"role must be one of .*got 'last_subj'"):
        select_layer_window(one_fact_aie, 3, role="last_subj")
    assert len(select_layer_window(one_fact_aie, 3)) == 3  # the traced role still works


def test_select_layer_window_skips_nan_layers_rather_than_reading_them_as_zero():
    # means of the non-NaN layers: [-3, (none), -1, -1.5]; with NaN as 0 the window (1, 2) would win
    assert select_layer_window(torch.tensor([-3.0, NAN, NAN, -1.0, -2.0]), 2) == (2, 3)
    assert select_layer_window(torch.tensor([-1.0, NAN, -2.0, -3.0, -0.5]), 1) == (4,)
    assert select_layer_window(torch.tensor([0.1, NAN, 0.9, 0.7, 0.2, 0.0]), 3) == (1, 2, 3)
    # a finite curve is unchanged; a width beyond the curve is still clipped to it
    assert select_layer_window(torch.tensor([0.1, 0.5, 0.9, 0.7, 0.2, 0.0]), width=3) == (1, 2, 3)
    assert select_layer_window(torch.tensor([NAN, 2.0]), width=5) == (0, 1)


# --- contrast_study / contrast_from_records ------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"n_boot": 2.5}, r"n_boot must be an integer, got 2.5"),
    ({"n_boot": 0}, r"n_boot must be >= 1, got 0"),
    ({"ci": "0.9"}, r"ci must be a number, got '0.9'"),
    ({"ci": 1.5}, r"ci must be in \(0, 1\), got 1.5"),
    ({"ci": NAN}, r"ci must be finite"),
    ({"seed": 1.5}, r"seed must be an integer, got 1.5"),
    ({"groups": "edit"}, r"groups must be a list, got 'edit'"),
])
def test_contrast_study_checks_its_settings_before_any_edit(toy_model, person_records, no_forward, kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        contrast_study(toy_model, "rome", person_records[:2], progress=False, **kwargs)


def test_contrast_from_records_checks_n_boot():
    diffs = [[[0.1, 0.2], [0.3, 0.4]]] * 6
    records = [{"type": "request", "index": i, "success": ok, "margin": 1.0 if ok else -1.0, "margin_before": -1.0,
                "diffs": {"edit": diffs}, "seconds": 1} for i, ok in enumerate((True, False))]
    with pytest.raises(InvalidArgumentError, match=r"n_boot must be an integer, got 2.5"):
        contrast_from_records("rome", records, n_boot=2.5)
    assert contrast_from_records("rome", records, n_boot=5).n_boot == 5


# --- attribution_diff ----------------------------------------------------------------------------

@pytest.fixture
def fake_edit(toy_model):
    """An edit of the toy model that must never be applied (the arguments are refused first)."""
    def applied(model):
        raise AssertionError("the edit was applied")

    request = {"prompt": "{} was born in", "subject": "Talvik Corlo", "target_new": "Gemmel", "target_true": "Karsa"}
    return SimpleNamespace(model_fingerprint=model_fingerprint(toy_model), requests=[request], method="fake",
                           applied=applied)


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 2.5}, r"batch_size must be an integer, got 2.5"),
    ({"batch_size": 0}, r"batch_size must be >= 1, got 0"),
    ({"targets": "ab"}, r"targets must be a pair \(promoted, suppressed\), got 'ab'"),
    ({"targets": ("new",)}, r"targets must be a pair"),
    ({"neurons": "edit"}, r"neurons must be a list, got 'edit'"),
])
def test_attribution_diff_arguments_are_named_before_any_forward(toy_model, fake_edit, no_forward, kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        attribution_diff(toy_model, fake_edit, PROMPT, **{"neurons": False, **kwargs})


# --- ablate_neurons ------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, match", [
    (Neuron("ffn", 1.5, 1), r"neurons\[1\] \(L1.5N1\) layer must be an integer, got 1.5"),
    (Neuron("ffn", 0, 1.5), r"neurons\[1\] \(L0N1.5\) index must be an integer, got 1.5"),
    (Neuron("ffn", "2", 7), r"neurons\[1\] .* layer must be an integer, got '2'"),
    (Neuron("ffn", True, 7), r"neurons\[1\] .* layer must be an integer, got True"),
    (Neuron("ffn", 0, 10**6), r"neurons\[1\] \(L0N1000000\) index must be <= "),
    (Neuron("ffn", 9, 0), r"neurons\[1\] \(L9N0\) layer must be <= "),
    (Neuron("attn", 0, 0, head=1.5), r"neurons\[1\] .* head must be an integer, got 1.5"),
    (Neuron("attn", 0, 0, head=99), r"neurons\[1\] .* head must be <= "),
    (Neuron("attn", 0, 2.0, head=0), r"neurons\[1\] .* index \(head dimension\) must be an integer, got 2.0"),
    (Neuron("attn", 0, 0, head=0, pos=-1), r"neurons\[1\] .* position must be >= 0, got -1"),
    (Neuron("attn", 0, 0, head=0, pos=1.5), r"neurons\[1\] .* position must be an integer, got 1.5"),
])
def test_ablate_neurons_names_a_bad_neuron_field_before_any_forward(toy_model, no_forward, bad, match):
    with pytest.raises(InvalidArgumentError, match=match):
        ablate_neurons(toy_model, [Neuron("ffn", 2, 7), bad], [PROMPT])


def test_good_inputs_still_run(toy_model):
    res = ablate_neurons(toy_model, [Neuron("ffn", 2, 7), Neuron("attn", 3, 5, head=1, pos=1)], [PROMPT], ["Karsa"])
    assert len(res.drop) == 1
    paths = qv_pathways(toy_model, (PROMPT, PROMPT2), ("Karsa", None), n_value=3, top_pathways=2, keep_bias=True)
    assert len(paths.value_neurons) == 3 and paths.settings["keep_bias"] is True


def test_layer_attribution_scores_refuse_a_keep_bias_that_is_not_a_bool(toy_model):
    """``keep_bias="no"`` was read as True; refused as ``neuron_attribution`` refuses it."""
    from interp_edit.analysis.attribution import layer_attribution_scores

    with refused_before_any_forward(toy_model), pytest.raises(InvalidArgumentError, match="keep_bias must be True or False"):
        layer_attribution_scores(toy_model, PROMPT, "Karsa", keep_bias="no")
