"""Neuron-attribution figures: top-neuron bars (promoted tokens on hover), head bars, the
layer × {attention, FFN} heatmap, query layers, and ablation before/after bars."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interp_edit.viz.layout import fit_layout

VIEWS = ("overview", "neurons", "heads", "layers", "query")
_BARS = 20


def _hover(scored) -> list[str]:
    return [f"{s.label}<br>score {s.score:.4f}<br>coefficient {s.coefficient:.3f}<br>promotes: "
            + ", ".join(repr(t) for t in s.top_tokens) for s in scored]


def neuron_bars(scored, name: str, color: str) -> go.Bar:
    """A bar per neuron, labelled ``L{layer}N{index}`` / ``L{layer}H{head}.{dim}@{pos}``."""
    scored = scored[:_BARS]
    return go.Bar(x=[s.label for s in scored], y=[s.score for s in scored], name=name, marker_color=color,
                  customdata=_hover(scored), hovertemplate="%{customdata}<extra></extra>")


def head_bars(result) -> go.Bar:
    heads = result.head_scores  # NaN: a head with unscored neurons (method="exact_top_k")
    n_heads = heads.shape[1]
    order = [i for i in heads.flatten().argsort(descending=True).tolist() if not heads.flatten()[i].isnan()][:_BARS]
    partial = bool(heads.isnan().any())
    return go.Bar(x=[f"L{i // n_heads}H{i % n_heads}" for i in order], y=[heads.flatten()[i].item() for i in order],
                  name="heads (only those with every neuron scored)" if partial else "heads", marker_color="#d62728",
                  hovertemplate="%{x}: sum over its neurons %{y:.4f}<extra></extra>")


def layer_heatmap(scores, title: str) -> go.Heatmap:
    """Layers on y, {attention, FFN} on x, diverging colours around 0; ``title``: the colourbar's
    (a key of :data:`~interp_edit.viz.labels.COLORBAR_LABELS`)."""
    bound = max(scores.abs().max().item(), 1e-9)
    return go.Heatmap(z=scores.tolist(), x=["attention", "FFN"], y=[f"L{i}" for i in range(scores.shape[0])],
                      colorscale="RdBu", zmid=0, zmin=-bound, zmax=bound, text=[[f"{v:.3f}" for v in row] for row in scores.tolist()],
                      texttemplate="%{text}", colorbar=dict(title=title),
                      hovertemplate="%{y} %{x}: %{z:.4f}<extra></extra>")


def attribution_figure(result, view: str = "overview") -> go.Figure:
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    what = f"log p({result.target_token!r}) = {result.logprob:.3f} (frozen norm) for {result.prompt!r}"
    if view == "neurons":
        fig = make_subplots(rows=1, cols=2, subplot_titles=["top FFN value neurons", "top attention value neurons"])
        fig.add_trace(neuron_bars(result.top_ffn, "FFN", "#1f77b4"), row=1, col=1)
        fig.add_trace(neuron_bars(result.top_attn, "attention", "#ff7f0e"), row=1, col=2)
        fig.update_yaxes(title_text="Δ log p", row=1, col=1)
        fig.update_layout(title=f"Value neurons: {what}", height=450, width=1100, showlegend=False)
        return fit_layout(fig)
    if view == "heads":
        fig = go.Figure(head_bars(result))
        fig.update_layout(title=f"Attention heads (sum of their neurons): {what}", yaxis_title="Δ log p", height=420, width=800)
        return fit_layout(fig)
    if view == "layers":
        fig = go.Figure(layer_heatmap(result.layer_scores, "Δ log p(target)"))
        fig.update_layout(title=f"Layer scores: {what}", height=160 + 40 * result.layer_scores.shape[0], width=600)
        return fit_layout(fig)
    if view == "query":
        fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.16, subplot_titles=[
            "query layers of the top FFN value neurons", "top query neurons of the attention value neurons"])
        fig.add_trace(layer_heatmap(result.ffn_query_scores, "query share × Δ log p"), row=1, col=1)
        fig.add_trace(neuron_bars(result.query_neurons, "query", "#2ca02c"), row=1, col=2)
        fig.update_layout(title=f"Query components (embeddings: {result.ffn_query_embed:.3f}): {what}", height=450, width=1100,
                          showlegend=False)
        return fit_layout(fig)
    fig = make_subplots(rows=2, cols=2, subplot_titles=["top FFN value neurons", "top attention value neurons",
                                                        "attention heads", "layer scores"],
                        vertical_spacing=0.18)
    fig.add_trace(neuron_bars(result.top_ffn, "FFN", "#1f77b4"), row=1, col=1)
    fig.add_trace(neuron_bars(result.top_attn, "attention", "#ff7f0e"), row=1, col=2)
    fig.add_trace(head_bars(result), row=2, col=1)
    fig.add_trace(layer_heatmap(result.layer_scores, "Δ log p(target)"), row=2, col=2)
    note = f"<br><sup>{result.target_note}</sup>" if result.target_note else ""
    fig.update_layout(title=f"Neuron attribution: {what}{note}", height=800, width=1200, showlegend=False)
    return fit_layout(fig)


def ablation_figure(result) -> go.Figure:
    """Target probability before and after the ablation, per prompt."""
    labels = [f"{i}: {p[:40]}" for i, p in enumerate(result.prompts)]
    fig = go.Figure([go.Bar(x=labels, y=result.probs_before.tolist(), name="before"),
                     go.Bar(x=labels, y=result.probs_after.tolist(), name=f"after ({result.mode} ablation)")])
    fig.update_layout(title=f"Ablating {len(result.neurons)} neurons: mean drop {result.mean_drop:.3f}, accuracy "
                            f"{result.accuracy_before:.2f} → {result.accuracy_after:.2f}",
                      yaxis_title="p(target)", barmode="group", height=450, width=max(600, 40 * len(labels)))
    return fit_layout(fig)
