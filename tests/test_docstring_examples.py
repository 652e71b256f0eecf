"""Every public name of ``interp_edit`` has a docstring with a short usage example, and every
example runs: each is executed here as a doctest (outputs compared with ``...`` and whitespace
allowed to differ) against the shipped toy-world model, which it must leave as it found it.

The names an example can use without importing them: ``model`` (the toy-world model),
``world`` (its world), ``records`` (its CounterFact records), ``torch`` and every public name of
``interp_edit``. Write examples that a user could paste into a notebook after
``from interp_edit import *`` and ``model = load_model("toyworld")``.
"""

from __future__ import annotations

import doctest
import inspect

import pytest
import torch
from model_state import assert_unchanged, snapshot

import interp_edit

NAMES = [name for name in interp_edit.__all__ if name != "__version__"]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _docstring(obj) -> str:
    return inspect.getdoc(obj) or ""


@pytest.fixture(scope="module")
def namespace(toy_model, toy_world):
    from interp_edit.toyworld import counterfact_records

    names = {name: getattr(interp_edit, name) for name in NAMES}
    return {**names, "torch": torch, "model": toy_model, "world": toy_world,
            "records": counterfact_records(toy_world)}


@pytest.mark.parametrize("name", NAMES)
def test_public_name_has_a_runnable_example(name, namespace, toy_model, tmp_path, monkeypatch):
    doc = _docstring(getattr(interp_edit, name))
    assert ">>>" in doc, f"interp_edit.{name}: its docstring has no example (a '>>>' line)"
    monkeypatch.chdir(tmp_path)  # examples that save files write them here
    before = snapshot(toy_model)
    test = doctest.DocTestParser().get_doctest(doc, dict(namespace), f"interp_edit.{name}", None, 0)
    runner = doctest.DocTestRunner(optionflags=FLAGS, verbose=False)
    report: list[str] = []
    runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
    assert_unchanged(toy_model, before, no_edits=True)


def test_a_failing_example_is_reported():
    doc = ">>> 1 + 1\n3\n"
    test = doctest.DocTestParser().get_doctest(doc, {}, "probe", None, 0)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    runner.run(test, out=lambda s: None)
    assert runner.failures == 1
