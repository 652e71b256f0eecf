"""The reproduced study of issue 28: the teacher-forced vs generation gap ("The Mirage of Model
Editing", ACL 2025) and the ripple metrics (RippleEdits, TACL 2024) of ROME, MEMIT and
AlphaEdit after 1, 100 and 1,000 edits on the toy world.

For each method (its toy preset), on the shipped toy model, with ``run_experiment``
(``protocol="both"``, batches of 1, seed 0, 100 unrelated facts, fluency off):

- ``toyworld-counterfact``: 100 single edits, each on the unedited model (independent mode:
  the "1 edit" point, a mean over 100 cases), then 100 and 1,000 sequential edits (every edit
  kept; scores over all cases edited so far, at the end);
- ``toyworld-ripple``: the same, with the data set's 424 cases (all of them) as its largest
  sequential point: the toy world has 400 people and 24 birth cities, and one person's birth
  city cannot be moved twice in one sequence without the second move undoing the first's tests.

Writes one JSON per method (``--out`` folder), each run's final metrics, settings and wall
time. ``docs/evaluation.md`` and ``notebooks/07_gap_and_ripple_study.ipynb`` read these files;
``tests/test_gap_ripple_study.py`` re-measures points of them.

    python benchmarks/gap_ripple_study.py --methods rome --out benchmarks/results/gap_ripple --threads 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

#: (data set, mode, n): the study's runs, in order
RUNS = (
    ("toyworld-counterfact", "independent", 100),
    ("toyworld-counterfact", "sequential", 100),
    ("toyworld-counterfact", "sequential", 1000),
    ("toyworld-ripple", "independent", 100),
    ("toyworld-ripple", "sequential", 100),
    ("toyworld-ripple", "sequential", 424),
)
#: the experiment settings every run shares
SHARED = dict(batch_size=1, seed=0, unrelated=100, fluency=False, protocol="both", progress=False)


def run_one(model, method: str, dataset: str, mode: str, n: int) -> dict:
    from interp_edit.evaluation.runner import run_experiment

    start = time.perf_counter()
    res = run_experiment(model, dataset, method, n=n, sequential=mode == "sequential", eval_every=n, **SHARED)
    return {"dataset": dataset, "mode": mode, "n": n, "metrics": res.final_metrics(), "baseline": res.baseline,
            "ripple_known_tests": res.settings.get("ripple_known_tests"), "wall_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["rome", "memit", "alphaedit"])
    parser.add_argument("--out", default="benchmarks/results/gap_ripple")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-n", type=int, default=None, help="cap every run's n (a dry run)")
    args = parser.parse_args()

    import torch

    from interp_edit import load_model

    torch.set_num_threads(args.threads)
    model = load_model("toyworld")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for method in args.methods:
        runs = []
        for dataset, mode, n in RUNS:
            n = n if args.max_n is None else min(n, args.max_n)
            runs.append(run_one(model, method, dataset, mode, n))
            r = runs[-1]
            print(f"method={method} dataset={dataset} mode={mode} n={n} wall_s={r['wall_s']} "
                  + " ".join(f"{k}={v:.3f}" for k, v in r["metrics"].items() if isinstance(v, float)), flush=True)
            (out / f"{method}.json").write_text(json.dumps(
                {"method": method, "commit": commit, "threads": args.threads, "shared": SHARED, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
