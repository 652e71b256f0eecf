"""The teacher-forced vs generation gap and the ripple metrics of editors as edits accumulate:
"The Mirage of Model Editing" (ACL 2025) and RippleEdits (TACL 2024) on the toy world, in one
call.

:func:`gap_ripple_study` runs, for each method (its toy preset), six experiments
(:func:`~interp_edit.evaluation.run_experiment`, ``protocol="both"``, batches of 1, seed 0):
on ``toyworld-counterfact`` and on ``toyworld-ripple``, 100 single edits each on the unedited
model (independent mode: the "1 edit" point, a mean over 100 cases), then 100 and 1,000
sequential edits (every edit kept; all cases edited so far scored at the end). The ripple data
set has 424 cases (400 people, 24 birth cities), so its largest point is 424: one person's birth
city moved twice in one sequence would undo the first move's tests.

The gap is teacher-forced efficacy (the new object outscores the old one) minus generation
efficacy (greedy decoding emits the new object first), and the same for paraphrases. The
published run ships with the package (:meth:`GapRippleStudy.published`, the files in
``interp_edit/evaluation/published/gap_ripple``), made by ``benchmarks/gap_ripple_study.py``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from interp_edit.errors import InvalidArgumentError

#: (data set, mode, n): the study's experiments, in order
STUDY_RUNS = (
    ("toyworld-counterfact", "independent", 100),
    ("toyworld-counterfact", "sequential", 100),
    ("toyworld-counterfact", "sequential", 1000),
    ("toyworld-ripple", "independent", 100),
    ("toyworld-ripple", "sequential", 100),
    ("toyworld-ripple", "sequential", 424),
)
#: the experiment settings every run shares
STUDY_SETTINGS = dict(batch_size=1, seed=0, unrelated=100, fluency=False, protocol="both")
#: the table's columns: (heading, metric key or a function of the metrics)
GAP_COLUMNS = ("efficacy_score", "gen_efficacy_exact", "paraphrase_score", "gen_paraphrase_exact",
               "neighborhood_score", "gen_neighborhood_exact")
RIPPLE_COLUMNS = ("efficacy_score", "gen_efficacy_exact", "compositionality_I", "compositionality_II",
                  "relation_specificity")


@dataclass
class GapRippleStudy:
    """Per method, its runs: ``{"dataset", "mode", "n", "metrics", "baseline",
    "ripple_known_tests", "wall_s"}`` each (see the module docstring).

    >>> run = {"dataset": "toyworld-counterfact", "mode": "independent", "n": 100,
    ...        "metrics": {"efficacy_score": 0.97, "gen_efficacy_exact": 0.88}}
    >>> study = GapRippleStudy({"rome": [run]})
    >>> round(study.gap("rome", 1), 2)                     # teacher forced - generation, 1 edit
    0.09
    >>> fig = study.plot()
    """

    runs: dict[str, list[dict]]
    #: what made them (commit, threads, settings)
    settings: dict = field(default_factory=dict)

    def point(self, method: str, dataset: str, edits: int) -> dict:
        """The final metrics of ``method`` on ``dataset`` after ``edits`` edits: the independent
        run for ``edits == 1``, else the sequential run of that length."""
        for run in self.runs.get(method, []):
            if run["dataset"] == dataset and (run["mode"] == "independent" if edits == 1
                                              else run["mode"] == "sequential" and run["n"] == edits):
                return run["metrics"]
        raise InvalidArgumentError(f"no run of {method!r} on {dataset!r} at {edits} edits; runs: {self.points()}")

    def points(self) -> list[tuple[str, str, int]]:
        """(method, data set, edits) of every run (edits 1 = the independent runs)."""
        return [(m, r["dataset"], 1 if r["mode"] == "independent" else r["n"]) for m, runs in self.runs.items() for r in runs]

    def gap(self, method: str, edits: int, part: str = "efficacy") -> float:
        """Teacher-forced minus generation (exact match) score of ``part`` (efficacy,
        paraphrase or neighborhood) on ``toyworld-counterfact`` after ``edits`` edits."""
        m = self.point(method, "toyworld-counterfact", edits)
        return m[f"{part}_score"] - m[f"gen_{part}_exact"]

    def table(self) -> list[dict]:
        """One row per (method, data set, edits) with the study's columns."""
        rows = []
        for method, dataset, edits in self.points():
            m = self.point(method, dataset, edits)
            columns = GAP_COLUMNS if dataset == "toyworld-counterfact" else RIPPLE_COLUMNS
            rows.append({"method": method, "dataset": dataset, "edits": edits, **{c: m.get(c, math.nan) for c in columns}})
        return rows

    def __repr__(self) -> str:
        from interp_edit.reprs import number

        lines = [f"GapRippleStudy({', '.join(self.runs)}; teacher-forced - generation efficacy gap on toyworld-counterfact)"]
        for method in self.runs:
            points = sorted({e for m, d, e in self.points() if m == method and d == "toyworld-counterfact"})
            lines.append(f"  {method}: " + ", ".join(f"{e} edits {number(self.gap(method, e), 3)}" for e in points))
        return "\n".join(lines)

    def plot(self):
        """Three panels against the number of edits (log scale): efficacy teacher forced
        (solid) and by generation (dashed), paraphrase the same, and the ripple kinds."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        from interp_edit.viz.layout import fit_layout  # (importing interp_edit.viz sets the Jupyter renderer)

        fig = make_subplots(rows=1, cols=3, subplot_titles=("efficacy", "paraphrase", "ripple (toyworld-ripple)"))
        palette = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
        for i, method in enumerate(self.runs):
            colour = palette[i % len(palette)]
            for col, part in ((1, "efficacy"), (2, "paraphrase")):
                edits = sorted({e for m, d, e in self.points() if m == method and d == "toyworld-counterfact"})
                for key, dash, label in ((f"{part}_score", "solid", "teacher forced"), (f"gen_{part}_exact", "dash", "generation")):
                    fig.add_trace(go.Scatter(x=edits, y=[self.point(method, "toyworld-counterfact", e).get(key, math.nan) for e in edits],
                                             name=f"{method} {label}", legendgroup=method, showlegend=col == 1,
                                             line=dict(color=colour, dash=dash), mode="lines+markers"), row=1, col=col)
            edits = sorted({e for m, d, e in self.points() if m == method and d == "toyworld-ripple"})
            for kind, symbol in (("compositionality_I", "circle"), ("compositionality_II", "square"), ("relation_specificity", "diamond")):
                fig.add_trace(go.Scatter(x=edits, y=[self.point(method, "toyworld-ripple", e).get(kind, math.nan) for e in edits],
                                         name=f"{method} {kind}", legendgroup=method, showlegend=True,
                                         line=dict(color=colour), marker=dict(symbol=symbol), mode="lines+markers"),
                              row=1, col=3)
        fig.update_xaxes(type="log", title="edits")
        fig.update_yaxes(range=[0, 1.05])
        fig.update_layout(title="Teacher forcing vs generation, and ripple effects, as edits accumulate (toy world)",
                          height=460, width=1200)
        return fit_layout(fig)

    def save(self, folder: str | Path) -> list[Path]:
        """One ``<method>.json`` per method in ``folder`` (what :meth:`load` reads)."""
        from interp_edit.atomic_files import write_text_atomic

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for method, runs in self.runs.items():
            out.append(folder / f"{method}.json")
            write_text_atomic(out[-1], json.dumps({"method": method, **self.settings, "runs": runs}, indent=1))
        return out

    @classmethod
    def published(cls) -> GapRippleStudy:
        """The published run of the study on the shipped toy model (see the module docstring)."""
        return cls.load(Path(__file__).parent / "published" / "gap_ripple")

    @classmethod
    def load(cls, folder: str | Path) -> GapRippleStudy:
        """The study saved in ``folder`` (one JSON per method)."""
        files = sorted(Path(folder).glob("*.json"))
        if not files:
            raise InvalidArgumentError(f"no study files (<method>.json) in {str(folder)!r}")
        runs, settings = {}, {}
        for path in files:
            data = json.loads(path.read_text())
            runs[data["method"]] = data["runs"]
            settings = {k: v for k, v in data.items() if k not in ("method", "runs")}
        return cls(runs, settings)


def gap_ripple_study(model, methods: Sequence[str] = ("rome", "memit", "alphaedit"), *, max_n: int | None = None,
                     config: dict[str, dict] | None = None, progress: bool = False) -> GapRippleStudy:
    """Run the study (module docstring) on ``model`` (a toy-world model). ``max_n`` caps every
    run's length (a quick look; the published points need none); ``config``: per method, its
    config fields (a dict whose keys are among ``methods``: settings of a method not run are
    refused, not ignored). Every argument, each method's config resolved against the model
    included, is checked before any compute. The model is unchanged afterwards.

    >>> study = gap_ripple_study(model, ["rome"], max_n=1, config={"rome": {"steps": 3}})
    >>> study.point("rome", "toyworld-counterfact", 1)["gen_efficacy_exact"]
    1.0
    >>> study.save("study")                                 # one JSON per method
    [PosixPath('study/rome.json')]
    """
    from interp_edit.editing.registry import check_editor_config, editors
    from interp_edit.errors import InterpEditError
    from interp_edit.evaluation.runner import run_experiment

    known = editors()
    for method in methods:
        if method not in known:
            raise InvalidArgumentError(f"methods: unknown method {method!r}; known: {sorted(known)}")
    if max_n is not None and (isinstance(max_n, bool) or not isinstance(max_n, int) or max_n < 1):
        raise InvalidArgumentError(f"max_n must be an integer >= 1, got {max_n!r}")
    if config is not None and not isinstance(config, Mapping):
        raise InvalidArgumentError(f"config must be a dict {{method: {{field: value}}}} for the methods {list(methods)}, "
                                   f"got {config!r:.80} ({type(config).__name__})")
    config = dict(config or {})
    for key in config:
        if key not in methods:
            raise InvalidArgumentError(f"config: key {key!r} is not one of the methods run {list(methods)}; "
                                       "its settings would be ignored")
    for method in methods:
        try:
            config[method] = check_editor_config(model, method, config.get(method))
        except InterpEditError as err:
            raise type(err)(f"config[{method!r}]: {err}") from None
    runs: dict[str, list[dict]] = {}
    for method in methods:
        runs[method] = []
        for dataset, mode, n in STUDY_RUNS:
            n = n if max_n is None else min(n, max_n)
            if any((r["dataset"], r["mode"], r["n"]) == (dataset, mode, n) for r in runs[method]):
                continue  # capped by max_n to a run already made
            start = time.perf_counter()
            res = run_experiment(model, dataset, method, n=n, sequential=mode == "sequential", eval_every=n,
                                 progress=progress, config=config[method], **STUDY_SETTINGS)
            runs[method].append({"dataset": dataset, "mode": mode, "n": n, "metrics": res.final_metrics(),
                                 "baseline": res.baseline, "ripple_known_tests": res.settings.get("ripple_known_tests"),
                                 "wall_s": round(time.perf_counter() - start, 1)})
    return GapRippleStudy(runs, {"settings": dict(STUDY_SETTINGS), "max_n": max_n})


__all__ = ["STUDY_RUNS", "STUDY_SETTINGS", "GapRippleStudy", "gap_ripple_study"]
