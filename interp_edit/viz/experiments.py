"""Figures of editing experiments: metric curves vs number of edits, and several methods
compared. An experiment evaluated once (one batch, or one checkpoint) has no curve: its
metrics are drawn as bars, before (unedited) and after the edits. A sequential run also gets
its collapse curves, next to the rest: the held-out perplexity and the accuracy on unedited
facts vs number of edits (from the unedited model on)."""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_CURVES = ("efficacy_score", "paraphrase_score", "neighborhood_score", "counterfact_score",
                  "gen_efficacy_exact", "gen_efficacy_contains", "gen_paraphrase_exact", "gen_paraphrase_contains",
                  "gen_neighborhood_exact",
                  "multihop_accuracy", "efficacy_token_accuracy", "paraphrase_token_accuracy",
                  "specificity_token_accuracy", "mcq_reliability", "mcq_generalisation", "mcq_locality",
                  "mcq_portability", "unrelated_accuracy")


def _points(result, metric: str) -> tuple[list[int], list[float]]:
    xs = [0] if metric in result.baseline else []
    ys = [result.baseline[metric]] if metric in result.baseline else []
    for point in result.checkpoints:
        if metric in point:
            xs.append(point["n_edited"])
            ys.append(point[metric])
    return xs, ys


#: the collapse curves of a sequential run: (metric, panel title)
COLLAPSE_CURVES = (("heldout_perplexity", "held-out perplexity"), ("unrelated_accuracy", "unedited-fact accuracy"))


def collapse_panels(result) -> list[tuple[str, str]]:
    """The collapse curves a result has data for (sequential runs only), as (metric, title).

    >>> res = run_experiment(model, "toyworld-counterfact", "memit", n=2, sequential=True,
    ...                      unrelated=5, fluency=False, progress=False)
    >>> collapse_panels(res)
    [('heldout_perplexity', 'held-out perplexity'), ('unrelated_accuracy', 'unedited-fact accuracy')]
    """
    if not result.settings.get("sequential"):
        return []
    return [(m, title) for m, title in COLLAPSE_CURVES if any(m in point for point in result.checkpoints)]


def _add_collapse(fig, result, panels: Sequence[tuple[str, str]], first_col: int) -> None:
    import plotly.graph_objects as go

    colors = {"heldout_perplexity": "#d62728", "unrelated_accuracy": "#2ca02c"}
    for i, (metric, title) in enumerate(panels):
        xs, ys = _points(result, metric)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=metric, line={"color": colors[metric]}),
                      row=1, col=first_col + i)
        fig.update_xaxes(title_text="number of edits", row=1, col=first_col + i)
        fig.update_yaxes(title_text=title, row=1, col=first_col + i)


def experiment_figure(result, metrics: Sequence[str] | None = None):
    """Left: the chosen metrics vs number of edits (0 = unedited); then (MCQ data) option
    entropy in bits vs number of edits; then (sequential runs) held-out perplexity and
    unedited-fact accuracy vs number of edits."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from interp_edit.viz.layout import fit_layout

    last = result.checkpoints[-1] if result.checkpoints else {}
    metrics = [m for m in (metrics or DEFAULT_CURVES) if m in last]
    s = result.settings
    mode = "sequential" if s["sequential"] else "independent (each batch undone)"
    collapse = collapse_panels(result)
    if len(result.checkpoints) <= 1:
        return _one_checkpoint_figure(result, metrics, f"{s['method']} on {s['dataset']}: batches of {s['batch_size']}, {mode}",
                                      collapse)
    entropy = "option_entropy" in last
    titles = ["metrics"] + (["option entropy (bits)"] if entropy else []) + [title for _, title in collapse]
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles if len(titles) > 1 else None)
    for metric in metrics:
        xs, ys = _points(result, metric)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=metric), row=1, col=1)
    if entropy:
        xs, ys = _points(result, "option_entropy")
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name="option_entropy"), row=1, col=2)
        fig.update_xaxes(title_text="number of edits", row=1, col=2)
    _add_collapse(fig, result, collapse, 2 + entropy)
    fig.update_xaxes(title_text="number of edits", row=1, col=1)
    fig.update_yaxes(title_text="value", row=1, col=1)
    fig.update_layout(title=f"{s['method']} on {s['dataset']}: batches of {s['batch_size']}, {mode}",
                      width=750 + 250 * (len(titles) - 1), height=450, template="plotly_white")
    return fit_layout(fig)


def _one_checkpoint_figure(result, metrics: Sequence[str], title: str, collapse: Sequence[tuple[str, str]] = ()):
    """Grouped bars: each metric unedited and after the edits (one evaluation, no curve); a
    sequential run's collapse curves (unedited and after the edits) beside them."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from interp_edit.viz.layout import fit_layout

    last = result.checkpoints[-1] if result.checkpoints else {}
    before = [m for m in metrics if m in result.baseline]
    if collapse:
        fig = make_subplots(rows=1, cols=1 + len(collapse), column_widths=[0.6] + [0.4 / len(collapse)] * len(collapse),
                            subplot_titles=["metrics", *(t for _, t in collapse)])
        where = {"row": 1, "col": 1}
    else:
        fig, where = go.Figure(), {}
    if before:
        fig.add_trace(go.Bar(x=before, y=[result.baseline[m] for m in before], name="unedited", marker_color="#9e9e9e"),
                      **where)
    fig.add_trace(go.Bar(x=list(metrics), y=[last[m] for m in metrics], name=f"after {last.get('n_edited', 0)} edits",
                         marker_color="#1f77b4"), **where)
    _add_collapse(fig, result, collapse, 2)
    fig.update_xaxes(tickangle=-30, **where)
    fig.update_yaxes(title_text="value", **where)
    fig.update_layout(title=title, barmode="group", width=max(500, 70 * len(metrics) + 200) + 300 * len(collapse),
                      height=480, template="plotly_white")
    return fit_layout(fig)


def comparison_figure(results: Sequence, metrics: Sequence[str] = ("efficacy_score", "paraphrase_score",
                      "neighborhood_score", "counterfact_score", "multihop_accuracy", "unrelated_accuracy")):
    """One panel per metric, one line per result (method), vs number of edits."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    from interp_edit.viz.layout import fit_layout

    cols = 3
    rows = (len(metrics) + cols - 1) // cols
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(metrics))
    for i, result in enumerate(results):
        color = qualitative.Plotly[i % len(qualitative.Plotly)]
        for j, metric in enumerate(metrics):
            xs, ys = _points(result, metric)
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=result.settings["method"], legendgroup=str(i),
                                     showlegend=j == 0, line={"color": color}), row=j // cols + 1, col=j % cols + 1)
    for j in range(len(metrics)):
        fig.update_xaxes(title_text="number of edits", row=j // cols + 1, col=j % cols + 1)
    first = results[0].settings if results else {}
    fig.update_layout(title=f"Sequential editing on {first.get('dataset', '')} (batches of {first.get('batch_size', '')})",
                      width=1100, height=380 * rows, template="plotly_white")
    return fit_layout(fig)
