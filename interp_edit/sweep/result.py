"""``SweepResult``: what :func:`~interp_edit.sweep.run_sweep` returns — every cell's result, the
merged summary table and figure, and the cells that failed or needed retries."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from interp_edit.atomic_files import write_text_atomic
from interp_edit.evaluation.experiment import WARNING_MARK, ExperimentResult, warning_lines

#: the metrics the merged table shows by default (those a cell lacks are blank)
TABLE_METRICS = ("efficacy_score", "paraphrase_score", "neighborhood_score", "multihop_accuracy",
                 "unrelated_accuracy")


@dataclass
class SweepResult:
    """What :func:`run_sweep` returns: the spec, its cells, the finished cells' results
    (``results``: cell id -> :meth:`ExperimentResult.to_dict`) and the cells that failed.

    >>> spec = {"models": ["toyworld"], "editors": [{"method": "rome", "grid": {"layer": [0, 1]}}],
    ...         "datasets": [{"name": "toyworld-counterfact", "n": 1}], "unrelated": 2, "fluency": False}
    >>> sweep = run_sweep(spec, "sweep", models={"toyworld": model}, progress=False)
    >>> len(sweep.cells), len(sweep.results), sweep.failed
    (2, 2, {})
    >>> rows = sweep.rows()                       # one dict per finished cell
    >>> fig = sweep.plot()
    """

    spec: object
    cells: list
    #: cell id -> :meth:`ExperimentResult.to_dict` of the finished cells
    results: dict[str, dict]
    #: cell id -> the error of every attempt, for cells that did not finish
    failed: dict[str, list[str]] = field(default_factory=dict)
    #: cell id -> errors of failed attempts of cells that finished on a retry
    retried: dict[str, list[str]] = field(default_factory=dict)
    #: seconds this call took
    wall_seconds: float = math.nan

    def experiment(self, cell) -> ExperimentResult:
        """The cell's :class:`~interp_edit.evaluation.ExperimentResult` (a cell or its index)."""
        cell = self.cells[cell] if isinstance(cell, int) else cell
        data = self.results[cell.cell_id]
        return ExperimentResult(data["settings"], data["baseline"], data["batches"], data["wall_seconds"])

    def rows(self) -> list[dict]:
        """One dict per cell: what defines it (model, method, swept config, dataset, n, seed,
        mode), ``status`` (``ok`` / ``failed``) and, when finished, its summary metrics."""
        out = []
        for index, cell in enumerate(self.cells):
            row = {"cell": index, "cell_id": cell.cell_id, "model": cell.model, "method": cell.method,
                   "config": " ".join(f"{k}={v}" for k, v in cell.config_dict.items() if k in cell.swept),
                   "dataset": cell.dataset, "n": cell.n, "seed": cell.seed, "mode": cell.mode}
            if cell.cell_id in self.results:
                summary = self.experiment(cell).summary()
                row |= {"status": "ok", "attempts": 1 + len(self.retried.get(cell.cell_id, []))}
                row |= {k: v for k, v in summary.items() if k not in row and k not in ("batch_size", "sequential")}
            else:
                row |= {"status": "failed", "attempts": len(self.failed.get(cell.cell_id, [])),
                        "error": (self.failed.get(cell.cell_id) or ["not run"])[-1].splitlines()[-1]}
            out.append(row)
        return out

    def table(self, metrics: tuple[str, ...] = TABLE_METRICS) -> str:
        """The merged summary as a Markdown table, one row per cell. A cell whose result has
        warnings (requests sharing one key) has its status marked and its warnings under the
        table, as :func:`~interp_edit.evaluation.comparison_table` does."""
        rows = self.rows()
        metrics = tuple(m for m in metrics if any(m in r for r in rows))
        head = ["cell", "model", "method", "config", "dataset", "seed", "mode", "status", *metrics, "wall s"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            values = [str(r["cell"]), r["model"], r["method"], r["config"] or "-", f"{r['dataset']}" +
                      (f" (n={r['n']})" if r["n"] is not None else ""), str(r["seed"]), r["mode"],
                      r["status"] + (WARNING_MARK if r.get("warnings") else "")]
            values += [f"{r[m]:.3f}" if isinstance(r.get(m), float) and not math.isnan(r[m]) else "" for m in metrics]
            values.append(f"{r['wall_seconds']:.1f}" if "wall_seconds" in r else "")
            lines.append("| " + " | ".join(values) + " |")
        labelled = [(f"cell {r['cell']} ({self.cells[r['cell']].label})", r.get("warnings", [])) for r in rows]
        return "\n".join(lines + warning_lines(labelled))

    def __str__(self) -> str:
        return self.table()

    def plot(self, metrics: tuple[str, ...] = ("efficacy_score", "paraphrase_score", "neighborhood_score")):
        """A Plotly figure: one panel per metric, one bar per finished cell (grouped by method);
        cells whose batches held requests sharing one key are marked, and the title says so.

        >>> spec = {"models": ["toyworld"], "editors": [{"method": "ft", "config": {"steps": 5}}],
        ...         "datasets": [{"name": "toyworld-counterfact", "n": 1}], "unrelated": 2, "fluency": False}
        >>> fig = run_sweep(spec, "sweep", models={"toyworld": model}, progress=False).plot(("efficacy_score",))
        """
        from interp_edit.viz.sweeps import sweep_figure

        return sweep_figure(self, metrics)

    def to_dict(self) -> dict:
        return {"spec": self.spec.to_dict(), "rows": self.rows(), "failed": self.failed, "retried": self.retried,
                "wall_seconds": self.wall_seconds}

    def save(self, path: str | Path, *, figure: bool = True) -> list[Path]:
        """``path.json`` (the merged rows and failures), ``path.md`` (the table) and, with
        ``figure``, ``path.html`` / ``path.png``."""
        from interp_edit.viz.export import save_figure

        base = Path(path)
        if base.suffix in (".json", ".md", ".html", ".png"):
            base = base.with_suffix("")
        base.parent.mkdir(parents=True, exist_ok=True)
        out = [base.with_suffix(".json"), base.with_suffix(".md")]
        write_text_atomic(out[0], json.dumps(self.to_dict(), indent=1, default=str))
        write_text_atomic(out[1], self.table() + "\n")
        if figure and self.results:
            out += list(save_figure(self.plot(), base))
        return out
