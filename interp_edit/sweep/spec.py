"""A sweep's grid: models × editors (each with a grid of config fields) × dataset slices × seeds
× modes, read from a Python dict, a JSON file or a YAML file.

Example (YAML)::

    models: [toyworld]
    editors:
      - method: rome
        grid: {layer: [1, 2]}        # every combination of these field values is a cell
        config: {steps: 10}          # fields fixed for every cell of this editor
      - method: memit
        grid: {layers: [[1], [2]]}
    datasets:
      - {name: toyworld-counterfact, n: 3}
    seeds: [0]
    modes: [independent]             # and/or sequential
    batch_size: 1
    unrelated: 5
    fluency: false

The remaining scalar fields (``batch_size``, ``eval_every``, ``unrelated``, ``fluency``,
``max_new_tokens``, ``threads``) are passed to every cell's
:func:`~interp_edit.evaluation.run_experiment`; ``threads`` (optional) fixes torch's thread
count inside each cell, so that results do not depend on the executor.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interp_edit.errors import SweepSpecError

MODES = ("independent", "sequential")


def _frozen(value):
    """JSON-like values as hashable, comparable tuples (lists become tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class EditorGrid:
    """One editing method, the config fields fixed for all its cells (``config``) and the
    fields swept (``grid``: field -> the values it takes; every combination is a cell)."""

    method: str
    grid: tuple[tuple[str, tuple], ...] = ()
    config: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping, where: str) -> EditorGrid:
        _check_keys(data, {"method", "grid", "config"}, where)
        if "method" not in data or not isinstance(data["method"], str):
            raise SweepSpecError(f"sweep spec: {where}: field 'method' (an editor name) is required")
        grid, config = data.get("grid") or {}, data.get("config") or {}
        for name, part in (("grid", grid), ("config", config)):
            if not isinstance(part, Mapping):
                raise SweepSpecError(f"sweep spec: {where}.{name} must be a mapping of config fields, got {part!r}")
        for key, values in grid.items():
            if not isinstance(values, (list, tuple)):
                raise SweepSpecError(f"sweep spec: {where}.grid.{key} must be a list of values, got {values!r}")
            if not values:
                raise SweepSpecError(f"sweep spec: axis {where}.grid.{key} is empty")
        return cls(data["method"], tuple((k, tuple(_frozen(v) for v in vs)) for k, vs in grid.items()),
                   tuple((k, _frozen(v)) for k, v in config.items()))

    def to_dict(self) -> dict:
        return {"method": self.method, "grid": {k: [_jsonable(v) for v in vs] for k, vs in self.grid},
                "config": {k: _jsonable(v) for k, v in self.config}}


@dataclass(frozen=True)
class DatasetSlice:
    """A dataset (a built-in name or a file, see :func:`~interp_edit.data.load_dataset`) and how
    many of its cases each cell edits (``n``; ``None``: all). ``data``: an in-memory
    :class:`~interp_edit.data.Dataset` instead (Python API only; it travels to the workers)."""

    name: str
    n: int | None = None
    data: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def from_dict(cls, data, where: str) -> DatasetSlice:
        if isinstance(data, str):
            return cls(data)
        if hasattr(data, "cases") and hasattr(data, "format"):  # a Dataset object
            return cls(data.name, None, data)
        if not isinstance(data, Mapping):
            raise SweepSpecError(f"sweep spec: {where} must be a dataset name or {{name, n}}, got {data!r}")
        _check_keys(data, {"name", "n", "data"}, where)
        if not isinstance(data.get("name"), str):
            raise SweepSpecError(f"sweep spec: {where}: field 'name' (a dataset name or file) is required")
        n = data.get("n")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise SweepSpecError(f"sweep spec: {where}: field 'n' must be a positive integer, got {n!r}")
        given = data.get("data")
        if given is not None and not (hasattr(given, "cases") and hasattr(given, "format")):
            raise SweepSpecError(f"sweep spec: {where}: field 'data' must be a loaded Dataset (load_dataset(...), from "
                                 f"Python), got {given!r:.60}; in a grid file name the dataset with 'name'")
        return cls(data["name"], n, given)

    def to_dict(self) -> dict:
        return {"name": self.name, "n": self.n}


@dataclass(frozen=True)
class SweepSpec:
    """A validated-in-shape grid (names are checked against the registries when the grid is
    expanded: :func:`~interp_edit.sweep.cells.expand`).

    >>> spec = SweepSpec.from_dict({"models": ["toyworld"],
    ...                             "editors": [{"method": "rome", "grid": {"layer": [0, 1]}}],
    ...                             "datasets": [{"name": "toyworld-counterfact", "n": 2}]})
    >>> spec.editors[0].method, spec.datasets[0].n, spec.modes
    ('rome', 2, ('independent',))
    >>> spec.to_dict()["editors"]
    [{'method': 'rome', 'grid': {'layer': [0, 1]}, 'config': {}}]
    """

    models: tuple[str, ...]
    editors: tuple[EditorGrid, ...]
    datasets: tuple[DatasetSlice, ...]
    seeds: tuple[int, ...] = (0,)
    modes: tuple[str, ...] = ("independent",)
    batch_size: int = 1
    eval_every: int = 1
    unrelated: int = 100
    fluency: bool = True
    max_new_tokens: int = 50
    threads: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping) -> SweepSpec:
        if isinstance(data, SweepSpec):
            return data
        if not isinstance(data, Mapping):
            raise SweepSpecError(f"sweep spec: expected a mapping, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        _check_keys(data, names, "the spec")
        for axis in ("models", "editors", "datasets"):
            if axis not in data:
                raise SweepSpecError(f"sweep spec: axis {axis!r} is required")
        values = {}
        for axis in ("models", "editors", "datasets", "seeds", "modes"):
            if axis not in data:
                continue
            items = data[axis]
            if isinstance(items, (str, int, Mapping)) or hasattr(items, "cases"):
                items = [items]
            if not isinstance(items, (list, tuple)):
                raise SweepSpecError(f"sweep spec: axis {axis!r} must be a list, got {items!r}")
            if not items:
                raise SweepSpecError(f"sweep spec: axis {axis!r} is empty")
            values[axis] = tuple(items)
        editors = tuple(e if isinstance(e, EditorGrid) else EditorGrid.from_dict(_mapping(e, f"editors[{i}]"), f"editors[{i}]")
                        for i, e in enumerate(values["editors"]))
        datasets = tuple(d if isinstance(d, DatasetSlice) else DatasetSlice.from_dict(d, f"datasets[{i}]")
                         for i, d in enumerate(values["datasets"]))
        for i, model in enumerate(values["models"]):
            if not isinstance(model, str) or not model:
                raise SweepSpecError(f"sweep spec: models[{i}] must be a model name or folder, got {model!r}")
        for i, seed in enumerate(values.get("seeds", (0,))):
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise SweepSpecError(f"sweep spec: seeds[{i}] must be an integer, got {seed!r}")
        for i, mode in enumerate(values.get("modes", ("independent",))):
            if mode not in MODES:
                raise SweepSpecError(f"sweep spec: modes[{i}] is {mode!r}; modes: {list(MODES)}")
        scalars = {k: data[k] for k in ("batch_size", "eval_every", "unrelated", "fluency", "max_new_tokens", "threads")
                   if k in data}
        for key in ("batch_size", "eval_every", "max_new_tokens", "threads"):
            value = scalars.get(key, 1)
            if key == "threads" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SweepSpecError(f"sweep spec: field {key!r} must be an integer >= 1, got {value!r}")
        unrelated = scalars.get("unrelated", 0)
        if not isinstance(unrelated, int) or isinstance(unrelated, bool) or unrelated < 0:
            raise SweepSpecError(f"sweep spec: field 'unrelated' must be an integer >= 0, got {unrelated!r}")
        if not isinstance(scalars.get("fluency", True), bool):
            raise SweepSpecError(f"sweep spec: field 'fluency' must be true or false, got {scalars['fluency']!r}")
        return cls(models=tuple(values["models"]), editors=editors, datasets=datasets,
                   seeds=tuple(values.get("seeds", (0,))), modes=tuple(values.get("modes", ("independent",))), **scalars)

    def to_dict(self) -> dict:
        return {"models": list(self.models), "editors": [e.to_dict() for e in self.editors],
                "datasets": [d.to_dict() for d in self.datasets], "seeds": list(self.seeds), "modes": list(self.modes),
                "batch_size": self.batch_size, "eval_every": self.eval_every, "unrelated": self.unrelated,
                "fluency": self.fluency, "max_new_tokens": self.max_new_tokens, "threads": self.threads}


def _mapping(value, where: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise SweepSpecError(f"sweep spec: {where} must be a mapping with 'method' (and 'grid', 'config'), got {value!r}")
    return value


def _check_keys(data: Mapping, allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed, key=repr)  # any keys, not only strings (Python dicts)
    if unknown:
        raise SweepSpecError(f"sweep spec: {where} has unknown field(s) {unknown}; fields: {sorted(allowed)}")


def load_spec(source: str | Path | Mapping | SweepSpec) -> SweepSpec:
    """A :class:`SweepSpec` from a dict, a ``.json`` file or a ``.yaml`` / ``.yml`` file."""
    if isinstance(source, (SweepSpec, Mapping)):
        return SweepSpec.from_dict(source)
    if not isinstance(source, (str, os.PathLike)):
        raise SweepSpecError(f"sweep spec: expected a mapping or a .json / .yaml file, got {source!r} "
                             f"({type(source).__name__})")
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as err:  # ValueError: not UTF-8 text, or a NUL in the path
        raise SweepSpecError(f"sweep spec {path}: cannot read: {err}") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise SweepSpecError(f"sweep spec {path}: not YAML: {err}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SweepSpecError(f"sweep spec {path}: not JSON: {err}") from None
    return SweepSpec.from_dict(data)
