"""Memory budgets of the batched engines: a forward never holds more rows than fit in the
budget, the results do not depend on the budget, and a bad budget is a named error."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from interp_edit import activation_patch, average_indirect_effect, causal_trace, neuron_attribution
from interp_edit.batching import forward_row_bytes, resolve_memory_budget, rows_within
from interp_edit.errors import InvalidArgumentError

restore = importlib.import_module("interp_edit.analysis.restore")

CLEAN, CORRUPTED = "Talvik Corlo was born in", "Fenpas Astlo was born in"
SUBJECT, TARGET = "Talvik Corlo", " Vesmar"
HUGE = 10**15


def _fact(person_records, i=0):
    r = person_records[i]
    return r.prompt.format(r.subject), r.subject, r.target_true


@pytest.fixture
def forward_rows(monkeypatch):
    """The number of rows of every batched restoration forward."""
    rows = []
    real = restore.forward_from_layer

    def counting(model, residual, *args, **kwargs):
        rows.append(residual.shape[0])
        return real(model, residual, *args, **kwargs)

    monkeypatch.setattr(restore, "forward_from_layer", counting)
    return rows


def test_rows_within_the_budget():
    assert rows_within(1000, 100) == 10
    assert rows_within(999, 100) == 9
    assert rows_within(50, 100) == 1  # one row is the smallest unit
    assert rows_within(HUGE, 100, limit=7) == 7


def test_the_default_budget_is_a_share_of_the_free_memory():
    import psutil

    budget = resolve_memory_budget(None, "cpu")
    assert 0 < budget <= psutil.virtual_memory().total
    assert resolve_memory_budget(12345, "cpu") == 12345
    assert resolve_memory_budget(2e9, "cpu") == 2_000_000_000


def test_a_trace_under_a_tiny_budget_equals_one_under_a_large_one(toy_model, person_records, forward_rows):
    prompt, subject, target = _fact(person_records)
    large = causal_trace(toy_model, prompt, subject, target, samples=3, memory_budget=HUGE)
    assert max(forward_rows) > 3  # the large budget batches restorations and samples together
    forward_rows.clear()
    row = forward_row_bytes(toy_model, len(large.tokens), len(large.tokens), 1)
    two_rows = causal_trace(toy_model, prompt, subject, target, samples=3, memory_budget=2 * row)
    assert max(forward_rows) == 2  # fewer rows than samples: a restoration's samples are split
    forward_rows.clear()
    tiny = causal_trace(toy_model, prompt, subject, target, samples=3, memory_budget=1)
    assert set(forward_rows) == {1}
    for other in (two_rows, tiny):
        assert torch.allclose(other.scores, large.scores, atol=1e-6, rtol=0)
        assert other.clean_score == large.clean_score and other.corrupted_score == large.corrupted_score


def test_a_severed_trace_and_patching_do_not_depend_on_the_budget(toy_model, person_records, forward_rows):
    prompt, subject, target = _fact(person_records, 1)
    kw = dict(kinds=("hidden",), severed="mlp", samples=2)
    a = causal_trace(toy_model, prompt, subject, target, memory_budget=HUGE, **kw)
    b = causal_trace(toy_model, prompt, subject, target, memory_budget=1, **kw)
    assert torch.allclose(a.scores, b.scores, atol=1e-6, rtol=0)
    sites = ("resid_pre", "mlp_out", "head_out")
    forward_rows.clear()
    large = activation_patch(toy_model, CLEAN, CORRUPTED, sites=sites, memory_budget=HUGE)
    assert max(forward_rows) > 1
    forward_rows.clear()
    tiny = activation_patch(toy_model, CLEAN, CORRUPTED, sites=sites, memory_budget=1)
    assert set(forward_rows) == {1}
    for site in sites:
        assert torch.allclose(tiny.results[site], large.results[site], atol=1e-6, rtol=0), site


def test_aie_and_neuron_attribution_do_not_depend_on_the_budget(toy_model, person_records):
    facts = person_records[:3]
    a = average_indirect_effect(toy_model, facts, kinds=("mlp",), samples=2, progress=False, memory_budget=HUGE)
    b = average_indirect_effect(toy_model, facts, kinds=("mlp",), samples=2, progress=False, memory_budget=1)
    assert torch.allclose(a.effects.nan_to_num(), b.effects.nan_to_num(), atol=1e-6, rtol=0)
    prompt, _, target = _fact(person_records)
    big = neuron_attribution(toy_model, prompt, target, memory_budget=HUGE)
    small = neuron_attribution(toy_model, prompt, target, memory_budget=1)  # one neuron per projection
    assert torch.allclose(big.ffn_scores, small.ffn_scores, atol=1e-6, rtol=0)
    assert torch.allclose(big.attn_scores, small.attn_scores, atol=1e-6, rtol=0)


@pytest.mark.parametrize("budget", [0, -5, 0.0, math.nan, math.inf, "1GB", True, [100]])
def test_a_bad_budget_is_a_named_error_before_any_forward(toy_model, person_records, budget, monkeypatch):
    prompt, subject, target = _fact(person_records)

    def no_forward(*args, **kwargs):
        raise AssertionError("a forward ran")

    monkeypatch.setattr(type(toy_model), "forward", no_forward)
    calls = [
        lambda: causal_trace(toy_model, prompt, subject, target, memory_budget=budget),
        lambda: activation_patch(toy_model, CLEAN, CORRUPTED, memory_budget=budget),
        lambda: average_indirect_effect(toy_model, person_records[:2], memory_budget=budget, progress=False),
        lambda: neuron_attribution(toy_model, prompt, target, memory_budget=budget),
    ]
    for call in calls:
        with pytest.raises(InvalidArgumentError, match="memory_budget"):
            call()


def test_merged_forwards_stay_within_the_budget_and_equal_by_layer(toy_model, person_records, forward_rows):
    from interp_edit.batching import default_max_rows

    prompt, subject, target = _fact(person_records)
    kw = dict(samples=3, severed="mlp")
    by_layer = causal_trace(toy_model, prompt, subject, target, merge="by_layer", memory_budget=HUGE, **kw)
    n_by_layer = len(forward_rows)
    forward_rows.clear()
    merged = causal_trace(toy_model, prompt, subject, target, merge="all", memory_budget=HUGE, **kw)
    assert len(forward_rows) < n_by_layer  # kinds and layers share forwards
    assert torch.allclose(merged.scores, by_layer.scores, atol=1e-6, rtol=0)
    # the merged engine also holds the reused key/value prefix: a row costs at least forward_row_bytes
    row = forward_row_bytes(toy_model, len(merged.tokens), len(merged.tokens), 1)
    for rows in (1, 2, 7):
        forward_rows.clear()
        small = causal_trace(toy_model, prompt, subject, target, merge="all", memory_budget=rows * row, **kw)
        assert max(forward_rows) <= rows
        assert torch.allclose(small.scores, by_layer.scores, atol=1e-6, rtol=0)
    forward_rows.clear()
    patched = activation_patch(toy_model, CLEAN, CORRUPTED, sites=("resid_pre", "head_out"), merge="all", max_rows=5)
    assert max(forward_rows) <= 5
    reference = activation_patch(toy_model, CLEAN, CORRUPTED, sites=("resid_pre", "head_out"), merge="by_layer")
    for site in ("resid_pre", "head_out"):
        assert torch.allclose(patched.results[site], reference.results[site], atol=1e-5, rtol=0), site
    assert default_max_rows("cpu") == 1024 and default_max_rows("cuda") >= 8192
