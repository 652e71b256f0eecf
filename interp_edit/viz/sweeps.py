"""The merged figure of a sweep: one panel per metric, one horizontal bar per finished cell.

The cells are rows (their labels, e.g. ``rome layer=3 s0 ind [2]``, read horizontally on the
shared y axis, one line each), so labels never overlap however many cells there are. A cell
whose batches held requests sharing one key has its label marked and the title says so, as an
experiment's own figure does."""

from __future__ import annotations

from collections.abc import Sequence

#: pixels per cell row
ROW_PX = 24


def cell_label(row: dict) -> str:
    """A cell's row label; a cell with warnings (requests sharing one key) ends in ``WARNING_MARK``."""
    from interp_edit.evaluation.experiment import WARNING_MARK

    label = " ".join(str(p) for p in (row["method"], row["config"], f"s{row['seed']}", row["mode"][:3], f"[{row['cell']}]")
                     if p != "")
    return label + (WARNING_MARK if row.get("warnings") else "")


def sweep_figure(result, metrics: Sequence[str]):
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    from interp_edit.evaluation.experiment import collision_note
    from interp_edit.viz.layout import fit_layout

    rows = [r for r in result.rows() if r["status"] == "ok"]
    metrics = [m for m in metrics if any(m in r for r in rows)]
    fig = make_subplots(rows=1, cols=max(1, len(metrics)), subplot_titles=list(metrics), shared_yaxes=True,
                        horizontal_spacing=0.03)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colours = {m: qualitative.Plotly[i % len(qualitative.Plotly)] for i, m in enumerate(methods)}
    order = [cell_label(r) for r in rows]
    for col, metric in enumerate(metrics, 1):
        for method in methods:
            mine = [r for r in rows if r["method"] == method and metric in r]
            fig.add_trace(go.Bar(y=[cell_label(r) for r in mine], x=[r[metric] for r in mine], orientation="h", name=method,
                                 marker_color=colours[method], legendgroup=method, showlegend=col == 1,
                                 hovertemplate="%{y}: %{x:.4f}<extra>" + metric + "</extra>"), row=1, col=col)
        fig.update_xaxes(title_text="value", row=1, col=col)
    fig.update_yaxes(categoryorder="array", categoryarray=order[::-1], automargin=True, row=1, col=1)
    longest = max((len(label) for label in order), default=10)
    title = f"Sweep: {len(rows)} finished cells of {len(result.cells)}"
    # a row's warnings are its ExperimentResult.warnings(): batches that held requests sharing one key
    colliding = [r["cell"] for r in rows if r.get("warnings")]
    if colliding:  # as ExperimentResult.plot says it, on another line; the cells' labels are marked
        shown = ", ".join(map(str, colliding[:5])) + (", …" if len(colliding) > 5 else "")
        title += "<br>" + collision_note(len(colliding), len(rows), "finished cells") + f" (cell {shown})"
    fig.update_layout(title=title, template="plotly_white",
                      width=max(600, 260 * len(metrics) + 7 * longest), height=220 + ROW_PX * len(rows),
                      margin=dict(l=int(7 * longest) + 20), barmode="overlay")
    return fit_layout(fig)
