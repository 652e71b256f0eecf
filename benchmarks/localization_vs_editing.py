"""Does localization inform editing? on the toy world (Hase et al. 2023's question).

For each method, ``--n`` shuffled toy-world CounterFact cases (not the "is a city in" facts)
are traced at their edit token (AIE per layer, curve ``hidden``) and edited at every layer
alone; Spearman's rho between tracing effect and edit success per (fact, layer) pair, over
the per-layer means and within layers, with 95% bootstrap intervals over facts
(:func:`interp_edit.sweep.localization_vs_editing`). Prints ``key=value`` lines per method and
metric. Usage (one thread):
    OMP_NUM_THREADS=1 .venv/bin/python -u benchmarks/localization_vs_editing.py --methods rome memit --n 16
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch


def main() -> None:
    from interp_edit import load_model
    from interp_edit.data import load_dataset
    from interp_edit.sweep.localization import localization_vs_editing

    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", nargs="+", default=["rome", "memit"])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figures", help="folder for the figures")
    parser.add_argument("--out", help="folder for the results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model("toyworld")
    cases = [c for c in load_dataset("toyworld-counterfact") if c.rewrite.prompt != "{} is a city in"]
    random.Random(args.seed).shuffle(cases)
    for method in args.methods:
        start = time.perf_counter()
        result = localization_vs_editing(model, method, cases[: args.n], samples=args.samples, n_boot=args.n_boot,
                                         seed=args.seed)
        print(f"method={method} facts={len(result.case_ids)} skipped={len(result.skipped)} "
              f"seconds={time.perf_counter() - start:.1f}")
        print(result.table())
        for key, value in result.best_layers().items():
            print(f"{method}_best_layer_{key}={value}")
        for name, c in result.correlations.items():
            print(f"{method}_{name}_rho_pairs={c['pairs']:+.3f} ci=[{c['pairs_ci'][0]:+.3f},{c['pairs_ci'][1]:+.3f}] "
                  f"rho_layers={c['layers']:+.3f} ci=[{c['layers_ci'][0]:+.3f},{c['layers_ci'][1]:+.3f}] "
                  f"rho_within={c['within']:+.3f} ci=[{c['within_ci'][0]:+.3f},{c['within_ci'][1]:+.3f}]")
        if args.out:
            path = Path(args.out) / f"localization_vs_editing_{method}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result.as_dict()))
            print(f"saved={path}")
        if args.figures:
            print(f"figure={result.save(f'{args.figures}/localization_vs_editing_{method}')[1]}")


if __name__ == "__main__":
    main()
