"""``interp-edit demo``: the main job on the embedded toy-world model."""

from __future__ import annotations

import random
import time

import torch

from interp_edit.batching import last_token_logits
from interp_edit.model import load_model
from interp_edit.toyworld import counterfact_records, load_world
from interp_edit.toyworld.world import stable_seed


def run_demo(n_facts: int = 6, top_k: int = 5, seed: int = 0) -> None:
    start = time.perf_counter()
    import transformer_lens  # noqa: F401 - a one-off cost, reported apart from the model's load

    imported = time.perf_counter()
    model = load_model("toyworld")
    cfg = model.cfg
    print(
        f"Loaded the toy-world model in {time.perf_counter() - imported:.2f}s (TransformerLens import "
        f"{imported - start:.1f}s): {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, "
        f"d_mlp {cfg.d_mlp}, vocabulary {cfg.d_vocab}"
    )
    world = load_world()
    records = counterfact_records(world)
    rng = random.Random(stable_seed("demo", seed))
    chosen = rng.sample(records, min(n_facts, len(records)))
    prompts = [r.prompt.format(r.subject) for r in chosen]
    probs = torch.softmax(last_token_logits(model, prompts), dim=-1)
    for record, prompt, p in zip(chosen, prompts, probs, strict=True):
        top = torch.topk(p, top_k)
        print(f"\n{prompt!r} -> true object {record.target_true!r}  (subject tokens: {model.to_str_tokens(' ' + record.subject, prepend_bos=False)})")
        for rank, (prob, idx) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True), 1):
            token = model.tokenizer.decode([idx])
            mark = "  <- true" if token.strip() == record.target_true else ""
            print(f"  {rank}. {token!r:16} {prob:.3f}{mark}")
