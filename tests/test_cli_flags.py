"""Every numeric and choice flag of every ``interp-edit`` subcommand is checked when the
arguments are parsed: a bad value is argparse's one line naming the flag, the value and what is
expected (exit status 2), before any command runs. Run in-process (``main(argv)`` /
``build_parser().parse_args``), with every command replaced by one that fails the test, so that
nothing loads or trains. Also the sweep command's ``--out`` that is a file."""

from __future__ import annotations

import argparse
import contextlib
import io
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interp_edit import cli
from interp_edit.cli import GROUPS, KINDS, MAX_PEOPLE, MAX_SEED, MAX_THREADS, METHODS, RELATIONS, build_parser, main

#: the arguments each (sub)command needs besides the flag under test
PREFIX = {
    "": ["demo"],
    "demo": ["demo"],
    "trace": ["trace", "--prompt", "p", "--subject", "s"],
    "attribute": ["attribute", "--prompt", "p"],
    "edit": ["edit", "--prompt", "{} x", "--subject", "s", "--target-new", "t"],
    "evaluate": ["evaluate"],
    "contrast": ["contrast"],
    "sweep": ["sweep", "grid.json", "--out", "out"],
    "toy train": ["toy", "train"],
    "toy eval": ["toy", "eval"],
}


def _argv(command: str, flag: str, value: str, joined: bool = False) -> list[str]:
    given_flag = [f"{flag}={value}"] if joined else [flag, value]
    return given_flag + PREFIX[command] if command == "" else PREFIX[command] + given_flag


# --- what each flag accepts, written out independently of cli.py ------------------------------

def _int_in(low: int, high: float = math.inf):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _positive_finite(v) -> bool:
    return isinstance(v, float) and math.isfinite(v) and v > 0


def _names(allowed):
    return lambda v: isinstance(v, tuple) and len(v) > 0 and all(n in allowed for n in v)


def _layers(v) -> bool:
    return isinstance(v, tuple) and len(v) > 0 and all(_int_in(0)(x) for x in v)


def _one_of(allowed):
    return lambda v: v in allowed


POSITIVE, NON_NEGATIVE, SEED, THREADS = _int_in(1), _int_in(0), _int_in(0, 2**32 - 1), _int_in(1, 1024)


def _stem(v) -> bool:
    """A figure's file name stem: text naming no folder (it is joined to --out)."""
    return isinstance(v, str) and v.strip() != "" and v not in (".", "..") and not {"/", "\\", "\0"} & set(v)


#: (command, flag) -> whether a parsed value is acceptable; every flag with a type or choices
FLAGS = {
    ("", "--threads"): THREADS,
    ("demo", "--facts"): POSITIVE, ("demo", "--top-k"): POSITIVE, ("demo", "--seed"): SEED,
    ("demo", "--aie-facts"): POSITIVE,
    ("trace", "--kinds"): _names(KINDS), ("trace", "--corruption"): _one_of(("gaussian", "replace")),
    ("trace", "--noise"): _positive_finite, ("trace", "--samples"): POSITIVE, ("trace", "--window"): POSITIVE,
    ("trace", "--metric"): _one_of(("prob", "logprob", "logit_diff")), ("trace", "--severed"): _one_of(("mlp", "attn")),
    ("trace", "--seed"): SEED, ("trace", "--top"): POSITIVE, ("trace", "--name"): _stem,
    ("attribute", "--top-k"): POSITIVE, ("attribute", "--method"): _one_of(("exact", "first_order", "exact_top_k")),
    ("attribute", "--show"): POSITIVE, ("attribute", "--name"): _stem,
    ("edit", "--method"): _one_of(METHODS), ("edit", "--layer"): NON_NEGATIVE, ("edit", "--layers"): _layers,
    ("edit", "--top-k"): POSITIVE,
    ("evaluate", "--method"): _one_of(METHODS), ("evaluate", "--n"): POSITIVE, ("evaluate", "--batch-size"): POSITIVE,
    ("evaluate", "--eval-every"): POSITIVE, ("evaluate", "--unrelated"): NON_NEGATIVE, ("evaluate", "--seed"): SEED,
    ("evaluate", "--zsre-target"): _one_of(("alt", "answer")),
    ("evaluate", "--protocol"): _one_of(("teacher_forced", "generation", "both")), ("evaluate", "--gen-tokens"): POSITIVE,
    ("contrast", "--method"): _one_of(METHODS), ("contrast", "--n"): POSITIVE, ("contrast", "--relations"): _names(RELATIONS),
    ("contrast", "--groups"): _names(GROUPS), ("contrast", "--n-boot"): POSITIVE, ("contrast", "--seed"): SEED,
    ("sweep", "--executor"): _one_of(("inprocess", "processes", "ray")), ("sweep", "--workers"): POSITIVE,
    ("sweep", "--retries"): NON_NEGATIVE, ("sweep", "--connect-timeout"): _positive_finite,
    ("toy train", "--steps"): POSITIVE, ("toy train", "--seed"): SEED, ("toy train", "--world-seed"): SEED,
    ("toy train", "--n-people"): _int_in(2, 24800), ("toy train", "--threads"): THREADS, ("toy train", "--d-mlp"): POSITIVE,
}


def _checked_options(parser: argparse.ArgumentParser, where: str = ""):
    """(command, flag, action) of every option whose value argparse converts or restricts."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _checked_options(child, f"{where} {name}".strip())
        elif action.option_strings and (action.type is not None or action.choices is not None):
            yield where, action.option_strings[0], action


def test_every_checked_flag_of_every_subcommand_is_covered_here():
    found = {(where, flag) for where, flag, _ in _checked_options(build_parser())}
    assert found == set(FLAGS)


def test_numeric_flags_are_typed_not_plain_int_or_float():
    """A plain ``type=int`` takes any integer (a negative count, a seed torch overflows on)."""
    loose = [(w, f) for w, f, action in _checked_options(build_parser()) if action.type in (int, float)]
    assert not loose


def test_the_relations_flag_knows_the_toy_worlds_relations():
    from interp_edit.toyworld.templates import RELATIONS as SPECS

    assert RELATIONS == tuple(spec.id for spec in SPECS)


def test_the_people_flag_knows_the_largest_world():
    from interp_edit.toyworld.world import MAX_PEOPLE as WORLD_MAX
    from interp_edit.toyworld.world import build_world

    assert MAX_PEOPLE == WORLD_MAX
    assert len(build_world(0, n_people=MAX_PEOPLE).people) == MAX_PEOPLE


# --- bad values: one line naming the flag and the value, before any command runs -----------------

BAD = [
    ("toy train", "--n-people", "-3"), ("demo", "--facts", "-1"), ("toy train", "--steps", "0"),
    ("contrast", "--n", "0"), ("contrast", "--relations", "bogus"), ("contrast", "--relations", "born_in,"),
    ("", "--threads", "0"), ("", "--threads", "100000"),
    ("demo", "--top-k", "0"), ("demo", "--aie-facts", "0"), ("demo", "--seed", "-1"), ("demo", "--seed", str(2**32)),
    ("demo", "--facts", "2.5"),
    ("trace", "--samples", "0"), ("trace", "--window", "0"), ("trace", "--top", "0"), ("trace", "--noise", "nan"),
    ("trace", "--noise", "inf"), ("trace", "--noise", "0"), ("trace", "--kinds", "hidden,neurons"),
    ("trace", "--corruption", "blur"), ("trace", "--metric", "kl"), ("trace", "--severed", "hidden"),
    ("trace", "--seed", "1e3"),
    ("attribute", "--top-k", "0"), ("attribute", "--show", "-5"), ("attribute", "--method", "shapley"),
    ("edit", "--layer", "-1"), ("edit", "--layers", "1,x"), ("edit", "--layers", "1,-2"), ("edit", "--top-k", "0"),
    ("edit", "--method", "romee"),
    ("evaluate", "--n", "0"), ("evaluate", "--batch-size", "0"), ("evaluate", "--eval-every", "0"),
    ("evaluate", "--unrelated", "-1"), ("evaluate", "--seed", "1.5"), ("evaluate", "--method", "x"),
    ("evaluate", "--protocol", "greedy"), ("evaluate", "--gen-tokens", "0"),
    ("contrast", "--n-boot", "0"), ("contrast", "--groups", "edit,nope"), ("contrast", "--seed", "x"),
    ("sweep", "--workers", "0"), ("sweep", "--retries", "-1"), ("sweep", "--connect-timeout", "0"),
    ("sweep", "--connect-timeout", "inf"), ("sweep", "--executor", "slurm"),
    ("toy train", "--seed", "-1"), ("toy train", "--world-seed", "seven"), ("toy train", "--threads", "0"),
    ("toy train", "--threads", str(MAX_THREADS + 1)), ("toy train", "--d-mlp", "0"),
    ("toy train", "--n-people", "1"), ("toy train", "--n-people", str(MAX_PEOPLE + 1)),
]


@pytest.fixture
def no_command_runs(monkeypatch):
    """Every command replaced by one that fails the test: a bad flag must stop at parsing."""
    def ran(args):
        raise AssertionError(f"the command ran with {args}")

    for name in dir(cli):
        if name.startswith("_cmd_"):
            monkeypatch.setattr(cli, name, ran)


@pytest.mark.parametrize(("command", "flag", "value"), BAD, ids=[" ".join(case).strip() for case in BAD])
def test_a_bad_value_is_one_line_naming_the_flag_and_the_value(no_command_runs, capsys, command, flag, value):
    assert main(_argv(command, flag, value)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"interp-edit: error: argument {flag}: ") and err.count("\n") == 1, err
    assert repr(value) in err or value in err, err
    assert "expected" in err or "choose" in err or "invalid choice" in err, err


def test_unknown_relations_are_named_with_the_known_ones(no_command_runs, capsys):
    assert main(["contrast", "--relations", "born_in,bogus"]) == 2
    err = capsys.readouterr().err
    assert "--relations" in err and "bogus" in err and all(r in err for r in RELATIONS), err


@pytest.mark.parametrize(("command", "flag", "value", "expected"), [
    ("contrast", "--relations", "located_in, capital", ("located_in", "capital")),
    ("contrast", "--relations", None, ("born_in", "profession", "speaks", "instrument")),
    ("edit", "--layers", "1,2", (1, 2)),
    ("demo", "--seed", str(MAX_SEED), MAX_SEED),
    ("toy train", "--threads", str(MAX_THREADS), MAX_THREADS),
])
def test_good_values_parse(command, flag, value, expected):
    argv = PREFIX[command] if value is None else _argv(command, flag, value)
    args = build_parser().parse_args(argv)
    assert getattr(args, flag.lstrip("-").replace("-", "_")) == expected


def test_a_sweep_out_that_is_a_file_is_named(monkeypatch, capsys, tmp_path):
    """--out is checked by the sweep's own rule before the sweep starts (or its spec is read)."""
    import interp_edit.sweep

    def no_sweep(*args, **kwargs):
        raise AssertionError("the sweep started")

    monkeypatch.setattr(interp_edit.sweep, "run_sweep", no_sweep)
    taken = tmp_path / "taken.txt"
    taken.write_text("not a folder")
    assert main(["sweep", str(tmp_path / "missing.json"), "--out", str(taken), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("interp-edit: error: ") and "--out" in err and str(taken) in err and "not a folder" in err
    assert taken.read_text() == "not a folder"


@pytest.mark.parametrize("argv", [["evaluate", "--n", "1", "--out", ""], ["trace", "--prompt", "Talvik Corlo was born in",
                                                                            "--subject", "Talvik Corlo", "--out", " "],
                                  ["edit", "--prompt", "{} was born in", "--subject", "Talvik Corlo", "--target-new", "Karsa",
                                   "--out", ""]])
def test_an_empty_out_is_refused_not_taken_as_the_current_folder(monkeypatch, capsys, tmp_path, argv):
    """``--out ""`` wrote a run's resume state (or a trace's figures) into the current folder."""
    import interp_edit.adapter

    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded")

    monkeypatch.setattr(interp_edit.adapter, "load_model", no_model)
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("interp-edit: error: --out: empty path") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_an_edit_out_ending_in_a_separator_is_refused_not_saved_beside_it(monkeypatch, capsys, tmp_path):
    """``--out new/`` saved ``new.safetensors`` beside the folder the user named."""
    import interp_edit.adapter

    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded")

    monkeypatch.setattr(interp_edit.adapter, "load_model", no_model)
    monkeypatch.chdir(tmp_path)
    assert main(["edit", "--prompt", "{} was born in", "--subject", "Talvik Corlo", "--target-new", "Karsa",
                 "--out", "new/"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("interp-edit: error: --out new/: ends with a folder separator") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["", " ", "a/b", "../up", ".", ".."])
def test_a_figure_name_with_a_folder_or_none_is_refused_naming_the_flag(name):
    for command in ("trace", "attribute"):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([*PREFIX[command], "--name", name])
        assert exit_.value.code == 2 and "argument --name" in err.getvalue() and "--out" in err.getvalue()


# --- property: any value either parses to an acceptable one or is refused naming the flag --------

_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_NUMBERS = st.one_of(st.integers(-2**70, 2**70).map(str), st.floats().map(repr), st.floats().map(str),
                     st.sampled_from(["0", "1", "-1", "1.0", "1e3", " 7 ", "inf", "nan", "-inf", "4294967296", "1025", "9" * 5000]))
_NAMES = st.lists(st.sampled_from([*KINDS, *GROUPS, *RELATIONS, "bogus", "", " "]), min_size=1, max_size=3).map(",".join)
_LISTS = st.lists(st.integers(-3, 3).map(str) | _TEXT, min_size=1, max_size=3).map(",".join)
_CHOICES = st.sampled_from(["a/b", "../x", "/", ".", "..", "x\\y", *METHODS, "gaussian", "replace", "prob", "logit_diff", "mlp", "exact", "ray", "ROME"])
VALUES = st.one_of(_NUMBERS, _TEXT, _NAMES, _LISTS, _CHOICES)


@pytest.mark.parametrize(("command", "flag"), sorted(FLAGS), ids=[f"{c} {f}".strip() for c, f in sorted(FLAGS)])
@settings(max_examples=30, deadline=None)
@given(value=VALUES, joined=st.booleans())
def test_any_value_parses_to_an_acceptable_one_or_is_refused_naming_the_flag(command, flag, value, joined):
    parser = build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(_argv(command, flag, value, joined))
    except SystemExit as exit_:
        assert exit_.code == 2 and f"argument {flag}" in err.getvalue(), (value, err.getvalue())
        return
    parsed = getattr(args, flag.lstrip("-").replace("-", "_"))
    assert FLAGS[(command, flag)](parsed), (value, parsed)


@pytest.mark.parametrize("value", ["--m", "--mo", "--kinds", "--model"])
def test_a_value_that_begins_like_a_flag_is_refused_naming_its_flag(value):
    """Flags are not abbreviated: ``--kinds --m`` names ``--kinds`` (as an abbreviation, ``--m``
    was refused as ambiguous between ``--model`` and ``--metric``, naming neither)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["trace", "--prompt", "p", "--subject", "s", "--kinds", value])
    assert exit_.value.code == 2 and "argument --kinds" in err.getvalue()


def test_flags_are_not_abbreviated():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit):
        build_parser().parse_args(["trace", "--prompt", "p", "--subject", "s", "--kin", "hidden"])
    assert "unrecognized arguments: --kin hidden" in err.getvalue()
