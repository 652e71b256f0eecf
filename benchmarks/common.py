"""Helpers the benchmarks share: the random GPT-2-small-sized model and median timing."""

from __future__ import annotations

import statistics
import time

import torch


def gpt2_small_random(tokenizer, device: str = "cpu"):
    """A randomly initialised GPT-2-small-sized HookedTransformer (12 layers, d_model 768, 12
    heads, d_mlp 3072, vocabulary 50,257, context 1,024); the toy tokenizer supplies the ids."""
    from interp_edit.adapter import build_hooked_transformer

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


def random_gpt2(tokenizer, *, n_layers: int, d_model: int, n_heads: int, d_vocab: int = 50257, n_ctx: int = 1024,
                dtype: torch.dtype = torch.float32, name: str = "gpt2-random", device: str = "cpu"):
    """A randomly initialised GPT-2-shaped HookedTransformer (d_mlp = 4 · d_model, GPT-2's
    vocabulary and context by default) in ``dtype``; the toy tokenizer supplies the ids.
    GPT-2 medium: 24 layers, d_model 1024, 16 heads; GPT-2 XL: 48, 1600, 25."""
    from interp_edit.adapter import build_hooked_transformer

    torch.manual_seed(0)
    cfg = dict(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads, d_mlp=4 * d_model,
               n_ctx=n_ctx, d_vocab=d_vocab, d_vocab_out=d_vocab, act_fn="gelu_new", normalization_type="LN",
               positional_embedding_type="standard", default_prepend_bos=True,
               original_architecture="GPT2LMHeadModel", model_name=name, device=device, dtype=dtype)
    model = build_hooked_transformer(cfg, tokenizer)
    model.eval()
    return model


def weights_bytes(model) -> int:
    """Bytes of the model's parameters."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


class PeakRSS:
    """The peak resident memory of this process while the block runs, from the kernel's own
    high-water mark (Linux): entering resets it (``/proc/self/clear_refs`` ← 5), leaving reads
    ``VmHWM`` from ``/proc/self/status``. It sees every allocation, torch's CPU allocator
    included (tracemalloc does not). ``peak`` is the process' peak (weights included),
    ``extra`` the peak above the resident memory at entry."""

    @staticmethod
    def _status(field: str) -> int:
        import re

        with open("/proc/self/status") as f:
            return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) * 1024

    def __enter__(self):
        import gc

        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.start = self._status("VmRSS")
        return self

    def __exit__(self, *exc):
        self.peak = self._status("VmHWM")
        self.extra = self.peak - self.start
        return False


def aten_op_count(fn) -> int:
    """The number of aten operations ``fn()`` dispatches (a ``TorchDispatchMode`` counter): on a
    GPU about the kernels it launches, the cost that bounds a forward of few tokens there."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += 1
            return func(*args, **(kwargs or {}))

    with Count() as counter:
        fn()
    return counter.n
