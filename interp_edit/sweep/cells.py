"""A sweep's cells: one :func:`~interp_edit.evaluation.run_experiment` each, and the checks
every cell passes before any of them runs."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from interp_edit.errors import InterpEditError, SweepSpecError
from interp_edit.sweep.spec import SweepSpec, _jsonable

#: the subfolder of a sweep's folder holding one folder per cell
CELLS_DIR = "cells"


@dataclass(frozen=True)
class Cell:
    """One model, editor config, dataset slice, seed and mode. ``config`` holds the editor's
    config fields (fixed and swept), ``swept`` the names of the swept ones."""

    model: str
    method: str
    config: tuple[tuple[str, Any], ...]
    dataset: str
    n: int | None
    seed: int
    sequential: bool
    batch_size: int = 1
    eval_every: int = 1
    unrelated: int = 100
    fluency: bool = True
    max_new_tokens: int = 50
    threads: int | None = None
    swept: tuple[str, ...] = ()
    #: an in-memory dataset (``None``: load ``dataset`` by name or path)
    data: Any = field(default=None, compare=False, repr=False)
    #: fingerprint of ``data``'s cases (part of the cell's identity when ``data`` is given)
    data_key: str = ""

    @property
    def config_dict(self) -> dict:
        return {k: _jsonable(v) for k, v in self.config}

    @property
    def mode(self) -> str:
        return "sequential" if self.sequential else "independent"

    @property
    def label(self) -> str:
        """A short readable description: ``rome layer=1 · toyworld-counterfact n=3 · seed 0 · independent``."""
        swept = " ".join(f"{k}={_short(v)}" for k, v in self.config if k in self.swept)
        n = f" n={self.n}" if self.n is not None else ""
        return f"{self.method}{' ' + swept if swept else ''} · {self.dataset}{n} · seed {self.seed} · {self.mode} · {self.model}"

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "data"}
        out["config"], out["swept"] = self.config_dict, list(self.swept)
        return out

    @property
    def cell_id(self) -> str:
        """A stable folder name: readable parts and a hash of everything that defines the cell."""
        digest = hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
        swept = "-".join(f"{k}{_short(v)}" for k, v in self.config if k in self.swept)
        slug = re.sub(r"[^A-Za-z0-9.=_-]+", "_", f"{self.method}-{swept}-{Path(self.dataset).stem}-s{self.seed}-{self.mode[:3]}")
        return f"{slug[:80]}-{digest}"

    def folder(self, root: str | Path) -> Path:
        return Path(root) / CELLS_DIR / self.cell_id


def _short(value) -> str:
    if isinstance(value, tuple):
        return ",".join(_short(v) for v in value)
    return str(value)


def _data_key(data, name: str = "") -> str:
    """What tells two runs' data apart beyond the dataset's name: an in-memory dataset's format
    and case ids, or a dataset file's contents (a file rewritten under the same name is other
    data, so its cells are not taken as finished); empty for a built-in dataset."""
    if data is None:
        path = Path(name)
        if name and path.is_file():
            return "file:" + hashlib.sha1(path.read_bytes()).hexdigest()[:10]
        return ""
    ids = json.dumps([c.case_id for c in data.cases])
    convention = ":answer" if getattr(data, "zsre_target", None) == "answer" else ""  # zsRE written as ROME does
    return hashlib.sha1(f"{data.format}{convention}:{ids}".encode()).hexdigest()[:10]


def expand(spec: SweepSpec) -> list[Cell]:
    """Every cell of the grid, in a fixed order (models, editors, grid values, datasets, seeds, modes)."""
    cells = []
    data_keys = [_data_key(data.data, data.name) for data in spec.datasets]  # a file is read once, not once per cell
    for model, editor in itertools.product(spec.models, spec.editors):
        keys = [k for k, _ in editor.grid]
        for values in itertools.product(*(vs for _, vs in editor.grid)):
            config = dict(editor.config) | dict(zip(keys, values, strict=True))
            for (data, data_key), seed, mode in itertools.product(zip(spec.datasets, data_keys, strict=True),
                                                                  spec.seeds, spec.modes):
                cells.append(Cell(model, editor.method, tuple(config.items()), data.name, data.n, seed,
                                  mode == "sequential", spec.batch_size, spec.eval_every, spec.unrelated, spec.fluency,
                                  spec.max_new_tokens, spec.threads, tuple(keys), data.data, data_key))
    return cells


class _ModelShape:
    """What config checks need of a model without loading its weights: its config (name, depth,
    widths, context), no tokenizer."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg


def _model_shape(name: str, models: dict) -> _ModelShape | None:
    """The model's config (``None`` when only loading it would tell); an unknown name
    raises ``ValueError``."""
    from interp_edit.adapter import BUILTIN_MODELS, CONFIG_FILE

    if name in models:
        return _ModelShape(models[name].cfg)
    folder = BUILTIN_MODELS.get(name, Path(name))
    if folder.is_dir():
        config_file = folder / CONFIG_FILE
        if not config_file.is_file():
            raise ValueError(f"folder {str(folder)!r} has no {CONFIG_FILE}")
        config = json.loads(config_file.read_text())
        if "model" in config:  # an interp_edit checkpoint
            return _ModelShape(SimpleNamespace(**{"model_name": name, **config["model"]}))
        return None  # a Hugging Face folder: converted when loaded
    from interp_edit.adapter.loading import hub_name_loadable

    if not hub_name_loadable(name):
        raise ValueError(f"unknown model {name!r}: not a built-in model ({sorted(BUILTIN_MODELS)}), "
                         "a local folder or a TransformerLens model name")
    return None


def _check_dataset(cell: Cell, sizes: dict[str, int]) -> None:
    """``cell``'s dataset exists, a file's records are valid (read once per file: ``sizes``
    caches its number of cases), and ``n`` is no more than the cases it has."""
    from interp_edit.data import builtin_datasets, load_dataset
    from interp_edit.errors import DatasetError

    if cell.data is not None:
        size = len(cell.data)
    elif cell.dataset in builtin_datasets() or cell.dataset.startswith("hf:"):
        return  # a built-in dataset's size depends on the model's world; the hub is read when the cell runs
    elif Path(cell.dataset).is_file():
        if cell.dataset not in sizes:
            try:
                sizes[cell.dataset] = len(load_dataset(cell.dataset))
            except DatasetError as err:  # a bad record would fail every cell of this dataset
                raise ValueError(str(err)) from None
        size = sizes[cell.dataset]
    else:
        raise ValueError(f"unknown dataset {cell.dataset!r}: not a built-in dataset ({sorted(builtin_datasets())}) "
                         "nor an existing file")
    if cell.n is not None and cell.n > size:
        raise ValueError(f"n={cell.n} but the dataset has {size} cases")


def _check_config(cell: Cell, shape: _ModelShape | None) -> tuple[str, str] | None:
    """(field, problem) of the first bad config field of ``cell``, or ``None``."""
    from interp_edit.editing.config import check_against_model, preset_config
    from interp_edit.editing.registry import get_editor

    config_class = get_editor(cell.method).config_class
    names = {f.name for f in dataclasses.fields(config_class)}
    for key, _ in cell.config:
        if key not in names:
            return f"config.{key}", f"{config_class.__name__} has no field {key!r}; fields: {sorted(names)}"
    overrides = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cell.config_dict.items()}
    try:
        if shape is None:
            config = config_class(**overrides)
            config.validate()
        else:
            config = preset_config(config_class, shape, overrides)
            check_against_model(config, shape)
    except (InterpEditError, TypeError, ValueError) as err:
        bad = next((k for k, _ in cell.config if repr(k) in str(err)), None)
        return (f"config.{bad}" if bad else "config"), str(err)
    return None


def validate_cells(cells: list[Cell], models: dict | None = None) -> None:
    """Raise :class:`SweepSpecError` naming the first bad cell and field: an unknown model,
    editor, config field (or a value its config rejects, a layer out of range) or dataset."""
    from interp_edit.editing.registry import editors

    known = editors()
    shapes: dict[str, _ModelShape | None] = {}
    sizes: dict[str, int] = {}
    for index, cell in enumerate(cells):
        where = f"sweep cell {index} ({cell.label})"
        if cell.model not in shapes:
            try:
                shapes[cell.model] = _model_shape(cell.model, models or {})
            except ValueError as err:
                raise SweepSpecError(f"{where}: field 'model': {err}") from None
        if cell.method not in known:
            raise SweepSpecError(f"{where}: field 'method': unknown editing method {cell.method!r}; known: {sorted(known)}")
        problem = _check_config(cell, shapes[cell.model])
        if problem is not None:
            raise SweepSpecError(f"{where}: field {problem[0]!r}: {problem[1]}")
        try:
            _check_dataset(cell, sizes)
        except ValueError as err:
            raise SweepSpecError(f"{where}: field 'dataset': {err}") from None
