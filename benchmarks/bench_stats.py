"""Key-statistics collection against a plain forward over the same tokens.

A randomly initialised GPT-2-shaped model (GPT-2 small by default; ``--shape xl``: GPT-2 XL),
random token rows (BOS first, long-tailed lengths: mean ``--mean-length``, a few past the
context, which are cut to it), batched as the statistics batch them
(:func:`interp_edit.statistics.collect.batches`: longest first, ``--batch-size`` texts and
``--batch-tokens`` tokens at most). Three runs over the same batches, interleaved, median of
``--repeats``:

- ``forward``: the baseline, a full-model forward (to the logits) with no hooks;
- ``stopped``: the same forward stopped after the last statistics layer (no hooks);
- ``stats``: :func:`~interp_edit.statistics.collect.accumulate` of ``mlp_post`` at 5 layers
  (GPT-2 small: 3–7, XL: 13–17, MEMIT's), float64 sums.

Printed: ``stats_vs_forward_throughput=`` (tokens/s of stats ÷ tokens/s of the full forward),
``stats_vs_stopped_forward_throughput=``, and the tokens/s and seconds of each. Tokens: every
token fed (BOS included, padding not). CPU runs use one thread and are timed by the process'
CPU time (the machine's cores are shared); GPU runs by wall time between synchronisations,
after a warm-up on the first batches.

    .venv/bin/python benchmarks/bench_stats.py [--texts 16] [--mean-length 100] [--shape small|xl] [--device cpu] [--dtype float32]

``measure(device, dtype, ...) -> dict`` is the same measurement for a suite (the model is built
on the device directly).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

SHAPES = {"small": dict(n_layers=12, d_model=768, n_heads=12, layers=[3, 4, 5, 6, 7]),
          "xl": dict(n_layers=48, d_model=1600, n_heads=25, layers=[13, 14, 15, 16, 17])}


def random_rows(n_texts: int, mean_length: int, n_ctx: int, d_vocab: int, bos: int, seed: int = 0) -> list[list[int]]:
    """Token rows of long-tailed lengths (exponential, mean ``mean_length``; those past the
    context cut to it, as the statistics cut texts), BOS first."""
    gen = torch.Generator().manual_seed(seed)
    lengths = (torch.empty(n_texts).exponential_(1.0 / mean_length, generator=gen).long() + 2).clamp_max(n_ctx)
    return [[bos] + torch.randint(1, d_vocab, (int(n) - 1,), generator=gen).tolist() for n in lengths]


def build(shape: str, device: str, dtype: torch.dtype):
    """A random GPT-2-shaped HookedTransformer built on ``device`` directly."""
    from interp_edit import load_model
    from interp_edit.adapter import build_hooked_transformer

    tokenizer = load_model("toyworld").tokenizer
    s = SHAPES[shape]
    torch.manual_seed(0)
    cfg = dict(n_layers=s["n_layers"], d_model=s["d_model"], n_heads=s["n_heads"], d_head=s["d_model"] // s["n_heads"],
               d_mlp=4 * s["d_model"], n_ctx=1024, d_vocab=50257, act_fn="gelu_new", normalization_type="LN",
               positional_embedding_type="standard", default_prepend_bos=True, original_architecture="GPT2LMHeadModel",
               model_name=f"gpt2-{shape}-random", device=device, dtype=dtype)
    with torch.device(device):
        model = build_hooked_transformer(cfg, tokenizer)
    return model.eval()


@torch.no_grad()
def measure(device: str = "cpu", dtype: torch.dtype = torch.float32, *, shape: str = "small", model=None,
            layers: list[int] | None = None, n_texts: int = 16, mean_length: int = 100, batch_size: int = 32,
            batch_tokens: int | None = None, repeats: int = 3) -> dict:
    """Seconds and tokens/s of the full forward, the stopped forward and the statistics over the
    same batches (medians of ``repeats``, interleaved), and the two throughput ratios."""
    from interp_edit.statistics.collect import BATCH_TOKENS, accumulate, batches

    model = model if model is not None else build(shape, device, dtype)
    layers = layers or SHAPES[shape]["layers"]
    batch_tokens = batch_tokens or BATCH_TOKENS
    ids = random_rows(n_texts, mean_length, model.cfg.n_ctx, model.cfg.d_vocab, model.tokenizer.bos_token_id or 0)
    pad = model.tokenizer.pad_token_id or 0
    n_tokens = sum(len(r) for r in ids)

    def sync():
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()

    def forward(rows, stop):
        for tokens, _ in batches(rows, batch_size=batch_size, batch_tokens=batch_tokens, pad_id=pad):
            model(tokens.to(model.cfg.device, non_blocking=True), stop_at_layer=stop)

    def runs(rows):
        return {"forward": lambda: forward(rows, None), "stopped": lambda: forward(rows, max(layers) + 1),
                "stats": lambda: accumulate(model, layers, "mlp_post", rows, batch_size=batch_size,
                                            batch_tokens=batch_tokens, progress=False)}

    on_cpu = not str(device).startswith("cuda")
    clock = time.process_time if on_cpu else time.perf_counter  # CPU: this process' CPU time (others share the cores)
    for run in runs(ids[: 2 * batch_size]).values():  # warm-up: kernels, allocator
        run()
    sync()
    times = {name: [] for name in runs(ids)}
    for _ in range(repeats):
        for name, run in runs(ids).items():
            sync()
            start = clock()
            run()
            sync()
            times[name].append(clock() - start)
    out = {"tokens": n_tokens, "texts": n_texts, "layers": list(layers), "device": str(device), "dtype": str(dtype)}
    for name, ts in times.items():
        out[f"{name}_seconds"] = statistics.median(ts)
        out[f"{name}_tokens_per_s"] = n_tokens / statistics.median(ts)
    out["stats_vs_forward_throughput"] = out["stats_tokens_per_s"] / out["forward_tokens_per_s"]
    out["stats_vs_stopped_forward_throughput"] = out["stats_tokens_per_s"] / out["stopped_tokens_per_s"]
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--mean-length", type=int, default=100)
    parser.add_argument("--shape", default="small", choices=sorted(SHAPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    result = measure(args.device, getattr(torch, args.dtype), shape=args.shape, n_texts=args.texts,
                     mean_length=args.mean_length, repeats=args.repeats, batch_size=args.batch_size)
    for key in ("stats_vs_forward_throughput", "stats_vs_stopped_forward_throughput"):
        print(f"{key}={result[key]:.3f}")
    for key, value in result.items():
        if not key.startswith("stats_vs"):
            print(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}".replace(" ", ""))


if __name__ == "__main__":
    main()
