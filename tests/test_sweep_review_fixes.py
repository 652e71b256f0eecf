"""Review fixes of the sweep and evaluation layers:

1. a sweep's finished cell computed on another model (other weights under the same name) is
   refused, as ``run_experiment`` refuses to resume into it, not returned as this model's result
   (also through ``localization_vs_editing(out=)``, which would pair new traces with old metrics);
2. the key-collision warning of a cell / result reaches the merged tables and the sweep figure;
3. ``unrelated`` drift probes are facts about subjects no edit touches.

The expectations are computed here from the data (subjects, case ids, a seeded shuffle), not
with the code under test."""

from __future__ import annotations

import json
import random
import warnings

import pytest
import torch

from interp_edit.data import Dataset, load_dataset
from interp_edit.errors import ExperimentError
from interp_edit.evaluation import ExperimentResult, comparison_table, run_experiment
from interp_edit.sweep import SweepResult, expand, load_spec, run_sweep

pytestmark = pytest.mark.usefixtures("one_thread")

ONE_CELL = {"models": ["toyworld"], "editors": [{"method": "ft", "config": {"steps": 5}}],
            "datasets": [{"name": "toyworld-counterfact", "n": 2}], "unrelated": 2, "fluency": False}


@pytest.fixture(scope="module")
def other_model():
    """The toy model with every weight scaled by 1 + 1/64: other weights (another fingerprint)
    under the same name, still knowing the toy facts."""
    from interp_edit import load_model

    model = load_model("toyworld")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 1 / 64)
    return model


# --- 1. a finished cell of another model -----------------------------------------------------

def test_a_cell_finished_on_another_model_is_refused_not_returned(toy_model, other_model, tmp_path):
    first = run_sweep(ONE_CELL, tmp_path, models={"toyworld": toy_model}, progress=False)
    (cell_id,) = first.results
    stored = (tmp_path / "cells" / cell_id / "results.jsonl").read_text()
    # same name, other weights: the stored result is not this model's
    other = run_sweep(ONE_CELL, tmp_path, models={"toyworld": other_model}, progress=False)  # default retries=2
    assert other.results == {}
    (error,) = other.failed[cell_id]  # refused once: files on disk fail the same way again, so no retry
    assert "ExperimentError" in error and cell_id in error and "['model_fingerprint']" in error
    assert other.rows()[0]["status"] == "failed"
    assert (tmp_path / "cells" / cell_id / "results.jsonl").read_text() == stored  # nothing overwritten
    # the model it was computed on gets it back, with nothing recomputed
    again = run_sweep(ONE_CELL, tmp_path, models={"toyworld": toy_model}, progress=False)
    assert not again.failed and json.dumps(again.results[cell_id]["batches"]) == json.dumps(first.results[cell_id]["batches"])
    assert [json.loads(line)["type"] for line in (tmp_path / "cells" / cell_id / "results.jsonl").read_text().splitlines()] \
        == [json.loads(line)["type"] for line in stored.splitlines()]


def test_localization_does_not_pair_new_traces_with_another_models_edits(toy_model, other_model, tmp_path):
    from interp_edit.sweep import localization_vs_editing

    cases = load_dataset("toyworld-counterfact", model=toy_model)[:2]
    args = dict(layers=(0, 1), samples=2, n_boot=5, config={"steps": 5}, out=tmp_path)
    localization_vs_editing(toy_model, "ft", cases, **args)
    with pytest.raises(ExperimentError, match=r"model_fingerprint"):
        localization_vs_editing(other_model, "ft", cases, **args)


# --- 2. key-collision warnings in the merged tables and the sweep figure ---------------------

def _result(method: str, collisions: list | None) -> dict:
    """An ExperimentResult.to_dict of one batch of two cases (with the batch's collision groups)."""
    batch = {"type": "batch", "batch": 0, "n_edited": 2, "case_ids": ["a", "b"], "edit_seconds": 0.5, "rows": [],
             "checkpoint": {"efficacy_score": 0.5, "paraphrase_score": 0.25, "neighborhood_score": 1.0}}
    if collisions:
        batch["key_collisions"] = collisions
    settings = {"method": method, "dataset": "d", "n": 2, "batch_size": 2, "sequential": False}
    return ExperimentResult(settings, {"efficacy_score": 0.0}, [batch], 2.0).to_dict()


@pytest.fixture()
def two_cells():
    """A sweep result of two cells: cell 0's batch held two requests sharing one key, cell 1's none."""
    spec = load_spec({"models": ["toyworld"], "editors": [{"method": "memit", "grid": {"layers": [[1], [2]]}}],
                      "datasets": [{"name": "toyworld-counterfact", "n": 2}], "batch_size": 2, "fluency": False})
    cells = expand(spec)
    results = {cells[0].cell_id: _result("memit", [[0, 1]]), cells[1].cell_id: _result("memit", None)}
    return SweepResult(spec, cells, results)


def test_the_sweep_table_marks_a_colliding_cell_and_says_why_under_it(two_cells):
    lines = two_cells.table().splitlines()
    rows = [line for line in lines if line.startswith("| 0 |") or line.startswith("| 1 |")]
    assert "| ok (WARNING) |" in rows[0] and "| ok |" in rows[1] and "WARNING" not in rows[1]
    notes = [line for line in lines if line.startswith("WARNING")]
    assert len(notes) == 1 and notes[0].startswith("WARNING: cell 0 (") and "sharing one key" in notes[0]
    assert lines[lines.index(notes[0]) - 1] == ""  # the Markdown table ends before the note
    assert two_cells.rows()[0]["warnings"][0] in notes[0]


def test_the_sweep_figure_title_and_the_cell_label_say_so(two_cells):
    fig = two_cells.plot()
    title = fig.layout.title.text.replace("<br>", " ")
    assert title.startswith("Sweep: 2 finished cells of 2")
    assert "WARNING: 1 of 2 finished cells held requests sharing one key (cell 0)" in title
    labels = {y for trace in fig.data for y in trace.y}
    assert any(label.endswith("[0] (WARNING)") for label in labels)
    assert any(label.endswith("[1]") for label in labels)


def test_the_comparison_table_marks_a_colliding_result_and_says_why_under_it(two_cells):
    results = [two_cells.experiment(1), two_cells.experiment(0)]
    lines = comparison_table(results).splitlines()
    assert lines[2].startswith("| memit | ") and lines[3].startswith("| memit (WARNING) | ")
    notes = [line for line in lines if line.startswith("WARNING")]
    assert notes == [f"WARNING: row 2 (memit independent/2): {results[1].warnings()[0]}"]
    assert lines[-2] == ""
    # without any collision: the table it always was
    clean = comparison_table(results[:1])
    assert "WARNING" not in clean and len(clean.splitlines()) == 3


# --- 3. unrelated probes are about unedited subjects -----------------------------------------

def _expected_unrelated(dataset, n: int, k: int, seed: int) -> list[str]:
    """The case ids of the first ``k`` cases after the ``n`` edited ones of the seeded shuffle
    whose first rewrite's subject no edited case's rewrite has."""
    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    edited = {r.subject for i in order[:n] for r in dataset[i].rewrites()}
    return [dataset[i].case_id for i in order[n:] if dataset[i].rewrites()[0].subject not in edited][:k]


def test_unrelated_probes_are_no_edited_subjects_facts(toy_model):
    from interp_edit.evaluation.runner import select_cases

    dataset = load_dataset("toyworld-counterfact", model=toy_model)
    edited, others = select_cases(dataset, 500, 100, 0)
    subjects = {c.rewrite.subject for c in edited}
    assert sum(c.rewrite.subject in subjects for c in others) == 0  # was 63 of 100
    assert [c.case_id for c in others] == _expected_unrelated(dataset, 500, 100, 0)


def test_an_experiment_records_and_resumes_only_its_unrelated_cases(toy_model, tmp_path):
    dataset = load_dataset("toyworld-counterfact", model=toy_model)
    args = dict(n=50, batch_size=50, unrelated=20, fluency=False, progress=False, config={"steps": 2}, out=tmp_path)
    res = run_experiment(toy_model, dataset, "ft", **args)
    assert res.settings["unrelated_case_ids"] == _expected_unrelated(dataset, 50, 20, 0)
    by_id = {c.case_id: c for c in dataset.cases}
    edited = {by_id[i].rewrite.subject for i in res.settings["case_ids"]}
    assert not edited & {by_id[i].rewrite.subject for i in res.settings["unrelated_case_ids"]}  # was 5 of 20
    assert res.settings["unrelated"] == 20
    # a file written by the selection before (no record of its unrelated cases) is not resumed into
    path = tmp_path / "results.jsonl"
    lines = path.read_text().splitlines()
    settings = json.loads(lines[0])
    del settings["unrelated_case_ids"]
    path.write_text("\n".join([json.dumps(settings), *lines[1:]]) + "\n")
    with pytest.raises(ExperimentError, match=r"unrelated_case_ids"):
        run_experiment(toy_model, dataset, "ft", **args)


def test_too_few_unrelated_cases_warn_with_the_count(toy_model):
    from interp_edit.evaluation.runner import select_cases

    dataset = load_dataset("toyworld-counterfact", model=toy_model)
    subject = dataset[0].rewrite.subject
    same = [c for c in dataset.cases if c.rewrite.subject == subject]
    stranger = next(c for c in dataset.cases if c.rewrite.subject != subject)
    assert len(same) >= 3
    small = Dataset("small", "counterfact", (*same[:3], stranger), "mem")
    # seeds until the stranger is not edited: then 2 facts of the edited subject are left out
    seed = next(s for s in range(100) if _expected_unrelated(small, 1, 3, s) == [stranger.case_id])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        edited, others = select_cases(small, 1, 3, seed)
    assert [c.case_id for c in others] == [stranger.case_id]
    (warning,) = [w for w in caught if issubclass(w.category, UserWarning)]
    assert "unrelated=3, but only 1 of the 3 cases" in str(warning.message) and "2 skipped" in str(warning.message)

