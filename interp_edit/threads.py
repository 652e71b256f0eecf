"""The package's threads policy, in one place: one intra-op thread unless told otherwise.

Measured on the toy-world model (``benchmarks/bench_threads.py``, docs/jupyter.md, "Threads"): its
kernels are too small for a second thread to pay for its synchronisation, and on a busy
machine a second thread is far slower. The notebooks and the CLI call :func:`set_threads`; a
larger model on an idle machine may gain from more (``threads=`` / ``--threads`` /
``INTERP_EDIT_THREADS``)."""

from __future__ import annotations

import os

from interp_edit.errors import InvalidArgumentError

DEFAULT_THREADS = 1
ENV_VAR = "INTERP_EDIT_THREADS"


def policy_threads(threads: int | None = None) -> int:
    """``threads`` if given, else ``$INTERP_EDIT_THREADS`` if set, else :data:`DEFAULT_THREADS`."""
    if threads is None:
        raw = os.environ.get(ENV_VAR)
        if raw is None or not raw.strip():
            return DEFAULT_THREADS
        try:
            threads = int(raw)
        except ValueError:
            raise InvalidArgumentError(f"{ENV_VAR} must be a positive integer, got {raw!r}") from None
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InvalidArgumentError(f"threads must be a positive integer, got {threads!r}")
    return threads


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads by :func:`policy_threads`; returns the number set."""
    import torch

    n = policy_threads(threads)
    torch.set_num_threads(n)
    return n
