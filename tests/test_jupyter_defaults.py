"""Defaults a notebook user meets first: the trace window scaled to depth, the threads policy,
progress bars (widget / terminal / plain log lines), the figure renderer and the size of
saved HTML, and a demo that leaves tracked files alone."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
import pytest
import torch

from interp_edit.errors import ExportError, InvalidArgumentError

ROOT = Path(__file__).parents[1]


# --- trace window -------------------------------------------------------------------------

def test_default_window_is_romes_fraction_of_the_depth():
    from interp_edit.analysis.tracing import default_window

    assert [default_window(n) for n in (1, 6, 12, 28, 48, 96)] == [1, 1, 2, 6, 10, 20]


def test_the_first_trace_on_the_toy_model_is_not_one_window_over_every_layer(toy_model, person_records, one_thread):
    from interp_edit.analysis import causal_trace

    r = person_records[0]
    prompt = r.prompt.format(r.subject)
    trace = causal_trace(toy_model, prompt, r.subject, r.target_true, kinds=("mlp",), samples=3)
    assert trace.settings.window == 1
    rows = trace.kind("mlp")
    assert not torch.allclose(rows[1], rows[4])
    # ROME's fixed 10 restores all 6 layers at once from layer 1 to 4: their rows are the same
    wide = causal_trace(toy_model, prompt, r.subject, r.target_true, kinds=("mlp",), samples=3, window=10)
    assert torch.allclose(wide.kind("mlp")[1], wide.kind("mlp")[4])


# --- threads --------------------------------------------------------------------------------

def test_threads_policy(monkeypatch):
    from interp_edit.threads import DEFAULT_THREADS, ENV_VAR, policy_threads, set_threads

    monkeypatch.delenv(ENV_VAR, raising=False)
    assert policy_threads() == DEFAULT_THREADS == 1
    assert policy_threads(3) == 3
    monkeypatch.setenv(ENV_VAR, "2")
    assert policy_threads() == 2 and policy_threads(1) == 1
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InvalidArgumentError, match="threads"):
            policy_threads(bad)
    monkeypatch.setenv(ENV_VAR, "many")
    with pytest.raises(InvalidArgumentError, match=ENV_VAR):
        policy_threads()
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_cli_refuses_bad_threads_before_any_work(capsys):
    from interp_edit.cli import main

    assert main(["--threads", "0", "trace", "--prompt", "x", "--subject", "x"]) == 2  # refused by argparse
    assert "threads" in capsys.readouterr().err


def test_notebooks_use_the_threads_policy():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        text = path.read_text()
        assert "set_threads()" in text and "set_num_threads" not in text, path.name


# --- progress -------------------------------------------------------------------------------

class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_line_progress_writes_few_whole_lines_and_no_carriage_returns():
    from interp_edit.progress import LineProgress

    out, clock = io.StringIO(), _Clock()
    bar = LineProgress(total=100, desc="AIE", stream=out, interval=30.0, clock=clock)
    for _ in range(100):
        clock.t += 1.0
        bar.update(1)
    bar.close()
    bar.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("AIE: 0/100 (0%)") and lines[-1].startswith("AIE: 100/100 (100%) 100.0 s")
    assert len(lines) == 1 + 3 + 1  # start, every 30 s, end
    assert "s left" in lines[1]


def test_line_progress_iterates_and_closes():
    from interp_edit.progress import LineProgress

    out = io.StringIO()
    assert list(LineProgress(range(5), desc="x", stream=out)) == [0, 1, 2, 3, 4]
    assert out.getvalue().splitlines()[-1].startswith("x: 5/5 (100%)")


def test_bar_kind_follows_the_output(monkeypatch):
    from interp_edit import progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert progress.bar_kind(io.StringIO()) == "lines"
    assert progress.bar_kind(Tty()) == "terminal"
    monkeypatch.setattr(progress, "in_jupyter_kernel", lambda: True)
    assert progress.bar_kind(io.StringIO()) == "widget"  # ipywidgets is installed (the notebook extra)


def test_a_progress_bar_in_a_log_is_line_based(monkeypatch, capsys):
    from interp_edit.progress import LineProgress, progress_bar

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    bar = progress_bar(total=3, desc="run")
    assert isinstance(bar, LineProgress)
    bar.update(3)
    bar.close()
    assert "\r" not in sys.stderr.getvalue() and "run: 3/3" in sys.stderr.getvalue()


def test_import_prints_no_warning():
    code = "import interp_edit, interp_edit.analysis, interp_edit.evaluation, interp_edit.editing, interp_edit.viz"
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def _run_in_a_kernel(cells: list[str]) -> str:
    """Run ``cells`` in a fresh Jupyter kernel; returns what they wrote to stderr (errors too)."""
    pytest.importorskip("ipykernel")
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(ROOT))
    err = []
    try:
        for code in cells:
            msg_id = kc.execute(code)
            while True:
                msg = kc.get_iopub_msg(timeout=240)
                if msg["parent_header"].get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "stream" and msg["content"]["name"] == "stderr":
                    err.append(msg["content"]["text"])
                elif msg["msg_type"] == "error":
                    err.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")
                elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    break
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return "".join(err)


def test_a_notebook_without_ipywidgets_gets_no_warning_from_import_or_the_first_bar():
    """The README's install has no ipywidgets: TransformerLens's ``import tqdm.auto`` used to
    warn ``TqdmWarning: IProgress not found`` in the notebook's first cell."""
    err = _run_in_a_kernel([
        "import sys; sys.modules['ipywidgets'] = None  # as if not installed",
        "import interp_edit, interp_edit.analysis, interp_edit.viz, transformer_lens",
        "from interp_edit.progress import progress_bar\nbar = progress_bar(total=2, desc='run')\nbar.update(2)\nbar.close()",
    ])
    assert "Warning" not in err and "run: 2/2" in err, err


# --- figures: renderer and saved HTML ---------------------------------------------------------

@pytest.fixture
def restore_renderer():
    before = pio.renderers.default
    yield
    pio.renderers.default = before


def test_in_a_kernel_the_package_renders_json_plus_png(monkeypatch, restore_renderer):
    from interp_edit import progress
    from interp_edit.viz.display import NOTEBOOK_RENDERER, configure_renderers

    monkeypatch.delenv("PLOTLY_RENDERER", raising=False)
    monkeypatch.setattr(progress, "in_jupyter_kernel", lambda: True)
    pio.renderers.default = "plotly_mimetype+notebook"  # plotly's own choice in a kernel
    assert configure_renderers() == NOTEBOOK_RENDERER
    bundle = go.Figure(go.Bar(y=[1, 2])).update_layout(width=300, height=200)._repr_mimebundle_()
    assert "image/png" in bundle and "application/vnd.plotly.v1+json" in bundle and "text/html" not in bundle
    pio.renderers.default = "browser"  # a user's own choice is kept
    assert configure_renderers() == "browser"
    monkeypatch.setenv("PLOTLY_RENDERER", "svg")
    pio.renderers.default = "plotly_mimetype+notebook"
    assert configure_renderers() == "plotly_mimetype+notebook"


def test_outside_a_kernel_the_renderer_is_left_alone(restore_renderer):
    from interp_edit.viz.display import configure_renderers

    pio.renderers.default = "browser"
    assert configure_renderers() == "browser"
    assert configure_renderers("png") == "png"


def test_saved_html_shares_one_plotlyjs_per_output_root(tmp_path, monkeypatch):
    """results/demo, results/figures and results/sweep/summary load one results/plotly.min.js."""
    import re

    from interp_edit.viz.export import save_figure

    monkeypatch.chdir(tmp_path)
    fig = go.Figure(go.Bar(y=[1, 2, 3])).update_layout(width=300, height=200)
    pages = [save_figure(fig, "results/demo/a")[0], save_figure(fig, Path("results/figures/b.html"))[0],
             save_figure(fig, tmp_path / "results" / "sweep" / "deep" / "c")[0]]
    copies = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("plotly.min.js"))
    assert copies == ["results/plotly.min.js"]
    assert (tmp_path / "results" / "plotly.min.js").stat().st_size > 1_000_000
    for page in pages:
        text = page.read_text()
        assert page.stat().st_size < 50_000
        src = re.search(r'<script [^>]*src="([^"]+plotly\.min\.js)"', text).group(1)
        assert (page.parent / src).resolve() == (tmp_path / "results" / "plotly.min.js").resolve()
        assert page.with_suffix(".png").stat().st_size > 0
    # an explicit root; a folder outside the working directory gets its own copy
    other = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    save_figure(fig, other / "x" / "d", js_root=other)
    assert (other / "plotly.min.js").is_file() and not (other / "x" / "plotly.min.js").exists()
    save_figure(fig, other / "y" / "e")
    assert (other / "plotly.min.js").is_file() and not (other / "y" / "plotly.min.js").exists()
    alone, _ = save_figure(fig, tmp_path / "inline" / "c", plotlyjs="inline")
    assert alone.stat().st_size > 1_000_000 and not (tmp_path / "inline" / "plotly.min.js").exists()
    with pytest.raises(ExportError, match="plotlyjs"):
        save_figure(fig, tmp_path / "d", plotlyjs="cdn")
    with pytest.raises(ExportError, match="js_root"):
        save_figure(fig, tmp_path / "results" / "f", js_root=tmp_path / "results" / "demo")


# --- the demo leaves tracked files alone ----------------------------------------------------------

def test_demo_and_figure_commands_write_outside_tracked_folders():
    from interp_edit.cli import build_parser
    from interp_edit.demo import run_demo

    parser = build_parser()
    defaults = [parser.parse_args(["demo"]).figures, parser.parse_args(["trace", "--prompt", "p", "--subject", "s"]).out,
                parser.parse_args(["attribute", "--prompt", "p"]).out]
    import inspect

    defaults.append(inspect.signature(run_demo).parameters["figures"].default)
    for folder in defaults:
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", f"{folder}/demo_aie.png"], cwd=ROOT,
                                 capture_output=True)
        assert ignored.returncode == 0, f"{folder} is not ignored by git"
