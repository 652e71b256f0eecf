"""``run_experiment`` / ``interp-edit evaluate`` / ``interp-edit edit`` check their arguments where
they enter, before any evaluation, edit or file (an error naming the argument or flag), and an
experiment whose batches held requests sharing one key says so."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest

from interp_edit.cli import main
from interp_edit.errors import EditConfigError, EmptyInputError, InvalidArgumentError, PromptTooLongError
from interp_edit.evaluation import run_experiment
from interp_edit.evaluation.experiment import ExperimentResult

FAST = dict(n=2, unrelated=2, fluency=False, progress=False)


@pytest.fixture
def no_evaluation(monkeypatch):
    """Any evaluation (of the edited cases or the unrelated facts) fails the test."""
    import interp_edit.evaluation.runner as runner

    def refuse(*args, **kwargs):
        raise AssertionError("an evaluation ran before the refusal")

    monkeypatch.setattr(runner, "evaluate_cases", refuse)
    monkeypatch.setattr(runner, "unrelated_metrics", refuse)


@pytest.fixture
def shared_model(monkeypatch, toy_model):
    """The CLI gets the session's toy model instead of loading its own."""
    import interp_edit.adapter

    monkeypatch.setattr(interp_edit.adapter, "load_model", lambda *args, **kwargs: toy_model)
    return toy_model


# --- 1. the editor config is resolved against the model before the baseline -----------------

@pytest.mark.parametrize("config, culprit", [({"steps": -1}, "steps"), ({"bogus": 1}, "bogus"), ({"lr": 0.0}, "lr"),
                                             ({"layer": 99}, "layer")])
def test_a_bad_config_is_refused_before_any_evaluation_or_file(toy_model, no_evaluation, tmp_path, config, culprit):
    out = tmp_path / "run"
    with pytest.raises(EditConfigError, match=culprit):
        run_experiment(toy_model, "toyworld-counterfact", "rome", config=config, out=out, **FAST)
    assert not out.exists() or not any(out.iterdir())


def test_after_a_refused_config_the_same_out_takes_the_corrected_run(toy_model, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(EditConfigError, match="steps"):
        run_experiment(toy_model, "toyworld-counterfact", "ft", config={"steps": -1}, out=out, **FAST)
    res = run_experiment(toy_model, "toyworld-counterfact", "ft", config={"steps": 2}, out=out,
                         **{**FAST, "n": 1})  # (ft: no key statistics to collect)
    assert len(res.batches) == 1 and (out / "results.jsonl").is_file()


def test_config_of_the_wrong_type_is_named(toy_model, no_evaluation):
    with pytest.raises(InvalidArgumentError, match="config"):
        run_experiment(toy_model, "toyworld-counterfact", "rome", config=[("steps", 2)], **FAST)


def test_the_evaluate_command_refuses_a_bad_config_before_any_evaluation(shared_model, no_evaluation, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["evaluate", "--config", '{"steps": -1}', "--out", str(out), "--n", "2", "--unrelated", "2",
                 "--no-fluency", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "steps" in err
    assert not (out / "results.jsonl").exists()


# --- 2. every numeric argument is checked up front --------------------------------------------

@pytest.mark.parametrize("name, value", [("n", 2.0), ("n", True), ("n", 0), ("unrelated", 2.5), ("unrelated", -1),
                                         ("batch_size", "2"), ("batch_size", 1.5), ("batch_size", 0),
                                         ("eval_every", "1"), ("seed", "0"), ("max_new_tokens", -1),
                                         ("max_new_tokens", 0), ("sequential", "yes"), ("fluency", 1)])
def test_a_bad_argument_is_named_before_any_evaluation(toy_model, no_evaluation, tmp_path, name, value):
    kwargs = {**FAST, "fluency": True, name: value}
    out = tmp_path / "run"
    with pytest.raises(InvalidArgumentError, match=rf"^{name} must be"):
        run_experiment(toy_model, "toyworld-counterfact", "rome", out=out, **kwargs)
    assert not out.exists()


# --- 3. interp-edit edit checks its --check prompts before the edit ---------------------------

@pytest.fixture
def no_edit(monkeypatch):
    import interp_edit.editing

    def refuse(*args, **kwargs):
        raise AssertionError("the edit was computed before the refusal")

    monkeypatch.setattr(interp_edit.editing, "edit", refuse)


EDIT = ["edit", "--prompt", "{} was born in", "--subject", "Talvik Corlo", "--target-new", "Gemmel"]


def test_an_empty_check_prompt_is_named_before_the_edit(shared_model, no_edit, capsys):
    code = main([*EDIT, "--check", "Talvik Corlo speaks", "--check", ""])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.strip().splitlines() == ["interp-edit: error: empty --check[1] ''"]
    assert "before" not in out


def test_an_over_long_check_prompt_is_named_with_its_position(shared_model, no_edit, capsys):
    long = " ".join(["word"] * (shared_model.cfg.n_ctx + 5))
    code = main([*EDIT, "--check", "Talvik Corlo speaks", "--check", long])
    out, err = capsys.readouterr()
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "--check[1]" in err and "context" in err
    assert "before" not in out


def test_the_check_prompts_are_checked_with_the_library_errors(toy_model):
    from interp_edit.validation import check_prompt_batch

    with pytest.raises(EmptyInputError, match=r"--check\[0\]"):
        check_prompt_batch(toy_model, [""], "--check", allow_empty=True)
    with pytest.raises(PromptTooLongError, match=r"--check\[0\]"):
        check_prompt_batch(toy_model, ["word " * 200], "--check", allow_empty=True)


# --- 4. key collisions in a batch are recorded and shown --------------------------------------

def _colliding_dataset():
    """Two toy-world cases about one subject at the prompt's start: their keys (the subject's
    last token) coincide, their new targets differ."""
    from interp_edit.data import load_dataset

    ds = load_dataset("toyworld-counterfact")
    cases = ds.cases[:2]
    assert cases[0].rewrites()[0].subject == cases[1].rewrites()[0].subject
    return dataclasses.replace(ds, cases=cases)


def test_an_experiment_says_which_batches_held_requests_sharing_a_key(toy_model, tmp_path):
    from interp_edit.errors import KeyCollisionWarning

    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_experiment(toy_model, _colliding_dataset(), "memit", n=2, batch_size=2, unrelated=0,
                             fluency=False, progress=False, out=out)
    assert any(isinstance(w.message, KeyCollisionWarning) for w in caught)
    assert res.key_collisions == {0: [[0, 1]]}
    assert repr(res).startswith("ExperimentResult(WARNING=") and "sharing one key" in repr(res)
    assert "WARNING" in res.table() and "sharing one key" in res.table()
    assert res.summary()["warnings"] == res.warnings()
    assert "WARNING" in res._repr_html_()
    assert "WARNING: 1 of 1 batches held requests sharing one key" in res.plot().layout.title.text.replace("<br>", " ")
    # in the saved rows (results.jsonl) and the saved summary, and back on loading
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r.get("key_collisions") for r in rows if r["type"] == "batch"] == [[[0, 1]]]
    res.save(tmp_path / "summary", figure=False)
    assert ExperimentResult.load(tmp_path / "summary.json").warnings() == res.warnings()
    # resumed from the file: the record is kept
    again = run_experiment(toy_model, _colliding_dataset(), "memit", n=2, batch_size=2, unrelated=0,
                           fluency=False, progress=False, out=out)
    assert again.key_collisions == {0: [[0, 1]]}


def test_results_without_the_collision_field_load_without_a_warning(tmp_path):
    data = {"settings": {"method": "rome", "dataset": "d", "n": 1, "batch_size": 1, "sequential": False},
            "baseline": {"efficacy_score": 0.1},
            "batches": [{"type": "batch", "batch": 0, "n_edited": 1, "case_ids": ["0"], "edit_seconds": 0.1,
                         "rows": [], "checkpoint": {"efficacy_score": 0.9}}],
            "wall_seconds": 1.0}
    (tmp_path / "old.json").write_text(json.dumps(data))
    res = ExperimentResult.load(tmp_path / "old.json")
    assert res.key_collisions == {} and res.warnings() == []
    assert "WARNING" not in repr(res) and "WARNING" not in res.table() and "warnings" not in res.summary()
