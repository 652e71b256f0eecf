"""The command line and the demo, run in-process on the shipped model."""

from __future__ import annotations

import subprocess
import sys

import pytest

from interp_edit.cli import main


def test_help_is_quick_and_lists_commands():
    out = subprocess.run([sys.executable, "-m", "interp_edit.cli", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout and "toy" in out.stdout
    # --help must not import TransformerLens (slow): checked in a fresh interpreter
    code = "import sys, interp_edit.cli as c; c.build_parser(); print('transformer_lens' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_demo_prints_facts_with_top_predictions(capsys):
    assert main(["demo", "--facts", "3", "--top-k", "5"]) == 0
    out = capsys.readouterr().out
    assert out.count("-> true object") == 3
    assert out.count("  1. ") == 3 and out.count("  5. ") == 3
    assert "<- true" in out


def test_toy_eval_prints_key_value_lines(capsys, toy_metrics):
    assert main(["toy", "eval"]) == 0
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.strip().splitlines())
    for key in ("fact_acc", "paraphrase_acc", "twohop_trained_acc", "twohop_heldout_acc"):
        assert float(lines[key]) == pytest.approx(toy_metrics[key], abs=1e-4)


def test_cli_reports_a_bad_checkpoint_cleanly(tmp_path, capsys):
    assert main(["toy", "eval", "--checkpoint", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err


def test_readme_quick_start_runs(capsys):
    """The README's Jupyter quick-start is executed as written."""
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("## Quick start (Jupyter)", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert len(block.strip().splitlines()) <= 10
    exec(compile(block, "README quick start", "exec"), {})
    out = capsys.readouterr().out
    assert "<|endoftext|>" in out and "(" in out
