"""Helpers the benchmarks share: the random GPT-2-small-sized model and median timing."""

from __future__ import annotations

import statistics
import time

import torch


def gpt2_small_random(tokenizer, device: str = "cpu"):
    """A randomly initialised GPT-2-small-sized HookedTransformer (12 layers, d_model 768, 12
    heads, d_mlp 3072, vocabulary 50,257, context 1,024); the toy tokenizer supplies the ids."""
    from interp_edit.model import build_hooked_transformer

    torch.manual_seed(0)
    cfg = dict(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024, d_vocab=50257,
               d_vocab_out=50257, act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard",
               default_prepend_bos=True, original_architecture="GPT2LMHeadModel", model_name="gpt2-small-random",
               device=device)
    model = build_hooked_transformer(cfg, tokenizer)
    model.eval()
    return model


def median_time(fn, repeats: int):
    """The median wall time of ``repeats`` calls of ``fn`` and the last call's result."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out
