"""How figures display, chosen once for the package (applied when ``interp_edit.viz`` is first
imported, i.e. by the first ``.plot()``).

In a Jupyter kernel plotly's own default (``plotly_mimetype+notebook``) embeds 4.5 MB of
plotly.js in the first figure, stores every figure twice, and draws nothing where require.js
cannot load from its CDN (a notebook rendered to HTML offline). The package instead uses
:data:`NOTEBOOK_RENDERER`, ``plotly_mimetype+png``: the figure's JSON, drawn interactively by
JupyterLab, Notebook 7 and VS Code (their plotly renderers ship with them, no network), plus a
static PNG (kaleido, offline) that nbconvert's HTML, GitHub and anything without JavaScript
shows. Outside a kernel, and wherever the user chose (``PLOTLY_RENDERER``, or a renderer set
before the first plot), nothing is changed. Colab, Kaggle and the like keep plotly's choice
for them."""

from __future__ import annotations

import os

NOTEBOOK_RENDERER = "plotly_mimetype+png"
#: plotly's automatic choices that the package replaces (inside a Jupyter kernel)
_REPLACED = ("plotly_mimetype+notebook", "vscode", "plotly_mimetype+notebook_connected", "notebook", "notebook_connected")


def configure_renderers(renderer: str | None = None) -> str:
    """Set plotly's default renderer: ``renderer`` if given; else, in a Jupyter kernel where
    plotly chose by itself (no ``PLOTLY_RENDERER``), :data:`NOTEBOOK_RENDERER`. Returns the
    renderer in use."""
    import plotly.io as pio

    from interp_edit.progress import in_jupyter_kernel

    if renderer is not None:
        pio.renderers.default = renderer
    elif in_jupyter_kernel() and not os.environ.get("PLOTLY_RENDERER") and pio.renderers.default in _REPLACED:
        pio.renderers.default = NOTEBOOK_RENDERER
    return pio.renderers.default
