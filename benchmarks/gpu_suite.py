"""Every speed and memory figure of the GPU issue in one run on one GPU, as ``key=value`` lines.

    python benchmarks/gpu_suite.py                 # on a CUDA machine: the published shapes, bf16
    python benchmarks/gpu_suite.py --dry-run       # anywhere: tiny shapes on the CPU, to check the script
    python benchmarks/gpu_suite.py --only trace,edit --start-by-s 480

Sections (each prints its own lines, prefixed by its name; a section that fails prints
``<section>.error=...`` and the suite goes on):

- ``trace``: a full causal trace (hidden + MLP + attention, window 10, 10 samples, 12 tokens) at
  GPT-2-small and GPT-2-XL shape, and TransformerLens' patching over the same rows at GPT-2-small
  shape (``bench_tracing.measure``);
- ``edit``: ROME at Llama-3-8B shape with its preset, MEMIT of 100 and 1,000 requests and
  AlphaEdit of 100 at GPT-2-XL shape, and sequential editing in batches of 100
  (``bench_edit_speed.measure``);
- ``load``: peak GPU memory above the start of ``load_model`` (hooked and bridge, from a folder
  and from a Hugging Face object) over the weights' bytes, at Llama-3-8B shape
  (``bench_load_memory.measure``);
- ``stats``: key-statistics collection against a plain forward's throughput (``bench_stats.measure``);
- ``layout``: the hooked forward with the attention weights stored in the order it reads them
  against TransformerLens' contiguous layout, at GPT-2-XL shape (``bench_attention_layout.measure``);
- ``topk``: exact top-k neuron attribution at GPT-2-XL shape against one forward + backward.

It needs no file outside the repository: the models are randomly initialised on the device,
the tokenizer is the toy world's. On a machine without a package registry, carry
TransformerLens and what it imports as wheels (DEVELOPMENT.md says how). The sections run in
the order above, the issue's targets first; ``--start-by-s`` skips (``<section>.skipped=1``) a
section not started that many seconds into the run, so a run under a time limit ends with its
summary line rather than being cut mid-section.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

PROMPT = "People say that Talvik Corlo is a musician who plays the"


def emit(section: str, values: dict) -> None:
    for key, value in values.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        print(f"{section}.{key}={value}", flush=True)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def section_topk(device: str, dtype: torch.dtype, dry: bool) -> dict:
    """``neuron_attribution(method="exact_top_k")`` (the exact top 300, certified) against one
    forward + backward of log p(target), at GPT-2-XL shape (tiny on a dry run)."""
    from common import median_time, random_gpt2

    from interp_edit.adapter import load_model
    from interp_edit.analysis import neuron_attribution

    toy = load_model("toyworld")
    shape = dict(n_layers=2, d_model=64, n_heads=4, d_vocab=toy.cfg.d_vocab) if dry else dict(n_layers=48, d_model=1600, n_heads=25)
    model = random_gpt2(toy.tokenizer, **shape, dtype=dtype, device=device, name="gpt2xl-random")
    tokens = model.to_tokens(PROMPT).to(device)
    with torch.no_grad():
        target = int(model(tokens)[0, -1].argmax())

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        logits = model(tokens)
        torch.log_softmax(logits[0, -1].float(), -1)[target].backward()
        _sync(device)

    fwd_bwd()
    t_base, _ = median_time(fwd_bwd, 5)
    neuron_attribution(model, PROMPT, top_k=300, method="exact_top_k")
    t_topk, result = median_time(lambda: (neuron_attribution(model, PROMPT, top_k=300, method="exact_top_k"), _sync(device))[0], 3)
    out = {"shape": "x".join(str(v) for v in shape.values()), "fwd_bwd_s": t_base, "exact_top_k_s": t_topk,
           "exact_top_k_over_fwd_bwd": t_topk / t_base}
    for kind in ("ffn", "attn"):
        out[f"scored_{kind}"] = f"{result.settings['scored'][kind]}/{result.settings['neurons'][kind]}"
    return out


def section_load(device: str, dtype: torch.dtype, dry: bool) -> dict:
    """Peak memory above the start of ``load_model`` over the weights' bytes, at Llama-3-8B shape
    in bf16 (each case in a fresh process): from a Hugging Face object (hooked, bridge) and from a
    ``save_pretrained`` folder (hooked)."""
    import bench_load_memory

    cases = ("object_hooked", "object_bridge", "folder_hooked")
    return bench_load_memory.measure(device=device, dtype="fp32" if dry else "bf16",
                                     shape="tiny" if dry else "llama3-8b", cases=cases)


def section_trace(device: str, dtype: torch.dtype, dry: bool) -> dict:
    """A full causal trace (hidden + MLP + attention, window 10, 10 samples) at GPT-2-small and
    GPT-2-XL shape, and TransformerLens' patching over the same rows at GPT-2-small shape; the
    same trace with ``merge="all"`` (cut only at the size limits) next to the default plan, to
    check the planner's cost of one more forward (``forward_overhead_row_layers``) on this GPU."""
    import bench_tracing

    if dry:
        return bench_tracing.measure(device=device, dtype=dtype, models=("tiny",), samples=2, repeats=1,
                                     tl_models=("tiny",), loop_models=("tiny",), extra_merges=("all",))
    return bench_tracing.measure(device=device, dtype=dtype, models=("gpt2small", "gpt2xl"), samples=10, repeats=3,
                                 tl_models=("gpt2small",), loop_models=(), extra_merges=("all",))


def section_stats(device: str, dtype: torch.dtype, dry: bool) -> dict:
    """Key-statistics collection against a plain forward's throughput, 5 layers, GPT-2-XL shape
    (GPT-2-small on a dry run)."""
    import bench_stats

    if dry:
        return bench_stats.measure(device=device, dtype=dtype, shape="small", n_texts=8, repeats=1)
    return bench_stats.measure(device=device, dtype=dtype, shape="xl", n_texts=2000, repeats=3)


def section_edit(device: str, dtype: torch.dtype, dry: bool) -> dict:
    """ROME at Llama-3-8B shape with its preset; MEMIT of 100 and 1,000 and AlphaEdit of 100 at
    GPT-2-XL shape; sequential MEMIT / AlphaEdit in batches of 100."""
    import bench_edit_speed

    return bench_edit_speed.measure(device=device, dtype=dtype, dry_run=dry)


def section_layout(device: str, dtype: torch.dtype, dry: bool) -> dict:
    """The hooked forward (and forward + backward) with the attention weights in the order it
    reads them against TransformerLens' contiguous layout, at GPT-2-XL shape."""
    import bench_attention_layout

    return bench_attention_layout.measure(device=device, dtype=dtype, shape="tiny" if dry else "gpt2-xl", rounds=3)


SECTIONS = {
    "trace": section_trace,
    "edit": section_edit,
    "load": section_load,
    "stats": section_stats,
    "layout": section_layout,
    "topk": section_topk,
}


def environment(device: str) -> dict:
    import importlib.metadata as md

    out = {"torch": torch.__version__, "device": device}
    for dist in ("transformer-lens", "transformers"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "absent"
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(0).replace(" ", "_")
        out["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (checks the script; default: off)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"sections to run, comma-separated (default: all: {','.join(SECTIONS)})")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="model dtype (default: bfloat16)")
    parser.add_argument("--start-by-s", type=float, default=None,
                        help="skip the sections not started this many seconds into the run (default: run every section)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.only.split(",") if s not in SECTIONS]
    if unknown:
        parser.error(f"--only: unknown sections {unknown}; choose from {list(SECTIONS)}")
    device = "cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"
    dtype = getattr(torch, args.dtype) if device == "cuda" else torch.float32
    emit("env", environment(device))
    start = time.perf_counter()
    failed = 0
    for name in args.only.split(","):
        t0 = time.perf_counter()
        if args.start_by_s is not None and t0 - start > args.start_by_s:
            emit(name, {"skipped": 1})
            continue
        try:
            emit(name, SECTIONS[name](device, dtype, args.dry_run))
        except Exception as err:  # one section's failure must not cost the others' figures
            failed += 1
            traceback.print_exc()
            emit(name, {"error": f"{type(err).__name__}: {err}".replace("\n", " ")[:300]})
        finally:
            if device == "cuda":
                torch.cuda.empty_cache()
        emit(name, {"section_s": time.perf_counter() - t0})
    emit("suite", {"total_s": time.perf_counter() - start, "failed_sections": failed})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
