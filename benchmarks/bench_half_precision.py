"""How far bfloat16 / float16 results are from float32 ones on the toy-world model: one causal
trace (3 samples), activation patching, AIE over 4 facts, neuron attribution, and every editor
but ACE (2 requests each: relative Frobenius difference and cosine of each ΔW, efficacy and
paraphrase scores). The tolerances of tests/test_half_precision.py come from these numbers.

Prints ``key=value`` lines, e.g. ``bfloat16_trace_max_abs_diff=``, ``float16_rome_delta_rel_diff=``.
    .venv/bin/python benchmarks/bench_half_precision.py [--dtypes bfloat16,float16]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from interp_edit import (
    activation_patch,
    average_indirect_effect,
    causal_trace,
    edit,
    editors,
    load_model,
    neuron_attribution,
)
from interp_edit.evaluation.counterfact import counterfact_scores, mean_scores
from interp_edit.toyworld import counterfact_records, load_world

CLEAN, CORRUPTED = "Talvik Corlo was born in", "Fenpas Astlo was born in"


def compare(name: str, ref, model, records) -> None:
    r = records[0]
    prompt = r.prompt.format(r.subject)
    a = causal_trace(ref, prompt, r.subject, r.target_true, samples=3)
    b = causal_trace(model, prompt, r.subject, r.target_true, samples=3)
    print(f"{name}_trace_max_abs_diff={(a.scores - b.scores).abs().max().item():.5f}")
    a, b = activation_patch(ref, CLEAN, CORRUPTED), activation_patch(model, CLEAN, CORRUPTED)
    print(f"{name}_patching_max_abs_diff={max((a.results[k] - b.results[k]).abs().max().item() for k in a.results):.5f}")
    a = average_indirect_effect(ref, records[:4], samples=2, progress=False)
    b = average_indirect_effect(model, records[:4], samples=2, progress=False)
    print(f"{name}_aie_max_abs_diff={(a.effects - b.effects).nan_to_num().abs().max().item():.5f}")
    a, b = neuron_attribution(ref, prompt, r.target_true), neuron_attribution(model, prompt, r.target_true)
    print(f"{name}_attribution_layer_max_abs_diff={(a.layer_scores - b.layer_scores).abs().max().item():.5f}")
    print(f"attribution_layer_max_abs={a.layer_scores.abs().max().item():.3f}")
    print(f"{name}_attribution_ffn_max_abs_diff={(a.ffn_scores - b.ffn_scores).abs().max().item():.5f}")
    top = [{(s.neuron.layer, s.neuron.index) for s in x.value_neurons(10, ("ffn",))} for x in (a, b)]
    print(f"{name}_attribution_top10_ffn_overlap={len(top[0] & top[1])}")
    for editor in editors().values():
        if editor.name == "ace":
            continue
        start = time.perf_counter()
        ea, eb = edit(ref, records[:2], editor.name), edit(model, records[:2], editor.name)
        rel, cos = [], []
        for key in ea.deltas:
            da, db = ea.delta_matrix(key, ref).double(), eb.delta_matrix(key, model).double()
            rel.append(((da - db).norm() / da.norm()).item())
            cos.append(torch.nn.functional.cosine_similarity(da.flatten(), db.flatten(), 0).item())
        with ea.applied(ref):
            sa = mean_scores(counterfact_scores(ref, records[:2]))
        with eb.applied(model):
            sb = mean_scores(counterfact_scores(model, records[:2]))
        if rel:
            print(f"{name}_{editor.name}_delta_rel_diff_max={max(rel):.4f}")
            print(f"{name}_{editor.name}_delta_cosine_min={min(cos):.4f}")
        print(f"{name}_{editor.name}_efficacy={sb['efficacy']:.2f} (float32 {sa['efficacy']:.2f})")
        print(f"{name}_{editor.name}_seconds_both={time.perf_counter() - start:.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtypes", default="bfloat16,float16")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    records = [r for r in counterfact_records(load_world()) if r.relation_id in ("born_in", "profession")]
    random.Random(0).shuffle(records)
    ref = load_model("toyworld")
    for name in args.dtypes.split(","):
        compare(name, ref, load_model("toyworld", dtype=name), records)


if __name__ == "__main__":
    main()
