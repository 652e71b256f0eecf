"""IntAttn-Edit on the toy world: α = 0 is MEMIT on the same layers, α > 0 writes both W_O and
W_out and meets quality floors, traced α is recorded, and bad input leaves the model alone."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from model_state import assert_unchanged, snapshot

from interp_edit.analysis.layers import attention_mlp_balance
from interp_edit.analysis.tracing import causal_trace
from interp_edit.editing import Edit, EditRequest, IntAttnConfig, edit, get_editor, intattn, memit
from interp_edit.editing.methods.intattn import write_schedule
from interp_edit.errors import EditConfigError, EditRequestError, InvalidArgumentError
from interp_edit.evaluation.counterfact import counterfact_scores, mean_scores

intattn_module = importlib.import_module("interp_edit.editing.methods.intattn")

W_O = ("blocks.0.attn.W_O", "blocks.1.attn.W_O")
W_OUT = ("blocks.0.mlp.W_out", "blocks.1.mlp.W_out")


@pytest.fixture(scope="module")
def records(person_records):
    return person_records[:20]


@pytest.fixture(scope="module")
def joint_edit(toy_model, records):
    return intattn(toy_model, records, alpha=0.3)


def test_schedule_orders_writes_and_splits_alpha():
    steps = write_schedule((4, 5, 6, 7, 8), (2, 3, 4), 0.3)
    assert [(s.kind, s.layer) for s in steps] == [("attn", 2), ("attn", 3), ("attn", 4), ("mlp", 4), ("mlp", 5),
                                                  ("mlp", 6), ("mlp", 7), ("mlp", 8)]
    total = sum(s.weight for s in steps)
    assert math.isclose(sum(s.weight for s in steps if s.kind == "attn") / total, 0.3)
    assert [s.kind for s in write_schedule((0, 1), (0, 1), 0.0)] == ["mlp", "mlp"]
    assert [s.kind for s in write_schedule((0, 1), (0, 1), 1.0)] == ["attn", "attn"]


def test_alpha_zero_is_memit_on_the_same_layers(toy_model, records):
    plain = memit(toy_model, records[:8], layers=(0, 1), steps=6)
    joint = intattn(toy_model, records[:8], alpha=0.0, steps=6)
    # decided: α = 0 writes no W_O delta at all (not a zero one)
    assert sorted(joint.deltas) == sorted(plain.deltas) == sorted(W_OUT)
    for name in W_OUT:
        assert torch.allclose(joint.delta_matrix(name, toy_model), plain.delta_matrix(name, toy_model), atol=1e-6)
    assert joint.info["alpha"] == 0.0 and joint.info["alpha_source"] == "config"


def test_alpha_above_zero_writes_w_o_and_w_out_and_edits(toy_model, records, joint_edit):
    before = snapshot(toy_model)
    assert sorted(joint_edit.deltas) == sorted(W_O + W_OUT)
    assert joint_edit.method == "intattn"
    for name in W_O + W_OUT:
        assert joint_edit.delta_matrix(name, toy_model).norm() > 1.0, name
    shapes = {name: tuple(joint_edit.delta_matrix(name, toy_model).shape) for name in W_O + W_OUT}
    heads = toy_model.cfg.n_heads * toy_model.cfg.d_head
    assert shapes[W_O[0]] == (heads, toy_model.cfg.d_model)
    # the attention writes carry a real part of their share (1.17 / 0.67 measured); without them
    # the W_O deltas could be decoration
    attn = [w for w in joint_edit.info["writes"] if w["kind"] == "attn"]
    assert all(w["realised_fraction"] > 0.5 for w in attn), attn
    assert math.isclose(sum(w["weight"] for w in attn), 0.3)
    unedited = mean_scores(counterfact_scores(toy_model, records))
    with joint_edit.applied(toy_model):
        scores = mean_scores(counterfact_scores(toy_model, records))
        logits = toy_model(records[0].prompt.format(records[0].subject))
    # measured on these 20 requests: efficacy 0.95, paraphrase 0.98, neighbourhood 0.95 (unedited 0 / 0 / 1)
    assert unedited["efficacy"] <= 0.1
    assert scores["efficacy"] >= 0.85
    assert scores["paraphrase"] >= 0.80
    assert scores["neighborhood"] >= 0.85
    assert_unchanged(toy_model, before)
    with joint_edit.hooked(toy_model):  # the same edit by hooks (z -> attn_out for W_O)
        hooked = toy_model(records[0].prompt.format(records[0].subject))
    assert torch.allclose(logits, hooked, atol=1e-3)
    assert_unchanged(toy_model, before)


def test_traced_alpha_is_in_range_and_recorded(toy_model, records):
    before = snapshot(toy_model)
    result = intattn(toy_model, records[:4], alpha=None, trace_samples=3, steps=2)
    info = result.info
    assert info["alpha_source"] == "trace"
    assert 0.0 <= info["alpha"] <= 1.0
    per_request = info["traced_alpha"]["per_request"]
    assert len(per_request) + len(info["traced_alpha"]["skipped_requests"]) == 3
    assert math.isclose(info["alpha"], sum(per_request) / len(per_request))
    cfg = IntAttnConfig.for_model(toy_model)
    r = records[0]
    trace = causal_trace(toy_model, r.prompt.format(r.subject), r.subject, r.target_true, kinds=("mlp", "attn"),
                         noise=cfg.trace_noise, samples=cfg.trace_noise_samples, window=cfg.trace_window,
                         metric="logit_diff", foil=r.target_new, seed=cfg.seed)
    assert math.isclose(per_request[0], attention_mlp_balance(trace), rel_tol=1e-6)
    # both kinds matter on the toy model (measured: 0.58 over these 3 requests and over 10)
    assert 0.2 < info["alpha"] < 0.9
    assert sorted(result.deltas) == sorted(W_O + W_OUT)
    assert_unchanged(toy_model, before)


def test_untraceable_alpha_raises_naming_the_field(toy_model, records, monkeypatch):
    layers_module = importlib.import_module("interp_edit.analysis.layers")

    def no_effect(trace):
        raise InvalidArgumentError("no positive attention or MLP effect in the trace; alpha is undefined")

    monkeypatch.setattr(layers_module, "attention_mlp_balance", no_effect)
    before = snapshot(toy_model)
    with pytest.raises(EditConfigError, match=r"field 'alpha' is None \(traced\), but none of the traced requests \[0, 1\]"):
        intattn(toy_model, records[:3], alpha=None, trace_samples=2)
    assert_unchanged(toy_model, before)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(alpha=1.5), r"field 'alpha' must be in \[0, 1\].*1\.5"),
        (dict(alpha=-0.1), r"field 'alpha' must be in \[0, 1\]"),
        (dict(alpha=float("nan")), r"field 'alpha'"),
        (dict(mlp_layers=(0, 7)), r"field 'mlp_layers'.*out of range"),
        (dict(attn_layers=(1, 0)), r"field 'attn_layers' must be increasing"),
        (dict(attn_layers=()), r"field 'attn_layers'"),
        (dict(attn_layers=(0, 3)), r"field 'attn_layers'.*after the last MLP layer 1"),
        (dict(attn_mom2_update_weight=-1.0), r"field 'attn_mom2_update_weight'"),
        (dict(trace_metric="kl"), r"field 'trace_metric'"),
        (dict(trace_samples=0), r"field 'trace_samples'"),
    ],
)
def test_bad_config_names_the_field_and_leaves_the_model(toy_model, records, overrides, match):
    before = snapshot(toy_model)
    with pytest.raises(EditConfigError, match=match):
        intattn(toy_model, records[:2], **overrides)
    assert_unchanged(toy_model, before)


def test_bad_request_and_failure_midway_leave_the_model(toy_model, records, monkeypatch):
    before = snapshot(toy_model)
    bad = EditRequest("Talvik Corlo was born in", "Nobody Here", records[1].target_new)
    with pytest.raises(EditRequestError, match=r"request 1: field 'subject'.*Nobody Here"):
        intattn(toy_model, [records[0], bad], alpha=0.3)
    assert_unchanged(toy_model, before)
    calls = {"n": 0}
    real = intattn_module.values_at_edit_tokens

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # after the attention and MLP writes of layer 0 are in the weights
            raise RuntimeError("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(intattn_module, "values_at_edit_tokens", failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        intattn(toy_model, records[:3], alpha=0.3, steps=2)
    assert calls["n"] == 3
    assert_unchanged(toy_model, before)


def test_registry_apply_undo_bitwise_and_save(toy_model, records, joint_edit, tmp_path):
    assert get_editor("intattn").fn is intattn and get_editor("intattn").config_class is IntAttnConfig
    from interp_edit.adapter.params import get_parameter

    before = snapshot(toy_model)
    plain = {name: get_parameter(toy_model, name).detach().clone() for name in ("blocks.0.attn.W_O", "blocks.1.mlp.W_out")}
    with joint_edit.applied(toy_model):  # undone also when an assertion fails (the toy model is shared)
        for name, value in plain.items():
            assert not torch.equal(get_parameter(toy_model, name), value), name
    assert_unchanged(toy_model, before)
    via = edit(toy_model, records[:2], "intattn", alpha=0.5, steps=2)
    assert sorted(via.deltas) == sorted(W_O + W_OUT)
    assert_unchanged(toy_model, before)
    loaded = Edit.load(joint_edit.save(tmp_path / "intattn.safetensors"))
    assert loaded.method == "intattn" and loaded.config["alpha"] == 0.3
    for name in W_O + W_OUT:
        assert torch.equal(loaded.delta_matrix(name, toy_model), joint_edit.delta_matrix(name, toy_model))


def test_a_model_without_preset_gets_scaled_layers(tiny_model, records, tmp_path):
    """A 3-layer random model without a preset: the generic layers (MLP 0–1, attention 0), a
    corpus passed in for the statistics, the weights unchanged afterwards."""
    before = snapshot(tiny_model)
    corpus = [f"{r.prompt.format(r.subject)} {r.target_true}." for r in records] * 3
    result = intattn(tiny_model, records[:2], alpha=0.5, corpus=corpus, stats_samples=60, steps=2, n_prefixes=1,
                     prefix_length=4, cache_dir=tmp_path)
    assert (result.config["mlp_layers"], result.config["attn_layers"]) == ((0, 1), (0,))
    assert sorted(result.deltas) == ["blocks.0.attn.W_O", "blocks.0.mlp.W_out", "blocks.1.mlp.W_out"]
    assert tuple(result.delta_matrix("blocks.0.attn.W_O", tiny_model).shape) == (4 * 8, 32)
    assert_unchanged(tiny_model, before)
