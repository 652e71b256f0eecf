"""The circuit an edit reroutes (issue 30, part 5): the circuit of an edited fact found before
and after the edit, the edges whose scores changed most, whether the edited layers are on the
old and the new circuit, and how much of the old circuit still carries the old answer.

>>> e = rome(model, records[:1])              # Talvik Corlo: born in Karsa -> Gemmel
>>> d = circuit_diff(model, e, n_edges=30, ig_steps=3)
>>> d.edited_nodes, d.targets
(('m0',), ('Gemmel', 'Karsa'))
>>> name, before, after, change = d.top_changes(1)[0]
>>> fig = d.plot()                            # the most-changed edges, edited layers marked

**The task.** The clean prompts are the request's prompt with its subject (and, with
``paraphrases=True``, the request's paraphrases that contain the subject); the corrupted
prompts are the same with the subject replaced by another subject of the same token length
(``replacement=``, else one drawn with a fixed seed from ``replacements=``, else from the
subjects of the model's toy world). ``task=(clean, corrupted)`` replaces both lists.

**The metric and its orientation.** Both runs score the metric *in the edit's direction*: the
answer is the request's new target and the foil its old target (``logit_diff`` = logit(new) −
logit(old); ``prob`` / ``logprob`` of the new target). One orientation makes before and after
comparable: an edge's change is ``after − before`` of the same quantity, and an edit that does
nothing changes nothing. With ``logit_diff`` (the default, and what a researcher reading "the
circuit of the old answer" wants) the circuit of the old answer against the new as foil is
*the same edges* with every score negated (selections rank by |score|). A score is the
effect of patching the edge (``M(patched) − M(clean)``, EAP's noising direction), so before the
edit an edge carrying the old answer scores > 0 (removing it raises new − old), and after the
edit an edge carrying the new answer scores < 0. With ``prob`` / ``logprob`` both circuits are
those of the new target's probability.

**What is reported.** With ``C_old`` the circuit selected from the scores of the unedited
model and ``C_new`` from those of the edited one (the first ``n_edges`` edges of
:func:`~interp_edit.analysis.circuits.select_edges` by ``selection``, as
:func:`~interp_edit.analysis.circuits.find_circuit`).

The circuits are selected ``"greedy"`` by default (grown back from the logits, so connected
to the output): a ``"top_n"`` circuit with no edge into the logits is exactly the corrupted
run (faithfulness 0, and ``old_carried`` undefined).

- ``change = after − before`` of every edge's score; :meth:`CircuitDiffResult.top_changes`
  ranks edges by ``|change|`` (largest first, ties in edge order).
- ``edited_nodes``: the nodes the edit writes to, per layer of ``edit.layers()``: ``m{l}``
  for a change of the layer's MLP (ROME, MEMIT), ``a{l}`` (the layer's attention, any head)
  for a change of its attention (MEGA's hooks on ``hook_attn_out``), both for anything else.
  ``on_old[node]`` / ``on_new[node]``: some edge of ``C_old`` / ``C_new`` has that node as its
  sender or its receiver's node. Caveat: a hook on ``hook_attn_out`` adds after the per-head
  outputs, so it is part of no sender: its effect shows in the scores of the edges downstream.
- ``old_faithfulness``: faithfulness of ``C_old`` on the unedited model, ``new_faithfulness``
  of ``C_new`` on the edited model (each for its own model's clean and corrupted runs).
- ``old_carried``, the share of the old circuit still carrying the old answer:
  ``(M'_edited(C_old) − M'_edited(corrupted)) / (M'_unedited(C_old) − M'_unedited(corrupted))``,
  where ``M'`` is the metric of the *old* answer against the new as foil (``prob`` /
  ``logprob``: of the old answer) and ``M(C)`` the clean run with every edge outside ``C``
  patched from the corrupted run (as faithfulness). 1: the old circuit's edges deliver the
  old answer as before; 0: they deliver no more than the corrupted run; negative: they now
  push the new answer. Both margins are signed in the *old* answer's favour (> 0: the circuit's
  edges raise the old answer above the corrupted run), so the ratio means something only where
  the denominator is a margin the old circuit really carries: ``old_carried`` is ``nan``, with
  the reason in :attr:`CircuitDiffResult.old_carried_reason` (the repr's ``WARNING=`` and the
  figure titles, as :class:`~interp_edit.analysis.gap.ScoreGap`'s warnings), where the unedited
  margin ``M'_unedited(C_old) − M'_unedited(corrupted)`` is <= 0 (the old circuit does not carry
  the old answer: two negative margins would read as a positive share) or where the old
  circuit's faithfulness for the old answer (that margin over the old answer's clean −
  corrupted gap; with ``logit_diff`` equal to ``old_faithfulness``) is below
  :data:`OLD_CARRIED_FLOOR` (the circuit carries so little of the old answer that the ratio
  divides by noise: a margin of 0.43 falling to −2.7 would read −6.4).

The edit is applied only inside this call (``with edit.applied(model)``) and undone before it
returns, also on an exception; every argument is checked before any forward.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import Tensor

from interp_edit.analysis.circuits.circuit import faithfulness_curve, select_edges
from interp_edit.analysis.circuits.engine import METRICS, check_arguments, check_edge_model, prepare_task
from interp_edit.analysis.circuits.graph import EdgeGraph, edge_graph
from interp_edit.analysis.circuits.scores import EdgeScores, check_score_arguments, scores_for_task
from interp_edit.errors import EditApplicationError, InvalidArgumentError

#: the metrics a circuit diff scores (``kl`` has no answer, so no old / new orientation)
DIFF_METRICS = tuple(m for m in METRICS if m != "kl")
SELECTIONS = ("top_n", "greedy")
#: the least faithfulness (for the old answer, on the unedited model) an old circuit needs for
#: ``old_carried`` to be reported: below it the old circuit is not the old answer's circuit and
#: the ratio of its margins divides by noise
OLD_CARRIED_FLOOR = 0.1


@dataclass
class CircuitDiffResult:
    """Edge scores of an edited fact before and after the edit, the two circuits and what
    changed between them; see the module docstring for every definition.

    ``before`` / ``after``: :class:`EdgeScores` of the unedited and the edited model (metric
    in the edit's direction: answer = new target, foil = old). ``old_order`` / ``new_order``:
    the selection orders (indices into ``graph.edges()``); the circuits are their first
    ``n_edges``.

    >>> d = circuit_diff(model, rome(model, records[:1]), n_edges=20, ig_steps=2)
    >>> d.edited_nodes, d.n_edges, len(d.old_circuit)
    (('m0',), 20, 20)
    >>> d.old_circuit[0].endswith("-> logits")     # greedy circuits start at the logits
    True
    """

    before: EdgeScores
    after: EdgeScores
    n_edges: int
    selection: str
    old_order: list[int]
    new_order: list[int]
    #: the edit's method, the request index and the number of requests of the edit
    method: str
    request: int
    n_requests: int
    #: (new, old) targets of the request
    targets: tuple[str, str]
    edited_layers: tuple[int, ...]
    edited_nodes: tuple[str, ...]
    on_old: dict[str, bool]
    on_new: dict[str, bool]
    old_faithfulness: float
    new_faithfulness: float
    #: M'(C_old) − M'(corrupted) for the old answer, on the unedited and the edited model
    old_margin_before: float
    old_margin_after: float
    #: faithfulness of ``C_old`` for the old answer (against the new) on the unedited model:
    #: ``old_margin_before`` over the old answer's clean − corrupted gap (``logit_diff``: equal
    #: to ``old_faithfulness``)
    old_answer_faithfulness: float
    replacement: str | None = None
    settings: dict = field(default_factory=dict)

    @property
    def graph(self) -> EdgeGraph:
        return self.before.graph

    @property
    def old_carried_reason(self) -> str | None:
        """Why ``old_carried`` is undefined (``None`` when it is reported): the unedited old
        circuit does not carry the old answer (margin <= 0) or carries less than
        :data:`OLD_CARRIED_FLOOR` of it (see the module docstring)."""
        if not self.old_margin_before > 0:
            return (f"old_carried undefined: the old circuit does not carry the old answer "
                    f"(unedited margin {self.old_margin_before:.3g} <= 0)")
        if not self.old_answer_faithfulness >= OLD_CARRIED_FLOOR:
            return (f"old_carried undefined: the old circuit's faithfulness for the old answer "
                    f"{self.old_answer_faithfulness:.3g} is below {OLD_CARRIED_FLOOR:g}")
        return None

    @property
    def old_carried(self) -> float:
        """The share of the old circuit still carrying the old answer (module docstring);
        ``nan`` when :attr:`old_carried_reason` says why it is undefined."""
        if self.old_carried_reason is not None:
            return math.nan
        return self.old_margin_after / self.old_margin_before

    @property
    def change(self) -> Tensor:
        """[sender, receiver]: after − before (0 off the allowed edges)."""
        return self.after.scores - self.before.scores

    def change_order(self) -> list[int]:
        """Every edge's index (into ``graph.edges()``) by |after − before|, largest first."""
        flat = self.change[self.graph.allowed]
        return flat.abs().argsort(descending=True, stable=True).tolist()

    def top_changes(self, k: int = 10) -> list[tuple[str, float, float, float]]:
        """The ``k`` edges whose scores changed most: (name, before, after, after − before)."""
        edges, b, a = self.graph.edges(), self.before.flat(), self.after.flat()
        return [(self.graph.edge_name(*edges[i]), b[i].item(), a[i].item(), (a[i] - b[i]).item())
                for i in self.change_order()[:k]]

    def _names(self, order: list[int]) -> list[str]:
        edges = self.graph.edges()
        return [self.graph.edge_name(*edges[i]) for i in order[:self.n_edges]]

    @property
    def old_circuit(self) -> list[str]:
        """The edges of the circuit before the edit, in selection order."""
        return self._names(self.old_order)

    @property
    def new_circuit(self) -> list[str]:
        return self._names(self.new_order)

    @property
    def shared_edges(self) -> int:
        """How many edges the old and the new circuit share."""
        return len(set(self.old_order[:self.n_edges]) & set(self.new_order[:self.n_edges]))

    def __repr__(self) -> str:
        from interp_edit.reprs import number, short_repr

        def flags(on):
            return "{" + ", ".join(f"{n}: {'yes' if v else 'no'}" for n, v in on.items()) + "}"

        top = "; ".join(f"{n} {number(c, 3)}" for n, _, _, c in self.top_changes(3))
        reason = self.old_carried_reason
        return short_repr("CircuitDiffResult", WARNING=None if reason is None else repr(reason),
                          method=repr(self.method),
                          request=f"{self.request} of {self.n_requests}",
                          targets=f"({self.targets[1]!r} -> {self.targets[0]!r})",
                          edges=f"{self.n_edges}/{self.graph.n_edges} shared {self.shared_edges}",
                          edited_on_old=flags(self.on_old), edited_on_new=flags(self.on_new),
                          old_carried=number(self.old_carried, 3),
                          faithfulness=f"old {number(self.old_faithfulness, 3)}, new {number(self.new_faithfulness, 3)}",
                          top_changes=f"[{top}]")

    def plot(self, view: str = "changes", n_edges: int = 30):
        """``"changes"``: the ``n_edges`` edges whose scores changed most (blue: the score rose,
        red: it fell; width |change|); ``"old"`` / ``"new"``: the circuit before / after. The
        edited nodes are outlined in orange. Plotly, offline like the other figures.

        >>> fig = circuit_diff(model, rome(model, records[:1]), n_edges=10, ig_steps=2).plot("new")
        """
        from interp_edit.analysis.circuits.figure import circuit_figure
        from interp_edit.validation import check_choice, check_int

        check_choice(view, "view", ("changes", "old", "new"))
        check_int(n_edges, "n_edges", minimum=1)
        who = f"{self.method} edit, request {self.request} of {self.n_requests}"
        if view == "changes":
            pseudo = replace(self.after, scores=self.change)
            fig = circuit_figure(pseudo, self.change_order()[:n_edges],
                                 f"{min(n_edges, self.graph.n_edges)} most-changed edges (after − before), {who}")
            for trace in fig.data:
                if trace.name == "positive score":
                    trace.name = "score rose"
                elif trace.name == "negative score":
                    trace.name = "score fell"
        else:
            scores, order = (self.before, self.old_order) if view == "old" else (self.after, self.new_order)
            faith = self.old_faithfulness if view == "old" else self.new_faithfulness
            fig = circuit_figure(scores, order[:self.n_edges], f"{view} circuit ({'before' if view == 'old' else 'after'} "
                                 f"the edit): {self.n_edges} edges, faithfulness {faith:.3f}, {who}")
        if self.old_carried_reason is not None:
            fig.update_layout(title_text=f"{fig.layout.title.text}<br><b>WARNING: {self.old_carried_reason}</b>")
        return self._mark_edited(fig)

    def _mark_edited(self, fig):
        import plotly.graph_objects as go

        from interp_edit.analysis.circuits.figure import _node_xy
        from interp_edit.viz.layout import fit_layout

        g = self.graph
        xs, ys, labels = [], [], []
        for node in self.edited_nodes:
            layer = int(node[1:])
            if node.startswith("m"):
                x, y = _node_xy(g, "mlp", layer, None)
                xs.append(x), ys.append(y), labels.append(f"L{layer} MLP (edited)")
            else:
                for h in range(g.n_heads):
                    x, y = _node_xy(g, "head", layer, h)
                    xs.append(x), ys.append(y), labels.append(f"L{layer} attention (edited)")
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name="edited", text=labels, hoverinfo="text",
                                     marker=dict(size=22, symbol="square-open", color="#e66101", line=dict(width=3))))
        return fit_layout(fig)  # again: the legend has one more entry

    def to_dict(self) -> dict:
        return dict(kind="CircuitDiffResult", method=self.method, request=self.request, n_requests=self.n_requests,
                    targets=list(self.targets), replacement=self.replacement, n_edges=self.n_edges,
                    selection=self.selection, edited_layers=list(self.edited_layers),
                    edited_nodes=list(self.edited_nodes), on_old=self.on_old, on_new=self.on_new,
                    old_faithfulness=self.old_faithfulness, new_faithfulness=self.new_faithfulness,
                    old_margin_before=self.old_margin_before, old_margin_after=self.old_margin_after,
                    old_answer_faithfulness=self.old_answer_faithfulness,
                    old_carried=None if math.isnan(self.old_carried) else self.old_carried,
                    old_carried_reason=self.old_carried_reason,
                    old_circuit=self.old_circuit, new_circuit=self.new_circuit,
                    top_changes=[list(row) for row in self.top_changes(50)], settings=self.settings,
                    before=self.before.to_dict(), after=self.after.to_dict())

    def save(self, path: str | Path) -> Path:
        """Write the diff (both circuits, the changes and every edge's scores) as JSON, atomically."""
        from interp_edit.atomic_files import write_text_atomic

        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1))


# --- the task -----------------------------------------------------------------------------


def _the_request(edit, request) -> tuple[int, int, Mapping]:
    requests = list(getattr(edit, "requests", None) or [])
    n = len(requests)
    if n == 0:
        raise InvalidArgumentError("edit: the edit holds no request; circuit_diff needs one (its prompt, subject and targets)")
    if request is None:
        if n > 1:
            raise InvalidArgumentError(
                f"the {getattr(edit, 'method', '')} edit holds {n} requests and circuit_diff analyses one: pass "
                f"request=i (0..{n - 1}), e.g. [circuit_diff(model, edit, request=i) for i in range({n})]")
        request = 0
    if isinstance(request, bool) or not isinstance(request, int) or not 0 <= request < n:
        raise InvalidArgumentError(f"request must be an int in 0..{n - 1} (the edit holds {n} request(s)), got {request!r}")
    req = requests[request]
    req = req if isinstance(req, Mapping) else vars(req)
    for key in ("prompt", "subject", "target_new", "target_true"):
        if not isinstance(req.get(key), str) or not req[key].strip():
            raise InvalidArgumentError(
                f"request {request} of the edit has no {key!r} (its fields: {sorted(req)}); circuit_diff needs the "
                "prompt, subject, new and old targets (pass task= for the prompts; the targets must be there)")
    return request, n, req


def _fits(model, prompts: Sequence[str], subject: str, candidate: str) -> bool:
    tok = model.tokenizer
    return candidate.strip() != subject.strip() and all(
        len(tok.encode(p, add_special_tokens=False)) == len(tok.encode(p.replace(subject, candidate), add_special_tokens=False))
        for p in prompts)


def _default_pool(model) -> list[str]:
    from interp_edit.toyworld.model_world import world_spec_of

    spec = world_spec_of(model)
    if spec is None:
        return []
    return sorted({f.subject for f in spec.build().facts})


def _corrupt(model, prompts: list[str], subject: str, replacement, replacements, seed: int) -> tuple[list[str], str]:
    if replacement is not None:
        if not _fits(model, prompts, subject, replacement):
            raise InvalidArgumentError(
                f"replacement {replacement!r} is the subject or does not keep every prompt's token length "
                f"(subject {subject!r}); pass another one of the same token length")
        chosen = replacement
    else:
        pool = list(replacements) if replacements is not None else _default_pool(model)
        if not pool:
            raise InvalidArgumentError(
                "no replacement subject: pass replacement='<subject of the same token length>', replacements=[...], "
                "or task=(clean, corrupted)")
        fitting = [c for c in pool if _fits(model, prompts, subject, c)]
        if not fitting:
            raise InvalidArgumentError(f"no subject among replacements {pool[:10]}{' ...' if len(pool) > 10 else ''} "
                                       f"keeps every prompt's token length like {subject!r}; pass replacement=")
        chosen = random.Random(seed).choice(fitting)
    return [p.replace(subject, chosen) for p in prompts], chosen


def _edited_nodes(edit) -> tuple[tuple[int, ...], tuple[str, ...]]:
    from interp_edit.adapter.params import parameter_layer

    names = [*getattr(edit, "deltas", {}), *(getattr(s, "hook_name", "") for s in getattr(edit, "hooks", {}).values())]
    nodes: set[tuple[int, str]] = set()
    for name in names:
        layer = parameter_layer(name)
        if layer is None:
            continue
        if "mlp" in name:
            nodes.add((layer, "m"))
        elif "attn" in name:
            nodes.add((layer, "a"))
        else:
            nodes |= {(layer, "a"), (layer, "m")}
    layers = tuple(sorted({layer for layer, _ in nodes}))
    return layers, tuple(f"{kind}{layer}" for layer, kind in sorted(nodes))


def _on_circuit(graph: EdgeGraph, order: list[int], n: int, nodes: Sequence[str]) -> dict[str, bool]:
    edges = graph.edges()
    touched: set[str] = set()
    for i in order[:n]:
        s, r = edges[i]
        for name in (graph.senders[s].name, graph.receivers[r].node):
            touched.add(name)
            if name.startswith("a"):
                touched.add(name.split(".")[0])  # a3.h1 / a3.kv0 -> the layer's attention a3
    return {node: node in touched for node in nodes}


def circuit_diff(
    model,
    edit,
    task: tuple[str | Sequence[str], str | Sequence[str]] | None = None,
    *,
    request: int | None = None,
    n_edges: int = 50,
    selection: str = "greedy",
    method: str = "eap_ig_inputs",
    ig_steps: int = 5,
    metric: str = "logit_diff",
    paraphrases: bool = True,
    replacement: str | None = None,
    replacements: Sequence[str] | None = None,
    seed: int = 0,
    max_rows: int | None = None,
) -> CircuitDiffResult:
    """The circuit of one edited fact before and after ``edit`` (see the module docstring for
    the task, the metric's orientation and every reported quantity).

    ``task``: ``(clean, corrupted)`` prompts (one string each or lists of pairs), instead of
    the request's prompt (and paraphrases) with its subject replaced. ``request``: which of the
    edit's requests (required when it holds several). ``n_edges`` / ``selection`` /
    ``method`` / ``ig_steps`` / ``metric`` / ``max_rows``: as
    :func:`~interp_edit.analysis.circuits.find_circuit` (``metric`` not ``kl``).
    ``paraphrases``: add the request's paraphrases that contain its subject to the clean
    prompts. ``replacement`` / ``replacements`` / ``seed``: the corrupting subject (see the
    module docstring).

    Every argument is checked before any forward; an edit made for another model or already
    applied is refused; the model is left exactly as it was.

    >>> e = rome(model, records[:1])
    >>> d = circuit_diff(model, e, n_edges=20, ig_steps=2)
    >>> d.on_new                                   # ROME's layer-0 MLP on the new circuit?
    {'m0': True}
    """
    from interp_edit.adapter import model_fingerprint
    from interp_edit.editing import applied_edits
    from interp_edit.prompts import encode_target
    from interp_edit.validation import check_choice, check_int, check_sequence, check_str

    # --- every check, nothing run ---
    check_edge_model(model)
    found = model_fingerprint(model)
    if getattr(edit, "model_fingerprint", None) != found or not hasattr(edit, "applied"):
        raise EditApplicationError(f"edit: the {getattr(edit, 'method', '?')} edit was made for the model with fingerprint "
                                   f"{getattr(edit, 'model_fingerprint', None)}, not this one ({found}); circuit_diff "
                                   "needs an Edit of this base model")
    if any(e is edit for e in applied_edits(model)):
        raise EditApplicationError("edit: this edit is already applied to the model; undo it first (circuit_diff "
                                   "measures the unedited model, then applies the edit itself)")
    check_choice(metric, "metric", DIFF_METRICS)
    check_score_arguments(method, "noise", ig_steps, max_rows)
    check_choice(selection, "selection", SELECTIONS)
    if not isinstance(paraphrases, bool):
        raise InvalidArgumentError(f"paraphrases must be True or False, got {paraphrases!r}")
    check_int(seed, "seed")
    check_str(replacement, "replacement", optional=True)
    if replacements is not None:
        for i, c in enumerate(check_sequence(replacements, "replacements")):
            check_str(c, "replacements", index=i)
    graph = edge_graph(model)
    check_int(n_edges, "n_edges", minimum=1, maximum=graph.n_edges)
    request, n_requests, req = _the_request(edit, request)
    new, old = req["target_new"], req["target_true"]
    chosen = None
    if task is not None:
        if not isinstance(task, (tuple, list)) or len(task) != 2:
            raise InvalidArgumentError(f"task must be a pair (clean, corrupted), got {task!r}")
        clean, corrupted = task
    else:
        subject = req["subject"]
        clean = [req["prompt"].format(subject)]
        if paraphrases:
            clean += [p for p in (req.get("paraphrases") or req.get("paraphrase_prompts") or ())
                      if isinstance(p, str) and subject in p]
        corrupted, chosen = _corrupt(model, clean, subject, replacement, replacements, seed)
    cleans, _, _, _ = check_arguments(clean, corrupted, new, old, metric)
    tok = model.tokenizer
    if encode_target(tok, new, cleans[0])[0] == encode_target(tok, old, cleans[0])[0]:
        raise InvalidArgumentError(f"the request's targets {new!r} and {old!r} share their first token; "
                                   "a circuit diff needs two answers")
    layers, nodes = _edited_nodes(edit)

    # --- before, then after (the edit applied only for the block) ---
    def measure(order_from=None):
        task_new = prepare_task(model, clean, corrupted, new, old, metric)
        scores = scores_for_task(model, graph, task_new, method=method, ig_steps=ig_steps, direction="noise",
                                 max_rows=max_rows)
        order = select_edges(scores, selection)
        faith = faithfulness_curve(model, task_new, graph, order, [min(n_edges, len(order))], max_rows or 64)[0][0]
        old_order = order if order_from is None else order_from
        task_old = prepare_task(model, clean, corrupted, old, new, metric)
        f_old, m_clean, m_corrupt = faithfulness_curve(model, task_old, graph, old_order,
                                                       [min(n_edges, len(old_order))], max_rows or 64)
        return scores, order, faith, f_old[0] * (m_clean - m_corrupt), f_old[0]

    before, old_order, old_faith, margin_before, old_answer_faith = measure()
    with edit.applied(model):
        after, new_order, new_faith, margin_after, _ = measure(order_from=old_order)
    n_kept = min(n_edges, len(old_order), len(new_order))
    return CircuitDiffResult(
        before=before, after=after, n_edges=n_kept, selection=selection, old_order=old_order, new_order=new_order,
        method=str(getattr(edit, "method", "edit")), request=request, n_requests=n_requests, targets=(new, old),
        edited_layers=layers, edited_nodes=nodes, on_old=_on_circuit(graph, old_order, n_kept, nodes),
        on_new=_on_circuit(graph, new_order, n_kept, nodes), old_faithfulness=old_faith, new_faithfulness=new_faith,
        old_margin_before=margin_before, old_margin_after=margin_after, old_answer_faithfulness=old_answer_faith,
        replacement=chosen,
        settings=dict(method=method, ig_steps=ig_steps, metric=metric, paraphrases=paraphrases, seed=seed,
                      max_rows=max_rows, model_fingerprint=found))

