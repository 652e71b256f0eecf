"""Experiment sweeps: grid expansion and checks, resuming, retries, and the same per-cell results
in-process and on a local two-worker Ray instance, also when a worker is killed mid-cell."""

from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path

import pytest
import sweep_helpers

from interp_edit.cli import main
from interp_edit.errors import SweepExecutorError, SweepSpecError
from interp_edit.sweep import RayExecutor, SweepSpec, expand, load_spec, run_sweep

GRID = {
    "models": ["toyworld"],
    "editors": [{"method": "rome", "grid": {"layer": [1, 2]}}, {"method": "memit", "grid": {"layers": [[1], [2]]}}],
    "datasets": [{"name": "toyworld-counterfact", "n": 3}],
    "seeds": [0], "modes": ["independent"], "unrelated": 3, "fluency": False, "threads": 1,
}
ROME = GRID | {"editors": [{"method": "rome", "grid": {"layer": [1, 2]}}]}  # the first two cells of GRID
ONE_CELL = GRID | {"editors": [{"method": "rome", "grid": {"layer": [1]}}]}


pytestmark = pytest.mark.usefixtures("one_thread")  # many small forwards: one thread is fastest


@pytest.fixture(scope="module")
def reference(toy_model, tmp_path_factory):
    """The grid run in this process, uninterrupted."""
    result = run_sweep(GRID, tmp_path_factory.mktemp("reference"), models={"toyworld": toy_model}, progress=False)
    assert not result.failed and len(result.results) == 4
    return result


def same(x, y) -> bool:
    """Equal JSON values, NaN equal to NaN."""
    if isinstance(x, float) and isinstance(y, float):
        return x == y or (math.isnan(x) and math.isnan(y))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(same(a, b) for a, b in zip(x, y, strict=True))
    return x == y


def assert_same_cells(a, b, cell_ids=None) -> None:
    """Identical per-case rows, checkpoints and baselines in every (given) cell."""
    for cell_id in cell_ids or a.results:
        x, y = a.results[cell_id], b.results[cell_id]
        assert same(x["baseline"], y["baseline"]), cell_id
        assert [e["case_ids"] for e in x["batches"]] == [e["case_ids"] for e in y["batches"]], cell_id
        for ex, ey in zip(x["batches"], y["batches"], strict=True):
            assert same(ex["rows"], ey["rows"]), cell_id
            assert same(ex.get("checkpoint"), ey.get("checkpoint")), cell_id


def test_grid_expands_to_cells_in_order_with_stable_ids(tmp_path):
    spec = load_spec(GRID | {"seeds": [0, 1]})
    cells = expand(spec)
    assert len(cells) == 2 * 2 * 2
    assert [(c.method, c.config_dict, c.seed) for c in cells[:4]] == [
        ("rome", {"layer": 1}, 0), ("rome", {"layer": 1}, 1), ("rome", {"layer": 2}, 0), ("rome", {"layer": 2}, 1)]
    assert cells[4].config_dict == {"layers": [1]}
    assert len({c.cell_id for c in cells}) == 8
    assert [c.cell_id for c in expand(load_spec(GRID | {"seeds": [0, 1]}))] == [c.cell_id for c in cells]
    (tmp_path / "grid.json").write_text(json.dumps(GRID))
    import yaml

    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(GRID))
    assert load_spec(tmp_path / "grid.json") == load_spec(tmp_path / "grid.yaml") == load_spec(GRID)
    assert SweepSpec.from_dict(load_spec(GRID).to_dict()) == load_spec(GRID)


BAD = [
    ({"editors": [{"method": "rome", "grid": {"layer": [1]}}, {"method": "romeo", "grid": {"layer": [1]}}]},
     "sweep cell 1", "'method'", "romeo"),
    ({"editors": [{"method": "rome", "grid": {"layer": [1], "lr_typo": [0.1]}}]}, "sweep cell 0", "config.lr_typo", "no field"),
    ({"editors": [{"method": "rome", "grid": {"layer": [1, 9]}}]}, "sweep cell 1", "config.layer", "out of range"),
    ({"editors": [{"method": "memit", "grid": {"steps": [2, -1]}}]}, "sweep cell 1", "config", "steps"),
    # the model's context, from its checkpoint config (no weights loaded)
    ({"editors": [{"method": "rome", "grid": {"prefix_length": [4, 100]}}]}, "sweep cell 1", "config", "prefix_length"),
    ({"editors": [{"method": "fine", "grid": {"top_k": [1, 10 ** 6]}}]}, "sweep cell 1", "config", "top_k"),
    ({"datasets": [{"name": "toyworld-counterfact", "n": 3}, {"name": "no-such-data"}]}, "sweep cell 1", "'dataset'", "no-such-data"),
    ({"models": ["toyworld", "no-such-model"]}, "sweep cell 4", "'model'", "no-such-model"),
    ({"seeds": []}, "axis", "'seeds'", "empty"),
    ({"datasets": [{"name": "toyworld-counterfact", "n": 1, "data": 5}]}, "datasets[0]", "'data'", "loaded Dataset"),
    ({"editors": [{"method": "rome", "grid": {"layer": []}}]}, "axis", "grid.layer", "empty"),
    ({"modes": ["parallel"]}, "modes[0]", "parallel", "independent"),
    ({"seed": [0]}, "unknown field", "seed", "seeds"),
]


@pytest.mark.parametrize(("change", "cell", "field", "detail"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_a_bad_grid_is_refused_before_anything_runs(tmp_path, change, cell, field, detail):
    calls = []
    with pytest.raises(SweepSpecError) as err:
        run_sweep(GRID | change, tmp_path / "out", cell_fn=lambda *a: calls.append(a), progress=False)
    message = str(err.value)
    assert cell in message and field in message and detail in message, message
    assert not calls and not (tmp_path / "out").exists()


def test_a_failed_cell_is_retried_and_reported_and_the_rest_finish(toy_model, tmp_path, reference):
    cells = expand(load_spec(ROME))
    flaky, broken = cells[0].cell_id, cells[1].cell_id
    flaky_fn = sweep_helpers.failing({flaky}, times=1)

    def fn(cell, root, model):
        if cell.cell_id == broken:
            raise ValueError("bad cell")
        return flaky_fn(cell, root, model)
    result = run_sweep(ROME, tmp_path, models={"toyworld": toy_model}, retries=1, progress=False, cell_fn=fn)
    assert list(result.failed) == [broken] and len(result.failed[broken]) == 2 and "ValueError: bad cell" in result.failed[broken][0]
    assert list(result.retried) == [flaky] and "simulated failure 1" in result.retried[flaky][0]
    assert set(result.results) == {c.cell_id for c in cells} - {broken}
    assert_same_cells(result, reference, result.results)
    rows = {r["cell_id"]: r for r in result.rows()}
    assert rows[broken]["status"] == "failed" and rows[flaky]["attempts"] == 2
    attempts = [json.loads(x) for x in (tmp_path / "attempts.jsonl").read_text().splitlines()]
    assert [(a["attempt"], a["status"]) for a in attempts if a["cell_id"] == broken] == [(1, "error"), (2, "error")]
    assert "failed" in result.table() and "bad cell" in rows[broken]["error"]


def test_a_cell_refused_for_its_input_is_not_retried(toy_model, tmp_path):
    """A bad record or config fails the same way on every attempt: it is tried once, recorded as
    invalid and listed as failed; an unexpected error is still retried."""
    from interp_edit.errors import DatasetError

    cells = expand(load_spec(ROME))
    invalid, crashing = cells[0].cell_id, cells[1].cell_id
    calls = []

    def fn(cell, root, model):
        calls.append(cell.cell_id)
        if cell.cell_id == invalid:
            raise DatasetError("record 3: field 'alt': bad")
        if cell.cell_id == crashing:
            raise RuntimeError("out of memory")
        return {"cell": cell.cell_id}

    result = run_sweep(ROME, tmp_path, models={"toyworld": toy_model}, retries=2, progress=False, cell_fn=fn)
    assert calls.count(invalid) == 1 and calls.count(crashing) == 3
    assert set(result.failed) == {invalid, crashing} and "field 'alt'" in result.failed[invalid][0]
    attempts = [json.loads(x) for x in (tmp_path / "attempts.jsonl").read_text().splitlines()]
    assert [a["status"] for a in attempts if a["cell_id"] == invalid] == ["invalid"]


def test_an_interrupted_sweep_resumes_where_it_stopped(toy_model, tmp_path, reference):
    cells = expand(load_spec(ROME))
    stop = cells[1].cell_id
    fn = sweep_helpers.interrupted_in_cell(stop)
    with pytest.raises(sweep_helpers.Interrupted):
        run_sweep(ROME, tmp_path, models={"toyworld": toy_model}, cell_fn=fn, progress=False)
    resumed = run_sweep(ROME, tmp_path, models={"toyworld": toy_model}, cell_fn=fn, progress=False)
    assert not resumed.failed
    assert_same_cells(resumed, reference)
    computed = {c.cell_id: [json.loads(x)["batch"] for x in (tmp_path / f"computed-{c.cell_id}.jsonl").read_text().splitlines()]
                for c in cells}
    assert computed[cells[0].cell_id] == [0, 1, 2]  # the finished cell is not redone
    assert computed[stop] == [0, 1, 2]  # batches 0 and 1 before the interruption, 2 after
    lines = (cells[1].folder(tmp_path) / "results.jsonl").read_text().splitlines()
    assert [json.loads(x)["type"] for x in lines] == ["settings", "baseline", "batch", "batch", "batch"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}", "nonsense"])  # loopback only
def test_an_unreachable_ray_address_is_a_clear_error_within_seconds(tmp_path, address):
    start = time.perf_counter()
    with pytest.raises(SweepExecutorError, match="Ray"):
        run_sweep(ONE_CELL, tmp_path, executor=RayExecutor(address.format(port=_closed_port()), connect_timeout=1.0),
                  progress=False)
    assert time.perf_counter() - start < 10
    assert not (tmp_path / "cells").exists()


def test_sweep_command_runs_a_grid_and_reports_bad_input(tmp_path, capsys):
    spec = tmp_path / "grid.json"
    spec.write_text(json.dumps(ONE_CELL | {"datasets": [{"name": "toyworld-counterfact", "n": 1}], "unrelated": 1}))
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--quiet", "--no-figure"]) == 0
    out = capsys.readouterr().out
    assert "| rome | layer=1 |" in out and "cells=1 finished=1 failed=0" in out
    assert (tmp_path / "out" / "summary.json").is_file() and (tmp_path / "out" / "summary.md").is_file()
    spec.write_text(json.dumps(ONE_CELL | {"editors": [{"method": "rome", "grid": {"layr": [1]}}]}))
    assert main(["sweep", str(spec), "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "config.layr" in capsys.readouterr().err


@pytest.mark.slow
def test_local_processes_retry_a_killed_worker_and_resume_the_cell(tmp_path, reference):
    cell = expand(load_spec(ONE_CELL))[0]
    result = run_sweep(ONE_CELL, tmp_path, executor="processes", workers=1,
                       cell_fn=sweep_helpers.killed_after_batch_1_once, progress=False)
    assert not result.failed and list(result.retried) == [cell.cell_id]
    assert "terminated abruptly" in result.retried[cell.cell_id][0] or "Broken" in result.retried[cell.cell_id][0]
    assert_same_cells(result, reference, [cell.cell_id])
    computed = [json.loads(x) for x in (tmp_path / f"computed-{cell.cell_id}.jsonl").read_text().splitlines()]
    assert [c["batch"] for c in computed] == [0, 1, 2] and computed[1]["pid"] != computed[2]["pid"]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance with two worker CPUs for this module; the workers can import
    the test helpers."""
    ray = pytest.importorskip("ray")
    old = os.environ.get("PYTHONPATH")
    tests = str(Path(__file__).parent)
    os.environ["PYTHONPATH"] = os.pathsep.join([p for p in (tests, old) if p])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


@pytest.mark.slow
def test_ray_with_two_workers_gives_the_in_process_results(local_ray, tmp_path, reference):
    result = run_sweep(GRID, tmp_path, executor="ray", workers=2, progress=False)
    assert not result.failed and not result.retried and set(result.results) == set(reference.results)
    assert_same_cells(result, reference)
    assert local_ray.is_initialized()  # an instance it did not start is left running


@pytest.mark.slow
def test_a_worker_killed_mid_cell_is_retried_and_resumes_losing_nothing(local_ray, tmp_path, reference):
    cells = expand(load_spec(ROME))
    result = run_sweep(ROME, tmp_path, executor="ray", cell_fn=sweep_helpers.killed_after_batch_1_once, progress=False)
    assert not result.failed and set(result.retried) == {c.cell_id for c in cells}
    assert all("died" in e[0].lower() or "crash" in e[0].lower() for e in result.retried.values()), result.retried
    assert_same_cells(result, reference, [c.cell_id for c in cells])
    for cell in cells:
        computed = [json.loads(x) for x in (tmp_path / f"computed-{cell.cell_id}.jsonl").read_text().splitlines()]
        assert [c["batch"] for c in computed] == [0, 1, 2]  # batch 2 only after the kill, 0 and 1 not redone
        assert computed[1]["pid"] != computed[2]["pid"]  # ... in another worker process
        lines = (cell.folder(tmp_path) / "results.jsonl").read_text().splitlines()
        assert [json.loads(x)["type"] for x in lines] == ["settings", "baseline", "batch", "batch", "batch"]


def test_a_dataset_file_rewritten_under_its_name_gives_other_cells(tmp_path):
    """A sweep over a file took a rewritten file's cells as finished (the cell id hashed only the
    file's name) and returned the old numbers. The file's contents are now part of the cell."""
    path = tmp_path / "cases.json"
    grid = GRID | {"datasets": [{"name": str(path)}], "editors": [{"method": "rome", "grid": {"layer": [1]}}]}
    path.write_text(json.dumps([{"case_id": 0}]))
    first = [c.cell_id for c in expand(load_spec(grid))]
    assert [c.cell_id for c in expand(load_spec(grid))] == first  # the same contents: the same cells
    path.write_text(json.dumps([{"case_id": 1}]))
    assert not set(first) & {c.cell_id for c in expand(load_spec(grid))}


def test_a_dataset_file_is_read_once_per_sweep_not_once_per_cell(tmp_path, monkeypatch):
    import interp_edit.sweep.cells as cells_module

    path = tmp_path / "cases.json"
    path.write_text(json.dumps([{"case_id": 0}]))
    reads = []
    real = cells_module._data_key
    monkeypatch.setattr(cells_module, "_data_key", lambda *a: reads.append(a) or real(*a))
    cells = expand(load_spec(GRID | {"datasets": [{"name": str(path)}], "seeds": [0, 1, 2]}))
    assert len(cells) == 12 and len(reads) == 1 and len({c.data_key for c in cells}) == 1


@pytest.mark.parametrize(("records", "n", "detail"), [
    ("bad", None, "record 1: field 'paraphrase_prompts'"),
    ("good", 3, "n=3 but the dataset has 2 cases"),
])
def test_a_dataset_file_is_checked_before_any_cell_runs(toy_world, tmp_path, records, n, detail):
    """A bad record (or an n larger than the file) failed every cell, after its model loaded,
    and each was retried."""
    from interp_edit.data.toyworld import toy_counterfact

    cases = toy_counterfact(toy_world)[:2]
    if records == "bad":
        cases[1]["paraphrase_prompts"] = []
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(cases))
    data = {"name": str(path)} | ({"n": n} if n else {})
    calls = []
    with pytest.raises(SweepSpecError) as err:
        run_sweep(GRID | {"datasets": [data]}, tmp_path / "out", cell_fn=lambda *a: calls.append(a), progress=False)
    assert "field 'dataset'" in str(err.value) and detail in str(err.value), str(err.value)
    assert not calls and not (tmp_path / "out").exists()


def test_a_zsre_dataset_written_as_rome_does_is_other_cells():
    """The same zsRE cases with another new answer (zsre_target) are other cells, not finished ones."""
    from interp_edit.data import load_dataset

    def ids(zsre_target):
        data = load_dataset("toyworld-zsre", zsre_target=zsre_target)
        return {c.cell_id for c in expand(load_spec(ONE_CELL | {"datasets": [{"name": "zs", "data": data, "n": 2}]}))}

    assert ids("alt") == ids("alt") and not ids("alt") & ids("answer")
