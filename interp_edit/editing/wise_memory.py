"""WISE's side memory and router: the activation hook of a WISE edit
(:mod:`interp_edit.editing.methods.wise`).

The side memory is a copy ``W_side`` of one layer's MLP output weight ``W_out`` [d_mlp, d_model],
kept here as ``delta = W_side − W_out`` (the main memory is the model's own ``W_out``, whatever
it holds when the hook runs). Per input, the router compares the two memories' outputs:

    ``out_main = A·W_out + b_out``  (what the MLP writes; the hook sees it),
    ``out_side = out_main + A·Δ``  (``A``: the MLP's hidden activation, ``mlp.hook_post``),
    ``d_p = ‖φ(out_side) − φ(out_main)‖₂`` per position ``p`` (φ: the model's activation
    function, applied to both outputs as the authors' ``euc`` does),

and routes a sequence to the side memory when its score (the mean of ``d_p`` over its positions;
the largest ``d_p`` when it has more than 100, the code's rule; a batch's right padding is not
among a sequence's positions) is at least the threshold
``activation_floor · act_ratio``; otherwise the output is returned bit for bit.

Beyond one shard (the code's ``save_freq`` / ``merge_freq``), the hook also holds the saved
(and merged) memories ``memories[i]`` (each a ``W_mem − W_out``) with their floors, and routes
as the code's retrieval does (``WISEAdapter.forward``, ``retrieve``): with ``s_0`` the current
shard's score and ``s_i`` memory ``i``'s, the running best starts at ``s_0`` (even when ``s_0``
is under its threshold), memory ``i`` (in order) takes over when ``s_i`` > the running best and
``s_i`` > ``floor_i · act_ratio``; if none does and ``s_0`` < the current threshold, the main
memory's output is returned bit for bit.

The hook reads two activations (``A`` and the MLP output), so besides the
:class:`~interp_edit.editing.hooks.ActivationHook` methods it has :meth:`WiseSideMemory.hook_points`:
the (hook name, function) pairs that :meth:`Edit.apply <interp_edit.editing.edit.Edit.apply>`
and ``Edit.hooked`` register (:func:`~interp_edit.editing.hooks.hook_points`). The pairs share a
slot made afresh for each registration (the hidden activation is kept from ``mlp.hook_post``
until the block's MLP output, a few operations later); the frozen hook object holds no state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

#: how a forward's sequences are routed (see :class:`WiseSideMemory`)
WISE_ROUTINGS = ("sequence", "batch", "prefix")
#: a sequence longer than this is scored by its largest distance (the authors' ``euc(infer=True)``)
LONG_SEQUENCE = 100


def activation_function(name: str):
    """The TransformerLens activation function ``name`` (the model's ``cfg.act_fn``)."""
    from transformer_lens.utilities.activation_functions import SUPPORTED_ACTIVATIONS

    if name not in SUPPORTED_ACTIVATIONS:
        raise ValueError(f"unknown activation function {name!r}; known: {sorted(SUPPORTED_ACTIVATIONS)}")
    return SUPPORTED_ACTIVATIONS[name]


@dataclass(frozen=True)
class WiseSideMemory:
    """The hook of a WISE edit at ``hook_name`` (``blocks.L.hook_mlp_out``): the side memory
    ``delta`` = W_side − W_out [d_mlp, d_model], the router's threshold
    ``activation_floor · act_ratio``, the model's activation function ``act_fn``, and — so that
    a later call can extend the memory — the current shard's gradient ``mask`` and the number
    of edits it holds.

    ``routing``: ``"sequence"`` (default) routes each sequence of a batch by its own score — the
    authors' rule at batch size 1, how their evaluation runs; ``"batch"`` is the code's rule for
    a batch (one decision for the whole forward, by the mean of the sequences' scores);
    ``"prefix"`` routes each position by the mean distance over the positions up to it (causal:
    right padding and later tokens do not change it).

    >>> memory = WiseSideMemory("blocks.0.hook_mlp_out", delta=torch.eye(2), activation_floor=1.0,
    ...                         act_ratio=0.5, act_fn="relu")
    >>> memory.route(torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]]), torch.zeros(2, 1, 2))  # A·Δ: 1 vs 0
    tensor([[[1., 0.]],
    <BLANKLINE>
            [[0., 0.]]])
    """

    hook_name: str
    delta: Float[Tensor, "d_mlp d_model"]
    activation_floor: float
    act_ratio: float
    act_fn: str
    routing: str = "sequence"
    mask: Bool[Tensor, "d_mlp d_model"] | None = None
    n_edits: int = 0
    #: the saved and merged memories (the code's ``memory_weight``, as ``W_mem − W_out``), oldest first
    memories: Float[Tensor, "memory d_mlp d_model"] | None = None
    #: their floors (the code's ``memory_mean_act[i].min_act()``; a merged memory's is its shards' least)
    memory_floors: tuple[float, ...] = ()

    kind: ClassVar[str] = "wise_side_memory"

    @property
    def n_memories(self) -> int:
        """How many saved (or merged) memories the hook holds besides the current shard."""
        return 0 if self.memories is None else int(self.memories.shape[0])

    @property
    def layer(self) -> int:
        return int(self.hook_name.split(".")[1])

    @property
    def threshold(self) -> float:
        """The router's threshold: a sequence scoring at least this goes to the side memory."""
        return self.activation_floor * self.act_ratio

    @property
    def input_hook(self) -> str:
        """The hook point of the side memory's input ``A`` (the MLP's hidden activation)."""
        from interp_edit.adapter.hooks import hook_name

        return hook_name("mlp_post", self.layer)

    def _delta_on(self, device, dtype) -> Tensor:
        moved = self.__dict__.setdefault("_moved", {})
        key = (str(device), dtype)
        if key not in moved:
            moved[key] = self.delta.detach().to(device, dtype)
        return moved[key]

    def _memories_on(self, device, dtype) -> Tensor:
        moved = self.__dict__.setdefault("_moved", {})
        key = ("memories", str(device), dtype)
        if key not in moved:
            moved[key] = self.memories.detach().to(device, dtype)
        return moved[key]

    def side_output(self, inputs: Float[Tensor, "batch pos d_mlp"], outputs: Float[Tensor, "batch pos d_model"]
                    ) -> Float[Tensor, "batch pos d_model"]:
        """The side memory's output, ``out_main + A·Δ`` (in float32, or float64 for a float64 model)."""
        dtype = torch.promote_types(outputs.dtype, torch.float32)
        return outputs.to(dtype) + inputs.to(dtype) @ self._delta_on(inputs.device, dtype)

    def distances(self, inputs: Float[Tensor, "batch pos d_mlp"], outputs: Float[Tensor, "batch pos d_model"]
                  ) -> Float[Tensor, "batch pos"]:
        """Per position: ``‖φ(out_side) − φ(out_main)‖₂`` (the authors' ``euc``)."""
        phi = activation_function(self.act_fn)
        side = self.side_output(inputs, outputs)
        return (phi(side) - phi(outputs.to(side.dtype))).norm(dim=-1)

    def scores(self, distances: Float[Tensor, "batch pos"], lengths: Int[Tensor, " batch"] | None = None
               ) -> Float[Tensor, "batch pos"]:
        """What each position is routed by (see ``routing``), broadcast to [batch, pos]. A
        sequence's score reads its first ``lengths[b]`` positions only (its real tokens, before
        the right padding of a batch; all positions when ``lengths`` is None), so a prompt is
        routed as it is alone, whatever it is batched with."""
        if self.routing == "prefix":
            count = torch.arange(1, distances.shape[1] + 1, device=distances.device, dtype=distances.dtype)
            return distances.cumsum(-1) / count
        if lengths is None:
            per_sequence = distances.amax(-1) if distances.shape[1] > LONG_SEQUENCE else distances.mean(-1)
        else:
            lengths = lengths.to(distances.device)
            real = torch.arange(distances.shape[1], device=distances.device)[None, :] < lengths[:, None]
            mean = distances.masked_fill(~real, 0).sum(-1) / lengths.to(distances.dtype)
            largest = distances.masked_fill(~real, float("-inf")).amax(-1)
            per_sequence = torch.where(lengths > LONG_SEQUENCE, largest, mean)
        if self.routing == "batch":
            per_sequence = per_sequence.mean().expand_as(per_sequence)
        return per_sequence[:, None].expand_as(distances)

    def _candidates(self, inputs: Float[Tensor, "batch pos d_mlp"], outputs: Float[Tensor, "batch pos d_model"],
                    lengths: Int[Tensor, " batch"] | None = None) -> tuple[Int[Tensor, "batch pos"], list[Tensor]]:
        """The code's retrieval among the saved memories and the current shard: the choice per
        position (-1 the main memory, ``i`` < ``n_memories`` memory ``i``, ``n_memories`` the
        current shard) and the candidates' outputs (memories first, the current shard last)."""
        phi = activation_function(self.act_fn)
        side = self.side_output(inputs, outputs)
        base = outputs.to(side.dtype)
        phi_base = phi(base)
        current = self.scores((phi(side) - phi_base).norm(dim=-1), lengths)
        k = self.n_memories
        choice = torch.full(current.shape, k, dtype=torch.long, device=current.device)
        best, candidates = current, []
        if k:
            weights = self._memories_on(inputs.device, side.dtype)
            a = inputs.to(side.dtype)
            for i in range(k):
                out = base + a @ weights[i]
                score = self.scores((phi(out) - phi_base).norm(dim=-1), lengths)
                wins = (score > best) & (score > self.memory_floors[i] * self.act_ratio)
                choice = torch.where(wins, i, choice)
                best = torch.where(wins, score, best)
                candidates.append(out)
        candidates.append(side)
        return torch.where((choice == k) & (current < self.threshold), -1, choice), candidates

    def retrieve(self, inputs: Float[Tensor, "batch pos d_mlp"], outputs: Float[Tensor, "batch pos d_model"],
                 lengths: Int[Tensor, " batch"] | None = None) -> Int[Tensor, "batch pos"]:
        """Per position: the memory it is routed to (-1 the main memory, ``i`` < ``n_memories``
        saved memory ``i``, ``n_memories`` the current shard)."""
        return self._candidates(inputs, outputs, lengths)[0]

    def routed(self, inputs: Float[Tensor, "batch pos d_mlp"], outputs: Float[Tensor, "batch pos d_model"],
               lengths: Int[Tensor, " batch"] | None = None) -> Bool[Tensor, "batch pos"]:
        """Per position: whether it is routed to a side memory (any, when several are held)."""
        if self.n_memories:
            return self.retrieve(inputs, outputs, lengths) >= 0
        return self.scores(self.distances(inputs, outputs), lengths) >= self.threshold

    def route(self, inputs: Float[Tensor, "batch pos d_mlp"], outputs: Float[Tensor, "batch pos d_model"],
              lengths: Int[Tensor, " batch"] | None = None) -> Float[Tensor, "batch pos d_model"]:
        """The MLP output with the routed positions' replaced by their memory's; with none
        routed, ``outputs`` itself (bit for bit). ``lengths``: each sequence's real tokens (see
        :meth:`scores`)."""
        if self.n_memories:
            choice, candidates = self._candidates(inputs, outputs, lengths)
            if not bool((choice >= 0).any()):
                return outputs
            result = outputs
            for i, out in enumerate(candidates):
                result = torch.where((choice == i)[..., None], out.to(outputs.dtype), result)
            return result
        use = self.routed(inputs, outputs, lengths)
        if not bool(use.any()):
            return outputs
        return torch.where(use[..., None], self.side_output(inputs, outputs).to(outputs.dtype), outputs)

    def __call__(self, inputs: Tensor, outputs: Tensor) -> Tensor:
        """A two-activation hook: the routed MLP output (registered through :meth:`hook_points`)."""
        return self.route(inputs, outputs)

    def hook_points(self, model) -> list[tuple[str, Any]]:
        """The hooks that make this memory act on ``model``: note each sequence's real length at
        ``hook_embed`` (:func:`~interp_edit.adapter.params.padded_lengths`: a batch's right
        padding is not part of a sequence's score), keep ``A`` at ``mlp.hook_post``, route the
        MLP's raw output (before a post-MLP norm where the architecture has one)."""
        from interp_edit.adapter.hooks import hook_name, sublayer_output_hooks
        from interp_edit.adapter.params import padded_lengths, token_embeddings

        slot: dict[str, Tensor] = {}
        pad = getattr(getattr(model, "tokenizer", None), "pad_token_id", None)
        pad_row = None if pad is None else token_embeddings(model)[pad].detach().clone()

        def lengths(embedded, hook):
            slot["lengths"] = padded_lengths(model, embedded, pad_row)

        def keep(act, hook):
            slot["input"] = act

        def replace(out, hook):
            known = slot.get("lengths")
            # a forward started past the embedding (a trace's restorations) has no lengths of its own
            if known is not None and (known.shape[0] != out.shape[0] or int(known.max()) > out.shape[1]):
                known = None
            return self.route(slot.pop("input"), out, known)

        return [(hook_name("embed"), lengths), (self.input_hook, keep),
                *sublayer_output_hooks(model, "mlp", self.layer, replace)]

    def tensors(self) -> dict[str, Tensor]:
        out = {"delta": self.delta}
        if self.mask is not None:
            out["mask"] = self.mask
        if self.memories is not None:
            out["memories"] = self.memories
        return out

    def metadata(self) -> dict[str, Any]:
        out = {"activation_floor": self.activation_floor, "act_ratio": self.act_ratio, "act_fn": self.act_fn,
               "routing": self.routing, "n_edits": self.n_edits}
        if self.memories is not None:
            out["memory_floors"] = list(self.memory_floors)
        return out

    @classmethod
    def from_saved(cls, hook_name: str, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> WiseSideMemory:
        delta, mask, memories = tensors["delta"], tensors.get("mask"), tensors.get("memories")
        if delta.dim() != 2 or (mask is not None and mask.shape != delta.shape) or (
                memories is not None and (memories.dim() != 3 or memories.shape[1:] != delta.shape)):
            raise ValueError(f"side-memory tensors of shapes delta {tuple(delta.shape)}, mask "
                             f"{None if mask is None else tuple(mask.shape)}, memories "
                             f"{None if memories is None else tuple(memories.shape)} do not fit together")
        floors = tuple(float(f) for f in metadata.get("memory_floors", ()))
        if len(floors) != (0 if memories is None else memories.shape[0]):
            raise ValueError(f"{len(floors)} memory floors for {0 if memories is None else memories.shape[0]} memories")
        if metadata.get("routing") not in WISE_ROUTINGS:
            raise ValueError(f"routing {metadata.get('routing')!r} is not one of {WISE_ROUTINGS}")
        activation_function(metadata["act_fn"])
        return cls(hook_name, delta, float(metadata["activation_floor"]), float(metadata["act_ratio"]),
                   str(metadata["act_fn"]), metadata["routing"], None if mask is None else mask.bool(),
                   int(metadata.get("n_edits", 0)), memories, floors)

    def check(self, model) -> None:
        from interp_edit.errors import EditApplicationError

        if self.input_hook not in model.hook_dict:
            raise EditApplicationError(f"the {self.kind} hook reads {self.input_hook!r}, which this model does not have")
        if tuple(self.delta.shape) != (model.cfg.d_mlp, model.cfg.d_model):
            raise EditApplicationError(f"the {self.kind} hook's side memory has shape {tuple(self.delta.shape)}, the "
                                       f"model's W_out {(model.cfg.d_mlp, model.cfg.d_model)}")
        if self.memories is not None and tuple(self.memories.shape[1:]) != tuple(self.delta.shape):
            raise EditApplicationError(f"the {self.kind} hook's memories have shape {tuple(self.memories.shape)}, its "
                                       f"side memory {tuple(self.delta.shape)}")
        if getattr(model.cfg, "act_fn", None) != self.act_fn:
            raise EditApplicationError(f"the {self.kind} hook measures distances with {self.act_fn!r}, the model's "
                                       f"activation is {getattr(model.cfg, 'act_fn', None)!r}")

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "rank": int(min(self.delta.shape)), "delta_norm": float(self.delta.double().norm()),
                "threshold": self.threshold, "routing": self.routing, "edits": self.n_edits,
                **({"memories": self.n_memories} if self.n_memories else {})}


__all__ = ["LONG_SEQUENCE", "WISE_ROUTINGS", "WiseSideMemory", "activation_function"]
