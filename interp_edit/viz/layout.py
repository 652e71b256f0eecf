"""One layout rule for every figure (applied by each builder's last line, :func:`fit_layout`):

- the width is capped at :data:`MAX_WIDTH` pixels, so a figure fits a notebook's column;
- every shown colourbar sits just right of its own subplot, as tall as the subplot, and the
  subplots of a row are narrowed (keeping their proportions) so that no colourbar covers a
  plot area, its neighbour's or a subplot title;
- a legend in a figure with colourbars goes horizontally below the plots (never over a
  colourbar)."""

from __future__ import annotations

import plotly.graph_objects as go

MAX_WIDTH = 980
#: colourbar thickness and the room its tick labels take, in pixels
COLORBAR_PX, COLORBAR_LABELS_PX, COLORBAR_GAP_PX = 12, 56, 10
_DEFAULT_WIDTH, _DEFAULT_MARGIN = 700, 80


def _axis_key(ref: str, letter: str) -> str:
    """``x`` → ``xaxis``, ``x2`` → ``xaxis2``."""
    return f"{letter}axis{ref[1:]}"


def _shows_colorbar(trace) -> bool:
    return isinstance(trace, (go.Heatmap, go.Contour)) and trace.showscale is not False


def fit_layout(fig: go.Figure, max_width: int = MAX_WIDTH) -> go.Figure:
    """Apply the module's layout rule to ``fig`` (in place); returns it."""
    width = min(fig.layout.width or _DEFAULT_WIDTH, max_width)
    fig.update_layout(width=width)
    with_bars = [t for t in fig.data if _shows_colorbar(t)]
    if not with_bars:
        return fig
    margin_l = fig.layout.margin.l if fig.layout.margin.l is not None else _DEFAULT_MARGIN
    margin_r = 20
    fig.update_layout(margin=dict(l=margin_l, r=margin_r))
    plot_px = width - margin_l - margin_r
    bar_w = (COLORBAR_PX + COLORBAR_LABELS_PX) / plot_px
    gap = COLORBAR_GAP_PX / plot_px
    by_axis: dict[str, list] = {}
    for trace in with_bars:
        by_axis.setdefault(trace.xaxis or "x", []).append(trace)
    axes = {}
    for trace in fig.data:
        xref = getattr(trace, "xaxis", None)
        yref = getattr(trace, "yaxis", None)
        if xref is None and yref is None and not isinstance(trace, (go.Heatmap, go.Bar, go.Scatter, go.Contour)):
            continue
        axes.setdefault(xref or "x", yref or "y")
    rows: dict[tuple, list[str]] = {}
    for xref, yref in axes.items():
        y_domain = tuple(fig.layout[_axis_key(yref, "y")].domain or (0, 1))
        rows.setdefault(y_domain, []).append(xref)
    titles = [a for a in fig.layout.annotations if a.xref == "paper" and a.yref == "paper"]
    for y_domain, xrefs in rows.items():
        xrefs = sorted(set(xrefs), key=lambda r: tuple(fig.layout[_axis_key(r, "x")].domain or (0, 1)))
        domains = [tuple(fig.layout[_axis_key(r, "x")].domain or (0, 1)) for r in xrefs]
        needs = [r in by_axis for r in xrefs]
        widths = [d[1] - d[0] for d in domains]
        gaps = [max(domains[i + 1][0] - domains[i][1], 0.0) for i in range(len(domains) - 1)]
        room = [bar_w + 2 * gap if need else 0.0 for need in needs]
        after = [max(gaps[i], room[i] + gap) if i < len(gaps) else room[i] for i in range(len(domains))]
        scale = (1.0 - sum(after)) / sum(widths)
        start = 0.0
        for ref, old, w, need, space in zip(xrefs, domains, widths, needs, after, strict=True):
            new = (start, min(start + w * scale, 1.0))
            fig.layout[_axis_key(ref, "x")].domain = new
            for a in titles:  # subplot titles follow their subplot
                if abs(a.x - (old[0] + old[1]) / 2) < 1e-6 and abs(a.y - y_domain[1]) < 0.05:
                    a.x = (new[0] + new[1]) / 2
            if need:
                for trace in by_axis[ref]:
                    trace.colorbar.update(x=new[1] + gap, xanchor="left", xpad=0, y=(y_domain[0] + y_domain[1]) / 2,
                                          yanchor="middle", len=y_domain[1] - y_domain[0], lenmode="fraction",
                                          thickness=COLORBAR_PX)
            start = new[1] + space
    if any(t.showlegend is not False for t in fig.data if not _shows_colorbar(t)) and fig.layout.showlegend is not False:
        bottom = fig.layout.margin.b if fig.layout.margin.b is not None else _DEFAULT_MARGIN
        fig.update_layout(legend=dict(orientation="h", x=0, xanchor="left", y=-0.2, yanchor="top"),
                          margin=dict(b=bottom + 50))
    return fig
