"""MEMIT-CSK's metrics (methods.md B4) on relation statements (``commonsense`` cases of
:mod:`interp_edit.data.commonsense`).

A statement is *answered* ``a`` when greedy decoding emits ``a`` right after the prompt (every
token of `` a`` is the top-1 when teacher-forced). All rates are fractions in [0, 1] (× 100
for the paper's percentages); a rate over an empty set is NaN.

- :func:`commonsense_efficacy`: of the edited statements the model did *not* answer with
  ``target_new`` before the edit, the fraction it answers with ``target_new`` after.
- :func:`relapse_rate`: of a fixed set of other statements the model answered right before the
  edit, the fraction it no longer answers right after.
- :func:`commonsense_scores`: both (plus the paraphrase efficacy) for one edit of some cases;
  the relapse set is the union of the cases' relapse statements minus the facts the batch
  rewrites.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from jaxtyping import Bool
from torch import Tensor

from interp_edit.evaluation.logprobs import score_continuations


def statements_answered(model, prompts: Sequence[str], answers: Sequence[str]) -> Bool[Tensor, " n"]:
    """Per statement: whether greedy decoding emits ``answers[i]`` right after ``prompts[i]``."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    return score_continuations(model, list(prompts), list(answers)).exact


def commonsense_efficacy(before_new: Bool[Tensor, " n"], after_new: Bool[Tensor, " n"]) -> float:
    """Of the statements not answered with the new target before the edit (``~before_new``), the
    fraction answered with it after (``after_new``)."""
    wrong = ~before_new
    return float(after_new[wrong].float().mean()) if wrong.any() else math.nan


def relapse_rate(before_right: Bool[Tensor, " n"], after_right: Bool[Tensor, " n"]) -> float:
    """Of the statements answered right before the edit, the fraction answered wrong after."""
    return float((~after_right[before_right]).float().mean()) if before_right.any() else math.nan


@dataclass(frozen=True)
class CommonsenseScores:
    """One edit's scores on its cases: efficacy on the edited statements and on their
    paraphrases, relapse on the other statements, and the sizes of the sets they are over."""

    efficacy: float
    paraphrase_efficacy: float
    relapse: float
    n_edited: int
    n_previously_wrong: int
    n_relapse_statements: int
    n_previously_right: int

    def as_dict(self) -> dict:
        return asdict(self)


def _relapse_statements(cases: Sequence) -> list:
    edited = {case.fact for case in cases}
    seen, out = set(), []
    for case in cases:
        for statement in case.relapse:
            if statement.fact not in edited and statement.prompt not in seen:
                seen.add(statement.prompt)
                out.append(statement)
    return out


def commonsense_scores(model, edit, cases: Sequence) -> CommonsenseScores:
    """Score ``edit`` (an :class:`~interp_edit.editing.Edit` of ``cases``' rewrites, not
    applied) on ``cases``: the model is measured unedited, then with the edit applied, and is
    left unedited. Every case is checked first (a bad one raises
    :class:`~interp_edit.errors.InvalidArgumentError` naming its index and field)."""
    from interp_edit.data.commonsense import CommonsenseCase
    from interp_edit.validation import check_records

    cases = check_records(cases, "cases", CommonsenseCase, fields=("rewrite", "paraphrase_prompts", "relapse"),
                          hint="load them with load_dataset('toyworld-csk')")
    prompts = [case.rewrite.text for case in cases]
    new = [case.rewrite.target_new for case in cases]
    para = [(p, case.rewrite.target_new) for case in cases for p in case.paraphrase_prompts]
    relapse = _relapse_statements(cases)

    def measure():
        return (statements_answered(model, prompts, new),
                statements_answered(model, [p for p, _ in para], [a for _, a in para]) if para else None,
                statements_answered(model, [s.prompt for s in relapse], [s.answer for s in relapse]) if relapse else None)

    before = measure()
    with edit.applied(model):
        after = measure()
    right = before[2] if before[2] is not None else None
    return CommonsenseScores(
        efficacy=commonsense_efficacy(before[0], after[0]),
        paraphrase_efficacy=commonsense_efficacy(before[1], after[1]) if para else math.nan,
        relapse=relapse_rate(before[2], after[2]) if relapse else math.nan,
        n_edited=len(cases),
        n_previously_wrong=int((~before[0]).sum()),
        n_relapse_statements=len(relapse),
        n_previously_right=int(right.sum()) if right is not None else 0,
    )
