"""The experiment runner: independent and sequential runs restore the model; an interrupted
run resumes without repeating or losing cases and ends as an uninterrupted one does."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from interp_edit.data import load_dataset
from interp_edit.errors import ExperimentError
from interp_edit.evaluation import ExperimentResult, comparison_table, run_experiment

runner = importlib.import_module("interp_edit.evaluation.runner")
SMALL = {"n": 12, "batch_size": 4, "unrelated": 6, "fluency": False, "progress": False, "seed": 3}


pytestmark = pytest.mark.usefixtures("one_thread")  # many small forwards: one thread is fastest


@pytest.fixture(scope="module")
def facts(toy_world):
    data = load_dataset("toyworld-counterfact", world=toy_world)
    return type(data)(data.name, data.format, tuple(c for c in data if c.rewrite.prompt != "{} is a city in"), data.source)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(model, state):
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


class Interrupt(Exception):
    pass


def interrupt_after(k: int):
    def hook(batch: int) -> None:
        if batch == k:
            raise Interrupt(f"stopped after batch {batch}")
    return hook


def assert_same_results(a: ExperimentResult, b: ExperimentResult) -> None:
    assert [e["case_ids"] for e in a.batches] == [e["case_ids"] for e in b.batches]
    for x, y in zip(a.rows + a.checkpoints, b.rows + b.checkpoints, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], float):
                assert x[key] == pytest.approx(y[key], abs=1e-5, nan_ok=True), key
            else:
                assert x[key] == y[key], key


@pytest.mark.parametrize("method", ["alphaedit", "memit", "ultraedit"])  # ultraedit: its normalisation state resumes
def test_interrupted_sequential_run_resumes_like_an_uninterrupted_one(toy_model, facts, tmp_path, monkeypatch, method):
    before = snapshot(toy_model)
    full = run_experiment(toy_model, facts, method, sequential=True, out=tmp_path / "full", **SMALL)
    assert_same(toy_model, before)
    monkeypatch.setattr(runner, "_after_batch", interrupt_after(1))
    with pytest.raises(Interrupt):
        run_experiment(toy_model, facts, method, sequential=True, out=tmp_path / "cut", **SMALL)
    assert_same(toy_model, before)  # edits undone on the exception
    lines = (tmp_path / "cut" / "results.jsonl").read_text().splitlines()
    assert [json.loads(x)["type"] for x in lines] == ["settings", "baseline", "batch", "batch"]
    with open(tmp_path / "cut" / "results.jsonl", "a") as handle:
        handle.write('{"type": "batch", "batch": 2, "rows": [')  # a line cut mid-write
    monkeypatch.setattr(runner, "_after_batch", lambda batch: None)
    resumed = run_experiment(toy_model, facts, method, sequential=True, out=tmp_path / "cut", **SMALL)
    assert_same(toy_model, before)
    assert_same_results(full, resumed)
    ids = [row["case_id"] for row in resumed.rows]
    assert len(ids) == len(set(ids)) == SMALL["n"]
    on_disk = [json.loads(x) for x in (tmp_path / "cut" / "results.jsonl").read_text().splitlines()]
    assert [e["batch"] for e in on_disk if e["type"] == "batch"] == [0, 1, 2]


def test_independent_run_undoes_each_batch(toy_model, facts, tmp_path):
    before = snapshot(toy_model)
    result = run_experiment(toy_model, facts, "rome", n=6, batch_size=3, unrelated=4, fluency=True, progress=False,
                            eval_every=2, out=tmp_path / "rome")
    assert_same(toy_model, before)
    summary = result.summary()
    assert summary["n"] == 6 and summary["efficacy_score"] >= 0.8 and "fluency" in summary
    assert [c["n_edited"] for c in result.checkpoints] == [6]  # eval_every=2 with 2 batches
    assert result.baseline["efficacy_score"] == 0.0
    assert "efficacy_score" in result.table() and "| rome | independent/3 |" in comparison_table([result])
    files = result.save(tmp_path / "rome" / "summary")
    assert ExperimentResult.load(files[0]).summary()["efficacy_score"] == summary["efficacy_score"]
    # a second run with other settings into the same folder is refused
    with pytest.raises(ExperimentError, match="other settings.*batch_size"):
        run_experiment(toy_model, facts, "rome", n=6, batch_size=2, unrelated=4, progress=False, out=tmp_path / "rome")


def test_mcq_run_tracks_option_entropy(toy_model, toy_world):
    data = load_dataset("toyworld-mcq", world=toy_world)
    result = run_experiment(toy_model, data, "memit", n=8, batch_size=4, sequential=True, unrelated=4, progress=False)
    points = result.checkpoints
    assert [p["n_edited"] for p in points] == [4, 8]
    assert all(0 <= p["option_entropy"] <= 2.33 for p in points)
    assert points[-1]["mcq_reliability"] >= 0.75
    fig = result.plot()
    assert any(trace.name == "option_entropy" for trace in fig.data)


def test_cli_evaluate_prints_one_json_object(tmp_path, capsys):
    from interp_edit.cli import main

    args = ["evaluate", "--method", "memit", "--n", "4", "--batch-size", "2", "--sequential", "--unrelated", "2",
            "--no-fluency", "--quiet", "--json", "--out", str(tmp_path / "cli")]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "memit" and summary["n"] == 4 and summary["efficacy_score"] >= 0.75
    assert "wall_seconds" in summary and (tmp_path / "cli" / "summary.png").exists()
    assert main(["evaluate", "--data", "no-such-set", "--quiet"]) == 2
    assert "toyworld-mquake" in capsys.readouterr().err


def test_zsre_written_as_rome_does_edits_the_first_answer_and_scores_token_accuracy(toy_model, monkeypatch):
    """zsre_target='answer': the editor is asked for answers[0] with no replaced answer, the
    token accuracies are reported, the comparisons (nothing to compare with) are NaN, and the
    convention is part of the run's settings."""
    import math

    data = load_dataset("toyworld-zsre", zsre_target="answer")
    asked = []
    real = runner._requests
    monkeypatch.setattr(runner, "_requests", lambda cases: asked.extend(real(cases)) or real(cases))
    result = run_experiment(toy_model, data, "ft", n=2, batch_size=2, unrelated=2, fluency=False, progress=False,
                            config={"steps": 2})
    cases = {c.case_id: c for c in data}
    edited = [cases[i] for i in result.batches[0]["case_ids"]]
    assert [(r.target_new, r.target_true) for r in asked] == [(c.answers[0], None) for c in edited]
    assert result.settings["zsre_target"] == "answer"
    for row in result.rows:
        assert 0 <= row["efficacy_token_accuracy"] <= 1 and math.isnan(row["efficacy_score"])


def test_cli_zsre_target_is_passed_to_the_run_and_refused_for_other_formats(tmp_path, capsys):
    from interp_edit.cli import main

    args = ["evaluate", "--data", "toyworld-zsre", "--zsre-target", "answer", "--method", "ft", "--config",
            '{"steps": 1}', "--n", "1", "--unrelated", "1", "--no-fluency", "--quiet", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    settings = json.loads((tmp_path / "run" / "results.jsonl").read_text().splitlines()[0])
    assert settings["zsre_target"] == "answer"
    assert main(["evaluate", "--data", "toyworld-mcq", "--zsre-target", "answer", "--quiet"]) == 2
    assert "--zsre-target answer: dataset 'toyworld-mcq' is 'mcq', not zsRE" in capsys.readouterr().err


def test_an_editor_that_takes_whole_cases_gets_them(toy_model):
    """ACE needs each case's multi-hop questions: the runner passes it the cases, and the
    model is restored afterwards."""
    from interp_edit.editing import get_editor

    assert get_editor("ace").takes_cases and not get_editor("memit").takes_cases
    data = load_dataset("toyworld-mquake", tokenizer=toy_model.tokenizer)
    before = {k: v.clone() for k, v in toy_model.state_dict().items()}
    result = run_experiment(toy_model, data, "ace", n=3, fluency=False, progress=False, unrelated=5)
    assert result.summary()["efficacy_score"] >= 2 / 3
    assert all(torch.equal(v, before[k]) for k, v in toy_model.state_dict().items())
