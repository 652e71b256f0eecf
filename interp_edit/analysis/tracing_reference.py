"""The straightforward causal trace: one ``run_with_hooks`` per restoration, every layer run
from the embeddings. It is the reference the batched :func:`causal_trace` is tested against
(to 1e-5) and the baseline of ``benchmarks/bench_tracing.py``; use ``causal_trace`` itself."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from interp_edit.analysis.scoring import score_logits, score_positions
from interp_edit.analysis.tracing import KINDS, TraceSettings, prepare_trace, subject_embedding_std, window_layers
from interp_edit.model import hook_name, run_with_cache, run_with_hooks

_SITE = {"hidden": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}


@torch.no_grad()
def causal_trace_loop(model, prompt: str, subject: str, target: str | None = None, *,
                      kinds: Sequence[str] = KINDS, replacements: Sequence[str] = (), foil: str | None = None,
                      noise_subjects: Sequence[str] | None = None, **settings) -> torch.Tensor:
    """Scores [kind, layer, pos] computed by a plain loop over restorations (the same
    arguments as :func:`causal_trace`: noise rule, ``noise_draw``, ``generator``)."""
    if noise_subjects is not None and settings.get("embedding_std") is None:
        settings["embedding_std"] = subject_embedding_std(model, list(noise_subjects))
    cfg = TraceSettings(kinds=tuple(kinds), **settings)
    inputs = prepare_trace(model, prompt, subject, target, cfg, replacements, foil)
    n_layers, n_pos = model.cfg.n_layers, inputs.clean_tokens.shape[1]
    positions = score_positions(len(inputs.tokenized.tokens), inputs.target)
    every = [hook_name(site, layer) for site in ("resid_post", "mlp_out", "attn_out") for layer in range(n_layers)]
    _, clean = run_with_cache(model, inputs.clean_tokens, every)
    _, corrupted = run_with_cache(model, inputs.base_tokens, every, inputs.base_hooks)

    def set_to(values, pos):
        def hook(act, hook):
            act[:, pos] = values[:, pos]
            return act
        return hook

    scores = torch.empty(len(cfg.kinds), n_layers, n_pos)
    for k, kind in enumerate(cfg.kinds):
        for layer in range(n_layers):
            layers = (layer,) if kind == "hidden" else window_layers(layer, cfg.window, n_layers)
            for pos in range(n_pos):
                hooks = list(inputs.base_hooks)
                hooks += [(hook_name(_SITE[kind], lay), set_to(clean[hook_name(_SITE[kind], lay)], pos)) for lay in layers]
                if kind == "hidden" and cfg.severed:
                    site = _SITE[cfg.severed]
                    hooks += [(hook_name(site, lay), set_to(corrupted[hook_name(site, lay)], pos))
                              for lay in range(layer + 1, n_layers)]
                logits = run_with_hooks(model, inputs.base_tokens, hooks)
                scores[k, layer, pos] = score_logits(logits[:, positions], inputs.target, cfg.metric).mean()
    return scores
