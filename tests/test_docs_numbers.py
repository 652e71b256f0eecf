"""The documentation's measured numbers, asserted with tolerances: a number the docs state is a
number a test re-measures."""

from __future__ import annotations

import random

import pytest


def test_readme_aie_numbers_of_the_demo(toy_model, toy_world, one_thread):
    """docs/tracing.md: AIE over the demo's 100 person facts, window 1."""
    from interp_edit import average_indirect_effect
    from interp_edit.toyworld import counterfact_records
    from interp_edit.toyworld.world import stable_seed

    rng = random.Random(stable_seed("demo-aie", 0))  # the demo's draw (interp_edit/demo.py)
    person = [r for r in counterfact_records(toy_world) if r.relation_id in ("born_in", "profession", "speaks", "instrument")]
    aie = average_indirect_effect(toy_model, rng.sample(person, 100), window=1, seed=0, progress=False)
    assert aie.n_facts == 100 and aie.n_skipped == 0
    assert aie.mean_clean_score == pytest.approx(0.984, abs=0.01)
    assert aie.mean_corrupted_score == pytest.approx(0.167, abs=0.01)
    mlp_subject = aie.curve("mlp", "last_subject").tolist()
    assert mlp_subject[0] == pytest.approx(0.430, abs=0.01) and mlp_subject[1] == pytest.approx(0.057, abs=0.01)
    assert aie.peak("mlp") == pytest.approx({"kind": "mlp", "role": "last_subject", "layer": 0, "effect": 0.430}, abs=0.01)
    assert max(aie.curve("mlp", "last").tolist()) == pytest.approx(0.103, abs=0.01)
    attn_last = aie.curve("attn", "last").tolist()
    assert attn_last[1:5] == pytest.approx([0.19, 0.24, 0.26, 0.13], abs=0.01)
    assert aie.peak("attn") == pytest.approx({"kind": "attn", "role": "last_subject", "layer": 0, "effect": 0.493}, abs=0.01)
    hidden_last = aie.curve("hidden", "last").tolist()
    assert hidden_last[2] == pytest.approx(0.55, abs=0.01) and hidden_last[5] == pytest.approx(0.817, abs=0.01)
    assert aie.peak("hidden") == pytest.approx({"kind": "hidden", "role": "last", "layer": 5, "effect": 0.817}, abs=0.01)
