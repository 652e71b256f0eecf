"""The lifelong-editing benchmark (issue 31, ``benchmarks/lifelong.py``): the README's table is
the published result files' numbers (``benchmarks/results/lifelong/``, one per method and batch
size), and the benchmark runs end to end on a tiny setting (UltraEdit and GRACE, which need no key
statistics: 4 edits, batches of 2; a few seconds)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"


def _lifelong():
    spec = importlib.util.spec_from_file_location("lifelong_benchmark", ROOT / "benchmarks" / "lifelong.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_table_is_the_published_numbers():
    lifelong = _lifelong()
    results = lifelong.load_results(lifelong.RESULTS)
    assert results, "no result files in benchmarks/results/lifelong"
    text = README.read_text()
    block = text[text.index("<!-- readme lifelong table -->"):].splitlines()[1:]
    block = block[: next(i for i, line in enumerate(block) if not line.startswith("|"))]
    unedited = lifelong.load_unedited()
    assert block == lifelong.table(results, unedited).splitlines()  # every row, in order: the files' numbers
    row = [c.strip() for c in block[2].strip("|").split("|")]
    assert row[0] == "unedited" and [float(c) for c in row[3:7]] == pytest.approx(
        [unedited["efficacy_score"], unedited["paraphrase_score"], unedited["neighborhood_score"], unedited["fluency"]],
        abs=0.0051)
    names = {v: k for k, v in lifelong.NAMES.items()}
    for line in block[3:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        res = results[(names[cells[0]], int(cells[1]))]
        assert int(cells[2].split()[0].replace(",", "")) == res["edited_cases"]
        assert ("time budget" in cells[2]) == res["stopped_by_time_budget"]
        found = [float(c) for c in cells[3:8]]
        assert found == pytest.approx([res["efficacy_score"], res["paraphrase_score"], res["neighborhood_score"],
                                       res["fluency"], res["first_batch_at_end_efficacy_score"]], abs=0.0051)
        assert float(cells[8]) == pytest.approx(res["cpu_seconds_per_edit"], rel=0.051)


def test_the_published_files_are_complete_runs_or_say_where_they_stopped():
    for (method, batch), res in _lifelong().load_results().items():
        assert res["requested_cases"] == res["dataset_size"], (method, batch)  # every case was asked for
        assert (res["edited_cases"] < res["requested_cases"]) == res["stopped_by_time_budget"], (method, batch)
        assert res["checkpoints"][-1]["edits"] == res["edited_cases"]
        assert res["checkpoints"][-1]["efficacy_score"] == pytest.approx(res["efficacy_score"])


def test_a_tiny_run_end_to_end(tmp_path, monkeypatch, capsys):
    lifelong = _lifelong()
    monkeypatch.setattr(sys, "argv", ["lifelong.py", "--methods", "ultraedit,grace", "--batch-sizes", "2", "--n", "4",
                                      "--fluency-cases", "2", "--out", str(tmp_path)])
    lifelong.main()
    results = lifelong.load_results(tmp_path)
    assert sorted(results) == [("grace", 2), ("ultraedit", 2)]
    for res in results.values():
        assert res["edited_cases"] == 4 and not res["stopped_by_time_budget"]
        assert [c["edits"] for c in res["checkpoints"]] == [2, 4]
        assert 0 <= res["efficacy_score"] <= 1 and res["seconds_per_edit"] > 0
    assert json.loads((tmp_path / "ultraedit_b2.json").read_text())["method"] == "ultraedit"
    table = lifelong.table(results).splitlines()
    assert [line.split("|")[1].strip() for line in table[2:]] == ["UltraEdit", "GRACE"]
    fig = lifelong.figure(results)
    assert len(fig.data) == 4  # (efficacy, first batch) x 2 runs
