"""Progress bars, chosen once for the package: a widget in a Jupyter kernel (when ipywidgets is
installed: the ``notebook`` extra), tqdm's text bar on a terminal, and a few plain lines in a
non-interactive log (no carriage returns). ``disable=True`` gives a bar that prints nothing.

It also owns :func:`import_tqdm_auto_quietly`: TransformerLens (``HookedTransformer``,
``patching``, ``evals``) imports ``tqdm.auto``, which in a Jupyter kernel without ipywidgets
warns ``TqdmWarning: IProgress not found`` and falls back to the text bar. The package's own
bars never use ``tqdm.auto`` (:func:`progress_bar` picks the bar itself), so ``import
interp_edit`` imports ``tqdm.auto`` once with that one warning silenced; later imports of it
(by TransformerLens) find it loaded and say nothing."""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from importlib.util import find_spec

#: a line-based bar writes at most one line per this many seconds (plus the last)
LINE_INTERVAL = 30.0


def in_jupyter_kernel() -> bool:
    """True inside a Jupyter (ZMQ) kernel; IPython is never imported here."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def import_tqdm_auto_quietly() -> None:
    """Import ``tqdm.auto`` with its "IProgress not found" :class:`tqdm.TqdmWarning` silenced
    (only that warning: any other still shows). Called by ``import interp_edit``."""
    if "tqdm.auto" in sys.modules:
        return
    from tqdm import TqdmWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)
        import tqdm.auto  # noqa: F401


def bar_kind(stream=None) -> str:
    """``"widget"``, ``"terminal"`` or ``"lines"``: the bar :func:`progress_bar` makes here."""
    if in_jupyter_kernel() and find_spec("ipywidgets") is not None:
        return "widget"
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "terminal" if isatty is not None and isatty() else "lines"


class LineProgress:
    """A progress report for logs: one line when it starts, at most one per ``interval``
    seconds, and one when it closes, e.g. ``AIE: 3/8 (38%) 2.1 s, ~3.5 s left``."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 initial: int = 0, stream=None, interval: float = LINE_INTERVAL, clock=time.monotonic):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.n = total, desc, initial
        self.stream = sys.stderr if stream is None else stream
        self.interval, self.clock = interval, clock
        self.start = self.last = clock()
        self.postfix = ""
        self.closed = False
        self._write()

    def _write(self) -> None:
        elapsed = self.clock() - self.start
        if self.total:
            line = f"{self.desc}: {self.n}/{self.total} ({100 * self.n / self.total:.0f}%) {elapsed:.1f} s"
            if 0 < self.n < self.total:
                line += f", ~{elapsed / self.n * (self.total - self.n):.1f} s left"
        else:
            line = f"{self.desc}: {self.n} {elapsed:.1f} s"
        self.stream.write(line + (f" {self.postfix}" if self.postfix else "") + "\n")
        self.stream.flush()
        self.last = self.clock()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last >= self.interval:
            self._write()

    def set_postfix(self, **values) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write()

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", disable: bool = False,
                 initial: int = 0, leave: bool = True):
    """A tqdm-like bar (iterate over it, or ``update`` / ``set_postfix`` / ``close``) of the
    kind :func:`bar_kind` picks."""
    if disable:
        from tqdm.std import tqdm

        return tqdm(iterable, total=total, disable=True)
    kind = bar_kind()
    if kind == "lines":
        return LineProgress(iterable, total=total, desc=desc, initial=initial)
    if kind == "widget":
        from tqdm.notebook import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm(iterable, total=total, desc=desc, initial=initial, leave=leave)
