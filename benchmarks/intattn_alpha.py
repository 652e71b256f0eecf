"""IntAttn-Edit on the toy world: the attention share α swept over 0, 0.1, …, 0.5 and traced,
next to MEMIT on the same requests (toy presets: MEMIT on MLP layers 0–1; IntAttn-Edit on MLP
and attention layers 0–1, so α = 0 is MEMIT exactly).

- one batch of ``--batch`` requests per setting (the edit applied, scored, undone);
- ``--single`` independent single edits per setting (each undone before the next), if > 0;
- ``--attn-lambdas``: the batch at α = 0.3 with other λ_a (``attn_mom2_update_weight``).

Scores are CounterFact's (efficacy, paraphrase, neighbourhood, same-subject; probability
comparisons) on the edited records; ``realised_attn`` is the mean fraction of their share the
attention writes achieved at the target layer; ``seconds`` is the edit's wall time (the
statistics are cached after the first call). Prints ``key=value`` lines. Usage:
    .venv/bin/python -u benchmarks/intattn_alpha.py [--batch 100] [--single 30] [--settings all] [--attn-lambdas 10,1000] [--threads 1]
Measured (1 thread, while other jobs loaded the 2-core machine, so the times are inflated;
``OMP_NUM_THREADS=1 .venv/bin/python -u benchmarks/intattn_alpha.py --batch 100 --single 0``,
then ``--batch 100 --settings none --attn-lambdas 10,1000`` and ``--batch 0 --single 30``):

| setting (one batch of 100) | efficacy | paraphrase | neighbourhood | same subject | s / edit | attn realised |
|---|---|---|---|---|---|---|
| MEMIT | 0.930 | 0.942 | 0.864 | 0.803 | 0.349 | |
| α 0 | 0.930 | 0.942 | 0.864 | 0.803 | 0.316 | |
| α 0.1 | 0.920 | 0.932 | 0.848 | 0.787 | 0.429 | 0.662 |
| α 0.2 | 0.930 | 0.954 | 0.832 | 0.770 | 0.372 | 0.678 |
| α 0.3 | 0.930 | 0.952 | 0.791 | 0.743 | 0.391 | 0.683 |
| α 0.4 | 0.940 | 0.948 | 0.785 | 0.717 | 0.385 | 0.683 |
| α 0.5 | 0.940 | 0.950 | 0.763 | 0.660 | 0.595 | 0.684 |
| traced α (0.603) | 0.950 | 0.936 | 0.737 | 0.587 | 0.659 | 0.679 |
| α 0.3, λ_a 10 | 0.940 | 0.922 | 0.679 | 0.543 | 0.409 | 1.068 |
| α 0.3, λ_a 1,000 | 0.930 | 0.932 | 0.855 | 0.817 | 0.398 | 0.228 |

30 independent single edits: efficacy 1.000 everywhere, paraphrase 1.000 (traced α 0.993),
neighbourhood 0.997 (MEMIT and α 0) falling to 0.990 / 0.987 / 0.980 at α 0.1 / 0.3 / 0.5 and
0.976 traced (mean α 0.583), same subject 0.856 → 0.833; 1.2–1.6 s per edit. On this 6-layer
toy model writing attention at layers 0–1 buys no efficacy over MEMIT and costs locality,
growing with α: ``W_O`` is shared by every token.

Which attention layers (``--batch 100 --settings intattn_a0.3,intattn_a0.5 --attn-layers 0``,
then ``--attn-layers 1``), efficacy / paraphrase / neighbourhood / same subject, attn realised:
attention layer 0 only, α 0.3: 0.970 / 0.946 / 0.695 / 0.583, 0.861; α 0.5: 0.970 / 0.938 /
0.611 / 0.440, 0.820. Attention layer 1 only, α 0.3: 0.910 / 0.932 / 0.880 / 0.823, 0.498;
α 0.5: 0.920 / 0.912 / 0.845 / 0.767, 0.508 — the one setting with better locality than MEMIT
(0.864 / 0.803), at the price of efficacy and with only half the attention share realised.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from interp_edit import load_model
from interp_edit.editing import intattn, memit
from interp_edit.evaluation.counterfact import counterfact_scores, mean_scores
from interp_edit.toyworld import counterfact_records, world_of
from interp_edit.toyworld.world import stable_seed

ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, None)
KEYS = ("efficacy", "paraphrase", "neighborhood", "same_subject")


def person_records(world, start: int, n: int):
    records = [r for r in counterfact_records(world) if r.relation_id in ("born_in", "profession", "speaks", "instrument")]
    random.Random(stable_seed("intattn-benchmark")).shuffle(records)
    return records[start : start + n]


def settings(only: str = "all", **intattn_overrides):
    """(name, editor) pairs: MEMIT and IntAttn-Edit at each α of :data:`ALPHAS` (``only``: a
    comma-separated list of names, "all", or "none")."""
    found = [("memit", lambda model, recs: memit(model, recs))]
    for alpha in ALPHAS:
        name = "intattn_traced" if alpha is None else f"intattn_a{alpha:.1f}"
        found.append((name, lambda model, recs, alpha=alpha: intattn(model, recs, alpha=alpha, **intattn_overrides)))
    return found if only == "all" else [(n, f) for n, f in found if n in only.split(",")]


def describe(edit) -> dict:
    if edit.method != "intattn":
        return {}
    attn = [w["realised_fraction"] for w in edit.info["writes"] if w["kind"] == "attn"]
    return {"alpha": edit.info["alpha"], "realised_attn": sum(attn) / len(attn) if attn else float("nan")}


def show(prefix: str, scores: dict, seconds: float, extra: dict) -> None:
    line = " ".join(f"{k}={scores[k]:.3f}" for k in KEYS)
    more = " ".join(f"{k}={v:.3f}" for k, v in extra.items())
    print(f"{prefix} {line} seconds_per_edit={seconds:.3f} {more}".rstrip(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--single", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--attn-layers", default="", help="IntAttn-Edit's attention layers instead of the preset's, e.g. 1")
    parser.add_argument("--settings", default="all", help="'all', 'none' or names, e.g. memit,intattn_a0.3")
    parser.add_argument("--attn-lambdas", default="", help="λ_a values to try at α = 0.3 on the batch, e.g. 10,1000")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {"attn_layers": tuple(int(x) for x in args.attn_layers.split(","))} if args.attn_layers else {}
    model = load_model("toyworld")
    world = world_of(model)
    # warm the statistics cache (MLP and z of layers 0-1) so that timings are the edits' own
    intattn(model, person_records(world, 0, 2), alpha=0.5, steps=1)
    if args.batch:
        records = person_records(world, 0, args.batch)
        show(f"batch{len(records)} unedited", mean_scores(counterfact_scores(model, records)), 0.0, {})
        for name, fn in settings(args.settings, **overrides):
            start = time.perf_counter()
            edit = fn(model, records)
            seconds = time.perf_counter() - start
            with edit.applied(model):
                scores = mean_scores(counterfact_scores(model, records))
            show(f"batch{len(records)} {name}", scores, seconds / len(records), describe(edit))
    for lam in [float(x) for x in args.attn_lambdas.split(",") if x]:
        records = person_records(world, 0, args.batch)
        start = time.perf_counter()
        edit = intattn(model, records, alpha=0.3, attn_mom2_update_weight=lam, **overrides)
        seconds = time.perf_counter() - start
        with edit.applied(model):
            scores = mean_scores(counterfact_scores(model, records))
        show(f"batch{len(records)} intattn_a0.3_attn_lambda{lam:g}", scores, seconds / len(records), describe(edit))
    if args.single:
        records = person_records(world, args.batch, args.single)
        for name, fn in settings(args.settings, **overrides):
            rows, seconds, alphas, realised = [], 0.0, [], []
            for record in records:
                start = time.perf_counter()
                edit = fn(model, [record])
                seconds += time.perf_counter() - start
                with edit.applied(model):
                    rows += counterfact_scores(model, [record])
                info = describe(edit)
                if info:
                    alphas.append(info["alpha"])
                    realised.append(info["realised_attn"])
            extra = {}
            if alphas:
                extra = {"alpha_mean": sum(alphas) / len(alphas), "realised_attn": sum(realised) / len(realised)}
            show(f"single{len(records)} {name}", mean_scores(rows), seconds / len(records), extra)


if __name__ == "__main__":
    main()
