"""A sweep's spec (:mod:`interp_edit.sweep.spec`) and its ``out=`` folder: malformed input is a
:class:`~interp_edit.errors.SweepSpecError` naming the field (or ``out=`` and the path), never
another exception, and is refused before any cell runs. Property tests with hypothesis; nothing
is edited or loaded."""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interp_edit.errors import SweepSpecError
from interp_edit.sweep import run_sweep
from interp_edit.sweep.spec import SweepSpec, load_spec

VALID = {
    "models": ["toyworld"],
    "editors": [{"method": "rome", "grid": {"layer": [1, 2]}, "config": {"steps": 2}}],
    "datasets": [{"name": "toyworld-counterfact", "n": 2}],
    "seeds": [0], "modes": ["independent"], "batch_size": 1, "eval_every": 1, "unrelated": 2, "fluency": False,
    "max_new_tokens": 5, "threads": 1,
}

#: where a value is replaced: a path into VALID; the message must name its last named part
PLACES = [
    ("models",), ("models", 0), ("editors",), ("editors", 0), ("editors", 0, "method"), ("editors", 0, "grid"),
    ("editors", 0, "grid", "layer"), ("editors", 0, "config"), ("datasets",), ("datasets", 0),
    ("datasets", 0, "name"), ("datasets", 0, "n"), ("seeds",), ("seeds", 0), ("modes",), ("modes", 0),
    ("batch_size",), ("eval_every",), ("unrelated",), ("fluency",), ("max_new_tokens",), ("threads",),
]

_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(), st.text(max_size=6))
JSONISH = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6) | st.integers(-3, 3), inner, max_size=3)),
    max_leaves=6)
#: values at the edges of what the fields take, drawn often
EDGES = st.sampled_from([0, -1, 1, 2, True, False, 1.0, float("nan"), None, "", "x", [], [0], [-1], {}, [[]], [{}]])


def _replaced(place: tuple, value) -> dict:
    spec = copy.deepcopy(VALID)
    holder = spec
    for key in place[:-1]:
        holder = holder[key]
    holder[place[-1]] = value
    return spec


def _int(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _well_formed(spec: SweepSpec) -> bool:
    """What an accepted spec promises the grid's expansion (written out apart from spec.py)."""
    return (all(isinstance(m, str) and m for m in spec.models) and len(spec.models) > 0
            and all(isinstance(e.method, str) and all(isinstance(vs, tuple) and vs for _, vs in e.grid)
                    for e in spec.editors) and len(spec.editors) > 0
            and all(isinstance(d.name, str) and (d.n is None or _int(d.n, 1)) for d in spec.datasets)
            and len(spec.datasets) > 0 and all(_int(s, -math.inf) for s in spec.seeds)
            and all(m in ("independent", "sequential") for m in spec.modes)
            and all(_int(v, 1) for v in (spec.batch_size, spec.eval_every, spec.max_new_tokens))
            and (spec.threads is None or _int(spec.threads, 1)) and _int(spec.unrelated, 0)
            and isinstance(spec.fluency, bool))


def _named(place: tuple) -> str:
    return next(str(k) for k in reversed(place) if isinstance(k, str))


@pytest.mark.parametrize("place", PLACES, ids=[".".join(map(str, p)) for p in PLACES])
@settings(max_examples=30, deadline=None)
@given(value=EDGES | JSONISH)
def test_a_malformed_field_is_refused_naming_it_or_accepted(place, value):
    try:
        spec = SweepSpec.from_dict(_replaced(place, value))
    except SweepSpecError as err:
        assert _named(place) in str(err), (place, value, str(err))
        return
    assert _well_formed(spec), (place, value, spec)
    assert SweepSpec.from_dict(spec.to_dict()).to_dict() == spec.to_dict()


@settings(max_examples=30, deadline=None)
@given(key=st.text(max_size=6) | st.integers(), value=JSONISH,
       where=st.sampled_from([(), ("editors", 0), ("datasets", 0)]))
def test_an_unknown_field_is_refused_naming_it(key, value, where):
    spec = copy.deepcopy(VALID)
    holder = spec
    for part in where:
        holder = holder[part]
    if key in holder:
        return
    holder[key] = value
    with pytest.raises(SweepSpecError, match="unknown field") as err:
        SweepSpec.from_dict(spec)
    assert repr(key) in str(err.value)


@settings(max_examples=30, deadline=None)
@given(data=JSONISH | st.dictionaries(st.text(max_size=6) | st.integers(), JSONISH, max_size=4))
def test_any_malformed_spec_is_a_sweep_spec_error(data):
    with pytest.raises(SweepSpecError, match="sweep spec"):
        load_spec(data)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
@settings(max_examples=30, deadline=None)
@given(content=st.binary(max_size=40) | JSONISH.map(repr).map(str.encode))
def test_a_malformed_spec_file_is_a_sweep_spec_error_naming_the_file(suffix, content):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"grid{suffix}"
        path.write_bytes(content)
        with pytest.raises(SweepSpecError) as err:
            load_spec(path)
        assert "sweep spec" in str(err.value)


# --- out= ---------------------------------------------------------------------------------------

def _no_cell(*args):
    raise AssertionError("a cell ran")


@pytest.mark.parametrize("inside", [False, True], ids=["the file", "a folder in the file"])
def test_an_out_that_is_a_file_is_refused_naming_it_before_any_cell_runs(tmp_path, inside):
    taken = tmp_path / "taken.txt"
    taken.write_text("not a folder")
    out = taken / "sweep" if inside else taken
    with pytest.raises(SweepSpecError, match="out=") as err:
        run_sweep(VALID, out, cell_fn=_no_cell, progress=False)
    assert str(out) in str(err.value) and "not a folder" in str(err.value)
    assert taken.read_text() == "not a folder"


@pytest.mark.parametrize("out", [None, "", 3, ["out"]])
def test_an_out_that_is_not_a_path_is_refused_naming_it(out, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # "" would be the working folder if it were taken
    with pytest.raises(SweepSpecError, match="out="):
        run_sweep(VALID, out, cell_fn=_no_cell, progress=False)
