"""``adapter.shared_first_norm``: a block's first norm computed once per input tensor, with the
forward bitwise as TransformerLens computes it, every ln1 hook firing as often as without it,
and the blocks as they were on leaving."""

from __future__ import annotations

import pytest
import torch
from family_models import BACKEND, FAMILY_NAMES, family_model

from interp_edit import load_model
from interp_edit.adapter import run_with_hooks, shared_first_norm
from interp_edit.adapter.shared_norm import _LastNorm, _SharedNorm

pytestmark = pytest.mark.skipif(BACKEND != "hooked", reason="the HookedTransformer block's three ln1 calls")


@pytest.fixture(scope="module")
def toy():
    return load_model("toyworld")


def _tokens(model, n=2, length=9):
    g = torch.Generator().manual_seed(0)
    return torch.randint(3, model.cfg.d_vocab, (n, length), generator=g)


def _count_norm_calls(model, monkeypatch):
    """Counts every computation of a block's ln1 (the class's forward, which the context wraps)."""
    calls = []
    firsts = {id(b.ln1) for b in model.blocks}
    for cls in {type(b.ln1) for b in model.blocks}:
        original = cls.forward

        def counting(self, *args, _original=original, **kwargs):
            if id(self) in firsts:
                calls.append(self)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", counting)
    return calls


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_forward_is_bitwise_the_same_on_every_family(family):
    model = family_model(family)
    tokens = _tokens(model)
    with torch.no_grad():
        plain = model(tokens)
        with shared_first_norm(model):
            shared = model(tokens)
    assert torch.equal(plain, shared)


def test_one_norm_per_block_and_restored_on_leaving(toy, monkeypatch):
    calls = _count_norm_calls(toy, monkeypatch)
    tokens = _tokens(toy)
    with torch.no_grad():
        toy(tokens)
        unshared = len(calls)
        calls.clear()
        with shared_first_norm(toy):
            toy(tokens)
        shared = len(calls)
    assert unshared == 3 * toy.cfg.n_layers  # TransformerLens: queries, keys, values
    assert shared == toy.cfg.n_layers
    for block in toy.blocks:
        assert "forward" not in vars(block.ln1)
    assert not toy._forward_pre_hooks


def test_restored_after_an_exception(toy):
    def fail(act, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), shared_first_norm(toy):
        run_with_hooks(toy, _tokens(toy), [("blocks.2.hook_resid_mid", fail)])
    assert not any("forward" in vars(block.ln1) for block in toy.blocks) and not toy._forward_pre_hooks


def test_hooks_on_the_norm_fire_as_without_it(toy):
    """A hook on ln1.hook_normalized fires three times per block and its change takes effect, as
    in TransformerLens' forward."""
    tokens = _tokens(toy)
    seen = []

    def scale(act, hook):
        seen.append(hook.name)
        return act * 1.5

    hooks = [("blocks.1.ln1.hook_normalized", scale)]
    with torch.no_grad(), toy.hooks(fwd_hooks=hooks):
        reference = toy(tokens)
    fired = len(seen)
    seen.clear()
    with torch.no_grad():
        ours = run_with_hooks(toy, tokens, hooks)  # inside shared_first_norm
    assert fired == 3 and len(seen) == fired
    assert torch.equal(reference, ours)


def test_only_the_last_call_is_kept_and_nothing_after_leaving(toy):
    """A forward keeps at most one norm's input and output longer than TransformerLens would (no
    activation of every layer), and nothing once the context is left."""
    with torch.no_grad(), shared_first_norm(toy):
        memos = {id(vars(b.ln1)["forward"].last) for b in toy.blocks}
        last = vars(toy.blocks[0].ln1)["forward"].last
        toy(_tokens(toy))
        assert len(memos) == 1 and last.entry[0] is toy.blocks[-1].ln1
    assert last.entry is None


def test_a_repeated_input_across_forwards_is_normalised_again():
    """The same residual tensor given to several forwards in one context (as an optimisation loop
    does): each forward normalises it again, so the weights it reads are the current ones, every
    backward has its own graph, and a no-grad forward's value is never reused with grad."""
    model = load_model("toyworld", fold_ln=False, center_writing_weights=False, center_unembed=False)
    start = torch.randn(1, 5, model.cfg.d_model)
    last = model.cfg.n_layers - 1  # a one-block forward: its norm is the last one called
    norm = model.blocks[last].ln1
    norm.w.requires_grad_(True)
    with shared_first_norm(model):
        with torch.no_grad():
            model(start, start_at_layer=last)
        for _ in range(2):  # two steps on the same input, each with its own backward
            model(start, start_at_layer=last).sum().backward()
        assert norm.w.grad is not None and norm.w.grad.abs().sum() > 0
        with torch.no_grad():
            norm.w.mul_(2.0)
            changed = model(start, start_at_layer=last)
    with torch.no_grad():
        assert torch.equal(changed, model(start, start_at_layer=last))


def test_an_input_changed_in_place_is_normalised_again(toy):
    norm = toy.blocks[0].ln1
    memo = _SharedNorm(norm, _LastNorm())
    x = torch.randn(1, 4, toy.cfg.d_model)
    first = memo(x)
    assert memo(x) is first
    other = torch.randn_like(x)  # another tensor, at the same version
    assert torch.equal(memo(other), norm(other))
    assert memo(x) is not first and torch.equal(memo(x), first)
    first = memo(x)
    x.mul_(2.0)
    again = memo(x)
    assert again is not first and torch.equal(again, norm(x))
    fresh = torch.randn_like(x, requires_grad=True)
    with torch.no_grad():
        assert memo(fresh).grad_fn is None
    assert memo(fresh).grad_fn is not None  # a no-grad value is not reused with grad


def test_split_attention_inputs_are_unchanged(toy):
    """With use_split_qkv_input (the circuits engine's edge hooks) the three inputs are different
    tensors: each is normalised (a hook that moves the keys' input alone is seen by the keys
    alone), and the forward is the same."""
    tokens = _tokens(toy)
    hooks = [("blocks.1.hook_k_input", lambda act, hook: act * 3.0)]
    toy.set_use_split_qkv_input(True)
    try:
        with torch.no_grad():
            with toy.hooks(fwd_hooks=hooks):
                plain = toy(tokens)
            shared = run_with_hooks(toy, tokens, hooks)
            unhooked = toy(tokens)
    finally:
        toy.set_use_split_qkv_input(False)
    assert torch.equal(plain, shared) and not torch.equal(plain, unhooked)


def test_gradients_agree(toy):
    """The backward sums the three branches before the norm instead of after: float32 rounding."""
    tokens = _tokens(toy)
    weight = toy.blocks[0].mlp.W_out

    def grad(shared):
        weight.grad = None
        with torch.enable_grad():
            if shared:
                with shared_first_norm(toy):
                    loss = toy(tokens).logsumexp(-1).sum()
            else:
                loss = toy(tokens).logsumexp(-1).sum()
            loss.backward()
        g = weight.grad.clone()
        weight.grad = None
        return g

    was = weight.requires_grad
    weight.requires_grad_(True)
    try:
        plain, shared = grad(False), grad(True)
    finally:
        weight.requires_grad_(was)
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-6)


def test_the_adapter_forwards_share_the_norm(toy, monkeypatch):
    """``run_with_hooks`` / ``run_with_cache`` / the partial forwards run inside the context."""
    from interp_edit.adapter import residual_at_layer, residual_from_layer, run_with_cache

    calls = _count_norm_calls(toy, monkeypatch)
    tokens = _tokens(toy)
    n = toy.cfg.n_layers
    with torch.no_grad():
        run_with_hooks(toy, tokens, [])
        run_with_cache(toy, tokens, ["blocks.0.hook_resid_post"])
        start = residual_at_layer(toy, tokens, 2)
        residual_from_layer(toy, start, 2)
    assert len(calls) == n + n + 2 + (n - 2)
