"""The toy world in every public format, offline: records as dicts in each file layout (they
go through the same validating parsers as files do).

- CounterFact: :func:`interp_edit.toyworld.counterfact_records` plus, for ``born_in`` rewrites
  whose new city lies in another country, a ``multihop`` probe (birth-country questions:
  answer the old country before, the new one after).
- zsRE: the rewrite prompt as ``src``, one held-out paraphrase as ``rephrase``, and another
  person's fact as ``loc`` / ``loc_ans``.
- MQuAKE: one case per person: the birth city is rewritten to a city of another country
  (an edit of the first hop) and the question is a two- or three-hop chain through it (birth
  country, its capital or its language), in three phrasings (two for the three-hop chains,
  which is all the toy world has).
- MCQ: one case per ``born_in`` rewrite with four questions. The toy model never read lettered
  options, so its questions are *cloze* questions: the labels are the five options themselves
  (one token each) and the choice is the argmax of their next-token logits after the prompt.
"""

from __future__ import annotations

import random

from interp_edit.toyworld import counterfact_records
from interp_edit.toyworld.templates import BIRTH_COUNTRY, COMPOSITIONS, relation
from interp_edit.toyworld.world import OBJECTS_BY_TYPE, ToyWorld, stable_seed

PERSON_RELATIONS = ("born_in", "profession", "speaks", "instrument")


def _birth_country_questions(name: str) -> list[str]:
    """Three phrasings: one trained (for part of the people), two never trained."""
    return [t.format(name) for t in (BIRTH_COUNTRY.train_templates[0], *BIRTH_COUNTRY.heldout_templates)]


def toy_counterfact(world: ToyWorld, seed: int = 0) -> list[dict]:
    """Every fact of the world with at least one neighbour (another subject with the same
    relation and object) as a CounterFact record: the people's facts and some geography."""
    out = []
    for record in counterfact_records(world, seed=seed):
        if not record.neighborhood_prompts:
            continue
        data = record.to_counterfact()
        if record.relation_id == "born_in":
            old, new = world.lookup(record.target_true, "located_in"), world.lookup(record.target_new, "located_in")
            if old != new:
                data["multihop"] = {"questions": _birth_country_questions(record.subject), "answer": old, "new_answer": new}
        out.append(data)
    return out


def toy_zsre(world: ToyWorld, seed: int = 0) -> list[dict]:
    """zsRE-style (MEND split) records of the people's facts."""
    records = [r for r in counterfact_records(world, seed=seed) if r.relation_id in PERSON_RELATIONS]
    out = []
    for i, r in enumerate(records):
        rng = random.Random(stable_seed("toy-zsre", world.seed, seed, r.case_id))
        other = records[(i + 1 + rng.randrange(len(records) - 1)) % len(records)]
        while other.subject == r.subject:
            other = rng.choice(records)
        out.append({
            "case_id": r.case_id, "subject": r.subject, "src": r.prompt.format(r.subject),
            "rephrase": rng.choice(r.paraphrase_prompts), "alt": r.target_new, "pred": r.target_new,
            "answers": [r.target_true], "loc": other.prompt.format(other.subject), "loc_ans": other.target_true,
        })
    return out


def _new_city(world: ToyWorld, person: str, seed: int) -> str:
    old = world.lookup(person, "born_in")
    country = world.lookup(old, "located_in")
    rng = random.Random(stable_seed("toy-mquake", world.seed, seed, person))
    return rng.choice(sorted(c for c, k in world.city_country.items() if k != country))


def toy_mquake(world: ToyWorld, seed: int = 0) -> list[dict]:
    """One MQuAKE-style case per person (see the module docstring)."""
    out = []
    born_in = relation("born_in").canonical_template
    for case_id, person in enumerate(world.people):
        name = person.name
        comp = COMPOSITIONS[stable_seed("toy-mquake-hops", world.seed, seed, name) % len(COMPOSITIONS)]
        old_city, new_city = world.lookup(name, "born_in"), _new_city(world, name, seed)
        old_chain = world.chain(old_city, comp.hops[1:])
        new_chain = world.chain(new_city, comp.hops[1:])
        templates = comp.train_templates[:1] + comp.heldout_templates if comp.train_templates else comp.heldout_templates
        questions = [t.format(name) for t in templates]  # three phrasings (two for three-hop chains)
        rewrite = {"prompt": born_in, "subject": name, "relation_id": "born_in",
                   "target_new": {"str": new_city}, "target_true": {"str": old_city}}
        out.append({
            "case_id": case_id, "requested_rewrite": [rewrite], "questions": questions[:3],
            "answer": old_chain[-1], "answer_alias": [], "new_answer": new_chain[-1], "new_answer_alias": [],
            "orig": {"triples": [[name, comp.hops[0], old_city]] + [[old_chain[i], h, old_chain[i + 1]] for i, h in enumerate(comp.hops[1:])]},
            "new": {"triples": [[name, comp.hops[0], new_city]] + [[new_chain[i], h, new_chain[i + 1]] for i, h in enumerate(comp.hops[1:])]},
        })
    return out


def _options(rng: random.Random, pool: tuple[str, ...], must: list[str], k: int = 5) -> list[str]:
    rest = [o for o in pool if o not in must]
    options = list(dict.fromkeys(must)) + rng.sample(rest, k - len(set(must)))
    rng.shuffle(options)
    return options


def toy_mcq(world: ToyWorld, seed: int = 0) -> list[dict]:
    """One cloze multiple-choice case per ``born_in`` rewrite (see the module docstring); in a world
    where no one else is born outside the rewrite's two cities (a few people), the case has no
    locality question."""
    records = [r for r in counterfact_records(world, seed=seed) if r.relation_id == "born_in"]
    spec = relation("born_in")
    out = []
    for r in records:
        rng = random.Random(stable_seed("toy-mcq", world.seed, seed, r.case_id))
        new_country = world.lookup(r.target_new, "located_in")
        old_country = world.lookup(r.target_true, "located_in")
        neighbours = [p.name for p in world.people if p.name != r.subject
                      and world.lookup(p.name, "born_in") not in (r.target_new, r.target_true)]
        # a tiny world may have no one born elsewhere: that case has no locality question
        neighbour = rng.choice(neighbours) if neighbours else None

        def question(kind: str, prompt: str, pool: tuple[str, ...], answer: str, also: list[str], rng=rng) -> dict:
            options = _options(rng, pool, [answer, *also])
            return {"kind": kind, "prompt": prompt, "options": options, "labels": options, "answer": options.index(answer)}

        cities, countries = OBJECTS_BY_TYPE["city"], OBJECTS_BY_TYPE["country"]
        questions = [
            question("reliability", r.prompt.format(r.subject), cities, r.target_new, [r.target_true]),
            question("generalisation", rng.choice(r.paraphrase_prompts), cities, r.target_new, [r.target_true]),
            *([question("locality", spec.canonical_template.format(neighbour), cities,
                        world.lookup(neighbour, "born_in"), [r.target_new])] if neighbour is not None else []),
            question("portability", _birth_country_questions(r.subject)[0], countries, new_country,
                     [old_country] if old_country != new_country else []),
        ]
        out.append({"case_id": r.case_id, "requested_rewrite": r.to_counterfact()["requested_rewrite"], "questions": questions})
    return out
