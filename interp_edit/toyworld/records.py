"""Exports of the toy world for the editors and the evaluation: CounterFact-style records
and multi-hop questions."""

from __future__ import annotations

import random

from interp_edit.prompts import CounterFactRecord, MultiHopQuestion
from interp_edit.toyworld.templates import COMPOSITIONS, RELATIONS, relation
from interp_edit.toyworld.world import OBJECTS_BY_TYPE, ToyWorld, stable_seed


def counterfact_records(
    world: ToyWorld,
    *,
    seed: int = 0,
    relations: tuple[str, ...] | None = None,
    n_neighbours: int = 10,
) -> list[CounterFactRecord]:
    """One record per fact of the chosen relations (default: all seven).

    - ``prompt``: the relation's canonical training template; ``target_new`` is another
      object of the same type, drawn with a stable per-fact seed;
    - ``paraphrase_prompts``: the relation's held-out templates (never seen in training);
    - ``neighborhood_prompts``: up to ``n_neighbours`` other subjects with the same relation
      and the same true object (they must keep ``target_true`` after the edit);
    - ``attribute_prompts``: subjects whose true object is ``target_new``;
    - ``same_subject_prompts``: the subject's other relations with their answers.
    """
    wanted = relations or tuple(r.id for r in RELATIONS)
    unknown = [r for r in wanted if r not in {spec.id for spec in RELATIONS}]
    if unknown:
        raise KeyError(f"unknown relations {unknown}; known: {[r.id for r in RELATIONS]}")
    by_relation_object: dict[tuple[str, str], list[str]] = {}
    by_subject: dict[str, list[tuple[str, str]]] = {}
    for fact in world.facts:
        by_relation_object.setdefault((fact.relation_id, fact.object), []).append(fact.subject)
        by_subject.setdefault(fact.subject, []).append((fact.relation_id, fact.object))

    records = []
    for case_id, fact in enumerate(f for f in world.facts if f.relation_id in wanted):
        spec = relation(fact.relation_id)
        rng = random.Random(stable_seed("counterfact", world.seed, seed, fact.subject, fact.relation_id))
        target_new = rng.choice([o for o in OBJECTS_BY_TYPE[spec.object_type] if o != fact.object])
        prompt = spec.canonical_template

        def others(obj: str, fact=fact, rng=rng) -> list[str]:
            subjects = [s for s in by_relation_object.get((fact.relation_id, obj), []) if s != fact.subject]
            return rng.sample(subjects, min(n_neighbours, len(subjects)))

        same_subject = tuple(
            (relation(rel).canonical_template.format(fact.subject), obj)
            for rel, obj in by_subject[fact.subject]
            if rel != fact.relation_id
        )
        records.append(
            CounterFactRecord(
                case_id=case_id,
                prompt=prompt,
                subject=fact.subject,
                relation_id=fact.relation_id,
                target_true=fact.object,
                target_new=target_new,
                paraphrase_prompts=tuple(t.format(fact.subject) for t in spec.paraphrase_templates),
                neighborhood_prompts=tuple(prompt.format(s) for s in others(fact.object)),
                attribute_prompts=tuple(prompt.format(s) for s in others(target_new)),
                same_subject_prompts=same_subject,
            )
        )
    return records


def multihop_questions(world: ToyWorld) -> list[MultiHopQuestion]:
    """Every person's multi-hop questions: the two-hop birth country (trained for the
    people flagged ``composition_trained``, asked in held-out phrasings too) and the
    never-trained three-hop birth capital and birth-country language."""
    questions = []
    for comp in COMPOSITIONS:
        for person in world.people:
            chain = tuple(world.chain(person.name, comp.hops))
            trained = comp.train_templates != () and person.composition_trained
            templates = comp.train_templates + comp.heldout_templates
            questions.append(
                MultiHopQuestion(
                    case_id=len(questions),
                    subject=person.name,
                    hops=comp.hops,
                    chain=chain,
                    questions=tuple(t.format(person.name) for t in templates),
                    answer=chain[-1],
                    trained=trained,
                )
            )
    return questions
