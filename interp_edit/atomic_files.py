"""Atomic file writes: a file is written whole under a temporary name in its own folder, then
renamed over the target, so a reader (or the next session) sees either the previous good file
or the new one, never a truncated one.

>>> import pathlib, tempfile
>>> target = pathlib.Path(tempfile.mkdtemp()) / "rows.json"
>>> with atomic_path(target) as tmp:        # write to tmp; it replaces target on success
...     _ = tmp.write_text("[1, 2]")
>>> target.read_text()
'[1, 2]'

An exception inside the block leaves the previous file and no temporary one. A writer killed
outright (``SIGKILL``, a power cut) cannot clean up after itself; its temporary file is
``.<name>.<pid>.<random>.partial`` and the next :func:`atomic_path` for the same folder removes
every such file whose process no longer runs (:func:`remove_stale_partials`). Every writer of
edits, statistics caches, experiment rows and sweep results goes through here.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

#: the suffix of a file being written
PARTIAL_SUFFIX = ".partial"
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}" + re.escape(PARTIAL_SUFFIX) + "$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists, owned by someone else (or we cannot tell): leave its file alone
    return True


def partial_files(folder: str | Path) -> list[Path]:
    """The temporary files of writes under way (or interrupted) in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _PARTIAL.match(p.name))


def remove_stale_partials(folder: str | Path) -> list[Path]:
    """Remove the temporary files in ``folder`` left by writers that no longer run (killed
    mid-write); returns those removed. Files of running writers are kept."""
    removed = []
    for path in partial_files(folder):
        if not _alive(int(_PARTIAL.match(path.name).group("pid"))):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """``with atomic_path(target) as tmp:`` — write the whole file to ``tmp`` (same folder);
    on leaving the block it is renamed over ``target`` (atomic on POSIX and Windows). On an
    exception ``tmp`` is removed and ``target`` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target.parent)
    tmp = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}"
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text_atomic(target: str | Path, text: str) -> Path:
    """Write ``text`` to ``target`` atomically (UTF-8); returns the path."""
    target = Path(target)
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return target


__all__ = ["PARTIAL_SUFFIX", "atomic_path", "partial_files", "remove_stale_partials", "write_text_atomic"]
