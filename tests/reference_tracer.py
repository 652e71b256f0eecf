"""An independent causal tracer: one plain ``run_with_hooks`` per restoration.

It shares no code with ``interp_edit.analysis`` (tracing, restore, scoring) or the toolkit's
prompt handling: it builds its own tokens, subject span, noise, layer windows and scores from
TransformerLens' own API and the ROME paper's definitions (Meng et al. 2022; the window is
``range(max(0, l - w // 2), min(L, l - (-w // 2)))`` as in the authors' ``trace_with_patch``
loop). Only the random draw is made the same way (``torch.randn(samples, subject tokens,
d_model)`` from a generator seeded with ``seed``), so that both tracers see the same noise.
It is the reference ``causal_trace`` is tested against and the baseline of
``benchmarks/bench_tracing.py``.
"""

from __future__ import annotations

import torch

_SITE = {"hidden": "hook_resid_post", "mlp": "hook_mlp_out", "attn": "hook_attn_out"}


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def subject_tokens(tokenizer, prompt: str, subject: str) -> tuple[list[int], int, int]:
    """BOS + the prompt's ids, and the [start, end) token span of the subject's first
    occurrence (tokens overlapping its characters)."""
    enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    lo = prompt.find(subject)
    assert lo >= 0, (prompt, subject)
    hi = lo + len(subject)
    inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < hi and b > lo]
    return [tokenizer.bos_token_id, *enc["input_ids"]], inside[0] + 1, inside[-1] + 2


def reference_window(layer: int, window: int, n_layers: int) -> list[int]:
    return list(range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2))))


@torch.no_grad()
def causal_trace_loop(model, prompt: str, subject: str, target: str | None = None, *, kinds=("hidden", "mlp", "attn"),
                      corruption: str = "gaussian", noise: float = 3.0, samples: int = 10, window: int = 10,
                      metric: str = "prob", severed: str | None = None, seed: int = 0,
                      replacement: str | None = None, foil: str | None = None, noise_draw: torch.Tensor | None = None,
                      noise_subjects=None) -> torch.Tensor:
    """Scores [kind, layer, pos] of restoring each clean activation into the corrupted run."""
    tok = model.tokenizer
    n_layers = model.cfg.n_layers
    prompt_ids, s0, s1 = subject_tokens(tok, prompt, subject)
    clean_prompt = torch.tensor([prompt_ids])
    if target is None:
        target_ids = [int(model(clean_prompt)[0, -1].argmax())]
    else:
        target_ids = _ids(tok, target if target.startswith(" ") else " " + target)
    ids = prompt_ids + target_ids[:-1]
    positions = list(range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(target_ids)))
    foil_id = _ids(tok, " " + foil.strip())[0] if foil is not None else None

    def score(logits: torch.Tensor) -> torch.Tensor:  # [batch, pos, vocab] -> scalar (mean over batch)
        if metric == "logit_diff":
            last = logits[:, positions[0]].double()
            return (last[:, target_ids[0]] - last[:, foil_id]).mean()
        logp = torch.log_softmax(logits.double(), -1)
        total = sum(logp[:, p, t] for p, t in zip(positions, target_ids, strict=True))
        return (total.exp() if metric == "prob" else total).mean()

    clean = torch.tensor([ids], device=model.cfg.device)
    hooks_base = []
    if corruption == "replace":
        spaced = tok.decode([ids[s0]]).startswith(" ")
        repl = _ids(tok, (" " if spaced else "") + replacement.strip())
        assert len(repl) == s1 - s0
        base = torch.tensor([ids[:s0] + repl + ids[s1:]], device=model.cfg.device)
    else:
        # ROME's noise scale: the std of the subjects' token embeddings (this prompt's subject, or
        # every subject of a data set, as collect_embedding_std)
        subject_ids = [t for s in (noise_subjects or [subject]) for t in _ids(tok, " " + s.strip())]
        std = model.W_E[torch.tensor(subject_ids, device=model.W_E.device)].float().std().item()
        if noise_draw is not None:
            draw = noise_draw.float()
        else:
            draw = torch.randn(samples, s1 - s0, model.cfg.d_model, generator=torch.Generator().manual_seed(seed))
        offsets = (draw * noise * std).to(model.cfg.device)

        def corrupt(embed, hook):
            embed = embed.clone()
            embed[:, s0:s1] += offsets.to(embed.dtype)
            return embed

        hooks_base = [("hook_embed", corrupt)]
        base = clean.repeat(samples, 1)

    _, clean_cache = model.run_with_cache(clean)
    corrupt_cache = {}

    def keep(act, hook):
        corrupt_cache[hook.name] = act.clone()

    names = [f"blocks.{layer}.{site}" for layer in range(n_layers) for site in ("hook_mlp_out", "hook_attn_out")]
    model.run_with_hooks(base, fwd_hooks=hooks_base + [(n, keep) for n in names])

    def put(source: torch.Tensor, pos: int):
        def hook(act, hook):
            act = act.clone()
            act[:, pos] = source[:, pos].expand_as(act[:, pos])
            return act
        return hook

    n_pos = clean.shape[1]
    scores = torch.empty(len(kinds), n_layers, n_pos, dtype=torch.float64)
    for k, kind in enumerate(kinds):
        for layer in range(n_layers):
            layers = [layer] if kind == "hidden" else reference_window(layer, window, n_layers)
            for pos in range(n_pos):
                hooks = list(hooks_base)
                for lay in layers:
                    name = f"blocks.{lay}.{_SITE[kind]}"
                    hooks.append((name, put(clean_cache[name], pos)))
                if kind == "hidden" and severed is not None:
                    site = _SITE[severed]
                    for lay in range(layer + 1, n_layers):
                        name = f"blocks.{lay}.{site}"
                        hooks.append((name, put(corrupt_cache[name], pos)))
                scores[k, layer, pos] = score(model.run_with_hooks(base, fwd_hooks=hooks))
    return scores.float()
