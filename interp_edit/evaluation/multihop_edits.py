"""Multi-hop evaluation of single-hop edits whose fact is an intermediate hop (MQuAKE-style):
a person's birth city changes, so the answers of their birth-country / capital / language
questions change too.

A :class:`MultiHopEditCase` splits each case's multi-hop phrasings into the ones an editor may
use (``edit_questions``, e.g. ACE's value stage) and held-out ones (``heldout_questions``,
never given to any editor), so an editor that writes the multi-hop answer straight into its
prompts is scored separately on phrasings it never saw. Per case
(:func:`multihop_edit_scores`):

- ``multihop_edit`` / ``multihop_heldout``: MQuAKE's multi-hop accuracy (any phrasing
  answered with the new answer, greedy = every answer token top-1) on each split;
- ``multihop_other``: the fraction of the person's *other* chains (the compositions the case
  does not ask, never given to the editor) answered with their new answer by any phrasing;
- ``efficacy`` / ``paraphrase``: [p(new city) > p(old city)] on the rewrite prompt / mean over
  its held-out paraphrases; ``neighborhood``: mean [p(old) > p(new)] on other people born in
  the old city; ``multihop_neighborhood``: the same people's multi-hop question (the case's
  first phrasing) still prefers their unchanged answer over the case's new answer.
  Comparisons use the mean per-token log-probability (ROME's evaluation).
- ``knew_chain``: whether the unedited model answered the case's chain (any phrasing) right —
  fill it with :func:`mark_known_chains` to report accuracy on the chains the model knew.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

from interp_edit.editing.methods.ace import ACERequest
from interp_edit.editing.requests import EditRequest
from interp_edit.evaluation.logprobs import TokenScores, score_continuations
from interp_edit.evaluation.metrics import any_phrasing_right, new_beats_true
from interp_edit.validation import check_records


@dataclass(frozen=True)
class MultiHopEditCase:
    case_id: str
    fact: EditRequest
    #: number of hops of the case's chain (2: birth country; 3: its capital or language)
    hops: int
    edit_questions: tuple[str, ...]
    heldout_questions: tuple[str, ...]
    answer: str
    new_answer: str
    #: the person's other chains: (phrasings, old answer, new answer)
    other_chains: tuple[tuple[tuple[str, ...], str, str], ...]
    paraphrase_prompts: tuple[str, ...]
    #: other people born in the old city: ("{} was born in" filled) prompts
    neighborhood_prompts: tuple[str, ...]
    #: the same people's multi-hop question (first phrasing) and their (unchanged) answers
    neighborhood_questions: tuple[tuple[str, str], ...] = ()
    knew_chain: bool | None = None
    #: the edit phrasing about other people (neither the subject nor its neighbours), for an
    #: editor's preserved keys
    preserve_questions: tuple[str, ...] = ()

    def ace_request(self, preserve: bool = False) -> ACERequest:
        """The ACE request: the fact plus the edit phrasings with the new answer (and, with
        ``preserve``, the preserved questions about other people)."""
        return ACERequest((self.fact,), self.edit_questions, (self.new_answer,) * len(self.edit_questions),
                          self.preserve_questions if preserve else ())


def toy_multihop_edit_cases(world, n: int | None = None, *, n_edit_questions: int = 1, n_neighbours: int = 5,
                            n_preserve: int = 5, seed: int = 0) -> list[MultiHopEditCase]:
    """Cases from the toy world's MQuAKE export (``toyworld-mquake``), in a fixed shuffled
    order: the first ``n_edit_questions`` phrasings of each case go to the editor, the rest
    are held out. ``n_preserve`` people born in neither the old nor the new city give the
    preserved questions."""
    from interp_edit.data.toyworld import toy_mquake
    from interp_edit.toyworld.templates import COMPOSITIONS, relation
    from interp_edit.toyworld.world import stable_seed

    records = toy_mquake(world, seed)
    random.Random(stable_seed("multihop-edit-cases", world.seed, seed)).shuffle(records)
    born_in = relation("born_in")
    by_city: dict[str, list[str]] = {}
    for person in world.people:
        by_city.setdefault(world.lookup(person.name, "born_in"), []).append(person.name)
    out = []
    for record in records[:n]:
        rewrite = record["requested_rewrite"][0]
        name, old_city, new_city = rewrite["subject"], rewrite["target_true"]["str"], rewrite["target_new"]["str"]
        questions = tuple(record["questions"])
        hops = len(record["orig"]["triples"])
        own = next(c for c in COMPOSITIONS if questions[0] in [t.format(name) for t in c.train_templates + c.heldout_templates])
        others = []
        for comp in COMPOSITIONS:
            if comp is own:
                continue
            templates = comp.train_templates[:1] + comp.heldout_templates
            others.append((tuple(t.format(name) for t in templates), world.chain(old_city, comp.hops[1:])[-1],
                           world.chain(new_city, comp.hops[1:])[-1]))
        neighbours = [p for p in by_city[old_city] if p != name][:n_neighbours]
        template = questions[0].replace(name, "{}", 1)
        rng = random.Random(stable_seed("multihop-edit-preserve", world.seed, seed, name))
        strangers = [p.name for p in world.people if world.lookup(p.name, "born_in") not in (old_city, new_city)]
        out.append(MultiHopEditCase(
            case_id=str(record["case_id"]),
            fact=EditRequest(rewrite["prompt"], name, new_city, old_city),
            hops=hops,
            edit_questions=questions[:n_edit_questions],
            heldout_questions=questions[n_edit_questions:],
            answer=record["answer"],
            new_answer=record["new_answer"],
            other_chains=tuple(others),
            paraphrase_prompts=tuple(t.format(name) for t in born_in.paraphrase_templates),
            neighborhood_prompts=tuple(born_in.canonical_template.format(p) for p in neighbours),
            neighborhood_questions=tuple((template.format(p), world.chain(old_city, own.hops[1:])[-1]) for p in neighbours),
            preserve_questions=tuple(template.format(p) for p in rng.sample(strangers, n_preserve)),
        ))
    return out


class _Batch:
    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.targets: list[str] = []

    def add(self, prompts: Sequence[str], target: str) -> list[int]:
        start = len(self.prompts)
        self.prompts += list(prompts)
        self.targets += [target] * len(prompts)
        return list(range(start, len(self.prompts)))


def _any_exact(scores, index: list[int]) -> float:
    return any_phrasing_right(scores.exact, [index])[0]


def _wins(scores, first: list[int], second: list[int]) -> float:
    if not first:
        return math.nan
    a = TokenScores([scores.logprobs[i] for i in first], [scores.top1[i] for i in first])
    b = TokenScores([scores.logprobs[i] for i in second], [scores.top1[i] for i in second])
    return float(new_beats_true(a, b).float().mean())


def multihop_edit_scores(model, cases: Sequence[MultiHopEditCase]) -> list[dict]:
    """One row of scores per case (see the module docstring), every continuation scored in
    one batched pass. Every case is checked first (a bad one raises
    :class:`~interp_edit.errors.InvalidArgumentError` naming its index and field)."""
    cases = check_records(cases, "cases", MultiHopEditCase, required=("fact.target_true",),
                          fields=("case_id", "fact", "hops", "edit_questions", "heldout_questions", "new_answer",
                                  "other_chains", "paraphrase_prompts", "neighborhood_prompts",
                                  "neighborhood_questions", "knew_chain"),
                          hint="build the cases with toy_multihop_edit_cases(world)")
    batch = _Batch()
    plans = []
    for case in cases:
        f = case.fact
        plan = {
            "edit": batch.add(case.edit_questions, case.new_answer),
            "heldout": batch.add(case.heldout_questions, case.new_answer),
            "other": [batch.add(qs, new) for qs, _, new in case.other_chains],
            "efficacy": (batch.add([f.text], f.target_new), batch.add([f.text], f.target_true)),
            "paraphrase": (batch.add(case.paraphrase_prompts, f.target_new), batch.add(case.paraphrase_prompts, f.target_true)),
            "neighborhood": (batch.add(case.neighborhood_prompts, f.target_true),
                             batch.add(case.neighborhood_prompts, f.target_new)),
            "hop_neighborhood": ([i for q, a in case.neighborhood_questions for i in batch.add([q], a)],
                                 batch.add([q for q, _ in case.neighborhood_questions], case.new_answer)),
        }
        plans.append(plan)
    scores = score_continuations(model, batch.prompts, batch.targets)
    rows = []
    for case, plan in zip(cases, plans, strict=True):
        other = [_any_exact(scores, index) for index in plan["other"]]
        rows.append({
            "case_id": case.case_id, "hops": case.hops, "knew_chain": case.knew_chain,
            "multihop_edit": _any_exact(scores, plan["edit"]),
            "multihop_heldout": _any_exact(scores, plan["heldout"]),
            "multihop_other": sum(other) / len(other) if other else math.nan,
            "efficacy": _wins(scores, *plan["efficacy"]),
            "paraphrase": _wins(scores, *plan["paraphrase"]),
            "neighborhood": _wins(scores, *plan["neighborhood"]),
            "multihop_neighborhood": _wins(scores, *plan["hop_neighborhood"]),
        })
    return rows


def mark_known_chains(model, cases: Sequence[MultiHopEditCase]) -> list[MultiHopEditCase]:
    """The cases with ``knew_chain`` set: whether the (unedited) ``model`` answers the case's
    chain with the old answer by any of its phrasings. Every case is checked first, as in
    :func:`multihop_edit_scores`."""
    cases = check_records(cases, "cases", MultiHopEditCase,
                          fields=("case_id", "edit_questions", "heldout_questions", "answer"),
                          hint="build the cases with toy_multihop_edit_cases(world)")
    batch = _Batch()
    index = [batch.add(c.edit_questions + c.heldout_questions, c.answer) for c in cases]
    scores = score_continuations(model, batch.prompts, batch.targets)
    return [replace(c, knew_chain=bool(_any_exact(scores, i) == 1.0)) for c, i in zip(cases, index, strict=True)]


def mean_rows(rows: Sequence[dict], keys: Sequence[str] | None = None) -> dict[str, float]:
    """The mean of each numeric score over rows, NaNs (a split a case does not have) skipped."""
    keys = keys or [k for k, v in rows[0].items() if isinstance(v, float)] if rows else []
    out = {}
    for key in keys:
        values = [r[key] for r in rows if r[key] == r[key]]
        out[key] = sum(values) / len(values) if values else math.nan
    return out
