"""Cell functions for the sweep tests. They live in an importable module (not a test file) so
that worker processes, local or Ray, can unpickle them."""

from __future__ import annotations

import importlib
import json
import os
import signal
from pathlib import Path

from interp_edit.sweep import run_cell

runner = importlib.import_module("interp_edit.evaluation.runner")


class Interrupted(BaseException):
    """Like Ctrl-C: not a cell failure, it stops the whole sweep."""


def _with_hook(cell, root, model, hook):
    original = runner._after_batch
    runner._after_batch = hook
    try:
        return run_cell(cell, root, model)
    finally:
        runner._after_batch = original


def _log_batches(cell, root):
    """Records every batch a worker computes: ``root/computed-<cell id>.jsonl``."""
    path = Path(root) / f"computed-{cell.cell_id}.jsonl"

    def log(batch: int) -> None:
        with path.open("a") as handle:
            handle.write(json.dumps({"pid": os.getpid(), "batch": batch}) + "\n")
    return log


def killed_after_batch_1_once(cell, root, model=None):
    """The first time (no marker file yet) the worker process kills itself with SIGKILL right
    after batch 1 of the cell was recorded; later attempts run normally."""
    marker = Path(root) / f"killed-{cell.cell_id}"
    log = _log_batches(cell, root)

    def hook(batch: int) -> None:
        log(batch)
        if batch == 1 and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
    return _with_hook(cell, root, model, hook)


def interrupted_in_cell(index_to_stop: str):
    """A cell function that interrupts the sweep after batch 1 of the cell with this id, the
    first time (in-process executor only)."""
    def fn(cell, root, model=None):
        marker = Path(root) / f"interrupted-{cell.cell_id}"
        log = _log_batches(cell, root)

        def hook(batch: int) -> None:
            log(batch)
            if cell.cell_id == index_to_stop and batch == 1 and not marker.exists():
                marker.touch()
                raise Interrupted(f"stopped in {cell.cell_id}")
        return _with_hook(cell, root, model, hook)
    return fn


def failing(cell_ids: set[str], times: int):
    """Raises for the given cells on their first ``times`` attempts (counted in a file)."""
    def fn(cell, root, model=None):
        if cell.cell_id in cell_ids:
            counter = Path(root) / f"attempts-{cell.cell_id}"
            seen = int(counter.read_text()) if counter.exists() else 0
            counter.write_text(str(seen + 1))
            if seen < times:
                raise RuntimeError(f"simulated failure {seen + 1} of {cell.cell_id}")
        return run_cell(cell, root, model)
    return fn
