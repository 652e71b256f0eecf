"""The localization-vs-editing figure (after Hase et al. 2023, Fig. 1/3): per layer the mean
tracing effect and the mean edit success; every (fact, layer) point of tracing effect vs edit
success."""

from __future__ import annotations


def localization_figure(result, metric: str):
    import plotly.graph_objects as go
    from plotly.colors import sample_colorscale
    from plotly.subplots import make_subplots

    from interp_edit.viz.layout import fit_layout

    c = result.correlations[metric]
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "per layer: means over facts",
        f"per fact and layer: Spearman rho {c['pairs']:+.2f} [{c['pairs_ci'][0]:+.2f}, {c['pairs_ci'][1]:+.2f}]"),
        specs=[[{"secondary_y": True}, {}]])
    layers = list(result.layers)
    fig.add_trace(go.Scatter(x=layers, y=result.mean_effect.tolist(), mode="lines+markers", name=f"tracing effect ({result.curve})",
                             line=dict(color="#636EFA")), row=1, col=1, secondary_y=False)
    fig.add_trace(go.Scatter(x=layers, y=result.mean_metric(metric).tolist(), mode="lines+markers", name=f"edit {metric}",
                             line=dict(color="#EF553B")), row=1, col=1, secondary_y=True)
    colours = sample_colorscale("Viridis", [j / max(1, len(layers) - 1) for j in range(len(layers))])
    for j, layer in enumerate(layers):
        fig.add_trace(go.Scatter(x=result.effects[:, j].tolist(), y=result.metrics[metric][:, j].tolist(), mode="markers",
                                 marker=dict(color=colours[j], size=7, opacity=0.75), name=f"layer {layer}",
                                 text=result.case_ids, hovertemplate="%{text}<br>effect %{x:.3f}<br>edit %{y:.3f}"),
                      row=1, col=2)
    fig.update_xaxes(title_text="edited layer", row=1, col=1)
    fig.update_yaxes(title_text="tracing effect (AIE at the edit token)", row=1, col=1, secondary_y=False)
    fig.update_yaxes(title_text=f"edit {metric}", row=1, col=1, secondary_y=True)
    fig.update_xaxes(title_text="tracing effect at that layer", row=1, col=2)
    fig.update_yaxes(title_text=f"edit {metric} at that layer", row=1, col=2)
    fig.update_layout(title=f"Does localization inform editing? {result.method}, {len(result.case_ids)} facts; "
                            f"layer-mean rho {c['layers']:+.2f} [{c['layers_ci'][0]:+.2f}, {c['layers_ci'][1]:+.2f}]",
                      width=1150, height=470, template="plotly_white")
    return fit_layout(fig)
