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


def test_demo_prints_facts_with_top_predictions_and_writes_figures(capsys, tmp_path):
    assert main(["demo", "--facts", "3", "--top-k", "5", "--figures", str(tmp_path), "--aie-facts", "4"]) == 0
    out = capsys.readouterr().out
    assert out.count("-> true object") == 3
    assert out.count("  1. ") == 3 and out.count("  5. ") == 3
    assert "<- true" in out
    assert "Average indirect effect over 4 facts" in out and "mlp    peak" in out
    assert "Pre/post attribution diff of the edit" in out and "most changed neurons" in out
    for stem in ("demo_causal_trace", "demo_aie", "demo_edit_diff", "demo_edit_diff_neurons"):
        assert (tmp_path / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
        assert (tmp_path / f"{stem}.html").stat().st_size > 1000


def test_trace_command_writes_figures_and_prints_top_sites(capsys, tmp_path):
    args = ["trace", "--prompt", "Talvik Corlo was born in", "--subject", "Talvik Corlo", "--window", "1",
            "--samples", "3", "--out", str(tmp_path), "--top", "3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "target=' Karsa'" in out and out.count("top") >= 3 and "indirect_effect=" in out
    assert (tmp_path / "causal_trace_rome.png").exists() and (tmp_path / "causal_trace_tl.html").exists()


def test_trace_command_reports_bad_input(capsys, tmp_path):
    args = ["trace", "--prompt", "Talvik Corlo was born in", "--subject", "Nobody", "--out", str(tmp_path)]
    assert main(args) == 2
    assert "Nobody" in capsys.readouterr().err


def test_toy_eval_prints_key_value_lines(capsys, toy_model, toy_world, toy_metrics, monkeypatch):
    """`toy eval` evaluates the shipped model on its world and prints every metric. The evaluation
    itself (48 s) is the session's `toy_metrics`: the command's call is checked to be of the same
    model (weights) and world, and answered with it."""
    from interp_edit.adapter import model_fingerprint
    from interp_edit.toyworld import evaluation

    calls = []

    def same_evaluation(model, world, *args, **kwargs):
        calls.append(1)
        assert model_fingerprint(model) == model_fingerprint(toy_model)
        assert world.people == toy_world.people and world.seed == toy_world.seed
        return dict(toy_metrics)

    monkeypatch.setattr(evaluation, "evaluate_toyworld", same_evaluation)
    assert main(["toy", "eval"]) == 0
    assert calls == [1]
    lines = dict(line.split("=", 1) for line in capsys.readouterr().out.strip().splitlines())
    assert set(toy_metrics) <= set(lines)
    for key in ("fact_acc", "paraphrase_acc", "twohop_trained_acc", "twohop_heldout_acc"):
        assert float(lines[key]) == pytest.approx(toy_metrics[key], abs=1e-4)


def test_cli_reports_a_bad_checkpoint_cleanly(tmp_path, capsys):
    assert main(["toy", "eval", "--checkpoint", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err


def test_readme_quick_start_runs(capsys):
    """The README's Jupyter quick-start is executed as written."""
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert len(block.strip().splitlines()) <= 30
    exec(compile(block, "README quick start", "exec"), {})
    out = capsys.readouterr().out
    assert "CausalTraceResult(" in out and "'efficacy'" in out  # the trace and the edited scores are printed


def test_contrast_command_prints_groups_leverage_and_resumes(capsys, tmp_path):
    """ROME with a 4-step target optimisation (measured: 3 successes, 5 failures on these 8)."""
    args = ["contrast", "--method", "rome", "--n", "8", "--config", '{"steps": 4}', "--n-boot", "100", "--quiet",
            "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    counts = dict(part.split("=") for part in next(line for line in out.splitlines() if line.startswith("n_success")).split())
    assert int(counts["n_success"]) >= 1 and int(counts["n_failure"]) >= 1
    assert sum(line.startswith("L") and " leverage " in line for line in out.splitlines()) == 6 * 2 * 2  # 6 layers
    for view in ("panels", "leverage", "margins"):
        assert (tmp_path / f"contrast_{view}.png").read_bytes()[:4] == b"\x89PNG"
    lines = (tmp_path / "contrast.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 8
    assert main(args) == 0  # resumes: nothing is edited again, the same numbers come out
    assert capsys.readouterr().out == out
    assert main([*args[:-2], "--out", str(tmp_path), "--seed", "1"]) == 2  # other settings in the same folder
    assert "other settings" in capsys.readouterr().err


def test_contrast_command_reports_an_undefined_contrast(capsys):
    assert main(["contrast", "--method", "rome", "--n", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "undefined=all 3 edits succeeded" in out and "leverage" not in out.split("\n", 1)[1]


# --- flags: help with defaults, prose description, values checked before any model loads ----

def _options(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                for where, option in _options(child):
                    yield f"{name} {where}".strip(), option
        elif action.option_strings and not isinstance(action, argparse._HelpAction):
            yield "", (parser, action)


def test_every_flag_has_help_that_shows_its_default():
    from interp_edit.cli import build_parser

    missing = []
    for where, (parser, action) in _options(build_parser()):
        formatter = parser._get_formatter()
        text = formatter._expand_help(action) if action.help else ""
        if not text or ("default" not in text and not (action.required and text.endswith("(required)"))):
            missing.append(f"{where} {action.option_strings[0]}: {text!r}")
    assert not missing, "\n".join(missing)


def test_the_command_lines_editor_names_are_the_registrys():
    from interp_edit.cli import METHODS
    from interp_edit.editing.registry import editors

    assert sorted(METHODS) == sorted(editors())


def test_top_level_help_reads_as_prose():
    out = subprocess.run([sys.executable, "-m", "interp_edit.cli", "--help"], capture_output=True, text=True, check=True).stdout
    description = out.split("\n\n")[1]
    assert "``" not in out and ":class:" not in out and ":func:" not in out
    assert description.rstrip().endswith(".") and len(description.split()) > 20


@pytest.mark.parametrize("argv, flag", [
    (["trace", "--prompt", "p", "--subject", "s", "--samples", "0"], "--samples"),
    (["trace", "--prompt", "p", "--subject", "s", "--kinds", "foo"], "--kinds"),
    (["trace", "--prompt", "p", "--subject", "s", "--noise", "-1"], "--noise"),
    (["edit", "--method", "romee", "--prompt", "{} x", "--subject", "s", "--target-new", "t"], "--method"),
    (["evaluate", "--method", "romee"], "--method"),
    (["evaluate", "--n", "0"], "--n"),
    (["contrast", "--method", "romee"], "--method"),
    (["contrast", "--groups", "edit,nope"], "--groups"),
    (["demo", "--facts", "0"], "--facts"),
])
def test_bad_values_are_refused_naming_the_flag_before_a_model_loads(monkeypatch, capsys, tmp_path, argv, flag):
    import interp_edit.adapter

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr(interp_edit.adapter, "load_model", no_model)
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert flag in capsys.readouterr().err


def test_docs_cli_md_documents_every_flag_and_choice_of_every_command():
    """docs/cli.md has a section per command (``### interp-edit trace``, ``### interp-edit toy
    train``, ...) naming every flag its ``--help`` lists (as `` `--flag` `` or `` `--flag VALUE` ``)
    and every choice of a choice flag (as a word; the editors once, under ``edit``); and wherever the page writes a flag with its choices
    (``--method exact|first_order``) they are the parser's. It missed ``toy train --d-mlp`` /
    ``--quiet``, ``sweep --connect-timeout`` / ``--no-figure`` / ``--quiet`` and
    ``attribute --method exact_top_k``."""
    import re
    from pathlib import Path

    from interp_edit.cli import build_parser

    doc = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    sections = {m.group(1).strip(): m.group(2) for m in
                re.finditer(r"^### (interp-edit[^\n]*)\n(.*?)(?=^#{1,3} |\Z)", doc, re.S | re.M)}
    choices_of: dict[tuple[str, str], tuple] = {}
    missing = []
    for where, (_, action) in _options(build_parser()):
        command = f"interp-edit {where}".strip()
        flag = action.option_strings[0]
        if action.choices:
            choices_of[(command.split()[-1], flag)] = tuple(action.choices)
        section = sections.get(command)
        if section is None:
            missing.append(f"{command}: no '### {command}' section")
            continue
        if not re.search(rf"`{re.escape(flag)}[` ]", section):
            missing.append(f"{command} {flag}")
        # the editors are listed once, under edit; evaluate and contrast refer to them ("as for `edit`")
        listed = section + (sections["interp-edit edit"] if flag == "--method" and "as for `edit`" in section else "")
        missing += [f"{command} {flag} choice {c!r}" for c in action.choices or ()
                    if not re.search(rf"(?<![\w-]){re.escape(c)}(?![\w-])", listed)]
    assert not missing, "not in docs/cli.md:\n" + "\n".join(missing)
    # a flag written with its choices lists the parser's, in the table and the sections alike
    for line in doc.splitlines():
        command = re.match(r"\| `interp-edit (\w+)|### interp-edit (\w+)", line)
        if command is None:
            continue
        name = command.group(1) or command.group(2)
        for flag, listed in re.findall(r"(--[\w-]+) ((?:\w+\\?\|)+\w+)", line):
            if (name, flag) in choices_of:
                assert set(listed.replace("\\", "").split("|")) == set(choices_of[(name, flag)]), (line, flag)
