"""Pre/post-edit attribution diffs (MEGA, 2026; spec A5), built on the NLKA scores (A3).

For a prompt and two targets — the new object o* and the old object o — the layer-level NLKA
scores (:func:`~interp_edit.analysis.attribution.layer_attribution_scores`: the log-probability
increase each attention / FFN layer gives the target at the last position, read through the
frozen final norm) are computed on the unedited model and again with the edit applied. The
*diff* is after − before, in two directions:

- ``promote_new`` (index 0): the change of the layer's score for o* (more promotion of o*);
- ``suppress_old`` (index 1): minus the change of the layer's score for o (more suppression of o).

Module index 0 is attention, 1 the FFN. The same is done per neuron (FFN value neurons
``(l, i)``; attention neurons ``(l, h, j)`` with their scores summed over source positions) with
:func:`~interp_edit.analysis.attribution.neuron_attribution`, to find the neurons whose scores
changed most. A multi-token target is scored by its first token (``target_notes`` says so).

The edit is duck-typed (anything with ``model_fingerprint``, ``requests`` and a context manager
``applied(model)``, i.e. an :class:`~interp_edit.editing.Edit`, whether of weight deltas or of
steering hooks); it is applied only inside this function and undone before it returns, also on
an exception. Prompts are scored in right-padded batches (the last real position of a causal
model does not see the padding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import torch
from jaxtyping import Float
from torch import Tensor

from interp_edit.adapter import hook_name, model_fingerprint, run_with_cache
from interp_edit.adapter.readout import stream_names, stream_points
from interp_edit.analysis.attribution import Neuron, frozen_unembed, neuron_attribution, resolve_target
from interp_edit.batching import encode_prompts, pad_right
from interp_edit.errors import EditApplicationError, EmptyInputError, InvalidArgumentError, PromptTooLongError
from interp_edit.validation import check_int, check_sequence

#: module axis: attention layer, FFN layer
MODULES = ("attn", "ffn")
#: direction axis: the change in promotion of the new object, the change in suppression of the old
DIRECTIONS = ("promote_new", "suppress_old")
#: prompt groups, in the order results keep them
GROUPS = ("edit", "paraphrase", "neighborhood")
#: target keywords resolved from the edit's request
TARGET_KEYWORDS = MappingProxyType({"new": "target_new", "old": "target_true"})


def axis_index(value: str | int, names: Sequence[str], what: str) -> int:
    """The index of ``value`` (a name or an index) on an axis named by ``names``."""
    if isinstance(value, int) and 0 <= value < len(names):
        return value
    if value in names:
        return names.index(value)
    raise InvalidArgumentError(f"unknown {what} {value!r}; choose one of {tuple(names)}")


def _directions(before: Tensor, after: Tensor) -> Tensor:
    """``[..., target]`` scores (target 0 = new, 1 = old) -> ``[..., direction]`` diffs."""
    change = after - before
    return torch.stack([change[..., 0], -change[..., 1]], -1)


@torch.no_grad()
def batched_layer_scores(model, prompts: Sequence[str], target_ids: Sequence[int], *, batch_size: int = 64,
                         keep_bias: bool = False) -> tuple[Float[Tensor, "prompt layer module target"], Float[Tensor, "prompt target"]]:
    """Layer-level NLKA scores (as :func:`~interp_edit.analysis.attribution.layer_attribution_scores`,
    each prompt with its own frozen final-norm scale) of every prompt for every target id, and the
    model's log-probabilities of the targets at the last position. Right-padded batches."""
    n = model.cfg.n_layers
    names = stream_names(model) + [hook_name("ln_final_scale")]
    ids = encode_prompts(model.tokenizer, prompts)
    for prompt, seq in zip(prompts, ids, strict=True):
        if not prompt or not prompt.strip():
            raise EmptyInputError(f"empty prompt {prompt!r}")
        if len(seq) > model.cfg.n_ctx:
            raise PromptTooLongError(f"prompt {prompt!r} is {len(seq)} tokens; the model's context is {model.cfg.n_ctx}")
    targets = torch.tensor(list(target_ids), dtype=torch.long)
    base = frozen_unembed(model, 1.0, keep_bias=keep_bias)
    scores, logprobs = [], []
    for start in range(0, len(ids), batch_size):
        tokens, lengths = pad_right(ids[start : start + batch_size], model.tokenizer.pad_token_id or 0)
        tokens = tokens.to(model.cfg.device)
        logits, cache = run_with_cache(model, tokens, names)
        rows = torch.arange(len(lengths), device=logits.device)
        last = lengths.to(logits.device) - 1
        points = stream_points(model, cache)[rows, :, last]  # [batch, 2n+1, d]
        scale = cache[hook_name("ln_final_scale")][rows, last].reshape(-1, 1, 1)  # [batch, 1, 1]
        lp = torch.log_softmax(base.logits(points / scale).float(), -1)[..., targets.to(points.device)]  # [b, 2n+1, t]
        steps = lp[:, 1:] - lp[:, :-1]  # [b, 2n, t]
        scores.append(steps.reshape(len(lengths), n, 2, len(targets)).cpu())
        logprobs.append(torch.log_softmax(logits[rows, last].float(), -1)[:, targets.to(logits.device)].cpu())
    return torch.cat(scores), torch.cat(logprobs)


def _neuron_scores(model, prompt: str, target_ids: Sequence[int], method: str) -> Float[Tensor, "target neuron"]:
    """FFN value-neuron scores then attention-neuron scores (summed over source positions), flat."""
    out = []
    for target in target_ids:
        res = neuron_attribution(model, prompt, int(target), top_k=1, n_tokens=0, method=method)
        out.append(torch.cat([res.ffn_scores.flatten(), res.attn_scores.sum(-1).flatten()]))
    return torch.stack(out)


def neuron_of(model_shape: tuple[int, int, int, int], flat: int) -> Neuron:
    """The neuron at a flat index of :attr:`AttributionDiffResult.neuron_before` (``model_shape`` =
    layers, d_mlp, heads, d_head)."""
    n_layers, d_mlp, n_heads, d_head = model_shape
    n_ffn = n_layers * d_mlp
    if flat < n_ffn:
        return Neuron("ffn", flat // d_mlp, flat % d_mlp)
    rest = flat - n_ffn
    per_layer = n_heads * d_head
    return Neuron("attn", rest // per_layer, rest % d_head, head=(rest % per_layer) // d_head)


@dataclass
class AttributionDiffResult:
    """Before / after NLKA scores of an edit's new and old object on groups of prompts.

    ``before[group]`` / ``after[group]``: ``[prompt, layer, module, target]`` layer scores
    (module 0 attention, 1 FFN; target 0 = new, 1 = old). ``logprob_before`` / ``logprob_after``:
    the model's log-probabilities ``[prompt, target]`` of the (first) target tokens.
    ``neuron_before`` / ``neuron_after``: ``[prompt, target, neuron]`` scores of every FFN
    neuron then every attention neuron (flat; :meth:`neuron` names an index), for the groups in
    ``neuron_groups``. Diffs are after − before per :data:`DIRECTIONS` (see the module doc).

    >>> e = rome(model, records[:1])
    >>> diff = attribution_diff(model, e, records[0], neurons=False)
    >>> diff.groups
    ('edit', 'paraphrase', 'neighborhood')
    >>> diff.layer_diff("edit").shape                # [layer, module (attn | FFN), direction]
    torch.Size([6, 2, ...])
    >>> fig = diff.plot()                            # or plot("groups"), plot("logprobs")
    """

    method: str
    prompts: dict[str, tuple[str, ...]]
    targets: tuple[str | int, str | int]
    target_ids: tuple[int, int]
    target_tokens: tuple[str, str]
    target_notes: tuple[str, ...]
    before: dict[str, Tensor]
    after: dict[str, Tensor]
    logprob_before: dict[str, Tensor]
    logprob_after: dict[str, Tensor]
    neuron_before: dict[str, Tensor] = field(default_factory=dict)
    neuron_after: dict[str, Tensor] = field(default_factory=dict)
    #: layers, d_mlp, heads, d_head of the model (to name flat neuron indices)
    model_shape: tuple[int, int, int, int] = (0, 0, 0, 0)
    settings: dict = field(default_factory=dict)

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(self.prompts)

    def _group(self, group: str, neurons: bool = False) -> str:
        pool = self.neuron_before if neurons else self.before
        if group not in pool:
            what = "neuron scores" if neurons else "prompts"
            raise InvalidArgumentError(f"no {what} for group {group!r}; this result has {tuple(pool)}")
        return group

    def prompt_diffs(self, group: str = "edit") -> Float[Tensor, "prompt layer module direction"]:
        """Per prompt: after − before as [layer, module, direction]."""
        group = self._group(group)
        return _directions(self.before[group], self.after[group])

    def layer_diff(self, group: str = "edit") -> Float[Tensor, "layer module direction"]:
        """The diff averaged over the group's prompts."""
        return self.prompt_diffs(group).mean(0)

    def layer_scores(self, group: str = "edit", when: str = "after") -> Float[Tensor, "layer module direction"]:
        """Mean scores in the diff's directions (``promote_new`` = score of o*, ``suppress_old`` =
        minus the score of o) before or after the edit."""
        group = self._group(group)
        axis_index(when, ("before", "after"), "when")
        scores = (self.before if when == "before" else self.after)[group].mean(0)
        return torch.stack([scores[..., 0], -scores[..., 1]], -1)

    def neuron(self, flat: int) -> Neuron:
        return neuron_of(self.model_shape, flat)

    def neuron_diffs(self, group: str = "edit") -> Float[Tensor, "neuron direction"]:
        """Per neuron: after − before averaged over the group's prompts, per direction."""
        group = self._group(group, neurons=True)
        before = self.neuron_before[group].mean(0).T  # [neuron, target]
        after = self.neuron_after[group].mean(0).T
        return _directions(before, after)

    def top_neurons(self, group: str = "edit", direction: str = "promote_new", k: int = 10) -> list[dict]:
        """The ``k`` neurons whose mean score changed most (by absolute change) in ``direction``:
        rows with the neuron's label, kind, layer, score before / after (in that direction) and
        the change."""
        d = axis_index(direction, DIRECTIONS, "direction")
        group = self._group(group, neurons=True)
        sign = 1.0 if d == 0 else -1.0
        before = sign * self.neuron_before[group].mean(0)[d]
        after = sign * self.neuron_after[group].mean(0)[d]
        change = after - before
        order = change.abs().argsort(descending=True)[:k].tolist()
        rows = []
        for i in order:
            neuron = self.neuron(i)
            rows.append({"neuron": neuron.label, "kind": neuron.kind, "layer": neuron.layer, "before": float(before[i]),
                         "after": float(after[i]), "change": float(change[i])})
        return rows

    def table(self, group: str = "edit") -> list[dict]:
        """One row per (layer, module): the mean diff in both directions."""
        diff = self.layer_diff(group)
        return [{"layer": layer, "module": module, **{name: float(diff[layer, m, d]) for d, name in enumerate(DIRECTIONS)}}
                for layer in range(diff.shape[0]) for m, module in enumerate(MODULES)]

    def __repr__(self) -> str:
        from interp_edit.reprs import number, short_repr, text

        group = "edit" if "edit" in self.before else self.groups[0]
        diff = self.layer_diff(group)  # [layer, module, direction]
        flat = diff.abs().flatten().argmax().item()
        layer, rest = divmod(flat, diff.shape[1] * diff.shape[2])
        module, direction = divmod(rest, diff.shape[2])
        largest = f"L{layer} {('attn', 'ffn')[module]} {DIRECTIONS[direction]} {number(diff.flatten()[flat].item(), 3)}"
        return short_repr("AttributionDiffResult", method=repr(self.method), targets=f"({text(self.target_tokens[0])}, "
                          f"{text(self.target_tokens[1])})", groups=str({g: len(p) for g, p in self.prompts.items()}),
                          largest_change=f"{group}: {largest}")

    def plot(self, view: str = "heatmap", group: str = "edit"):
        """``heatmap`` (layer × module diff maps, new and old), ``groups`` (the maps of every
        prompt group side by side), ``neurons`` (top changed neurons), ``logprobs``.
        Returns a Plotly figure.

        >>> fig = attribution_diff(model, rome(model, records[:1]), neurons=False).plot("logprobs")
        """
        from interp_edit.viz.contrast import attribution_diff_figure

        return attribution_diff_figure(self, view, group)

    def save(self, path: str | Path, view: str = "heatmap", group: str = "edit") -> tuple[Path, Path]:
        from interp_edit.viz.export import save_figure

        return save_figure(self.plot(view, group), path)


def _request(edit, index: int) -> Mapping:
    requests = list(getattr(edit, "requests", []) or [])
    if not 0 <= index < len(requests):
        raise InvalidArgumentError(f"request={index}, but the {getattr(edit, 'method', '')} edit holds {len(requests)} request(s)")
    request = requests[index]
    request = request if isinstance(request, Mapping) else vars(request)
    if "prompt" not in request or "subject" not in request:
        raise InvalidArgumentError(
            f"request {index} of the {getattr(edit, 'method', '')} edit has no 'prompt' / 'subject' (its fields: "
            f"{sorted(request)}), e.g. a multi-hop ACE request: pass prompts= and the targets explicitly"
        )
    return request


def _prompt_groups(edit, prompts, request: int) -> dict[str, tuple[str, ...]]:
    if prompts is None:
        req = _request(edit, request)
        groups = {"edit": (req["prompt"].format(req["subject"]),)}
        if req.get("paraphrases"):
            groups["paraphrase"] = tuple(req["paraphrases"])
    elif isinstance(prompts, str):
        groups = {"edit": (prompts,)}
    elif isinstance(prompts, Mapping):
        unknown = sorted(set(prompts) - set(GROUPS))
        if unknown:
            raise InvalidArgumentError(f"unknown prompt group(s) {unknown}; choose among {GROUPS}")
        groups = {g: tuple(prompts[g]) for g in GROUPS if g in prompts}
    elif hasattr(prompts, "neighborhood_prompts"):  # a CounterFact record
        groups = {"edit": (prompts.prompt.format(prompts.subject),), "paraphrase": tuple(prompts.paraphrase_prompts),
                  "neighborhood": tuple(prompts.neighborhood_prompts)}
    else:
        groups = {"edit": tuple(prompts)}
    groups = {g: p for g, p in groups.items() if p}
    if not groups:
        raise EmptyInputError("attribution_diff got no prompts (every prompt group is empty)")
    for g, texts in groups.items():
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise EmptyInputError(f"prompt {i} of group {g!r} is empty or not a string: {text!r}")
    return groups


def _which_request(edit, request, prompts, targets) -> int | None:
    """The request the diff reads (``None``: none is read — prompts and targets are given)."""
    n = len(getattr(edit, "requests", []) or [])
    reads = prompts is None or (any(isinstance(t, str) and t in TARGET_KEYWORDS for t in targets)
                                and not hasattr(prompts, "neighborhood_prompts"))
    if request is not None:
        if isinstance(request, bool) or not isinstance(request, int):
            raise InvalidArgumentError(f"request must be an int (the index of one of the edit's requests), got {request!r}")
        return request
    if not reads:
        return None
    if n > 1:
        raise InvalidArgumentError(
            f"the {getattr(edit, 'method', '')} edit holds {n} requests and attribution_diff analyses one: pass "
            f"request=i (0..{n - 1}), e.g. [attribution_diff(model, edit, request=i) for i in range({n})]; "
            "or pass prompts= and explicit targets")
    return 0


def _edited_layers(edit) -> list[int]:
    layers = getattr(edit, "layers", None)
    return list(layers()) if callable(layers) else []


def _target(edit, target, request: int, prompts) -> str | int:
    if isinstance(target, str) and target in TARGET_KEYWORDS:
        key = TARGET_KEYWORDS[target]
        source = prompts if hasattr(prompts, "neighborhood_prompts") else _request(edit, request)
        value = getattr(source, key, None) if not isinstance(source, Mapping) else source.get(key)
        if not value:
            raise InvalidArgumentError(f"target {target!r}: the edit's request {request} has no {key}; pass the target string")
        return value
    if isinstance(target, (str, int)) and not isinstance(target, bool) and target != "":
        return target
    raise InvalidArgumentError(f"a target must be 'new', 'old', a non-empty string or a token id, got {target!r}")


@torch.no_grad()
def attribution_diff(
    model,
    edit,
    prompts=None,
    *,
    targets: tuple[str | int, str | int] = ("new", "old"),
    request: int | None = None,
    neurons: bool | Sequence[str] = True,
    neuron_method: str = "exact",
    batch_size: int = 64,
) -> AttributionDiffResult:
    """Layer- and neuron-level NLKA scores of the new and the old object before and after
    ``edit`` (applied temporarily; the model is bitwise unchanged afterwards).

    ``prompts``: ``None`` (the edit prompt of the edit's request ``request`` and its
    paraphrases, if the request has any), a string or list of strings (edit prompts), a mapping
    ``{"edit" | "paraphrase" | "neighborhood": [...]}``, or a CounterFact record (its rewrite,
    paraphrase and neighbourhood prompts). ``targets``: (promoted, suppressed) — ``"new"`` /
    ``"old"`` are the request's (or record's) ``target_new`` / ``target_true``; strings are
    scored by their first token; ints are token ids. ``neurons``: neuron-level scores for all
    groups (``True``), none (``False``) or the named groups; ``neuron_method`` as in
    :func:`~interp_edit.analysis.attribution.neuron_attribution` (``"first_order"`` is cheaper).

    ``request``: which of the edit's requests supplies the default prompts and the ``"new"`` /
    ``"old"`` targets. An edit of several requests needs it said (``request=i``; loop over
    ``range(len(edit.requests))`` for all of them): a diff of one request is not the edit's.
    The result names the request (``settings["request"]`` of ``settings["n_requests"]``) and
    its figures say "request i of n" and mark the edited layers.

    An edit made on another base model raises :class:`~interp_edit.errors.EditApplicationError`
    before anything runs.

    >>> e = rome(model, records[:1])
    >>> diff = attribution_diff(model, e, neurons=("edit",))   # edit prompt(s): new vs old object
    >>> diff.target_tokens
    (' Gemmel', ' Karsa')
    >>> bool(diff.logprob_after["edit"][0, 0] > diff.logprob_before["edit"][0, 0])   # new object up
    True
    >>> rows = diff.top_neurons("edit", "promote_new", k=3)
    """
    if neuron_method not in ("exact", "first_order"):  # the diff needs every neuron's score
        raise InvalidArgumentError(f"neuron_method must be 'exact' or 'first_order' (every neuron's score), got {neuron_method!r}")
    found = model_fingerprint(model)
    expected = getattr(edit, "model_fingerprint", None)
    if expected != found:
        raise EditApplicationError(f"the {getattr(edit, 'method', '?')} edit was made for the model with fingerprint "
                                   f"{expected}, not this one ({found}); attribution_diff needs the edit's base model")
    # a pair: a str such as "ab" is refused, not read as the two targets "a" and "b"
    pair = None if isinstance(targets, (str, bytes)) else tuple(check_sequence(targets, "targets", nonempty=False))
    if pair is None or len(pair) != 2:
        raise InvalidArgumentError(f"targets must be a pair (promoted, suppressed), got {targets!r}")
    targets = pair
    check_int(batch_size, "batch_size", minimum=1)
    request = _which_request(edit, request, prompts, targets)
    groups = _prompt_groups(edit, prompts, request)
    resolved = tuple(_target(edit, t, request, prompts) for t in targets)
    first = next(iter(groups.values()))[0]
    dummy = torch.zeros(model.cfg.d_vocab_out)
    ids_notes = [resolve_target(model, t, dummy, first) for t in resolved]
    target_ids = tuple(i for i, _ in ids_notes)
    if target_ids[0] == target_ids[1]:
        raise InvalidArgumentError(f"the targets {resolved!r} share their (first) token id {target_ids[0]}; the diff needs two tokens")
    neuron_groups = tuple(groups) if neurons is True else tuple(check_sequence(neurons, "neurons", nonempty=False)) if neurons else ()
    unknown = sorted(set(neuron_groups) - set(groups))
    if unknown:
        raise InvalidArgumentError(f"neurons requested for group(s) {unknown}, which have no prompts (groups: {tuple(groups)})")

    flat = [p for texts in groups.values() for p in texts]
    sizes = [len(t) for t in groups.values()]

    def measure() -> tuple[dict, dict, dict]:
        scores, logprobs = batched_layer_scores(model, flat, target_ids, batch_size=batch_size)
        layer, lp = dict(zip(groups, scores.split(sizes), strict=True)), dict(zip(groups, logprobs.split(sizes), strict=True))
        per_neuron = {g: torch.stack([_neuron_scores(model, p, target_ids, neuron_method) for p in groups[g]])
                      for g in neuron_groups}
        return layer, lp, per_neuron

    before, lp_before, n_before = measure()
    with edit.applied(model):
        after, lp_after, n_after = measure()
    cfg = model.cfg
    return AttributionDiffResult(
        method=str(getattr(edit, "method", "edit")),
        prompts=groups,
        targets=resolved,
        target_ids=target_ids,
        target_tokens=tuple(model.tokenizer.decode([i]) for i in target_ids),
        target_notes=tuple(note for _, note in ids_notes if note),
        before=before,
        after=after,
        logprob_before=lp_before,
        logprob_after=lp_after,
        neuron_before=n_before,
        neuron_after=n_after,
        model_shape=(cfg.n_layers, cfg.d_mlp, cfg.n_heads, cfg.d_head),
        settings={"request": request, "n_requests": len(getattr(edit, "requests", []) or []),
                  "edited_layers": _edited_layers(edit), "neuron_method": neuron_method,
                  "neuron_groups": list(neuron_groups), "model_fingerprint": found},
    )
