"""Ripple-effect cases of the toy world and their scores: every expected answer is the world's
ground truth (recomputed here from the world's tables, not through the case builder), the
scores are "greedy decoding emits the answer on any phrasing" checked against a plain per-prompt
argmax loop, and a study counts only the tests the unedited model knew and leaves the model
unchanged."""

from __future__ import annotations

import math

import pytest
import torch
from model_state import assert_unchanged, snapshot

from interp_edit.evaluation.ripple import (
    RIPPLE_KINDS,
    UNAVAILABLE,
    RippleCase,
    RippleTest,
    ripple_scores,
    ripple_study,
    toy_ripple_cases,
)


def test_every_expected_answer_is_the_worlds_truth(toy_world):
    cases = toy_ripple_cases(toy_world, n=40)
    assert len(cases) == 40 and [c.edit_kind for c in cases[:4]] == ["person", "city", "person", "city"]
    country_of, capital, language = toy_world.city_country, toy_world.country_capital, toy_world.country_language
    born = {p.name: toy_world.person_attributes[p.name]["born_in"] for p in toy_world.people}
    for case in cases:
        fact = case.rewrite
        if case.edit_kind == "person":
            old_city, new_city = fact.target_true, fact.target_new
            assert born[fact.subject] == old_city and country_of[new_city] != country_of[old_city]
            chains = {country_of[new_city], capital[country_of[new_city]], language[country_of[new_city]]}
            comp = [t for t in case.tests if t.kind == "compositionality_I"]
            assert {t.answer for t in comp} == chains and len(comp) == 3
            assert {t.before for t in comp} == {country_of[old_city], capital[country_of[old_city]],
                                                language[country_of[old_city]]}
            spec = [t for t in case.tests if t.kind == "relation_specificity"]
            assert sorted(t.answer for t in spec) == sorted(v for k, v in toy_world.person_attributes[fact.subject].items()
                                                            if k != "born_in")
            assert all(t.answer == t.before and fact.subject in t.prompts[0] for t in spec)
        else:
            city, old, new = fact.subject, fact.target_true, fact.target_new
            assert country_of[city] == old and new != old and new in capital
            for t in case.tests:
                person = next(p for p in born if t.prompts[0].startswith(p) or p in t.prompts[0])
                assert born[person] == city and (t.answer, t.before) == (new, old)
            assert 0 < len(case.tests) <= 5


def test_unavailable_criteria_are_named():
    assert set(UNAVAILABLE) == {"logical_generalisation", "subject_aliasing", "forgetfulness"}
    assert not set(UNAVAILABLE) & set(RIPPLE_KINDS)


def greedy_first(model, prompt: str, answer: str) -> bool:
    """Plain reference: greedy decoding emits every token of ' answer' (one forward per token)."""
    tokens = model.to_tokens(prompt)
    wanted = model.tokenizer.encode(" " + answer, add_special_tokens=False)
    for token in wanted:
        top = int(model(tokens)[0, -1].argmax())
        if top != token:
            return False
        tokens = torch.cat([tokens, torch.tensor([[top]], device=tokens.device)], 1)
    return True


def test_scores_equal_a_plain_greedy_loop(toy_model, toy_world):
    cases = toy_ripple_cases(toy_world, n=6)
    for before in (True, False):
        rows = ripple_scores(toy_model, cases, before=before)
        for case, row in zip(cases, rows, strict=True):
            for kind in RIPPLE_KINDS:
                tests = [t for t in case.tests if t.kind == kind]
                if not tests:
                    assert math.isnan(row[kind])
                    continue
                right = [any(greedy_first(toy_model, p, t.before if before else t.answer) for p in t.prompts) for t in tests]
                assert row[kind] == pytest.approx(sum(right) / len(right)), (case.case_id, kind, before)


def test_a_study_filters_by_what_the_model_knew_and_restores_it(toy_model, toy_world):
    cases = toy_ripple_cases(toy_world, n=4)
    state = snapshot(toy_model)
    res = ripple_study(toy_model, "rome", cases, config={"steps": 5})
    assert_unchanged(toy_model, state, no_edits=True)
    knew = ripple_scores(toy_model, cases, before=True)
    for row, known in zip(res.rows, knew, strict=True):
        for kind in RIPPLE_KINDS:
            assert math.isnan(row[kind]) == (math.isnan(known[kind]) or known[kind] == 0), (row["case_id"], kind)
    known = {kind: sum(any(greedy_first(toy_model, p, t.before) for p in t.prompts)
                       for c in cases for t in c.tests if t.kind == kind) for kind in RIPPLE_KINDS}
    assert res.known == known
    assert all(r["efficacy"] in (0.0, 1.0) for r in res.rows)
    assert "RippleResult(method='rome'" in repr(res) and "not measurable here" in res.plot().layout.title.text


def test_a_hand_made_case_scores_what_the_model_says(toy_model):
    prompt = "Talvik Corlo was born in"
    said = toy_model.tokenizer.decode([int(toy_model(toy_model.to_tokens(prompt))[0, -1].argmax())]).strip()
    case = RippleCase("x", "person", None, (RippleTest("relation_specificity", (prompt,), said, said),
                                           RippleTest("relation_specificity", ("Talvik Corlo works as a",), "zzz", "zzz")))
    assert ripple_scores(toy_model, [case])[0]["relation_specificity"] == 0.5


@pytest.mark.slow
def test_docs_evaluation_md_ripple_table(toy_model, toy_world):
    """docs/evaluation.md: the ripple table (first 40 cases, each editor's own toy preset)."""
    cases = toy_ripple_cases(toy_world, n=40)
    expected = {"rome": (0.900, 0.688, 0.022, 0.350), "memit": (0.900, 0.625, 0.000, 0.367),
                "alphaedit": (0.800, 0.625, 0.013, 0.417)}
    for method, numbers in expected.items():
        res = ripple_study(toy_model, method, cases)
        s = res.summary()
        assert res.known == {"compositionality_I": 20, "compositionality_II": 72, "relation_specificity": 60}
        got = (s["efficacy"], s["compositionality_I"], s["compositionality_II"], s["relation_specificity"])
        assert got == pytest.approx(numbers, abs=0.03), method
