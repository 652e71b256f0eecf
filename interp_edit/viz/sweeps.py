"""The merged figure of a sweep: one panel per metric, one bar per finished cell."""

from __future__ import annotations

from collections.abc import Sequence


def sweep_figure(result, metrics: Sequence[str]):
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    rows = [r for r in result.rows() if r["status"] == "ok"]
    metrics = [m for m in metrics if any(m in r for r in rows)]
    fig = make_subplots(rows=1, cols=max(1, len(metrics)), subplot_titles=list(metrics), shared_yaxes=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colours = {m: qualitative.Plotly[i % len(qualitative.Plotly)] for i, m in enumerate(methods)}
    for col, metric in enumerate(metrics, 1):
        for method in methods:
            mine = [r for r in rows if r["method"] == method and metric in r]
            labels = [f"{r['method']} {r['config']} s{r['seed']} {r['mode'][:3]} [{r['cell']}]".replace("  ", " ")
                      for r in mine]
            fig.add_trace(go.Bar(x=labels, y=[r[metric] for r in mine], name=method, marker_color=colours[method],
                                 legendgroup=method, showlegend=col == 1), row=1, col=col)
    fig.update_yaxes(title_text="value", row=1, col=1)
    fig.update_layout(title=f"Sweep: {len(rows)} finished cells of {len(result.cells)}", template="plotly_white",
                      width=max(600, 380 * len(metrics)), height=480, barmode="group")
    return fig
