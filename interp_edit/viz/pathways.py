"""Query → value pathway figures: a layer → layer Sankey diagram and layer rankings."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interp_edit.viz.layout import fit_layout


def drawn_layers(flow, axis: int) -> list[int]:
    """Every layer the Sankey draws on one side (``axis`` 0: value layers, the targets; 1:
    query layers, the sources), largest total flow first: what the title lists."""
    totals = flow.sum(axis)
    return sorted((i for i in range(totals.shape[0]) if totals[i] > 0), key=lambda i: -totals[i].item())


def pathway_sankey(result) -> go.Figure:
    """Query FFN layers (left) flowing into value FFN layers (right), widths = summed positive
    weights of the top pathways; hover lists the pathways of each link."""
    flow = result.layer_flow()
    n = flow.shape[0]
    labels = [f"query FFN L{i}" for i in range(n)] + [f"value FFN L{i}" for i in range(n)]
    sources, targets, values, hover = [], [], [], []
    for q in range(n):
        for v in range(n):
            if flow[q, v] > 0:
                sources.append(q)
                targets.append(n + v)
                values.append(flow[q, v].item())
                names = [p.label for p in result.pathways if p.query.layer == q and p.value.layer == v][:8]
                hover.append("<br>".join(names))
    fig = go.Figure(go.Sankey(
        node=dict(label=labels, pad=18, thickness=16),
        link=dict(source=sources, target=targets, value=values, customdata=hover,
                  hovertemplate="%{source.label} → %{target.label}: %{value:.3f}<br>%{customdata}<extra></extra>"),
    ))
    fig.update_layout(title=f"Top {len(result.pathways)} query → value pathways over {len(result.prompts)} prompts "
                            f"(value layers {drawn_layers(flow, 0)}, query layers {drawn_layers(flow, 1)}, by flow)",
                      height=500, width=900)
    return fit_layout(fig)


def pathway_layers(result) -> go.Figure:
    layers = list(range(result.value_layer_scores.shape[0]))
    fig = make_subplots(rows=1, cols=2, subplot_titles=["value score per FFN layer", "query score per FFN layer"])
    fig.add_trace(go.Bar(x=layers, y=result.value_layer_scores.tolist(), name="value"), row=1, col=1)
    fig.add_trace(go.Bar(x=layers, y=result.query_layer_scores.tolist(), name="query"), row=1, col=2)
    fig.update_xaxes(title_text="layer")
    fig.update_layout(title=f"Value and query layers over {len(result.prompts)} prompts", height=420, width=900, showlegend=False)
    return fit_layout(fig)


def pathway_figure(result, view: str = "sankey") -> go.Figure:
    if view == "sankey":
        return pathway_sankey(result)
    if view == "layers":
        return pathway_layers(result)
    raise ValueError(f"view must be 'sankey' or 'layers', got {view!r}")
