"""``run_sweep``: expand a grid into cells, check them all, run (or resume) them on an
executor, retry failed ones, and merge every cell's summary.

A sweep's folder holds ``sweep.json`` (the spec and its cells), ``attempts.jsonl`` (one line
per attempt of a cell: ok or the error) and ``cells/<cell id>/`` with the cell's own resumable
``results.jsonl`` (:func:`~interp_edit.evaluation.run_experiment`) and, once it finished,
``summary.json``. Running the same sweep again resumes every cell through ``run_experiment``:
an unfinished one after its last finished batch, so an interrupted sweep (or a killed worker)
loses nothing; a finished one without editing or measuring anything again. A cell's
``summary.json`` alone is never taken as its result: ``run_experiment``'s resume compares the
settings its ``results.jsonl`` was written with (the model's fingerprint, the selected cases,
the library version...) with the run's now, so a cell computed on another model (a model
with other weights under the same name) is refused — a failed cell whose error names its folder
and the differing settings — rather than returned as this model's result. (With the
``processes`` or ``ray`` executor each finished cell therefore loads its model once more.)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

from interp_edit.atomic_files import write_text_atomic
from interp_edit.errors import SweepSpecError
from interp_edit.progress import progress_bar
from interp_edit.sweep.cells import Cell, expand, validate_cells
from interp_edit.sweep.executors import CellFn, make_executor
from interp_edit.sweep.result import SweepResult
from interp_edit.sweep.spec import SweepSpec, load_spec

SUMMARY_FILE = "summary.json"
ATTEMPTS_FILE = "attempts.jsonl"
SPEC_FILE = "sweep.json"


def run_cell(cell: Cell, root: str, model=None) -> dict:
    """Run (or resume) one cell's experiment in ``root``'s cell folder; write and return its
    result as a dict (:meth:`~interp_edit.evaluation.ExperimentResult.to_dict`). ``model``:
    the loaded model, or ``None`` to load ``cell.model``."""
    import torch

    from interp_edit.adapter import load_model
    from interp_edit.evaluation import run_experiment

    folder = cell.folder(root)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "cell.json", json.dumps(cell.to_dict(), indent=1))
    threads = torch.get_num_threads()
    if cell.threads is not None:
        torch.set_num_threads(cell.threads)
    try:
        model = load_model(cell.model) if model is None else model
        config = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cell.config_dict.items()}
        result = run_experiment(model, cell.data if cell.data is not None else cell.dataset, cell.method, n=cell.n,
                                batch_size=cell.batch_size, sequential=cell.sequential, eval_every=cell.eval_every,
                                seed=cell.seed, out=folder, unrelated=cell.unrelated, fluency=cell.fluency,
                                max_new_tokens=cell.max_new_tokens, config=config, progress=False)
    finally:
        torch.set_num_threads(threads)
    data = result.to_dict()
    write_text_atomic(folder / SUMMARY_FILE, json.dumps(data))
    return data


def check_out(out, name: str = "out=") -> Path:
    """``out`` as a sweep's folder: a path (str or ``os.PathLike``) that is a folder, or does not
    exist yet and whose nearest existing parent is a folder; else
    :class:`~interp_edit.errors.SweepSpecError` naming ``name`` and the path. Nothing is created."""
    if not isinstance(out, (str, os.PathLike)) or not str(out):
        raise SweepSpecError(f"sweep {name}: expected a folder path, got {out!r}")
    root = Path(out)
    label = f"{name}{str(out)!r}" if name.endswith("=") else f"{name} {str(out)!r}"
    existing = next((p for p in (root, *root.parents) if p.exists() or p.is_symlink()), None)
    if existing is not None and not existing.is_dir():
        problem = "exists and is not a folder" if existing == root else f"is inside {str(existing)!r}, which is not a folder"
        raise SweepSpecError(f"sweep {label} {problem}; give a new folder or a previous sweep's")
    return root


def _append(path: Path, entry: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")


def run_sweep(spec: SweepSpec | Mapping | str | Path, out: str | Path, *, executor="inprocess", retries: int = 2,
              workers: int = 2, address: str | None = None, connect_timeout: float = 10.0, models: dict | None = None,
              cell_fn: CellFn = run_cell, progress: bool = True) -> SweepResult:
    """Run every cell of ``spec`` (a :class:`SweepSpec`, a dict or a JSON / YAML file) with
    results under ``out``; see the module docstring.

    ``executor``: ``"inprocess"`` (default; ``models`` maps model names to already loaded
    models), ``"processes"`` (``workers`` local processes), ``"ray"`` (a local Ray instance
    with ``workers`` CPUs, or the cluster at ``address``), or an executor object. A failed cell
    is retried up to ``retries`` times, unless it failed on an input this package refused (a
    ``ValueError`` of :mod:`interp_edit.errors`: a bad record or config fails the same way
    again); cells still failing are listed in the result's
    ``failed`` (their finished batches stay on disk for the next run). Every cell is checked
    before any runs (:class:`~interp_edit.errors.SweepSpecError` names the cell and field).

    >>> spec = {"models": ["toyworld"],
    ...         "editors": [{"method": "rome"}, {"method": "memit", "config": {"layers": [1, 2]}}],
    ...         "datasets": [{"name": "toyworld-counterfact", "n": 1}], "unrelated": 2, "fluency": False}
    >>> sweep = run_sweep(spec, "sweep", models={"toyworld": model}, progress=False)
    >>> sorted(row["method"] for row in sweep.rows())
    ['memit', 'rome']
    >>> again = run_sweep(spec, "sweep", models={"toyworld": model}, progress=False)   # resumes: nothing to redo
    """
    check_out(out)
    spec = load_spec(spec)
    if retries < 0:
        raise SweepSpecError(f"retries must be >= 0, got {retries}")
    cells = expand(spec)
    validate_cells(cells, models)
    ids = [c.cell_id for c in cells]
    if len(set(ids)) != len(ids):
        dup = next(c for c in cells if ids.count(c.cell_id) > 1)
        raise SweepSpecError(f"sweep cell ({dup.label}) appears more than once in the grid")
    runner = make_executor(executor, workers=workers, address=address, connect_timeout=connect_timeout, models=models)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(root / SPEC_FILE, json.dumps({"spec": spec.to_dict(), "cells": [c.to_dict() | {"cell_id": c.cell_id}
                                                                                   for c in cells]}, indent=1))
    results: dict[str, dict] = {}
    errors: dict[str, list[str]] = {}
    start = time.perf_counter()
    bar = progress_bar(total=len(cells), desc=f"sweep ({getattr(runner, 'name', 'custom')})", disable=not progress)
    try:
        pending = list(cells)  # finished ones too: run_experiment's resume decides whether their results hold (module docstring)
        for attempt in range(1, retries + 2):
            if not pending:
                break
            failed = []
            for cell, (status, value) in runner.run(pending, cell_fn, root):
                entry = {"cell_id": cell.cell_id, "attempt": attempt, "status": status, "time": time.time()}
                if status == "ok":
                    results[cell.cell_id] = value
                    bar.update(1)
                else:  # "invalid" (an input refused: it would fail again) is not retried
                    errors.setdefault(cell.cell_id, []).append(value)
                    if status != "invalid":
                        failed.append(cell)
                    entry["error"] = value
                _append(root / ATTEMPTS_FILE, entry)
            again = {c.cell_id for c in failed}
            pending = [c for c in cells if c.cell_id in again]
    finally:
        bar.close()
        runner.close()
    failed = {c.cell_id: errors[c.cell_id] for c in cells if c.cell_id not in results}
    retried = {cid: errs for cid, errs in errors.items() if cid in results}
    return SweepResult(spec, cells, results, failed, retried, time.perf_counter() - start)
