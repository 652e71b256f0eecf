"""Circuit figures (plotly, offline like the other figures): the graph of the kept edges —
layers top to bottom, edges coloured by the sign of their score (blue +, red −, as the RdBu
scales of the patching figures) and as wide as their |score| — and the faithfulness curve."""

from __future__ import annotations

import plotly.graph_objects as go

from interp_edit.viz.layout import fit_layout

POSITIVE, NEGATIVE = "#2166ac", "#b2182b"


def _node_xy(graph, kind: str, layer, index) -> tuple[float, float]:
    """A node's place: x across the heads (the MLP right of them), y = its residual stage."""
    centre = (graph.n_heads - 1) / 2
    if kind == "input":
        return centre, 0.0
    if kind == "logits":
        return centre, 2.0 * graph.n_layers + 1
    if kind == "mlp":
        return graph.n_heads + 0.5, 2.0 * layer + 2
    return float(index), 2.0 * layer + 1


def _receiver_xy(graph, receiver) -> tuple[float, float]:
    if receiver.kind in ("q", "k", "v"):
        x = sum(receiver.heads) / len(receiver.heads)
        return x, 2.0 * receiver.layer + 1
    return _node_xy(graph, receiver.kind, receiver.layer, None)


def circuit_figure(scores, edge_order: list[int], title: str, gap=None) -> go.Figure:
    """Edges ``edge_order`` (indices into ``scores.graph.edges()``) of an :class:`EdgeScores`."""
    graph = scores.graph
    edges = graph.edges()
    flat = scores.flat()
    chosen = [edges[i] for i in edge_order]
    values = [flat[i].item() for i in edge_order]
    biggest = max((abs(v) for v in values), default=0.0) or 1.0
    fig = go.Figure()
    for (s, r), value in zip(chosen, values, strict=True):
        sender, receiver = graph.senders[s], graph.receivers[r]
        x0, y0 = _node_xy(graph, sender.kind, sender.layer, sender.head)
        x1, y1 = _receiver_xy(graph, receiver)
        fig.add_trace(go.Scatter(
            x=[x0, x1], y=[y0, y1], mode="lines", showlegend=False,
            line=dict(color=POSITIVE if value >= 0 else NEGATIVE, width=1 + 7 * abs(value) / biggest),
            hovertemplate=f"{graph.edge_name(s, r)}<br>score {value:.4g}<extra></extra>"))
    used = {graph.senders[s].name for s, _ in chosen} | {graph.receivers[r].node for _, r in chosen}
    xs, ys, names = [], [], []
    for sender in graph.senders:
        if sender.name in used:
            x, y = _node_xy(graph, sender.kind, sender.layer, sender.head)
            xs.append(x), ys.append(y), names.append(sender.name)
    if "logits" in used:
        x, y = _node_xy(graph, "logits", None, None)
        xs.append(x), ys.append(y), names.append("logits")
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers+text", text=names, textposition="middle right",
                             marker=dict(size=11, color="#444"), showlegend=False, hoverinfo="text"))
    for sign, colour in (("positive", POSITIVE), ("negative", NEGATIVE)):  # a legend for the colours
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=dict(color=colour, width=4),
                                 name=f"{sign} score"))
    ticks = [0] + [2 * layer + 1 for layer in range(graph.n_layers)] + [2 * graph.n_layers + 1]
    labels = ["input"] + [f"L{layer}" for layer in range(graph.n_layers)] + ["logits"]
    fig.update_yaxes(autorange="reversed", tickvals=ticks, ticktext=labels, title_text="layer")
    fig.update_xaxes(tickvals=list(range(graph.n_heads)) + [graph.n_heads + 0.5],
                     ticktext=[f"H{h}" for h in range(graph.n_heads)] + ["MLP"])
    fig.update_layout(title=f"{title}; {scores.metric}, {len(scores.clean_prompts)} prompt(s)"
                            f"{(gap or scores.gap).title_note()}",
                      height=max(420, 70 * graph.n_layers + 160), width=760, plot_bgcolor="white")
    return fit_layout(fig)


def faithfulness_figure(result) -> go.Figure:
    fig = go.Figure(go.Scatter(x=list(result.curve_sizes), y=list(result.faithfulness), mode="lines+markers",
                               hovertemplate="%{x} edges: %{y:.3f}<extra></extra>"))
    fig.add_hline(y=1.0, line_dash="dot", line_color="#888")
    fig.update_xaxes(title_text="edges kept (the rest patched from the corrupted run)")
    fig.update_yaxes(title_text="share of the full model's metric")
    fig.update_layout(title=f"Faithfulness of {result.selection} circuits by {result.scores.method} scores "
                            f"({result.scores.metric}): 1 = full model, 0 = corrupted{result.gap.title_note()}",
                      height=420, width=760)
    return fit_layout(fig)
