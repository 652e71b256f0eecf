"""A module's ``forward`` (or a function its forward calls) replaced for the length of a context,
and given back: the one rule the adapter's contexts that swap TransformerLens' computations
(:mod:`~interp_edit.adapter.shared_norm`, :mod:`~interp_edit.adapter.fused`) follow. The
replacement is an instance attribute, so ``module(x)`` still runs the module's hooks around it;
contexts nest, each giving back what it found (its own attribute, or none: the class's)."""

from __future__ import annotations

from typing import Any

import torch


def hooked(module: torch.nn.Module) -> bool:
    """Whether a hook sits on one of ``module``'s hook points (its direct submodules)."""
    return any(p._forward_hooks or p._forward_pre_hooks or p._backward_hooks or p._backward_pre_hooks
               for p in module._modules.values())


def replace_forward(module: torch.nn.Module, forward: Any, replaced: list) -> None:
    """Give ``module`` the ``forward`` ``forward``, noting in ``replaced`` what it had."""
    replace_attribute(module, "forward", forward, replaced)


def replace_attribute(module: torch.nn.Module, name: str, value: Any, replaced: list) -> None:
    """Set ``module``'s instance attribute ``name`` (a ``forward``, or a function the forward
    calls, such as an MLP's ``act_fn``) to ``value``, noting in ``replaced`` what it had."""
    replaced.append((module, name, vars(module).get(name)))
    object.__setattr__(module, name, value)


def restore_forwards(replaced: list) -> None:
    """Give every module in ``replaced`` back what it had, last replaced first."""
    for module, name, own in reversed(replaced):
        if own is None:
            object.__delattr__(module, name)
        else:
            object.__setattr__(module, name, own)
    replaced.clear()
