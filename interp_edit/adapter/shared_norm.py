"""One first-norm call per block where TransformerLens' block makes three.

A HookedTransformer block normalises its input once each for the queries, keys and values
(``ln1(query_input)``, ``ln1(key_input)``, ``ln1(value_input)``), and those three are the same
tensor unless the model splits its attention inputs (``use_split_qkv_input`` / ``use_attn_in``).
On a small model that repeated norm is a fifth of a forward and of its backward. Inside
:func:`shared_first_norm` a block's first norm returns the value it computed for the very same
input tensor earlier in that block's forward, so the result is bitwise the one the block would
compute, and the backward sees one norm instead of three::

    with shared_first_norm(model):
        final = model(residual, start_at_layer=layer)

The norm is computed again (as TransformerLens does) whenever a hook sits on one of its hook
points (``ln1.hook_scale`` / ``ln1.hook_normalized``), checked on every call, so a hook fires
exactly as often as without the context; and whenever the input is another tensor or was changed
in place since. A block's remembered value is dropped when that block's forward returns.
The bridge (its blocks are Hugging Face modules) is left as it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def _hooked(points) -> bool:
    return any(p._forward_hooks or p._forward_pre_hooks or p._backward_hooks or p._backward_pre_hooks
               for p in points)


class _RepeatedNorm:
    """``norm.forward`` that returns its last output for the same, unchanged input tensor."""

    __slots__ = ("forward", "points", "input", "version", "output", "out_version")

    def __init__(self, norm: torch.nn.Module):
        self.forward = type(norm).forward.__get__(norm)
        self.points = [m for m in norm.modules() if m is not norm]
        self.clear()

    def clear(self, *_) -> None:
        self.input = self.output = None
        self.version = self.out_version = -1

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or _hooked(self.points):
            return self.forward(x, *args, **kwargs)
        output = self.output
        if (x is self.input and x._version == self.version and output is not None
                and output._version == self.out_version):
            return output
        output = self.forward(x)
        self.input, self.version, self.output, self.out_version = x, x._version, output, output._version
        return output


@contextlib.contextmanager
def shared_first_norm(model) -> Iterator[None]:
    """Within the context, each block's ``ln1`` is computed once per input tensor per forward
    (see the module's docstring); on exit the blocks are as they were."""
    from interp_edit.adapter import bridge

    if bridge.is_bridge(model):
        yield
        return
    patched = []
    try:
        for block in model.blocks:
            norm = getattr(block, "ln1", None)
            if not isinstance(norm, torch.nn.Module) or "forward" in vars(norm):
                continue
            memo = _RepeatedNorm(norm)
            norm.forward = memo
            patched.append((norm, block.register_forward_hook(memo.clear), memo))
        yield
    finally:
        for norm, handle, memo in patched:
            handle.remove()
            memo.clear()
            del norm.forward
