"""Plotly figure builders, one module per figure family. Results call them from ``.plot()``.
Importing the package makes the display choice of :mod:`interp_edit.viz.display` once."""

from interp_edit.viz.display import configure_renderers

configure_renderers()

__all__ = ["configure_renderers"]
