"""Every notebook in notebooks/ runs top to bottom on the toy model; every figure it shows is
a PNG (visible where no JavaScript runs, e.g. nbconvert's HTML offline) beside the figure's
JSON (interactive in JupyterLab / VS Code), with no plotly.js inlined; the committed notebooks
carry no outputs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

#: every notebook executed end to end: the second CI job (`pytest -m slow`), not the default suite
pytestmark = pytest.mark.slow

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
PLOTLY_JSON = "application/vnd.plotly.v1+json"
#: no single output of an executed notebook is this large (plotly.js alone is 4.5 MB)
MAX_OUTPUT_BYTES = 1_000_000


def _shows_figure(source: str) -> bool:
    """The cell's value is ``<something>.plot(...)``: Jupyter displays that figure."""
    body = ast.parse(source).body
    last = body[-1] if body else None
    return (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)
            and isinstance(last.value.func, ast.Attribute) and last.value.func.attr == "plot")


def figure_cells(notebook) -> list:
    return [c for c in notebook.cells if c.cell_type == "code" and _shows_figure(c.source)]


def _size(output) -> int:
    return len(nbformat.writes(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(outputs=[output])])))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_every_figure_shows_offline(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert all(_size(o) < MAX_OUTPUT_BYTES for o in outputs), "an output inlines something huge (plotly.js?)"
    assert not any("cdn.plot.ly" in str(o) or "require.config" in str(o) for o in outputs)
    for cell in figure_cells(notebook):
        shown = [o for o in cell.outputs if o.output_type in ("display_data", "execute_result")]
        assert any("image/png" in o.data and PLOTLY_JSON in o.data for o in shown), cell.source
    if path.name.startswith("01"):  # its AIE shows a progress bar: a widget, not text on stderr
        assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    stderr = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stderr")
    assert "TqdmWarning" not in stderr and "IProgress" not in stderr

    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(notebook)
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', body)) >= len(figure_cells(notebook))


def test_the_figure_cells_are_found():
    assert sum(len(figure_cells(nbformat.read(p, as_version=4))) for p in NOTEBOOKS) >= 15


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_are_output_free(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip the outputs"


def test_there_is_a_notebook():
    assert NOTEBOOKS
