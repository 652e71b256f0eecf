"""``ExperimentResult``: what :func:`~interp_edit.evaluation.run_experiment` returns."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from interp_edit.atomic_files import write_text_atomic

#: the metrics a summary shows first, in this order (others follow)
HEADLINE = ("efficacy_score", "paraphrase_score", "neighborhood_score", "counterfact_score",
            "gen_efficacy_exact", "gen_efficacy_contains", "gen_paraphrase_exact", "gen_paraphrase_contains",
            "gen_neighborhood_exact", "gen_neighborhood_contains", "fluency", "multihop_accuracy", "efficacy_token_accuracy", "paraphrase_token_accuracy", "specificity_token_accuracy",
            "mcq_reliability", "mcq_generalisation", "mcq_locality", "mcq_portability", "option_entropy",
            "unrelated_accuracy", "unrelated_logprob_drop", "heldout_perplexity")


@dataclass
class ExperimentResult:
    """Settings, the unedited model's metrics on the edited cases (``baseline``), one entry per
    batch (``rows``: its cases right after its edit; ``checkpoint``: the metrics on all cases
    edited so far, every ``eval_every`` batches), and timings. With ``protocol="both"`` the
    teacher-forced and the generation (``gen_*``) metrics sit side by side; sequential runs
    also carry ``heldout_perplexity`` (baseline and every checkpoint). Batches whose requests
    shared one key (:attr:`key_collisions`) make the repr, table, summary and figure title carry
    a WARNING.

    >>> res = run_experiment(model, "toyworld-counterfact", "rome", n=2, unrelated=5, fluency=False, progress=False)
    >>> len(res.batches), sorted(res.final_metrics())[:2]
    (2, [...])
    >>> fig = res.plot()
    """

    settings: dict
    baseline: dict
    batches: list[dict]
    #: seconds of editing and evaluation (summed over resumed sessions)
    wall_seconds: float
    #: seconds this call took (a resumed run only did part of the work)
    session_seconds: float = math.nan
    extra: dict = field(default_factory=dict)

    @property
    def rows(self) -> list[dict]:
        """Per case: its metrics right after its own batch's edit."""
        return [row for entry in self.batches for row in entry["rows"]]

    @property
    def checkpoints(self) -> list[dict]:
        """(number of edits so far, metrics) every ``eval_every`` batches."""
        return [{"n_edited": e["n_edited"], **e["checkpoint"]} for e in self.batches if "checkpoint" in e]

    @property
    def key_collisions(self) -> dict[int, list[list[int]]]:
        """Batch index → its groups of requests (indices in the batch's requests) that shared one
        key, so the editor could not tell them apart (``edit.info["key_collisions"]``, with its
        :class:`~interp_edit.errors.KeyCollisionWarning`): at most one target per group can hold,
        and the batch's scores include the others. Empty when no batch had any (and for results
        saved before batches recorded them)."""
        return {e["batch"]: e["key_collisions"] for e in self.batches if e.get("key_collisions")}

    def warnings(self) -> list[str]:
        """What may make these results mislead (shown in the repr, table and figure title)."""
        found = self.key_collisions
        if not found:
            return []
        batches = sorted(found)
        shown = ", ".join(map(str, batches[:5])) + (", …" if len(batches) > 5 else "")
        groups = sum(len(g) for g in found.values())
        return [f"{len(batches)} of {len(self.batches)} batches (batch {shown}) held requests sharing one key "
                f"({groups} group(s), see .key_collisions): the editor cannot tell them apart, so their scores "
                "include targets that cannot all hold"]

    def final_metrics(self) -> dict:
        """Sequential runs: every edited case after the whole sequence; independent runs: each
        case right after its own edit (both: the last drift measurement)."""
        return dict(self.checkpoints[-1]) if self.checkpoints else {}

    def summary(self) -> dict:
        """Metric name → value (final metrics), plus the settings and timings."""
        metrics = {k: v for k, v in self.final_metrics().items() if k != "n_edited"}
        ordered = {k: metrics[k] for k in HEADLINE if k in metrics} | metrics
        out = {"method": self.settings["method"], "dataset": self.settings["dataset"], "n": self.settings["n"],
               "batch_size": self.settings["batch_size"], "sequential": self.settings["sequential"], **ordered,
               "edit_seconds": sum(e["edit_seconds"] for e in self.batches), "wall_seconds": self.wall_seconds}
        warnings = self.warnings()
        if warnings:  # (only then: a run without any keeps the summary it always had)
            out["warnings"] = warnings
        return out

    def table(self) -> str:
        """The summary as an aligned text table, with the unedited model's values beside."""
        summary = self.summary()
        mode = "sequential" if summary["sequential"] else "independent"
        lines = [f"{summary['method']} on {summary['dataset']}: {summary['n']} edits, {mode}, batches of {summary['batch_size']}",
                 f"{'metric':<30} {'edited':>10} {'unedited':>10}"]
        for key, value in summary.items():
            if key in ("method", "dataset", "n", "batch_size", "sequential") or not isinstance(value, (int, float)):
                continue
            before = self.baseline.get(key)
            lines.append(f"{key:<30} {value:>10.4f} {before:>10.4f}" if before is not None else f"{key:<30} {value:>10.4f} {'':>10}")
        lines += [f"WARNING: {w}" for w in self.warnings()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        from interp_edit.reprs import number, short_repr

        s = self.summary()
        metrics = [k for k in HEADLINE if k in s][:4]
        warnings = self.warnings()
        return short_repr("ExperimentResult", WARNING=repr("; ".join(warnings)) if warnings else None,
                          method=repr(s["method"]), dataset=repr(s["dataset"]), n=str(s["n"]),
                          mode=f"{'sequential' if s['sequential'] else 'independent'}/{s['batch_size']}",
                          **{k: number(s[k]) for k in metrics}, wall_seconds=number(s["wall_seconds"], 3))

    def _repr_html_(self) -> str:
        from interp_edit.reprs import html_table

        s = self.summary()
        rows = [(k, v, self.baseline.get(k, "")) for k, v in s.items()
                if k not in ("method", "dataset", "n", "batch_size", "sequential") and isinstance(v, (int, float))]
        mode = "sequential" if s["sequential"] else "independent"
        notes = "".join(f" WARNING: {w}" for w in self.warnings())
        return html_table(f"{s['method']} on {s['dataset']}: {s['n']} edits, {mode}, batches of {s['batch_size']}{notes}",
                          ("metric", "edited", "unedited"), rows)

    def plot(self, metrics: tuple[str, ...] | None = None):
        """A Plotly figure: metrics vs number of edits (and option entropy vs edits when the
        data is MCQ; and, for sequential runs, the collapse curves: held-out perplexity and
        unedited-fact accuracy vs edits).

        >>> res = run_experiment(model, "toyworld-counterfact", "ft", n=2, sequential=True,
        ...                      unrelated=5, fluency=False, progress=False, config={"steps": 5})
        >>> fig = res.plot()
        """
        from interp_edit.viz.experiments import experiment_figure

        fig = experiment_figure(self, metrics)
        found = self.key_collisions
        if found:  # the title says so too (refitted: the note takes another line)
            from interp_edit.viz.layout import fit_layout

            note = collision_note(len(found), len(self.batches), "batches")
            fig.update_layout(title_text=f"{fig.layout.title.text}<br>{note}")
            fit_layout(fig)
        return fig

    def to_dict(self) -> dict:
        return {"settings": self.settings, "baseline": self.baseline, "batches": self.batches,
                "wall_seconds": self.wall_seconds, "summary": self.summary()}

    def save(self, path: str | Path, *, figure: bool = True) -> list[Path]:
        """``path.json`` (everything) and, with ``figure``, ``path.html`` / ``path.png``."""
        from interp_edit.viz.export import save_figure

        base = Path(path)
        if base.suffix in (".json", ".html", ".png"):
            base = base.with_suffix("")
        base.parent.mkdir(parents=True, exist_ok=True)
        out = [base.with_suffix(".json")]
        write_text_atomic(out[0], json.dumps(self.to_dict(), indent=1))
        if figure:
            out += list(save_figure(self.plot(), base))
        return out

    @classmethod
    def load(cls, path: str | Path) -> ExperimentResult:
        data = json.loads(Path(path).read_text())
        return cls(data["settings"], data["baseline"], data["batches"], data["wall_seconds"])


#: what a merged table appends to the row of a result that has :meth:`ExperimentResult.warnings`
WARNING_MARK = " (WARNING)"


def collision_note(affected: int, total: int, unit: str) -> str:
    """The one-line note a figure's title carries when ``affected`` of ``total`` ``unit``
    (batches of one result, cells of a sweep) held requests sharing one key."""
    return f"WARNING: {affected} of {total} {unit} held requests sharing one key"


def warning_lines(labelled: list[tuple[str, list[str]]]) -> list[str]:
    """The lines a table merging several results ends with: ``WARNING: <label>: <warning>`` for
    each warning (:meth:`ExperimentResult.warnings`) of each ``(label, warnings)``, after an empty
    line (which ends a Markdown table); none when no result has any."""
    lines = [f"WARNING: {label}: {w}" for label, warnings in labelled for w in warnings]
    return ["", *lines] if lines else []


def comparison_table(results: list[ExperimentResult], metrics: tuple[str, ...] = (
        "efficacy_score", "paraphrase_score", "neighborhood_score", "counterfact_score", "fluency",
        "multihop_accuracy", "unrelated_accuracy")) -> str:
    """A Markdown table, one row per result: method, mode, the metrics, wall time. A result with
    warnings (requests sharing one key) has its method marked :data:`WARNING_MARK` and its
    warnings under the table (:func:`warning_lines`)."""
    head = ["method", "mode", "n", *metrics, "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    labelled = []
    for row, result in enumerate(results, 1):
        s = result.summary()
        mode = f"sequential/{s['batch_size']}" if s["sequential"] else f"independent/{s['batch_size']}"
        warnings = s.get("warnings", [])
        cells = ([s["method"] + (WARNING_MARK if warnings else ""), mode, str(s["n"])]
                 + [f"{s.get(m, math.nan):.3f}" for m in metrics] + [f"{s['wall_seconds']:.0f}"])
        lines.append("| " + " | ".join(cells) + " |")
        labelled.append((f"row {row} ({s['method']} {mode})", warnings))
    return "\n".join(lines + warning_lines(labelled))
