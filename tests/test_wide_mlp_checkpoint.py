"""The wider-MLP toy-world checkpoint of issue 14 (tests/checkpoints/toyworld_dmlp2048): the
shipped world (seed 0, 400 people) and architecture except d_mlp 2048 (4 × the shipped 512),
trained by the project's own command, shorter than the shipped model (600 steps)::

    interp-edit toy train --out tests/checkpoints/toyworld_dmlp2048 --steps 600 --seed 0 \\
        --world-seed 0 --n-people 400 --d-mlp 2048 --threads 1

It exists for AlphaEdit's premise (preserved keys leave a null space): the README's sequential
table (``benchmarks/sequential_ordering.py --model tests/checkpoints/toyworld_dmlp2048``) and
the key covariance's spectrum. Marked slow (the suite's slow job)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from interp_edit.adapter import load_model
from interp_edit.batching import last_token_logits
from interp_edit.toyworld import WorldSpec, counterfact_records, world_of
from interp_edit.toyworld.world import stable_seed

pytestmark = pytest.mark.slow

CHECKPOINT = Path(__file__).parent / "checkpoints" / "toyworld_dmlp2048"


@pytest.fixture(scope="module")
def wide_model():
    return load_model(str(CHECKPOINT))


def test_it_is_the_shipped_world_with_a_wider_mlp(wide_model):
    meta = json.loads((CHECKPOINT / "config.json").read_text())
    assert wide_model.cfg.d_mlp == 2048 and wide_model.cfg.d_model == 128 and wide_model.cfg.n_layers == 6
    assert meta["training"]["steps"] == 600 and meta["training"]["model"]["d_mlp"] == 2048
    assert world_of(wide_model) == WorldSpec(0, 400).build()
    assert sum(f.stat().st_size for f in CHECKPOINT.iterdir()) <= 20 * 2**20


def test_it_knows_most_of_its_facts(wide_model):
    records = counterfact_records(world_of(wide_model))
    random.Random(stable_seed("wide-mlp-tests")).shuffle(records)
    sample = records[:200]
    logits = last_token_logits(wide_model, [r.prompt.format(r.subject) for r in sample])
    right = [wide_model.tokenizer.decode([int(i)]).strip() == r.target_true
             for i, r in zip(logits.argmax(-1), sample, strict=True)]
    # toy eval of this checkpoint (every fact x 19 training templates): fact_acc 0.719
    assert sum(right) / len(right) >= 0.6
