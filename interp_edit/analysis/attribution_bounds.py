"""Upper bounds on NLKA scores and the certified exact top-k they allow (issue 16).

An NLKA score adds ``c · w`` to a base residual and reads the target's log-probability through
the frozen readout (:class:`~interp_edit.analysis.attribution.FrozenUnembed`): with the final
norm's scale σ* frozen, centring (LayerNorm) and the biases are affine, so the pre-cap logits
are ``z(c) = z₀ + c·d`` with ``d = U_lin(w)``, and

    s(c) = log p_t(c) − log p_t(0) = c·d_t − [LSE(z₀ + c·d) − LSE(z₀)].

**Without a soft-cap** LSE is convex, so ``s`` is concave in ``c`` and lies below its tangent
at 0: ``s(c) ≤ c·(d_t − E_{p₀} d)``, which is exactly the first-order score. Equivalently (and
this is the form that survives a soft-cap), Gibbs' inequality ``LSE(z) ≥ Σ_v q_v z_v + H(q)``
with ``q = p₀`` (equality at c = 0) gives ``s(c) ≤ Δz_t(c) − Σ_v p₀_v Δz_v(c)`` for *any*
logit path ``z(c)``. The bound needs the frozen scale: a re-normalised readout is not affine
and the bound would not hold.

**With a final-logit soft-cap** ``z = φ(r) = C·tanh(r / C)`` (Gemma-2) the score is no longer
concave and the first-order score is *not* a bound. Using ``φ(r₀ + δ) ≥ φ(r₀) + φ'(r₀)·δ −
(K/2)·δ²`` with ``K = sup|φ''| = 4 / (3√3 C)`` in Gibbs' form gives the valid bound

    s(c) ≤ Δz_t(c) − c·Σ_v p₀_v φ'(r₀_v) d_v + (K/2)·c²·Q(w),     Q(w) ≥ Σ_v p₀_v d_v²,

with ``Q`` = the exact sum over the ``tail_tokens`` (default 256) most probable tokens plus ``max p₀`` of the
rest times the rest of ``‖d‖²`` (``‖d‖² = w̃ᵀ (W_U W_Uᵀ) w̃``, one ``d_model²`` Gram matrix per
call). It costs a few matrix-vector products per neuron, never a projection onto the vocabulary.

:func:`certified_top_k` uses any such bound: it scores exactly the rows whose bound could still
beat the current k-th exact score (best bound first, doubling batches) until no unevaluated
row can; the result equals ranking every neuron exactly (score descending, then flat index
ascending for ties).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp_edit.errors import InvalidArgumentError

#: Most probable tokens whose ``p₀ d²`` enters the soft-capped bound exactly.
TAIL_TOKENS = 256
#: Slack on the bound for float32 rounding of the exact score, absolute and per unit of the
#: largest |base logit| (:func:`slack`): a row is scored exactly while its bound + slack ≥ the
#: k-th exact score.
SLACK = 1e-5
SLACK_PER_LOGIT = 1e-6


def slack(logit_scale: float) -> float:
    """The float32 slack of scores read from base logits of magnitude up to ``logit_scale``."""
    return SLACK + SLACK_PER_LOGIT * abs(logit_scale)
#: sup |tanh''|.
_TANH2 = 4.0 / (3.0 * math.sqrt(3.0))


def _prepared(readout, vectors: Tensor) -> Tensor:
    """``w̃ = centre(w) / σ*``: the vector whose product with ``readout.w_u`` gives ``d``."""
    if readout.centre:
        vectors = vectors - vectors.mean(-1, keepdim=True)
    return vectors / readout.scale


def score_upper_bounds(
    readout,
    base: Float[Tensor, " d_model"],
    weights: Float[Tensor, "row d_model"],
    coefs: Float[Tensor, "row pos"],
    target_id: int,
    *,
    tail_tokens: int = TAIL_TOKENS,
    base_logits: Float[Tensor, " vocab"] | None = None,
    gradient: Float[Tensor, " d_model"] | None = None,
) -> Float[Tensor, "row pos"]:
    """An upper bound on ``shifted_logprobs(readout, base, weights, coefs, target_id)`` for
    every row and column (see the module doc): the first-order score without a soft-cap, the
    curvature-corrected Gibbs bound with one. Never projects a row onto the vocabulary.
    ``base_logits`` (``readout.raw_logits(base)``) and, without a soft-cap, ``gradient``
    (:func:`readout_gradients`) may be passed precomputed, batched over several bases."""
    raw = (readout.raw_logits(base) if base_logits is None else base_logits).float()  # [vocab]
    coefs = coefs.float()
    if readout.softcap is None:
        if gradient is None:
            gradient = readout_gradients(readout, raw[None], [target_id])[0]
        slopes = readout.directions_dot(weights, gradient).float()
        return coefs * slopes[:, None]
    cap = readout.softcap
    capped = cap * torch.tanh(raw / cap)
    probs = torch.softmax(capped, -1)
    slope_cap = 1 - torch.tanh(raw / cap) ** 2  # φ'(r₀)
    w_u = readout.w_u.float()
    w_t = _prepared(readout, weights.float())  # [row, d_model]
    d_target = w_t @ w_u[:, target_id]  # [row]
    linear = w_t @ (w_u @ (probs * slope_cap))  # [row]: Σ p₀ φ' d
    top = probs.topk(min(tail_tokens, probs.numel())).indices
    d_top = w_t @ w_u[:, top]  # [row, m]
    head = (d_top**2) @ probs[top]  # Σ_{top} p₀ d²
    rest_mass = probs.clone()
    rest_mass[top] = 0.0
    if rest_mass.numel() > top.numel():
        gram = w_u @ w_u.T  # [d_model, d_model]
        total = ((w_t @ gram) * w_t).sum(-1)  # ‖d‖²
        tail = rest_mass.max() * (total - (d_top**2).sum(-1)).clamp_min(0.0)
    else:
        tail = torch.zeros_like(head)
    quad = head + tail
    shifted_target = cap * torch.tanh((raw[target_id] + coefs * d_target[:, None]) / cap) - capped[target_id]
    curvature = _TANH2 / cap
    return shifted_target - coefs * linear[:, None] + 0.5 * curvature * coefs**2 * quad[:, None]


def readout_gradients(readout, base_logits: Float[Tensor, "base vocab"], target_ids: list[int]) -> Float[Tensor, "base d_model"]:
    """``W_U (e_t − p₀)`` for each base (no soft-cap): ``directions_dot(w, ·)`` of it is the slope
    of log p_t along ``w``, the first-order score per unit coefficient. One matrix product for
    all bases (the unembedding is read once)."""
    grads = -torch.softmax(base_logits.float(), -1)
    grads[torch.arange(len(target_ids), device=grads.device), torch.tensor(target_ids, device=grads.device)] += 1.0
    return (grads.to(readout.w_u.dtype) @ readout.w_u.T)


@dataclass(frozen=True)
class CertifiedTopK:
    """The exact top ``k`` of a ``[row, col]`` score matrix found by bound pruning.

    ``indices`` / ``values``: flat indices (row-major) and exact scores, best first (ties:
    lower flat index first). ``scores``: exact where ``evaluated`` (a row mask), NaN elsewhere.
    ``rounds``: exact-scoring batches run; ``rows_scored`` = ``evaluated.sum()``."""

    indices: Int[Tensor, " k"]
    values: Float[Tensor, " k"]
    scores: Float[Tensor, "row col"]
    evaluated: Bool[Tensor, " row"]
    rounds: int

    @property
    def rows_scored(self) -> int:
        return int(self.evaluated.sum())


def ranked(scores: Float[Tensor, " n"], k: int) -> tuple[Tensor, Tensor]:
    """The best ``k`` entries of a flat score vector: score descending, ties by index ascending;
    NaN (not scored) last. The one ranking rule of every NLKA top-k."""
    keys = torch.where(torch.isnan(scores), torch.full_like(scores, math.inf), -scores)
    order = torch.sort(keys, stable=True).indices[:k]
    return scores[order], order


def certified_top_k(
    bounds: Float[Tensor, "row col"],
    score_rows: Callable[[Tensor], Tensor],
    k: int,
    *,
    slack: float = SLACK,
    name: str = "k",
) -> CertifiedTopK:
    """The exact top ``k`` entries of the score matrix that ``score_rows(rows) -> [len(rows),
    col]`` computes exactly, given ``bounds >= scores`` entrywise (up to ``slack``). Rows are
    scored best bound first: first the rows holding the ``k`` best bounds, then doubling batches
    of the rows whose bound + slack reaches the current k-th exact score, until none does (rows
    with equal bounds are always scored together). ``k`` must be in 1..bounds.numel()."""
    if isinstance(k, bool) or not isinstance(k, int):
        raise InvalidArgumentError(f"{name} must be an integer, got {k!r} ({type(k).__name__})")
    if not 1 <= k <= bounds.numel():
        raise InvalidArgumentError(f"{name} must be in 1..{bounds.numel()} (the number of neurons), got {k}")
    if not isinstance(slack, (int, float)) or isinstance(slack, bool) or not slack >= 0:
        raise InvalidArgumentError(f"slack must be a number >= 0, got {slack!r}")
    n_rows, n_cols = bounds.shape
    bounds = bounds.float()
    row_bound = bounds.max(1).values
    scores = torch.full((n_rows, n_cols), math.nan, device=bounds.device)
    evaluated = torch.zeros(n_rows, dtype=torch.bool, device=bounds.device)
    first = torch.unique(ranked(bounds.flatten(), k)[1] // n_cols)
    batch = _with_ties(first, row_bound, evaluated)
    rounds = 0
    while len(batch):
        batch = batch.sort().values
        scores[batch] = score_rows(batch).float().reshape(len(batch), n_cols)
        evaluated[batch] = True
        rounds += 1
        done = scores[evaluated].flatten()
        threshold = done.topk(k).values[-1] if done.numel() >= k else torch.tensor(-math.inf, device=bounds.device)
        open_rows = (~evaluated) & (row_bound + slack >= threshold)
        if not open_rows.any():
            break
        candidates = open_rows.nonzero().flatten()
        size = max(int(evaluated.sum()), k)
        best = candidates[torch.sort(-row_bound[candidates], stable=True).indices[:size]]
        batch = _with_ties(best, row_bound, evaluated | ~open_rows)
    values, indices = ranked(scores.flatten(), k)
    return CertifiedTopK(indices, values, scores, evaluated, rounds)


def _with_ties(rows: Tensor, row_bound: Tensor, excluded: Tensor) -> Tensor:
    """``rows`` plus every other row not ``excluded`` whose bound equals the lowest bound in ``rows``."""
    if not len(rows):
        return rows
    low = row_bound[rows].min()
    ties = ((row_bound == low) & ~excluded).nonzero().flatten()
    return torch.unique(torch.cat([rows, ties]))
