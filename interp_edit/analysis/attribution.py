"""Neuron-level knowledge attribution (NLKA, Yu & Ananiadou, EMNLP 2024; spec A3).

Every score is a log-probability increase of the target token at the last position, read
through the *frozen* final norm: for a residual-stream vector ``x``

    U(x) = (γ ⊙ (x − mean x) / σ*) @ W_U,        p(· | x) = softmax(U(x)),

where ``σ*`` is this prompt's final-norm scale (``ln_final.hook_scale`` at the last position)
and γ the final norm's gain. Centring applies to LayerNorm only (RMSNorm: none). The final
norm's bias β and the unembedding bias b_U are **dropped** by default, as in the spec; with
``keep_bias=True`` they are added (``β @ W_U + b_U``) and ``U`` of the last residual is then
exactly the model's logits. Because ``U`` is affine, adding ``c · w`` to a base residual moves
the logits along a fixed direction ``U_lin(w)``: all neurons of a layer are scored with one
batched projection of their output weights and one log-sum-exp per neuron (chunked to bound
memory), from a single cached forward — no loop over neurons.

- FFN value neuron (l, i): ``v = m_i · W_out^l[i]`` (``m`` = ``mlp.hook_post`` at the last
  position), base = ``resid_mid^l`` = h^{l−1} + A^l.
- Attention neuron (l, h, j, p): ``v = α_h(T→p) · v_{g(h),p,j} · W_O^l[h, j]`` (g(h): the
  key/value head query head h reads, grouped-query attention), base = ``resid_pre^l`` = h^{l−1}.
  The attention output bias ``b_O`` belongs to no neuron; head score = the sum of its neurons'
  scores over j and p.
- Layer scores: attention ``log p(h^{l−1}+A^l) − log p(h^{l−1})``, FFN
  ``log p(h^{l−1}+A^l+F^l) − log p(h^{l−1}+A^l)``.

Every family (:mod:`interp_edit.adapter.readout`): **parallel blocks** (GPT-J, NeoX, Phi) have
no ``resid_mid``; the block is still read attention first, so an FFN neuron's base is
``h^{l−1} + A^l`` and the layer scores still add up to the total, but the FFN *reads* h^{l−1}:
its query shares never credit A^l. **Post-sublayer norms** (Gemma-2): a neuron's vector passes
through ``ln1_post`` / ``ln2_post`` with that norm's scale frozen at the prompt's value (as the
final norm is), ``v ⊙ γ_post / σ_post``; the neurons' vectors then add up to ``attn_out`` /
``mlp_out`` exactly and the readout stays exact. **Residual multiplier** (Granite): a block adds
``r · out``, so a neuron's vector is ``r · v`` (``readout.write_weight``); again the vectors add up
to ``attn_out`` / ``mlp_out``. **Gated MLPs**: an FFN neuron's query shares
are read through ``W_gate``, where its nonlinearity acts. **Final-logit soft-cap** (Gemma-2):
``U`` ends with ``cap · tanh(· / cap)``, as the model does.

**Exact top-k at real size** (``method="exact_top_k"``): the first-order scores are upper bounds
of the exact ones (the frozen readout is affine and log-sum-exp convex; a soft-capped readout
gets its own bound), so only the neurons whose bound could beat the k-th exact score are scored
exactly (:mod:`interp_edit.analysis.attribution_bounds`). Exact scores are computed as
``x_t − log1p(Σ_v p₀_v expm1(x_v))`` (x: the logit shift), which keeps a small score's precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from interp_edit.adapter import hook_name, layer_weight, norm_bias, norm_centres, norm_weight, run_with_cache
from interp_edit.adapter.architecture import architecture
from interp_edit.adapter.hooks import unembedding
from interp_edit.adapter.readout import (
    ffn_base,
    ffn_gate_weight,
    ffn_input,
    softcap,
    stream_names,
    stream_points,
    write_gain,
    write_gain_names,
    write_weight,
    written,
)
from interp_edit.analysis.attribution_bounds import (
    CertifiedTopK,
    certified_top_k,
    ranked,
    readout_gradients,
    score_upper_bounds,
    slack,
)
from interp_edit.analysis.scoring import encode_target
from interp_edit.batching import prompt_tokens
from interp_edit.errors import InvalidArgumentError

#: Elements of the largest temporary [rows, positions, vocab] logits block.
CHUNK_ELEMENTS = 1 << 24
#: ``exact``: the spec's log-probability increases of every neuron; ``first_order``: their
#: gradient approximation; ``exact_top_k``: the exact top-k (certified by upper bounds, see
#: :mod:`interp_edit.analysis.attribution_bounds`) with exact scores of the neurons it scored.
METHODS = ("exact", "first_order", "exact_top_k")


@dataclass(frozen=True)
class Neuron:
    """An FFN neuron ``(layer, index)`` or an attention neuron ``(layer, head, index = head
    dimension j)``, optionally restricted to one source position ``pos``.

    >>> Neuron("ffn", 2, 7).label, Neuron("attn", 3, 5, head=1).label
    ('L2N7', 'L3H1.5')
    >>> res = ablate_neurons(model, [Neuron("ffn", 2, 7)], "Talvik Corlo was born in")
    """

    kind: str
    layer: int
    index: int
    head: int | None = None
    pos: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("ffn", "attn"):
            raise InvalidArgumentError(f"neuron kind must be 'ffn' or 'attn', got {self.kind!r}")
        if self.kind == "attn" and self.head is None:
            raise InvalidArgumentError(f"attention neuron L{self.layer} d{self.index} needs a head")

    @property
    def label(self) -> str:
        if self.kind == "ffn":
            return f"L{self.layer}N{self.index}"
        return f"L{self.layer}H{self.head}.{self.index}" + (f"@{self.pos}" if self.pos is not None else "")


@dataclass(frozen=True)
class ScoredNeuron:
    """A neuron with its score, its coefficient (activation ``m_i`` or ``α·v``) and the tokens
    its output vector promotes most (vocabulary projection through the frozen final norm).

    >>> best = neuron_attribution(model, "Talvik Corlo was born in", "Karsa", top_k=5).top_ffn[0]
    >>> best.neuron.kind, best.score > 0, len(best.top_tokens)
    ('ffn', True, 5)
    """

    neuron: Neuron
    score: float
    coefficient: float
    top_tokens: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.neuron.label


@dataclass(frozen=True)
class FrozenUnembed:
    """The readout ``U(x) = cap((γ ⊙ centre(x) / σ*) @ W_U (+ bias))``: affine, then the
    final-logit soft-cap ``cap · tanh(· / cap)`` where the model has one (``softcap``)."""

    w_u: Float[Tensor, "d_model vocab"]  # γ[:, None] * W_U
    scale: float
    centre: bool
    bias: Float[Tensor, " vocab"] | None
    softcap: float | None = None

    def directions(self, vectors: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
        """The linear part: how adding ``vectors`` moves the (pre-cap) logits."""
        if self.centre:
            vectors = vectors - vectors.mean(-1, keepdim=True)
        return (vectors / self.scale) @ self.w_u

    def directions_dot(self, vectors: Float[Tensor, "n d_model"], readout_vector: Float[Tensor, " d_model"]) -> Float[Tensor, " n"]:
        """``directions(vectors) @ y`` given ``readout_vector = w_u @ y`` (no vocabulary-sized product)."""
        if self.centre:
            vectors = vectors - vectors.mean(-1, keepdim=True)
        return (vectors / self.scale) @ readout_vector

    def raw_logits(self, residual: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
        """The logits before the soft-cap."""
        out = self.directions(residual)
        return out + self.bias if self.bias is not None else out

    def logits(self, residual: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
        return softcap(self.raw_logits(residual), self.softcap)

    def logprob(self, residual: Float[Tensor, "*batch d_model"], target_id: int) -> Float[Tensor, "*batch"]:
        return torch.log_softmax(self.logits(residual).float(), -1)[..., target_id]


def frozen_unembed(model, scale: float, *, keep_bias: bool = False) -> FrozenUnembed:
    """The final norm frozen at ``scale`` (σ*) followed by the unembedding."""
    gamma = norm_weight(model, "ln_final")
    w_u, b_u = (w.detach() for w in unembedding(model))
    bias = norm_bias(model, "ln_final") @ w_u + b_u if keep_bias else None
    return FrozenUnembed(gamma[:, None] * w_u, float(scale), norm_centres(model), bias, architecture(model).logit_softcap)


def shifted_logprobs(
    readout: FrozenUnembed,
    base: Float[Tensor, " d_model"],
    weights: Float[Tensor, "row d_model"],
    coefs: Float[Tensor, "row pos"],
    target_id: int,
    *,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> Float[Tensor, "row pos"]:
    """``log p(target | base + coefs[r, p] · weights[r]) − log p(target | base)`` for every row
    and column, through the frozen readout. Rows are processed in chunks so that the temporary
    logits stay below ``chunk_elements``."""
    return _shifted(readout, base, weights, coefs, target_id, chunk_elements, 0)[0]


def _shifted(readout, base, weights, coefs, target_id, chunk_elements, n_tokens,
             base_logits: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """:func:`shifted_logprobs` and, for ``n_tokens > 0``, the ids of the ``n_tokens`` tokens each
    row's direction promotes most (``up``) and least (``down``: what ``−direction`` promotes).
    ``base_logits``: ``readout.raw_logits(base)``, if already computed."""
    # before the soft-cap: adding c · w is affine here
    base_logits = (readout.raw_logits(base) if base_logits is None else base_logits).float()
    n_rows, n_pos = coefs.shape
    vocab = base_logits.shape[-1]
    step = max(1, chunk_elements // (n_pos * vocab))
    out = torch.empty(n_rows, n_pos, dtype=torch.float32, device=coefs.device)
    n_tokens = min(n_tokens, vocab)
    up = torch.empty(n_rows, n_tokens, dtype=torch.long, device=coefs.device) if n_tokens else None
    down = torch.empty(n_rows, n_tokens, dtype=torch.long, device=coefs.device) if n_tokens else None
    for start in range(0, n_rows, step):
        dirs = readout.directions(weights[start : start + step])  # [r, vocab]
        if n_tokens:
            up[start : start + step] = dirs.topk(n_tokens, dim=-1).indices
            down[start : start + step] = (-dirs).topk(n_tokens, dim=-1).indices
        out[start : start + step] = shifted_by_directions(base_logits, dirs, coefs[start : start + step], target_id,
                                                          readout.softcap)
    return out, up, down


def shifted_by_directions(base_logits: Float[Tensor, " vocab"], dirs: Float[Tensor, "row vocab"],
                          coefs: Float[Tensor, "row pos"], target_id: int, cap: float | None) -> Float[Tensor, "row pos"]:
    """The exact log-prob increase ``log p_t(cap(base_logits + c · dirs)) − log p_t(cap(base_logits))``
    (``base_logits``: pre-cap; ``dirs``: the rows' :meth:`FrozenUnembed.directions`).

    With ``x = cap(base_logits + c · dirs) − cap(base_logits)`` and ``p₀`` the base distribution it
    is ``x_t − log Σ_v p₀_v e^{x_v}``, computed as ``x_t − log1p(Σ_v p₀_v expm1(x_v))``: no
    difference of two log-sum-exps of the whole logits, so the score keeps its own relative
    precision instead of float32's absolute error at the logits' scale (where ``Σ p₀ e^x < 1/2``,
    so that ``1 + Σ p₀ expm1 x`` would cancel, or ``x > 60``, where ``expm1`` could overflow, it
    uses the log-sum-exp form)."""
    base_logits = base_logits.float()
    dirs, c = dirs.float(), coefs.float()
    base_capped = softcap(base_logits, cap)
    log_p0 = torch.log_softmax(base_capped, -1)
    if cap is None:
        shift = c[..., None] * dirs[:, None, :]  # [r, pos, vocab]
        target = c * dirs[:, target_id, None]
    else:
        shift = softcap(torch.addcmul(base_logits, c[..., None], dirs[:, None, :]), cap) - base_capped
        target = softcap(base_logits[target_id] + c * dirs[:, target_id, None], cap) - base_capped[target_id]
    moved = torch.expm1(shift) @ log_p0.exp()  # Σ p₀ (e^x − 1); inf / NaN where e^x overflows (recomputed below)
    # where most of the base mass moves away (Σ p₀ e^x < 1/2) or e^x could overflow, 1 + moved
    # would cancel: use the log-sum-exp form there
    other = (moved < -0.5) | (shift.amax(-1) > 60.0)
    out = target - torch.log1p(moved)
    if other.any():
        out[other] = target[other] - torch.logsumexp(shift[other] + log_p0, -1)
    return out


def first_order_logprobs(
    readout: FrozenUnembed,
    base: Float[Tensor, " d_model"],
    weights: Float[Tensor, "row d_model"],
    coefs: Float[Tensor, "row pos"],
    target_id: int,
) -> Float[Tensor, "row pos"]:
    """The first-order (gradient) approximation of :func:`shifted_logprobs`:
    ``coefs · (U_lin(w)[target] − E_{p(·|base)} U_lin(w))``. One matrix-vector product per row
    block instead of a projection onto the whole vocabulary; exact as ``coefs → 0``."""
    raw = readout.raw_logits(base).float()
    probs = torch.softmax(softcap(raw, readout.softcap), -1)
    dlogp = -probs
    dlogp[target_id] += 1.0  # ∂ log p(target) / ∂ (capped) logits
    if readout.softcap is not None:  # chain rule through cap · tanh(x / cap)
        dlogp = dlogp * (1 - torch.tanh(raw / readout.softcap) ** 2)
    grad = readout.w_u @ dlogp.to(readout.w_u.dtype)  # [d_model]
    slopes = readout.directions_dot(weights, grad)  # [row]
    return coefs.float() * slopes[:, None].float()


def resolve_target(model, target: str | int | None, logits: Float[Tensor, " vocab"], prompt: str) -> tuple[int, str | None]:
    """The target token id and, for a multi-token target string, a note that only its first
    token is scored. ``None``: the model's top-1 next token."""
    if target is None:
        return int(logits.argmax()), None
    if isinstance(target, int):
        if not 0 <= target < logits.shape[-1]:
            raise InvalidArgumentError(f"target id {target} is outside the vocabulary (size {logits.shape[-1]}) for prompt {prompt!r}")
        return target, None
    ids = encode_target(model.tokenizer, target)
    if len(ids) == 1:
        return ids[0], None
    first = model.tokenizer.decode([ids[0]])
    return ids[0], f"target {target!r} is {len(ids)} tokens; only its first token {first!r} is scored"


def _layer_names(model) -> list[str]:
    """The residual points of every layer and the post-sublayer norm scales (where there are)."""
    return stream_names(model) + write_gain_names(model)


def _layer_scores(model, cache: dict[str, Tensor], readout: FrozenUnembed, target_id: int) -> Float[Tensor, "layer 2"]:
    lp = readout.logprob(stream_points(model, cache)[0, :, -1], target_id)  # [2n + 1]
    steps = lp[1:] - lp[:-1]
    return einops.rearrange(steps, "(layer kind) -> layer kind", kind=2).cpu()


@torch.no_grad()
def check_keep_bias(keep_bias) -> None:
    """``keep_bias`` is True or False (a truthy string such as "no" would silently mean True)."""
    if not isinstance(keep_bias, bool):
        raise InvalidArgumentError(f"keep_bias must be True or False, got {keep_bias!r}")


def layer_attribution_scores(model, prompt: str, target: str | int, *, keep_bias: bool = False) -> Float[Tensor, "layer 2"]:
    """Layer-level NLKA scores of ``target`` (a token id, or a string: its first token) at the
    last position: ``[:, 0]`` attention layers, ``[:, 1]`` FFN layers (see the module doc).
    One forward; cheap enough to call for the new and the old object on an edited model.

    >>> scores = layer_attribution_scores(model, "Talvik Corlo was born in", "Karsa")
    >>> scores.shape                       # [layer, attention | FFN]
    torch.Size([6, 2])
    >>> e = rome(model, records[:1])
    >>> with e.applied(model):
    ...     after = layer_attribution_scores(model, "Talvik Corlo was born in", "Gemmel")
    """
    check_keep_bias(keep_bias)
    tokens = prompt_tokens(model, prompt)
    names = _layer_names(model) + [hook_name("ln_final_scale")]
    logits, cache = run_with_cache(model, tokens, names)
    target_id, _ = resolve_target(model, target, logits[0, -1], prompt)
    readout = frozen_unembed(model, cache[hook_name("ln_final_scale")][0, -1].item(), keep_bias=keep_bias)
    return _layer_scores(model, cache, readout, target_id)


def _scores(readout, base, weights, coefs, target_id, method: str, chunk_elements: int, base_logits: Tensor | None = None) -> Tensor:
    if method == "first_order":
        return first_order_logprobs(readout, base, weights, coefs, target_id)
    return _shifted(readout, base, weights, coefs, target_id, chunk_elements, 0, base_logits)[0]


def _base_logits(readout: FrozenUnembed, bases: Sequence[Tensor]) -> Float[Tensor, "layer vocab"]:
    """The pre-cap logits of every layer's base residual in one product (the unembedding read
    once; the full and the ``exact_top_k`` computations share these bits)."""
    return readout.raw_logits(torch.stack(list(bases))).float()


def ffn_value_scores(model, cache: dict[str, Tensor], readout: FrozenUnembed, target_id: int,
                     *, method: str = "exact", chunk_elements: int = CHUNK_ELEMENTS) -> Float[Tensor, "layer d_mlp"]:
    """Value scores of every FFN neuron at the last position (needs :func:`_layer_names` and
    ``mlp_post`` of every layer in ``cache``)."""
    rows = []
    bases = [ffn_base(model, cache, layer)[0, -1] for layer in range(model.cfg.n_layers)]
    base_logits = _base_logits(readout, bases)
    for layer in range(model.cfg.n_layers):
        acts = cache[hook_name("mlp_post", layer)][0, -1]
        rows.append(_scores(readout, bases[layer], _ffn_vectors(model, cache, layer),
                            acts[:, None], target_id, method, chunk_elements, base_logits[layer])[:, 0])
    return torch.stack(rows)


def _ffn_vectors(model, cache: dict[str, Tensor], layer: int) -> Float[Tensor, "d_mlp d_model"]:
    """What a unit activation of each FFN neuron of ``layer`` adds to the residual at the last position."""
    gain = write_gain(model, cache, layer, "mlp")
    return written(write_weight(model, "W_out", layer), None if gain is None else gain[0, -1])


def _attn_vectors(model, cache: dict[str, Tensor], layer: int) -> Float[Tensor, "head d_head d_model"]:
    """What a unit ``z`` of each attention neuron of ``layer`` adds to the residual at the last position."""
    gain = write_gain(model, cache, layer, "attn")
    return written(write_weight(model, "W_O", layer), None if gain is None else gain[0, -1])


def _per_head(model, tensor: Tensor, axis: int) -> Tensor:
    """``tensor`` with one entry per query head along ``axis``: grouped-query attention stores
    one per key/value head, which several query heads read (query head h reads kv head
    ``architecture(model).kv_head(h)``)."""
    arch = architecture(model)
    if tensor.shape[axis] == arch.n_heads:
        return tensor
    if tensor.shape[axis] != arch.n_kv_heads:
        raise ValueError(f"expected {arch.n_heads} query or {arch.n_kv_heads} key/value heads along axis {axis}, got {tensor.shape[axis]}")
    index = torch.tensor([arch.kv_head(h) for h in range(arch.n_heads)], device=tensor.device)
    return tensor.index_select(axis, index)


def _attention_coefficients(model, cache: dict[str, Tensor], layer: int) -> Float[Tensor, "head d_head pos"]:
    """``α_h(T→p) · v_{g(h),p,j}`` of every attention neuron (T = the last position)."""
    pattern = cache[hook_name("pattern", layer)][0, :, -1]  # [head, pos]
    values = _per_head(model, cache[hook_name("v", layer)][0], 1)  # [pos, head, d_head]
    return einops.einsum(pattern, values, "head pos, pos head d -> head d pos")


@dataclass
class NeuronAttributionResult:
    """Value neurons, query neurons and layer scores of one prompt (see the module doc).

    Scores are log-probability increases of ``target_id`` at the last position. ``top_ffn`` /
    ``top_attn``: the ``top_k`` FFN / attention value neurons (separately, best first).
    ``query_neurons``: earlier FFN neurons ranked by their accumulated share in the value
    vectors read by the top attention value neurons. ``ffn_query_scores[l, 0 | 1]``: the
    share of attention / FFN layer ``l``'s output (``ffn_query_embed``: the embeddings') in the
    input of the top FFN value neurons, times their importance. With ``method="exact_top_k"``
    the score tensors are NaN where a neuron was not scored and ``ffn_bounds`` / ``attn_bounds``
    (else ``None``) hold upper bounds of every neuron's score.

    >>> res = neuron_attribution(model, "Talvik Corlo was born in", "Karsa", top_k=5)
    >>> res.ffn_scores.shape, res.layer_scores.shape     # [layer, d_mlp], [layer, attn | ffn]
    (torch.Size([6, 512]), torch.Size([6, 2]))
    >>> [n.label for n in res.value_neurons(2, kinds=("ffn",))]
    ['L0N299', 'L0N179']
    >>> fig = res.plot()                                 # or res.plot("heads"), ...
    """

    prompt: str
    str_tokens: tuple[str, ...]
    target: str | int | None
    target_id: int
    target_token: str
    target_note: str | None
    top_k: int
    keep_bias: bool
    logprob: float
    model_logprob: float
    layer_scores: Float[Tensor, "layer 2"]
    ffn_scores: Float[Tensor, "layer d_mlp"]
    ffn_activations: Float[Tensor, "layer d_mlp"]
    attn_scores: Float[Tensor, "layer head d_head pos"]
    attn_coefficients: Float[Tensor, "layer head d_head pos"]
    top_ffn: list[ScoredNeuron]
    top_attn: list[ScoredNeuron]
    query_scores: Float[Tensor, "layer d_mlp"]
    query_neurons: list[ScoredNeuron]
    ffn_query_scores: Float[Tensor, "layer 2"]
    ffn_query_embed: float
    settings: dict = field(default_factory=dict)
    ffn_bounds: Float[Tensor, "layer d_mlp"] | None = None
    attn_bounds: Float[Tensor, "layer head d_head pos"] | None = None

    @property
    def head_scores(self) -> Float[Tensor, "layer head"]:
        return self.attn_scores.sum((-1, -2))

    def value_neurons(self, k: int | None = None, kinds: Sequence[str] = ("ffn", "attn")) -> list[ScoredNeuron]:
        """The best ``k`` value neurons of the chosen kinds together (default: ``top_k``)."""
        pool = (self.top_ffn if "ffn" in kinds else []) + (self.top_attn if "attn" in kinds else [])
        return sorted(pool, key=lambda s: -s.score)[: k or self.top_k]

    def table(self, k: int = 10) -> list[dict]:
        """Rows for printing / a DataFrame: the best ``k`` value neurons of both kinds."""
        return [dict(rank=r, neuron=s.label, kind=s.neuron.kind, score=s.score, coefficient=s.coefficient,
                     top_tokens=", ".join(repr(t) for t in s.top_tokens)) for r, s in enumerate(self.value_neurons(k), 1)]

    def __repr__(self) -> str:
        from interp_edit.reprs import number, short_repr, text

        best = self.layer_scores.flatten().argmax().item()
        return short_repr("NeuronAttributionResult", prompt=text(self.prompt), target=text(self.target_token),
                          logprob=number(self.model_logprob),
                          top_neurons="[" + ", ".join(f"{s.label} {s.score:+.3g}" for s in self.value_neurons(3)) + "]",
                          best_layer=f"L{best // 2} {('attn', 'ffn')[best % 2]} {number(self.layer_scores.flatten()[best].item(), 3)}")

    def _repr_html_(self) -> str:
        from interp_edit.reprs import html_table

        rows = [(r["rank"], r["neuron"], r["kind"], r["score"], r["coefficient"], r["top_tokens"]) for r in self.table(10)]
        return html_table(f"Neuron attribution of {self.prompt!r} → {self.target_token!r} (log p {self.model_logprob:.4f})",
                          ("rank", "neuron", "kind", "score", "coefficient", "promotes"), rows)

    def plot(self, view: str = "overview"):
        """A Plotly figure: ``overview`` (top neurons, heads and layer heatmap), ``neurons``,
        ``heads``, ``layers``, ``query``.

        >>> fig = neuron_attribution(model, "Talvik Corlo was born in", top_k=5).plot("layers")
        """
        from interp_edit.viz.attribution import attribution_figure

        return attribution_figure(self, view)

    def save(self, path: str | Path, view: str = "overview") -> tuple[Path, Path]:
        from interp_edit.viz.export import save_figure

        return save_figure(self.plot(view), path)


def _promoted_tokens(model, readout: FrozenUnembed, vectors: Float[Tensor, "n d_model"], n_tokens: int) -> list[tuple[str, ...]]:
    if len(vectors) == 0 or n_tokens <= 0:
        return [() for _ in range(len(vectors))]
    top = readout.directions(vectors).topk(min(n_tokens, readout.w_u.shape[1]), dim=-1).indices.tolist()
    names = {i: model.tokenizer.decode([i]) for i in {i for row in top for i in row}}
    return [tuple(names[i] for i in row) for row in top]


def _top(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Best first, ties by flat index, NaN (not scored) last: :func:`~interp_edit.analysis.attribution_bounds.ranked`."""
    return ranked(scores.flatten(), min(k, scores.numel()))


@torch.no_grad()
def neuron_attribution(
    model,
    prompt: str,
    target: str | int | None = None,
    *,
    top_k: int = 300,
    keep_bias: bool = False,
    n_tokens: int = 5,
    method: str = "exact",
    chunk_elements: int = CHUNK_ELEMENTS,
    memory_budget: int | float | None = None,
) -> NeuronAttributionResult:
    """NLKA of one prompt: exact log-prob increase of every FFN and attention neuron, layer
    scores, query neurons / layers, and the promoted tokens of the top neurons.

    ``target``: a string (leading space added; a multi-token string is scored by its first
    token and ``target_note`` says so), a token id, or ``None`` for the model's top-1 token.
    Each list holds ``min(top_k, neurons of its kind)`` neurons (the result's ``top_k`` is the number
    asked for). ``keep_bias``: add the final norm's and the
    unembedding's biases to the readout (default: dropped, as in the spec). ``n_tokens``: tokens
    shown per top neuron. ``method="first_order"`` replaces each neuron's exact score by its
    gradient approximation ``c · ∂ log p / ∂c`` at the base (no projection of every neuron onto
    the vocabulary: for large vocabularies far cheaper, but not exact; layer scores stay exact).
    ``memory_budget`` (bytes; None: a share of the free memory, the rule of
    :func:`interp_edit.batching.resolve_memory_budget`) caps the temporary logits of the exact
    projections at ``budget / 16`` elements (float32 logits and two temporaries of their size)
    besides ``chunk_elements``; the scores do not depend on it.
    ``method="exact_top_k"``: ``top_ffn`` / ``top_attn`` are exactly those of ``"exact"`` (same
    neurons, order, exact scores and promoted tokens; ties by flat index in both), but only the
    neurons whose first-order upper bound could beat the k-th exact score are projected onto the
    vocabulary (:mod:`~interp_edit.analysis.attribution_bounds`). ``ffn_scores`` / ``attn_scores``
    are exact where scored and NaN elsewhere (so is a ``head_scores`` entry with an unscored
    neuron), ``ffn_bounds`` / ``attn_bounds`` hold every neuron's upper bound, ``settings`` the
    rows scored; layer scores and query neurons / layers are those of ``"exact"``.

    >>> res = neuron_attribution(model, "Talvik Corlo was born in", "Karsa", top_k=5)
    >>> res
    NeuronAttributionResult(prompt='Talvik Corlo was born in', target=' Karsa', logprob=..., top_neurons=[L0N299 ...], best_layer=...)
    >>> rows = res.table(3)                              # dicts, e.g. for a DataFrame
    >>> fast = neuron_attribution(model, "Talvik Corlo was born in", "Karsa", top_k=5, method="exact_top_k")
    >>> [n.label for n in fast.top_ffn] == [n.label for n in res.top_ffn]
    True
    """
    from interp_edit.batching import resolve_memory_budget
    from interp_edit.validation import check_int

    check_int(top_k, f"top_k (prompt {prompt!r})", minimum=1)
    check_int(n_tokens, "n_tokens", minimum=0)
    check_int(chunk_elements, "chunk_elements", minimum=1)
    chunk_elements = max(1, min(chunk_elements, resolve_memory_budget(memory_budget, model.cfg.device) // 16))
    check_keep_bias(keep_bias)
    if target is not None and (isinstance(target, bool) or not isinstance(target, (str, int))):
        raise InvalidArgumentError(f"target must be a string, a token id or None, got {target!r} ({type(target).__name__})")
    if not isinstance(method, str) or method not in METHODS:
        raise InvalidArgumentError(f"unknown method {method!r}; choose one of {METHODS} (prompt {prompt!r})")
    tokens = prompt_tokens(model, prompt)
    n = model.cfg.n_layers
    names = _layer_names(model) + [hook_name("ln_final_scale"), hook_name("embed")]
    if architecture(model).has_pos_embed:
        names.append(hook_name("pos_embed"))
    names += [hook_name(site, layer) for site in ("mlp_post", "v", "pattern", "attn_out", "mlp_out") for layer in range(n)]
    logits, cache = run_with_cache(model, tokens, names)
    target_id, note = resolve_target(model, target, logits[0, -1], prompt)
    readout = frozen_unembed(model, cache[hook_name("ln_final_scale")][0, -1].item(), keep_bias=keep_bias)

    ffn_acts = torch.stack([cache[hook_name("mlp_post", layer)][0, -1] for layer in range(n)])
    attn_coefs_t = torch.stack([_attention_coefficients(model, cache, layer) for layer in range(n)])  # [layer, head, d, pos]
    ffn_bounds = attn_bounds = ffn_tokens = attn_tokens = None
    extra: dict = {}
    if method == "exact_top_k":
        ffn_cert, ffn_tokens = _certified_ffn(model, cache, readout, target_id, min(top_k, ffn_acts.numel()), n_tokens,
                                              chunk_elements, prompt)
        attn_cert, attn_tokens = _certified_attn(model, cache, readout, target_id, attn_coefs_t,
                                                 min(top_k, attn_coefs_t.numel()), n_tokens, chunk_elements, prompt)
        ffn_scores, ffn_bounds = ffn_cert.scores.view_as(ffn_acts), ffn_cert.bounds.view_as(ffn_acts)
        attn_scores_t, attn_bounds = attn_cert.scores.view_as(attn_coefs_t), attn_cert.bounds.view_as(attn_coefs_t)
        extra = dict(scored=dict(ffn=ffn_cert.rows_scored, attn=attn_cert.rows_scored),
                     neurons=dict(ffn=ffn_acts.numel(), attn=attn_coefs_t.numel()),
                     rounds=dict(ffn=ffn_cert.rounds, attn=attn_cert.rounds))
    else:
        ffn_scores = ffn_value_scores(model, cache, readout, target_id, method=method, chunk_elements=chunk_elements)
        attn_scores = []
        attn_bases = [cache[hook_name("resid_pre", layer)][0, -1] for layer in range(n)]
        attn_logits = _base_logits(readout, attn_bases)
        for layer in range(n):
            w_o = einops.rearrange(_attn_vectors(model, cache, layer), "head d m -> (head d) m")
            flat = _scores(readout, attn_bases[layer], w_o, einops.rearrange(attn_coefs_t[layer], "head d pos -> (head d) pos"),
                           target_id, method, chunk_elements, attn_logits[layer])
            attn_scores.append(flat.view_as(attn_coefs_t[layer]))
        attn_scores_t = torch.stack(attn_scores)

    top_ffn = _scored_ffn(model, cache, readout, ffn_scores, ffn_acts, top_k, n_tokens, ffn_tokens)
    top_attn = _scored_attn(model, cache, readout, attn_scores_t, attn_coefs_t, top_k, n_tokens, attn_tokens)
    query_scores = attention_query_scores(model, cache, top_attn)
    q_vals, q_idx = _top(query_scores, top_k)
    d_mlp = query_scores.shape[1]
    query_neurons = [ScoredNeuron(Neuron("ffn", i // d_mlp, i % d_mlp), v, ffn_acts[i // d_mlp, i % d_mlp].item())
                     for v, i in zip(q_vals.tolist(), q_idx.tolist(), strict=True)]
    ffn_query, ffn_query_embed = ffn_query_layer_scores(model, cache, top_ffn)
    final = cache[hook_name("resid_post", n - 1)][0, -1]
    decode = model.tokenizer.decode
    return NeuronAttributionResult(
        prompt=prompt,
        str_tokens=tuple(decode([t]) for t in tokens[0].tolist()),
        target=target,
        target_id=target_id,
        target_token=decode([target_id]),
        target_note=note,
        top_k=top_k,
        keep_bias=keep_bias,
        logprob=readout.logprob(final, target_id).item(),
        model_logprob=torch.log_softmax(logits[0, -1].float(), -1)[target_id].item(),
        layer_scores=_layer_scores(model, cache, readout, target_id),
        ffn_scores=ffn_scores.cpu(),
        ffn_activations=ffn_acts.cpu(),
        attn_scores=attn_scores_t.cpu(),
        attn_coefficients=attn_coefs_t.cpu(),
        top_ffn=top_ffn,
        top_attn=top_attn,
        query_scores=query_scores.cpu(),
        query_neurons=query_neurons,
        ffn_query_scores=ffn_query.cpu(),
        ffn_query_embed=ffn_query_embed,
        settings=dict(top_k=top_k, keep_bias=keep_bias, n_tokens=n_tokens, method=method, sigma=readout.scale, **extra),
        ffn_bounds=None if ffn_bounds is None else ffn_bounds.cpu(),
        attn_bounds=None if attn_bounds is None else attn_bounds.cpu(),
    )


class _Promoted:
    """Promoted-token ids of the neurons scored exactly (``up``: of +direction, ``down``: of
    −direction), recorded while scoring so that the top neurons need no second projection onto
    the vocabulary. Kept for the scored neurons only (a long prompt has millions of attention
    neurons)."""

    def __init__(self, n_tokens: int, vocab: int, device) -> None:
        self.n_tokens = min(n_tokens, vocab)
        self.zero = torch.zeros(vocab, device=device).topk(self.n_tokens).indices  # what a zero vector "promotes"
        self.parts: list[tuple[Tensor, Tensor, Tensor]] = []

    def put(self, neurons: Tensor, up: Tensor | None, down: Tensor | None) -> None:
        if self.n_tokens:
            self.parts.append((neurons, up, down))

    def names(self, model, neurons: Tensor, coefs: Tensor) -> list[tuple[str, ...]]:
        if not self.n_tokens or not len(neurons):
            return [() for _ in range(len(neurons))]
        index, up, down = (torch.cat(t) for t in zip(*self.parts, strict=True))
        order = index.argsort()
        at = order[torch.searchsorted(index[order], neurons.to(index.device))]
        sign = coefs.sign()[:, None]
        ids = torch.where(sign > 0, up[at], torch.where(sign < 0, down[at], self.zero)).tolist()
        decoded = {i: model.tokenizer.decode([i]) for i in {i for row in ids for i in row}}
        return [tuple(decoded[i] for i in row) for row in ids]


@dataclass(frozen=True)
class _Certified:
    scores: Tensor
    bounds: Tensor
    rows_scored: int
    rounds: int


def _certify(readout, target_id, bases, vectors, coefs, k, n_tokens, chunk_elements, what: str) -> tuple[_Certified, _Promoted]:
    """The certified exact top ``k`` of neurons ``(layer, r, col)``: ``vectors[layer][r]`` added with
    ``coefs[layer][r, col]`` to ``bases[layer]`` (see :mod:`~interp_edit.analysis.attribution_bounds`).
    Neurons are scored one by one (an attention neuron is a row and a source position), each
    batch projecting its distinct rows onto the vocabulary once."""
    per_layer, n_cols = coefs[0].shape
    vocab = readout.w_u.shape[1]
    base_logits = _base_logits(readout, bases)  # [layer, vocab]
    grads = readout_gradients(readout, base_logits, [target_id] * len(bases)) if readout.softcap is None else [None] * len(bases)
    bounds = torch.cat([score_upper_bounds(readout, b, v, c, target_id, base_logits=z, gradient=g)
                        for b, v, c, z, g in zip(bases, vectors, coefs, base_logits, grads, strict=True)])
    promoted = _Promoted(n_tokens, vocab, bounds.device)
    step = max(1, chunk_elements // vocab)

    def score_neurons(neurons: Tensor) -> Tensor:  # flat indices, ascending
        out = torch.empty(len(neurons), 1, device=bounds.device)
        rows, cols = neurons // n_cols, neurons % n_cols
        for start in range(0, len(neurons), step):
            part = slice(start, start + step)
            uniq, inverse = torch.unique(rows[part], return_inverse=True)
            layer_of = uniq // per_layer
            dirs = torch.empty(len(uniq), vocab, dtype=readout.w_u.dtype, device=bounds.device)
            for layer in layer_of.unique().tolist():
                sel = layer_of == layer
                dirs[sel] = readout.directions(vectors[layer][uniq[sel] % per_layer])
            if promoted.n_tokens:
                promoted.put(neurons[part], dirs.topk(promoted.n_tokens, dim=-1).indices[inverse],
                             (-dirs).topk(promoted.n_tokens, dim=-1).indices[inverse])
            layers = rows[part] // per_layer
            c = torch.stack([coefs[lay][r % per_layer, col] for lay, r, col in
                             zip(layers.tolist(), rows[part].tolist(), cols[part].tolist(), strict=True)])
            for layer in layers.unique().tolist():
                sel = (layers == layer).nonzero().flatten()
                out[start + sel] = shifted_by_directions(base_logits[layer], dirs[inverse[sel]], c[sel][:, None], target_id,
                                                         readout.softcap)
        return out

    logit_scale = base_logits.abs().max().item()
    cert: CertifiedTopK = certified_top_k(bounds.reshape(-1, 1), score_neurons, k, slack=float(slack(logit_scale)), name=what)
    return _Certified(cert.scores.view_as(bounds), bounds, cert.rows_scored, cert.rounds), promoted


def _certified_ffn(model, cache, readout, target_id, k, n_tokens, chunk_elements, prompt) -> tuple[_Certified, _Promoted]:
    n = model.cfg.n_layers
    return _certify(readout, target_id, [ffn_base(model, cache, layer)[0, -1] for layer in range(n)],
                    [_ffn_vectors(model, cache, layer) for layer in range(n)],
                    [cache[hook_name("mlp_post", layer)][0, -1][:, None] for layer in range(n)],
                    k, n_tokens, chunk_elements, f"top_k (FFN neurons, prompt {prompt!r})")


def _certified_attn(model, cache, readout, target_id, coefs, k, n_tokens, chunk_elements, prompt) -> tuple[_Certified, _Promoted]:
    n = model.cfg.n_layers
    return _certify(readout, target_id, [cache[hook_name("resid_pre", layer)][0, -1] for layer in range(n)],
                    [einops.rearrange(_attn_vectors(model, cache, layer), "head d m -> (head d) m") for layer in range(n)],
                    [einops.rearrange(coefs[layer], "head d pos -> (head d) pos") for layer in range(n)],
                    k, n_tokens, chunk_elements, f"top_k (attention neurons, prompt {prompt!r})")


def _scored_ffn(model, cache, readout, scores, acts, k, n_tokens, promoted: _Promoted | None = None) -> list[ScoredNeuron]:
    values, idx = _top(scores, k)
    d_mlp = scores.shape[1]
    layers, units = (idx // d_mlp).tolist(), (idx % d_mlp).tolist()
    coefs = acts[idx // d_mlp, idx % d_mlp]
    if promoted is not None:
        tokens = promoted.names(model, idx, coefs)
    else:
        vectors = torch.stack([_ffn_vectors(model, cache, lay)[u] for lay, u in zip(layers, units, strict=True)]) \
            if layers else torch.empty(0, model.cfg.d_model)
        tokens = _promoted_tokens(model, readout, vectors * coefs.sign()[:, None], n_tokens)
    return [ScoredNeuron(Neuron("ffn", lay, u), v, c, t)
            for lay, u, v, c, t in zip(layers, units, values.tolist(), coefs.tolist(), tokens, strict=True)]


def _scored_attn(model, cache, readout, scores, coefs, k, n_tokens, promoted: _Promoted | None = None) -> list[ScoredNeuron]:
    values, idx = _top(scores, k)
    _, n_heads, d_head, n_pos = scores.shape
    layer, rest = idx // (n_heads * d_head * n_pos), idx % (n_heads * d_head * n_pos)
    head, rest = rest // (d_head * n_pos), rest % (d_head * n_pos)
    dim, pos = rest // n_pos, rest % n_pos
    c = coefs[layer, head, dim, pos]
    if promoted is not None:
        tokens = promoted.names(model, idx, c)
    else:
        vectors = torch.stack([_attn_vectors(model, cache, lay)[h, j] for lay, h, j in
                               zip(layer.tolist(), head.tolist(), dim.tolist(), strict=True)]) \
            if len(idx) else torch.empty(0, model.cfg.d_model)
        tokens = _promoted_tokens(model, readout, vectors * c.sign()[:, None], n_tokens)
    return [ScoredNeuron(Neuron("attn", lay, j, head=h, pos=p), v, cc, t) for lay, h, j, p, v, cc, t in
            zip(layer.tolist(), head.tolist(), dim.tolist(), pos.tolist(), values.tolist(), c.tolist(), tokens, strict=True)]


def _centre(model, vectors: Tensor) -> Tensor:
    """κ as a sublayer's input norm sees it: centred by a LayerNorm; as it is under RMSNorm, or
    where there is no input norm (the raw residual is read)."""
    return vectors - vectors.mean(-1, keepdim=True) if architecture(model).input_norm_centres else vectors


#: Denominators below this (|h·κ|) give no query share (a share of almost nothing is noise).
_MIN_DENOMINATOR = 1e-6


def attention_query_scores(model, cache: dict[str, Tensor], value_neurons: Sequence[ScoredNeuron]) -> Float[Tensor, "layer d_mlp"]:
    """Query-neuron scores of earlier FFN neurons for attention value neurons (l, h, j, p):
    κ = centre(γ_ln1^l ⊙ W_V^l[h, :, j]); FFN neuron (l' < l, i) at source position p gets
    ``(m_i · W_out^{l'}[i]) · κ / (h^{l−1}_p · κ) × Imp``, accumulated over the value neurons
    (post-sublayer norms: ``m_i W_out^{l'}[i]`` through ``ln2_post`` frozen at position p).
    Centring κ (LayerNorm) makes the shares of all residual components sum to one."""
    n, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    out = torch.zeros(n, d_mlp, device=model.cfg.device)
    by_layer: dict[int, list[ScoredNeuron]] = {}
    for s in value_neurons:
        by_layer.setdefault(s.neuron.layer, []).append(s)
    for layer, group in by_layer.items():
        if layer == 0:
            continue
        heads = torch.tensor([s.neuron.head for s in group])
        dims = torch.tensor([s.neuron.index for s in group])
        pos = torch.tensor([s.neuron.pos for s in group], device=out.device)
        imp = torch.tensor([s.score for s in group], device=out.device)
        w_v = _per_head(model, layer_weight(model, "W_V", layer), 0)[heads, :, dims]  # [s, d_model]
        kappa = _centre(model, w_v * norm_weight(model, "ln1", layer))
        denom = (cache[hook_name("resid_pre", layer)][0, pos] * kappa).sum(-1)
        weight = torch.where(denom.abs() > _MIN_DENOMINATOR, imp / denom, torch.zeros_like(denom))
        for source in range(layer):
            gain = write_gain(model, cache, source, "mlp")
            k_src = kappa if gain is None else kappa * gain[0, pos]  # [s, d_model]
            proj = write_weight(model, "W_out", source) @ k_src.T  # [d_mlp, s]
            acts = cache[hook_name("mlp_post", source)][0, pos]  # [s, d_mlp]
            out[source] += einops.einsum(acts.float(), proj.float(), weight.float(), "s i, i s, s -> i")
    return out


def ffn_query_layer_scores(model, cache: dict[str, Tensor], value_neurons: Sequence[ScoredNeuron]) -> tuple[Float[Tensor, "layer 2"], float]:
    """Query layers of FFN value neurons (l, i): κ = centre(γ_ln2^l ⊙ W^l[:, i]) (W: ``W_gate`` of a
    gated MLP, where the nonlinearity acts, else ``W_in``); each residual component the FFN
    reads at the last position (embeddings, F^{l'} for l' < l, A^{l'} for l' < l and, for
    sequential blocks, A^l; a parallel FFN does not read its block's attention) gets
    ``component · κ / (x^l · κ) × Imp`` (x^l: the FFN's input residual), accumulated.
    Returns ([layer, attn | FFN], embeddings)."""
    n = model.cfg.n_layers
    own_attention = not architecture(model).parallel_blocks
    embed = cache[hook_name("embed")][0, -1]
    if hook_name("pos_embed") in cache:
        embed = embed + cache[hook_name("pos_embed")][0, -1]
    comps = torch.stack([embed] + [cache[hook_name(site, layer)][0, -1] for layer in range(n) for site in ("attn_out", "mlp_out")])
    totals = torch.zeros(2 * n + 1, device=comps.device)
    by_layer: dict[int, list[ScoredNeuron]] = {}
    for s in value_neurons:
        by_layer.setdefault(s.neuron.layer, []).append(s)
    for layer, group in by_layer.items():
        units = torch.tensor([s.neuron.index for s in group])
        imp = torch.tensor([s.score for s in group], device=comps.device)
        kappa = _centre(model, (ffn_gate_weight(model, layer)[:, units] * norm_weight(model, "ln2", layer)[:, None]).T)
        denom = kappa @ ffn_input(model, cache, layer)[0, -1]
        weight = torch.where(denom.abs() > _MIN_DENOMINATOR, imp / denom, torch.zeros_like(denom))
        used = 2 * layer + 1 + int(own_attention)  # embeddings, (A, F) of earlier layers[, A of this layer]
        totals[:used] += (comps[:used] @ kappa.T).float() @ weight.float()
    return einops.rearrange(totals[1:], "(layer kind) -> layer kind", kind=2), totals[0].item()
