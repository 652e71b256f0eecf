"""Pre/post-edit diff figures and success-versus-failure contrast figures: layer × {attention,
FFN} diff heatmaps (promote new / suppress old), the maps of each prompt group, top changed
neurons, success / failure / leverage panels side by side, and the leverage profile with
bootstrap error bars."""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interp_edit.errors import InvalidArgumentError
from interp_edit.viz.layout import fit_layout

DIFF_VIEWS = ("heatmap", "groups", "neurons", "logprobs")
CONTRAST_VIEWS = ("panels", "leverage", "margins")
_DIRECTION_TITLES = ("promotes new (Δ score of o*)", "suppresses old (−Δ score of o)")
_MODULE_NAMES = ("attention", "FFN")
_COLORS = {"attention": "#ff7f0e", "FFN": "#1f77b4"}


def diff_heatmap(values, coloraxis: str = "coloraxis", edited: Sequence[int] = ()) -> go.Heatmap:
    """Layers on y (the ``edited`` ones labelled ``L3 (edited)``), {attention, FFN} on x (NaN
    cells left blank), coloured on the layout's ``coloraxis`` (one colourbar shared by every
    heatmap on it: :func:`diverging_axis`)."""
    rows = values.tolist()
    text = [["" if math.isnan(v) else f"{v:.2f}" for v in row] for row in rows]
    labels = [f"L{i} (edited)" if i in edited else f"L{i}" for i in range(len(rows))]
    return go.Heatmap(z=rows, x=list(_MODULE_NAMES), y=labels, coloraxis=coloraxis,
                      text=text, texttemplate="%{text}", hovertemplate="%{y} %{x}: %{z:.4f}<extra></extra>")


def diverging_axis(bound: float, title: str = "Δ log p(target)") -> dict:
    """A shared colour axis: RdBu from ``-bound`` to ``bound``, its colourbar titled ``title``."""
    return dict(colorscale="RdBu", cmid=0, cmin=-bound, cmax=bound, colorbar=dict(title=title))


def _bound(*tensors) -> float:
    values = [abs(v) for t in tensors for v in t.flatten().tolist() if not math.isnan(v)]
    return max(values + [1e-9])


def _target_label(result) -> str:
    return f"o* = {result.target_tokens[0]!r}, o = {result.target_tokens[1]!r}"


def attribution_diff_figure(result, view: str = "heatmap", group: str = "edit") -> go.Figure:
    """Figures of an :class:`~interp_edit.analysis.contrast.AttributionDiffResult`."""
    if view not in DIFF_VIEWS:
        raise InvalidArgumentError(f"view must be one of {DIFF_VIEWS}, got {view!r}")
    edited = result.settings.get("edited_layers") or []
    request, n_requests = result.settings.get("request"), result.settings.get("n_requests") or 0
    which = f" (request {request} of {n_requests})" if request is not None and n_requests > 1 else ""
    what = f"{result.method} edit{which}, {_target_label(result)}; edited layers {edited}"
    if view == "heatmap":
        diff = result.layer_diff(group)
        bound = _bound(diff)
        fig = make_subplots(rows=1, cols=2, subplot_titles=list(_DIRECTION_TITLES), horizontal_spacing=0.15)
        for d in range(2):
            fig.add_trace(diff_heatmap(diff[:, :, d], edited=edited), row=1, col=d + 1)
        n = len(result.prompts[group])
        fig.update_layout(title=f"After − before, {group} prompts (mean of {n}): {what}", height=200 + 45 * diff.shape[0],
                          width=900, coloraxis=diverging_axis(bound))
        return fit_layout(fig)
    if view == "groups":
        groups = result.groups
        diffs = [result.layer_diff(g) for g in groups]
        bound = _bound(*diffs)
        titles = [f"{g}: {t.split(' (')[0]}" for t in _DIRECTION_TITLES for g in groups]
        fig = make_subplots(rows=2, cols=len(groups), subplot_titles=titles, vertical_spacing=0.12)
        for d in range(2):
            for c, diff in enumerate(diffs):
                fig.add_trace(diff_heatmap(diff[:, :, d], edited=edited), row=d + 1, col=c + 1)
        fig.update_layout(title=f"After − before per prompt group: {what}", height=300 + 90 * diffs[0].shape[0],
                          width=330 * len(groups) + 150, coloraxis=diverging_axis(bound))
        return fit_layout(fig)
    if view == "neurons":
        fig = make_subplots(rows=1, cols=2, subplot_titles=[f"most changed: {t}" for t in _DIRECTION_TITLES])
        for d, direction in enumerate(("promote_new", "suppress_old")):
            rows = result.top_neurons(group, direction, k=15)
            fig.add_trace(go.Bar(x=[r["neuron"] for r in rows], y=[r["change"] for r in rows],
                                 marker_color=[_COLORS["FFN" if r["kind"] == "ffn" else "attention"] for r in rows],
                                 customdata=[[r["before"], r["after"]] for r in rows], showlegend=False,
                                 hovertemplate="%{x}: change %{y:.4f}<br>before %{customdata[0]:.4f}, "
                                               "after %{customdata[1]:.4f}<extra></extra>"), row=1, col=d + 1)
        fig.update_yaxes(title_text="Δ score (after − before)", row=1, col=1)
        fig.update_layout(title=f"Neurons whose scores changed most ({group} prompts; orange attention, blue FFN): {what}",
                          height=450, width=1150)
        return fit_layout(fig)
    fig = go.Figure()
    for t, name in enumerate(("new", "old")):
        y = [float(result.logprob_before[g][:, t].mean()) for g in result.groups]
        y2 = [float(result.logprob_after[g][:, t].mean()) for g in result.groups]
        token = result.target_tokens[t]
        fig.add_trace(go.Bar(x=list(result.groups), y=y, name=f"{name} {token!r} before"))
        fig.add_trace(go.Bar(x=list(result.groups), y=y2, name=f"{name} {token!r} after"))
    fig.update_layout(title=f"Mean log p of the (first) target token per prompt group: {what}", barmode="group",
                      yaxis_title="log p", height=420, width=800)
    return fit_layout(fig)


def contrast_figure(result, view: str = "panels") -> go.Figure:
    """Figures of a :class:`~interp_edit.evaluation.contrast.ContrastResult`. Every title ends
    with the notes of the result: the contrast undefined (and why), a small group
    (:attr:`~interp_edit.evaluation.contrast.ContrastResult.small_group_warning`)."""
    if view not in CONTRAST_VIEWS:
        raise InvalidArgumentError(f"view must be one of {CONTRAST_VIEWS}, got {view!r}")
    counts = f"{result.n_success} successes, {result.n_failure} failures"
    head = f"{result.label}, {result.group} prompts, {counts}"
    small = result.small_group_warning
    notes = (("" if result.defined else f" — contrast undefined: {result.undefined_reason}")
             + ("" if small is None else f"<br><b>WARNING: {small}</b>"))
    n_layers = result.n_layers
    if view == "panels":
        cols = ("successes", "failures", "leverage")
        titles = [f"{c}: {t.split(' (')[0]}" for t in _DIRECTION_TITLES for c in cols]
        fig = make_subplots(rows=2, cols=3, subplot_titles=titles, vertical_spacing=0.12, horizontal_spacing=0.08)
        bound = _bound(result.success_mean, result.failure_mean)
        lev_bound = _bound(result.leverage)
        for d in range(2):
            maps = (result.success_mean, result.failure_mean, result.leverage)
            for c, values in enumerate(maps):
                fig.add_trace(diff_heatmap(values[:, :, d], "coloraxis2" if c == 2 else "coloraxis"), row=d + 1, col=c + 1)
        fig.update_layout(title=f"Mean after − before diffs (leverage = successes − failures): {head}{notes}", height=300 + 90 * n_layers, width=1200,
                          coloraxis=diverging_axis(bound), coloraxis2=diverging_axis(lev_bound, "Δ log p(target)"))
        return fit_layout(fig)
    if view == "leverage":
        fig = make_subplots(rows=1, cols=2, subplot_titles=list(_DIRECTION_TITLES))
        layers = list(range(n_layers))
        for d in range(2):
            for m, module in enumerate(_MODULE_NAMES):
                mean = result.leverage[:, m, d]
                low, high = result.leverage_ci[:, m, d, 0], result.leverage_ci[:, m, d, 1]
                fig.add_trace(go.Scatter(x=layers, y=mean.tolist(), mode="lines+markers", name=module,
                                         marker_color=_COLORS[module], showlegend=d == 0,
                                         error_y=dict(type="data", symmetric=False, array=(high - mean).tolist(),
                                                      arrayminus=(mean - low).tolist()),
                                         hovertemplate=f"{module} L%{{x}}: %{{y:.4f}}<extra></extra>"), row=1, col=d + 1)
            fig.add_hline(y=0, line_dash="dot", line_color="grey", row=1, col=d + 1)
            fig.update_xaxes(title_text="layer", dtick=1, row=1, col=d + 1)
        fig.update_yaxes(title_text="success − failure (Δ log p)", row=1, col=1)
        fig.update_layout(title=f"Leverage profile with {result.ci:.0%} bootstrap intervals: {head}{notes}",
                          height=450, width=1100)
        return fit_layout(fig)
    fig = go.Figure()
    for label, mask in (("success", result.success), ("failure", ~result.success)):
        fig.add_trace(go.Histogram(x=result.margins[mask].tolist(), name=label, opacity=0.7, nbinsx=30))
    # the margins (and the success split) are measured on the rewrite prompt, whatever the group
    fig.update_layout(title=f"Efficacy margin on the rewrite prompt after the edit (mean log p(new) − log p(true)): "
                            f"{result.label}, {counts}{notes}", barmode="overlay",
                      xaxis_title="margin", yaxis_title="edits", height=420, width=800)
    return fit_layout(fig)
