"""The evaluation suite's results table: every registered editor on toy-world CounterFact
cases, sequential (batches kept) and independent (each batch undone), plus the figure that
compares the editors under sequential editing.

Each run writes a resumable folder under ``--out``; running the script again continues where
it stopped. Prints one ``key=value`` line per metric and run, then a Markdown table. Usage:
    .venv/bin/python benchmarks/evaluation_suite.py [--n 500] [--batch-size 50] [--methods rome,memit,alphaedit,ft]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from interp_edit import load_model
from interp_edit.data import load_dataset
from interp_edit.editing import editors
from interp_edit.evaluation import comparison_table, run_experiment
from interp_edit.viz.experiments import comparison_figure
from interp_edit.viz.export import save_figure

SHOWN = ("efficacy_score", "paraphrase_score", "neighborhood_score", "counterfact_score", "fluency",
         "multihop_accuracy", "unrelated_accuracy", "edit_seconds", "wall_seconds")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--methods", default=",".join(editors()))
    parser.add_argument("--modes", default="sequential,independent")
    parser.add_argument("--eval-every", type=int, default=2, help="sequential runs: evaluate all edited cases every k batches")
    parser.add_argument("--out", default="results/evaluation_suite")
    parser.add_argument("--figure", default="docs/figures/sequential_editing")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("toyworld")
    data = load_dataset("toyworld-counterfact", tokenizer=model.tokenizer, model=model)
    results = {}
    for mode in args.modes.split(","):
        for method in args.methods.split(","):
            sequential = mode == "sequential"
            result = run_experiment(model, data, method, n=args.n, batch_size=args.batch_size, sequential=sequential,
                                    eval_every=args.eval_every if sequential else 1, seed=0, progress=False,
                                    out=Path(args.out) / f"{method}_{mode}")
            results[(method, mode)] = result
            summary = result.summary()
            for key in SHOWN:
                print(f"{method}_{mode}_{key}={summary.get(key, float('nan')):.4f}", flush=True)
    print(comparison_table(list(results.values())))
    sequential = [r for (_, mode), r in results.items() if mode == "sequential"]
    if sequential and args.figure:
        html, png = save_figure(comparison_figure(sequential), args.figure)
        print(f"figure={html} {png}")


if __name__ == "__main__":
    main()
