"""Editing speed: one ROME edit split into statistics / keys / v* optimisation / update,
MEMIT with 100 and 1,000 requests, and key-statistics collection throughput against a plain
forward over the same tokens (same run, same process).

Models: the toy world, and a randomly initialised GPT-2-small-sized model (12 layers, d_model
768, vocab 50,257; toy tokenizer) with fewer optimisation steps and requests (stated in the
keys) so that it fits a 2-core CPU.

Prints ``key=value`` lines, e.g. ``toy_rome_seconds_per_edit=``, ``toy_memit_1000_seconds=``,
``toy_stats_throughput_ratio_vs_forward=``.
    .venv/bin/python benchmarks/bench_editing.py [--models toy,gpt2small] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from common import gpt2_small_random  # noqa: E402

from interp_edit import load_model
from interp_edit.batching import encode_prompts, pad_right
from interp_edit.editing import memit, rome
from interp_edit.statistics.collect import collect_second_moments, default_corpus
from interp_edit.toyworld import counterfact_records, world_of


@torch.no_grad()
def plain_forward_seconds(model, texts, batch_size: int) -> float:
    ids = [seq[: model.cfg.n_ctx] for seq in encode_prompts(model.tokenizer, texts)]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    start = time.perf_counter()
    for s in range(0, len(order), batch_size):
        tokens, _ = pad_right([ids[i] for i in order[s : s + batch_size]], model.tokenizer.pad_token_id or 0)
        model(tokens)
    return time.perf_counter() - start


def stats_throughput(prefix: str, model, texts, layer: int, repeats: int) -> None:
    """Statistics of one layer vs a plain full forward over the same texts (median of repeats)."""
    stats_times, forward_times = [], []
    for _ in range(repeats):
        forward_times.append(plain_forward_seconds(model, texts, 32))
        start = time.perf_counter()
        collect_second_moments(model, [layer], "mlp_post", texts, batch_size=32, progress=False)
        stats_times.append(time.perf_counter() - start)
    tokens = sum(len(t) for t in encode_prompts(model.tokenizer, texts))
    s, f = statistics.median(stats_times), statistics.median(forward_times)
    print(f"{prefix}_stats_layer={layer}")
    print(f"{prefix}_stats_tokens={tokens}")
    print(f"{prefix}_stats_seconds={s:.3f}")
    print(f"{prefix}_plain_forward_seconds={f:.3f}")
    print(f"{prefix}_stats_throughput_ratio_vs_forward={f / s:.2f}")


def rome_split(prefix: str, model, records, cache_dir: str, **overrides) -> None:
    first = rome(model, records[:1], cache_dir=cache_dir, **overrides)  # statistics computed (not cached yet)
    print(f"{prefix}_rome_stats_seconds_first_edit={first.info['seconds']['stats']:.3f}")
    times = []
    for record in records[1:4]:
        start = time.perf_counter()
        result = rome(model, [record], cache_dir=cache_dir, **overrides)
        times.append(time.perf_counter() - start)
    parts = result.info["seconds"]
    print(f"{prefix}_rome_seconds_per_edit={statistics.median(times):.3f}")
    for part in ("stats", "keys", "targets", "update"):
        print(f"{prefix}_rome_{part}_seconds={parts[part]:.3f}")


def memit_runs(prefix: str, model, records, sizes, cache_dir: str, **overrides) -> None:
    memit(model, records[:2], cache_dir=cache_dir, **overrides)  # statistics cached first
    for n in sizes:
        start = time.perf_counter()
        result = memit(model, records[:n], cache_dir=cache_dir, **overrides)
        print(f"{prefix}_memit_{n}_seconds={time.perf_counter() - start:.2f}")
        print(f"{prefix}_memit_{n}_targets_seconds={result.info['seconds']['targets']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="toy,gpt2small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    toy = load_model("toyworld")
    records = counterfact_records(world_of(toy))[::2]
    with tempfile.TemporaryDirectory() as cache_dir:
        if "toy" in args.models.split(","):
            stats_throughput("toy", toy, default_corpus(toy, 2000), 0, args.repeats)
            rome_split("toy", toy, records, cache_dir)
            memit_runs("toy", toy, records, (100, 1000), cache_dir)
        if "gpt2small" in args.models.split(","):
            big = gpt2_small_random(toy.tokenizer)
            texts = default_corpus(toy, 200)
            stats_throughput("gpt2small", big, texts, 5, max(1, args.repeats - 1))
            settings = dict(steps=5, n_prefixes=2, stats_samples=200, layer=5)  # the toy texts as corpus (no hub)
            print("gpt2small_settings=" + ",".join(f"{k}:{v}" for k, v in settings.items()))
            rome_split("gpt2small", big, records, cache_dir, corpus=texts, **settings)
            memit_settings = dict(steps=2, n_prefixes=1, stats_samples=200, layers=(3, 4, 5))
            print("gpt2small_memit_settings=" + ",".join(f"{k}:{v}" for k, v in memit_settings.items()))
            memit_runs("gpt2small", big, records, (10, 100), cache_dir, corpus=texts, **memit_settings)


if __name__ == "__main__":
    main()
