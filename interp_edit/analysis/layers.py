"""Choosing layers to edit from causal-tracing results. Spec: methods.md A6."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from interp_edit.errors import InvalidArgumentError
from interp_edit.validation import check_choice, check_int


def select_layer_window(aie, width: int = 5, *, kind: str = "mlp", role: str = "last_subject") -> tuple[int, ...]:
    """MEMIT-CSK's layer window: the ``width`` consecutive layers with the highest mean effect.

    ``aie`` is an :class:`~interp_edit.analysis.aie.AIEResult` (its ``kind`` × ``role`` curve is
    used; MEMIT-CSK computes it from a severed-MLP trace at the edit token) or a per-layer
    tensor. The window is clipped to the model when ``width`` exceeds its depth.

    The curve must be 1-D with at least one finite value: an all-NaN curve (e.g. a role no
    traced fact had, whose effect is NaN at every layer) has no signal and is refused. In a
    partly-NaN curve a NaN layer counts as missing, not as 0: a window is ranked by the mean of
    its non-NaN layers, and a window with none is never chosen (so with all finite effects
    negative, a NaN layer does not win as a 0 would).

    >>> select_layer_window(torch.tensor([0.1, 0.5, 0.9, 0.7, 0.2, 0.0]), width=3)
    (1, 2, 3)
    >>> aie = average_indirect_effect(model, records[:2], samples=2, kinds=("mlp",), progress=False)
    >>> len(select_layer_window(aie, width=2))
    2
    """
    check_int(width, "width", minimum=1)
    if isinstance(aie, Tensor):
        curve, what = aie, "the curve"
    elif not hasattr(aie, "curve"):
        raise InvalidArgumentError(f"aie must be an AIEResult or a per-layer tensor, got {type(aie).__name__}")
    else:
        check_choice(kind, "kind", tuple(aie.kinds))
        check_choice(role, "role", tuple(aie.roles))
        curve, what = aie.curve(kind, role), f"the {kind} × {role} curve"
    if curve.dim() != 1:
        raise InvalidArgumentError(f"{what} must be 1-D (one effect per layer), got shape {tuple(curve.shape)}")
    curve = curve.float()
    missing = curve.isnan()
    if not curve.isfinite().any():
        raise InvalidArgumentError(f"{what} has no finite value ({curve.tolist()}): no signal to choose layers from "
                                   "(e.g. no traced fact had that role)")
    n = curve.shape[0]
    if width >= n:
        return tuple(range(n))
    if missing.any():  # NaN layers are left out of their windows' means; a window of NaN only is never chosen
        windows = curve.masked_fill(missing, 0.0).unfold(0, width, 1).sum(-1)
        counts = (~missing).unfold(0, width, 1).sum(-1)
        means = (windows / counts).masked_fill(counts == 0, -math.inf)
    else:
        means = curve.unfold(0, width, 1).mean(-1)  # [n - width + 1]
    start = int(means.argmax())
    return tuple(range(start, start + width))


def attention_mlp_balance(trace) -> float:
    """IntAttn-Edit's α = Σ attention effect / (Σ attention effect + Σ MLP effect).

    Effects are the trace's indirect effects (use ``metric="logit_diff"`` as the paper does),
    summed over layers and positions; negative effects count as zero so α lies in [0, 1].

    >>> trace = causal_trace(model, "Talvik Corlo was born in", "Talvik Corlo", samples=2,
    ...                      kinds=("mlp", "attn"), metric="logit_diff", foil="Gemmel")
    >>> alpha = attention_mlp_balance(trace)
    >>> 0.0 <= alpha <= 1.0
    True
    """
    if "attn" not in trace.kinds or "mlp" not in trace.kinds:
        raise InvalidArgumentError(f"the trace needs kinds 'attn' and 'mlp', it has {trace.kinds}")
    ie = trace.indirect_effects
    attn = torch.clamp(ie[trace.kinds.index("attn")], min=0).sum().item()
    mlp = torch.clamp(ie[trace.kinds.index("mlp")], min=0).sum().item()
    if attn + mlp <= 0:
        raise InvalidArgumentError("no positive attention or MLP effect in the trace; alpha is undefined")
    return attn / (attn + mlp)
