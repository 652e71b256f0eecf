"""Circuits from edge scores: top-n and greedy edge selection, and faithfulness curves measured
by running the model with only the kept edges from the clean run.

>>> c = find_circuit(model, "Talvik Corlo was born in", "Beldel Kordor was born in",
...                  method="eap_ig_inputs", ig_steps=3, n_edges=30, curve=(0, 10, 30))
>>> c.n_edges, c.curve_sizes, len(c.edges)
(30, (0, 10, 30), 30)
>>> round(c.faithfulness[0], 6)               # no edge kept: the corrupted run
0.0
>>> fig = c.plot()                            # the kept edges, layers top to bottom

A circuit's faithfulness is ``(M(circuit) − M(corrupted)) / (M(clean) − M(corrupted))``, where
``M(circuit)`` is the metric of the clean run in which every edge outside the circuit is
patched: its receiver reads the corrupted run's output of its sender (all edges patched is the
corrupted run, none the clean run). Selections order the edges, and the circuit of ``k`` edges
is the first ``k``:

- ``"top_n"``: by |score|, largest first;
- ``"greedy"``: grown back from the logits: at each step the edge of largest |score| among
  those whose receiver belongs to a node already in the circuit (the logits; a head whose
  output an edge already carries — with grouped-query attention a key/value receiver belongs to
  every query head reading it; an MLP), so the circuit stays connected to the output.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from interp_edit.analysis.circuits.engine import (
    Task,
    check_arguments,
    check_edge_model,
    masked_forward,
    notes_repr,
    prepare_task,
    sender_outputs,
    task_on_model,
)
from interp_edit.analysis.circuits.graph import EdgeGraph, edge_graph
from interp_edit.analysis.circuits.scores import EdgeScores, check_score_arguments, scores_for_task
from interp_edit.analysis.gap import ScoreGap, metric_gap
from interp_edit.errors import InvalidArgumentError

SELECTIONS = ("top_n", "greedy")


@dataclass
class CircuitResult:
    """A circuit: the first ``n_edges`` edges of ``order`` (indices into
    ``scores.graph.edges()``), with the faithfulness of the circuits of ``curve_sizes`` edges.

    >>> c = find_circuit(model, "Talvik Corlo was born in", "Beldel Kordor was born in",
    ...                  method="eap", n_edges=20, selection="greedy", curve=(20,))
    >>> c.selection, c.edges[0][0].endswith("-> logits")   # greedy starts at the logits
    ('greedy', True)
    """

    scores: EdgeScores
    selection: str
    n_edges: int
    order: list[int]
    curve_sizes: tuple[int, ...]
    faithfulness: tuple[float, ...]
    #: the metric of the full model and of the corrupted run, through the same patched forward
    clean_value: float
    corrupted_value: float
    settings: dict = field(default_factory=dict)

    @property
    def graph(self) -> EdgeGraph:
        return self.scores.graph

    @property
    def gap(self) -> ScoreGap:
        """The full model's − the corrupted run's metric (the faithfulness curve's 1 and 0) and
        whether it is worth localising (see :mod:`~interp_edit.analysis.gap`); its warnings show
        in the repr and the figures' titles."""
        return metric_gap(self.clean_value, self.corrupted_value, self.scores.metric, self.scores.clean_prefers_target)

    @property
    def target_notes(self) -> tuple[str, ...]:
        """The scores' notes on multi-token answers and foils (``logit_diff``: first token scored)."""
        return self.scores.target_notes

    @property
    def edges(self) -> list[tuple[str, float]]:
        """The kept edges as (``"sender -> receiver"``, score), in selection order."""
        edges, flat = self.graph.edges(), self.scores.flat()
        return [(self.graph.edge_name(*edges[i]), flat[i].item()) for i in self.order[:self.n_edges]]

    @property
    def mask(self) -> torch.Tensor:
        """[sender, receiver] booleans: True on the kept edges."""
        keep = torch.zeros_like(self.graph.allowed)
        for i in self.order[:self.n_edges]:
            s, r = self.graph.edges()[i]
            keep[s, r] = True
        return keep

    def __repr__(self) -> str:
        from interp_edit.reprs import number, short_repr, text

        at_n = (self.faithfulness[self.curve_sizes.index(self.n_edges)] if self.n_edges in self.curve_sizes else None)
        return short_repr("CircuitResult", WARNING=self.gap.repr_note(), note=notes_repr(self.scores.target_notes),
                          selection=repr(self.selection), method=repr(self.scores.method),
                          metric=repr(self.scores.metric), edges=f"{self.n_edges}/{self.graph.n_edges}",
                          faithfulness=None if at_n is None else number(at_n, 3),
                          curve="[" + ", ".join(f"{k}: {number(f, 3)}" for k, f in
                                                zip(self.curve_sizes, self.faithfulness, strict=True)) + "]",
                          clean=text(self.scores.clean_prompts[0], 40), prompts=str(len(self.scores.clean_prompts)),
                          top="[" + "; ".join(f"{n} {number(v, 3)}" for n, v in self.edges[:2]) + "]")

    def plot(self, view: str = "graph"):
        """``view="graph"``: the kept edges (layers top to bottom, blue +, red −, width |score|);
        ``"faithfulness"``: the faithfulness curve.

        >>> fig = find_circuit(model, "Talvik Corlo was born in", "Beldel Kordor was born in",
        ...                    method="eap", n_edges=10, curve=(10,)).plot("faithfulness")
        """
        from interp_edit.analysis.circuits.figure import circuit_figure, faithfulness_figure

        if view == "faithfulness":
            return faithfulness_figure(self)
        if view != "graph":
            raise InvalidArgumentError(f"view must be 'graph' or 'faithfulness', got {view!r}")
        note = ""
        if self.n_edges in self.curve_sizes:
            note = f", faithfulness {self.faithfulness[self.curve_sizes.index(self.n_edges)]:.3f}"
        return circuit_figure(self.scores, self.order[:self.n_edges],
                              f"{self.selection} circuit: {self.n_edges} edges by {self.scores.method} score{note}",
                              gap=self.gap)

    def to_dict(self) -> dict:
        return dict(kind="CircuitResult", selection=self.selection, n_edges=self.n_edges,
                    edges=[[n, v] for n, v in self.edges], curve_sizes=list(self.curve_sizes),
                    faithfulness=list(self.faithfulness), clean_value=self.clean_value,
                    corrupted_value=self.corrupted_value, settings=self.settings, scores=self.scores.to_dict())

    def save(self, path: str | Path) -> Path:
        """Write the circuit (kept edges, curve, and every edge's score) as JSON, atomically."""
        from interp_edit.atomic_files import write_text_atomic

        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1))


def select_edges(scores: EdgeScores, selection: str = "top_n") -> list[int]:
    """Every allowed edge's index (into ``scores.graph.edges()``) in the order ``selection``
    adds them (see the module docstring); greedy lists only the edges it can reach.

    >>> s = edge_scores(model, "Talvik Corlo was born in", "Beldel Kordor was born in", method="eap")
    >>> order = select_edges(s, "greedy")
    >>> s.graph.receivers[s.graph.edges()[order[0]][1]].name    # greedy starts at the logits
    'logits'
    """
    flat = scores.flat()
    if selection == "top_n":
        return flat.abs().argsort(descending=True, stable=True).tolist()
    graph = scores.graph
    edges = graph.edges()
    by_receiver: dict[int, list[int]] = {}
    for i, (_, r) in enumerate(edges):
        by_receiver.setdefault(r, []).append(i)
    owners: dict[int, list[int]] = {}  # sender index -> the receivers its node owns
    for r, receiver in enumerate(graph.receivers):
        if receiver.kind in ("q", "k", "v"):
            for h in receiver.heads:
                owners.setdefault(graph.sender_index(f"a{receiver.layer}.h{h}"), []).append(r)
        elif receiver.kind == "mlp":
            owners.setdefault(graph.sender_index(f"m{receiver.layer}"), []).append(r)
    heap: list[tuple[float, int]] = []
    active: set[int] = set()

    def activate(r):
        if r not in active:
            active.add(r)
            for i in by_receiver.get(r, []):
                heapq.heappush(heap, (-abs(flat[i].item()), i))

    activate(graph.receiver_index("logits"))
    order, in_circuit = [], set()
    while heap:
        _, i = heapq.heappop(heap)
        order.append(i)
        s = edges[i][0]
        if s not in in_circuit:
            in_circuit.add(s)
            for r in owners.get(s, []):
                activate(r)
    return order


@torch.no_grad()
def faithfulness_curve(model, task: Task, graph: EdgeGraph, order: Sequence[int], sizes: Sequence[int],
                       max_rows: int = 64) -> tuple[list[float], float, float]:
    """Faithfulness of the circuits made of the first ``k`` edges of ``order`` for each ``k``
    of ``sizes`` (one patched forward per circuit and prompt), with the engine's clean and
    corrupted metric values. :func:`find_circuit` calls it; ``task`` comes from
    :func:`interp_edit.analysis.circuits.engine.prepare_task`.

    >>> from interp_edit.analysis.circuits.engine import prepare_task
    >>> task = prepare_task(model, "Talvik Corlo was born in", "Beldel Kordor was born in")
    >>> g = edge_graph(model)
    >>> faith, full, corrupted = faithfulness_curve(model, task, g, list(range(g.n_edges)), [0, g.n_edges])
    >>> [round(f, 4) for f in faith]
    [0.0, 1.0]
    """
    corrupt_out = sender_outputs(model, graph, task.corrupted)
    edges = graph.edges()
    ranks = torch.full((len(edges),), len(edges) + 1)
    ranks[torch.tensor(list(order), dtype=torch.long)] = torch.arange(len(order))
    edge_s = torch.tensor([s for s, _ in edges])
    edge_r = torch.tensor([r for _, r in edges])
    n_prompts = task.n_prompts
    # the full model (nothing patched) and the corrupted run (everything patched) first
    masks = [torch.zeros_like(graph.allowed, dtype=torch.float32), graph.allowed.float()]
    for k in sizes:
        patched = torch.zeros(graph.allowed.shape)
        dropped = ranks >= k
        patched[edge_s[dropped], edge_r[dropped]] = 1.0
        masks.append(patched)
    values = []
    per_chunk = max(1, max_rows // n_prompts)
    device = task.clean.device
    logit_scale, dtype = 0.0, None
    for start in range(0, len(masks), per_chunk):
        chunk = torch.stack(masks[start:start + per_chunk]).to(device)
        rows = chunk.shape[0] * n_prompts
        row_prompt = torch.arange(n_prompts, device=device).repeat(chunk.shape[0])
        mask = chunk.repeat_interleave(n_prompts, 0)
        logits = masked_forward(model, graph, task.clean[row_prompt], corrupt_out[row_prompt], mask)
        values += task.metric_rows(logits, row_prompt).reshape(rows // n_prompts, n_prompts).mean(1).tolist()
        logit_scale, dtype = max(logit_scale, _scored_logit_scale(task, logits, row_prompt)), logits.dtype
    m_clean, m_corrupt = values[0], values[1]
    denom = m_clean - m_corrupt
    tol = rounding_tolerance(dtype, m_clean, m_corrupt, logit_scale)
    if not abs(denom) > tol:
        raise InvalidArgumentError(
            f"the clean and corrupted prompts score the same: M(clean) - M(corrupted) = {denom:.3g} ({task.metric}) is "
            f"within the {str(dtype).removeprefix('torch.')} rounding of the engine's forwards (tolerance {tol:.2g}); "
            "faithfulness is undefined")
    return [(v - m_corrupt) / denom for v in values[2:]], m_clean, m_corrupt


#: the rounding tolerance of a clean − corrupted gap, in units of the dtype's eps times the scale
#: of the scored logits (see :func:`rounding_tolerance`)
ROUNDING_EPS = 8


def rounding_tolerance(dtype: torch.dtype, m_clean: float, m_corrupt: float, logit_scale: float) -> float:
    """The largest clean − corrupted gap that rounding alone can make: ``ROUNDING_EPS · eps(dtype)
    · max(|M(clean)|, |M(corrupted)|, max |logit|, 1)``.

    Every metric is computed from the logits at the scored positions, and a forward in
    ``dtype`` rounds them at about ``eps(dtype)`` times their magnitude (``max |logit|``, over
    the runs of the curve: logit differences and log-probabilities move with the logits, not
    with the metric's own value). The engine's two runs of one prompt — the full model and the
    everything-patched run, in batches of other shapes — differ by a few such units (up to 5
    measured in float32 on the tiny GPT-2, GPT-NeoX and Llama-3 models; 0 on the toy model in
    bfloat16 / float16), so a gap within 8 of them is rounding, not a difference of the prompts.

    >>> rounding_tolerance(torch.float32, 5.68, 5.68, 9.7) < 1e-5 < rounding_tolerance(torch.bfloat16, 5.68, 5.68, 9.7)
    True
    """
    eps = torch.finfo(dtype).eps if dtype is not None and dtype.is_floating_point else torch.finfo(torch.float32).eps
    return ROUNDING_EPS * eps * max(abs(m_clean), abs(m_corrupt), logit_scale, 1.0)


def _scored_logit_scale(task: Task, logits: torch.Tensor, row_prompt: torch.Tensor) -> float:
    """The largest |logit| at the scored positions of the rows (row ``i`` a run of prompt
    ``row_prompt[i]``)."""
    scale = 0.0
    for i in range(task.n_prompts):
        rows = (row_prompt == i).nonzero().squeeze(1)
        if rows.numel():
            scale = max(scale, logits[rows][:, list(task.positions[i])].float().abs().max().item())
    return scale


def _default_sizes(n_total: int, n_edges: int) -> list[int]:
    sizes, k = {0, n_edges, n_total}, 1
    while k < n_total:
        sizes.add(k)
        k *= 2
    return sorted(s for s in sizes if s <= n_total)


def find_circuit(
    model,
    clean: str | Sequence[str] | None = None,
    corrupted: str | Sequence[str] | None = None,
    *,
    answer: str | Sequence[str] | None = None,
    foil: str | Sequence[str] | None = None,
    metric: str | None = None,
    method: str | None = None,
    ig_steps: int | None = None,
    n_edges: int = 50,
    selection: str = "top_n",
    curve: Sequence[int] | None = None,
    max_rows: int | None = None,
    scores: EdgeScores | None = None,
) -> CircuitResult:
    """The circuit of ``n_edges`` edges that ``selection`` picks from :func:`edge_scores` by
    ``method`` (default ``"eap_ig_inputs"``, ``ig_steps`` 5, ``metric`` ``"logit_diff"``,
    ``direction="noise"``), and its faithfulness curve over ``curve`` (edge counts; default 0,
    1, 2, 4, …, every edge, and ``n_edges``). Arguments as :func:`edge_scores`; all are checked
    before any forward, and the model is left as it was.

    >>> c = find_circuit(model, "Talvik Corlo was born in", "Beldel Kordor was born in",
    ...                  method="eap", n_edges=5, curve=(5,))
    >>> len(c.edges), c.curve_sizes
    (5, (5,))

    ``scores=``: edge scores already computed (an :class:`EdgeScores` from
    :func:`edge_scores` on a model with this one's edge graph) are selected from instead of
    computing new ones; the prompts, answers, foils and metric are the scores' own, so
    ``clean``, ``corrupted``, ``answer`` and ``foil`` are not passed, and ``method``,
    ``metric`` and ``ig_steps``, if passed, must be the scores'. The faithfulness curve is
    measured on ``model``. One scoring, several circuits:

    >>> s = edge_scores(model, "Talvik Corlo was born in", "Beldel Kordor was born in", method="eap")
    >>> small = find_circuit(model, scores=s, n_edges=5, curve=(5,))
    >>> large = find_circuit(model, scores=s, n_edges=20, selection="greedy", curve=(20,))
    >>> small.scores is s, large.settings["reused_scores"]
    (True, True)
    """
    from interp_edit.validation import check_choice, check_int, check_sequence

    if scores is not None:
        method, metric, ig_steps = _check_reused(scores, clean, corrupted, answer, foil, method, metric, ig_steps)
        check_score_arguments(method, scores.direction, ig_steps or 1, max_rows,
                              scores.settings.get("ig_points", "right"), metric=metric)
    else:
        method = "eap_ig_inputs" if method is None else method
        metric = "logit_diff" if metric is None else metric
        ig_steps = 5 if ig_steps is None else ig_steps
        if clean is None or corrupted is None:
            raise InvalidArgumentError("find_circuit needs clean= and corrupted= prompts, or scores= (an EdgeScores)")
        check_score_arguments(method, "noise", ig_steps, max_rows, metric=metric)
        cleans, corrupts, _, _ = check_arguments(clean, corrupted, answer, foil, metric)
        if cleans == corrupts:
            raise InvalidArgumentError(f"clean and corrupted are the same prompts ({cleans[0]!r}"
                                       f"{'' if len(cleans) == 1 else ', ...'}): they score the same, so "
                                       "faithfulness is undefined; pass corrupted prompts that differ")
    check_choice(selection, "selection", SELECTIONS)
    check_edge_model(model)
    graph = edge_graph(model)
    if scores is not None:
        _check_same_graph(scores.graph, graph)
    check_int(n_edges, "n_edges", minimum=0, maximum=graph.n_edges)
    if curve is not None:
        curve = check_sequence(curve, "curve")
        for i, k in enumerate(curve):
            check_int(k, f"curve[{i}]", minimum=0, maximum=graph.n_edges)
    if scores is None:
        task = prepare_task(model, clean, corrupted, answer, foil, metric)
        scores = scores_for_task(model, graph, task, method=method, ig_steps=ig_steps, direction="noise", max_rows=max_rows)
    else:
        task = task_on_model(model, scores.task)
    order = select_edges(scores, selection)
    n_edges = min(n_edges, len(order))
    sizes = tuple(sorted(set(curve))) if curve is not None else tuple(_default_sizes(len(order), n_edges))
    faith, m_clean, m_corrupt = faithfulness_curve(model, task, graph, order, sizes, max_rows or 64)
    return CircuitResult(scores, selection, n_edges, order, sizes, tuple(faith), m_clean, m_corrupt,
                         settings=dict(max_rows=max_rows, reused_scores=scores.task is not task))


def _check_reused(scores, clean, corrupted, answer, foil, method, metric, ig_steps) -> tuple[str, str, int | None]:
    """The method, metric and step count of reused ``scores``, after checking that nothing
    passed beside them contradicts them."""
    if not isinstance(scores, EdgeScores):
        raise InvalidArgumentError(f"scores must be an EdgeScores (from edge_scores), got {type(scores).__name__}")
    if scores.task is None:
        raise InvalidArgumentError("scores carries no task (its tokens and targets): pass scores computed by "
                                   "edge_scores in this session")
    given = [name for name, value in (("clean", clean), ("corrupted", corrupted), ("answer", answer), ("foil", foil))
             if value is not None]
    if given:
        raise InvalidArgumentError(f"{', '.join(given)} given with scores=: the prompts, answers and foils are the "
                                   "scores' own; pass one or the other")
    for name, value, own in (("method", method, scores.method), ("metric", metric, scores.metric),
                             ("ig_steps", ig_steps, scores.ig_steps)):
        if value is not None and value != own:
            raise InvalidArgumentError(f"{name}={value!r} differs from the scores' {name} {own!r}; leave it out "
                                       "with scores=")
    return scores.method, scores.metric, scores.ig_steps


def _check_same_graph(theirs: EdgeGraph, ours: EdgeGraph) -> None:
    if (theirs.family, [s.name for s in theirs.senders], [r.name for r in theirs.receivers]) != (
            ours.family, [s.name for s in ours.senders], [r.name for r in ours.receivers]):
        raise InvalidArgumentError(f"scores were computed on another edge graph ({theirs.family!r}, "
                                   f"{len(theirs.senders)} senders, {len(theirs.receivers)} receivers) than this "
                                   f"model's ({ours.family!r}, {len(ours.senders)}, {len(ours.receivers)})")
