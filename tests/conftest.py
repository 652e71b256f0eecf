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
