"""Lifelong editing on the toy world (issue 31): every CounterFact record of
``toyworld-counterfact`` (1,624) edited one batch after another (batches of 1, 10 or 100), the
edits kept, with ROME, MEMIT, AlphaEdit, EMMET, UltraEdit, WISE and GRACE at their toy presets.

The sequential protocol is :mod:`sequential_ordering`'s (its :class:`SequentialEditor` carries
AlphaEdit's projection, UltraEdit's :class:`~interp_edit.editing.UltraEditState` and WISE's side
memory across batches; GRACE stacks one codebook per batch). The cases are a seeded shuffle of
the data set, the same order for every method. After the first batch and after the batches that
reach 10, 100, 1,000 edits and the last one (checkpoints) it records the efficacy over every case
edited so far and the retention of the first batch (its efficacy now); at the end, efficacy,
generalisation (paraphrase), specificity (neighbourhood) over every edited case, fluency
(generation entropy) on the first ``--fluency-cases`` of them, the first batch's scores right
after its own edit and at the end, and the time per edit (editing only, checkpoints' scoring
excluded; wall and CPU seconds of this process, one thread by default). All scores by :mod:`interp_edit.evaluation.cases` (teacher forced).

``--time-budget S`` stops a run after the first batch that ends past S seconds (editing and
checkpoints together); the JSON then says ``stopped_by_time_budget`` and ``edited_cases``.
One JSON file per method and batch size: ``benchmarks/results/lifelong/<method>_b<batch>.json``
(so runs can be made one process at a time). ``--plot`` draws efficacy and retention against
the number of edits from those files (``docs/figures/lifelong.png``; ``.html`` where kaleido is
not installed); ``--table``
prints the README's Markdown table from them; ``--unedited`` scores the unedited model on the
same cases (``unedited.json``). Usage:
    .venv/bin/python benchmarks/lifelong.py --methods rome,memit --batch-sizes 100 [--n N]
        [--time-budget S] [--config '{"wise": {"save_freq": 1624}}'] [--out DIR]
    .venv/bin/python benchmarks/lifelong.py --plot [--out DIR] [--figure docs/figures/lifelong]
    .venv/bin/python benchmarks/lifelong.py --table [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from sequential_ordering import HEAD, SequentialEditor  # noqa: E402

from interp_edit.evaluation.cases import aggregate, evaluate_cases  # noqa: E402

METHODS = ("rome", "memit", "alphaedit", "emmet", "ultraedit", "wise", "grace")
NAMES = {"rome": "ROME", "memit": "MEMIT", "alphaedit": "AlphaEdit", "emmet": "EMMET", "ultraedit": "UltraEdit",
         "wise": "WISE", "grace": "GRACE"}
CHECKPOINTS = (10, 100, 1000)
RESULTS = Path(__file__).parent / "results" / "lifelong"
FIGURE = Path(__file__).parents[1] / "docs" / "figures" / "lifelong"


def result_path(out: Path, method: str, batch_size: int) -> Path:
    return Path(out) / f"{method}_b{batch_size}.json"


def run(model, method: str, cases, batch_size: int, config: dict, *, fluency_cases: int = 100,
        time_budget: float | None = None, progress: bool = True) -> dict:
    """Edit ``cases`` in batches of ``batch_size`` with ``method``, kept one after another; the
    model is left as it was. Returns the record written to the JSON file."""
    batches = [cases[i : i + batch_size] for i in range(0, len(cases), batch_size)]
    sequence = SequentialEditor(model, method, config)
    out: dict = {"method": method, "batch_size": batch_size, "requested_cases": len(cases), "config": config,
                 "time_budget": time_budget, "checkpoints": []}
    edit_seconds, edit_cpu, done, stopped, rows = 0.0, 0.0, 0, False, None
    start = time.perf_counter()
    try:
        for b, batch in enumerate(batches):
            t, cpu = time.perf_counter(), time.process_time()
            sequence.edit(batch)
            edit_seconds += time.perf_counter() - t
            edit_cpu += time.process_time() - cpu
            done, edited = b + 1, (b + 1) * batch_size if b + 1 < len(batches) else len(cases)
            last = b + 1 == len(batches)
            over = time_budget is not None and time.perf_counter() - start > time_budget
            if b == 0:
                first = aggregate(evaluate_cases(model, batch))
                out.update({f"first_batch_after_own_edit_{k}": first[k] for k in HEAD[:3]})
            if b == 0 or last or over or any(edited - len(batch) < c <= edited for c in CHECKPOINTS):
                rows = evaluate_cases(model, [c for bb in batches[:done] for c in bb])
                first_ids = {c.case_id for c in batches[0]}
                out["checkpoints"].append({
                    "edits": edited, "efficacy_score": aggregate(rows)["efficacy_score"],
                    "first_batch_efficacy_score": aggregate([r for r in rows if r["case_id"] in first_ids])["efficacy_score"],
                    "edit_seconds": edit_seconds, "edit_cpu_seconds": edit_cpu})
                if progress:
                    print(f"{method} b{batch_size}: {edited} edits, efficacy {out['checkpoints'][-1]['efficacy_score']:.3f}, "
                          f"first batch {out['checkpoints'][-1]['first_batch_efficacy_score']:.3f}, "
                          f"{edit_seconds:.0f} s editing, {time.perf_counter() - start:.0f} s", flush=True)
            if over and not last:
                stopped = True
                break
        edited_cases = [c for bb in batches[:done] for c in bb]
        out.update({"edited_cases": len(edited_cases), "stopped_by_time_budget": stopped, "edit_seconds": edit_seconds,
                    "seconds_per_edit": edit_seconds / len(edited_cases),
                    "edit_cpu_seconds": edit_cpu, "cpu_seconds_per_edit": edit_cpu / len(edited_cases)})
        if rows is None or len(rows) != len(edited_cases):  # else: the last checkpoint scored them all
            rows = evaluate_cases(model, edited_cases)
        final = aggregate(rows)
        out.update({k: final[k] for k in HEAD[:3]})
        out["fluency"] = aggregate(evaluate_cases(model, edited_cases[:fluency_cases], fluency=True))["fluency"]
        out["fluency_cases"] = min(fluency_cases, len(edited_cases))
        first_ids = {c.case_id for c in batches[0]}
        first = aggregate([r for r in rows if r["case_id"] in first_ids])
        out.update({f"first_batch_at_end_{k}": first[k] for k in HEAD[:3]})
    finally:
        sequence.undo()
    out["seconds"] = time.perf_counter() - start
    return out


def load_results(out: Path = RESULTS) -> dict[tuple[str, int], dict]:
    """Every result file in ``out``, by (method, batch size)."""
    found = {}
    for path in sorted(Path(out).glob("*_b*.json")):
        res = json.loads(path.read_text())
        found[(res["method"], res["batch_size"])] = res
    return found


def load_unedited(out: Path = RESULTS) -> dict | None:
    """The unedited model's scores on the same cases (``--unedited``), if measured."""
    path = Path(out) / "unedited.json"
    return json.loads(path.read_text()) if path.is_file() else None


def table(results: dict[tuple[str, int], dict], unedited: dict | None = None) -> str:
    """The README's Markdown table: one row per method and batch size, in METHODS order, after
    the unedited model's row when ``unedited`` is given."""
    lines = ["| editor | batch | edits | efficacy | paraphrase | neighbourhood | fluency | first batch kept | CPU s / edit |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    if unedited is not None:
        lines.append(f"| unedited | – | 0 | {unedited['efficacy_score']:.2f} | {unedited['paraphrase_score']:.2f} | "
                     f"{unedited['neighborhood_score']:.2f} | {unedited['fluency']:.2f} | – | – |")
    order = {m: i for i, m in enumerate(METHODS)}
    for (method, batch), res in sorted(results.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1])):
        edits = f"{res['edited_cases']:,}"
        if res["stopped_by_time_budget"]:
            edits += f" of {res['requested_cases']:,} (time budget)"
        lines.append(f"| {NAMES.get(method, method)} | {batch} | {edits} | {res['efficacy_score']:.2f} | "
                     f"{res['paraphrase_score']:.2f} | {res['neighborhood_score']:.2f} | {res['fluency']:.2f} | "
                     f"{res['first_batch_at_end_efficacy_score']:.2f} | {res['cpu_seconds_per_edit']:.2g} |")
    return "\n".join(lines)


def figure(results: dict[tuple[str, int], dict]):
    """Efficacy (over every edit so far) and retention of the first batch against the number of
    edits, one line per method and batch size (log x axis)."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    from interp_edit.viz.layout import fit_layout

    fig = make_subplots(rows=1, cols=2, subplot_titles=("efficacy over every edit so far", "first batch kept (efficacy)"),
                        shared_yaxes=True)
    colours = {m: qualitative.Plotly[i % len(qualitative.Plotly)] for i, m in enumerate(METHODS)}
    dashes = {1: "dot", 10: "dash", 100: "solid"}
    order = {m: i for i, m in enumerate(METHODS)}
    for (method, batch), res in sorted(results.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1])):
        xs = [c["edits"] for c in res["checkpoints"]]
        name = f"{NAMES.get(method, method)}, batch {batch}"
        for col, key in ((1, "efficacy_score"), (2, "first_batch_efficacy_score")):
            fig.add_trace(go.Scatter(x=xs, y=[c[key] for c in res["checkpoints"]], mode="lines+markers", name=name,
                                     legendgroup=name, showlegend=col == 1,
                                     line={"color": colours.get(method), "dash": dashes.get(batch, "solid")}), row=1, col=col)
    fig.update_xaxes(type="log", title_text="edits kept")
    fig.update_yaxes(range=[0, 1.02], title_text="efficacy", row=1, col=1)
    fig.update_layout(title="Lifelong editing on the toy world (toyworld-counterfact)", height=820,
                      legend={"orientation": "h", "x": 0, "y": -0.16, "yanchor": "top"}, margin={"b": 260})
    return fit_layout(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--batch-sizes", default="100")
    parser.add_argument("--n", type=int, default=None, help="cases to edit (default: every case of the data set)")
    parser.add_argument("--config", default="{}", help="JSON object: method -> config fields")
    parser.add_argument("--fluency-cases", type=int, default=100)
    parser.add_argument("--time-budget", type=float, default=None, help="seconds per run (method x batch size)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--plot", action="store_true", help="draw the figure from the result files and exit")
    parser.add_argument("--figure", default=str(FIGURE), help="the figure's path (.png; .html without kaleido)")
    parser.add_argument("--table", action="store_true", help="print the Markdown table of the result files and exit")
    parser.add_argument("--unedited", action="store_true",
                        help="score the unedited model on the cases (unedited.json in --out) and exit")
    args = parser.parse_args()
    if args.plot or args.table:
        results = load_results(Path(args.out))
        if args.table:
            print(table(results, load_unedited(Path(args.out))))
        if args.plot:
            fig = figure(results)
            try:
                import kaleido  # noqa: F401
            except ImportError:  # no static export: the interactive page
                path = Path(args.figure).with_suffix(".html")
                path.parent.mkdir(parents=True, exist_ok=True)
                fig.write_html(str(path), include_plotlyjs="cdn")
            else:
                path = Path(args.figure).with_suffix(".png")
                path.parent.mkdir(parents=True, exist_ok=True)
                fig.write_image(str(path), scale=2, engine="kaleido")
            print(path)
        return
    torch.set_num_threads(args.threads)
    from interp_edit import load_model
    from interp_edit.atomic_files import atomic_path
    from interp_edit.data import load_dataset

    model = load_model("toyworld")
    data = load_dataset("toyworld-counterfact", tokenizer=model.tokenizer, model=model)
    order = list(range(len(data)))
    random.Random(args.seed).shuffle(order)
    cases = [data[i] for i in order[: args.n]]
    configs = json.loads(args.config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.unedited:
        rows = aggregate(evaluate_cases(model, cases))
        res = {k: rows[k] for k in HEAD[:3]}
        res["fluency"] = aggregate(evaluate_cases(model, cases[: args.fluency_cases], fluency=True))["fluency"]
        res.update({"cases": len(cases), "fluency_cases": min(args.fluency_cases, len(cases)), "seed": args.seed,
                    "dataset": "toyworld-counterfact"})
        with atomic_path(out / "unedited.json") as tmp:
            tmp.write_text(json.dumps(res, indent=1) + "\n")
        print(" ".join(f"{k}={v}" for k, v in res.items()), flush=True)
        return
    for method in [m for m in args.methods.split(",") if m]:
        for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
            res = run(model, method, cases, batch_size, configs.get(method, {}), fluency_cases=args.fluency_cases,
                      time_budget=args.time_budget)
            res.update({"seed": args.seed, "threads": args.threads, "dataset": "toyworld-counterfact",
                        "dataset_size": len(data)})
            path = result_path(out, method, batch_size)
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(res, indent=1) + "\n")
            print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()
                           if k not in ("checkpoints", "config")), flush=True)
            print(path, flush=True)


if __name__ == "__main__":
    main()
