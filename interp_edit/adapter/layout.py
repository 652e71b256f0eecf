"""Attention weights stored in the memory order HookedTransformer's forward reads them.

HookedTransformer keeps ``W_Q`` / ``W_K`` / ``W_V`` as [head, d_model, d_head] and ``W_O`` as
[head, d_head, d_model], and on every forward rearranges each into the matrix ``F.linear``
takes: [(head d_head), d_model] for the first three, [d_model, (head d_head)] for ``W_O``
(``.contiguous()``). Stored contiguously in their own shape, that rearrangement copies the four
weights of every layer on every forward (and the copies are kept for the backward). At GPT-2
small shape on the CPU (one thread, one row of 7 tokens) the copies made a forward 1.23× and a
forward + backward 1.21× slower; with 32 rows of 24 tokens the matmuls hide them
(``benchmarks/bench_attention_layout.py``).

:func:`store_attention_as_read` keeps every shape, value and ``Parameter`` object and changes
only the strides: the data is laid out in the rearranged order, so the forward's rearrangement
is a view and copies nothing. Results are bit for bit those of the contiguous layout (the
matmuls see the same contiguous matrices). Everything that reads or writes the weights by
index, in place or not, works on either layout; ``param.data.view(weight_matrix_shape(...))``
of ``W_O`` stays a view (an edit of ``W_O`` changes the model). Only the hooked backend's
loaders apply it (the bridge runs the Hugging Face modules, which read their own layout).

>>> from interp_edit.adapter import attention_layout_is_read_order, load_model
>>> model = load_model("toyworld")                   # hooked loads come laid out
>>> attention_layout_is_read_order(model)
True
"""

from __future__ import annotations

import torch

#: parameter -> the order of its dimensions in memory (outermost first), i.e. the permutation
#: whose ``.contiguous()`` the forward would otherwise copy
READ_ORDER = {
    "W_Q": (0, 2, 1),   # [head, d_model, d_head] stored as [head, d_head, d_model]
    "W_K": (0, 2, 1),
    "W_V": (0, 2, 1),
    "_W_K": (0, 2, 1),  # grouped-query attention's unexpanded key / value weights
    "_W_V": (0, 2, 1),
    "W_O": (2, 0, 1),   # [head, d_head, d_model] stored as [d_model, head, d_head]
}


def _inverse(order: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(sorted(range(len(order)), key=order.__getitem__))


def as_stored(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` laid out as the HookedTransformer parameter ``name`` (e.g.
    ``"blocks.3.attn.W_Q"``) is stored: an attention weight in read order, any other parameter
    contiguous (a copy only where its memory is in another order). What the layer-by-layer
    loader uses, so that no second pass re-lays the weights out.

    >>> w = torch.zeros(4, 32, 8)                                # [head, d_model, d_head]
    >>> as_stored("blocks.0.attn.W_Q", w).stride(), as_stored("blocks.0.mlp.W_in", w).stride()
    ((256, 1, 32), (256, 8, 1))
    """
    owner, _, leaf = name.rpartition(".")
    order = READ_ORDER.get(leaf)
    if order is None or not owner.endswith("attn") or tensor.dim() != 3:
        return tensor.contiguous()
    return tensor.permute(order).contiguous().permute(_inverse(order))


def _attention_params(model):
    for block in getattr(model, "blocks", ()):
        attn = getattr(block, "attn", None)
        if attn is None:
            continue
        for name, order in READ_ORDER.items():
            param = attn._parameters.get(name)
            if isinstance(param, torch.Tensor) and type(param) is torch.nn.Parameter and param.dim() == 3:
                yield param, order


@torch.no_grad()
def store_attention_as_read(model) -> None:
    """Re-stride the attention weights of a HookedTransformer in place (one weight's copy at a
    time; the same ``Parameter`` objects, shapes and values). A model without such weights (the
    bridge, a 4-bit model) is left as it is.

    >>> model = HookedTransformer(cfg)                    # built by hand: TransformerLens' layout
    >>> store_attention_as_read(model)                    # what load_model does
    >>> attention_layout_is_read_order(model)
    True
    """
    for param, order in _attention_params(model):
        if param.device.type != "meta" and not param.permute(order).is_contiguous():
            param.data = param.data.permute(order).contiguous().permute(_inverse(order))


def attention_layout_is_read_order(model) -> bool:
    """Whether every attention weight the forward rearranges is stored in the rearranged order
    (so the rearrangement copies nothing).

    >>> attention_layout_is_read_order(load_model("toyworld"))
    True
    """
    return all(param.permute(order).is_contiguous() for param, order in _attention_params(model))


__all__ = ["READ_ORDER", "attention_layout_is_read_order", "as_stored", "store_attention_as_read"]
