"""Edge scores: EAP-IG (5 steps over the inputs) against exact edge patching, same run.

On the toy-world model (1,108 edges) and, with ``--models toy,gpt2small``, a randomly
initialised GPT-2-small-sized model (12 layers, 12 heads: 32,000+ edges; exact patching is
timed on a random sample of ``--exact-sample`` edges and scaled to all of them, printed as
``*_exact_s_extrapolated``), on the prompt pairs of ``PAIRS``, it prints ``key=value`` lines:

- ``*_eap_ig5_s``: ``edge_scores(method="eap_ig_inputs", ig_steps=5)`` (5 forward + backward
  passes for the whole batch, plus the two caching forwards);
- ``*_exact_s``: ``edge_scores(method="exact")`` (one patched row per edge and prompt);
- ``*_exact_over_eap_ig5``: the ratio;
- ``*_eap_ig5_exact_pearson`` / ``*_top50_overlap``: how close EAP-IG's scores are to the exact
  ones (toy model only: the whole exact score table).

Usage: ``python benchmarks/bench_circuits.py [--repeats 1] [--models toy,gpt2small]
[--threads 2] [--exact-sample 2000] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import gpt2_small_random, median_time  # noqa: E402

PAIRS = [("Talvik Corlo was born in", "Beldel Kordor was born in"),
         ("Beldel Kordor was born in", "Talvik Corlo was born in")]


def _exact_sample(model, graph, task, n_sample: int, max_rows: int) -> float:
    """Seconds for exact patching (the engine's own forwards) of ``n_sample`` random edges,
    scaled to every edge."""
    from interp_edit.analysis.circuits.engine import edge_forward, sender_outputs

    edges = graph.edges()
    pick = torch.randperm(len(edges), generator=torch.Generator().manual_seed(0))[:n_sample].tolist()
    device = task.clean.device
    start = time.perf_counter()
    delta = sender_outputs(model, graph, task.corrupted) - sender_outputs(model, graph, task.clean)
    per_chunk = max(1, max_rows // task.n_prompts)
    for i in range(0, len(pick), per_chunk):
        chunk = torch.tensor([edges[j] for j in pick[i:i + per_chunk]], device=device)
        row_prompt = torch.arange(task.n_prompts, device=device).repeat(len(chunk))
        row_edge = torch.arange(len(chunk), device=device).repeat_interleave(task.n_prompts)
        logits = edge_forward(model, graph, task.clean[row_prompt], delta[row_prompt, :, chunk[row_edge, 0]],
                              chunk[row_edge, 1])
        task.metric_rows(logits, row_prompt)
    return (time.perf_counter() - start) * len(edges) / len(pick)


def run(name: str, model, repeats: int, exact_sample: int | None, max_rows: int) -> None:
    from interp_edit.analysis.circuits import edge_graph, edge_scores
    from interp_edit.analysis.circuits.engine import prepare_task

    clean, corrupted = [c for c, _ in PAIRS], [k for _, k in PAIRS]
    graph = edge_graph(model)
    print(f"[{name}] layers={graph.n_layers} heads={graph.n_heads} edges={graph.n_edges} prompts={len(PAIRS)}", flush=True)
    t_ig, ig = median_time(lambda: edge_scores(model, clean, corrupted, method="eap_ig_inputs", ig_steps=5), repeats)
    print(f"{name}_eap_ig5_s={t_ig:.3f}", flush=True)
    if exact_sample is None:
        t_exact, exact = median_time(lambda: edge_scores(model, clean, corrupted, method="exact", max_rows=max_rows), repeats)
        print(f"{name}_exact_s={t_exact:.3f}")
        a, b = exact.flat(), ig.flat()
        print(f"{name}_eap_ig5_exact_pearson={torch.corrcoef(torch.stack([a, b]))[0, 1].item():.3f}")
        top_a = set(a.abs().argsort(descending=True)[:50].tolist())
        top_b = set(b.abs().argsort(descending=True)[:50].tolist())
        print(f"{name}_top50_overlap={len(top_a & top_b) / 50:.2f}")
    else:
        task = prepare_task(model, clean, corrupted)
        t_exact = _exact_sample(model, graph, task, exact_sample, max_rows)
        print(f"{name}_exact_s_extrapolated={t_exact:.1f} (from {exact_sample} of {graph.n_edges} edges)")
    print(f"{name}_exact_over_eap_ig5={t_exact / t_ig:.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--models", default="toy")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--exact-sample", type=int, default=2000)
    parser.add_argument("--max-rows", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from interp_edit import load_model

    toy = load_model("toyworld", device=args.device)
    print(f"device={args.device} threads={torch.get_num_threads()}")
    for name in args.models.split(","):
        if name == "toy":
            run("toy", toy, args.repeats, None, args.max_rows)
        elif name == "gpt2small":
            run("gpt2small", gpt2_small_random(toy.tokenizer, device=args.device), args.repeats, args.exact_sample,
                args.max_rows)
        else:
            raise SystemExit(f"unknown model {name!r}; choose from toy, gpt2small")


if __name__ == "__main__":
    main()
