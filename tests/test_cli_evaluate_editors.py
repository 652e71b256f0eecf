"""``interp-edit evaluate`` runs every registered editor on the data set that suits it, and
refuses unsuitable data before any edit, naming the data set to use."""

from __future__ import annotations

import json
import math

import pytest

from interp_edit.cli import main
from interp_edit.editing import editors, get_editor

FAST = ["--n", "1", "--no-fluency", "--unrelated", "3", "--quiet", "--json"]


@pytest.mark.parametrize("method", sorted(editors()))
def test_evaluate_runs_every_editor_on_its_default_data(method, capsys, one_thread):
    assert main(["evaluate", "--method", method, *FAST]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["method"] == method
    assert summary["dataset"] == get_editor(method).default_data
    assert summary["n"] == 1
    assert summary["efficacy_score"] is not None and math.isfinite(summary["efficacy_score"])


def test_ace_defaults_to_the_multihop_data():
    assert get_editor("ace").default_data == "toyworld-mquake"


def _refuse_any_edit(monkeypatch, module: str, name: str):
    import importlib

    def no_edit(*args, **kwargs):
        raise AssertionError("an edit was computed before the refusal")

    monkeypatch.setattr(importlib.import_module(module), name, no_edit)


def test_ace_on_single_hop_cases_is_refused_before_any_edit_naming_the_data(monkeypatch, capsys):
    _refuse_any_edit(monkeypatch, "interp_edit.editing.methods.ace", "ace")
    # the whole counterfact set: some of its cases have no multi-hop probe
    code = main(["evaluate", "--method", "ace", "--data", "toyworld-counterfact", "--no-fluency", "--unrelated", "0", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "toyworld-mquake" in err and "multihop" in err


def test_commonsense_data_is_refused_before_any_edit(monkeypatch, capsys):
    _refuse_any_edit(monkeypatch, "interp_edit.editing.methods.memit_csk", "memit_csk")
    code = main(["evaluate", "--method", "memit_csk", "--data", "toyworld-csk", *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "commonsense" in err and "toyworld-csk" in err


def test_memit_csk_traces_the_experiment_once_and_every_batch_shares_the_layers(monkeypatch, toy_model, one_thread):
    import importlib

    from interp_edit.evaluation import run_experiment
    from interp_edit.evaluation.runner import _requests, select_cases

    module = importlib.import_module("interp_edit.editing.methods.memit_csk")  # the package exports a function of that name
    seen, original = [], module.memit_csk

    def recording(model, requests, config=None, **overrides):
        seen.append(overrides.get("layers"))
        return original(model, requests, config, **overrides)

    monkeypatch.setattr(module, "memit_csk", recording)
    from interp_edit.data import load_dataset

    dataset = load_dataset("toyworld-counterfact")
    result = run_experiment(toy_model, dataset, "memit_csk", n=3, unrelated=0, fluency=False, progress=False)
    assert result.summary()["n"] == 3 and len(seen) == 3
    edited, _ = select_cases(dataset, 3, 0, 0)
    expected = module.fix_auto_layers(toy_model, _requests(edited), {})["layers"]
    assert seen == [expected] * 3  # one window, traced over the experiment's requests, for every batch
    assert module.fix_auto_layers(toy_model, _requests(edited), {"layers": [0, 1]}) == {"layers": [0, 1]}


def test_a_flat_memit_csk_trace_is_refused_before_any_edit(monkeypatch, toy_model, capsys):
    _refuse_any_edit(monkeypatch, "interp_edit.editing.methods.memit_csk", "memit_csk")
    # the window's effect can never reach this bar: the trace is refused as flat
    code = main(["evaluate", "--method", "memit_csk", "--config", '{"min_window_effect": 2.0}', *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "flat" in err
