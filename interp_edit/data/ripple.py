"""Ripple-effect cases (format ``ripple``; RippleEdits, Cohen et al., TACL 2024): an edit of one
fact, and the facts that must move with it or must not.

The toy world builds them with ground truth (:func:`toy_ripple`, the built-in data set
``toyworld-ripple``), two kinds of edit, alternating:

- a person's birth city moved to a city of another country. Tests: ``compositionality_I`` —
  the person's composed facts (birth country, its capital, its language; each in the
  composition's first trained phrasing and its held-out ones) must give the new city's chain;
  ``relation_specificity`` — the person's other relations (profession, language spoken,
  instrument) must keep their objects.
- a city moved to another country. Tests: ``compositionality_II`` — people born in that city
  must now come from the new country (the edited subject appears only as a hop).

RippleEdits' other criteria need structure the toy world lacks, and are reported as such
(:data:`UNAVAILABLE`).

Record layout (this toolkit's): ``case_id``, ``edit_kind`` (a label, e.g. ``person`` | ``city``),
``requested_rewrite`` (as CounterFact: ``prompt`` with ``{}``, ``subject``, ``target_new``,
``target_true``), ``tests``: a non-empty list of {``kind`` (one of :data:`RIPPLE_KINDS`),
``prompts`` (non-empty: phrasings of one question), ``answer`` (after the edit), ``before``
(before it; equal to ``answer`` for a fact that must not move)}.

>>> ds = load_dataset("toyworld-ripple")
>>> ds.format, len(ds), ds[0].edit_kind, ds[0].rewrites()[0].text
('ripple', 424, 'person', 'Norpas Sollen was born in')
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from interp_edit.data.cases import Rewrite
from interp_edit.data.formats import Where, _case_id, _get, _text, _texts, parse_rewrite

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
    """One edit and its ripple tests (see the module docstring)."""

    case_id: str
    #: ``"person"`` (a birth city moved) or ``"city"`` (a city moved to another country)
    edit_kind: str
    rewrite: Rewrite
    tests: tuple[RippleTest, ...]

    def rewrites(self) -> tuple[Rewrite, ...]:
        return (self.rewrite,)


def parse_ripple(record: dict, where: Where) -> RippleCase:
    """Validate one ``ripple`` record (see the module docstring)."""
    rewrite = parse_rewrite(_get(record, "requested_rewrite", where), where)
    tests = _get(record, "tests", where)
    if not isinstance(tests, list) or not tests:
        raise where.error("tests", "expected a non-empty list of tests")
    parsed = []
    for i, test in enumerate(tests):
        prefix = f"tests[{i}]."
        if not isinstance(test, dict):
            raise where.error(f"tests[{i}]", f"expected an object, got {type(test).__name__}")
        kind = _text(test, "kind", where, prefix)
        if kind not in RIPPLE_KINDS:
            raise where.error(prefix + "kind", f"expected one of {RIPPLE_KINDS}, got {kind!r}")
        parsed.append(RippleTest(kind, _texts(test, "prompts", where, prefix), _text(test, "answer", where, prefix),
                                 _text(test, "before", where, prefix)))
    return RippleCase(_case_id(record, where), _text(record, "edit_kind", where), rewrite, tuple(parsed))


def _phrasings(comp) -> tuple[str, ...]:
    return tuple(comp.train_templates[:1] + comp.heldout_templates)


def _rewrite(prompt: str, subject: str, new: str, old: str) -> dict:
    return {"prompt": prompt, "subject": subject, "target_new": new, "target_true": old}


def _test(kind: str, prompts, answer: str, before: str) -> dict:
    return {"kind": kind, "prompts": list(prompts), "answer": answer, "before": before}


def _person_case(world, name: str, index: int, rng: random.Random) -> dict:
    from interp_edit.toyworld.templates import COMPOSITIONS, PERSON_RELATIONS, relation

    old_city = world.lookup(name, "born_in")
    country = world.lookup(old_city, "located_in")
    new_city = rng.choice(sorted(c for c, k in world.city_country.items() if k != country))
    tests = [_test("compositionality_I", (t.format(name) for t in _phrasings(comp)),
                   world.chain(new_city, comp.hops[1:])[-1], world.chain(old_city, comp.hops[1:])[-1])
             for comp in COMPOSITIONS]
    tests += [_test("relation_specificity", (relation(rel).canonical_template.format(name),),
                    world.lookup(name, rel), world.lookup(name, rel))
              for rel in PERSON_RELATIONS if rel != "born_in"]
    return {"case_id": f"person-{index}", "edit_kind": "person",
            "requested_rewrite": _rewrite(relation("born_in").canonical_template, name, new_city, old_city), "tests": tests}


def _city_case(world, city: str, index: int, rng: random.Random, n_people: int) -> dict:
    from interp_edit.toyworld.templates import BIRTH_COUNTRY, relation

    old = world.lookup(city, "located_in")
    new = rng.choice(sorted(k for k in world.country_capital if k != old))
    born_here = [p.name for p in world.people if world.lookup(p.name, "born_in") == city][:n_people]
    tests = [_test("compositionality_II", (t.format(p) for t in _phrasings(BIRTH_COUNTRY)), new, old) for p in born_here]
    return {"case_id": f"city-{index}", "edit_kind": "city",
            "requested_rewrite": _rewrite(relation("located_in").canonical_template, city, new, old), "tests": tests}


def toy_ripple(world, seed: int = 0, *, n: int | None = None, people_per_city: int = 5) -> list[dict]:
    """``n`` ripple records of the toy world (all by default: one per person and one per birth
    city, interleaved person, city, person... while both last), in a fixed shuffled order."""
    from interp_edit.toyworld.world import stable_seed

    rng = random.Random(stable_seed("ripple-cases", world.seed, seed))
    people = [p.name for p in world.people]
    cities = sorted(c for c in world.city_country if any(world.lookup(p, "born_in") == c for p in people))
    rng.shuffle(people)
    rng.shuffle(cities)
    out: list[dict] = []
    for i in range(max(len(people), len(cities))):
        if i < len(people):
            out.append(_person_case(world, people[i], i, rng))
        if i < len(cities):
            out.append(_city_case(world, cities[i], i, rng, people_per_city))
        if n is not None and len(out) >= n:
            break
    return out[:n]
