"""The edge-level computational graph of a model, read from its architecture description.

>>> g = edge_graph(model)                      # the shipped toy model: 6 layers, 4 heads
>>> g.senders[0].name, g.senders[1].name, g.senders[5].name
('input', 'a0.h0', 'm0')
>>> g.receivers[0].name, g.receivers[4].name, g.receivers[-1].name
('a0.h0<q>', 'a0.h0<k>', 'logits')
>>> g.n_edges, g.allowed.shape                 # every sender -> receiver pair the residual allows
(1108, torch.Size([31, 79]))

Nodes and what they exchange through the residual stream:

- **senders** (what writes to the residual stream): ``input`` (token + position embeddings),
  each attention head ``a{l}.h{h}`` (its own share ``z_h W_O[h]`` of the attention output) and
  each MLP ``m{l}``;
- **receivers** (what reads it): each head's query input ``a{l}.h{h}<q>``, key and value inputs
  ``<k>`` / ``<v>``, each MLP's input ``m{l}``, and ``logits`` (the final residual stream).

With grouped-query / multi-query attention the key and value inputs belong to the key/value
head: the query heads that share key/value head ``g`` (:meth:`Architecture.kv_head`) share the
receivers ``a{l}.kv{g}<k>`` and ``a{l}.kv{g}<v>`` — one key and one value input per key/value
head, as the model computes them (``n_heads + 2 n_kv_heads + 1`` receivers a layer).

Edges follow the order of the residual stream, in one rule (:attr:`Sender.stage`,
:attr:`Receiver.stage`: a sender feeds a receiver whose stage is larger): the input is stage 0;
the heads of layer ``l`` are written at stage ``2l + 1`` and read at ``2l + 1`` (a head never
feeds a head of its own layer); the MLP of layer ``l`` writes at ``2l + 2`` and reads at
``2l + 2`` in sequential blocks (it sees its own layer's heads), but at ``2l + 1`` with
parallel blocks (GPT-J, GPT-NeoX, Phi: attention and MLP both read the block's input, so the
MLP does not see its own layer's heads); the logits read after everything.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool
from torch import Tensor

#: what a receiver reads: the three inputs of attention, an MLP's input, the final residual
RECEIVER_KINDS = ("q", "k", "v", "mlp", "logits")


@dataclass(frozen=True)
class Sender:
    """A node writing to the residual stream: ``kind`` is ``"input"``, ``"head"`` or ``"mlp"``.

    >>> edge_graph(model).senders[1]
    Sender(name='a0.h0', kind='head', layer=0, head=0, stage=1)
    """

    name: str
    kind: str
    layer: int | None
    head: int | None
    #: where in the residual stream it writes (see the module docstring)
    stage: int


@dataclass(frozen=True)
class Receiver:
    """An input reading the residual stream: ``kind`` is one of :data:`RECEIVER_KINDS`.

    ``index`` is the query head for ``q``, the key/value head for ``k`` / ``v``, None otherwise;
    ``heads`` lists the query heads whose computation reads it (all heads of a key/value group
    for ``k`` / ``v``).

    >>> r = edge_graph(model).receivers[4]
    >>> r.name, r.kind, r.heads, r.node
    ('a0.h0<k>', 'k', (0,), 'a0.h0')
    """

    name: str
    kind: str
    layer: int | None
    index: int | None
    heads: tuple[int, ...]
    #: senders of a smaller stage feed it
    stage: int

    @property
    def node(self) -> str:
        """The name of the node this is an input of (``a3.h1``, ``a3.kv0``, ``m3``, ``logits``)."""
        return self.name.split("<")[0]


@dataclass(frozen=True, eq=False)
class EdgeGraph:
    """Senders, receivers and the edges between them (``allowed[s, r]``), for one architecture.

    Build it with :func:`edge_graph`; an edge is indexed by (sender index, receiver index), and
    :meth:`edges` lists the allowed ones in a fixed order (sender-major), the order of every
    flattened score tensor (``scores[graph.allowed]``).

    >>> g = edge_graph(model)
    >>> g.edges()[0], g.edge_name(*g.edges()[0])
    ((0, 0), 'input -> a0.h0<q>')
    >>> bool(g.allowed[g.sender_index("a0.h0"), g.receiver_index("m0")])   # sequential blocks
    True
    >>> bool(g.allowed[g.sender_index("a1.h0"), g.receiver_index("a1.h2<q>")])  # same layer
    False
    """

    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    parallel_blocks: bool
    senders: tuple[Sender, ...]
    receivers: tuple[Receiver, ...]
    allowed: Bool[Tensor, "sender receiver"]

    @property
    def n_edges(self) -> int:
        return int(self.allowed.sum())

    def edges(self) -> list[tuple[int, int]]:
        """The allowed (sender index, receiver index) pairs, sender-major."""
        return [tuple(int(i) for i in pair) for pair in self.allowed.nonzero()]

    def edge_name(self, sender: int, receiver: int) -> str:
        return f"{self.senders[sender].name} -> {self.receivers[receiver].name}"

    def sender_index(self, name: str) -> int:
        return next(i for i, s in enumerate(self.senders) if s.name == name)

    def receiver_index(self, name: str) -> int:
        return next(i for i, r in enumerate(self.receivers) if r.name == name)

    def layer_senders(self, kind: str, layer: int | None) -> slice:
        """The contiguous sender indices of the input (``kind="input"``), the heads of a layer
        (``"head"``) or a layer's MLP (``"mlp"``)."""
        idx = [i for i, s in enumerate(self.senders) if s.kind == kind and s.layer == layer]
        return slice(idx[0], idx[-1] + 1)

    def layer_receivers(self, kind: str, layer: int | None) -> slice:
        """The contiguous receiver indices of one kind (:data:`RECEIVER_KINDS`) in a layer."""
        idx = [i for i, r in enumerate(self.receivers) if r.kind == kind and r.layer == layer]
        return slice(idx[0], idx[-1] + 1)

    def __repr__(self) -> str:
        from interp_edit.reprs import short_repr

        return short_repr("EdgeGraph", family=repr(self.family), layers=str(self.n_layers), heads=str(self.n_heads),
                          kv_heads=str(self.n_kv_heads), parallel_blocks=str(self.parallel_blocks),
                          senders=str(len(self.senders)), receivers=str(len(self.receivers)), edges=str(self.n_edges))


def edge_graph(model) -> EdgeGraph:
    """The :class:`EdgeGraph` of a loaded model, from its architecture description
    (:func:`interp_edit.adapter.architecture`: parallel blocks, grouped-query attention).

    >>> g = edge_graph(model)
    >>> len(g.senders), len(g.receivers), g.n_edges
    (31, 79, 1108)
    """
    from interp_edit.adapter.architecture import architecture

    return graph_from_architecture(architecture(model))


def graph_from_architecture(arch) -> EdgeGraph:
    """The :class:`EdgeGraph` of an :class:`~interp_edit.adapter.architecture.Architecture`."""
    n_layers, n_heads, n_kv = arch.n_layers, arch.n_heads, arch.n_kv_heads
    senders = [Sender("input", "input", None, None, 0)]
    receivers: list[Receiver] = []
    for layer in range(n_layers):
        attn_stage, mlp_stage = 2 * layer + 1, 2 * layer + 2
        senders += [Sender(f"a{layer}.h{h}", "head", layer, h, attn_stage) for h in range(n_heads)]
        senders.append(Sender(f"m{layer}", "mlp", layer, None, mlp_stage))
        receivers += [Receiver(f"a{layer}.h{h}<q>", "q", layer, h, (h,), attn_stage) for h in range(n_heads)]
        for kind in ("k", "v"):
            for g in range(n_kv):
                heads = tuple(h for h in range(n_heads) if arch.kv_head(h) == g)
                node = f"a{layer}.kv{g}" if arch.grouped_query else f"a{layer}.h{g}"
                receivers.append(Receiver(f"{node}<{kind}>", kind, layer, g, heads, attn_stage))
        mlp_reads = attn_stage if arch.parallel_blocks else mlp_stage
        receivers.append(Receiver(f"m{layer}", "mlp", layer, None, (), mlp_reads))
    receivers.append(Receiver("logits", "logits", None, None, (), 2 * n_layers + 1))
    s_stage = torch.tensor([s.stage for s in senders])
    r_stage = torch.tensor([r.stage for r in receivers])
    allowed = s_stage[:, None] < r_stage[None, :]
    return EdgeGraph(arch.family, n_layers, n_heads, n_kv, arch.parallel_blocks, tuple(senders), tuple(receivers),
                     allowed)
