"""Speed of the batched causal trace against (a) the straightforward loop and (b)
TransformerLens' ``patching`` functions, measured in the same run.

For the toy-world model, a randomly initialised GPT-2-small-sized model (12 layers, d_model 768,
vocabulary 50257; the toy tokenizer supplies the token ids) and ``llama3small``, a Llama-3-style
model of the same size (grouped-query attention with 6 key/value heads, gated SiLU MLP of
width 3072, rotary positions, RMSNorm; ``interp_edit.adapter.tiny``), it times a full
hidden + MLP + attention trace of a 12-token prompt (Gaussian noise, 10 samples):

- ``trace_speedup_vs_loop``: window 10, against one ``run_with_hooks`` per restoration;
- ``trace_speedup_vs_tl_patching``: window 1 (TransformerLens patches single sites), against
  ``get_act_patch_resid_pre`` / ``get_act_patch_mlp_out`` / ``get_act_patch_attn_out`` over the
  same sites with the same noise hook;

and prints the largest score difference to each baseline. Medians over ``--repeats``.

``--backend bridge`` runs the same on the TransformerBridge backend (``load_model(...,
backend="bridge")``: the toy world exported to a GPT-2 Hugging Face model, and a random
GPT-2-small-sized Hugging Face model; no TransformerLens patching comparison there);
``--backend both`` runs both backends on the same weights (the hooked models unprocessed) and
prints ``{model}.bridge_vs_hooked_trace_time`` and the largest score difference between them.
``--device cuda --dtype bfloat16`` runs on a GPU with models built directly on the device:
``gpt2small`` and ``gpt2xl`` (48 layers, d_model 1600, 25 heads; random weights), each timed
after one warm-up call (CUDA initialisation and kernel selection are not counted); the plain
loop is skipped for ``gpt2xl`` (1,440 forwards). :func:`measure` returns the same numbers as a
dict (for ``benchmarks/gpu_suite.py``).
Usage: ``python benchmarks/bench_tracing.py [--repeats 3] [--models toy,gpt2small,llama3small,gpt2xl] [--samples 10] [--threads 2] [--no-tl] [--backend hooked|bridge|both] [--no-loop] [--device cpu|cuda] [--dtype float32|bfloat16] [--merge auto|by_layer|layers|all] [--count-ops] [--fused]``.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TQDM_DISABLE", "1")  # TransformerLens patching draws progress bars

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from common import aten_op_count, gpt2_small_random, median_time, random_gpt2  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

PROMPT = "People say that Talvik Corlo is a musician who plays the"
SUBJECT = "Talvik Corlo"


def tl_patching_trace(model, prompt, subject, target_id, noise_hook, samples):
    """The same single-site restorations with TransformerLens' patching functions."""
    from transformer_lens import patching

    tokens = model.to_tokens(prompt)
    corrupted = tokens.repeat(samples, 1)
    _, clean_cache = model.run_with_cache(tokens)

    def metric(logits):
        return torch.softmax(logits[:, -1].float(), -1)[:, target_id].mean()

    with model.hooks(fwd_hooks=[noise_hook]):
        resid = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, metric)
        mlp = patching.get_act_patch_mlp_out(model, corrupted, clean_cache, metric)
        attn = patching.get_act_patch_attn_out(model, corrupted, clean_cache, metric)
    return resid, mlp, attn


def _timed(fn, repeats: int, device: str, warmup: bool):
    """Median time of ``fn`` (synchronised on CUDA), after one untimed call if ``warmup``."""

    def call():
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    if warmup:
        call()
    return median_time(call, repeats)


def bench(name: str, model, repeats: int, samples: int = 10, tl: bool = True, loop: bool = True, *,
          device: str = "cpu", merge: str = "auto", report=None, extra_merges=(), count_ops: bool = False,
          fused: bool = False) -> tuple[float, object]:
    """Time the trace (and the baselines); print ``key=value`` lines and put them in ``report``.
    ``extra_merges``: other merge modes timed on the same trace (``trace_<mode>_s``, and
    ``trace_<mode>_max_abs_diff``, which is 0 where the modes agree), to compare the plans.
    ``count_ops``: also ``trace_aten_ops``, the aten operations one trace dispatches (on a GPU,
    about its kernel launches). ``fused``: also the trace with ``kernels="fused"``
    (``trace_fused_s``, its largest score difference, its aten operations with ``count_ops``, and
    with the TransformerLens comparison ``trace_fused_speedup_vs_tl_patching``)."""
    from reference_tracer import causal_trace_loop  # tests/reference_tracer.py, the independent reference

    from interp_edit.analysis.tracing import TraceSettings, causal_trace, prepare_trace

    report = {} if report is None else report

    def put(key, value, fmt):
        report[f"{name}.{key}"] = value
        print(f"{name}.{key}={value:{fmt}}", flush=True)

    warm = device == "cuda"
    target = None
    n_tokens = model.to_tokens(PROMPT).shape[1]
    print(f"[{name}] prompt_tokens={n_tokens} layers={model.cfg.n_layers} d_model={model.cfg.d_model} vocab={model.cfg.d_vocab} "
          f"device={device} dtype={str(model.cfg.dtype).removeprefix('torch.')} merge={merge}", flush=True)
    t_fast, fast = _timed(lambda: causal_trace(model, PROMPT, SUBJECT, target, window=10, samples=samples, merge=merge),
                          repeats, device, warm)
    put("trace_s", t_fast, ".3f")
    if count_ops:
        put("trace_aten_ops", aten_op_count(lambda: causal_trace(model, PROMPT, SUBJECT, target, window=10, samples=samples,
                                                                 merge=merge)), "d")
    if fused:
        t_fused, alt = _timed(lambda: causal_trace(model, PROMPT, SUBJECT, target, window=10, samples=samples, merge=merge,
                                                   kernels="fused"), repeats, device, warm)
        put("trace_fused_s", t_fused, ".3f")
        put("trace_fused_vs_default", t_fast / t_fused, ".2f")
        put("trace_fused_max_abs_diff", (alt.scores - fast.scores).abs().max().item(), ".2e")
        if count_ops:
            put("trace_fused_aten_ops", aten_op_count(lambda: causal_trace(model, PROMPT, SUBJECT, target, window=10,
                                                                           samples=samples, merge=merge, kernels="fused")), "d")
    for other in extra_merges:
        t_other, alt = _timed(lambda other=other: causal_trace(model, PROMPT, SUBJECT, target, window=10, samples=samples,
                                                   merge=other), repeats, device, warm)
        put(f"trace_{other}_s", t_other, ".3f")
        put(f"trace_{other}_max_abs_diff", (alt.scores - fast.scores).abs().max().item(), ".2e")
    if loop:
        t_loop, slow = _timed(lambda: causal_trace_loop(model, PROMPT, SUBJECT, target, window=10, samples=samples),
                              max(1, repeats // 2), device, False)
        put("loop_s", t_loop, ".3f")
        put("trace_speedup_vs_loop", t_loop / t_fast, ".2f")
        put("trace_max_abs_diff_vs_loop", (fast.scores - slow).abs().max().item(), ".2e")
    if not tl:
        return t_fast, fast
    t_fast1, fast1 = _timed(lambda: causal_trace(model, PROMPT, SUBJECT, target, window=1, samples=samples, merge=merge),
                            repeats, device, warm)
    put("trace_window1_s", t_fast1, ".3f")
    inputs = prepare_trace(model, PROMPT, SUBJECT, target, TraceSettings(window=1, samples=samples))
    t_tl, (resid, mlp, attn) = _timed(
        lambda: tl_patching_trace(model, PROMPT, SUBJECT, inputs.target.ids[0], inputs.base_hooks[0], samples),
        max(1, repeats // 2), device, False)
    # TransformerLens' resid_pre at layer l+1 is our hidden (resid_post) at layer l
    tl_diff = max((fast1.kind("hidden")[:-1] - resid[1:].float().cpu()).abs().max().item(),
                  (fast1.kind("mlp") - mlp.float().cpu()).abs().max().item(),
                  (fast1.kind("attn") - attn.float().cpu()).abs().max().item())
    put("tl_patching_s", t_tl, ".3f")
    put("trace_speedup_vs_tl_patching", t_tl / t_fast1, ".2f")
    put("trace_max_abs_diff_vs_tl_patching", tl_diff, ".2e")
    if fused:
        t_fused1, _ = _timed(lambda: causal_trace(model, PROMPT, SUBJECT, target, window=1, samples=samples, merge=merge,
                                                  kernels="fused"), repeats, device, warm)
        put("trace_fused_speedup_vs_tl_patching", t_tl / t_fused1, ".2f")
    return t_fast, fast


def device_model(name: str, tokenizer, device: str, dtype: torch.dtype):
    """``gpt2small`` / ``gpt2xl`` shapes (``tiny``: 4 layers, d_model 128, the toy vocabulary, for
    dry runs), random weights, built directly on ``device`` in ``dtype``."""
    shapes = {"gpt2small": dict(n_layers=12, d_model=768, n_heads=12), "gpt2xl": dict(n_layers=48, d_model=1600, n_heads=25),
              "tiny": dict(n_layers=4, d_model=128, n_heads=4, d_vocab=tokenizer.vocab_size if hasattr(tokenizer, "vocab_size") else len(tokenizer))}
    if name not in shapes:
        raise ValueError(f"--device {device} builds only {sorted(shapes)}, not {name!r}")
    return random_gpt2(tokenizer, **shapes[name], dtype=dtype, name=f"{name}-random", device=device)


def measure(device: str = "cuda", dtype: str = "bfloat16", models=("gpt2small", "gpt2xl"), *, samples: int = 10,
            repeats: int = 3, tl_models=("gpt2small",), loop_models=("gpt2small",), merge: str = "auto",
            extra_merges=(), fused: bool = True) -> dict:
    """Trace times and ratios on ``device``: ``{model}.trace_s`` (full hidden + MLP + attention
    trace, window 10), ``{model}.loop_s`` / ``trace_speedup_vs_loop`` (for ``loop_models``),
    ``{model}.trace_window1_s`` / ``tl_patching_s`` / ``trace_speedup_vs_tl_patching`` (for
    ``tl_models``: the same single-site restorations, the same noise and samples on both
    sides), and the largest score differences to each baseline; ``{model}.trace_<mode>_s`` for
    each of ``extra_merges``; ``{model}.trace_fused_s`` and the rest with ``fused`` (``bench``).
    Prints ``key=value`` lines."""
    from interp_edit import load_model

    models = models.split(",") if isinstance(models, str) else list(models)
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    tokenizer = load_model("toyworld").tokenizer
    report: dict = {}
    for name in models:
        model = device_model(name, tokenizer, device, torch_dtype)
        with torch.no_grad():
            bench(name, model, repeats, samples, name in tl_models, name in loop_models, device=device, merge=merge,
                  report=report, extra_merges=extra_merges, fused=fused)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="toy,gpt2small")
    parser.add_argument("--samples", type=int, default=10, help="noise samples per trace (ROME: 10)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-tl", action="store_true", help="skip the TransformerLens patching comparison")
    parser.add_argument("--backend", choices=("hooked", "bridge", "both"), default="hooked")
    parser.add_argument("--no-loop", action="store_true", help="skip the plain-loop comparison")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (models built on the device: gpt2small, gpt2xl)")
    parser.add_argument("--dtype", default="float32", help="the models' dtype on --device cuda, e.g. bfloat16")
    parser.add_argument("--merge", default="auto", choices=("auto", "by_layer", "all", "layers"), help="the engine's merge mode")
    parser.add_argument("--count-ops", action="store_true", help="also count the aten operations of one trace")
    parser.add_argument("--fused", action="store_true", help='also the trace with kernels="fused"')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.device != "cpu":
        models = args.models.split(",")
        measure(args.device, args.dtype, models, samples=args.samples, repeats=args.repeats,
                tl_models=() if args.no_tl else [m for m in models if m != "gpt2xl"],
                loop_models=() if args.no_loop else [m for m in models if m != "gpt2xl"], merge=args.merge,
                fused=args.fused)
        return
    from interp_edit import load_model

    toy = load_model("toyworld") if args.backend == "hooked" else None
    tokenizer = toy.tokenizer if toy is not None else load_model("toyworld", backend="bridge").tokenizer
    backends = ("hooked", "bridge") if args.backend == "both" else (args.backend,)
    for name in args.models.split(","):
        results = {}
        for backend in backends:
            label = name if args.backend == "hooked" else f"{name}@{backend}"
            model = _model(name, backend, args.backend == "hooked", toy, tokenizer)
            with torch.no_grad():
                results[backend] = bench(label, model, args.repeats, args.samples, not args.no_tl and backend == "hooked",
                                         not args.no_loop, merge=args.merge, count_ops=args.count_ops,
                                         fused=args.fused and backend == "hooked")
            del model
        if len(results) == 2:
            (t_h, r_h), (t_b, r_b) = results["hooked"], results["bridge"]
            print(f"{name}.bridge_vs_hooked_trace_time={t_b / t_h:.2f}")
            print(f"{name}.bridge_vs_hooked_max_abs_diff={(r_b.scores - r_h.scores).abs().max().item():.2e}", flush=True)


def _model(name, backend, legacy, toy, tokenizer):
    """The benchmark model ``name`` on ``backend``. ``legacy`` (``--backend hooked``): the
    models this benchmark always used; otherwise Hugging Face models both backends load
    (hooked unprocessed, so both hold the same weights)."""
    from interp_edit import load_model
    from interp_edit.adapter.tiny import tiny_hf_model

    raw = {} if backend == "bridge" or legacy else dict(fold_ln=False, center_writing_weights=False,
                                                         center_unembed=False, fold_value_biases=False)
    if name == "toy":
        return toy if legacy else load_model("toyworld", backend=backend, **raw)
    if name == "llama3small":
        hf = tiny_hf_model("llama3", vocab_size=50257, size="gpt2-small", init=0.02)
        return load_model("bench-llama3-small", hf_model=hf, tokenizer=tokenizer, backend=backend, **raw)
    if legacy:
        return gpt2_small_random(tokenizer)
    hf = tiny_hf_model("gpt2", vocab_size=50257, size="gpt2-small", init=0.02)
    return load_model("bench-gpt2-small", hf_model=hf, tokenizer=tokenizer, backend=backend, **raw)

if __name__ == "__main__":
    main()
