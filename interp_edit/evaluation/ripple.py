"""Ripple effects of an edit (RippleEdits, Cohen et al., TACL 2024) with ground truth from the
toy world: an edit changes one fact, and the facts that follow from it must change with it,
while the subject's other facts must not.

Cases (:func:`toy_ripple_cases`), two kinds of edit, alternating:

- a person's birth city moved to a city of another country. Tests:
  ``compositionality_I`` — the person's composed facts (birth country, its capital, its
  language; each in the composition's first trained phrasing and its held-out ones) must give the new city's chain;
  ``relation_specificity`` — the person's other relations (profession, language spoken,
  instrument) must keep their objects.
- a city moved to another country. Tests: ``compositionality_II`` — people born in that city
  must now come from the new country (the edited subject appears only as a hop).

RippleEdits' other criteria need structure the toy world lacks, and are reported as such
(:data:`UNAVAILABLE`): it has no inverse or symmetric relations (logical generalisation), one
name per person (subject aliasing), and one object per subject and relation (forgetfulness).

Scoring (:func:`ripple_scores`): a test is right when greedy decoding emits its expected
answer on any of its phrasings (MQuAKE's rule, :func:`~interp_edit.evaluation.metrics.any_phrasing_right`).
A row per case gives each kind's accuracy; score the unedited model too (``before=True``
expects the answers before the edit) to keep the tests the model knew, as RippleEdits does.

>>> cases = toy_ripple_cases(world, n=2)
>>> [c.edit_kind for c in cases], sorted({t.kind for t in cases[0].tests})
(['person', 'city'], ['compositionality_I', 'relation_specificity'])
>>> rows = ripple_scores(model, cases)             # the unedited model: the old answers hold
>>> round(rows[0]["relation_specificity"], 2)
1.0
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from interp_edit.editing.requests import EditRequest

#: the RippleEdits criteria measured here
RIPPLE_KINDS = ("compositionality_I", "compositionality_II", "relation_specificity")
#: the criteria the toy world cannot pose, and why
UNAVAILABLE = {
    "logical_generalisation": "the toy world has no inverse or symmetric relations",
    "subject_aliasing": "every person has one name",
    "forgetfulness": "every relation has one object per subject",
}


@dataclass(frozen=True)
class RippleTest:
    """One consequence of an edit: its phrasings, the answer it must have after the edit
    (``answer``) and the one it had before (``before``; equal for a fact that must not move)."""

    kind: str
    prompts: tuple[str, ...]
    answer: str
    before: str


@dataclass(frozen=True)
class RippleCase:
    case_id: str
    #: ``"person"`` (a birth city moved) or ``"city"`` (a city moved to another country)
    edit_kind: str
    fact: EditRequest
    tests: tuple[RippleTest, ...]


def _phrasings(comp) -> tuple[str, ...]:
    return tuple(comp.train_templates[:1] + comp.heldout_templates)


def _person_case(world, name: str, index: int, rng: random.Random) -> RippleCase:
    from interp_edit.toyworld.templates import COMPOSITIONS, PERSON_RELATIONS, relation

    old_city = world.lookup(name, "born_in")
    country = world.lookup(old_city, "located_in")
    new_city = rng.choice(sorted(c for c, k in world.city_country.items() if k != country))
    tests = [RippleTest("compositionality_I", tuple(t.format(name) for t in _phrasings(comp)),
                        world.chain(new_city, comp.hops[1:])[-1], world.chain(old_city, comp.hops[1:])[-1])
             for comp in COMPOSITIONS]
    tests += [RippleTest("relation_specificity", (relation(rel).canonical_template.format(name),),
                         world.lookup(name, rel), world.lookup(name, rel))
              for rel in PERSON_RELATIONS if rel != "born_in"]
    fact = EditRequest(relation("born_in").canonical_template, name, new_city, old_city)
    return RippleCase(f"person-{index}", "person", fact, tuple(tests))


def _city_case(world, city: str, index: int, rng: random.Random, n_people: int) -> RippleCase:
    from interp_edit.toyworld.templates import BIRTH_COUNTRY, relation

    old = world.lookup(city, "located_in")
    new = rng.choice(sorted(k for k in world.country_capital if k != old))
    born_here = [p.name for p in world.people if world.lookup(p.name, "born_in") == city][:n_people]
    tests = tuple(RippleTest("compositionality_II", tuple(t.format(p) for t in _phrasings(BIRTH_COUNTRY)), new, old)
                  for p in born_here)
    fact = EditRequest(relation("located_in").canonical_template, city, new, old)
    return RippleCase(f"city-{index}", "city", fact, tests)


def toy_ripple_cases(world, n: int | None = None, *, people_per_city: int = 5, seed: int = 0) -> list[RippleCase]:
    """``n`` ripple cases (all by default: one per person and per city, interleaved person,
    city, person...), in a fixed shuffled order; see the module docstring.

    >>> case = toy_ripple_cases(world, n=1)[0]           # a person's birth city moved
    >>> case.fact.prompt, [t.kind for t in case.tests][:3]
    ('{} was born in', ['compositionality_I', 'compositionality_I', 'compositionality_I'])
    """
    from interp_edit.toyworld.world import stable_seed

    rng = random.Random(stable_seed("ripple-cases", world.seed, seed))
    people = [p.name for p in world.people]
    cities = sorted(c for c in world.city_country if any(world.lookup(p, "born_in") == c for p in people))
    rng.shuffle(people)
    rng.shuffle(cities)
    out: list[RippleCase] = []
    for i in range(max(len(people), len(cities))):
        if i < len(people):
            out.append(_person_case(world, people[i], i, rng))
        if i < len(cities):
            out.append(_city_case(world, cities[i], i, rng, people_per_city))
        if n is not None and len(out) >= n:
            break
    return out[:n]


def _answered(model, cases: Sequence[RippleCase], before: bool) -> list[list[bool]]:
    """Per case, per test: answered right (any phrasing; ``before``: the pre-edit answer)."""
    from interp_edit.evaluation.metrics import answered, any_phrasing_right

    prompts, answers, groups = [], [], []
    for case in cases:
        for test in case.tests:
            expected = test.before if before else test.answer
            groups.append(list(range(len(prompts), len(prompts) + len(test.prompts))))
            prompts += list(test.prompts)
            answers += [[expected]] * len(test.prompts)
    right = any_phrasing_right(answered(model, prompts, answers), groups) if prompts else []
    out, at = [], 0
    for case in cases:
        out.append([bool(v) for v in right[at : at + len(case.tests)]])
        at += len(case.tests)
    return out


def _by_kind(case: RippleCase, flags: Sequence[bool], keep: Sequence[bool] | None = None) -> dict[str, float]:
    row = {}
    for kind in RIPPLE_KINDS:
        values = [f for j, (t, f) in enumerate(zip(case.tests, flags, strict=True))
                  if t.kind == kind and (keep is None or keep[j])]
        row[kind] = sum(values) / len(values) if values else math.nan
    return row


def ripple_scores(model, cases: Sequence[RippleCase], *, before: bool = False) -> list[dict]:
    """Per case: each kind's accuracy (mean over its tests of "any phrasing answered"; NaN for
    a kind the case has no test of), plus ``case_id`` and ``edit_kind``. ``before=True`` checks
    the answers the tests had before the edit (run it on the unedited model to find the facts
    it knew)."""
    return [{"case_id": c.case_id, "edit_kind": c.edit_kind, **_by_kind(c, flags)}
            for c, flags in zip(cases, _answered(model, cases, before), strict=True)]


@dataclass
class RippleResult:
    """:func:`ripple_study`'s result: per case, each kind's accuracy after its edit over the
    tests the unedited model answered right (``rows``), and the edit's efficacy (``edited``:
    the edited fact itself is answered with its new object).

    >>> res = ripple_study(model, "rome", toy_ripple_cases(world, n=4), config={"steps": 5})
    >>> sorted(res.summary())
    ['compositionality_I', 'compositionality_II', 'efficacy', 'relation_specificity']
    >>> fig = res.plot()
    """

    method: str
    rows: list[dict]
    #: tests the unedited model knew, per kind, over all cases
    known: dict[str, int]
    unavailable: dict[str, str]

    def summary(self) -> dict[str, float]:
        """Mean over cases of each kind (cases without a known test of it left out) and efficacy."""
        out = {}
        for key in (*RIPPLE_KINDS, "efficacy"):
            values = [r[key] for r in self.rows if not math.isnan(r[key])]
            out[key] = sum(values) / len(values) if values else math.nan
        return out

    def __repr__(self) -> str:
        from interp_edit.reprs import number, short_repr

        return short_repr("RippleResult", method=repr(self.method), cases=str(len(self.rows)),
                          **{k: number(v) for k, v in self.summary().items()})

    def plot(self):
        """A bar per kind (and efficacy): the mean accuracy after the edits, known tests only."""
        import plotly.graph_objects as go

        summary = self.summary()
        labels = [f"{k}<br>({self.known.get(k, len(self.rows))} tests)" for k in summary]
        fig = go.Figure(go.Bar(x=labels, y=list(summary.values())))
        missing = "; ".join(f"{k}: {why}" for k, why in self.unavailable.items())
        fig.update_layout(title=f"Ripple effects of {self.method} edits on the toy world ({len(self.rows)} cases)<br>"
                                f"<sup>not measurable here: {missing}</sup>", yaxis=dict(range=[0, 1], title="accuracy"),
                          height=420, width=760)
        return fig


def ripple_study(model, method: str, cases: Sequence[RippleCase], *, config: dict | None = None) -> RippleResult:
    """Edit each case on its own with ``method`` (``config``: its fields), score its tests
    after the edit and undo it. Accuracy counts only the tests the unedited model answered
    right before (RippleEdits' filter); ``efficacy`` is the edited fact answered with its new
    object. The model is unchanged afterwards.

    >>> res = ripple_study(model, "rome", toy_ripple_cases(world, n=2), config={"steps": 5})
    >>> len(res.rows), res.rows[0]["edit_kind"]
    (2, 'person')
    """
    from interp_edit.editing import edit
    from interp_edit.evaluation.metrics import answered

    cases = list(cases)
    knew = _answered(model, cases, before=True)
    known = {kind: sum(k for c, flags in zip(cases, knew, strict=True) for t, k in zip(c.tests, flags, strict=True)
                       if t.kind == kind) for kind in RIPPLE_KINDS}
    rows = []
    for case, keep in zip(cases, knew, strict=True):
        e = edit(model, [case.fact], method, **(config or {}))
        with e.applied(model):
            flags = _answered(model, [case], before=False)[0]
            efficacy = float(answered(model, [case.fact.text], [[case.fact.target_new]])[0])
        rows.append({"case_id": case.case_id, "edit_kind": case.edit_kind, **_by_kind(case, flags, keep),
                     "efficacy": efficacy})
    return RippleResult(method, rows, known, dict(UNAVAILABLE))


__all__ = ["RIPPLE_KINDS", "UNAVAILABLE", "RippleCase", "RippleResult", "RippleTest", "ripple_scores", "ripple_study",
           "toy_ripple_cases"]
