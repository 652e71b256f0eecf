"""Writing figures: HTML and PNG (kaleido 0.2.1, offline).

HTML files share one copy of plotly.js per folder by default (``plotlyjs="directory"``:
plotly writes ``plotly.min.js`` beside the file, once, and the page loads it from there, with
no network); ``plotlyjs="inline"`` makes each file self-contained (4.5 MB each)."""

from __future__ import annotations

from pathlib import Path

from interp_edit.errors import ExportError

PLOTLYJS = {"directory": "directory", "inline": True}


def save_figure(fig, path: str | Path, *, scale: float = 2.0, plotlyjs: str = "directory") -> tuple[Path, Path]:
    """Write ``path`` as ``.html`` and ``.png`` (the suffix of ``path``, if any, is replaced).
    Returns both paths."""
    if plotlyjs not in PLOTLYJS:
        raise ExportError(f"plotlyjs must be one of {sorted(PLOTLYJS)}, got {plotlyjs!r}")
    base = Path(path)
    if base.suffix in (".html", ".png"):
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    html, png = base.with_suffix(".html"), base.with_suffix(".png")
    fig.write_html(str(html), include_plotlyjs=PLOTLYJS[plotlyjs])
    fig.write_image(str(png), scale=scale, engine="kaleido")
    return html, png
