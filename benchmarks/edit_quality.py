"""Editing quality on the toy world (the numbers in docs/editing.md).

- ROME, independent single edits (each undone before the next);
- MEMIT, one batch;
- the same sequence of edits applied sequentially in batches with AlphaEdit, MEMIT and ROME
  (no restore between batches), scored on all edited cases at the end.

Besides the CounterFact scores: ``relation_locality``, the fraction of the edited subjects'
other-relation prompts whose top-1 answer is the unedited one
(:func:`interp_edit.evaluation.locality.relation_locality`).

Prints ``key=value`` lines. Usage:
    .venv/bin/python benchmarks/edit_quality.py [--single 50] [--batch 100] [--sequential 500] [--seq-batch 50]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from interp_edit import AlphaEditor, load_model
from interp_edit.editing import memit, rome
from interp_edit.evaluation.counterfact import counterfact_scores, mean_scores
from interp_edit.evaluation.locality import relation_locality, unedited_answers
from interp_edit.toyworld import counterfact_records, world_of
from interp_edit.toyworld.world import stable_seed


def person_records(world, n: int, seed: str):
    records = [r for r in counterfact_records(world) if r.relation_id in ("born_in", "profession", "speaks", "instrument")]
    random.Random(stable_seed(seed)).shuffle(records)
    return records[:n]


def show(prefix: str, scores: dict, seconds: float | None = None) -> None:
    for key in ("efficacy", "paraphrase", "neighborhood", "same_subject", "relation_locality"):
        if key in scores:
            print(f"{prefix}_{key}={scores[key]:.4f}")
    if seconds is not None:
        print(f"{prefix}_seconds={seconds:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--single", type=int, default=50)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--sequential", type=int, default=500)
    parser.add_argument("--seq-batch", type=int, default=50)
    parser.add_argument("--methods", default="alphaedit,memit,rome")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_model("toyworld")
    world = world_of(model)

    if args.single:
        records = person_records(world, args.single, "quality-single")
        show("unedited_single", mean_scores(counterfact_scores(model, records)))
        reference = unedited_answers(model, records)
        rows, kept, start = [], [], time.perf_counter()
        for record, ref in zip(records, reference, strict=True):
            with rome(model, [record]).applied(model):
                rows += counterfact_scores(model, [record])
                kept.append(relation_locality(model, None, [record], reference=[ref]).fraction)
        scores = mean_scores(rows) | {"relation_locality": sum(kept) / len(kept)}
        show("rome_single", scores, time.perf_counter() - start)

    if args.batch:
        records = person_records(world, args.batch, "quality-batch")
        reference = unedited_answers(model, records)
        start = time.perf_counter()
        edit = memit(model, records)
        seconds = time.perf_counter() - start
        with edit.applied(model):
            scores = mean_scores(counterfact_scores(model, records))
            scores["relation_locality"] = relation_locality(model, None, records, reference=reference).fraction
            show(f"memit_batch{args.batch}", scores, seconds)

    if args.sequential:
        records = person_records(world, args.sequential, "quality-sequential")
        show("unedited_sequential", mean_scores(counterfact_scores(model, records)))
        reference = unedited_answers(model, records)
        for method in args.methods.split(","):
            start, applied = time.perf_counter(), []
            editor = AlphaEditor(model) if method == "alphaedit" else None
            try:
                for s in range(0, len(records), args.seq_batch):
                    batch = records[s : s + args.seq_batch]
                    if method == "alphaedit":
                        edit = editor(model, batch)
                    elif method == "memit":
                        edit = memit(model, batch)
                    else:
                        edit = rome(model, batch)  # ROME: one request after another
                    applied.append(edit.apply(model))
                seconds = time.perf_counter() - start
                scores = mean_scores(counterfact_scores(model, records))
                scores["relation_locality"] = relation_locality(model, None, records, reference=reference).fraction
                show(f"{method}_sequential{len(records)}", scores, seconds)
            finally:
                for edit in reversed(applied):
                    edit.undo(model)


if __name__ == "__main__":
    main()
