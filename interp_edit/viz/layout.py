"""One layout rule for every figure (applied by each builder's last line, :func:`fit_layout`):

- the width is capped at :data:`MAX_WIDTH` pixels, so a figure fits a notebook's column;
- the title and the subplot titles are wrapped (``<br>``) to the figure's / their subplot's
  width, and the top margin (and the figure, by as much) grows to hold their lines, so no title
  is cut at the right edge;
- every colourbar sits just right of the subplots it colours, as tall as their rows: a
  trace's own colourbar beside its subplot, a shared one (a layout ``coloraxis`` used by several
  heatmaps) beside the rightmost of them, spanning all their rows; its title is written along
  the bar (``side="right"``);
- the subplot columns are narrowed (keeping their proportions) to make room for the
  colourbars, the same for every row of a grid, so the panels of a grid stay aligned and no
  colourbar covers a plot area, its neighbour's or a subplot title;
- a legend in a figure with colourbars goes horizontally below the plots (never over a
  colourbar)."""

from __future__ import annotations

import html
import re
import textwrap

import plotly.graph_objects as go

MAX_WIDTH = 980
#: colourbar thickness, the room its tick labels and its (rotated) title take, in pixels
COLORBAR_PX, COLORBAR_LABELS_PX, COLORBAR_GAP_PX = 12, 76, 10
_DEFAULT_WIDTH, _DEFAULT_MARGIN, _DEFAULT_TOP = 700, 80, 100
#: title font size (plotly's default) and the width of one character, as a fraction of the font
#: size, used to wrap titles (generous: Open Sans averages about 0.55)
TITLE_FONT_PX, SUBPLOT_TITLE_PX, CHAR_EM = 17, 16, 0.62
_TITLE_X = 0.02


def _axis_key(ref: str, letter: str) -> str:
    """``x`` → ``xaxis``, ``x2`` → ``xaxis2``."""
    return f"{letter}axis{ref[1:]}"


def _domain(fig: go.Figure, ref: str, letter: str) -> tuple[float, float]:
    return tuple(fig.layout[_axis_key(ref, letter)].domain or (0, 1))


def text_width(text: str, font_px: float) -> float:
    """Estimated pixel width of one line of plotly text (tags removed)."""
    plain = html.unescape(re.sub(r"<[^>]+>", "", text))
    return len(plain) * CHAR_EM * font_px


def wrap_text(text: str, width_px: float, font_px: float) -> list[str]:
    """``text``'s lines (split at ``<br>``), each wrapped to ``width_px``."""
    chars = max(10, int(width_px / (CHAR_EM * font_px)))
    lines = []
    for line in re.split(r"<br\s*/?>", text):
        match = re.fullmatch(r"(<sup>)(.*)(</sup>)", line)
        if match:  # a small note line: wrap inside its tags
            inner = textwrap.wrap(match.group(2), int(chars * 17 / 12)) or [""]
            lines += [f"<sup>{part}</sup>" for part in inner]
        else:
            lines += textwrap.wrap(line, chars, break_on_hyphens=False) or [""]
    return lines


def _fit_title(fig: go.Figure, width: int, height: int, subplot_title_lines: int) -> None:
    """Wrap the title to the width; centre its block in a top margin tall enough for it and
    the subplot titles (plotly centres a multi-line block on a ``middle`` anchor)."""
    title = fig.layout.title.text
    if not title:
        return
    size = fig.layout.title.font.size or TITLE_FONT_PX
    lines = wrap_text(title, width * (1 - 2 * _TITLE_X), size)
    block = 1.25 * size * len(lines)
    top = int(8 + block + (10 + 1.25 * SUBPLOT_TITLE_PX * subplot_title_lines if subplot_title_lines else 14))
    old_top = fig.layout.margin.t if fig.layout.margin.t is not None else _DEFAULT_TOP
    if top > old_top:  # the plots keep their height
        height += top - old_top
    fig.update_layout(height=height, title=dict(text="<br>".join(lines), x=_TITLE_X, xanchor="left", xref="container",
                                 y=1 - (8 + block / 2) / height, yanchor="middle", yref="container", font=dict(size=size)),
                      margin=dict(t=top))


def _subplot_titles(fig: go.Figure) -> list:
    return [a for a in fig.layout.annotations if a.xref == "paper" and a.yref == "paper" and a.yanchor == "bottom"
            and a.text]


def _fit_subplot_titles(fig: go.Figure, plot_px: float) -> int:
    """Wrap each subplot title to its subplot's width; returns the most lines of a top-row
    title."""
    domains = [tuple(fig.layout[k].domain or (0, 1)) for k in fig.layout if k.startswith("xaxis")] or [(0, 1)]
    top_lines, top_y = 0, max((a.y for a in _subplot_titles(fig)), default=0)
    for a in _subplot_titles(fig):
        d = min(domains, key=lambda d: abs((d[0] + d[1]) / 2 - a.x))
        size = a.font.size or SUBPLOT_TITLE_PX
        lines = wrap_text(a.text, (d[1] - d[0]) * plot_px, size)
        a.text = "<br>".join(lines)
        if abs(a.y - top_y) < 1e-6:
            top_lines = max(top_lines, len(lines))
    return top_lines


def _bars(fig: go.Figure) -> list[tuple[object, list[str]]]:
    """Every shown colourbar with the x axes of the traces it colours."""
    bars = []
    shared: dict[str, list[str]] = {}
    for trace in fig.data:
        if not isinstance(trace, (go.Heatmap, go.Contour)):
            continue
        if getattr(trace, "coloraxis", None):
            shared.setdefault(trace.coloraxis, []).append(trace.xaxis or "x")
        elif trace.showscale is not False:
            bars.append((trace.colorbar, [trace.xaxis or "x"]))
    for name, xrefs in shared.items():
        axis = fig.layout[name]
        if axis.showscale is not False:
            bars.append((axis.colorbar, xrefs))
    return bars


def _respace(domains: list[tuple[float, float]], needs: list[bool], bar_w: float, gap: float) -> list[tuple[float, float]]:
    """New x domains: the same order and proportions, with room for a colourbar after each
    domain that needs one."""
    widths = [d[1] - d[0] for d in domains]
    gaps = [max(domains[i + 1][0] - domains[i][1], 0.0) for i in range(len(domains) - 1)]
    room = [bar_w + 2 * gap if need else 0.0 for need in needs]
    after = [max(gaps[i], room[i] + gap) if i < len(gaps) else room[i] for i in range(len(domains))]
    scale = (1.0 - sum(after)) / sum(widths)
    out, start = [], 0.0
    for w, space in zip(widths, after, strict=True):
        out.append((start, min(start + w * scale, 1.0)))
        start = out[-1][1] + space
    return out


def fit_layout(fig: go.Figure, max_width: int = MAX_WIDTH) -> go.Figure:
    """Apply the module's layout rule to ``fig`` (in place); returns it."""
    width = min(fig.layout.width or _DEFAULT_WIDTH, max_width)
    fig.update_layout(width=width)
    _fit_colorbars(fig, width)
    margin_l = fig.layout.margin.l if fig.layout.margin.l is not None else _DEFAULT_MARGIN
    margin_r = fig.layout.margin.r if fig.layout.margin.r is not None else _DEFAULT_MARGIN
    lines = _fit_subplot_titles(fig, width - margin_l - margin_r)
    _fit_title(fig, width, fig.layout.height or 450, lines)
    return fig


def _fit_colorbars(fig: go.Figure, width: int) -> None:
    bars = _bars(fig)
    if not bars:
        return
    margin_l = fig.layout.margin.l if fig.layout.margin.l is not None else _DEFAULT_MARGIN
    margin_r = 20
    fig.update_layout(margin=dict(l=margin_l, r=margin_r))
    plot_px = width - margin_l - margin_r
    bar_w = (COLORBAR_PX + COLORBAR_LABELS_PX) / plot_px
    gap = COLORBAR_GAP_PX / plot_px
    axes: dict[str, str] = {}
    for trace in fig.data:
        if isinstance(trace, (go.Sankey, go.Table)) or not hasattr(trace, "xaxis"):
            continue
        axes.setdefault(trace.xaxis or "x", trace.yaxis or "y")
    # columns: the distinct x domains; a grid (no two overlap) is respaced as a whole, so its
    # rows stay aligned; otherwise each row on its own
    unique = sorted({_domain(fig, ref, "x") for ref in axes})
    grid = all(unique[i][1] <= unique[i + 1][0] + 1e-9 for i in range(len(unique) - 1))
    groups: list[list[str]] = [list(axes)] if grid else []
    if not grid:
        rows: dict[tuple, list[str]] = {}
        for xref, yref in axes.items():
            rows.setdefault(_domain(fig, yref, "y"), []).append(xref)
        groups = list(rows.values())
    last_of_bar = [max(xrefs, key=lambda r: _domain(fig, r, "x")[1]) for _, xrefs in bars]
    titles = _subplot_titles(fig)
    new_domain: dict[str, tuple[float, float]] = {}
    for xrefs in groups:
        domains = sorted({_domain(fig, r, "x") for r in xrefs})
        needs = [any(_domain(fig, r, "x") == d for r in last_of_bar if r in xrefs) for d in domains]
        mapping = dict(zip(domains, _respace(domains, needs, bar_w, gap), strict=True))
        for ref in xrefs:
            new_domain[ref] = mapping[_domain(fig, ref, "x")]
    for ref, new in new_domain.items():
        old = _domain(fig, ref, "x")
        y_top = _domain(fig, axes[ref], "y")[1]
        for a in titles:  # subplot titles follow their subplot
            if abs(a.x - (old[0] + old[1]) / 2) < 1e-6 and abs(a.y - y_top) < 0.05:
                a.x = (new[0] + new[1]) / 2
    for ref, new in new_domain.items():
        fig.layout[_axis_key(ref, "x")].domain = new
    for (colorbar, xrefs), last in zip(bars, last_of_bar, strict=True):
        y_domains = [_domain(fig, axes.get(r, "y"), "y") for r in xrefs]
        low, high = min(d[0] for d in y_domains), max(d[1] for d in y_domains)
        colorbar.update(x=new_domain.get(last, (0, 1))[1] + gap, xanchor="left", xpad=0, y=(low + high) / 2,
                        yanchor="middle", len=high - low, lenmode="fraction", thickness=COLORBAR_PX,
                        title=dict(side="right"))
    if any(t.showlegend is not False for t in fig.data if not isinstance(t, (go.Heatmap, go.Contour))) \
            and fig.layout.showlegend is not False:
        bottom = fig.layout.margin.b if fig.layout.margin.b is not None else _DEFAULT_MARGIN
        fig.update_layout(legend=dict(orientation="h", x=0, xanchor="left", y=-0.2, yanchor="top"),
                          margin=dict(b=bottom + 50))
