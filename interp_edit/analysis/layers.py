"""Choosing layers to edit from causal-tracing results. Spec: methods.md A6."""

from __future__ import annotations

import torch
from torch import Tensor

from interp_edit.errors import InvalidArgumentError


def select_layer_window(aie, width: int = 5, *, kind: str = "mlp", role: str = "last_subject") -> tuple[int, ...]:
    """MEMIT-CSK's layer window: the ``width`` consecutive layers with the highest mean effect.

    ``aie`` is an :class:`~interp_edit.analysis.aie.AIEResult` (its ``kind`` × ``role`` curve is
    used; MEMIT-CSK computes it from a severed-MLP trace at the edit token) or a per-layer
    tensor. The window is clipped to the model when ``width`` exceeds its depth.

    >>> select_layer_window(torch.tensor([0.1, 0.5, 0.9, 0.7, 0.2, 0.0]), width=3)
    (1, 2, 3)
    >>> aie = average_indirect_effect(model, records[:2], samples=2, kinds=("mlp",), progress=False)
    >>> len(select_layer_window(aie, width=2))
    2
    """
    if width < 1:
        raise InvalidArgumentError(f"width must be >= 1, got {width}")
    curve = aie if isinstance(aie, Tensor) else aie.curve(kind, role)
    curve = curve.float().nan_to_num(0.0)
    n = curve.shape[0]
    if width >= n:
        return tuple(range(n))
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
