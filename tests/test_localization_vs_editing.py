"""localization_vs_editing: tracing effects and single-layer edit metrics land on the right
(fact, layer); Spearman's rho against an independent reference; bad input refused first."""

from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from model_state import assert_unchanged, snapshot

from interp_edit.analysis import causal_trace
from interp_edit.analysis.tracing import subject_embedding_std
from interp_edit.data import load_dataset
from interp_edit.editing import EditRequest, edit
from interp_edit.errors import EditConfigError, InvalidArgumentError, SweepSpecError
from interp_edit.evaluation import evaluate_cases
from interp_edit.evaluation.correlation import spearman
from interp_edit.prompts import tokenize_with_subject
from interp_edit.sweep.localization import localization_vs_editing

LAYERS = (0, 3)
SETTINGS = {"samples": 3, "n_boot": 50, "seed": 1}


def reference_spearman(x, y) -> float:
    """Pearson correlation of pandas' average ranks."""
    rx, ry = pd.Series(x).rank(method="average").to_numpy(), pd.Series(y).rank(method="average").to_numpy()
    return float(np.corrcoef(rx, ry)[0, 1])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.floats(-3, 3, allow_nan=False)), min_size=3, max_size=30))
def test_spearman_matches_pearson_of_average_ranks(pairs):
    x, y = [float(a) for a, _ in pairs], [b for _, b in pairs]
    tx, ty = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    if len(set(x)) < 2 or len(set(y)) < 2:
        assert math.isnan(spearman(tx, ty))
    else:
        assert spearman(tx, ty) == pytest.approx(reference_spearman(x, y), abs=1e-9)


def test_spearman_by_hand_ties_and_undefined_cases():
    assert spearman(torch.tensor([1.0, 2, 2, 3]), torch.tensor([1.0, 3, 2, 4])) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman(torch.tensor([1.0, 2, 3, 4]), torch.tensor([8.0, 6, 4, 2])) == pytest.approx(-1.0)
    assert spearman(torch.tensor([1.0, 2, 3, math.nan, 5]), torch.tensor([1.0, 2, 3, 9, 4])) == pytest.approx(1.0)
    assert math.isnan(spearman(torch.tensor([1.0, 1, 1]), torch.tensor([1.0, 2, 3])))
    assert math.isnan(spearman(torch.tensor([1.0, 2]), torch.tensor([1.0, 2])))


pytestmark = pytest.mark.usefixtures("one_thread")  # many small forwards: one thread is fastest


@pytest.fixture(scope="module")
def cases(toy_world):
    data = [c for c in load_dataset("toyworld-counterfact", world=toy_world) if c.rewrite.prompt != "{} is a city in"]
    random.Random(5).shuffle(data)
    return data[:3]


@pytest.fixture(scope="module")
def result(toy_model, cases):
    state = snapshot(toy_model)
    out = localization_vs_editing(toy_model, "rome", cases, layers=LAYERS, **SETTINGS)
    assert_unchanged(toy_model, state, no_edits=True)
    return out


def test_tracing_effects_are_each_facts_trace_at_its_last_subject_token(toy_model, cases, result):
    assert result.case_ids == [c.case_id for c in cases] and result.layers == LAYERS
    std = subject_embedding_std(toy_model, [c.rewrite.subject for c in cases])
    for i, case in enumerate(cases):
        r = case.rewrite
        position = tokenize_with_subject(toy_model.tokenizer, r.text, r.subject).subject_span[1] - 1
        # every fact's trace draws its noise from the sweep's seed (the authors' RandomState(1) per trace)
        trace = causal_trace(toy_model, r.text, r.subject, r.target_true, kinds=("hidden",), samples=SETTINGS["samples"],
                             seed=SETTINGS["seed"], embedding_std=std)
        for j, layer in enumerate(LAYERS):
            assert result.effects[i, j].item() == pytest.approx(trace.indirect_effects[0, layer, position].item(), abs=1e-6)


def test_edit_metrics_are_each_facts_own_single_layer_edit(toy_model, cases, result):
    state = snapshot(toy_model)
    for i, case in enumerate(cases):
        r = case.rewrite
        for j, layer in enumerate(LAYERS):
            change = edit(toy_model, [EditRequest(r.prompt, r.subject, r.target_new, r.target_true)], "rome", layer=layer)
            with change.applied(toy_model):
                row = evaluate_cases(toy_model, [case])[0]
            assert result.metrics["efficacy"][i, j].item() == row["efficacy_score"], (i, layer)
            assert result.metrics["generalisation"][i, j].item() == pytest.approx(row["paraphrase_score"]), (i, layer)
            assert result.metrics["specificity"][i, j].item() == pytest.approx(row["neighborhood_score"]), (i, layer)
            assert result.metrics["efficacy_magnitude"][i, j].item() == pytest.approx(row["efficacy_magnitude"], abs=1e-5)
    assert_unchanged(toy_model, state, no_edits=True)


def test_correlations_intervals_table_and_figure(result):
    for name, c in result.correlations.items():
        values = result.metrics[name]
        assert c["pairs"] == pytest.approx(spearman(result.effects.flatten(), values.flatten()), nan_ok=True)
        assert c["layers"] == pytest.approx(spearman(result.effects.mean(0), values.nanmean(0)), nan_ok=True)
        per_layer = [spearman(result.effects[:, j], values[:, j]) for j in range(len(LAYERS))]
        per_layer = [v for v in per_layer if not math.isnan(v)]
        assert c["within"] == pytest.approx(sum(per_layer) / len(per_layer) if per_layer else math.nan, nan_ok=True)
        if not math.isnan(c["pairs"]):
            assert c["pairs_ci"][0] <= c["pairs_ci"][1]
    assert "| 0 |" in result.table() and "Spearman" in result.summary()
    fig = result.plot("efficacy")
    assert len(fig.data) == 2 + len(LAYERS)
    assert list(fig.data[0].y) == pytest.approx(result.mean_effect.tolist())
    with pytest.raises(InvalidArgumentError, match="unknown metric"):
        result.plot("fluency")


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"method": "romeo"}, EditConfigError, "romeo"),
    ({"layers": (0, 9)}, InvalidArgumentError, "layers"),
    ({"layers": ()}, InvalidArgumentError, "layers"),
    ({"config": {"layer": 2}}, InvalidArgumentError, "'layer'"),
    ({"config": {"stepz": 2}}, SweepSpecError, "config.stepz"),
    ({"curve": "mlp"}, InvalidArgumentError, "curve"),
    ({"requests": []}, InvalidArgumentError, "no requests"),
    ({"requests": ["Paris"]}, InvalidArgumentError, "request 0"),
    ({"n_boot": 0}, InvalidArgumentError, "n_boot"),
])
def test_bad_input_is_refused_before_any_compute(toy_model, cases, kwargs, error, match):
    state = snapshot(toy_model)
    call = {"method": "rome", "requests": cases, "layers": LAYERS, "samples": 1, "n_boot": 1} | kwargs
    with pytest.raises(error, match=match):
        localization_vs_editing(toy_model, call.pop("method"), call.pop("requests"), **call)
    assert_unchanged(toy_model, state, no_edits=True)
