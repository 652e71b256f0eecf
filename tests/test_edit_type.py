"""The Edit type: in-place apply and bitwise undo, hooks equal to in-place, composition in
sequence, save / load, fingerprints, summaries — for low-rank and sparse-row deltas."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from interp_edit.adapter import model_fingerprint
from interp_edit.editing import Edit, LowRankDelta, SparseRowDelta, applied_edits
from interp_edit.errors import CheckpointError, EditApplicationError

PROMPTS = ["As everyone knows, Talvik Corlo was born in", "Lisvo Pimlo speaks"]


def random_edit(model, seed: int, scale: float = 0.5) -> Edit:
    """Low-rank deltas of W_out (layer 1) and W_O (layer 2), sparse rows of W_out (layer 0)."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    deltas = {
        "blocks.1.mlp.W_out": LowRankDelta(torch.randn(cfg.d_mlp, 2, generator=g) * scale, torch.randn(2, cfg.d_model, generator=g)),
        "blocks.2.attn.W_O": LowRankDelta(torch.randn(cfg.n_heads * cfg.d_head, 3, generator=g) * scale,
                                          torch.randn(3, cfg.d_model, generator=g)),
        "blocks.0.mlp.W_out": SparseRowDelta(torch.tensor([3, 7, 11]), torch.randn(3, cfg.d_model, generator=g) * scale),
    }
    return Edit("test", deltas, model_fingerprint(model), {"seed": seed}, [{"prompt": "{} x", "subject": "s"}])


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(model, state):
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


def logits(model):
    return model(model.to_tokens(PROMPTS[0]))


def test_apply_changes_logits_and_undo_restores_bitwise(tiny_model):
    before, base = snapshot(tiny_model), logits(tiny_model)
    from interp_edit.adapter.params import get_parameter

    plain = get_parameter(tiny_model, "blocks.1.mlp.W_out").detach().clone()
    edit = random_edit(tiny_model, 0)
    edit.apply(tiny_model)
    try:
        assert applied_edits(tiny_model) == [edit]
        assert (logits(tiny_model) - base).abs().max() > 1e-2
        expected = plain + edit.deltas["blocks.1.mlp.W_out"].dense()
        assert torch.allclose(get_parameter(tiny_model, "blocks.1.mlp.W_out"), expected, atol=1e-6)
    finally:
        edit.undo(tiny_model)
    assert_same(tiny_model, before)
    assert applied_edits(tiny_model) == []


def test_hooked_equals_in_place_and_touches_no_weight(tiny_model):
    before = snapshot(tiny_model)
    edit = random_edit(tiny_model, 1)
    with edit.hooked(tiny_model):
        hooked = logits(tiny_model)
        assert_same(tiny_model, before)
    with edit.applied(tiny_model):
        in_place = logits(tiny_model)
    assert (hooked - in_place).abs().max() < 1e-5
    assert (hooked - logits(tiny_model)).abs().max() > 1e-2  # the hooks are gone afterwards
    assert all(not hp.fwd_hooks for hp in tiny_model.hook_dict.values())


def test_hooking_an_edit_applied_in_place_is_refused(tiny_model, tmp_path):
    """Hooks on top of the same deltas in the weights count them twice: refused for the edit
    and for a copy of it (the same content, loaded from a file); allowed again after undo."""
    e = random_edit(tiny_model, 5)
    e.save(tmp_path / "e.safetensors")
    copy = Edit.load(tmp_path / "e.safetensors", tiny_model)
    with e.applied(tiny_model):
        for which in (e, copy):
            with pytest.raises(EditApplicationError, match="hooking it as well would add its deltas twice"):
                with which.hooked(tiny_model):
                    pass
        assert not any(hp.fwd_hooks for hp in tiny_model.hook_dict.values())
    with e.hooked(tiny_model):
        pass


def test_edits_compose_and_undo_in_reverse_order_only(tiny_model):
    before = snapshot(tiny_model)
    first, second = random_edit(tiny_model, 2), random_edit(tiny_model, 3)
    first.apply(tiny_model)
    middle = snapshot(tiny_model)
    second.apply(tiny_model)
    with pytest.raises(EditApplicationError, match="reverse order"):
        first.undo(tiny_model)
    with pytest.raises(EditApplicationError, match="already applied"):
        second.apply(tiny_model)
    second.undo(tiny_model)
    assert_same(tiny_model, middle)
    first.undo(tiny_model)
    assert_same(tiny_model, before)
    with pytest.raises(EditApplicationError, match="not applied"):
        first.undo(tiny_model)


@settings(max_examples=15, deadline=None)
@given(seeds=st.lists(st.integers(0, 10_000), min_size=1, max_size=4, unique=True), scale=st.floats(1e-3, 10.0))
def test_any_sequence_of_edits_undoes_bitwise(tiny_model, seeds, scale):
    before = snapshot(tiny_model)
    edits = [random_edit(tiny_model, s, scale) for s in seeds]
    for edit in edits:
        edit.apply(tiny_model)
    for edit in reversed(edits):
        edit.undo(tiny_model)
    assert_same(tiny_model, before)


def test_applied_context_undoes_after_an_exception(tiny_model):
    before = snapshot(tiny_model)
    with pytest.raises(RuntimeError, match="boom"), random_edit(tiny_model, 4).applied(tiny_model):
        raise RuntimeError("boom")
    assert_same(tiny_model, before)


def test_save_and_load_round_trip(tiny_model, tmp_path):
    edit = random_edit(tiny_model, 5)
    path = edit.save(tmp_path / "my_edit")
    assert path.suffix == ".safetensors"
    loaded = Edit.load(path)
    assert loaded.method == "test" and loaded.config == {"seed": 5} and loaded.model_fingerprint == edit.model_fingerprint
    assert loaded.requests == edit.requests and loaded.library_version == edit.library_version
    for name, delta in edit.deltas.items():
        other = loaded.deltas[name]
        assert type(other) is type(delta)
        for key, tensor in delta.tensors().items():
            assert torch.equal(tensor, other.tensors()[key])
    with edit.applied(tiny_model):
        a = logits(tiny_model)
    with loaded.applied(tiny_model):
        assert torch.equal(a, logits(tiny_model))


@pytest.mark.parametrize("key, dtype", [("blocks.1.mlp.W_out::left", torch.float16), ("blocks.1.mlp.W_out::left", torch.int64),
                                        ("blocks.0.mlp.W_out::values", torch.int32)])
def test_a_delta_of_another_dtype_is_refused_at_load(tiny_model, tmp_path, key, dtype):
    """A factor cast to another dtype loaded, and the repr and apply failed in a matrix product."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = random_edit(tiny_model, 6).save(tmp_path / "ok")
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors[key] = tensors[key].to(dtype)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="bad.safetensors.*(dtype|value matrix)"):
        Edit.load(tmp_path / "bad.safetensors", tiny_model)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing edit file"):
        Edit.load(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        Edit.load(bad)


def test_an_edit_refuses_another_base_model(tiny_model, toy_model):
    edit = random_edit(tiny_model, 6)
    before = snapshot(toy_model)
    with pytest.raises(EditApplicationError, match="fingerprint"):
        edit.apply(toy_model)
    with pytest.raises(EditApplicationError, match="fingerprint"), edit.hooked(toy_model):
        pass
    assert_same(toy_model, before)


def test_fingerprint_is_stable_under_edits_and_differs_between_models(tiny_model, toy_model):
    fp = model_fingerprint(tiny_model)
    with random_edit(tiny_model, 7).applied(tiny_model):
        assert model_fingerprint(tiny_model) == fp
    assert model_fingerprint(toy_model) != fp


def test_fingerprint_tells_apart_families_whose_embeddings_coincide():
    """Tiny Llama-3 and Mistral built from one seed share every embedding and unembedding
    weight; their blocks differ. The fingerprint keys the key-statistics cache, so it must
    tell them apart (it names the architecture's family)."""
    from family_models import family_model

    from interp_edit.adapter.params import token_embeddings

    llama, mistral = family_model("llama3"), family_model("mistral")
    assert torch.equal(token_embeddings(llama), token_embeddings(mistral)) and torch.equal(llama.W_U, mistral.W_U)
    assert model_fingerprint(llama) != model_fingerprint(mistral)


def test_a_checkpoint_loaded_in_float32_or_bfloat16_has_one_fingerprint_and_takes_the_same_edits(toy_model):
    """An edit computed on the float32 toy model applies to the model loaded in bfloat16 (its
    embeddings differ by rounding: the fingerprint reads them as bfloat16 numbers); float16 and
    another checkpoint do not take it."""
    from interp_edit import load_model
    from interp_edit.adapter.params import token_embeddings

    bf16 = load_model("toyworld", dtype=torch.bfloat16)
    assert not torch.equal(token_embeddings(bf16).float(), token_embeddings(toy_model))
    assert model_fingerprint(bf16) == model_fingerprint(toy_model)
    edit = random_edit(toy_model, 3, scale=0.01)
    weight = bf16.blocks[1].mlp.W_out.detach().clone()
    with edit.applied(bf16):
        assert not torch.equal(bf16.blocks[1].mlp.W_out, weight)
    assert torch.equal(bf16.blocks[1].mlp.W_out, weight)
    with pytest.raises(EditApplicationError, match=r"fingerprint .* a float16 load or other weight processing"):
        edit.apply(load_model("toyworld", dtype=torch.float16))
    with pytest.raises(EditApplicationError):
        Edit(edit.method, edit.deltas, "0123456789abcdef", edit.config).apply(toy_model)


def test_summary_reports_layers_ranks_and_norms(tiny_model):
    edit = random_edit(tiny_model, 8)
    rows = {r["parameter"]: r for r in edit.summary(tiny_model)}
    assert edit.layers() == [0, 1, 2]
    assert rows["blocks.1.mlp.W_out"]["rank"] == 2 and rows["blocks.2.attn.W_O"]["rank"] == 3
    assert rows["blocks.0.mlp.W_out"]["kind"] == "sparse_rows" and rows["blocks.0.mlp.W_out"]["rows_touched"] == 3
    dense = edit.delta_matrix("blocks.1.mlp.W_out", tiny_model)
    assert rows["blocks.1.mlp.W_out"]["delta_norm"] == pytest.approx(float(dense.double().norm()), rel=1e-5)
    assert rows["blocks.1.mlp.W_out"]["relative_norm"] > 0
    assert "rank 2" in repr(edit)


def test_sparse_rows_must_be_distinct():
    with pytest.raises(ValueError, match="distinct"):
        SparseRowDelta(torch.tensor([1, 1]), torch.zeros(2, 4))


def steering_edit(model, seed: int = 0, layer: int = 1) -> Edit:
    from interp_edit.editing.hooks import AdditiveSteering

    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(seed))
    steer = AdditiveSteering(f"blocks.{layer}.hook_attn_out", vector, 0.7)
    return Edit("steer", {}, model_fingerprint(model), hooks={"a": steer})


def test_a_steering_edit_changes_no_weight_and_undoes_its_hook(tiny_model):
    from interp_edit.adapter import hook_counts, hook_name

    before, base = snapshot(tiny_model), logits(tiny_model)
    edit = steering_edit(tiny_model)
    assert not edit.changes_weights and edit.layers() == [1]
    with edit.applied(tiny_model):
        steered = logits(tiny_model)
        assert (steered - base).abs().max() > 1e-2
        assert_same(tiny_model, before)
        tiny_model.reset_hooks()  # the analyses' own hook handling does not remove it
        with tiny_model.hooks(fwd_hooks=[(hook_name("resid_post", 0), lambda a, hook: a)]):
            assert torch.equal(logits(tiny_model), steered)
        assert torch.equal(logits(tiny_model), steered)
    assert hook_counts(tiny_model) == {}
    assert torch.equal(logits(tiny_model), base)
    with edit.hooked(tiny_model):
        assert (logits(tiny_model) - steered).abs().max() < 1e-6
    assert hook_counts(tiny_model) == {}


def test_steering_and_weight_edits_stack_and_save(tiny_model, tmp_path):
    from interp_edit.adapter import hook_counts

    before, base = snapshot(tiny_model), logits(tiny_model)
    weights, steer = random_edit(tiny_model, 3), steering_edit(tiny_model, 1, layer=2)
    weights.apply(tiny_model)
    steer.apply(tiny_model)
    both = logits(tiny_model)
    with pytest.raises(EditApplicationError, match="reverse order"):
        weights.undo(tiny_model)
    steer.undo(tiny_model)
    weights.undo(tiny_model)
    assert_same(tiny_model, before)
    assert hook_counts(tiny_model) == {} and torch.equal(logits(tiny_model), base)
    loaded = Edit.load(steer.save(tmp_path / "steer"))
    assert list(loaded.hooks) == ["a"] and torch.equal(loaded.hooks["a"].vector, steer.hooks["a"].vector)
    with weights.applied(tiny_model), loaded.applied(tiny_model):
        assert torch.equal(logits(tiny_model), both)


def test_a_steering_hook_of_the_wrong_width_is_refused_and_nothing_is_added(tiny_model):
    from interp_edit.adapter import hook_counts
    from interp_edit.editing.hooks import AdditiveSteering

    bad = Edit("steer", {}, model_fingerprint(tiny_model),
               hooks={"a": AdditiveSteering("blocks.0.hook_attn_out", torch.zeros(tiny_model.cfg.d_model + 1))})
    with pytest.raises(EditApplicationError, match="width"):
        bad.apply(tiny_model)
    missing = Edit("steer", {}, model_fingerprint(tiny_model),
                   hooks={"a": AdditiveSteering("blocks.99.hook_attn_out", torch.zeros(tiny_model.cfg.d_model))})
    with pytest.raises(EditApplicationError, match="does not have"):
        missing.apply(tiny_model)
    assert hook_counts(tiny_model) == {} and applied_edits(tiny_model) == []


def test_sparse_rows_covering_the_matrix_apply_and_undo_as_any_rows(tiny_model):
    """Rows that are all the matrix's rows in order (FT-L's) are added without gathering them:
    the same weights as the same rows given out of order, an exact undo, a refused undo after a
    change, and ``changed="subtract"`` keeping it."""
    from interp_edit.adapter.params import get_parameter

    name, n = "blocks.0.mlp.W_out", tiny_model.cfg.d_mlp
    values = torch.randn(n, tiny_model.cfg.d_model, generator=torch.Generator().manual_seed(3)) * 0.1
    order = torch.randperm(n, generator=torch.Generator().manual_seed(4))
    covering = SparseRowDelta(torch.arange(n), values)
    shuffled = SparseRowDelta(order, values[order])
    assert covering.covers(n) and not shuffled.covers(n) and not SparseRowDelta(torch.arange(n - 1), values[1:]).covers(n)
    fingerprint = model_fingerprint(tiny_model)
    weight = get_parameter(tiny_model, name)
    before = weight.detach().clone()
    results = []
    for delta in (covering, shuffled):
        edit = Edit("test", {name: delta}, fingerprint).apply(tiny_model)
        results.append(weight.detach().clone())
        edit.undo(tiny_model)
        assert torch.equal(weight, before)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], before + values)
    edit = Edit("test", {name: covering}, fingerprint).apply(tiny_model)
    with torch.no_grad():
        weight[5, 2] += 1.0
    with pytest.raises(EditApplicationError, match="no longer hold"):
        edit.undo(tiny_model)
    edit.undo(tiny_model, changed="subtract")
    expected = before.clone()
    expected[5, 2] += 1.0
    assert torch.allclose(weight.detach(), expected, atol=1e-6)
    with torch.no_grad():
        weight.copy_(before)


def test_edits_alike_in_shape_but_not_in_content_stack(tiny_model):
    """Applying an edit hashes nothing unless an applied edit has the same method, base model and
    delta shapes; then the contents decide: equal is refused, different stacks."""
    first, second = random_edit(tiny_model, 0), random_edit(tiny_model, 1)
    hashed = []
    original = Edit.content_hash

    def counting(self):
        hashed.append(self)
        return original(self)

    Edit.content_hash = counting
    try:
        with first.applied(tiny_model):
            assert hashed == []  # nothing applied before it: no hash
            with second.applied(tiny_model):
                assert {id(e) for e in hashed} == {id(first), id(second)}
                assert applied_edits(tiny_model) == [first, second]
            copy = Edit(first.method, dict(first.deltas), first.model_fingerprint)
            with pytest.raises(EditApplicationError, match="same content"):
                copy.apply(tiny_model)
    finally:
        Edit.content_hash = original
    assert applied_edits(tiny_model) == []
