"""Pieces of the closed-form editors (ROME, MEMIT, AlphaEdit and their relatives): working on
the weights in a scratch transaction, measuring the current values at the edit tokens, and
the least-squares solves (in float64) — :func:`solve` for a system seen once,
:func:`moment_solve` (ROME's ``C⁻¹k``) and :func:`memit_left_factor` (MEMIT's ``(λC + KKᵀ)⁻¹K``)
through factorisations of the statistics that the model's statistics store keeps across edits
(:mod:`interp_edit.statistics.store`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from interp_edit.adapter import forward_to_layer, get_parameter, hook_name, sublayer_output_hooks, weight_matrix_shape
from interp_edit.editing.edit import LowRankDelta
from interp_edit.editing.requests import TokenizedRequest
from interp_edit.errors import EditOptimizationError
from interp_edit.precision import add_delta_
from interp_edit.statistics.store import cached_factor


def w_out_name(layer: int) -> str:
    return f"blocks.{layer}.mlp.W_out"


def w_o_name(layer: int) -> str:
    return f"blocks.{layer}.attn.W_O"


@contextlib.contextmanager
def scratch_weights(model, names: Sequence[str]) -> Iterator[None]:
    """Editors may change the weights ``names`` inside the block (to measure keys after the
    layers already updated); afterwards, on success or on any exception, the original tensors
    are back bit for bit. An editor returns an :class:`Edit`; it never leaves the model changed."""
    originals = {name: get_parameter(model, name).data.clone() for name in names}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, original in originals.items():
                get_parameter(model, name).data.copy_(original)


@torch.no_grad()
def add_low_rank(model, name: str, delta: LowRankDelta) -> None:
    param = get_parameter(model, name)
    add_delta_(param.data.view(weight_matrix_shape(model, name)), delta.dense())


@torch.no_grad()
def values_at_edit_tokens(model, requests: Sequence[TokenizedRequest], layer: int, site: str) -> Float[Tensor, "request d"]:
    """The activation at ``site`` of ``layer`` at each request's edit token (by default the subject's last), on the bare
    prompt (batched, forward stopped after ``layer``)."""
    name = hook_name(site, layer)
    return _at_edit_tokens(model, requests, layer, [name], [], lambda cache: cache[name]).float()


@torch.no_grad()
def raw_values_at_edit_tokens(model, requests: Sequence[TokenizedRequest], layer: int, kind: str) -> Float[Tensor, "request d_model"]:
    """The raw output of ``layer``'s ``kind`` (``"mlp"``: ``post @ W_out + b_out``; before a
    post-sublayer norm where the architecture has one) at each request's edit token, in float64."""
    raw: dict[str, Tensor] = {}

    def keep(out, hook):
        raw["out"] = out.detach()

    hooks = sublayer_output_hooks(model, kind, layer, keep)
    return _at_edit_tokens(model, requests, layer, [], hooks, lambda cache: raw["out"]).double()


def _at_edit_tokens(model, requests, layer: int, names, hooks, read) -> Tensor:
    """``read(cache)`` [request, pos, d] of one batched forward of the bare prompts stopped after
    ``layer``, at each request's edit token."""
    from interp_edit.batching import pad_right

    tokens, _ = pad_right([r.prompt_ids for r in requests], model.tokenizer.pad_token_id or 0)
    act = read(forward_to_layer(model, tokens.to(model.cfg.device), layer + 1, names, hooks))
    return act[torch.arange(len(requests), device=act.device), torch.tensor([r.edit_position for r in requests], device=act.device)]


#: a pivot of the LU factor below this fraction of the largest (times the width) marks a system
#: singular up to float64 rounding: its solution is rounding noise, however finite
SINGULAR_PIVOT = 1e-14


def solve(matrix: Tensor, rhs: Tensor, what: str, *, near_singular: bool = True) -> Tensor:
    """``matrix⁻¹ rhs`` in float64; a singular or non-finite system raises an error naming it.
    Singular includes singular up to rounding (an LU pivot below ``width · 1e-14`` of the
    largest; e.g. MEMIT's ``KKᵀ`` with λ = 0 and fewer keys than the key width), which
    :func:`torch.linalg.solve` answers with huge finite values — unless ``near_singular`` is
    False (statistics of too few tokens, which the editors warn about and mark instead)."""
    matrix = matrix.double()
    lu, pivots, info = torch.linalg.lu_factor_ex(matrix)
    if int(info) != 0:
        raise _singular(what, f"U[{int(info) - 1}, {int(info) - 1}] is zero")
    diagonal = lu.diagonal().abs()
    smallest, largest = (float(v) for v in torch.stack([diagonal.min(), diagonal.max()]).tolist())
    if near_singular and not smallest > SINGULAR_PIVOT * len(matrix) * largest:  # NaN too
        raise _singular(what, f"its smallest LU pivot is {smallest / largest if largest else 0.0:.1e} of the largest")
    column = rhs.ndim == 1
    out = torch.linalg.lu_solve(lu, pivots, rhs.double()[:, None] if column else rhs.double())
    return _finite(out[:, 0] if column else out, what)


def check_statistics_weight(model, weight: float, n_keys: int, site: str, field: str, method: str) -> None:
    """Refuse, before any compute, a statistics weight λ of 0 with fewer keys (one per request)
    than the key width at ``site``: ``(λC + KKᵀ)`` is then singular and its solve would be
    rounding noise (refused again, after the targets, by :func:`solve`)."""
    from interp_edit.errors import EditConfigError
    from interp_edit.statistics.provenance import site_dim

    width = site_dim(model, site)
    if weight == 0 and n_keys < width:
        raise EditConfigError(
            f"{method}: field {field!r} is 0 with {n_keys} request(s), fewer than the key width {width} at {site}: "
            f"(0·C + KKᵀ) is singular; give {field} > 0 (the preset's value) or at least {width} requests")


def _singular(what: str, detail: str) -> EditOptimizationError:
    return EditOptimizationError(
        f"the {what} solve is singular ({detail}): the keys and statistics do not span the key width, as with a "
        "statistics weight (mom2_update_weight) of 0 and fewer keys than the key width, or statistics of too few "
        "distinct tokens; raise mom2_update_weight above 0 or collect the statistics over more varied text; the "
        "model is unchanged")


def _finite(out: Tensor, what: str) -> Tensor:
    if not torch.isfinite(out).all():
        raise EditOptimizationError(f"the {what} solve gave non-finite values; the model is unchanged")
    return out


def moment_solve(model, moment: Float[Tensor, "key key"], rhs: Float[Tensor, "key ..."], what: str, *,
                 scale: float = 1.0, ridge: float = 0.0) -> Tensor:
    """``(scale · C + ridge · mean(diag C) · I)⁻¹ rhs`` in float64 on ``rhs``'s device, C =
    ``moment``: the LU factor (the one :func:`torch.linalg.solve` computes, so the result is
    the same) is built once per moment and kept in the model's statistics store."""
    device = rhs.device

    def build():
        matrix = scale * moment.to(device, torch.float64)
        if ridge:
            matrix = matrix + ridge * matrix.diagonal().mean() * torch.eye(len(matrix), dtype=matrix.dtype, device=device)
        lu, pivots, info = torch.linalg.lu_factor_ex(matrix)
        return lu, pivots, int(info)  # read once, not at every edit

    lu, pivots, info = cached_factor(model, moment, ("lu", float(scale), float(ridge), str(device)), build)
    if info != 0:
        raise _singular(what, f"U[{info - 1}, {info - 1}] is zero")
    column = rhs.ndim == 1
    out = torch.linalg.lu_solve(lu, pivots, rhs.double()[:, None] if column else rhs.double())
    return _finite(out[:, 0] if column else out, what)


def memit_left_factor(model, moment: Float[Tensor, "key key"], weight: float, keys: Float[Tensor, "key n"],
                      what: str) -> Float[Tensor, "key n"]:
    """MEMIT's ``(λC + KKᵀ)⁻¹K`` (λ = ``weight``, K = ``keys``) in float64. With λC positive
    definite, through its Cholesky factor L (built once per moment, kept in the model's
    statistics store) and the Woodbury identity: ``X (I + KᵀX)⁻¹`` with ``X = (λC)⁻¹K``, which
    costs O(d²n + n³) per edit instead of O(d³). Otherwise (λ = 0, or C singular) the dense
    :func:`solve`."""
    device = keys.device

    def build():
        factor, info = torch.linalg.cholesky_ex(weight * moment.to(device, torch.float64))
        return factor if int(info) == 0 else None

    factor = cached_factor(model, moment, ("cholesky", float(weight), str(device)), build) if weight > 0 else None
    if factor is None:  # λ = 0 must not be singular; a singular C (thin statistics) is warned about where it is read
        return solve(weight * moment.to(device) + keys @ keys.T, keys, what, near_singular=weight == 0)
    keys = keys.double()
    x = torch.cholesky_solve(keys, factor)  # (λC)⁻¹K  [d, n]
    inner = torch.eye(keys.shape[1], dtype=x.dtype, device=device) + keys.T @ x  # symmetric positive definite
    inner_factor, info = torch.linalg.cholesky_ex(inner)
    if int(info) != 0:
        return solve(weight * moment.to(device) + keys @ keys.T, keys, what, near_singular=weight == 0)
    return _finite(torch.cholesky_solve(x.T, inner_factor).T, what)


def check_finite(name: str, tensor: Tensor, requests: Sequence[TokenizedRequest]) -> None:
    bad = ~torch.isfinite(tensor).reshape(tensor.shape[0], -1).all(-1) if tensor.ndim > 1 else ~torch.isfinite(tensor)
    if bad.any():
        which = requests[int(bad.nonzero()[0])] if len(requests) == tensor.shape[0] else requests[0]
        raise EditOptimizationError(
            f"request {which.index} ({which.request.text!r}): non-finite {name}; the model is unchanged"
        )
