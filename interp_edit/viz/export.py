"""Writing figures: HTML and PNG (kaleido 0.2.1, offline).

HTML files share one ``plotly.min.js`` per output root by default (``plotlyjs="shared"``):
each page loads it by a relative path (no network), so ``results/demo/*.html`` and
``results/figures/*.html`` both load ``results/plotly.min.js``, 4.5 MB written once. The output
root of a file is ``js_root`` when given; else the nearest folder above the file (its own
included, up to the working directory; outside it, up to the parent of the file's folder) that
already holds ``plotly.min.js``; else the first
folder below the working directory on the file's path (``results`` for
``results/demo/x.html``), or the file's own folder when it lies outside the working directory.
``plotlyjs="inline"`` makes each file self-contained (4.5 MB each)."""

from __future__ import annotations

import os
from pathlib import Path

from interp_edit.errors import ExportError

PLOTLYJS = ("shared", "directory", "inline")  # "directory": the former name of "shared"
JS_NAME = "plotly.min.js"


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def output_root(folder: str | Path, cwd: str | Path | None = None) -> Path:
    """The folder whose ``plotly.min.js`` the HTML files written in ``folder`` load (see the
    module docstring)."""
    folder = Path(folder).resolve()
    cwd = Path(cwd or os.getcwd()).resolve()
    under_cwd = _inside(folder, cwd)
    candidates = [p for p in (folder, *folder.parents) if _inside(p, cwd)] if under_cwd else [folder, folder.parent]
    for candidate in candidates:
        if (candidate / JS_NAME).is_file():
            return candidate
    if under_cwd and folder != cwd:
        return cwd / folder.relative_to(cwd).parts[0]
    return folder


def save_figure(fig, path: str | Path, *, scale: float = 2.0, plotlyjs: str = "shared",
                js_root: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``path`` as ``.html`` and ``.png`` (the suffix of ``path``, if any, is replaced).
    Returns both paths. ``js_root``: the folder of the shared ``plotly.min.js`` (default:
    :func:`output_root`); it must contain the file."""
    if plotlyjs not in PLOTLYJS:
        raise ExportError(f"plotlyjs must be one of {list(PLOTLYJS)}, got {plotlyjs!r}")
    from interp_edit.validation import check_positive_finite

    check_positive_finite(scale, "scale", error=ExportError)
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise ExportError(f"path must be a file path (str or Path), got {path!r}")
    text = os.fspath(path)
    base = Path(text)
    if not base.name or base.name in (".", "..") or text.endswith(("/", os.sep)) or base.is_dir():
        # (an existing folder given without a separator wrote <folder>.html beside it, not into it)
        raise ExportError(f"path {text!r} names a folder, not a file; give a file name, e.g. {str(base / 'figure.html')!r}")
    if base.suffix.lower() in (".html", ".png"):
        base = base.with_suffix("")
    blocking = next((p for p in (base.parent, *base.parent.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ExportError(f"path {text!r}: {str(blocking)!r} is a file, not a folder")
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ExportError(f"path {text!r}: its folder cannot be created ({err.strerror or err})") from None
    html, png = base.with_suffix(".html"), base.with_suffix(".png")
    if plotlyjs == "inline":
        include: str | bool = True
    else:
        root = Path(js_root).resolve() if js_root is not None else output_root(base.parent)
        if not _inside(base.parent.resolve(), root):
            raise ExportError(f"js_root {js_root} must contain the figure's folder {base.parent}")
        js = root / JS_NAME
        if not js.is_file():
            from plotly.offline import get_plotlyjs

            tmp = js.with_suffix(".tmp")
            tmp.write_text(get_plotlyjs(), encoding="utf-8")
            tmp.replace(js)
        include = Path(os.path.relpath(js, base.parent.resolve())).as_posix()
    fig.write_html(str(html), include_plotlyjs=include)
    fig.write_image(str(png), scale=scale, engine="kaleido")
    return html, png
