"""The toy-world trainer, on a tiny configuration (a smoke test of the code path, not the
shipped model: that one is trained by `interp-edit toy train`, never in the test suite)."""

from __future__ import annotations

import pytest
import torch

from interp_edit.adapter.bridge import hooked_available
from interp_edit.errors import InvalidArgumentError
from interp_edit.toyworld.training import ToyModelConfig, ToyTrainConfig, learning_rate, train_toy_model

TINY = ToyTrainConfig(
    n_people=40, steps=3, batch_size=8, warmup_steps=1,
    model=ToyModelConfig(n_layers=1, d_model=16, n_heads=2, d_mlp=32, n_ctx=64),
)


@pytest.mark.skipif(hooked_available(), reason="TransformerLens 4 only")
def test_training_under_transformerlens_4_says_what_it_needs():
    with pytest.raises(InvalidArgumentError, match=r"needs TransformerLens 3\.x.*install transformer-lens<4"):
        train_toy_model(TINY, progress=False)


@pytest.mark.skipif(not hooked_available(), reason="the trainer builds a HookedTransformer (TransformerLens 3.x)")
def test_training_is_deterministic_and_keeps_the_unembedding_bias_at_zero():
    a, _, log_a = train_toy_model(TINY, progress=False, log_every=1)
    b, _, log_b = train_toy_model(TINY, progress=False, log_every=1)
    assert [e["loss"] for e in log_a] == [e["loss"] for e in log_b]
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name
    assert torch.count_nonzero(a.b_U) == 0
    assert not torch.are_deterministic_algorithms_enabled()  # the global setting is restored
    assert not torch.equal(a.W_E, train_toy_model(TINY.__class__(**{**TINY.__dict__, "seed": 1}), progress=False)[0].W_E)


def test_learning_rate_schedule():
    cfg = ToyTrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert learning_rate(0, cfg) == 0.1
    assert learning_rate(9, cfg) == 1.0
    assert abs(learning_rate(99, cfg) - 0.1) < 1e-3
    assert all(learning_rate(s, cfg) >= learning_rate(s + 1, cfg) for s in range(10, 99))
