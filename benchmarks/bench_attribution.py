"""All-neuron attribution (NLKA, exact) against one forward + backward pass, same run.

For the toy-world model and a randomly initialised GPT-2-small-sized model (12 layers, d_model
768, 12 heads, d_mlp 3072, vocabulary 50257, n_ctx 1024; the toy tokenizer supplies the token
ids) on a 12-token prompt, it times

- ``neuron_attribution(model, prompt, top_k=300)``: every FFN and attention neuron, layer
  scores, query neurons and layers, promoted tokens of the top neurons;
- one forward + backward of log p(target) at the last position (the cost of a gradient-based
  attribution), as the baseline;

and prints medians over ``--repeats`` and their ratio, the largest difference between the
vectorised scores and log p recomputed by adding sampled neurons' vectors explicitly
(``attribution_max_abs_err``), and peak memory of one call in a fresh process (so that no
earlier call's freed memory is reused): the largest increase of the resident set size during
the call, sampled every 2 ms from /proc/self/statm (CPU), or ``torch.cuda.max_memory_allocated``
above the memory in use before the call (GPU). ``exact_projection_gflop`` counts the
multiply-adds of projecting every neuron's output weights onto the vocabulary, which exact
scoring cannot avoid (see docs/attribution.md). ``first_order_*``: the same with
``method="first_order"`` (gradient approximation of every neuron's score, no vocabulary
projection), its error against the exact scores and the overlap of the top-300 FFN and
attention neuron sets. ``exact_top_k_*``: ``method="exact_top_k"`` (the exact top 300 certified
by first-order upper bounds), its time, whether its top-300 lists equal the full exact ones
(neurons and order), their largest score difference, how many rows it scored exactly, and the
smallest bound − exact margin over every neuron. ``pathways_*``: ``qv_pathways(method=
"exact_top_k", n_value=50)`` over ``--pathway-prompts`` prompts against one forward + backward
per prompt and against the full exact ``qv_pathways`` (value neurons and top pathways equal?).
Usage: ``python benchmarks/bench_attribution.py [--repeats 3] [--models toy,gpt2small] [--threads 2]
[--pathway-prompts 2] [--skip-memory]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

import torch
from common import gpt2_small_random, median_time  # noqa: E402

PROMPT = "People say that Talvik Corlo is a musician who plays the"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(fn, device: str) -> int:
    """Bytes: peak RSS increase during ``fn()`` (CPU) or peak CUDA allocation above the start."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    start, peak, done = _rss_bytes(), [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.002)

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(peak[0], _rss_bytes()) - start


def fwd_bwd(model, tokens, target_id: int) -> float:
    model.zero_grad(set_to_none=True)
    logp = torch.log_softmax(model(tokens)[0, -1].float(), -1)[target_id]
    logp.backward()
    return logp.item()


@torch.no_grad()
def max_abs_error(model, result, n_samples: int = 32) -> float:
    """Largest |vectorised score − explicit recomputation| over sampled FFN / attention neurons
    (random and top) and all layer scores."""
    from interp_edit.analysis.attribution import frozen_unembed

    _, cache = model.run_with_cache(model.to_tokens(PROMPT))
    readout = frozen_unembed(model, cache["ln_final.hook_scale"][0, -1, 0].item())
    t = result.target_id

    def lp(x):
        return readout.logprob(x, t).item()

    cfg = model.cfg
    gen = torch.Generator().manual_seed(0)
    errors = []
    ffn = [(int(torch.randint(cfg.n_layers, (1,), generator=gen)), int(torch.randint(cfg.d_mlp, (1,), generator=gen)))
           for _ in range(n_samples)] + [(s.neuron.layer, s.neuron.index) for s in result.top_ffn[:8]]
    for layer, i in ffn:
        base = cache[f"blocks.{layer}.hook_resid_mid"][0, -1]
        vec = cache[f"blocks.{layer}.mlp.hook_post"][0, -1, i] * model.blocks[layer].mlp.W_out[i]
        errors.append(abs(result.ffn_scores[layer, i].item() - (lp(base + vec) - lp(base))))
    n_pos = cache["hook_embed"].shape[1]
    attn = [tuple(int(torch.randint(hi, (1,), generator=gen)) for hi in (cfg.n_layers, cfg.n_heads, cfg.d_head, n_pos))
            for _ in range(n_samples)] + [(s.neuron.layer, s.neuron.head, s.neuron.index, s.neuron.pos) for s in result.top_attn[:8]]
    for layer, h, j, p in attn:
        base = cache[f"blocks.{layer}.hook_resid_pre"][0, -1]
        coef = cache[f"blocks.{layer}.attn.hook_pattern"][0, h, -1, p] * cache[f"blocks.{layer}.attn.hook_v"][0, p, h, j]
        errors.append(abs(result.attn_scores[layer, h, j, p].item() - (lp(base + coef * model.blocks[layer].attn.W_O[h, j]) - lp(base))))
    for layer in range(cfg.n_layers):
        pre = cache[f"blocks.{layer}.hook_resid_pre"][0, -1]
        mid = pre + cache[f"blocks.{layer}.hook_attn_out"][0, -1]
        post = mid + cache[f"blocks.{layer}.hook_mlp_out"][0, -1]
        errors.append(abs(result.layer_scores[layer, 0].item() - (lp(mid) - lp(pre))))
        errors.append(abs(result.layer_scores[layer, 1].item() - (lp(post) - lp(mid))))
    return max(errors)


def bench(name: str, model, repeats: int, device: str, pathway_prompts: int = 2, skip_memory: bool = False) -> None:
    from interp_edit.analysis import neuron_attribution

    cfg = model.cfg
    tokens = model.to_tokens(PROMPT).to(device)
    n_neurons = cfg.n_layers * (cfg.d_mlp + cfg.n_heads * cfg.d_head * tokens.shape[1])
    print(f"[{name}] prompt_tokens={tokens.shape[1]} layers={cfg.n_layers} d_model={cfg.d_model} d_mlp={cfg.d_mlp} "
          f"vocab={cfg.d_vocab} device={device} threads={torch.get_num_threads()}", flush=True)
    print(f"{name}_neurons_scored={n_neurons}")
    with torch.no_grad():
        target_id = int(model(tokens)[0, -1].argmax())

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    fwd_bwd(model, tokens, target_id)  # warm-up
    t_base, _ = median_time(lambda: (fwd_bwd(model, tokens, target_id), sync()), max(repeats, 5))
    print(f"{name}_fwd_bwd_s={t_base:.4f}", flush=True)
    if repeats > 1:  # (one full exact run is minutes at GPT-2 size on a CPU)
        neuron_attribution(model, PROMPT, top_k=300)  # warm-up
    t_attr, result = median_time(lambda: (neuron_attribution(model, PROMPT, top_k=300), sync())[0], repeats)
    print(f"{name}_attribution_s={t_attr:.4f}")
    print(f"{name}_attribution_time_ratio_vs_fwd_bwd={t_attr / t_base:.2f}", flush=True)
    print(f"{name}_attribution_max_abs_err={max_abs_error(model, result):.2e}", flush=True)
    t_fo, approx = median_time(lambda: (neuron_attribution(model, PROMPT, top_k=300, method="first_order"), sync())[0], repeats)
    print(f"{name}_first_order_s={t_fo:.4f}")
    print(f"{name}_first_order_time_ratio_vs_fwd_bwd={t_fo / t_base:.2f}")
    err = max((approx.ffn_scores - result.ffn_scores).abs().max().item(), (approx.attn_scores - result.attn_scores).abs().max().item())
    scale = max(result.ffn_scores.abs().max().item(), result.attn_scores.abs().max().item())
    print(f"{name}_first_order_max_abs_err_vs_exact={err:.2e} (largest exact |score| {scale:.2e})")
    for kind in ("ffn", "attn"):
        exact_set = {s.neuron for s in getattr(result, f"top_{kind}")}
        approx_set = {s.neuron for s in getattr(approx, f"top_{kind}")}
        print(f"{name}_first_order_top300_{kind}_overlap={len(exact_set & approx_set) / len(exact_set):.3f}", flush=True)
    exact_top_k(name, model, result, t_base, repeats, sync)
    pathways(name, model, tokens, t_base, pathway_prompts, sync)
    if skip_memory:
        return
    mem_base, mem_attr = (_fresh_process_memory(name, which, device) for which in ("fwd_bwd", "attribution"))
    how = "cuda_max_allocated" if device.startswith("cuda") else "rss_sampled_2ms_fresh_process"
    print(f"{name}_peak_mem_fwd_bwd_mib={mem_base / 2**20:.1f} ({how})")
    print(f"{name}_peak_mem_attribution_mib={mem_attr / 2**20:.1f} ({how})")
    gflop = 2 * cfg.n_layers * (cfg.d_mlp + cfg.n_heads * cfg.d_head) * cfg.d_model * cfg.d_vocab / 1e9
    print(f"{name}_exact_projection_gflop={gflop:.1f}", flush=True)


def exact_top_k(name: str, model, full, t_base: float, repeats: int, sync) -> None:
    """``method="exact_top_k"`` against the full exact result ``full`` of the same prompt."""
    from interp_edit.analysis import neuron_attribution

    neuron_attribution(model, PROMPT, top_k=300, method="exact_top_k")  # warm-up
    # interleaved with a fresh forward + backward baseline, so that a change of machine load
    # between the first baseline and this measurement does not enter the ratio
    tokens = model.to_tokens(PROMPT).to(model.cfg.device)
    target = full.target_id
    times, base_times = [], []
    for _ in range(max(repeats, 3)):
        base_times.append(median_time(lambda: (fwd_bwd(model, tokens, target), sync()), 1)[0])
        t, fast = median_time(lambda: (neuron_attribution(model, PROMPT, top_k=300, method="exact_top_k"), sync())[0], 1)
        times.append(t)
    t, t_base = statistics.median(times), statistics.median(base_times)
    print(f"{name}_exact_top_k_s={t:.4f} {name}_exact_top_k_interleaved_fwd_bwd_s={t_base:.4f}")
    print(f"{name}_exact_top_k_time_ratio_vs_fwd_bwd={t / t_base:.2f}", flush=True)
    for kind in ("ffn", "attn"):
        a, b = getattr(full, f"top_{kind}"), getattr(fast, f"top_{kind}")
        same = [s.neuron for s in a] == [s.neuron for s in b]
        diff = max(abs(x.score - y.score) for x, y in zip(a, b, strict=True))
        tokens = [s.top_tokens for s in a] == [s.top_tokens for s in b]
        print(f"{name}_exact_top_k_top300_{kind}_identical={int(same)} (same neurons, same order; promoted tokens same={int(tokens)})")
        print(f"{name}_exact_top_k_top300_{kind}_max_abs_score_diff={diff:.2e}")
        print(f"{name}_exact_top_k_neurons_scored_{kind}={fast.settings['scored'][kind]}/{fast.settings['neurons'][kind]} "
              f"(rounds {fast.settings['rounds'][kind]})")
        bounds, exact = getattr(fast, f"{kind}_bounds"), getattr(full, f"{kind}_scores")
        print(f"{name}_bound_min_margin_{kind}={(bounds - exact).min().item():.2e} (bound − exact over every neuron; >= 0 up to rounding)")
    print(f"{name}_exact_top_k_layer_scores_max_abs_diff={(fast.layer_scores - full.layer_scores).abs().max().item():.2e}", flush=True)


PATHWAY_PROMPTS = (PROMPT, "Talvik Corlo was born in", "The capital of Dorvia is", "Talvik Corlo lives in",
                   "As everyone knows, Talvik Corlo was born in", "Talvik Corlo works as a", "The river that flows through the city is",
                   "Talvik Corlo speaks the language")


def pathways(name: str, model, tokens, t_base: float, n_prompts: int, sync) -> None:
    """``qv_pathways(method="exact_top_k", n_value=50)`` over ``n_prompts`` prompts against the
    full exact computation, and its time against one forward + backward per prompt."""
    from interp_edit.analysis import qv_pathways

    prompts = list(PATHWAY_PROMPTS[:n_prompts])
    data = []
    for prompt in prompts:
        toks = model.to_tokens(prompt).to(tokens.device)
        with torch.no_grad():
            data.append((toks, int(model(toks)[0, -1].argmax())))

    def baseline():
        for toks, target in data:
            fwd_bwd(model, toks, target)
        sync()

    qv_pathways(model, prompts, n_value=50, method="exact_top_k")  # warm-up
    times, base_times = [], []
    for _ in range(3):  # interleaved, as for exact_top_k
        base_times.append(median_time(baseline, 1)[0])
        t, fast = median_time(lambda: (qv_pathways(model, prompts, n_value=50, method="exact_top_k"), sync())[0], 1)
        times.append(t)
    t, t_base_data = statistics.median(times), statistics.median(base_times)
    print(f"{name}_pathways_prompts={len(prompts)} {name}_pathways_fwd_bwd_total_s={t_base_data:.4f}")
    print(f"{name}_pathways_exact_top_k_s={t:.4f}")
    print(f"{name}_pathways_exact_top_k_time_ratio_vs_fwd_bwd={t / t_base_data:.2f}", flush=True)
    start = time.perf_counter()
    full = qv_pathways(model, prompts, n_value=50)
    print(f"{name}_pathways_full_exact_s={time.perf_counter() - start:.2f}")
    print(f"{name}_pathways_value_neurons_identical={int(full.value_neurons == fast.value_neurons)}")
    print(f"{name}_pathways_top_pathways_identical={int([p.label for p in full.pathways] == [p.label for p in fast.pathways])}")
    scored = ~fast.value_scores.isnan()
    print(f"{name}_pathways_max_abs_value_score_diff={(fast.value_scores[scored] - full.value_scores[scored]).abs().max().item():.2e}")
    print(f"{name}_pathways_neurons_scored={fast.settings['scored']}/{fast.settings['neurons']} (rounds {fast.settings['rounds']})", flush=True)


def _fresh_process_memory(name: str, which: str, device: str) -> int:
    out = subprocess.run([sys.executable, __file__, "--memory-probe", f"{name}:{which}", "--device", device,
                          "--threads", str(torch.get_num_threads())], capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1])


def _memory_probe(spec: str, device: str) -> None:
    from interp_edit import load_model
    from interp_edit.analysis import neuron_attribution

    name, which = spec.split(":")
    toy = load_model("toyworld", device=device)
    model = toy if name == "toy" else gpt2_small_random(toy.tokenizer, device)
    tokens = model.to_tokens(PROMPT).to(device)
    if which == "fwd_bwd":
        with torch.no_grad():
            target_id = int(model(tokens)[0, -1].argmax())
        print(peak_memory(lambda: fwd_bwd(model, tokens, target_id), device))
    else:
        print(peak_memory(lambda: neuron_attribution(model, PROMPT, top_k=300), device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="toy,gpt2small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pathway-prompts", type=int, default=2, help="prompts of the qv_pathways dataset (1-8)")
    parser.add_argument("--skip-memory", action="store_true", help="no fresh-process peak-memory probes")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        _memory_probe(args.memory_probe, args.device)
        return
    from interp_edit import load_model

    toy = load_model("toyworld", device=args.device)
    for name in args.models.split(","):
        model = toy if name == "toy" else gpt2_small_random(toy.tokenizer, args.device)
        bench(name, model, args.repeats, args.device, args.pathway_prompts, args.skip_memory)


if __name__ == "__main__":
    main()
