"""Peak memory of a full causal trace and of a ROME edit on a randomly initialised
GPT-2-medium-sized model (24 layers, d_model 1024, 16 heads, d_mlp 4096, vocabulary 50,257;
toy tokenizer) under three memory budgets, next to the size of the weights.

Each measurement runs in its own Python process (one thread): it builds the model, then
measures the kernel's high-water mark of resident memory (VmHWM, reset just before the work
through /proc/self/clear_refs; see ``common.PeakRSS``) — every allocation counts, torch's CPU
allocator included. ``*_peak_bytes`` is the process' peak (weights included),
``*_extra_bytes`` the peak above what was resident before the work, ``*_extra_over_weights``
their ratio to the weights' size.

The trace is ROME's full trace of one toy-world fact (kinds hidden / mlp / attn, every layer
and position, ``--samples`` noise samples). ROME: one edit at layer 8 with key statistics of
``--stats-texts`` toy-world texts, 5 optimisation steps, 2 prefixes (settings printed); ROME
takes no memory budget (its batches are ``stats_batch_size`` texts), so it is measured once.

Prints ``key=value`` lines, e.g. ``trace_budget_16MiB_extra_bytes=``, ``weights_bytes=``.
    .venv/bin/python benchmarks/bench_memory.py [--budgets 16MiB,128MiB,default] [--samples 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

UNITS = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def parse_budget(text: str) -> int | None:
    if text == "default":
        return None
    for unit, size in UNITS.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * size)
    return int(float(text))


def medium(tokenizer, dtype):
    from common import random_gpt2

    return random_gpt2(tokenizer, n_layers=24, d_model=1024, n_heads=16, dtype=dtype, name="gpt2-medium-random")


def child(args) -> None:
    from common import PeakRSS, weights_bytes

    from interp_edit import causal_trace, load_model, rome
    from interp_edit.toyworld import counterfact_records, world_of

    torch.set_num_threads(1)
    toy = load_model("toyworld")
    record = counterfact_records(world_of(toy))[0]
    model = medium(toy.tokenizer, getattr(torch, args.dtype))
    prefix = args.child if args.child == "rome" else f"trace_budget_{args.budget}"
    print(f"weights_bytes={weights_bytes(model)}")
    start = time.perf_counter()
    if args.child == "trace":
        import importlib

        from interp_edit.batching import forward_row_bytes

        restore = importlib.import_module("interp_edit.analysis.restore")
        rows, real = [], restore.forward_from_layer

        def counting(model, residual, *a, **k):
            rows.append(residual.shape[0])
            return real(model, residual, *a, **k)

        restore.forward_from_layer = counting  # counts the rows of each batched forward
        with PeakRSS() as peak:
            result = causal_trace(model, record.prompt.format(record.subject), record.subject, samples=args.samples,
                                  memory_budget=parse_budget(args.budget))
        print(f"{prefix}_positions={len(result.tokens)}")
        print(f"{prefix}_score_sum={float(result.scores.sum()):.6f}")  # equal across budgets
        n_pos = len(result.tokens)
        print(f"{prefix}_estimated_bytes_per_row={forward_row_bytes(model, n_pos, n_pos, 1)}")
        print(f"{prefix}_forwards={len(rows)}")
        print(f"{prefix}_max_rows_per_forward={max(rows)}")
    else:
        from interp_edit.statistics.collect import default_corpus

        texts = default_corpus(toy, args.stats_texts)
        settings = dict(layer=8, steps=5, n_prefixes=2, stats_samples=args.stats_texts)
        print("rome_settings=" + ",".join(f"{k}:{v}" for k, v in settings.items()))
        with tempfile.TemporaryDirectory() as cache, PeakRSS() as peak:
            rome(model, [record], corpus=texts, cache_dir=cache, **settings)
    print(f"{prefix}_seconds={time.perf_counter() - start:.1f}")
    print(f"{prefix}_peak_bytes={peak.peak}")
    print(f"{prefix}_extra_bytes={peak.extra}")
    print(f"{prefix}_extra_over_weights={peak.extra / weights_bytes(model):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budgets", default="16MiB,128MiB,default")
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--stats-texts", type=int, default=200)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--skip-rome", action="store_true")
    parser.add_argument("--child", choices=("trace", "rome"))
    parser.add_argument("--budget", default="default")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    common = ["--samples", str(args.samples), "--stats-texts", str(args.stats_texts), "--dtype", args.dtype]
    runs = [["--child", "trace", "--budget", b] for b in args.budgets.split(",")]
    if not args.skip_rome:
        runs.append(["--child", "rome"])
    print("peak_memory_method=VmHWM of a fresh process per measurement, reset before the work")
    print(f"dtype={args.dtype}")
    print(f"samples={args.samples}")
    seen_weights = False
    for run in runs:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), *run, *common], env=env, capture_output=True,
                             text=True, check=False)
        if out.returncode != 0:
            print(f"failed_{'_'.join(run[1:])}={out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
            continue
        for line in out.stdout.splitlines():
            if line.startswith("weights_bytes="):
                if seen_weights:
                    continue
                seen_weights = True
            print(line, flush=True)


if __name__ == "__main__":
    main()
