"""Attention weights stored in the order HookedTransformer's forward reads them
(:mod:`interp_edit.adapter.layout`): every hooked load lays them out so, the forward then copies
no weight, and its results are bit for bit those of the contiguous layout (the toy model and
every family: grouped keys, parallel blocks, post-norms); edits of ``W_O`` and their undo work
on the layout; exported weights are contiguous."""

from __future__ import annotations

import copy

import pytest
import torch
from family_models import BACKEND, FAMILY_NAMES, family_model
from torch.utils._python_dispatch import TorchDispatchMode

from interp_edit.adapter import attention_layout_is_read_order, model_fingerprint, store_attention_as_read
from interp_edit.adapter.layout import READ_ORDER, as_stored

pytestmark = pytest.mark.skipif(BACKEND != "hooked", reason="the hooked backend's HookedTransformer weights")


class _WeightCopies(TorchDispatchMode):
    """Counts the copies an op makes of a tensor with as many elements as a given weight."""

    def __init__(self, sizes):
        super().__init__()
        self.sizes, self.count = set(sizes), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket in (torch.ops.aten.clone, torch.ops.aten.copy_, torch.ops.aten._to_copy,
                                   torch.ops.aten._unsafe_view, torch.ops.aten.contiguous):
            if isinstance(out, torch.Tensor) and out.dim() == 2 and out.numel() in self.sizes:
                self.count += 1
        return out


def _attention_weights(model):
    return [(b, name, p) for b, block in enumerate(model.blocks) for name, p in block.attn._parameters.items()
            if name in READ_ORDER and p is not None]


def _contiguous_copy(model):
    """The same model with every attention weight contiguous in its own shape (TransformerLens' layout)."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        for _, _, p in _attention_weights(other):
            p.data = p.data.contiguous()
    assert not attention_layout_is_read_order(other)
    return other


def _weight_copies(model, tokens) -> int:
    sizes = {p.numel() for _, _, p in _attention_weights(model)}
    with torch.no_grad(), _WeightCopies(sizes) as counter:
        model(tokens)
    return counter.count


def test_the_toy_model_loads_laid_out_and_its_forward_copies_no_weight(toy_model):
    assert attention_layout_is_read_order(toy_model)
    tokens = toy_model.to_tokens(["The capital of France is", "Ada Lovelace was born in"])
    assert _weight_copies(toy_model, tokens) == 0
    plain = _contiguous_copy(toy_model)
    # the contiguous layout copies the four attention weights of every layer (the counter can fail)
    assert _weight_copies(plain, tokens) == 4 * toy_model.cfg.n_layers
    with torch.no_grad():
        assert torch.equal(toy_model(tokens), plain(tokens))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_family_loads_laid_out_with_the_contiguous_layouts_logits(family):
    model = family_model(family)
    assert attention_layout_is_read_order(model)
    assert {name for _, name, _ in _attention_weights(model)} >= {"W_Q", "W_O"}
    tokens = model.to_tokens(["The capital of France is", "Paris is the capital of"])
    assert _weight_copies(model, tokens) == 0
    with torch.no_grad():
        assert torch.equal(model(tokens), _contiguous_copy(model)(tokens))


def test_relayout_keeps_parameters_shapes_and_values(toy_model):
    plain = _contiguous_copy(toy_model)
    before = {(b, n): (p, p.detach().clone()) for b, n, p in _attention_weights(plain)}
    store_attention_as_read(plain)
    assert attention_layout_is_read_order(plain)
    for b, n, p in _attention_weights(plain):
        same, values = before[(b, n)]
        assert p is same and p.shape == values.shape and torch.equal(p, values)
    ptrs = [p.data_ptr() for _, _, p in _attention_weights(plain)]
    store_attention_as_read(plain)  # twice: nothing copied, still the same values
    assert [p.data_ptr() for _, _, p in _attention_weights(plain)] == ptrs
    assert all(torch.equal(p, before[(b, n)][1]) for b, n, p in _attention_weights(plain))


def test_as_stored_lays_out_attention_weights_and_leaves_others_contiguous():
    w = torch.randn(4, 32, 8)
    for name, order in (("blocks.2.attn.W_Q", (0, 2, 1)), ("blocks.2.attn._W_V", (0, 2, 1)), ("blocks.2.attn.W_O", (2, 0, 1))):
        out = as_stored(name, w)
        assert torch.equal(out, w) and out.permute(order).is_contiguous() and not out.is_contiguous()
        assert as_stored(name, out).data_ptr() == out.data_ptr()  # already laid out: no copy
    for name in ("blocks.2.mlp.W_in", "W_Q", "blocks.2.attn.b_Q"):
        out = as_stored(name, w.transpose(0, 1))
        assert out.is_contiguous() and torch.equal(out, w.transpose(0, 1))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_streamed_folder_load_is_laid_out(family, tmp_path):
    from family_models import family_hf, toy_tokenizer

    from interp_edit import load_model

    family_hf(family).save_pretrained(tmp_path)
    toy_tokenizer().save_pretrained(tmp_path)
    model = load_model(str(tmp_path), backend="hooked")
    assert attention_layout_is_read_order(model)
    with torch.no_grad():
        tokens = model.to_tokens("The capital of France is")
        assert torch.equal(model(tokens), family_model(family)(tokens))


def test_dtype_and_device_moves_keep_the_layout(toy_model):
    model = copy.deepcopy(toy_model)
    model.to(torch.float64)
    assert attention_layout_is_read_order(model)


def test_an_edit_of_w_o_changes_and_restores_the_laid_out_weight(toy_model):
    from interp_edit.editing import Edit
    from interp_edit.editing.edit import LowRankDelta

    w_o = toy_model.blocks[1].attn.W_O
    before = w_o.detach().clone()
    rows = toy_model.cfg.n_heads * toy_model.cfg.d_head
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(rows, 1, generator=g) * 0.1, torch.randn(1, toy_model.cfg.d_model, generator=g) * 0.1
    edit = Edit("manual", {"blocks.1.attn.W_O": LowRankDelta(u, v)}, model_fingerprint(toy_model))
    expected = before + (u @ v).view(before.shape)
    applied = edit.apply(toy_model)
    try:
        assert torch.allclose(w_o, expected, atol=1e-7, rtol=0)
        assert attention_layout_is_read_order(toy_model)
    finally:
        applied.undo(toy_model)
    assert torch.equal(w_o, before)


def test_exported_weights_are_contiguous(toy_model):
    from interp_edit import to_hf

    hf, _ = to_hf(toy_model)
    assert all(p.is_contiguous() for p in hf.state_dict().values())
