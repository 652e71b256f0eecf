"""Writing figures: HTML (self-contained) and PNG (kaleido 0.2.1, offline)."""

from __future__ import annotations

from pathlib import Path


def save_figure(fig, path: str | Path, *, scale: float = 2.0) -> tuple[Path, Path]:
    """Write ``path`` as ``.html`` and ``.png`` (the suffix of ``path``, if any, is replaced).
    Returns both paths."""
    base = Path(path)
    if base.suffix in (".html", ".png"):
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    html, png = base.with_suffix(".html"), base.with_suffix(".png")
    fig.write_html(str(html), include_plotlyjs=True)
    fig.write_image(str(png), scale=scale, engine="kaleido")
    return html, png
