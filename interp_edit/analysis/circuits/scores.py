"""Edge scores: exact edge patching, EAP, EAP-IG (over inputs, over activations) and the
clean–corrupted variant, for a batch of clean / corrupted prompt pairs.

>>> s = edge_scores(model, "Talvik Corlo was born in", "Beldel Kordor was born in", method="eap")
>>> s.scores.shape, s.method                  # [sender, receiver] of edge_graph(model)
(torch.Size([31, 79]), 'eap')
>>> name, value = s.top(1)[0]                 # the edge whose corruption moves the metric most

An edge's score is the change of the metric (averaged over the prompts) when that edge alone is
patched: with ``direction="noise"`` (the default, as in EAP) the clean run with the receiver
reading the corrupted run's output of the sender, ``M(patched) − M(clean)``; with
``"denoise"`` the corrupted run reading the clean output, ``M(patched) − M(corrupted)``.

- ``"exact"``: that patched forward, one row per edge and prompt, batched (``max_rows``).
- ``"eap"``: the first-order term ``Δ_s · ∂M/∂x_r`` at the base run, Δ_s the source minus
  base output of the sender and x_r the receiver's input; one forward + backward in all.
- ``"eap_ig_inputs"``: Δ_s · the mean of ∂M/∂x_r over ``ig_steps`` runs whose input embeddings
  are ``corrupted + α (clean − corrupted)``, α = k / ig_steps for k = 1 … ig_steps (the right
  Riemann sum of the path integral; ``ig_steps=1`` is EAP at the clean run).
- ``"eap_ig_activations"``: the same, but the path moves the *sender's own* layer output (the
  input, the heads of a layer together, or an MLP) from its corrupted to its clean value while
  the rest of the run is clean; (2 n_layers + 1) · ig_steps forward + backward passes.
- ``"clean_corrupted"``: Δ_s · the mean of the gradients at the clean and the corrupted runs.

Next to the authors' code (hannamw/EAP-IG, ``benchmarks/fidelity_eap_ig.py``): EAP,
clean–corrupted and exact patching agree to float precision; EAP-IG differs by two named
options whose defaults are ours — ``ig_points="right"`` where their inputs loop takes α = k / m
for k = 0 … m − 1 (``"left"``; theirs = ours + 2 (clean_corrupted − eap) / m), and
``ig_paths="own"`` where their activations variant averages every edge over all the layers'
paths (``"all"``) (docs/circuits.md, *Next to the authors' code*).

Metrics (:data:`~interp_edit.analysis.circuits.engine.METRICS`): ``logit_diff`` (answer −
foil), ``prob``, ``logprob`` and ``kl`` (KL(p_clean ‖ p_run): zero with zero gradient at the
clean run, so EAP — and EAP-IG with ``ig_steps=1`` — would score every edge 0; that is refused
before any forward, naming method, metric and ig_steps: use EAP-IG with more steps, or ``exact``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from interp_edit.analysis.circuits.engine import (
    Task,
    check_arguments,
    check_edge_model,
    edge_forward,
    notes_repr,
    prepare_task,
    receiver_gradients,
    sender_groups,
    sender_outputs,
)
from interp_edit.analysis.circuits.graph import EdgeGraph, edge_graph
from interp_edit.analysis.gap import ScoreGap, metric_gap
from interp_edit.errors import InvalidArgumentError

METHODS = ("exact", "eap", "eap_ig_inputs", "eap_ig_activations", "clean_corrupted")
DIRECTIONS = ("noise", "denoise")


@dataclass
class EdgeScores:
    """Scores of every edge of :attr:`graph`: ``scores[s, r]`` (0 where ``graph.allowed`` is
    False), in units of the metric, with the clean and corrupted runs' metric values.

    >>> s = edge_scores(model, "Talvik Corlo was born in", "Beldel Kordor was born in",
    ...                 method="eap_ig_inputs", ig_steps=3)
    >>> s.ig_steps, len(s.top(5))
    (3, 5)
    >>> s.edge("m0", "logits") == s.scores[s.graph.sender_index("m0"), -1].item()
    True
    """

    graph: EdgeGraph
    scores: Float[Tensor, "sender receiver"]
    method: str
    metric: str
    direction: str
    ig_steps: int | None
    clean_value: float
    corrupted_value: float
    clean_prompts: tuple[str, ...]
    corrupted_prompts: tuple[str, ...]
    answers: tuple[str, ...]
    settings: dict = field(default_factory=dict)
    #: the task the scores were computed on (tokens, targets, foils): what
    #: :func:`~interp_edit.analysis.circuits.circuit.find_circuit` ``(scores=...)`` reuses
    task: Task | None = field(default=None, repr=False, compare=False)
    #: whether the clean run prefers the answer on every prompt (None: not checked)
    clean_prefers_target: bool | None = None
    #: with ``logit_diff``, one note per multi-token answer or foil: only its first token is
    #: scored (:func:`~interp_edit.analysis.circuits.engine.first_token`)
    target_notes: tuple[str, ...] = ()

    @property
    def gap(self) -> ScoreGap:
        """The clean − corrupted gap the scores rest on and whether it is worth localising (see
        :mod:`~interp_edit.analysis.gap`); its warnings show in the repr and the figure title."""
        return metric_gap(self.clean_value, self.corrupted_value, self.metric, self.clean_prefers_target)

    def flat(self) -> Float[Tensor, " edge"]:
        """The scores of the allowed edges in :meth:`EdgeGraph.edges` order."""
        return self.scores[self.graph.allowed]

    def top(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` edges of largest absolute score, as (``"sender -> receiver"``, score) (every
        edge where ``n`` exceeds them; ``n`` a non-negative integer, else
        :class:`~interp_edit.errors.InvalidArgumentError` naming it, as :func:`find_circuit`'s ``n_edges``)."""
        from interp_edit.validation import check_int

        check_int(n, "n", minimum=0)
        edges = self.graph.edges()
        flat = self.flat()
        order = flat.abs().argsort(descending=True, stable=True)[:n]
        return [(self.graph.edge_name(*edges[i]), flat[i].item()) for i in order.tolist()]

    def edge(self, sender: str, receiver: str) -> float:
        """The score of one edge, by the names of its sender and receiver."""
        return self.scores[self.graph.sender_index(sender), self.graph.receiver_index(receiver)].item()

    def __repr__(self) -> str:
        from interp_edit.reprs import number, short_repr, text

        best = self.top(3)
        return short_repr("EdgeScores", WARNING=self.gap.repr_note(), note=notes_repr(self.target_notes), method=repr(self.method), metric=repr(self.metric), direction=repr(self.direction),
                          ig_steps=None if self.ig_steps is None else str(self.ig_steps), prompts=str(len(self.clean_prompts)),
                          clean=text(self.clean_prompts[0], 40), edges=str(self.graph.n_edges),
                          clean_value=number(self.clean_value), corrupted_value=number(self.corrupted_value),
                          top="[" + "; ".join(f"{n} {number(v, 3)}" for n, v in best) + "]")

    def plot(self, n_edges: int = 40):
        """The graph of the ``n_edges`` top-scoring edges (see :meth:`CircuitResult.plot`);
        ``n_edges`` is checked as :meth:`top`'s ``n``."""
        from interp_edit.analysis.circuits.figure import circuit_figure
        from interp_edit.validation import check_int

        check_int(n_edges, "n_edges", minimum=0)

        order = self.flat().abs().argsort(descending=True, stable=True)[:n_edges]
        return circuit_figure(self, order.tolist(), f"top {len(order)} edges by |{self.method} score|")

    def to_dict(self) -> dict:
        return dict(kind="EdgeScores", method=self.method, metric=self.metric, direction=self.direction,
                    ig_steps=self.ig_steps, clean_value=self.clean_value, corrupted_value=self.corrupted_value,
                    clean_prompts=list(self.clean_prompts), corrupted_prompts=list(self.corrupted_prompts),
                    answers=list(self.answers), target_notes=list(self.target_notes), settings=self.settings,
                    family=self.graph.family,
                    senders=[s.name for s in self.graph.senders], receivers=[r.name for r in self.graph.receivers],
                    edges=[[self.graph.edge_name(s, r), self.scores[s, r].item()] for s, r in self.graph.edges()])

    def save(self, path: str | Path) -> Path:
        """Write the scores as JSON (atomically: a reader never sees half a file)."""
        from interp_edit.atomic_files import write_text_atomic

        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1))


#: EAP-IG's Riemann points: ``"right"`` (α = k/m, k = 1 … m: the clean run counted) or ``"left"``
#: (k = 0 … m − 1: the corrupted run counted, hannamw/EAP-IG's inputs loop)
IG_POINTS = ("right", "left")
#: EAP-IG over activations, the path an edge is integrated along: ``"own"`` (its sender's own
#: layer output) or ``"all"`` (the mean over every layer's path, hannamw/EAP-IG's code)
IG_PATHS = ("own", "all")


def zero_by_construction(method: str, metric: str, direction: str, ig_steps: int | None,
                         ig_points: str = "right") -> str | None:
    """Why ``method`` scores every edge 0 with ``metric`` whatever the model (None: it does not).
    KL(p_clean ‖ p_run) is 0 with a zero gradient at the clean run, so a score built only from
    gradients at the clean run is identically 0: EAP with ``direction="noise"`` (its base run is
    the clean run) and EAP-IG with ``ig_steps=1`` and the right Riemann point (α = 1: the clean
    run; over activations every path ends there too). The one rule behind the refusal."""
    if metric != "kl":
        return None
    if method == "eap" and direction == "noise":
        return ("method='eap' with metric='kl' (direction='noise') scores every edge 0: KL(p_clean ‖ p_run) is "
                "0 with a zero gradient at the clean run, where EAP takes its gradient")
    if method.startswith("eap_ig") and ig_steps == 1 and ig_points == "right":
        return (f"method={method!r} with ig_steps=1 and metric='kl' scores every edge 0: one right Riemann point "
                "is the clean run, where KL(p_clean ‖ p_run) is 0 with a zero gradient")
    return None


def check_score_arguments(method, direction, ig_steps, max_rows, ig_points="right", ig_paths="own",
                          metric=None) -> None:
    """Every scoring argument checked, nothing run; ``metric`` (when given) with the method:
    a combination that scores 0 by construction (:func:`zero_by_construction`) is refused."""
    from interp_edit.validation import check_choice, check_int

    check_choice(method, "method", METHODS)
    check_choice(direction, "direction", DIRECTIONS)
    check_int(ig_steps, "ig_steps", minimum=1)
    check_choice(ig_points, "ig_points", IG_POINTS)
    check_choice(ig_paths, "ig_paths", IG_PATHS)
    if max_rows is not None:
        check_int(max_rows, "max_rows", minimum=1)
    why = None if metric is None else zero_by_construction(method, metric, direction, ig_steps, ig_points)
    if why is not None:
        raise InvalidArgumentError(f"{why}; use method='eap_ig_inputs' (or 'eap_ig_activations') with ig_steps >= 2, "
                                   "method='exact', or another metric")


def edge_scores(
    model,
    clean: str | Sequence[str],
    corrupted: str | Sequence[str],
    *,
    answer: str | Sequence[str] | None = None,
    foil: str | Sequence[str] | None = None,
    metric: str = "logit_diff",
    method: str = "eap_ig_inputs",
    ig_steps: int = 5,
    direction: str = "noise",
    max_rows: int | None = None,
    ig_points: str = "right",
    ig_paths: str = "own",
) -> EdgeScores:
    """Score every edge of :func:`edge_graph` ``(model)`` by ``method`` (see the module
    docstring) over the prompt pairs ``clean[i]`` / ``corrupted[i]`` (one string each, or lists
    of equal length; the two prompts of a pair must have one token length). ``answer`` defaults
    to each clean prompt's top token, ``foil`` (``logit_diff``) to the corrupted one's.
    ``max_rows``: the rows of one exact-patching forward (default 64). ``ig_points`` /
    ``ig_paths``: EAP-IG's Riemann points (:data:`IG_POINTS`) and, over activations, the path
    of an edge (:data:`IG_PATHS`); ``"left"`` / ``"all"`` are hannamw/EAP-IG's code (see the
    module docstring). The model is left as it was; every argument is checked before any forward.

    >>> s = edge_scores(model, ["Talvik Corlo was born in", "Beldel Kordor was born in"],
    ...                 ["Beldel Kordor was born in", "Talvik Corlo was born in"],
    ...                 answer=["Karsa", "Gemmel"], method="clean_corrupted", metric="prob")
    >>> s.method, s.answers
    ('clean_corrupted', ('Karsa', 'Gemmel'))
    """
    check_score_arguments(method, direction, ig_steps, max_rows, ig_points, ig_paths, metric=metric)
    check_arguments(clean, corrupted, answer, foil, metric)
    check_edge_model(model)
    task = prepare_task(model, clean, corrupted, answer, foil, metric)
    graph = edge_graph(model)
    return scores_for_task(model, graph, task, method=method, ig_steps=ig_steps, direction=direction, max_rows=max_rows,
                           ig_points=ig_points, ig_paths=ig_paths)


def scores_for_task(model, graph: EdgeGraph, task: Task, *, method: str, ig_steps: int, direction: str,
                    max_rows: int | None, ig_points: str = "right", ig_paths: str = "own") -> EdgeScores:
    clean_out = sender_outputs(model, graph, task.clean)
    corrupt_out = sender_outputs(model, graph, task.corrupted)
    with torch.no_grad():
        m_clean = task.mean_metric(model(task.clean, return_type="logits")).item()
        m_corrupt = task.mean_metric(model(task.corrupted, return_type="logits")).item()
    base_tokens, base_out, source_out = ((task.clean, clean_out, corrupt_out) if direction == "noise"
                                         else (task.corrupted, corrupt_out, clean_out))
    delta = source_out - base_out
    if method == "exact":
        scores = _exact(model, graph, task, base_tokens, delta, max_rows or 64)
    elif method == "eap":
        scores = _contract(graph, delta, receiver_gradients(model, graph, base_tokens, task.mean_metric))
    elif method == "clean_corrupted":
        grads = (receiver_gradients(model, graph, task.clean, task.mean_metric)
                 + receiver_gradients(model, graph, task.corrupted, task.mean_metric)) / 2
        scores = _contract(graph, delta, grads)
    elif method == "eap_ig_inputs":
        grads = _ig_gradients(model, graph, task, 0, clean_out, corrupt_out, ig_steps, ig_points)
        scores = _contract(graph, delta, grads)
    else:
        scores = torch.zeros(len(graph.senders), len(graph.receivers))
        groups = [g.senders for g in sender_groups(model, graph)]
        for group, senders in enumerate(groups):
            contracted = _contract(graph, delta, _ig_gradients(model, graph, task, group, clean_out, corrupt_out, ig_steps,
                                                               ig_points))
            if ig_paths == "own":  # an edge along its sender's own layer's path
                scores[senders] = contracted[senders]
            else:  # every edge on every layer's path, averaged (the reference code's)
                scores += contracted / len(groups)
    settings = {}
    if method == "exact":
        settings = dict(max_rows=max_rows)
    elif method.startswith("eap_ig"):
        settings = dict(ig_points=ig_points, **({"ig_paths": ig_paths} if method == "eap_ig_activations" else {}))
    return EdgeScores(graph, scores, method, task.metric, direction,
                      ig_steps if method.startswith("eap_ig") else None, m_clean, m_corrupt,
                      task.clean_prompts, task.corrupted_prompts, tuple(t.text for t in task.targets),
                      settings=settings, task=task, clean_prefers_target=task.prefers_target, target_notes=task.notes)



def _contract(graph: EdgeGraph, delta: Tensor, grads: Tensor) -> Float[Tensor, "sender receiver"]:
    """Σ over prompts, positions and d_model of Δ_s · g_r, 0 off the allowed edges."""
    return torch.einsum("bpsd,bprd->sr", delta, grads).cpu() * graph.allowed


def _ig_gradients(model, graph: EdgeGraph, task: Task, group: int, clean_out: Tensor, corrupt_out: Tensor,
                  steps: int, points: str = "right") -> Tensor:
    """The mean receiver gradients over the Riemann sum (``points``: :data:`IG_POINTS`) of the
    path that moves sender group ``group`` (0: the input embeddings) from its corrupted to its
    clean output, the rest of the run clean. Where the group's write hook holds its outputs' sum (a post-norm block's
    heads), that sum moves by the change of the outputs along the path."""
    g = sender_groups(model, graph)[group]
    clean_g, corrupt_g = clean_out[:, :, g.senders], corrupt_out[:, :, g.senders]

    def interpolate(act, hook, alpha):
        value = corrupt_g + alpha * (clean_g - corrupt_g)
        if g.summed:  # this (clean) run's outputs are clean_g
            return act + (value - clean_g).sum(2).to(act.dtype)
        return (value if g.heads else value[:, :, 0]).to(act.dtype)

    total = None
    for k in (range(1, steps + 1) if points == "right" else range(steps)):
        grads = receiver_gradients(model, graph, task.clean, task.mean_metric,
                                   hooks=[(g.write, functools.partial(interpolate, alpha=k / steps))])
        total = grads if total is None else total + grads
    return total / steps


def _exact(model, graph: EdgeGraph, task: Task, base_tokens: Tensor, delta: Tensor,
           max_rows: int) -> Float[Tensor, "sender receiver"]:
    """One patched forward per (edge, prompt), ``max_rows`` rows a forward."""
    edges = graph.edges()
    n_prompts = task.n_prompts
    device = base_tokens.device
    per_chunk = max(1, max_rows // n_prompts)
    scores = torch.zeros(len(graph.senders), len(graph.receivers))
    everyone = torch.arange(n_prompts, device=device)
    # the base metric through the same hooked forward, so that an edge without effect scores 0
    nothing = torch.full((n_prompts,), -1, device=device)
    m_base = task.metric_rows(edge_forward(model, graph, base_tokens, delta[:, :, 0], nothing), everyone).mean().item()
    for start in range(0, len(edges), per_chunk):
        chunk = torch.tensor(edges[start:start + per_chunk], device=device)
        row_prompt = everyone.repeat(len(chunk))
        row_edge = torch.arange(len(chunk), device=device).repeat_interleave(n_prompts)
        senders, receivers = chunk[row_edge, 0], chunk[row_edge, 1]
        logits = edge_forward(model, graph, base_tokens[row_prompt], delta[row_prompt, :, senders], receivers)
        values = task.metric_rows(logits, row_prompt).reshape(len(chunk), n_prompts).mean(1).cpu()
        scores[chunk[:, 0].cpu(), chunk[:, 1].cpu()] = values - m_base
    return scores
