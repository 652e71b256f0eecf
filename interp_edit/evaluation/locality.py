"""Relation locality (FiNE's motivation, methods.md B5): after an edit of ``(subject, relation)``,
prompts about the *same subject* with a *different relation* must keep the answer they had.

For each edit request, its same-subject prompts are the canonical prompts of the subject's
other relations: a :class:`~interp_edit.prompts.CounterFactRecord`'s ``same_subject_prompts``
(the toy world's records carry them), or, for a plain request, built from a toy world
(``world=``) out of the subject's facts whose relation differs from the request's (the
request's relation is recognised from its prompt template). A prompt is **kept** when the
edited model's top-1 next token after it equals the unedited model's top-1 next token (the
unedited model's own answer, right or wrong — not the world's answer). The score of a request is
the fraction of its prompts kept; the overall ``fraction`` is the mean over requests (as
CounterFact's scores are), and ``prompt_fraction`` the fraction over all prompts.

This is the one place that computes "same-subject kept". (CounterFact's ``same_subject``
score in :mod:`interp_edit.evaluation.counterfact` is a different, softer comparison:
p(old answer) > p(new target).)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from interp_edit.batching import last_token_logits
from interp_edit.errors import EditRequestError
from interp_edit.prompts import CounterFactRecord


@dataclass(frozen=True)
class RelationLocality:
    """Per request: its same-subject prompts, whether each kept its top-1 answer, and the
    fraction kept; ``fraction`` is the mean of the per-request fractions (requests without
    such prompts are left out of it).

    >>> loc = relation_locality(model, rome(model, records[:1]), records[:1])
    >>> loc.prompts[0][0]                    # the same subject's other relations
    'Talvik Corlo works as a'
    >>> len(loc.kept[0]), 0.0 <= loc.fraction <= 1.0
    (3, True)
    """

    prompts: list[list[str]]
    kept: list[list[bool]]

    @property
    def per_request(self) -> list[float]:
        """The fraction of each request's prompts kept (NaN for a request without any)."""
        return [sum(k) / len(k) if k else float("nan") for k in self.kept]

    @property
    def fraction(self) -> float:
        values = [v for v in self.per_request if v == v]
        return sum(values) / len(values) if values else float("nan")

    @property
    def prompt_fraction(self) -> float:
        """The fraction over all prompts pooled."""
        flat = [k for row in self.kept for k in row]
        return sum(flat) / len(flat) if flat else float("nan")


def _relation_of(prompt: str) -> str | None:
    from interp_edit.toyworld.templates import RELATIONS

    for spec in RELATIONS:
        if prompt in spec.train_templates or prompt in spec.paraphrase_templates:
            return spec.id
    return None


def same_subject_prompts(requests: Sequence, world=None) -> list[list[str]]:
    """The prompts of each request's subject with another relation (see the module docstring).
    A request that is not a CounterFactRecord needs ``world`` (a toy world), and its prompt
    must be one of the world's relation templates; otherwise an :class:`EditRequestError`
    names the request."""
    from interp_edit.editing.requests import as_request

    out = []
    for index, item in enumerate(requests):
        if isinstance(item, CounterFactRecord):
            out.append([text for text, _ in item.same_subject_prompts])
            continue
        if isinstance(item, dict) and "same_subject_prompts" in item:
            out.append([p[0] if isinstance(p, (list, tuple)) else p for p in item["same_subject_prompts"]])
            continue
        request = as_request(item, index)
        if world is None:
            raise EditRequestError(
                f"request {index}: a plain request carries no same-subject prompts; pass a CounterFactRecord "
                f"or world= (a toy world) to build them for subject {request.subject!r}"
            )
        from interp_edit.toyworld.templates import relation

        rel = _relation_of(request.prompt)
        if rel is None:
            raise EditRequestError(
                f"request {index}: field 'prompt': {request.prompt!r} is none of the toy world's relation templates, "
                "so its relation (and thus the subject's other relations) is unknown"
            )
        own = [f for f in world.facts if f.subject == request.subject]
        if not own:
            raise EditRequestError(f"request {index}: field 'subject': {request.subject!r} is not a subject of the toy world")
        facts = [f for f in own if f.relation_id != rel]
        out.append([relation(f.relation_id).canonical_template.format(f.subject) for f in facts])
    return out


@torch.no_grad()
def top1_answers(model, prompts: Sequence[str]) -> Int[Tensor, " prompt"]:
    """The model's top-1 next token after each prompt (batched)."""
    if not prompts:
        return torch.zeros(0, dtype=torch.long)
    return last_token_logits(model, list(prompts)).argmax(-1)


def relation_locality(model, edit, requests: Sequence, *, world=None,
                      reference: Sequence[Sequence[int]] | None = None) -> RelationLocality:
    """Relation locality of ``edit`` on ``requests`` (see the module docstring).

    - ``edit`` an :class:`~interp_edit.editing.Edit` (not applied): the unedited answers are
      read from ``model`` as it is (unless ``reference`` gives them), then the edit is applied,
      the prompts scored and the edit undone — the model is left as it was.
    - ``edit`` ``None``: ``model`` is taken as already edited (e.g. edits applied in sequence)
      and compared with ``reference``, the unedited answers per request (from
      :func:`unedited_answers` on the model before editing), which is then required.

    >>> people = records[::4][:2]                         # two people's birth cities
    >>> e = memit(model, people)
    >>> loc = relation_locality(model, e, people)         # applies e, scores, undoes it
    >>> len(loc.per_request)
    2
    """
    prompts = same_subject_prompts(requests, world)
    flat = [p for row in prompts for p in row]
    if reference is None:
        if edit is None:
            from interp_edit.errors import InvalidArgumentError

            raise InvalidArgumentError(
                "relation_locality without an edit compares the model as it is with the unedited answers: "
                "pass reference=unedited_answers(model_before_editing, requests)"
            )
        before = top1_answers(model, flat).tolist()
    else:
        if len(reference) != len(prompts) or any(len(r) != len(p) for r, p in zip(reference, prompts, strict=True)):
            from interp_edit.errors import InvalidArgumentError

            raise InvalidArgumentError(
                f"reference holds {[len(r) for r in reference]} answers per request, but the requests have "
                f"{[len(p) for p in prompts]} same-subject prompts"
            )
        before = [int(t) for row in reference for t in row]
    if edit is None:
        after = top1_answers(model, flat).tolist()
    else:
        with edit.applied(model):
            after = top1_answers(model, flat).tolist()
    kept, start = [], 0
    for row in prompts:
        kept.append([before[start + i] == after[start + i] for i in range(len(row))])
        start += len(row)
    return RelationLocality(prompts, kept)


def unedited_answers(model, requests: Sequence, *, world=None) -> list[list[int]]:
    """The model's top-1 next token on each request's same-subject prompts (the ``reference``
    of :func:`relation_locality` for a model edited later)."""
    prompts = same_subject_prompts(requests, world)
    flat = top1_answers(model, [p for row in prompts for p in row]).tolist()
    out, start = [], 0
    for row in prompts:
        out.append(flat[start : start + len(row)])
        start += len(row)
    return out


__all__ = ["RelationLocality", "relation_locality", "same_subject_prompts", "top1_answers", "unedited_answers"]
