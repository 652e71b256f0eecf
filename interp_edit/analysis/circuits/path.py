"""Path patching: the effect of sender → receiver paths through the residual stream.

>>> res = path_patch(model, "Talvik Corlo was born in", "Beldel Kordor was born in",
...                  ["m0 -> logits", ["a0.h1 -> a3.h2<v>", "a3.h2 -> logits"]])
>>> len(res.effects), res.paths[1]
(2, ('a0.h1 -> a3.h2<v>', 'a3.h2 -> logits'))

A path is a chain of edges of :func:`edge_graph` (``"sender -> receiver"`` strings), each edge's
sender being the node that reads the previous edge's receiver (head ``a3.h2`` reads
``a3.h2<q|k|v>``, and with grouped-query attention ``a3.kv1<k|v>`` when it is in that key/value
group; MLP ``m3`` reads ``m3``). Its effect is ``M(path patched) − M(clean)`` in the clean run
where the first edge's receiver reads the corrupted output of the first sender, each later
edge's receiver reads its sender's output *as changed by the path*, every other receiver reads
the clean outputs of the path's senders — the change travels along the path only — and the
path's last receiver's node (the head(s) reading it, or the MLP) passes its changed output on
freely: every node after it computes from its changed output as in an ordinary forward (Wang et
al. 2022; Goldowsky-Dill et al. 2023). So a one-edge path is exact edge patching of that edge
(:func:`~interp_edit.analysis.circuits.scores.edge_scores` ``method="exact"``) whatever its
receiver (``<q>``, ``<k>``, ``<v>``, an MLP, ``logits``), and a path ending at ``logits`` has
no node after it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from interp_edit.analysis.circuits.engine import (
    check_arguments,
    check_edge_model,
    masked_forward,
    notes_repr,
    prepare_task,
    sender_groups,
    sender_outputs,
)
from interp_edit.analysis.circuits.graph import EdgeGraph, edge_graph
from interp_edit.analysis.gap import ScoreGap, metric_gap
from interp_edit.errors import InvalidArgumentError


@dataclass
class PathPatchingResult:
    """The effect of each path (``effects[i]`` for ``paths[i]``), in units of the metric.

    >>> res = path_patch(model, "Talvik Corlo was born in", "Beldel Kordor was born in", ["input -> logits"])
    >>> res.paths, res.metric
    ((('input -> logits',),), 'logit_diff')
    """

    paths: tuple[tuple[str, ...], ...]
    effects: Float[Tensor, " path"]
    metric: str
    clean_value: float
    corrupted_value: float
    clean_prompts: tuple[str, ...]
    corrupted_prompts: tuple[str, ...]
    answers: tuple[str, ...]
    settings: dict = field(default_factory=dict)
    #: whether the clean run prefers the answer on every prompt (None: not checked)
    clean_prefers_target: bool | None = None
    #: with ``logit_diff``, one note per multi-token answer or foil (only its first token is scored)
    target_notes: tuple[str, ...] = ()

    @property
    def gap(self) -> ScoreGap:
        """The clean − corrupted gap of the metric and whether it is worth localising (see
        :mod:`~interp_edit.analysis.gap`); its warnings show in the repr and the figure title."""
        return metric_gap(self.clean_value, self.corrupted_value, self.metric, self.clean_prefers_target)

    def __repr__(self) -> str:
        from interp_edit.reprs import number, short_repr, text

        order = self.effects.abs().argsort(descending=True).tolist()[:3]
        return short_repr("PathPatchingResult", WARNING=self.gap.repr_note(), note=notes_repr(self.target_notes), paths=str(len(self.paths)), metric=repr(self.metric),
                          clean=text(self.clean_prompts[0], 40), clean_value=number(self.clean_value),
                          corrupted_value=number(self.corrupted_value),
                          top="[" + "; ".join(f"{' | '.join(self.paths[i])}: {number(self.effects[i].item(), 3)}"
                                              for i in order) + "]")

    def plot(self):
        """A bar per path (its effect; blue +, red −)."""
        import plotly.graph_objects as go

        from interp_edit.analysis.circuits.figure import NEGATIVE, POSITIVE
        from interp_edit.viz.layout import fit_layout

        names = [" | ".join(p) for p in self.paths]
        values = self.effects.tolist()
        fig = go.Figure(go.Bar(x=values, y=names, orientation="h",
                               marker_color=[POSITIVE if v >= 0 else NEGATIVE for v in values]))
        fig.update_yaxes(autorange="reversed")
        fig.update_xaxes(title_text=f"{self.metric}(path patched) − {self.metric}(clean)")
        fig.update_layout(title=f"Path patching, {len(self.clean_prompts)} prompt(s): clean {self.clean_value:.3g}, "
                                f"corrupted {self.corrupted_value:.3g}{self.gap.title_note()}", height=max(300, 40 * len(names) + 150), width=860)
        return fit_layout(fig)

    def save(self, path: str | Path) -> Path:
        """Write the paths and effects as JSON, atomically."""
        from interp_edit.atomic_files import write_text_atomic

        data = dict(kind="PathPatchingResult", paths=[list(p) for p in self.paths], effects=self.effects.tolist(),
                    metric=self.metric, clean_value=self.clean_value, corrupted_value=self.corrupted_value,
                    clean_prompts=list(self.clean_prompts), corrupted_prompts=list(self.corrupted_prompts),
                    answers=list(self.answers), target_notes=list(self.target_notes), settings=self.settings)
        return write_text_atomic(path, json.dumps(data, indent=1))


def _reads(graph: EdgeGraph, sender: int, receiver: int) -> bool:
    """Whether the sender's node computes from the receiver (the link between two path edges)."""
    s, r = graph.senders[sender], graph.receivers[receiver]
    if s.kind == "head":
        return r.kind in ("q", "k", "v") and r.layer == s.layer and s.head in r.heads
    return s.kind == "mlp" and r.kind == "mlp" and r.layer == s.layer


def reads_matrix(graph: EdgeGraph) -> Tensor:
    """``[sender, receiver]``: whether the sender's node computes from the receiver (:func:`_reads`)."""
    return torch.tensor([[_reads(graph, s, r) for r in range(len(graph.receivers))] for s in range(len(graph.senders))],
                        dtype=torch.bool).reshape(len(graph.senders), len(graph.receivers))


def free_after(graph: EdgeGraph, reads: Tensor, receiver: int, shared: Sequence[slice] = ()) -> Tensor:
    """Which senders pass their output on freely in a path ending at ``receiver``: the node(s)
    reading it (the heads of a q/k/v receiver, the MLP of an MLP receiver), every sender after
    them (one reading a receiver they write to), and the senders of a ``shared`` group (a
    post-norm block's heads, whose frozen-scale shares move with the norm's scale) holding one
    of those; none for ``logits``. ``reads``: :func:`reads_matrix`."""
    nodes = reads[:, receiver]
    written = graph.allowed[nodes].any(0)  # the receivers the nodes write to
    free = nodes | (reads & written).any(1)
    for group in shared:
        if free[group].any():
            free[group] = True
    return free


def parse_paths(graph: EdgeGraph, paths) -> list[list[tuple[int, int]]]:
    """Each path as (sender index, receiver index) edges, checked (errors name the path)."""
    from interp_edit.validation import check_sequence

    items = check_sequence(paths, "paths")
    out = []
    senders = {s.name: i for i, s in enumerate(graph.senders)}
    receivers = {r.name: i for i, r in enumerate(graph.receivers)}
    for i, path in enumerate(items):
        chain = [path] if isinstance(path, str) else check_sequence(path, f"paths[{i}]")
        edges = []
        for j, edge in enumerate(chain):
            parts = edge.split("->") if isinstance(edge, str) else []
            names = [p.strip() for p in parts]
            if len(names) != 2 or names[0] not in senders or names[1] not in receivers:
                raise InvalidArgumentError(
                    f"paths[{i}][{j}] {edge!r} is not an edge 'sender -> receiver' of the model's graph "
                    f"(senders like 'input', 'a0.h1', 'm0'; receivers like 'a1.h0<q>', 'm1', 'logits')")
            s, r = senders[names[0]], receivers[names[1]]
            if not graph.allowed[s, r]:
                raise InvalidArgumentError(f"paths[{i}][{j}] {edge!r}: {names[0]} does not write before {names[1]} reads")
            if edges and not _reads(graph, s, edges[-1][1]):
                raise InvalidArgumentError(
                    f"paths[{i}][{j}] {edge!r} does not continue the path: {names[0]} does not read "
                    f"{graph.receivers[edges[-1][1]].name}")
            edges.append((s, r))
        out.append(edges)
    return out


def path_patch(
    model,
    clean: str | Sequence[str],
    corrupted: str | Sequence[str],
    paths: Sequence[str | Sequence[str]],
    *,
    answer: str | Sequence[str] | None = None,
    foil: str | Sequence[str] | None = None,
    metric: str = "logit_diff",
    max_rows: int | None = None,
) -> PathPatchingResult:
    """The effect of each path of ``paths`` (a path: one ``"sender -> receiver"`` string or a
    chain of them; see the module docstring), averaged over the prompt pairs; one patched
    forward per path and prompt, ``max_rows`` rows a forward (default 64). Arguments as
    :func:`edge_scores`; all are checked before any forward, and the model is left as it was.

    >>> res = path_patch(model, "Talvik Corlo was born in", "Beldel Kordor was born in",
    ...                  ["a0.h0 -> a1.h0<q>", ["a0.h0 -> a1.h0<q>", "a1.h0 -> logits"]])
    >>> res.effects.shape
    torch.Size([2])
    """
    from interp_edit.validation import check_int

    if max_rows is not None:
        check_int(max_rows, "max_rows", minimum=1)
    check_arguments(clean, corrupted, answer, foil, metric)
    check_edge_model(model)
    graph = edge_graph(model)
    chains = parse_paths(graph, paths)
    task = prepare_task(model, clean, corrupted, answer, foil, metric)
    clean_out = sender_outputs(model, graph, task.clean)
    corrupt_out = sender_outputs(model, graph, task.corrupted)
    n_p, n_s, n_r = task.n_prompts, len(graph.senders), len(graph.receivers)
    device = task.clean.device
    # per path: the first edge reads the corrupted output, the later ones this run's, the edges
    # out of the last receiver's node and the nodes after it this run's, all else clean
    from_clean, from_corrupt = [], []
    reads = reads_matrix(graph)
    shared = [g.senders for g in sender_groups(model, graph) if g.summed]
    for chain in chains:
        to_clean = graph.allowed.clone().float()
        to_clean[free_after(graph, reads, chain[-1][1], shared)] = 0.0
        to_corrupt = torch.zeros(n_s, n_r)
        s0, r0 = chain[0]
        to_clean[s0, r0], to_corrupt[s0, r0] = 0.0, 1.0
        for s, r in chain[1:]:
            to_clean[s, r] = 0.0
        from_clean.append(to_clean)
        from_corrupt.append(to_corrupt)
    everyone = torch.arange(n_p, device=device)
    with torch.no_grad():
        base = masked_forward(model, graph, task.clean, clean_out, torch.zeros(n_p, n_s, n_r, device=device))
        m_clean = task.metric_rows(base, everyone).mean().item()
        m_corrupt = task.mean_metric(model(task.corrupted, return_type="logits")).item()
    effects = []
    per_chunk = max(1, (max_rows or 64) // n_p)
    for start in range(0, len(chains), per_chunk):
        k = len(chains[start:start + per_chunk])
        row_prompt = everyone.repeat(k)
        m_clean_rows = torch.stack(from_clean[start:start + k]).to(device).repeat_interleave(n_p, 0)
        m_corrupt_rows = torch.stack(from_corrupt[start:start + k]).to(device).repeat_interleave(n_p, 0)
        logits = masked_forward(model, graph, task.clean[row_prompt], clean_out[row_prompt], m_clean_rows,
                                more=[(corrupt_out[row_prompt], m_corrupt_rows)])
        effects += (task.metric_rows(logits, row_prompt).reshape(k, n_p).mean(1) - m_clean).tolist()
    names = tuple(tuple(graph.edge_name(s, r) for s, r in chain) for chain in chains)
    return PathPatchingResult(names, torch.tensor(effects), metric, m_clean, m_corrupt, task.clean_prompts,
                              task.corrupted_prompts, tuple(t.text for t in task.targets), settings=dict(max_rows=max_rows),
                              clean_prefers_target=task.prefers_target, target_notes=task.notes)
