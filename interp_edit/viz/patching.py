"""Activation / attribution patching grids."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interp_edit.viz.layout import fit_layout


def patching_figure(result, sites=None) -> go.Figure:
    """One heatmap per site: layer × position or layer × head (layer × head-position rows for
    per-position head patching); RdBu around 0, clean = 1."""
    sites = list(sites or result.results)
    labels = [f"{i}: {repr(t)[1:-1]}" for i, t in enumerate(result.str_tokens)]
    fig = make_subplots(rows=1, cols=len(sites), subplot_titles=sites, horizontal_spacing=0.07)
    for i, site in enumerate(sites):
        value = result.results[site]
        if value.ndim == 3:  # layer head pos -> rows "L{l}H{h}"
            n_l, n_h, _ = value.shape
            z, x, y = value.reshape(n_l * n_h, -1).tolist(), labels, [f"L{lay}H{h}" for lay in range(n_l) for h in range(n_h)]
        elif site.startswith("head"):
            z, x, y = value.tolist(), [f"H{h}" for h in range(value.shape[1])], list(range(value.shape[0]))
        else:
            z, x, y = value.tolist(), labels, list(range(value.shape[0]))
        fig.add_trace(go.Heatmap(z=z, x=x, y=y, coloraxis="coloraxis",
                                 hovertemplate="%{y} / %{x}<br>%{z:.3f}<extra>" + site + "</extra>"),
                      row=1, col=i + 1)
        fig.update_yaxes(title_text="layer" if value.ndim == 2 else "", row=1, col=i + 1)
    fig.update_layout(
        title=f"{result.method} patching ({result.direction}), {result.metric} normalised: clean 1, corrupted 0"
              f"{result.gap.title_note()}",
        height=520, width=max(500, 330 * len(sites)),
        coloraxis=dict(colorscale="RdBu", cmid=0, cmin=-1, cmax=1, colorbar=dict(title="kept fraction" if result.direction == "noise" else "restored fraction")))
    return fit_layout(fig)
