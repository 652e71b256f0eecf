"""The toy world's knowledge base, templates, training text and exports."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interp_edit.toyworld import build_world, counterfact_records, multihop_questions
from interp_edit.toyworld.corpus import CorpusSampler
from interp_edit.toyworld.templates import COMPOSITIONS, ESSENCE_TEMPLATE, RELATIONS, relation
from interp_edit.toyworld.world import OBJECTS_BY_TYPE


@pytest.fixture(scope="module")
def world():
    return build_world(0)


def test_world_is_deterministic_and_seeded():
    a, b, c = build_world(0), build_world(0), build_world(1)
    assert a.facts == b.facts and a.people == b.people
    assert a.facts != c.facts


def test_world_size_and_relations(world):
    assert len(world.people) >= 300
    assert len(RELATIONS) >= 6
    assert len({p.name for p in world.people}) == len(world.people)
    assert len(world.facts) == 4 * len(world.people) + 24 + 8 + 8
    # every object is of its relation's type
    for fact in world.facts:
        assert fact.object in OBJECTS_BY_TYPE[relation(fact.relation_id).object_type]
    # capitals lie in their own country
    for country, capital in world.country_capital.items():
        assert world.city_country[capital] == country


def test_composition_trained_for_half_of_the_people(world):
    trained = sum(p.composition_trained for p in world.people)
    assert trained == len(world.people) // 2


def test_attributes_are_not_correlated_with_birth_country(world):
    """A person's language must not be predictable from their birth country (no shortcut)."""
    same = sum(
        world.lookup(p.name, "speaks") == world.country_language[world.birth_country(p.name)] for p in world.people
    )
    # independent draws over 8 languages: expect ~1/8 of 400 = 50
    assert same < len(world.people) * 0.25


def _templates_by_subject_type():
    by_type: dict[str, list[str]] = {}
    for spec in RELATIONS:
        by_type.setdefault(spec.subject_type, []).extend(spec.train_templates + spec.paraphrase_templates)
    for comp in COMPOSITIONS:
        by_type["person"].extend(comp.train_templates + comp.heldout_templates)
    return by_type


def test_no_template_is_a_prefix_of_another():
    for subject_type, templates in _templates_by_subject_type().items():
        filled = [t.format("SUBJ") for t in templates]
        assert len(set(filled)) == len(filled), f"duplicate {subject_type} templates"
        for a, b in itertools.permutations(filled, 2):
            assert not b.startswith(a + " "), f"{a!r} is a prefix of {b!r}"


def test_essence_prompt_is_not_a_fact_template():
    for templates in _templates_by_subject_type().values():
        assert ESSENCE_TEMPLATE not in templates


def test_paraphrases_are_new_combinations_of_seen_phrases():
    for spec in RELATIONS:
        train, para = set(spec.train_templates), set(spec.paraphrase_templates)
        assert para and not train & para
        assert spec.canonical_template in train
        for p in range(len(spec.phrases)):
            assert any(spec.phrases[p] in t for t in train), f"{spec.id}: phrase {p} never trained"


def test_training_text_never_states_a_heldout_prompt(world):
    sampler = CorpusSampler(world, seed=0)
    texts = [sampler.sample() for _ in range(20000)]
    corpus = "\n".join(texts)
    heldout_people = [p.name for p in world.people if not p.composition_trained]
    for spec in RELATIONS:
        subjects = world.subjects_of_type(spec.subject_type)[:40]
        for template in spec.paraphrase_templates:
            for s in subjects:
                assert template.format(s) not in corpus
    for comp in COMPOSITIONS:
        for template in comp.train_templates + comp.heldout_templates:
            for person in heldout_people[:60]:
                assert template.format(person) not in corpus, "held-out composition stated in training"
    for template in COMPOSITIONS[0].heldout_templates:
        assert template.format("").strip() not in corpus


def test_corpus_is_deterministic(world):
    a = CorpusSampler(world, seed=3)
    b = CorpusSampler(world, seed=3)
    assert [a.sample() for _ in range(200)] == [b.sample() for _ in range(200)]


def test_counterfact_records(world):
    records = counterfact_records(world)
    assert len(records) == len(world.facts)
    assert [r.case_id for r in records] == list(range(len(records)))
    for r in records[:400] + records[-40:]:
        spec = relation(r.relation_id)
        assert r.target_new != r.target_true
        assert r.target_new in OBJECTS_BY_TYPE[spec.object_type]
        assert world.lookup(r.subject, r.relation_id) == r.target_true
        assert r.prompt == spec.canonical_template
        assert len(r.paraphrase_prompts) == len(spec.paraphrase_templates)
        for prompt in r.neighborhood_prompts:
            other = next(s for s in world.subjects_of_type(spec.subject_type) if prompt == r.prompt.format(s))
            assert other != r.subject and world.lookup(other, r.relation_id) == r.target_true
        for prompt in r.attribute_prompts:
            other = next(s for s in world.subjects_of_type(spec.subject_type) if prompt == r.prompt.format(s))
            assert world.lookup(other, r.relation_id) == r.target_new
        for prompt, answer in r.same_subject_prompts:
            assert r.subject in prompt and answer
        cf = r.to_counterfact()
        assert cf["requested_rewrite"]["target_new"]["str"] == r.target_new
        assert cf["requested_rewrite"]["prompt"].format(cf["requested_rewrite"]["subject"]).startswith(r.subject)
    assert counterfact_records(world) == records  # deterministic


def test_counterfact_records_reject_unknown_relation(world):
    with pytest.raises(KeyError, match="bogus"):
        counterfact_records(world, relations=("bogus",))


def test_multihop_questions_follow_the_chain(world):
    questions = multihop_questions(world)
    assert len(questions) == 3 * len(world.people)
    for q in questions:
        assert q.chain[0] == q.subject and q.chain[-1] == q.answer
        assert len(q.chain) == len(q.hops) + 1
        for i, rel in enumerate(q.hops):
            assert world.lookup(q.chain[i], rel) == q.chain[i + 1]
        assert all(q.subject in text for text in q.questions)
        assert len(q.to_mquake()["orig"]["triples"]) == len(q.hops)
    two_hop = [q for q in questions if len(q.hops) == 2]
    assert sum(q.trained for q in two_hop) == len(world.people) // 2
    assert not any(q.trained for q in questions if len(q.hops) == 3)


@settings(max_examples=8, deadline=None)
@given(st.integers(min_value=0, max_value=10_000))
def test_any_seed_gives_a_consistent_world(seed):
    world = build_world(seed, n_people=320)
    assert len(world.people) == 320
    assert len({f.subject for f in world.facts if relation(f.relation_id).subject_type == "person"}) == 320


def test_bad_world_sizes():
    with pytest.raises(ValueError, match="n_people"):
        build_world(0, n_people=1)
    with pytest.raises(ValueError, match="n_people"):
        build_world(0, n_people=10**6)
