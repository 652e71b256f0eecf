"""Experiment sweeps: a grid (models × editors with config grids × dataset slices × seeds ×
modes) expanded into cells, each a resumable :func:`~interp_edit.evaluation.run_experiment`,
run in-process, in local processes or on Ray, merged into one table and figure. This layer
sits above evaluation (it imports analysis, editing and evaluation; nothing imports it)."""

from interp_edit.sweep.cells import Cell, expand, validate_cells
from interp_edit.sweep.executors import EXECUTORS, InProcessExecutor, ProcessExecutor, RayExecutor, make_executor
from interp_edit.sweep.localization import LocalizationEditingResult, localization_vs_editing
from interp_edit.sweep.result import SweepResult
from interp_edit.sweep.runner import run_cell, run_sweep
from interp_edit.sweep.spec import DatasetSlice, EditorGrid, SweepSpec, load_spec

__all__ = [
    "EXECUTORS",
    "Cell",
    "DatasetSlice",
    "EditorGrid",
    "InProcessExecutor",
    "LocalizationEditingResult",
    "ProcessExecutor",
    "RayExecutor",
    "SweepResult",
    "SweepSpec",
    "expand",
    "load_spec",
    "localization_vs_editing",
    "make_executor",
    "run_cell",
    "run_sweep",
    "validate_cells",
]
