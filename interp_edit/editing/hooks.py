"""Edits that act through activation hooks instead of weight deltas (steering).

An :class:`~interp_edit.editing.edit.Edit` may carry, besides weight deltas, activation hooks:
objects with a TransformerLens hook-point name that change the activation there at inference
(MEGA's gated linear map on the attention output; GRACE's key-value codebook; the plain
additive steering vector below; WISE's side memory and router, in
:mod:`interp_edit.editing.wise_memory`, which reads two activations and registers through
:func:`hook_points`).
They follow the :class:`ActivationHook` protocol so that ``apply`` / ``undo`` / ``hooked`` /
``save`` / ``load`` treat them like deltas. Every hook class lives in this module
(the editors that build them import it; WISE's in its own) and is listed in :func:`hook_kinds`,
which ``Edit.load`` reads.
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
        mu_s, mu_t, basis, mapping = tensors["mu_source"], tensors["mu_target"], tensors["basis"], tensors["map"]
        keys, mask, thresholds = tensors["gate_keys"], tensors["gate_mask"], tensors.get("gate_thresholds")
        n, d = mu_s.shape if mu_s.dim() == 2 else (None, None)
        k = basis.shape[-1] if basis.dim() == 3 else None
        if (n is None or k is None or mu_t.shape != mu_s.shape or basis.shape != (n, d, k) or mapping.shape != (n, k, k)
                or keys.dim() != 3 or keys.shape[0] != n or keys.shape[2] != d or mask.shape != keys.shape[:2]
                or (thresholds is not None and thresholds.shape != (n,))):
            shapes = {name: tuple(t.shape) for name, t in tensors.items()}
            raise ValueError(f"gated-map tensors of shapes {shapes} do not fit together (mu_source [n, d], mu_target "
                             "[n, d], basis [n, d, k], map [n, k, k], gate_keys [n, m, d], gate_mask [n, m], "
                             "gate_thresholds [n])")
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


#: where a GRACE codebook's match replaces the activation (see :class:`GraceCodebook`)
GRACE_REPLACEMENTS = ("last", "prompt", "all")


@dataclass(frozen=True)
class GraceCodebook:
    """The hook of a GRACE edit: keys [n, d], values [n, d] and radii ε [n] at ``hook_name``;
    ``replacement`` says which positions a match replaces (see :mod:`interp_edit.editing.methods.grace`).
    A position is matched when its activation lies within ε of its nearest key.

    >>> book = GraceCodebook("blocks.3.hook_mlp_out", keys=torch.zeros(1, 2), values=torch.ones(1, 2),
    ...                      epsilons=torch.tensor([1.0]))
    >>> book(torch.tensor([[[0.5, 0.0], [3.0, 0.0]]]))  # the first position is within ε of the key
    tensor([[[1., 1.],
             [3., 0.]]])
    """

    hook_name: str
    keys: Float[Tensor, "n d"]
    values: Float[Tensor, "n d"]
    epsilons: Float[Tensor, " n"]
    replacement: str = "last"

    kind: ClassVar[str] = "grace_codebook"

    def nearest(self, act: Float[Tensor, "*batch d"]) -> tuple[Tensor, Tensor]:
        """Per position: the distance to the nearest key and its index."""
        flat = act.detach().float().reshape(-1, act.shape[-1])
        keys = self.keys.detach().to(act.device, torch.float32)
        # no matrix-product shortcut: a key's own activation is at distance exactly 0
        dist = torch.cdist(flat, keys, compute_mode="donot_use_mm_for_euclid_dist")
        best, index = dist.min(-1)
        return best.reshape(act.shape[:-1]), index.reshape(act.shape[:-1])

    def matches(self, act: Float[Tensor, "*batch d"]) -> tuple[Tensor, Tensor]:
        """Per position: whether it is within its nearest key's radius, and that key."""
        best, index = self.nearest(act)
        return best <= self.epsilons.to(act.device, torch.float32)[index], index

    def __call__(self, act: Float[Tensor, "batch pos d"], hook: Any = None) -> Float[Tensor, "batch pos d"]:
        hit, index = self.matches(act)
        if not bool(hit.any()):
            return act
        if self.replacement == "last":
            where, chosen = hit, index
        else:  # per sequence, the key of its last matched position
            pos = torch.arange(act.shape[1], device=act.device).expand_as(hit)
            last = torch.where(hit, pos, -1).amax(-1)  # [batch], -1: no match
            chosen = index.gather(1, last.clamp(min=0)[:, None]).expand_as(index)
            rows = (last >= 0)[:, None]
            where = rows & (pos < last[:, None]) if self.replacement == "prompt" else rows.expand_as(hit)
        values = self.values.to(act.device, act.dtype)[chosen]
        return torch.where(where[..., None], values, act)

    def tensors(self) -> dict[str, Tensor]:
        return {"keys": self.keys, "values": self.values, "epsilons": self.epsilons}

    def metadata(self) -> dict[str, Any]:
        return {"replacement": self.replacement}

    @classmethod
    def from_saved(cls, hook_name: str, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> GraceCodebook:
        keys, values, eps = tensors["keys"], tensors["values"], tensors["epsilons"]
        if keys.dim() != 2 or values.shape != keys.shape or eps.shape != keys.shape[:1]:
            raise ValueError(f"codebook tensors of shapes keys {tuple(keys.shape)}, values {tuple(values.shape)}, "
                             f"epsilons {tuple(eps.shape)} do not fit together")
        if metadata.get("replacement") not in GRACE_REPLACEMENTS:
            raise ValueError(f"replacement {metadata.get('replacement')!r} is not one of {GRACE_REPLACEMENTS}")
        return cls(hook_name, keys, values, eps, metadata["replacement"])

    def check(self, model) -> None:
        check_hook_width(model, self.hook_name, self.keys.shape[-1], self.kind)

    def describe(self) -> dict[str, Any]:
        n = int(self.keys.shape[0])
        return {"kind": self.kind, "rank": n, "keys": n, "replacement": self.replacement,
                "delta_norm": float((self.values - self.keys).double().norm(dim=-1).mean()) if n else 0.0,
                "eps_min": float(self.epsilons.min()) if n else 0.0, "eps_max": float(self.epsilons.max()) if n else 0.0}


def hook_points(model, steer) -> list[tuple[str, Any]]:
    """The (hook name, function) pairs that make ``steer`` act on ``model``: ``[(hook_name,
    steer)]`` for a one-activation hook; a hook that reads two activations (WISE's
    :class:`~interp_edit.editing.wise_memory.WiseSideMemory`: the MLP's hidden activation and its
    output) says which by its own ``hook_points(model)``."""
    own = getattr(steer, "hook_points", None)
    return own(model) if own is not None else [(steer.hook_name, steer)]


def hook_kinds() -> dict[str, type]:
    """Every activation-hook class an edit file may hold, by its ``kind``."""
    from interp_edit.editing.wise_memory import WiseSideMemory  # its own module (it imports this one's helpers)

    return {cls.kind: cls for cls in (AdditiveSteering, GatedLinearMap, GraceCodebook, WiseSideMemory)}
