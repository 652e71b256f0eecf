"""The hooked forward with its attention weights stored in the order the forward reads them
(``interp_edit.adapter.layout``, what every hooked load does) against TransformerLens' own
contiguous layout, which copies W_Q / W_K / W_V / W_O of every layer on every forward.

    .venv/bin/python benchmarks/bench_attention_layout.py                  # CPU, GPT-2-small shape
    .venv/bin/python benchmarks/bench_attention_layout.py --shape gpt2-xl

One model, its layout switched in place between rounds (rounds alternate, medians are
printed): a forward without gradients and a forward + backward of one log-probability (the
shape of an editor's optimisation step: the parameters frozen, a gradient flowing back through
every layer), for one short prompt (7 tokens) and a batch of 32 rows of 24 tokens. Printed as
``key=value``: ``<case>_contiguous_s``, ``<case>_read_order_s`` and
``<case>_contiguous_over_read_order`` (> 1: the read order is faster), and the largest
difference of the logits between the two layouts (0: bit for bit). ``measure(device, dtype,
shape)`` is what ``gpu_suite.py`` calls.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

SHAPES = {
    "tiny": dict(n_layers=2, d_model=64, n_heads=4),
    "gpt2-small": dict(n_layers=12, d_model=768, n_heads=12),
    "gpt2-xl": dict(n_layers=48, d_model=1600, n_heads=25),
}
CASES = {"short": (1, 7), "batch": (32, 24)}


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _contiguous(model) -> None:
    from interp_edit.adapter.layout import READ_ORDER

    with torch.no_grad():
        for block in model.blocks:
            for name, param in block.attn._parameters.items():
                if name in READ_ORDER and param is not None:
                    param.data = param.data.contiguous()


def measure(device: str = "cpu", dtype: torch.dtype = torch.float32, shape: str = "gpt2-small", rounds: int = 5,
            repeats: int = 3) -> dict:
    from common import random_gpt2

    from interp_edit.adapter import attention_layout_is_read_order, load_model, store_attention_as_read

    toy = load_model("toyworld")
    dims = dict(SHAPES[shape], d_vocab=toy.cfg.d_vocab) if shape == "tiny" else SHAPES[shape]
    model = random_gpt2(toy.tokenizer, **dims, dtype=dtype, device=device, name=f"{shape}-random")
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(0)
    inputs = {case: torch.randint(0, toy.cfg.d_vocab, (b, n), generator=gen).to(device) for case, (b, n) in CASES.items()}

    def forward(tokens):
        with torch.no_grad():
            out = model(tokens)
        _sync(device)
        return out

    def forward_backward(tokens):
        # a leaf that needs a gradient at the first block's input, as an editor's δ does
        start = model.embed(tokens) + model.pos_embed(tokens)
        delta = torch.zeros_like(start, requires_grad=True)
        final = model(start + delta, start_at_layer=0)
        torch.log_softmax(final[:, -1].float(), -1)[:, 0].sum().backward()
        _sync(device)

    def timed(fn, tokens):
        fn(tokens)  # warm
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(tokens)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    times: dict[str, list[float]] = {}
    logits = {}
    for _ in range(rounds):
        for layout in ("contiguous", "read_order"):
            if layout == "contiguous":
                _contiguous(model)
            else:
                store_attention_as_read(model)
            assert attention_layout_is_read_order(model) == (layout == "read_order")
            for case, tokens in inputs.items():
                times.setdefault(f"{case}_forward_{layout}_s", []).append(timed(forward, tokens))
                times.setdefault(f"{case}_fwd_bwd_{layout}_s", []).append(timed(forward_backward, tokens))
            logits[layout] = forward(inputs["batch"]).float()
    store_attention_as_read(model)
    out = {"shape": shape, "dtype": str(dtype).removeprefix("torch."), "device": device}
    for case in CASES:
        for kind in ("forward", "fwd_bwd"):
            base = statistics.median(times[f"{case}_{kind}_contiguous_s"])
            laid = statistics.median(times[f"{case}_{kind}_read_order_s"])
            out[f"{case}_{kind}_contiguous_s"] = base
            out[f"{case}_{kind}_read_order_s"] = laid
            out[f"{case}_{kind}_contiguous_over_read_order"] = base / laid
    out["max_logit_diff"] = float((logits["contiguous"] - logits["read_order"]).abs().max())
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="gpt2-small", choices=tuple(SHAPES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads} torch={torch.__version__}")
    for key, value in measure(shape=args.shape, rounds=args.rounds).items():
        print(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}", flush=True)


if __name__ == "__main__":
    main()
