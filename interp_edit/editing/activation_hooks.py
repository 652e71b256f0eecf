"""Edits that act through activation hooks instead of weight deltas (steering).

An :class:`~interp_edit.editing.edit.Edit` may carry, besides weight deltas, activation hooks:
objects with a TransformerLens hook-point name that change the activation there at inference
(MEGA's gated linear map on the attention output; the plain additive steering vector below).
They follow the :class:`ActivationHook` protocol so that ``apply`` / ``undo`` / ``hooked`` /
``save`` / ``load`` treat them like deltas. A new kind of hook registers itself in
:func:`hook_kinds` (built by a function: no module-level mutable table).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from jaxtyping import Float
from torch import Tensor


@runtime_checkable
class ActivationHook(Protocol):
    """What an edit's activation hook provides."""

    #: the name saved files use to find the class again (see :func:`hook_kinds`)
    kind: ClassVar[str]
    #: the TransformerLens hook point it acts on, e.g. ``"blocks.4.hook_attn_out"``
    hook_name: str

    def __call__(self, act: Tensor, hook: Any) -> Tensor: ...

    def tensors(self) -> dict[str, Tensor]: ...

    def metadata(self) -> dict[str, Any]: ...

    @classmethod
    def from_saved(cls, hook_name: str, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> ActivationHook: ...

    def check(self, model) -> None:
        """Raise :class:`~interp_edit.errors.EditApplicationError` if the hook cannot act on
        ``model`` (wrong width, missing hook point)."""
        ...

    def describe(self) -> dict[str, Any]:
        """A row for :meth:`Edit.summary` (kind, rank, size of the change...)."""
        ...


@dataclass(frozen=True)
class AdditiveSteering:
    """Add ``scale · vector`` to the activation at ``hook_name`` at every position (activation
    addition). The simplest steering edit; MEGA's gated map is in :mod:`interp_edit.editing.mega`."""

    hook_name: str
    vector: Float[Tensor, " d"]
    scale: float = 1.0

    kind: ClassVar[str] = "additive"

    def __call__(self, act: Tensor, hook: Any) -> Tensor:
        return act + self.scale * self.vector.to(act.device, act.dtype)

    def tensors(self) -> dict[str, Tensor]:
        return {"vector": self.vector}

    def metadata(self) -> dict[str, Any]:
        return {"scale": self.scale}

    @classmethod
    def from_saved(cls, hook_name: str, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> AdditiveSteering:
        return cls(hook_name, tensors["vector"], float(metadata.get("scale", 1.0)))

    def check(self, model) -> None:
        check_hook_width(model, self.hook_name, self.vector.shape[-1], self.kind)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "rank": 1, "delta_norm": float(self.vector.double().norm() * abs(self.scale))}


def check_hook_width(model, hook_name: str, width: int, kind: str) -> None:
    """A hook point that exists and whose activation's last dimension is ``width`` (residual-
    sized sites: d_model; ``mlp_post``: d_mlp)."""
    from interp_edit.errors import EditApplicationError

    if hook_name not in model.hook_dict:
        raise EditApplicationError(f"the {kind} hook acts on {hook_name!r}, which this model does not have")
    expected = model.cfg.d_mlp if hook_name.endswith(("mlp.hook_post", "mlp.hook_pre")) else model.cfg.d_model
    if width != expected:
        raise EditApplicationError(f"the {kind} hook on {hook_name!r} has width {width}, the model's activation there has {expected}")


def hook_kinds() -> dict[str, type]:
    """Every activation-hook class an edit file may hold, by its ``kind``."""
    import importlib

    # by module path: the package re-exports the function ``mega``, which shadows the module
    mega = importlib.import_module("interp_edit.editing.mega")
    found = [AdditiveSteering, *getattr(mega, "HOOK_CLASSES", ())]
    return {cls.kind: cls for cls in found}
