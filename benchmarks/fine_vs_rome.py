"""FiNE next to ROME on the same toy-world edits (independent: each edit computed on the
unedited model, applied, scored, undone).

Per method: CounterFact efficacy / paraphrase / neighbourhood scores
(:mod:`interp_edit.evaluation.counterfact`), relation locality (the subject's other relations
keep their unedited top-1 answer, :mod:`interp_edit.evaluation.locality`), ``other_subjects_changed``
(the fraction of 10 other subjects asked the *same* relation, with another true object, whose
top-1 answer changed: how far an edit spreads over the relation), neurons touched per edit
(FiNE: mean / max), rows of ``W_out`` changed per edit (both methods: ROME's rank-one
update changes every row whose key-side factor is non-zero) and seconds per edit (computing the edit only; ROME's key statistics are
computed once before the timing).

``--sweep`` also runs FiNE over ``n_frozen`` (and ``lr``) on fewer edits: the measurement behind
the ``"toyworld"`` preset.

Prints ``key=value`` lines. Usage:
    .venv/bin/python -u benchmarks/fine_vs_rome.py [--n 100] [--sweep 30]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from interp_edit import load_model
from interp_edit.editing import fine, rome
from interp_edit.evaluation.counterfact import counterfact_scores, mean_scores
from interp_edit.evaluation.locality import relation_locality, top1_answers, unedited_answers
from interp_edit.toyworld import counterfact_records, world_of
from interp_edit.toyworld.world import stable_seed

PERSON_RELATIONS = ("born_in", "profession", "speaks", "instrument")


def person_records(world, n: int, seed: str):
    records = [r for r in counterfact_records(world) if r.relation_id in PERSON_RELATIONS]
    random.Random(stable_seed(seed)).shuffle(records)
    return records[:n]


def other_subject_prompts(world, record, n: int = 10) -> list[str]:
    """``n`` other people asked the record's relation whose true object differs from both the
    record's old and new object."""
    subjects = sorted({f.subject for f in world.facts if f.relation_id == record.relation_id
                       and f.subject != record.subject and f.object not in (record.target_true, record.target_new)})
    rng = random.Random(stable_seed("fine-vs-rome-others", record.subject, record.relation_id))
    return [record.prompt.format(s) for s in rng.sample(subjects, min(n, len(subjects)))]


def evaluate(model, world, records, make_edit, reference) -> dict[str, float]:
    rows, locality, spread, neurons, touched, seconds = [], [], [], [], [], []
    for record, ref in zip(records, reference, strict=True):
        start = time.perf_counter()
        edit = make_edit(record)
        seconds.append(time.perf_counter() - start)
        if "neurons_touched" in edit.info:
            neurons.append(edit.info["neurons_touched"][0])
        touched.append(sum(row["rows_touched"] for row in edit.summary()))
        locality.append(relation_locality(model, edit, [record], reference=[ref]).fraction)
        others = other_subject_prompts(world, record)
        before = top1_answers(model, others)
        with edit.applied(model):
            rows += counterfact_scores(model, [record])
            after = top1_answers(model, others)
        spread.append(float((before != after).float().mean()))
    out = mean_scores(rows)
    out = {k: out[k] for k in ("efficacy", "paraphrase", "neighborhood")}
    out["relation_locality"] = sum(locality) / len(locality)
    out["other_subjects_changed"] = sum(spread) / len(spread)
    out["seconds_per_edit"] = sum(seconds) / len(seconds)
    out["weight_rows_changed_mean"] = sum(touched) / len(touched)
    if neurons:
        out["neurons_mean"] = sum(neurons) / len(neurons)
        out["neurons_max"] = float(max(neurons))
    return out


def show(prefix: str, scores: dict[str, float]) -> None:
    for key, value in scores.items():
        print(f"{prefix}_{key}={value:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--sweep", type=int, default=0, help="edits per FiNE setting in the n_frozen / lr sweep (0: none)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("toyworld")
    world = world_of(model)

    records = person_records(world, args.n, "fine-vs-rome")
    reference = unedited_answers(model, records)
    print(f"n_edits={len(records)}")
    show("unedited", {k: v for k, v in mean_scores(counterfact_scores(model, records)).items()
                      if k in ("efficacy", "paraphrase", "neighborhood")})
    show("fine", evaluate(model, world, records, lambda r: fine(model, [r]), reference))
    rome(model, [records[0]])  # key statistics computed (and cached) outside the timing
    show("rome", evaluate(model, world, records, lambda r: rome(model, [r]), reference))

    if args.sweep:
        sweep = records[: args.sweep]
        for n_frozen in range(model.cfg.n_layers):
            show(f"fine_frozen{n_frozen}", evaluate(model, world, sweep, lambda r, f=n_frozen: fine(model, [r], n_frozen=f),
                                                    reference[: args.sweep]))
        for lr in (0.02, 0.05, 0.1, 0.5):
            show(f"fine_lr{lr}", evaluate(model, world, sweep, lambda r, lr=lr: fine(model, [r], lr=lr), reference[: args.sweep]))


if __name__ == "__main__":
    main()
