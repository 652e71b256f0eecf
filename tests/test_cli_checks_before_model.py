"""Bad input to ``interp-edit`` is refused where it enters, before any compute: every command
reads and checks its data file, records, config fields (names and values, against the editor's
config class), request and texts BEFORE the model loads (a bad ``--data`` or ``--config`` of
``evaluate`` used to fail only after 10-14 s of loading even the toy model). Run in-process with
``load_model`` replaced by one that records the call and stops the command, so nothing loads;
what needs the model (a layer index against its depth) still passes to it."""

from __future__ import annotations

import json

import pytest

from interp_edit.cli import main

RECORD = {"case_id": 0, "requested_rewrite": {"prompt": "{} was born in", "subject": "Talvik Corlo",
                                              "target_new": {"str": "Gemmel"}, "target_true": {"str": "Karsa"}},
          "paraphrase_prompts": ["Talvik Corlo, born in"], "neighborhood_prompts": ["Mira Dotan was born in"]}
EDIT = ["edit", "--prompt", "{} was born in", "--subject", "Talvik Corlo", "--target-new", "Gemmel"]
TRACE = ["trace", "--prompt", "Talvik Corlo was born in", "--subject", "Talvik Corlo"]


class ModelLoaded(Exception):
    """Raised by the stand-in ``load_model``: the command got as far as loading the model."""


@pytest.fixture
def loads(monkeypatch, tmp_path):
    """The names ``load_model`` was called with (it raises :class:`ModelLoaded`); the test runs
    in ``tmp_path``, which holds ``good.json`` (one CounterFact record) and ``bad.json`` (its
    second record lacks ``target_new``)."""
    import interp_edit.adapter

    calls: list = []

    def load_model(name, *args, **kwargs):
        calls.append(name)
        raise ModelLoaded(name)

    monkeypatch.setattr(interp_edit.adapter, "load_model", load_model)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "good.json").write_text(json.dumps([RECORD]))
    bad = {"case_id": 1, "requested_rewrite": {"prompt": "{} was born in", "subject": "Mira Dotan"}}
    (tmp_path / "bad.json").write_text(json.dumps([RECORD, bad]))
    return calls


BAD = [
    (["evaluate", "--data", "missing.json"], "no dataset named 'missing.json' and no such file"),
    (["evaluate", "--data", "bad.json"], "bad.json: record 1: field 'requested_rewrite.target_new': missing"),
    (["evaluate", "--data", "good.json", "--n", "5"], "--n 5 but the dataset 'good' has 1 cases"),
    (["evaluate", "--data", "good.json", "--zsre-target", "answer"], "--zsre-target answer: dataset 'good' is 'counterfact'"),
    (["evaluate", "--data", "toyworld-csk"], "dataset 'toyworld-csk' has 'commonsense' cases"),
    (["evaluate", "--config", '{"no_such_field": 1}'], "--config: ROMEConfig has no field(s) ['no_such_field']"),
    (["evaluate", "--config", '{"steps": "four"}'], "--config: ROMEConfig field 'steps' must be"),
    (["evaluate", "--config", '{"steps": 0}'], "--config: field 'steps' must be >= 1"),
    (["evaluate", "--method", "memit", "--config", '{"layer": 1}'], "--config: MEMITConfig has no field(s) ['layer']"),
    (["evaluate", "--model", "gpt2-xl", "--config", '{"no_such_field": 1}'], "ROMEConfig has no field(s) ['no_such_field']"),
    (["contrast", "--config", '{"no_such_field": 1}'], "--config: ROMEConfig has no field(s) ['no_such_field']"),
    (["contrast", "--method", "ft", "--config", '{"lr": -1.0}'], "--config: field 'lr' must be > 0"),
    ([*EDIT, "--layers", "1,2"], "--layers: ROMEConfig has no field(s) ['layers']"),
    (["edit", "--prompt", "was born in", "--subject", "Talvik Corlo", "--target-new", "Gemmel"],
     "request 0: field 'subject': 'Talvik Corlo' is not in the prompt"),
    ([*EDIT[:-1], " "], "request 0: field 'target_new' is empty"),
    (["trace", "--prompt", "Talvik Corlo was born in", "--subject", "Nobody"], "--subject 'Nobody': does not occur"),
    ([*TRACE, "--metric", "logit_diff"], "--metric logit_diff needs --foil"),
    ([*TRACE, "--corruption", "replace"], "--corruption replace needs --replacement"),
    (["trace", "--prompt", " ", "--subject", " "], "--prompt: empty text"),
    (["trace", "--prompt", "Talvik Corlo was born in", "--subject", "Talvik Corlo", "--kinds", "mlp", "--severed", "mlp"],
     "severed='mlp' needs 'hidden' in kinds"),
    (["attribute", "--prompt", ""], "--prompt: empty text"),
    (["attribute", "--prompt", "Talvik Corlo was born in", "--target", " "], "--target: empty text"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(a)[:60] for a, _ in BAD])
def test_bad_input_is_refused_with_its_message_before_the_model_loads(loads, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("interp-edit: error: ") and err.count("\n") == 1
    assert message in err
    assert loads == []


GOOD = [
    ["evaluate", "--data", "good.json", "--n", "1", "--config", '{"steps": 4}'],
    ["evaluate", "--data", "toyworld-zsre", "--zsre-target", "answer"],
    ["evaluate", "--method", "memit", "--config", '{"layers": [1, 2]}'],
    # no preset to read without loading a hub model: names and types are checked, not how fields combine
    ["evaluate", "--model", "gpt2-xl", "--method", "intattn", "--config", '{"mlp_layers": [3, 4, 5, 6, 7, 8]}'],
    ["contrast", "--method", "ft", "--config", '{"steps": 3}'],
    [*EDIT, "--layer", "99"],  # a layer against the model's depth: checked once it has loaded
    [*TRACE, "--metric", "logit_diff", "--foil", "Gemmel"],
    ["attribute", "--prompt", "Talvik Corlo was born in"],
]


@pytest.mark.parametrize("argv", GOOD, ids=[" ".join(a)[:60] for a in GOOD])
def test_good_input_and_what_needs_the_model_pass_on_to_loading_it(loads, argv):
    with pytest.raises(ModelLoaded):
        main(argv)
    assert len(loads) == 1


# --- what needs the model: checked once it has loaded, still naming the flag ----------------


@pytest.fixture
def toy_loads(monkeypatch, toy_model):
    """``load_model("toyworld")`` answered with the session's toy model (any other name loads as
    usual); the model must still be unedited afterwards."""
    import interp_edit.adapter
    from interp_edit.editing import applied_edits

    real = interp_edit.adapter.load_model

    def load_model(name, *args, **kwargs):
        return toy_model if name == "toyworld" else real(name, *args, **kwargs)

    monkeypatch.setattr(interp_edit.adapter, "load_model", load_model)
    yield
    assert applied_edits(toy_model) == []


AFTER_LOAD = [
    ([*EDIT, "--layer", "99"], "--layer: field 'layer': layers [99] out of range for this 6-layer model"),
    (["edit", "--method", "memit", *EDIT[1:], "--layers", "1,99"], "--layers: field 'layers': layers [1, 99] out of range"),
    (["evaluate", "--n", "999999", "--quiet", "--no-fluency"],
     "--n 999999 but the dataset 'toyworld-counterfact' has 1624 cases"),
    (["evaluate", "--config", '{"layer": 99}', "--n", "1"], "--config: field 'layer': layers [99] out of range"),
    (["contrast", "--config", '{"layer": 99}', "--n", "1"], "--config: field 'layer': layers [99] out of range"),
    ([*TRACE, "--model", "/nonexistent/dir"], "--model: no such folder '/nonexistent/dir'"),
    (["attribute", "--prompt", "Talvik Corlo was born in", "--model", "/nonexistent"], "--model: no such folder"),
    (["demo", "--model", "/nonexistent"], "--model: no such folder '/nonexistent'"),
    (["toy", "eval", "--checkpoint", "/nonexistent"], "--checkpoint: no such folder '/nonexistent'"),
]


@pytest.mark.parametrize(("argv", "message"), AFTER_LOAD, ids=[" ".join(a)[:60] for a, _ in AFTER_LOAD])
def test_what_needs_the_model_is_refused_naming_the_flag_once_it_has_loaded(toy_loads, capsys, tmp_path, monkeypatch,
                                                                            argv, message):
    """A layer the model lacks, more cases than its world's data set has, a model or checkpoint
    that is not there: one line naming the flag (it used to be the library's message alone, e.g.
    ``n=999999 but ...``), exit status 2, no traceback, nothing computed or edited."""
    import interp_edit.editing
    import interp_edit.evaluation
    import interp_edit.evaluation.contrast

    def no_edit(*args, **kwargs):
        raise AssertionError("an edit ran before the bad flag was refused")

    monkeypatch.setattr(interp_edit.editing, "edit", no_edit)
    monkeypatch.setattr(interp_edit.evaluation, "run_experiment", no_edit)
    monkeypatch.setattr(interp_edit.evaluation.contrast, "contrast_study", no_edit)
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("interp-edit: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message in err
