"""The ripple cases as a data set (``toyworld-ripple``, format ``ripple``): records round-trip
through a JSON file, bad records are refused naming the field, and an experiment on them
filters the tests the unedited model knew before any edit and scores each ripple kind, under
every protocol and from the CLI."""

from __future__ import annotations

import json
import math

import pytest

from interp_edit.data import load_dataset
from interp_edit.data.ripple import RIPPLE_KINDS, RippleCase, toy_ripple
from interp_edit.errors import DatasetError
from interp_edit.evaluation.ripple import known_tests_only, ripple_scores, toy_ripple_cases


def test_the_builtin_data_set_is_the_toy_ripple_cases(toy_world):
    ds = load_dataset("toyworld-ripple", world=toy_world)
    assert ds.format == "ripple" and len(ds) == 424
    assert list(ds.cases[:10]) == toy_ripple_cases(toy_world, n=10)
    assert sum(c.edit_kind == "person" for c in ds) == 400 and sum(c.edit_kind == "city" for c in ds) == 24
    assert all(isinstance(c, RippleCase) and c.rewrites() == (c.rewrite,) for c in ds)


def test_a_json_file_of_ripple_records_loads_by_sniffing(toy_world, tmp_path):
    records = toy_ripple(toy_world, n=3)
    path = tmp_path / "ripple.json"
    path.write_text(json.dumps(records))
    ds = load_dataset(path)
    assert ds.format == "ripple" and list(ds) == toy_ripple_cases(toy_world, n=3)


@pytest.mark.parametrize("change, field", [
    (lambda r: r.update(tests=[]), "tests"),
    (lambda r: r["tests"][1].update(kind="logical_generalisation"), r"tests\[1\]\.kind"),
    (lambda r: r["tests"][0].update(prompts=[]), r"tests\[0\]\.prompts"),
    (lambda r: r["tests"][2].pop("before"), r"tests\[2\]\.before"),
    (lambda r: r["requested_rewrite"].update(target_new=r["requested_rewrite"]["target_true"]), "requested_rewrite.target_new"),
    (lambda r: r.pop("edit_kind"), "edit_kind"),
])
def test_a_bad_record_is_refused_naming_the_field(toy_world, tmp_path, change, field):
    records = toy_ripple(toy_world, n=2)
    change(records[1])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DatasetError, match=rf"record 1.*{field}"):
        load_dataset(path, format="ripple")


def test_known_tests_only_keeps_what_the_unedited_model_answers(toy_model, toy_world):
    cases = toy_ripple_cases(toy_world, n=6)
    kept, known = known_tests_only(toy_model, cases)
    before = ripple_scores(toy_model, cases, before=True)
    for case, k, row in zip(cases, kept, before, strict=True):
        assert set(k.tests) <= set(case.tests) and k.rewrite == case.rewrite
        for kind in RIPPLE_KINDS:  # the share kept is the share the model answered
            n_all = sum(t.kind == kind for t in case.tests)
            if n_all:
                assert sum(t.kind == kind for t in k.tests) / n_all == pytest.approx(row[kind])
    assert known == {kind: sum(t.kind == kind for c in kept for t in c.tests) for kind in RIPPLE_KINDS}
    assert sum(known.values()) > 0


@pytest.mark.parametrize("protocol", ["teacher_forced", "generation"])
def test_an_experiment_on_toyworld_ripple_scores_each_kind(toy_model, protocol):
    from interp_edit.evaluation import run_experiment

    res = run_experiment(toy_model, "toyworld-ripple", "rome", n=2, unrelated=3, fluency=False, progress=False,
                         protocol=protocol, config={"steps": 3})
    final = res.final_metrics()
    assert set(RIPPLE_KINDS) <= set(final) and res.settings["ripple_known_tests"].keys() == set(RIPPLE_KINDS)
    assert ("efficacy_score" in final) == (protocol == "teacher_forced")
    assert ("gen_efficacy_exact" in final) == (protocol == "generation")
    # the unedited model's row: every kept test expects its answer before the edit, so the
    # compositional tests (answers that move) are wrong and the specificity tests right
    assert res.baseline["relation_specificity"] == 1.0
    assert res.baseline["compositionality_I"] == 0.0 or math.isnan(res.baseline["compositionality_I"])


def test_the_cli_evaluates_toyworld_ripple(capsys):
    from interp_edit.cli import main

    main(["evaluate", "--data", "toyworld-ripple", "--method", "rome", "--n", "1", "--unrelated", "2", "--no-fluency",
          "--quiet"])
    out = capsys.readouterr().out
    assert "toyworld-ripple" in out and "compositionality_I" in out and "relation_specificity" in out
