"""Where a sweep's cells run: in this process (default), in local worker processes, or on Ray
(a local instance, or a cluster at an address). An executor runs each given cell once and
yields ``(cell, outcome)`` as cells finish; retrying failed cells is the sweep's job
(:func:`~interp_edit.sweep.run_sweep`), so every executor retries the same way.

``outcome`` is ``("ok", value)`` or ``("error", text)``; a worker process that dies mid-cell
is an error of that cell (its JSONL keeps every finished batch, so a retry resumes it).
"""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from interp_edit.errors import ExperimentError, InterpEditError, SweepExecutorError

Outcome = tuple[str, Any]
#: a cell function: ``fn(cell, root, model)`` -> a JSON-able result (``model``: a loaded model or ``None``)
CellFn = Callable[..., Any]


def _error_text(err: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(err), err)).strip()


def failure(err: BaseException, limit: int | None = None) -> Outcome:
    """A failed attempt's outcome: ``("invalid", text)`` for an input this package refused (an
    :class:`~interp_edit.errors.InterpEditError` that is a ``ValueError``: a bad record, config
    or request fails the same way every time, so it is not retried; and an
    :class:`~interp_edit.errors.ExperimentError`: the cell's folder holds another run's results,
    which a retry finds again), else ``("error", text)``."""
    text = _error_text(err)
    text = text[-limit:] if limit is not None else text
    refused = isinstance(err, ExperimentError) or (isinstance(err, InterpEditError) and isinstance(err, ValueError))
    return ("invalid" if refused else "error"), text


class InProcessExecutor:
    """Cells one after another in this process; models (given, or loaded once per call) are shared."""

    name = "inprocess"

    def __init__(self, models: dict | None = None) -> None:
        self.models = dict(models or {})

    def run(self, cells: Sequence, fn: CellFn, root: Path) -> Iterator[tuple[Any, Outcome]]:
        from interp_edit.adapter import load_model

        loaded = dict(self.models)
        for cell in cells:
            try:
                if cell.model not in loaded:
                    loaded[cell.model] = load_model(cell.model)
                yield cell, ("ok", fn(cell, str(root), loaded[cell.model]))
            except Exception as err:  # a failed cell is reported (and retried unless invalid), never fatal
                yield cell, failure(err)

    def close(self) -> None:
        pass


class ProcessExecutor:
    """Cells in ``workers`` local processes (``spawn``: fresh interpreters); each cell loads its
    model in its worker. A worker that dies breaks the pool: the cells still running or queued
    in it count a failed attempt each and run again in a fresh pool (resuming from their JSONL)."""

    name = "processes"

    def __init__(self, workers: int = 2) -> None:
        if workers < 1:
            raise SweepExecutorError(f"workers must be >= 1, got {workers}")
        self.workers = workers

    def run(self, cells: Sequence, fn: CellFn, root: Path) -> Iterator[tuple[Any, Outcome]]:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        if not cells:
            return
        with ProcessPoolExecutor(max_workers=min(self.workers, len(cells)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(fn, cell, str(root), None): cell for cell in cells}
            for future in as_completed(futures):
                try:
                    yield futures[future], ("ok", future.result())
                except Exception as err:  # includes BrokenProcessPool: a worker died
                    yield futures[future], failure(err)

    def close(self) -> None:
        pass


def _check_reachable(address: str, timeout: float) -> None:
    """Fail fast when ``host:port`` (optionally ``ray://``) does not accept a connection."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SweepExecutorError(f"Ray address {address!r} is not of the form host:port, ray://host:port or 'auto'")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise SweepExecutorError(f"cannot reach the Ray cluster at {address!r} within {timeout:g} s ({err}); "
                                 "is `ray start --head` running there, and is the port open?") from None


class RayExecutor:
    """Cells as Ray tasks (one CPU each): on a new local Ray instance with ``workers`` CPUs when
    ``address`` is ``None``, else on the cluster at ``address`` (checked to be reachable within
    ``connect_timeout`` seconds, before Ray is asked, so a wrong address fails in seconds
    instead of hanging). A Ray instance already initialised in this process is used as it is
    and left running."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int = 2, connect_timeout: float = 10.0,
                 num_cpus_per_cell: float = 1.0) -> None:
        if workers < 1:
            raise SweepExecutorError(f"workers must be >= 1, got {workers}")
        self.address, self.workers, self.connect_timeout = address, workers, connect_timeout
        self.num_cpus_per_cell = num_cpus_per_cell
        self._started = False
        #: seconds ray.init took (0 when Ray was already running)
        self.startup_seconds = 0.0

    def _ray(self):
        try:
            import ray
        except ImportError:
            raise SweepExecutorError("the Ray executor needs Ray: pip install 'interp_edit[ray]'") from None
        if self.address is not None:
            _check_reachable(self.address, self.connect_timeout)
        if not ray.is_initialized():
            start = time.perf_counter()
            if self.address is not None:
                self._connect(ray)
            else:
                ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False)
            self._started = True
            self.startup_seconds = time.perf_counter() - start
        return ray

    def _connect(self, ray) -> None:
        """``ray.init(address)`` trying for about ``connect_timeout`` seconds (Ray's own
        default is ~20 s of retries; an open port that is not a Ray GCS counts as unreachable)."""
        wait = "RAY_gcs_server_port_wait_time_s"  # Ray's number of ~1 s connection attempts
        old = os.environ.get(wait)
        os.environ[wait] = old if old is not None else str(max(1, math.ceil(self.connect_timeout)))
        try:
            ray.init(address=self.address, log_to_driver=False)
        except (ConnectionError, RuntimeError) as err:
            raise SweepExecutorError(f"cannot connect to the Ray cluster at {self.address!r} within "
                                     f"{self.connect_timeout:g} s ({err}); is `ray start --head` running there?") from None
        finally:
            if old is None:
                os.environ.pop(wait, None)

    def start(self) -> None:
        """Start (or connect to) Ray now rather than at the first cell."""
        self._ray()

    def run(self, cells: Sequence, fn: CellFn, root: Path) -> Iterator[tuple[Any, Outcome]]:
        ray = self._ray()
        if not cells:
            return
        task = ray.remote(num_cpus=self.num_cpus_per_cell, max_retries=0)(fn)
        pending = {task.remote(cell, str(root), None): cell for cell in cells}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                cell = pending.pop(ref)
                try:
                    yield cell, ("ok", ray.get(ref))
                except Exception as err:  # RayTaskError (an instance of the cell's error too), WorkerCrashedError...
                    yield cell, failure(err, limit=3000)

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


EXECUTORS = ("inprocess", "processes", "ray")


def make_executor(executor: str | Any = "inprocess", *, workers: int = 2, address: str | None = None,
                  connect_timeout: float = 10.0, models: dict | None = None):
    """An executor by name (:data:`EXECUTORS`), or ``executor`` itself if it is one."""
    if not isinstance(executor, str):
        return executor
    if executor == "inprocess":
        return InProcessExecutor(models)
    if executor == "processes":
        return ProcessExecutor(workers)
    if executor == "ray":
        return RayExecutor(address, workers, connect_timeout)
    raise SweepExecutorError(f"unknown executor {executor!r}; executors: {list(EXECUTORS)}")
