"""What an editor no longer redoes on every edit: the model's fingerprint is remembered while
the hashed tensors are unchanged (and hashed again when they change, however they change), and
the unedited model's context prefixes are sampled once per settings (as the authors' code keeps its
context templates), kept in the statistics store and dropped by ``clear_statistics_cache``; an
edited model's are sampled again, as before; temporary hooks remove only their own; the residual
entering a layer is read without running that layer; a config class's annotations are resolved
once."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

import interp_edit.editing.targets as targets
from interp_edit.adapter import architecture, forget_fingerprint, model_fingerprint
from interp_edit.adapter import params as params_module
from interp_edit.editing import rome
from interp_edit.editing.targets import context_prefixes
from interp_edit.statistics import clear_statistics_cache


def _hashed_now(model, rounded: bool = True) -> str:
    """The fingerprint computed from scratch (its definition, written out again here); with
    ``rounded=False`` as earlier versions computed it (the weights hashed as loaded, not as
    bfloat16 numbers)."""
    import dataclasses

    described = dataclasses.asdict(architecture(model))
    described.pop("norm_folded")
    for later, default in (("shared_norm", False), ("residual_multiplier", 1.0), ("input_norms", True),
                           ("qk_norm_whole", False)):
        if described[later] == default:
            described.pop(later)
    digest = hashlib.sha256(json.dumps([described, model.cfg.d_vocab, model.cfg.act_fn], sort_keys=True).encode())
    pos = model.W_pos if model.cfg.positional_embedding_type == "standard" else None
    for tensor in (model.W_E, pos, model.W_U):
        if tensor is not None:
            rows = tensor.detach()[:4096]
            rows = rows.to(torch.bfloat16) if rounded else rows
            digest.update(rows.to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def test_an_edit_recording_the_fingerprint_of_an_earlier_version_still_applies(toy_model, tmp_path):
    from interp_edit.editing import Edit, SparseRowDelta

    old = _hashed_now(toy_model, rounded=False)
    assert old != model_fingerprint(toy_model)
    delta = SparseRowDelta(torch.tensor([3]), torch.full((1, toy_model.cfg.d_model), 1e-3))
    Edit("ft", {"blocks.1.mlp.W_out": delta}, old).save(tmp_path / "old.safetensors")
    weight = toy_model.blocks[1].mlp.W_out.detach().clone()
    with Edit.load(tmp_path / "old.safetensors", toy_model).applied(toy_model):
        assert not torch.equal(toy_model.blocks[1].mlp.W_out, weight)
    assert torch.equal(toy_model.blocks[1].mlp.W_out, weight)


def _parameter_behind(model, tensor):
    return tensor if tensor._base is None else tensor._base


def _owner(model, parameter):
    """(module, attribute name) holding ``parameter``."""
    for name, p in model.named_parameters(remove_duplicate=False):
        if p is parameter:
            owner, _, leaf = name.rpartition(".")
            return model.get_submodule(owner), leaf
    raise LookupError("no module holds this parameter")


def test_the_fingerprint_is_remembered_while_the_weights_are_unchanged(toy_model, monkeypatch):
    forget_fingerprint(toy_model)
    first = model_fingerprint(toy_model)
    assert first == _hashed_now(toy_model)
    reads = []
    real = params_module._fingerprinted_weights
    monkeypatch.setattr(params_module, "_fingerprinted_weights", lambda m: reads.append(1) or real(m))
    assert model_fingerprint(toy_model) == first
    assert reads == []  # remembered: no tensor hashed again


def test_the_fingerprint_sees_every_change_of_the_hashed_weights(toy_model):
    forget_fingerprint(toy_model)
    before = model_fingerprint(toy_model)
    w_u = _parameter_behind(toy_model, toy_model.W_U)  # the bridge's W_U is a view of lm_head's weight
    owner, leaf = _owner(toy_model, w_u)
    view = toy_model.W_U
    old = view[0, 0].item()
    try:
        with torch.no_grad():  # in place, through the parameter
            toy_model.W_U[0, 0] += 1.0
        changed = model_fingerprint(toy_model)
        assert changed != before and changed == _hashed_now(toy_model)
        with torch.no_grad():
            toy_model.W_U[0, 0] = old
        assert model_fingerprint(toy_model) == before
        # a replaced parameter (another tensor, whatever its address and version)
        replaced = torch.nn.Parameter(w_u.detach().clone(), requires_grad=w_u.requires_grad)
        owner._parameters[leaf] = replaced
        with torch.no_grad():
            toy_model.W_U[1, 1] += 1.0
        assert model_fingerprint(toy_model) == _hashed_now(toy_model) != before
    finally:
        owner._parameters[leaf] = w_u
    del view
    assert model_fingerprint(toy_model) == before
    # through .data the counter does not move: forget_fingerprint is the documented way out
    w_e = _parameter_behind(toy_model, toy_model.W_E)
    old = w_e[0, 0].item()
    w_e.data[0, 0] += 1.0
    try:
        forget_fingerprint(toy_model)
        assert model_fingerprint(toy_model) == _hashed_now(toy_model) != before
    finally:
        w_e.data[0, 0] = old
        forget_fingerprint(toy_model)
    assert model_fingerprint(toy_model) == before


def test_context_prefixes_are_sampled_once_per_model_and_settings(toy_model, monkeypatch):
    clear_statistics_cache(toy_model)
    calls = []
    real = targets._sample_prefixes
    monkeypatch.setattr(targets, "_sample_prefixes", lambda *a, **k: calls.append(a[1:3]) or real(*a, **k))
    first = context_prefixes(toy_model, 4, 5)
    assert context_prefixes(toy_model, 4, 5) == first and len(calls) == 1
    other = context_prefixes(toy_model, 4, 6)  # other settings: sampled
    assert len(calls) == 2 and other != first
    context_prefixes(toy_model, 4, 5, seed=1)
    assert len(calls) == 3
    clear_statistics_cache(toy_model)
    again = context_prefixes(toy_model, 4, 5)
    assert len(calls) == 4 and again == first  # sampled again, seeded: the same texts


def test_an_edited_model_samples_its_own_prefixes_and_keeps_none(toy_model, person_records):
    """With an edit applied (in place or as hooks) the prefixes come from the edited model, as
    every edit before (the toy world's sequential numbers were measured so), and are not kept:
    what is kept is the unedited model's, whatever was called first."""
    clear_statistics_cache(toy_model)
    edit = rome(toy_model, person_records[:1], layer=1, steps=3, n_prefixes=2, prefix_length=4)
    clear_statistics_cache(toy_model)
    sample = lambda: targets._sample_prefixes(toy_model, 4, 6, 0, 5, starts=(), lengths=None,  # noqa: E731
                                              join="punctuate")
    edit.apply(toy_model)
    try:
        on_edited = context_prefixes(toy_model, 4, 6)
        assert on_edited == sample()
    finally:
        edit.undo(toy_model)
    with edit.hooked(toy_model):
        assert context_prefixes(toy_model, 4, 6) == on_edited  # the hooked edit: the same model
    base = context_prefixes(toy_model, 4, 6)
    assert base != on_edited and base == sample()  # nothing was kept from the edited model
    edit.apply(toy_model)
    try:
        assert context_prefixes(toy_model, 4, 6) == on_edited  # sampled again, not the kept base ones
    finally:
        edit.undo(toy_model)
    assert context_prefixes(toy_model, 4, 6) == base
    clear_statistics_cache(toy_model)


def test_temporary_hooks_remove_only_their_own(toy_model, monkeypatch):
    from interp_edit.adapter import hook_counts
    from interp_edit.adapter.hooks import temporary_hooks

    tokens = torch.tensor([[toy_model.tokenizer.bos_token_id, 5, 6, 7]])
    seen = []
    name = "blocks.0.hook_resid_post"
    user = lambda act, hook: seen.append("user")  # noqa: E731
    with toy_model.hooks(fwd_hooks=[(name, user)]):  # a user's own hook, around ours
        before = hook_counts(toy_model)
        monkeypatch.setattr(toy_model, "reset_hooks", lambda *a, **k: (_ for _ in ()).throw(AssertionError("reset")),
                            raising=False)
        with temporary_hooks(toy_model, [(name, lambda act, hook: seen.append("ours")),
                                         ("blocks.1.hook_resid_post", lambda act, hook: act * 0)]):
            zeroed = toy_model(tokens)
        try:
            with temporary_hooks(toy_model, [(name, lambda act, hook: 1 / 0)]):
                toy_model(tokens)
        except ZeroDivisionError:
            pass
        monkeypatch.undo()
        assert hook_counts(toy_model) == before  # ours gone (after an exception too), the user's kept
        seen.clear()
        plain = toy_model(tokens)
        assert seen == ["user"]
    assert not torch.allclose(zeroed, plain)  # the hook ran (and changed the output) while it was on


def test_the_residual_entering_a_layer_is_read_without_running_that_layer(toy_model):
    from interp_edit.adapter import residual_at_layer
    from interp_edit.adapter.bridge import is_bridge

    tokens = torch.tensor([[toy_model.tokenizer.bos_token_id, 5, 6, 7, 8]])
    seen: dict[str, torch.Tensor] = {}
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(toy_model.cfg.n_layers)]
    toy_model.run_with_hooks(tokens, fwd_hooks=[(n, lambda act, hook, n=n: seen.__setitem__(n, act.clone()))
                                                for n in names])
    for layer in range(toy_model.cfg.n_layers):
        ran = []
        with toy_model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_attn_out", lambda act, hook, ran=ran: ran.append(1))]):
            got = residual_at_layer(toy_model, tokens, layer)
        assert torch.equal(got, seen[f"blocks.{layer}.hook_resid_pre"]) and not got.requires_grad, layer
        if not is_bridge(toy_model):
            assert ran == [], f"block {layer} was run"
    # a hook on the point itself changes what the layer receives: it is read after that hook
    with toy_model.hooks(fwd_hooks=[("blocks.2.hook_resid_pre", lambda act, hook: act * 2)]):
        doubled = residual_at_layer(toy_model, tokens, 2)
    assert torch.equal(doubled, seen["blocks.2.hook_resid_pre"] * 2)


def test_a_config_class_annotations_are_resolved_once(toy_model, monkeypatch):
    import typing

    from interp_edit.editing.methods.finetune import FTConfig
    from interp_edit.errors import EditConfigError

    FTConfig.for_model(toy_model, steps=3)
    calls = []
    real = typing.get_type_hints
    monkeypatch.setattr(typing, "get_type_hints", lambda *a, **k: calls.append(a) or real(*a, **k))
    cfg = FTConfig.for_model(toy_model, steps=4, lr=0.5)
    assert calls == [] and cfg.steps == 4 and cfg.lr == 0.5
    with pytest.raises(EditConfigError, match="steps"):  # still checked
        FTConfig.for_model(toy_model, steps="4")


def test_statistics_recording_the_fingerprint_of_an_earlier_version_are_still_the_models(toy_model):
    from interp_edit.errors import StatisticsMismatchError
    from interp_edit.statistics import KeyStatistics
    from interp_edit.statistics.provenance import check_statistics

    d_mlp = toy_model.cfg.d_mlp
    from interp_edit.statistics.provenance import StatsProvenance

    stats = KeyStatistics(torch.eye(d_mlp, dtype=torch.float64), None)
    base = dict(site="mlp_post", layer=1, dim=d_mlp, corpus="test", corpus_hash="0", n_texts=1, n_tokens=10 * d_mlp,
                dtype="float64", source="computed")

    for fingerprint in (model_fingerprint(toy_model), _hashed_now(toy_model, rounded=False)):
        check_statistics(KeyStatistics(stats.moment, StatsProvenance(fingerprint, **base)), toy_model, "mlp_post", 1, what="stats")
    with pytest.raises(StatisticsMismatchError, match="are of another model"):
        check_statistics(KeyStatistics(stats.moment, StatsProvenance("0123456789abcdef", **base)), toy_model, "mlp_post", 1,
                         what="stats")


def test_a_lifelong_memory_recording_the_fingerprint_of_an_earlier_version_is_continued(toy_model, person_records):
    """GRACE's codebook (and WISE's side memory, through the same check) saved by an earlier
    version records the unrounded fingerprint; continuing it on the same model is allowed, and
    a memory of another model is still refused."""
    import dataclasses

    from interp_edit.editing.methods.grace import grace
    from interp_edit.errors import EditConfigError

    first = grace(toy_model, person_records[:1], n_iter=2)
    older = dataclasses.replace(first, model_fingerprint=_hashed_now(toy_model, rounded=False))
    assert older.model_fingerprint != model_fingerprint(toy_model)
    more = grace(toy_model, person_records[1:2], n_iter=2, memory=older)
    assert len(more.requests) == 2 and more.model_fingerprint == model_fingerprint(toy_model)
    other = dataclasses.replace(first, model_fingerprint="0123456789abcdef")
    with pytest.raises(EditConfigError, match="made for another model"):
        grace(toy_model, person_records[1:2], n_iter=2, memory=other)
