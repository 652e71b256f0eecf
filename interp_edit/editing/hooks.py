"""Edits that act through activation hooks instead of weight deltas (steering).

An :class:`~interp_edit.editing.edit.Edit` may carry, besides weight deltas, activation hooks:
objects with a TransformerLens hook-point name that change the activation there at inference
(MEGA's gated linear map on the attention output; the plain additive steering vector below).
They follow the :class:`ActivationHook` protocol so that ``apply`` / ``undo`` / ``hooked`` /
``save`` / ``load`` treat them like deltas. Every hook class lives in this module
(the editors that build them import it) and is listed in :func:`hook_kinds`, which ``Edit.load``
reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Float
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
    addition). The simplest steering edit; MEGA's gated map is :class:`GatedLinearMap` below."""

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


@dataclass(frozen=True)
class GatedLinearMap:
    """The hook of one layer: every request's affine map on the attention output, each behind
    a cosine-similarity gate. A frozen dataclass of tensors (saved and loaded like any hook).

    Per request ``r``: ``mu_source[r]``, ``mu_target[r]`` [d]; ``basis[r]`` [d, k] (orthonormal
    columns); ``map[r]`` [k, k]; ``gate_keys[r]`` [n, d] unit vectors with ``gate_mask[r]`` [n]
    marking the real ones (requests with fewer samples are padded); ``gate_thresholds[r]``
    (optional) a per-request threshold that replaces ``gate_threshold`` (a calibrated gate).
    """

    hook_name: str
    mu_source: Float[Tensor, "request d"]
    mu_target: Float[Tensor, "request d"]
    basis: Float[Tensor, "request d k"]
    map: Float[Tensor, "request k k"]
    gate_keys: Float[Tensor, "request sample d"]
    gate_mask: Bool[Tensor, "request sample"]
    gate_threshold: float
    strength: float = 1.0
    gate_thresholds: Float[Tensor, " request"] | None = None

    kind: ClassVar[str] = "mega_gated_map"

    def _on(self, device) -> tuple[Tensor, ...]:
        """The tensors in float32 on ``device``, moved once per device and kept on this instance
        (not copied at every forward)."""
        moved = self.__dict__.setdefault("_moved", {})
        key = str(device)
        if key not in moved:
            floats = (self.mu_source, self.mu_target, self.basis, self.map, self.gate_keys)
            thresholds = None if self.gate_thresholds is None else self.gate_thresholds.to(device, torch.float32)
            moved[key] = (*(t.to(device, torch.float32) for t in floats), self.gate_mask.to(device), thresholds)
        return moved[key]

    def gate(self, act: Float[Tensor, "*batch d"]) -> tuple[Bool[Tensor, "*batch"], Tensor, Tensor]:
        """Per position: whether the gate passes, the chosen request and its similarity."""
        _, _, _, _, keys, mask, thresholds = self._on(act.device)
        sims = self.similarities(act)
        if thresholds is None:
            best, request = sims.max(-1)
            return best >= self.gate_threshold, request, best
        # a calibrated gate: the request with the highest similarity among those whose own gate passes
        best, request = sims.masked_fill(sims < thresholds, -3.0).max(-1)
        return best >= -1.0, request, best

    def similarities(self, act: Float[Tensor, "*batch d"]) -> Float[Tensor, "*batch request"]:
        """Per position and request: the largest cosine similarity with that request's sources."""
        _, _, _, _, keys, mask, _ = self._on(act.device)
        unit = torch.nn.functional.normalize(act.float(), dim=-1)
        sims = torch.einsum("...d,rnd->...rn", unit, keys)
        return sims.masked_fill(~mask, -2.0).amax(-1)

    def __call__(self, act: Float[Tensor, "batch pos d"], hook: Any = None) -> Float[Tensor, "batch pos d"]:
        passed, request, _ = self.gate(act)
        if not passed.any():
            return act
        where = passed.nonzero(as_tuple=True)
        chosen = request[where]
        x = act[where].float()
        mu_source, mu_target, basis, mapping, _, _, _ = self._on(act.device)
        mu_s, mu_t, basis, mapping = mu_source[chosen], mu_target[chosen], basis[chosen], mapping[chosen]
        z = torch.einsum("nd,ndk->nk", x - mu_s, basis)
        moved = torch.einsum("nij,nj->ni", mapping, z) - z
        update = self.strength * ((mu_t - mu_s) + torch.einsum("ndk,nk->nd", basis, moved))
        out = act.clone()
        out[where] = (x + update).to(act.dtype)
        return out

    def tensors(self) -> dict[str, Tensor]:
        out = {"mu_source": self.mu_source, "mu_target": self.mu_target, "basis": self.basis, "map": self.map,
               "gate_keys": self.gate_keys, "gate_mask": self.gate_mask}
        if self.gate_thresholds is not None:
            out["gate_thresholds"] = self.gate_thresholds
        return out

    def metadata(self) -> dict[str, Any]:
        return {"gate_threshold": self.gate_threshold, "strength": self.strength}

    @classmethod
    def from_saved(cls, hook_name: str, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> GatedLinearMap:
        return cls(hook_name, tensors["mu_source"], tensors["mu_target"], tensors["basis"], tensors["map"],
                   tensors["gate_keys"], tensors["gate_mask"].bool(), float(metadata["gate_threshold"]),
                   float(metadata.get("strength", 1.0)), tensors.get("gate_thresholds"))

    def check(self, model) -> None:
        check_hook_width(model, self.hook_name, self.mu_source.shape[-1], self.kind)

    def describe(self) -> dict[str, Any]:
        shift = (self.mu_target - self.mu_source).double().norm(dim=-1)
        return {"kind": self.kind, "rank": int(self.basis.shape[-1]), "requests": int(self.mu_source.shape[0]),
                "delta_norm": float(shift.mean() * self.strength),
                "gate_threshold": self.gate_threshold if self.gate_thresholds is None else self.gate_thresholds.tolist()}


def hook_kinds() -> dict[str, type]:
    """Every activation-hook class an edit file may hold, by its ``kind``."""
    return {cls.kind: cls for cls in (AdditiveSteering, GatedLinearMap)}
