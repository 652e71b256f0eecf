"""One first-norm call per block where TransformerLens' block makes three.

A HookedTransformer block normalises its input once each for the queries, keys and values
(``ln1(query_input)``, ``ln1(key_input)``, ``ln1(value_input)``), and those three are the same
tensor unless the model splits its attention inputs (``use_split_qkv_input`` / ``use_attn_in``).
On the toy model LayerNorm is 22% of a forward's time, and these repeats are about half of its
calls (docs/performance.md). Inside :func:`shared_first_norm` a block's first norm returns the
value it computed for the very same input tensor earlier in that forward, so the result is
bitwise the one the block would compute, and the backward sees one norm instead of three::

    with shared_first_norm(model):
        final = model(residual, start_at_layer=layer)

The norm is computed again (as TransformerLens does) whenever a hook sits on one of its hook
points (``ln1.hook_scale`` / ``ln1.hook_normalized``), checked on every call, so a hook fires
exactly as often as without the context; whenever the input is another tensor or either tensor
was changed in place since, or gradient mode changed; and at the start of every forward of the
model. Only the last norm call is remembered, so a forward keeps at most one activation longer
than it would (until the next block's norm). Entering the context where it is already entered
costs one lookup, so the adapter enters it around each forward it runs and the loops that run
many forwards may enter it once around them. The bridge (its blocks are Hugging Face modules) is
left as it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from interp_edit.adapter.forwards import hooked, replace_forward, restore_forwards


class _LastNorm:
    """The last first-norm call of a forward: (norm, input, its version, output, its version,
    grad mode)."""

    __slots__ = ("entry",)

    def __init__(self):
        self.entry = None

    def clear(self, *_) -> None:
        self.entry = None


class _SharedNorm:
    """A block's ``ln1.forward`` inside the context: the remembered output for the same norm,
    the same unchanged input and the same grad mode; else the norm's own forward."""

    __slots__ = ("norm", "compute", "last")

    def __init__(self, norm: torch.nn.Module, last: _LastNorm):
        self.norm, self.last = norm, last
        self.compute = norm.forward  # TransformerLens' own, or the fused kernel's (adapter.fused)

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args or kwargs or hooked(self.norm):
            return self.compute(x, *args, **kwargs)
        grad = torch.is_grad_enabled()
        entry = self.last.entry
        if (entry is not None and entry[0] is self.norm and entry[1] is x and entry[2] == x._version
                and entry[3]._version == entry[4] and entry[5] == grad):
            return entry[3]
        output = self.compute(x)
        self.last.entry = (self.norm, x, x._version, output, output._version, grad)
        return output


def _norms(model) -> list[torch.nn.Module]:
    norms = (block._modules.get("ln1") for block in model.blocks._modules.values())
    return [norm for norm in norms if norm is not None]


@contextlib.contextmanager
def shared_first_norm(model) -> Iterator[None]:
    """Within the context, each block's ``ln1`` is computed once per input tensor (see the
    module's docstring); on exit the blocks are as they were. Nested entries are free."""
    from interp_edit.adapter import bridge

    if bridge.is_bridge(model):
        yield
        return
    first = model.blocks[0]._modules.get("ln1") if len(model.blocks) else None
    if first is None or isinstance(vars(first).get("forward"), _SharedNorm):  # entered already (or no norm to share)
        yield
        return
    norms = _norms(model)
    last = _LastNorm()
    patched, handle = [], None
    try:
        handle = model.register_forward_pre_hook(last.clear)  # nothing is reused across forwards
        for norm in norms:
            if not isinstance(vars(norm).get("forward"), _SharedNorm):
                replace_forward(norm, _SharedNorm(norm, last), patched)
        yield
    finally:
        restore_forwards(patched)
        if handle is not None:
            handle.remove()
        last.clear()
