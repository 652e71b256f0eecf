"""AlphaEdit's sequential-editing protocol on the toy world: many CounterFact edits kept one
after another in batches (AlphaEdit Table 1: 2,000 edits, batches of 100), then efficacy /
generalisation (paraphrase) / specificity (neighbourhood) / fluency over every edited case,
the retention of the first batch (its scores right after its edit and at the end), and drift on
unrelated facts. AlphaEdit's null-space dimension per layer is printed.

Each method gets the same cases in the same order (a seeded shuffle of the dataset) and its
toy preset (``--config`` overrides, a JSON object applied to every method). What a method
carries from batch to batch is :class:`SequentialEditor`'s (AlphaEdit's projection, UltraEdit's
state, WISE's side memory; ``benchmarks/lifelong.py`` uses it too). ``--model DIR``
runs on another toy-world checkpoint (its own world's dataset). ``--time-budget S`` stops a
method's editing after the first batch that ends past S seconds and scores the batches edited so
far (``<method>_edited_cases`` says how many). ``--spectrum`` prints the eigenvalues of the key
covariance C at AlphaEdit's layers (smallest, largest, how many lie below 2e-2 and below 1e-6 ×
the largest). Prints ``key=value`` lines and a Markdown table. Usage:
    .venv/bin/python benchmarks/sequential_ordering.py [--n 1500] [--batch-size 100] [--methods alphaedit,memit,rome]
        [--model toyworld|DIR] [--time-budget S] [--spectrum]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from interp_edit import load_model
from interp_edit.data import load_dataset
from interp_edit.editing import AlphaEditor, get_editor
from interp_edit.evaluation.cases import aggregate, evaluate_cases, fact_probes, unrelated_metrics
from interp_edit.evaluation.runner import select_cases

HEAD = ("efficacy_score", "paraphrase_score", "neighborhood_score", "fluency")


def requests_of(cases):
    from interp_edit.editing import EditRequest

    return [EditRequest(r.prompt, r.subject, r.target_new, r.target_true) for c in cases for r in c.rewrites()]


def spectrum(model, config: dict) -> dict:
    """Eigenvalues of the key covariance C that AlphaEdit's null space is taken from."""
    from interp_edit.statistics.keys import second_moments

    cfg = AlphaEditor(model, **config).config
    covs = second_moments(model, cfg.layers, n_samples=cfg.stats_samples, batch_size=cfg.stats_batch_size, progress=False)
    out = {}
    for layer, cov in covs.items():
        values = torch.linalg.eigvalsh(cov.double())
        out.update({f"L{layer}_key_dim": len(values), f"L{layer}_eig_min": values[0].item(),
                    f"L{layer}_eig_max": values[-1].item(), f"L{layer}_below_2e-2": int((values < 2e-2).sum()),
                    f"L{layer}_below_1e-6_rel": int((values < 1e-6 * values[-1]).sum()),
                    f"L{layer}_below_1e-3_rel": int((values < 1e-3 * values[-1]).sum())})
    return out


class SequentialEditor:
    """One method's edits kept one after another on ``model`` (``edit(cases)`` computes a batch's
    edit on the model as the earlier batches left it and applies it; ``undo()`` takes every
    batch off again). What a method carries between batches: AlphaEdit one
    :class:`~interp_edit.editing.AlphaEditor` (its preserved keys' projection), UltraEdit one
    :class:`~interp_edit.editing.UltraEditState` (its normalisation statistics), WISE its side
    memory (the earlier edit is undone and passed as ``memory=``, the extended memory applied in
    its place); every other method (GRACE included: each batch adds its own codebook hook at the
    same site, after the earlier ones) stacks independent edits."""

    def __init__(self, model, method: str, config: dict) -> None:
        self.model, self.method, self.config = model, method, dict(config)
        self.editor = get_editor(method)
        self.alpha = AlphaEditor(model, **config) if method == "alphaedit" else None
        self.ultra = None
        if method == "ultraedit":
            from interp_edit.editing import UltraEditState

            self.ultra = UltraEditState()
        #: the applied edits, in order (WISE: one, the side memory holding every batch)
        self.applied: list = []

    def edit(self, cases):
        requests = requests_of(cases)
        if self.alpha is not None:
            edit = self.alpha(self.model, requests)
        elif self.ultra is not None:
            edit = self.editor.fn(self.model, requests, state=self.ultra, **self.config)
        elif self.method == "wise" and self.applied:
            memory = self.applied.pop().undo(self.model)
            edit = self.editor.fn(self.model, requests, memory=memory, **self.config)
        else:
            edit = self.editor.fn(self.model, requests, **self.config)
        self.applied.append(edit.apply(self.model))
        return edit

    def undo(self) -> None:
        while self.applied:
            self.applied.pop().undo(self.model)


def run(model, method: str, batches, probes, config: dict, fluency_cases: int, time_budget: float | None = None) -> dict:
    reference = unrelated_metrics(model, probes)[1]
    sequence = SequentialEditor(model, method, config)
    alpha, done, out = sequence.alpha, 0, {}
    start = time.perf_counter()
    try:
        for b, cases in enumerate(batches):
            sequence.edit(cases)
            done = b + 1
            print(f"{method}: batch {b + 1}/{len(batches)} edited, {time.perf_counter() - start:.0f} s", flush=True)
            if b == 0:
                first = aggregate(evaluate_cases(model, cases))
                out.update({f"first_batch_after_own_edit_{k}": first[k] for k in HEAD[:3]})
            if time_budget is not None and time.perf_counter() - start > time_budget and b + 1 < len(batches):
                break
        out["edit_and_first_eval_seconds"] = time.perf_counter() - start
        edited = [c for batch in batches[:done] for c in batch]
        out["edited_cases"] = len(edited)
        rows = evaluate_cases(model, edited)
        final = aggregate(rows)
        out.update({k: final[k] for k in HEAD[:3]})
        out["counterfact_score"] = final["counterfact_score"]
        flu = aggregate(evaluate_cases(model, edited[:fluency_cases], fluency=True))
        out["fluency"] = flu["fluency"]
        first_ids = {c.case_id for c in batches[0]}
        first = aggregate([r for r in rows if r["case_id"] in first_ids])
        out.update({f"first_batch_at_end_{k}": first[k] for k in HEAD[:3]})
        out.update(unrelated_metrics(model, probes, reference)[0])
        if alpha is not None:
            out.update({f"nullspace_dim_L{layer}": dim for layer, dim in alpha.nullspace_dims.items()})
    finally:
        sequence.undo()
    out["seconds"] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--methods", default="alphaedit,memit,rome")
    parser.add_argument("--config", default="{}", help="JSON object of config fields applied to every method")
    parser.add_argument("--fluency-cases", type=int, default=100, help="fluency is measured on the first k edited cases")
    parser.add_argument("--unrelated", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="toyworld", help="toyworld or a toy-world checkpoint folder")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds of editing per method; the batches edited by then are scored")
    parser.add_argument("--no-unedited", action="store_true", help="skip scoring the unedited model on the cases")
    parser.add_argument("--spectrum", action="store_true", help="print the key covariance's eigenvalues at AlphaEdit's layers")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    data = load_dataset("toyworld-counterfact", tokenizer=model.tokenizer, model=model)
    edited, others = select_cases(data, args.n, args.unrelated, args.seed)  # run_experiment's cases and drift probes
    probes = fact_probes(others)
    batches = [edited[i : i + args.batch_size] for i in range(0, len(edited), args.batch_size)]
    print(f"cases={len(edited)} batches={len(batches)} batch_size={args.batch_size} unrelated_probes={len(probes)}", flush=True)
    config = json.loads(args.config)
    if args.spectrum:
        print(" ".join(f"{k}={v:.3e}" if isinstance(v, float) else f"{k}={v}" for k, v in spectrum(model, config).items()),
              flush=True)
    methods = [m for m in args.methods.split(",") if m]
    if not methods:
        return
    if not args.no_unedited:
        baseline = aggregate(evaluate_cases(model, edited))
        print(" ".join(f"unedited_{k}={baseline[k]:.4f}" for k in HEAD[:3]), flush=True)
    results = {}
    for method in methods:
        results[method] = run(model, method, batches, probes, config, args.fluency_cases, args.time_budget)
        for key, value in results[method].items():
            print(f"{method}_{key}={value:.4f}" if isinstance(value, float) else f"{method}_{key}={value}", flush=True)
    cols = ["edited_cases", "efficacy_score", "paraphrase_score", "neighborhood_score", "fluency", "first_batch_after_own_edit_efficacy_score",
            "first_batch_at_end_efficacy_score", "unrelated_accuracy"]
    print("| method | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for method, res in results.items():
        print(f"| {method} | " + " | ".join(f"{res[c]:.3f}" if isinstance(res[c], float) else str(res[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
