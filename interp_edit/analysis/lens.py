"""Logit lens and direct logit attribution (DLA)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp_edit.analysis.scoring import encode_target
from interp_edit.batching import prompt_tokens
from interp_edit.model import hook_name, run_with_cache


def _tokens(model, prompt: str) -> Tensor:
    # TransformerLens' to_tokens would silently truncate a prompt longer than the context
    return prompt_tokens(model, prompt)


@dataclass
class LogitLensResult:
    """The residual stream after the embedding (row 0) and after each layer, read through the
    final norm and unembedding (nostalgebraist's logit lens)."""

    top_ids: Int[Tensor, "layer pos k"]
    top_probs: Float[Tensor, "layer pos k"]
    top_tokens: list[list[list[str]]]
    target_probs: Float[Tensor, "layer pos"] | None
    target_ranks: Int[Tensor, "layer pos"] | None
    str_tokens: tuple[str, ...]
    layer_labels: tuple[str, ...]
    prompt: str
    target: str | None

    def plot(self):
        from interp_edit.viz.lens import logit_lens_figure

        return logit_lens_figure(self)

    def save(self, path: str | Path) -> tuple[Path, Path]:
        from interp_edit.viz.export import save_figure

        return save_figure(self.plot(), path)


@torch.no_grad()
def logit_lens(model, prompt: str, target: str | None = None, *, k: int = 5) -> LogitLensResult:
    """Top-``k`` next tokens at every position after every layer; with ``target``, its
    probability and rank there too (first token of a multi-token target)."""
    from interp_edit.validation import check_int, check_str

    check_int(k, "k", minimum=1, maximum=model.cfg.d_vocab_out)  # topk over the vocabulary
    check_str(target, "target", optional=True)
    tokens = _tokens(model, prompt)
    n = model.cfg.n_layers
    names = [hook_name("resid_pre", 0)] + [hook_name("resid_post", layer) for layer in range(n)]
    _, cache = run_with_cache(model, tokens, names)
    target_id = encode_target(model.tokenizer, target)[0] if target is not None else None
    top_ids, top_probs, t_probs, t_ranks = [], [], [], []
    for name in names:
        probs = torch.softmax(model.unembed(model.ln_final(cache[name])).float(), -1)[0]  # [pos, vocab]
        top = probs.topk(k, dim=-1)
        top_ids.append(top.indices)
        top_probs.append(top.values)
        if target_id is not None:
            t_probs.append(probs[:, target_id])
            t_ranks.append((probs > probs[:, target_id : target_id + 1]).sum(-1))
    top_ids_t = torch.stack(top_ids).cpu()
    decode = model.tokenizer.decode
    return LogitLensResult(
        top_ids=top_ids_t,
        top_probs=torch.stack(top_probs).cpu(),
        top_tokens=[[[decode([i]) for i in pos] for pos in layer.tolist()] for layer in top_ids_t],
        target_probs=torch.stack(t_probs).cpu() if t_probs else None,
        target_ranks=torch.stack(t_ranks).cpu() if t_ranks else None,
        str_tokens=tuple(decode([t]) for t in tokens[0].tolist()),
        layer_labels=("embed",) + tuple(f"L{layer}" for layer in range(n)),
        prompt=prompt,
        target=target,
    )


@dataclass
class DLAResult:
    """Direct contribution of each component to logit(target) − logit(foil) at the last
    position, through the final norm frozen at this prompt's scale. The parts sum to the
    model's logit difference exactly: ``embed + pos_embed + heads.sum() + attn_bias.sum()
    + mlp.sum() + constant``."""

    heads: Float[Tensor, "layer head"]
    attn_bias: Float[Tensor, " layer"]
    mlp: Float[Tensor, " layer"]
    embed: float
    pos_embed: float
    constant: float
    total: float
    prompt: str
    target: str
    foil: str | None

    @property
    def attn(self) -> Float[Tensor, " layer"]:
        """Per attention layer: its heads plus its output bias."""
        return self.heads.sum(-1) + self.attn_bias

    def plot(self):
        from interp_edit.viz.lens import dla_figure

        return dla_figure(self)

    def save(self, path: str | Path) -> tuple[Path, Path]:
        from interp_edit.viz.export import save_figure

        return save_figure(self.plot(), path)


@torch.no_grad()
def direct_logit_attribution(model, prompt: str, target: str, foil: str | None = None) -> DLAResult:
    """DLA of every attention head, attention bias, MLP layer and the embeddings to the target
    logit (minus the foil's) at the last position (first token of a multi-token target)."""
    from interp_edit.validation import check_str

    check_str(target, "target")
    check_str(foil, "foil", optional=True)
    tokens = _tokens(model, prompt)
    n = model.cfg.n_layers
    t_id = encode_target(model.tokenizer, target)[0]
    direction = model.W_U[:, t_id].clone()
    b_u = model.b_U[t_id].item()
    if foil is not None:
        f_id = encode_target(model.tokenizer, foil)[0]
        direction -= model.W_U[:, f_id]
        b_u -= model.b_U[f_id].item()
    names = [hook_name("embed"), hook_name("pos_embed"), hook_name("ln_final_scale")]
    names += [hook_name(site, layer) for site in ("z", "mlp_out") for layer in range(n)]
    logits, cache = run_with_cache(model, tokens, names)
    scale = cache[hook_name("ln_final_scale")][0, -1]  # [1]
    ln_w = getattr(model.ln_final, "w", None)
    ln_b = getattr(model.ln_final, "b", None)
    readout = direction * ln_w if ln_w is not None else direction
    centre = model.cfg.normalization_type in ("LN", "LNPre")

    def project(vectors: Tensor) -> Tensor:  # [..., d_model] -> [...]
        if centre:
            vectors = vectors - vectors.mean(-1, keepdim=True)
        return (vectors / scale) @ readout

    heads = torch.stack([
        project(einops.einsum(cache[hook_name("z", layer)][0, -1], model.W_O[layer], "h d, h d m -> h m"))
        for layer in range(n)
    ])
    attn_bias = torch.stack([project(model.b_O[layer]) for layer in range(n)])
    mlp = torch.stack([project(cache[hook_name("mlp_out", layer)][0, -1]) for layer in range(n)])
    constant = b_u + (ln_b @ direction).item() if ln_b is not None else b_u
    total = logits[0, -1, t_id].item() - (logits[0, -1, encode_target(model.tokenizer, foil)[0]].item() if foil else 0.0)
    return DLAResult(
        heads=heads.cpu(),
        attn_bias=attn_bias.cpu(),
        mlp=mlp.cpu(),
        embed=project(cache[hook_name("embed")][0, -1]).item(),
        pos_embed=project(cache[hook_name("pos_embed")][0, -1]).item(),
        constant=constant,
        total=total,
        prompt=prompt,
        target=target,
        foil=foil,
    )
