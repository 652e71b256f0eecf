"""The per-layer AIE at an edit token (hidden, MLPs severed, MLP-mediated) with the chosen
layer window shaded: MEMIT-CSK's layer choice."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from interp_edit.viz.layout import fit_layout

_COLORS = {"hidden": "#6a51a3", "severed": "#9e9ac8", "mlp_mediated": "#238b45"}


def edit_token_aie_figure(result, window: Sequence[int] = ()) -> go.Figure:
    """One line per curve of an :class:`~interp_edit.analysis.edit_token_aie.EditTokenAIE`;
    ``window`` (the edited layers) is shaded."""
    fig = go.Figure()
    for name in ("hidden", "severed", "mlp_mediated"):
        curve = result.curve(name)
        fig.add_trace(go.Scatter(x=list(range(curve.shape[0])), y=curve.tolist(), mode="lines+markers", name=name,
                                 line=dict(color=_COLORS[name])))
    if window:
        fig.add_vrect(x0=min(window) - 0.4, x1=max(window) + 0.4, fillcolor="#fdae6b", opacity=0.25, line_width=0,
                      annotation_text="edited layers", annotation_position="top left")
    fig.update_layout(title=f"AIE at the edit token over {result.n_facts} facts ({len(result.skipped)} skipped); "
                            f"clean {result.mean_clean_score:.3f}, corrupted {result.mean_corrupted_score:.3f}{result.gap.title_note()}",
                      xaxis_title="layer", yaxis_title="average indirect effect", height=420, width=640)
    return fit_layout(fig)
