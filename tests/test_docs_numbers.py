"""The documentation's measured numbers, asserted with tolerances: a number the docs state is a
number a test re-measures. In the slow job (``pytest -m slow``), with the other quality numbers."""

from __future__ import annotations

import random

import pytest

pytestmark = pytest.mark.slow  # quality numbers on the toy world (the README says which tests are slow)


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
    assert aie.mean_corrupted_score == pytest.approx(0.159, abs=0.01)
    mlp_subject = aie.curve("mlp", "last_subject").tolist()
    assert mlp_subject[0] == pytest.approx(0.444, abs=0.01) and mlp_subject[1] == pytest.approx(0.057, abs=0.01)
    assert aie.peak("mlp") == pytest.approx({"kind": "mlp", "role": "last_subject", "layer": 0, "effect": 0.444}, abs=0.01)
    assert max(aie.curve("mlp", "last").tolist()) == pytest.approx(0.095, abs=0.01)
    attn_last = aie.curve("attn", "last").tolist()
    assert attn_last[1:5] == pytest.approx([0.19, 0.23, 0.24, 0.12], abs=0.01)
    assert aie.peak("attn") == pytest.approx({"kind": "attn", "role": "last_subject", "layer": 0, "effect": 0.504}, abs=0.01)
    hidden_last = aie.curve("hidden", "last").tolist()
    assert hidden_last[2] == pytest.approx(0.556, abs=0.01) and hidden_last[5] == pytest.approx(0.825, abs=0.01)
    assert aie.peak("hidden") == pytest.approx({"kind": "hidden", "role": "last", "layer": 5, "effect": 0.825}, abs=0.01)


def test_editing_md_shared_keys_numbers(toy_model):
    """docs/editing.md: MEMIT of the toy world's first 20 records (5 people x 4 relations) against
    20 different people; the collision warning names the groups."""
    import warnings

    from interp_edit import edit
    from interp_edit.errors import KeyCollisionWarning
    from interp_edit.evaluation.counterfact import counterfact_scores
    from interp_edit.toyworld import counterfact_records, world_of

    records = counterfact_records(world_of(toy_model))
    distinct, seen = [], set()
    for r in records:  # each subject's first record, in order
        if r.subject not in seen and len(distinct) < 20:
            seen.add(r.subject)
            distinct.append(r)
    assert len({r.subject for r in records[:20]}) == 5 and len({r.subject for r in distinct}) == 20

    def means(recs):
        e = edit(toy_model, recs, "memit")
        with e.applied(toy_model):
            rows = counterfact_scores(toy_model, recs)
        return e, {k: sum(r[k] for r in rows) / len(rows) for k in ("efficacy", "paraphrase", "neighborhood")}

    with pytest.warns(KeyCollisionWarning):
        shared, got = means(records[:20])
    assert shared.info["key_collisions"][0] == [0, 1, 2, 3] and len(shared.info["key_collisions"]) == 5
    assert got["efficacy"] == pytest.approx(0.30, abs=0.05) and got["paraphrase"] == pytest.approx(0.43, abs=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeyCollisionWarning)
        _, got = means(distinct)
    assert got["efficacy"] == pytest.approx(1.0, abs=0.05) and got["paraphrase"] == pytest.approx(1.0, abs=0.05)


def test_editing_md_rome_preset_table(toy_model):
    """docs/editing.md: ROME with the toy world's own preset and with preset="paper" on 20 cases."""
    from interp_edit.evaluation import run_experiment

    expected = {None: (1.0, 1.0, 0.935), "paper": (1.0, 1.0, 0.95)}
    for preset, numbers in expected.items():
        res = run_experiment(toy_model, "toyworld-counterfact", "rome", n=20, unrelated=20, fluency=False, progress=False,
                             config={} if preset is None else {"preset": preset})
        s = res.summary()
        got = (s["efficacy_score"], s["paraphrase_score"], s["neighborhood_score"])
        assert got == pytest.approx(numbers, abs=0.03), preset
