"""Logit-lens tables and direct-logit-attribution charts."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interp_edit.viz.layout import fit_layout


def logit_lens_figure(result) -> go.Figure:
    """Layer × position grid coloured by the top-1 probability, annotated with the top-1
    token (hover: the top-k); with a target, a second panel shows its probability."""
    labels = [f"{i}: {repr(t)[1:-1]}" for i, t in enumerate(result.str_tokens)]
    top1 = result.top_probs[..., 0]
    text = [[repr(result.top_tokens[layer][pos][0])[1:-1] for pos in range(len(labels))] for layer in range(top1.shape[0])]
    hover = [["<br>".join(f"{t!r} {p:.3f}" for t, p in zip(result.top_tokens[layer][pos], result.top_probs[layer, pos].tolist(), strict=True))
              for pos in range(len(labels))] for layer in range(top1.shape[0])]
    panels = 2 if result.target_probs is not None else 1
    fig = make_subplots(rows=1, cols=panels, shared_yaxes=True,
                        subplot_titles=["top-1 token"] + ([f"p({result.target!r})"] if panels == 2 else []))
    fig.add_trace(go.Heatmap(z=top1.tolist(), x=labels, y=list(result.layer_labels), text=text,
                             texttemplate="%{text}", customdata=hover, colorscale="Blues", zmin=0, zmax=1,
                             hovertemplate="%{y} %{x}<br>%{customdata}<extra></extra>",
                             colorbar=dict(title="p(top-1)")),
                  row=1, col=1)
    if panels == 2:
        fig.add_trace(go.Heatmap(z=result.target_probs.tolist(), x=labels, y=list(result.layer_labels),
                                 colorscale="Greens", zmin=0, zmax=1, colorbar=dict(title="p(target)"),
                                 hovertemplate="%{y} %{x}<br>p %{z:.4f}<extra></extra>"), row=1, col=2)
    fig.update_layout(title=f"Logit lens: {result.prompt!r}", height=160 + 32 * len(result.layer_labels),
                      width=max(600, 90 * len(labels) * panels))
    return fit_layout(fig)


def dla_figure(result) -> go.Figure:
    """Per layer: attention (heads + bias) and MLP direct effects; per head heatmap."""
    layers = list(range(result.mlp.shape[0]))
    fig = make_subplots(rows=1, cols=2, subplot_titles=["per layer", "per attention head"], column_widths=[0.55, 0.45])
    fig.add_trace(go.Bar(x=layers, y=result.attn.tolist(), name="attention"), row=1, col=1)
    fig.add_trace(go.Bar(x=layers, y=result.mlp.tolist(), name="MLP"), row=1, col=1)
    bound = max(result.heads.abs().max().item(), 1e-9)
    fig.add_trace(go.Heatmap(z=result.heads.tolist(), x=[f"H{h}" for h in range(result.heads.shape[1])], y=layers,
                             colorscale="RdBu", zmid=0, zmin=-bound, zmax=bound,
                             colorbar=dict(title="Δ logit")), row=1, col=2)
    fig.update_xaxes(title_text="layer", row=1, col=1)
    fig.update_yaxes(title_text="layer", row=1, col=2)
    what = f"logit({result.target!r})" + (f" − logit({result.foil!r})" if result.foil else "")
    fig.update_layout(title=f"Direct logit attribution to {what} = {result.total:.3f} (embeddings "
                            f"{result.embed + result.pos_embed:.3f}, constant {result.constant:.3f})",
                      barmode="group", height=450, width=1000)
    return fit_layout(fig)
