"""Shared fixtures: the shipped toy-world model and world are loaded once per test session."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def toy_model():
    from interp_edit import load_model

    return load_model("toyworld")


@pytest.fixture(scope="session")
def toy_world():
    from interp_edit.toyworld import load_world

    return load_world()


@pytest.fixture(scope="session")
def toy_metrics(toy_model, toy_world):
    from interp_edit.toyworld.evaluation import evaluate_toyworld

    return evaluate_toyworld(toy_model, toy_world)


@pytest.fixture(scope="session", autouse=True)
def _stats_cache(tmp_path_factory):
    """Key statistics are cached in a folder of this test session, not the user's cache."""
    import os

    from interp_edit.editing.stats import CACHE_ENV

    old = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("stats-cache"))
    yield
    if old is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = old


@pytest.fixture(scope="session")
def person_records(toy_world):
    """Toy-world CounterFact records about people, in a fixed shuffled order."""
    import random

    from interp_edit.toyworld import counterfact_records
    from interp_edit.toyworld.world import stable_seed

    records = [r for r in counterfact_records(toy_world) if r.relation_id in ("born_in", "profession", "speaks", "instrument")]
    random.Random(stable_seed("editing-tests")).shuffle(records)
    return records
