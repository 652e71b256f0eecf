"""Training text of the toy world, sampled deterministically.

The mixture is what makes the model store facts the way large models do (see
shared/reference/toyworld-notes.md): besides single-fact sentences in the training templates
(some after random filler), it contains *profile cards* (``"<name> Veltra baker harp"``:
attributes right after the subject, in random order) and multi-fact sentences in random
order, so a subject's attributes must be ready at its last token (Allen-Zhu & Li, Physics
of Language Models 3.1). The birth-country composition is stated for the people whose
``composition_trained`` flag is set, never for the others.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from interp_edit.toyworld.templates import (
    BIRTH_COUNTRY,
    FILLER_SUBJECTS,
    FILLER_TAILS,
    FILLER_VERBS,
    PERSON_RELATIONS,
    relation,
)
from interp_edit.toyworld.world import ToyWorld, stable_seed


@dataclass(frozen=True)
class CorpusMixture:
    """Probabilities of each kind of training sequence (they need not sum to one)."""

    single_fact: float = 0.40
    profile_card: float = 0.25
    multi_fact: float = 0.25
    composition: float = 0.10
    #: probability that a single-fact sentence is preceded by 1-2 filler sentences
    filler: float = 0.35
    #: share of single facts and cards about cities/countries rather than people
    geography: float = 0.12


def filler_sentence(rng: random.Random) -> str:
    return f"{rng.choice(FILLER_SUBJECTS)} {rng.choice(FILLER_VERBS)} {rng.choice(FILLER_TAILS)}."


class CorpusSampler:
    """An endless, seeded stream of training texts for one world."""

    def __init__(self, world: ToyWorld, seed: int = 0, mixture: CorpusMixture = CorpusMixture()) -> None:
        self.world = world
        self.mixture = mixture
        self.rng = random.Random(stable_seed("corpus", world.seed, seed))
        self._person_facts = [f for f in world.facts if relation(f.relation_id).subject_type == "person"]
        self._geo_facts = [f for f in world.facts if relation(f.relation_id).subject_type != "person"]
        self._composition_people = [p.name for p in world.people if p.composition_trained]
        kinds = ("single_fact", "profile_card", "multi_fact", "composition")
        self._kinds = kinds
        self._weights = [getattr(mixture, k) for k in kinds]

    def sample(self) -> str:
        kind = self.rng.choices(self._kinds, self._weights)[0]
        return getattr(self, f"_{kind}")()

    def _single_fact(self) -> str:
        rng = self.rng
        facts = self._geo_facts if rng.random() < self.mixture.geography else self._person_facts
        fact = rng.choice(facts)
        template = rng.choice(relation(fact.relation_id).train_templates)
        text = template.format(fact.subject) + " " + fact.object + "."
        if rng.random() < self.mixture.filler:
            text = " ".join(filler_sentence(rng) for _ in range(rng.randint(1, 2))) + " " + text
        return text

    def _profile_card(self) -> str:
        rng = self.rng
        if rng.random() < self.mixture.geography:
            country = rng.choice(sorted(self.world.country_capital))
            attrs = [self.world.country_capital[country], self.world.country_language[country]]
            rng.shuffle(attrs)
            return f"{country} {' '.join(attrs)}"
        person = rng.choice(self.world.people).name
        rels = rng.sample(PERSON_RELATIONS, rng.randint(2, len(PERSON_RELATIONS)))
        return person + " " + " ".join(self.world.lookup(person, r) for r in rels)

    def _multi_fact(self) -> str:
        rng = self.rng
        person = rng.choice(self.world.people).name
        rels = rng.sample(PERSON_RELATIONS, rng.randint(2, len(PERSON_RELATIONS)))
        first = relation(rels[0])
        # The first clause is a training template, so no held-out paraphrase is ever stated.
        clauses = [rng.choice(first.train_templates).format(person) + " " + self.world.lookup(person, rels[0])]
        for rel in rels[1:]:
            spec = relation(rel)
            clauses.append(rng.choice(spec.phrases) + " " + self.world.lookup(person, rel))
        if len(clauses) == 2:
            return f"{clauses[0]} and {clauses[1]}."
        return ", ".join(clauses[:-1]) + " and " + clauses[-1] + "."

    def _composition(self) -> str:
        rng = self.rng
        person = rng.choice(self._composition_people)
        template = rng.choice(BIRTH_COUNTRY.train_templates)
        return template.format(person) + " " + self.world.birth_country(person) + "."
