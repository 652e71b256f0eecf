"""Shared assertions that a model was left exactly as it was: weights bitwise, no hooks, no
applied edits."""

from __future__ import annotations

import contextlib

import torch

from interp_edit.adapter import hook_counts
from interp_edit.editing import applied_edits


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, state: dict[str, torch.Tensor], *, no_edits: bool = False) -> None:
    """Every tensor bitwise equal to ``state``, no hook left; with ``no_edits`` also no edit
    applied."""
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert hook_counts(model) == {}
    if no_edits:
        assert applied_edits(model) == []


@contextlib.contextmanager
def refused_before_any_forward(model):
    """``with refused_before_any_forward(model):`` — the block must not run the model (its
    forwards are counted at the embedding) and must leave it exactly as it was."""
    calls = []
    handle = model.embed.register_forward_pre_hook(lambda module, args: calls.append(1))
    state = snapshot(model)
    try:
        yield calls
    finally:
        handle.remove()
    assert calls == [], "a forward ran before the bad input was refused"
    assert_unchanged(model, state)


class StoppedRun(Exception):
    """Raised by :func:`stops_after_batch`: an experiment interrupted after a recorded batch."""


@contextlib.contextmanager
def stops_after_batch(batch: int):
    """Within the block, ``run_experiment`` raises :class:`StoppedRun` once batch ``batch`` is recorded."""
    from interp_edit.evaluation import runner

    def stop(done: int) -> None:
        if done == batch:
            raise StoppedRun(f"stopped after batch {done}")

    original = runner._after_batch
    runner._after_batch = stop
    try:
        yield
    finally:
        runner._after_batch = original
