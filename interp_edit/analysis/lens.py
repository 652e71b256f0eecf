"""Logit lens and direct logit attribution (DLA)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp_edit.adapter import get_parameter, hook_name, norm_bias, norm_weight, run_with_cache, unembed
from interp_edit.adapter.architecture import architecture
from interp_edit.adapter.hooks import unembedding
from interp_edit.adapter.readout import write_gain, write_gain_names, write_scaled, write_weight, written
from interp_edit.analysis.scoring import encode_target
from interp_edit.batching import prompt_tokens


def _tokens(model, prompt: str) -> Tensor:
    # TransformerLens' to_tokens would silently truncate a prompt longer than the context
    return prompt_tokens(model, prompt)


@dataclass
class LogitLensResult:
    """The residual stream after the embedding (row 0) and after each layer, read through the
    final norm and unembedding (nostalgebraist's logit lens), with the model's final-logit
    soft-cap where it has one (Gemma-2): the last row is the model's output.

    ``top_ids`` / ``top_probs`` / ``top_tokens``: the ``k`` most likely next tokens, [layer + 1,
    pos, k]; ``target_probs`` / ``target_ranks``: the target's probability and rank (0 = top-1),
    [layer + 1, pos], or None without a target; ``layer_labels``: the row names.

    >>> lens = logit_lens(model, "Talvik Corlo was born in", "Karsa", k=3)
    >>> lens.top_probs.shape                     # embedding + 6 layers, 6 positions, k
    torch.Size([7, 6, 3])
    >>> lens.top_tokens[-1][-1][0]               # the model's top-1 at the last position
    ' Karsa'
    >>> fig = lens.plot()
    """

    top_ids: Int[Tensor, "layer pos k"]
    top_probs: Float[Tensor, "layer pos k"]
    top_tokens: list[list[list[str]]]
    target_probs: Float[Tensor, "layer pos"] | None
    target_ranks: Int[Tensor, "layer pos"] | None
    str_tokens: tuple[str, ...]
    layer_labels: tuple[str, ...]
    prompt: str
    target: str | None

    def __repr__(self) -> str:
        from interp_edit.reprs import number, short_repr, text

        final = text(self.top_tokens[-1][-1][0]) + f" {number(self.top_probs[-1, -1, 0].item(), 3)}"
        first = None
        if self.target_ranks is not None:
            top1 = (self.target_ranks[:, -1] == 0).nonzero().flatten().tolist()
            first = self.layer_labels[top1[0]] if top1 else "never"
        return short_repr("LogitLensResult", prompt=text(self.prompt), target=text(self.target) if self.target else None,
                          layers=str(len(self.layer_labels)), final_top1=final, target_top1_from=first)

    def plot(self):
        """A Plotly figure: layer × position grid coloured by the top-1 probability, annotated
        with the top-1 token (hover: the top-k); with a target, a second panel shows its
        probability."""
        from interp_edit.viz.lens import logit_lens_figure

        return logit_lens_figure(self)

    def save(self, path: str | Path) -> tuple[Path, Path]:
        from interp_edit.viz.export import save_figure

        return save_figure(self.plot(), path)


@torch.no_grad()
def logit_lens(model, prompt: str, target: str | None = None, *, k: int = 5) -> LogitLensResult:
    """Top-``k`` next tokens at every position after every layer; with ``target``, its
    probability and rank there too (first token of a multi-token target).

    >>> lens = logit_lens(model, "Talvik Corlo was born in", "Karsa")
    >>> lens
    LogitLensResult(prompt='Talvik Corlo was born in', target='Karsa', layers=7, final_top1=' Karsa' ..., target_top1_from=L2)
    >>> lens.target_ranks[:, -1].tolist()       # the target's rank after each layer
    [...]
    """
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
        probs = torch.softmax(unembed(model, model.ln_final(cache[name])).float(), -1)[0]  # [pos, vocab]
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
    position, through the final norm frozen at this prompt's scale. The parts sum to ``total``
    exactly: ``embed + pos_embed + heads.sum() + attn_bias.sum() + mlp.sum() + constant``.

    ``pos_embed`` is 0 for models without learned position embeddings (rotary). With
    post-sublayer norms (Gemma-2) a head's output and the attention bias pass through
    ``ln1_post`` frozen at this prompt's scale, so heads and bias still add up to ``attn_out``;
    with a residual multiplier (Granite) both are scaled by it, as ``attn_out`` is.
    With a final-logit soft-cap (Gemma-2), DLA is defined on the **pre-cap** logits (the cap
    is not additive): ``total`` is the pre-cap logit difference and ``model_total`` the model's
    (capped) one; without a cap they are equal. ``logit_softcap``: the cap, or None.

    >>> dla = direct_logit_attribution(model, "Talvik Corlo was born in", "Karsa", foil="Gemmel")
    >>> dla.heads.shape, dla.mlp.shape           # [layer, head], [layer]
    (torch.Size([6, 4]), torch.Size([6]))
    >>> parts = dla.embed + dla.pos_embed + dla.heads.sum() + dla.attn_bias.sum() + dla.mlp.sum() + dla.constant
    >>> abs(float(parts) - dla.total) < 1e-3
    True
    >>> fig = dla.plot()
    """

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
    model_total: float | None = None
    logit_softcap: float | None = None

    @property
    def attn(self) -> Float[Tensor, " layer"]:
        """Per attention layer: its heads plus its output bias."""
        return self.heads.sum(-1) + self.attn_bias

    def __repr__(self) -> str:
        from interp_edit.reprs import number, short_repr, text

        parts = {f"L{layer}H{head}": self.heads[layer, head].item() for layer in range(self.heads.shape[0])
                 for head in range(self.heads.shape[1])}
        parts |= {f"MLP{layer}": v for layer, v in enumerate(self.mlp.tolist())} | {"embed": self.embed}
        top = sorted(parts.items(), key=lambda kv: -abs(kv[1]))[:3]
        return short_repr("DLAResult", prompt=text(self.prompt), target=text(self.target),
                          foil=text(self.foil) if self.foil is not None else None, total=number(self.total),
                          top="[" + ", ".join(f"{k} {v:+.3g}" for k, v in top) + "]")

    def plot(self):
        """A Plotly figure: per layer the attention (heads + bias) and MLP direct effects, and a
        heatmap per head."""
        from interp_edit.viz.lens import dla_figure

        return dla_figure(self)

    def save(self, path: str | Path) -> tuple[Path, Path]:
        from interp_edit.viz.export import save_figure

        return save_figure(self.plot(), path)


@torch.no_grad()
def direct_logit_attribution(model, prompt: str, target: str, foil: str | None = None) -> DLAResult:
    """DLA of every attention head, attention bias, MLP layer and the embeddings to the target
    logit (minus the foil's) at the last position (first token of a multi-token target).

    >>> dla = direct_logit_attribution(model, "Talvik Corlo was born in", "Karsa")
    >>> dla
    DLAResult(prompt='Talvik Corlo was born in', target='Karsa', total=..., top=[...])
    >>> int(dla.mlp.argmax())                    # the MLP layer that writes the answer most
    2
    """
    from interp_edit.validation import check_str

    check_str(target, "target")
    check_str(foil, "foil", optional=True)
    tokens = _tokens(model, prompt)
    n = model.cfg.n_layers
    t_id = encode_target(model.tokenizer, target)[0]
    w_u, b_unembed = unembedding(model)  # times the logit scale (Cohere, Granite)
    # the decomposition is computed in float32 at least (a half-precision model's pieces are cast)
    acc = torch.promote_types(w_u.dtype, torch.float32)
    direction = w_u[:, t_id].detach().to(acc, copy=True)
    b_u = b_unembed[t_id].item()
    if foil is not None:
        f_id = encode_target(model.tokenizer, foil)[0]
        direction -= w_u[:, f_id].detach().to(acc)
        b_u -= b_unembed[f_id].item()
    arch = architecture(model)
    names = [hook_name("embed"), hook_name("ln_final_scale")] + write_gain_names(model)
    if arch.has_pos_embed:
        names.append(hook_name("pos_embed"))
    names += [hook_name(site, layer) for site in ("z", "mlp_out") for layer in range(n)]
    names.append(hook_name("resid_post", n - 1))
    logits, cache = run_with_cache(model, tokens, names)
    scale = cache[hook_name("ln_final_scale")][0, -1].to(acc)  # [1]
    ln_w, ln_b = norm_weight(model, "ln_final").to(acc), norm_bias(model, "ln_final").to(acc)  # ones / zeros where folded
    readout = direction * ln_w
    centre = arch.norm_centres

    def project(vectors: Tensor) -> Tensor:  # [..., d_model] -> [...]
        vectors = vectors.to(acc)
        if centre:
            vectors = vectors - vectors.mean(-1, keepdim=True)
        return (vectors / scale) @ readout

    def gain(layer: int) -> Tensor | None:
        g = write_gain(model, cache, layer, "attn")
        return None if g is None else g[0, -1]

    heads = torch.stack([
        project(written(einops.einsum(cache[hook_name("z", layer)][0, -1].to(acc), write_weight(model, "W_O", layer).to(acc),
                                      "h d, h d m -> h m"), gain(layer)))
        for layer in range(n)
    ])
    attn_bias = torch.stack([project(written(write_scaled(model, get_parameter(model, f"blocks.{layer}.attn.b_O").detach()), gain(layer)))
                             for layer in range(n)])
    mlp = torch.stack([project(cache[hook_name("mlp_out", layer)][0, -1]) for layer in range(n)])
    constant = b_u + (ln_b @ direction).item()
    f_id = encode_target(model.tokenizer, foil)[0] if foil else None
    model_total = logits[0, -1, t_id].item() - (logits[0, -1, f_id].item() if foil else 0.0)
    total = model_total
    if arch.logit_softcap is not None:  # the pre-cap logits, from the final residual
        raw = model.ln_final(cache[hook_name("resid_post", n - 1)][:, -1:])[0, 0] @ w_u + b_unembed
        total = raw[t_id].item() - (raw[f_id].item() if foil else 0.0)
    return DLAResult(
        heads=heads.cpu(),
        attn_bias=attn_bias.cpu(),
        mlp=mlp.cpu(),
        embed=project(cache[hook_name("embed")][0, -1]).item(),
        pos_embed=project(cache[hook_name("pos_embed")][0, -1]).item() if arch.has_pos_embed else 0.0,
        constant=constant,
        total=total,
        model_total=model_total,
        logit_softcap=arch.logit_softcap,
        prompt=prompt,
        target=target,
        foil=foil,
    )
