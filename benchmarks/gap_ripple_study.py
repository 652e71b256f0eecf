"""The reproduced study of issue 28 (:mod:`interp_edit.evaluation.study`): the teacher-forced vs
generation gap ("The Mirage of Model Editing", ACL 2025) and the ripple metrics (RippleEdits,
TACL 2024) of ROME, MEMIT and AlphaEdit after 1, 100 and 1,000 edits on the shipped toy model.

Writes one JSON per method to ``--out`` (``interp_edit/evaluation/published/gap_ripple`` holds
the published run, ``GapRippleStudy.published()``, read by ``docs/evaluation.md``,
``notebooks/07_gap_and_ripple_study.ipynb`` and ``tests/test_gap_ripple_study.py``). Run one
process per method to use several cores:

    python benchmarks/gap_ripple_study.py --methods rome --out interp_edit/evaluation/published/gap_ripple --threads 1
"""

from __future__ import annotations

import argparse
import subprocess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["rome", "memit", "alphaedit"])
    parser.add_argument("--out", default="benchmarks/results/gap_ripple")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-n", type=int, default=None, help="cap every run's n (a dry run)")
    args = parser.parse_args()

    import torch

    from interp_edit import load_model
    from interp_edit.evaluation.study import gap_ripple_study

    torch.set_num_threads(args.threads)
    model = load_model("toyworld")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    for method in args.methods:
        study = gap_ripple_study(model, [method], max_n=args.max_n)
        study.settings.update(commit=commit, threads=args.threads)
        study.save(args.out)
        for run in study.runs[method]:
            print(f"method={method} dataset={run['dataset']} mode={run['mode']} n={run['n']} wall_s={run['wall_s']} "
                  + " ".join(f"{k}={v:.3f}" for k, v in run["metrics"].items() if isinstance(v, float)), flush=True)
        print(repr(study), flush=True)


if __name__ == "__main__":
    main()
