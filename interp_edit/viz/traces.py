"""Causal-trace heatmaps (ROME and TransformerLens layouts) and AIE curves."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interp_edit.viz.labels import METRIC_LABELS
from interp_edit.viz.layout import fit_layout

_ROME = {"hidden": ("Purples", "single restored layer"), "mlp": ("Greens", "MLP"), "attn": ("Reds", "Attn")}


def _token_labels(result) -> list[str]:
    s0, s1 = result.subject_span
    labels = []
    for i, tok in enumerate(result.str_tokens):
        text = repr(tok)[1:-1]
        labels.append(f"{i}: {text}*" if s0 <= i < s1 else f"{i}: {text}")
    return labels


def causal_trace_figure(result, layout: str = "rome") -> go.Figure:
    """``rome``: one panel per kind, layers on x, tokens on y (first on top, subject marked
    ``*``), sequential colours with the floor at the corrupted score. ``tl``: layers on y,
    positions on x, indirect effect on a diverging RdBu scale centred at 0."""
    if layout not in ("rome", "tl"):
        raise ValueError(f"layout must be 'rome' or 'tl', got {layout!r}")
    labels = _token_labels(result)
    kinds = result.kinds
    fig = make_subplots(rows=1, cols=len(kinds), shared_yaxes=True, horizontal_spacing=0.08,
                        subplot_titles=[f"{k}: restore {'window ' + str(result.settings.window) if k != 'hidden' else 'layer'}" for k in kinds])
    n = len(kinds)
    for i, kind in enumerate(kinds):
        scores = result.kind(kind)
        if layout == "rome":
            colors, _ = _ROME[kind]
            trace = go.Heatmap(
                z=scores.T.tolist(), x=list(range(scores.shape[0])), y=labels, colorscale=colors,
                zmin=result.corrupted_score, zmax=max(result.clean_score, scores.max().item()),
                colorbar=dict(title=METRIC_LABELS[result.settings.metric]),
                hovertemplate="layer %{x}<br>%{y}<br>score %{z:.4f}<extra>" + kind + "</extra>",
            )
        else:
            ie = (scores - result.corrupted_score)
            bound = max(abs(ie.min().item()), abs(ie.max().item()), 1e-9)
            trace = go.Heatmap(
                z=ie.tolist(), x=labels, y=list(range(scores.shape[0])), colorscale="RdBu", zmid=0,
                zmin=-bound, zmax=bound, colorbar=dict(title="indirect effect"),
                hovertemplate="layer %{y}<br>%{x}<br>effect %{z:.4f}<extra>" + kind + "</extra>",
            )
        fig.add_trace(trace, row=1, col=i + 1)
        if layout == "rome":
            fig.update_xaxes(title_text="layer", row=1, col=i + 1)
        else:
            fig.update_yaxes(title_text="layer", row=1, col=i + 1)
    if layout == "rome":
        fig.update_yaxes(autorange="reversed")
    title = (f"Causal trace of {result.prompt!r} → {result.target!r} ({result.settings.corruption} corruption"
             f"{', severed ' + result.settings.severed if result.settings.severed else ''}; clean "
             f"{result.clean_score:.3f}, corrupted {result.corrupted_score:.3f}){result.gap.title_note()}")
    fig.update_layout(title=dict(text=title, font=dict(size=13)), height=120 + 28 * len(labels), width=360 * n + 120)
    return fit_layout(fig)


ROLE_NAMES = {"first_subject": "first subject token", "middle_subject": "middle subject tokens",
              "last_subject": "last subject token", "first_subsequent": "first subsequent token",
              "further": "further tokens", "last": "last token"}
_AIE_SCALES = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
AIE_VIEWS = ("heatmap", "lines")


def aie_figure(result, view: str = "heatmap") -> go.Figure:
    """``heatmap`` (ROME's Fig. 2 form): one panel per kind, token roles on y (first subject
    token on top, last token at the bottom), layers on x, colour = AIE on the kind's own
    sequential scale from 0 (its colourbar beside it); empty roles are left out. ``lines``:
    one line per role, layers on x."""
    if view not in AIE_VIEWS:
        from interp_edit.errors import InvalidArgumentError

        raise InvalidArgumentError(f"view must be one of {AIE_VIEWS}, got {view!r}")
    if view == "lines":
        return _aie_lines(result)
    kinds = result.kinds
    roles = [r for r in result.roles if not all(result.curve(k, r).isnan().all() for k in kinds)]
    labels = [ROLE_NAMES.get(r, r) for r in roles]
    fig = make_subplots(rows=1, cols=len(kinds), shared_yaxes=True, horizontal_spacing=0.03,
                        subplot_titles=[f"{k}: {'restore ' + ('window' if k != 'hidden' else 'layer')}" for k in kinds])
    for i, kind in enumerate(kinds):
        z = [result.curve(kind, r).tolist() for r in roles]
        finite = [v for row in z for v in row if v == v]
        fig.add_trace(go.Heatmap(z=z, x=list(range(len(z[0]) if z else 0)), y=labels, colorscale=_AIE_SCALES.get(kind, "Blues"),
                                 zmin=0, zmax=max(finite + [1e-9]), colorbar=dict(title="AIE"),
                                 hovertemplate="layer %{x}<br>%{y}<br>AIE %{z:.4f}<extra>" + kind + "</extra>"),
                      row=1, col=i + 1)
        fig.update_xaxes(title_text="layer", row=1, col=i + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(
        title=f"Average indirect effect by token role over {result.n_facts} facts ({result.n_skipped} skipped: not "
              f"known); clean {result.mean_clean_score:.3f}, corrupted {result.mean_corrupted_score:.3f}{result.gap.title_note()}",
        height=200 + 34 * len(roles), width=330 * len(kinds) + 200)
    return fit_layout(fig)


def _aie_lines(result) -> go.Figure:
    """One panel per kind: mean indirect effect per layer, one line per token role."""
    kinds = result.kinds
    fig = make_subplots(rows=1, cols=len(kinds), shared_yaxes=True, subplot_titles=list(kinds))
    for i, kind in enumerate(kinds):
        for r, role in enumerate(result.roles):
            curve = result.curve(kind, role)
            if curve.isnan().all():
                continue
            fig.add_trace(go.Scatter(x=list(range(curve.shape[0])), y=curve.tolist(), mode="lines+markers",
                                     name=role, legendgroup=role, showlegend=i == 0,
                                     hovertemplate="layer %{x}<br>AIE %{y:.4f}<extra>" + f"{kind}, {role}" + "</extra>",
                                     line=dict(color=_ROLE_COLORS[r])), row=1, col=i + 1)
        fig.update_xaxes(title_text="layer", row=1, col=i + 1)
    fig.update_yaxes(title_text="average indirect effect", row=1, col=1)
    fig.update_layout(
        title=f"Average indirect effect over {result.n_facts} facts ({result.n_skipped} skipped: not known); "
              f"clean {result.mean_clean_score:.3f}, corrupted {result.mean_corrupted_score:.3f}{result.gap.title_note()}",
        height=420, width=380 * len(kinds) + 200)
    return fit_layout(fig)


_ROLE_COLORS = ("#9ecae1", "#6baed6", "#08519c", "#fdae6b", "#e6550d", "#a50f15")
