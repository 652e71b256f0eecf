"""Batched next-token logits (``interp_edit.batching.last_token_logits``) measured: batches
of prompts sorted by length (what it does) against batches in the given order (the loop it
replaced, written out here), on the toy world's paraphrase evaluation set (8,200 prompts of
mixed lengths), alternating in the same process, median of ``--repeats``.

Prints ``positions_sorted`` / ``positions_given_order`` (tokens the forwards run, padding
included), ``seconds_sorted`` / ``seconds_given_order`` and ``speedup_sorted=`` (given-order
time / sorted time; above 1 means sorting is faster).
Usage: ``python benchmarks/bench_batching.py [--repeats 3] [--batch-size 512]``.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import median_time

from interp_edit import load_model
from interp_edit.batching import encode_prompts, last_token_logits, pad_right
from interp_edit.toyworld import world_of
from interp_edit.toyworld.evaluation import evaluation_sets


@torch.no_grad()
def given_order(model, prompts, batch_size):
    ids = encode_prompts(model.tokenizer, prompts)
    rows = []
    for start in range(0, len(ids), batch_size):
        tokens, lengths = pad_right(ids[start : start + batch_size], model.tokenizer.pad_token_id)
        logits = model(tokens, return_type="logits")
        rows.append(logits[torch.arange(len(lengths)), lengths - 1])
    return torch.cat(rows)


def positions(lengths, batch_size):
    return sum(max(lengths[s : s + batch_size]) * len(lengths[s : s + batch_size]) for s in range(0, len(lengths), batch_size))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args()
    model = load_model("toyworld")
    prompts = evaluation_sets(world_of(model))["paraphrase"][0]
    lengths = [len(i) for i in encode_prompts(model.tokenizer, prompts)]
    torch.testing.assert_close(last_token_logits(model, prompts, args.batch_size), given_order(model, prompts, args.batch_size),
                               rtol=1e-5, atol=1e-5)
    print(f"prompts={len(prompts)}")
    print(f"positions_sorted={positions(sorted(lengths), args.batch_size)}")
    print(f"positions_given_order={positions(lengths, args.batch_size)}")
    sorted_times, given_times = [], []
    for _ in range(args.repeats):  # alternating, so that a change in the machine's load hits both
        sorted_times.append(median_time(lambda: last_token_logits(model, prompts, args.batch_size), 1)[0])
        given_times.append(median_time(lambda: given_order(model, prompts, args.batch_size), 1)[0])
    sorted_s, given_s = statistics.median(sorted_times), statistics.median(given_times)
    print(f"seconds_sorted={sorted_s:.3f}")
    print(f"seconds_given_order={given_s:.3f}")
    print(f"speedup_sorted={given_s / sorted_s:.2f}")


if __name__ == "__main__":
    main()
