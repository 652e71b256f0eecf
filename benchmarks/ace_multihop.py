"""ACE vs MEMIT vs ROME on toy-world birth-city edits with multi-hop questions through them.

Each edit is independent (compute, apply, score, undo) on the shipped toy model. ACE's value
stage gets the first phrasing of each case's multi-hop question ("edit" split); the other
phrasings ("held-out") and the person's other chains ("other") are never given to any editor.
MEMIT and ROME see only the single-hop fact. ``ace_preserve`` also gives ACE the edit phrasing
about five other people (born in neither city) as preserved keys. Prints the unedited baseline, each method's mean
scores (all cases, 2-hop / 3-hop chains, chains the unedited model answered) and its median
seconds per edit.

    OMP_NUM_THREADS=1 .venv/bin/python -u benchmarks/ace_multihop.py [--n 100]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

KEYS = ("multihop_edit", "multihop_heldout", "multihop_other", "efficacy", "paraphrase", "neighborhood",
        "multihop_neighborhood")


def table_row(name: str, rows: list[dict]) -> str:
    from interp_edit.evaluation.multihop_edits import mean_rows

    means = mean_rows(rows, KEYS)
    return f"{name:<24} n={len(rows):<4}" + "".join(f"{means[k]:>12.3f}" for k in KEYS)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--methods", default="ace,ace_query_first,memit,rome")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from interp_edit import load_model
    from interp_edit.analysis.pathways import qv_pathways
    from interp_edit.editing import ace, memit, rome
    from interp_edit.evaluation.multihop_edits import mark_known_chains, multihop_edit_scores, toy_multihop_edit_cases
    from interp_edit.toyworld import world_of

    model = load_model("toyworld")
    world = world_of(model)
    cases = mark_known_chains(model, toy_multihop_edit_cases(world, args.n))
    prompts = [q for c in cases for q in c.edit_questions]
    ranking = qv_pathways(model, prompts, None, n_value=50, top_pathways=1)
    print(f"dataset-level pathway ranking over {len(prompts)} edit prompts: query layers {ranking.query_layers}, "
          f"value layers {ranking.value_layers}")
    methods = {
        "ace": lambda c: ace(model, [c.ace_request()]),
        "ace_query_first": lambda c: ace(model, [c.ace_request()], order="query_first"),
        "ace_preserve": lambda c: ace(model, [c.ace_request(preserve=True)]),
        # the authors' code's editing step (PMET on the single-hop fact over the two layer groups)
        "ace_reference": lambda c: ace(model, [c.ace_request()], variant="reference"),
        "memit": lambda c: memit(model, [c.fact]),
        "rome": lambda c: rome(model, [c.fact]),
    }
    header = f"{'method':<24} {'':<6}" + "".join(f"{k.replace('multihop_', 'hop_').replace('neighborhood', 'neighb'):>12}" for k in KEYS)
    print(header)
    base = multihop_edit_scores(model, cases)
    print(table_row("unedited", base))
    for name in args.methods.split(","):
        rows, seconds, layers = [], [], {}
        for case in cases:
            start = time.perf_counter()
            result = methods[name](case)
            seconds.append(time.perf_counter() - start)
            if name.startswith("ace"):
                key = (tuple(result.info["query_layers"]), tuple(result.info["value_layers"]))
                layers[key] = layers.get(key, 0) + 1
            with result.applied(model):
                rows += multihop_edit_scores(model, [case])
        print(table_row(name, rows))
        for hops in (2, 3):
            print(table_row(f"  {hops}-hop", [r for r in rows if r["hops"] == hops]))
        print(table_row("  chain known before", [r for r in rows if r["knew_chain"]]))
        print(f"  median seconds per edit: {statistics.median(seconds):.2f}")
        if layers:
            print("  (query layers, value layers): edits", dict(sorted(layers.items(), key=lambda kv: -kv[1])))


if __name__ == "__main__":
    main()
