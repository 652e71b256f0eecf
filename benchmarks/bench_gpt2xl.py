"""A GPT-2-XL-sized run on the CPU: a randomly initialised GPT-2-XL-shaped model (48 layers,
d_model 1600, 25 heads, d_mlp 6400, vocabulary 50,257; toy tokenizer) in bfloat16 (or
``--dtype float32``); key statistics of ``--texts`` toy-world texts (default 1,000) at the MLP
layers ROME and MEMIT edit in GPT-2 XL (17; 13–17); one ROME edit and one MEMIT edit of
``--requests`` (10) requests using those statistics; one causal trace of a fact (hidden states
only, ``--samples`` 3 noise samples). Each stage prints its wall time and the process' peak
resident memory during it (VmHWM reset before the stage: ``common.PeakRSS``).

Not part of the test suite: on 1 CPU thread it takes many minutes. ``--steps`` and
``--prefixes`` shorten the target optimisation (printed with the settings); stages can be
dropped with ``--stages``.
    .venv/bin/python benchmarks/bench_gpt2xl.py [--dtype bfloat16] [--texts 1000] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from common import PeakRSS, random_gpt2, weights_bytes

from interp_edit import causal_trace, load_model, memit, rome
from interp_edit.statistics.collect import default_corpus
from interp_edit.statistics.keys import second_moments
from interp_edit.toyworld import counterfact_records, world_of

ROME_LAYER, MEMIT_LAYERS = 17, (13, 14, 15, 16, 17)


def stage(name: str):
    class _Stage(PeakRSS):
        def __enter__(self):
            self.t0 = time.perf_counter()
            return super().__enter__()

        def __exit__(self, *exc):
            super().__exit__(*exc)
            if exc[0] is None:
                print(f"{name}_seconds={time.perf_counter() - self.t0:.1f}")
                print(f"{name}_peak_bytes={self.peak}")
                print(f"{name}_extra_bytes={self.extra}", flush=True)
            return False

    return _Stage()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--prefixes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--stages", default="stats,rome,memit,trace")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    stages = args.stages.split(",")
    toy = load_model("toyworld")
    records = counterfact_records(world_of(toy))[::7]
    texts = default_corpus(toy, args.texts)
    print(f"dtype={args.dtype}")
    print(f"threads={args.threads}")
    print(f"texts={args.texts}")
    print(f"text_tokens={sum(len(toy.tokenizer.encode(t)) + 1 for t in texts)}")
    with stage("build"):
        model = random_gpt2(toy.tokenizer, n_layers=48, d_model=1600, n_heads=25, dtype=getattr(torch, args.dtype),
                            name="gpt2-xl-random")
    print(f"weights_bytes={weights_bytes(model)}")
    common = dict(corpus=texts, stats_samples=args.texts, steps=args.steps, n_prefixes=args.prefixes)
    print("edit_settings=" + ",".join(f"{k}:{v}" for k, v in common.items() if k != "corpus"))
    with tempfile.TemporaryDirectory() as cache:
        if "stats" in stages:
            with stage("stats"):
                second_moments(model, sorted(set(MEMIT_LAYERS) | {ROME_LAYER}), corpus=texts, n_samples=args.texts,
                               cache_dir=cache, progress=False)
        if "rome" in stages:
            with stage("rome"):
                edit = rome(model, records[:1], layer=ROME_LAYER, cache_dir=cache, **common)
            print("rome_parts=" + ",".join(f"{k}:{v:.1f}" for k, v in edit.info["seconds"].items()))
        if "memit" in stages:
            with stage(f"memit_{args.requests}"):
                edit = memit(model, records[: args.requests], layers=MEMIT_LAYERS, cache_dir=cache, **common)
            print(f"memit_{args.requests}_parts=" + ",".join(f"{k}:{v:.1f}" for k, v in edit.info["seconds"].items()))
        if "trace" in stages:
            record = records[0]
            with stage("trace_hidden"):
                result = causal_trace(model, record.prompt.format(record.subject), record.subject, kinds=("hidden",),
                                      samples=args.samples)
            print(f"trace_positions={len(result.tokens)}")


if __name__ == "__main__":
    main()
