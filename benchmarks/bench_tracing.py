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
Usage: ``python benchmarks/bench_tracing.py [--repeats 3] [--models toy,gpt2small,llama3small] [--samples 10] [--threads 2] [--no-tl] [--backend hooked|bridge|both] [--no-loop]``.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TQDM_DISABLE", "1")  # TransformerLens patching draws progress bars

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from common import gpt2_small_random, median_time  # noqa: E402

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


def bench(name: str, model, repeats: int, samples: int = 10, tl: bool = True, loop: bool = True):
    from reference_tracer import causal_trace_loop  # tests/reference_tracer.py, the independent reference

    from interp_edit.analysis.tracing import TraceSettings, causal_trace, prepare_trace

    target = None
    n_tokens = model.to_tokens(PROMPT).shape[1]
    print(f"[{name}] prompt_tokens={n_tokens} layers={model.cfg.n_layers} d_model={model.cfg.d_model} vocab={model.cfg.d_vocab}", flush=True)
    t_fast, fast = median_time(lambda: causal_trace(model, PROMPT, SUBJECT, target, window=10, samples=samples), repeats)
    print(f"{name}.trace_s={t_fast:.3f}", flush=True)
    if not loop:
        return t_fast, fast
    t_loop, loop = median_time(lambda: causal_trace_loop(model, PROMPT, SUBJECT, target, window=10, samples=samples),
                                 max(1, repeats // 2))
    print(f"{name}.loop_s={t_loop:.3f}")
    print(f"{name}.trace_speedup_vs_loop={t_loop / t_fast:.2f}")
    print(f"{name}.trace_max_abs_diff_vs_loop={(fast.scores - loop).abs().max().item():.2e}", flush=True)
    if not tl:
        return t_fast, fast
    t_fast1, fast1 = median_time(lambda: causal_trace(model, PROMPT, SUBJECT, target, window=1), repeats)
    print(f"{name}.trace_window1_s={t_fast1:.3f}", flush=True)
    inputs = prepare_trace(model, PROMPT, SUBJECT, target, TraceSettings(window=1))
    t_tl, (resid, mlp, attn) = median_time(
        lambda: tl_patching_trace(model, PROMPT, SUBJECT, inputs.target.ids[0], inputs.base_hooks[0], 10),
        max(1, repeats // 2))
    # TransformerLens' resid_pre at layer l+1 is our hidden (resid_post) at layer l
    tl_diff = max((fast1.kind("hidden")[:-1] - resid[1:].cpu()).abs().max().item(),
                  (fast1.kind("mlp") - mlp.cpu()).abs().max().item(),
                  (fast1.kind("attn") - attn.cpu()).abs().max().item())
    print(f"{name}.tl_patching_s={t_tl:.3f}")
    print(f"{name}.trace_speedup_vs_tl_patching={t_tl / t_fast1:.2f}")
    print(f"{name}.trace_max_abs_diff_vs_tl_patching={tl_diff:.2e}", flush=True)
    return t_fast, fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="toy,gpt2small")
    parser.add_argument("--samples", type=int, default=10, help="noise samples per trace (ROME: 10)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-tl", action="store_true", help="skip the TransformerLens patching comparison")
    parser.add_argument("--backend", choices=("hooked", "bridge", "both"), default="hooked")
    parser.add_argument("--no-loop", action="store_true", help="skip the plain-loop comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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
                                         not args.no_loop)
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
