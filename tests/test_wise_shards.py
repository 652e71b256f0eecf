"""WISE beyond one shard (the authors' save_freq / merge_freq, TIES merging and retrieval among
memories): the merge against a hand re-statement of TIES in numpy, a sequence crossing save and
merge boundaries on the toy model (memory count, floors, masks, shards trained from W_out, the
merged memory against the hand TIES of the unmerged shards), the retrieval rule against one
written here (and on the toy model: edited prompts go to their own shard's memory, the routed
output is that memory's), save / load, undo, continuation across a boundary equal to one call,
and bad settings refused before any compute."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from model_state import assert_unchanged, refused_before_any_forward, snapshot

from interp_edit.editing import Edit
from interp_edit.editing.methods.wise import gradient_mask, merge_deltas, shard_mask, wise
from interp_edit.editing.wise_memory import WiseSideMemory
from interp_edit.errors import EditConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
SHARDS = dict(save_freq=2, merge_freq=4, n_iter=3)


def hand_ties(deltas, density, weight, trim=True, elect=True, normalize=True):
    """TIES written out per entry in numpy: keep each vector's int(density·n) largest |values|,
    elect the sign of the weighted sum, weighted mean of the entries of that sign."""
    arrays = [np.asarray(d, dtype=np.float64).ravel() for d in deltas]
    w = weight / len(arrays)
    kept = []
    for a in arrays:
        out = np.zeros_like(a)
        if trim and density < 1:
            top = np.argsort(-np.abs(a), kind="stable")[: int(density * a.size)]
            out[top] = a[top]
        else:
            out[:] = a
        kept.append(out)
    result = np.zeros_like(arrays[0])
    for j in range(result.size):
        values = [w * k[j] for k in kept]
        if elect:
            sign = 1.0 if sum(values) >= 0 else -1.0
            chosen = [v for v in values if np.sign(v) == sign]
            total, mass = sum(chosen), w * len(chosen)
        else:
            total, mass = sum(values), w * len(values)
        result[j] = total / (mass if mass else 1.0) if normalize else total
    return result.reshape(np.asarray(deltas[0]).shape)


@pytest.mark.parametrize("alg, trim, elect, normalize", [
    ("ties", True, True, True), ("magnitude", True, False, False), ("magnitude_norm", True, False, True),
    ("sign", False, True, True)])
def test_merge_against_a_hand_ties(alg, trim, elect, normalize):
    gen = torch.Generator().manual_seed(0)
    for n, density, weight in ((2, 0.53, 1.0), (3, 0.3, 0.7), (1, 0.5, 1.0)):
        deltas = [torch.randn(9, 7, generator=gen, dtype=torch.float64) for _ in range(n)]
        ours = merge_deltas(deltas, alg, density, weight)
        want = hand_ties([d.numpy() for d in deltas], density, weight, trim, elect, normalize)
        assert np.allclose(ours.numpy(), want, rtol=1e-12, atol=1e-14), (alg, n)
    # by hand: trimmed to 2 of 3 ([3, 0, 1], [0, 2, −2]); the last entry elects − by mass (1 − 2 < 0)
    two = merge_deltas([torch.tensor([3.0, -0.5, 1.0]), torch.tensor([-1.0, 2.0, -2.0])], "ties", 0.67)
    assert torch.allclose(two, torch.tensor([3.0, 2.0, -2.0]))


@pytest.fixture(scope="module")
def facts(distinct_subject_records):
    return distinct_subject_records[:8]


@pytest.fixture(scope="module")
def edit7(toy_model, facts):
    return wise(toy_model, facts[:7], **SHARDS)


@pytest.fixture(scope="module")
def unmerged(toy_model, facts):
    """The same shards, never merged (merge_freq beyond the run)."""
    return wise(toy_model, facts[:7], save_freq=2, merge_freq=8, n_iter=3)


def test_shards_saved_and_merged_as_the_code(toy_model, edit7, unmerged):
    hook, plain = edit7.hooks["layer4"], unmerged.hooks["layer4"]
    in_scope = edit7.info["in_scope"]
    assert hook.n_edits == 7 and hook.n_memories == 2 and plain.n_memories == 3
    assert edit7.info["saved_at"] == [2, 4, 6] and edit7.info["merged_at"] == [4]
    # floors: the merged memory's is its shards' least; the current shard's its own edit's
    assert hook.memory_floors == (min(in_scope[:4]), min(in_scope[4:6])) and hook.activation_floor == in_scope[6]
    assert plain.memory_floors == (min(in_scope[:2]), min(in_scope[2:4]), min(in_scope[4:6]))
    # each shard trains from W_out with its own mask: merging changes nothing that follows
    assert torch.equal(hook.memories[1], plain.memories[2]) and torch.equal(hook.delta, plain.delta)
    shape = tuple(hook.delta.shape)
    masks = [shard_mask(shape, 0.2, 0, k) for k in range(4)]
    assert torch.equal(masks[0], gradient_mask(shape, 0.2, 0)) and torch.equal(hook.mask, masks[3])
    assert not torch.equal(masks[1], masks[0]) and bool((masks[1] & masks[0]).any())  # independent draws, overlapping
    for k, memory in enumerate(plain.memories):  # shard k moved its own mask's entries; the rest by weight decay only
        moved = memory.abs()
        assert moved[~masks[k]].max() < 0.05 * moved[masks[k]].max()
    # the merged memory is TIES of the two shards (density 0.53, weight 1), by the hand re-statement
    shards = [plain.memories[0].double().numpy(), plain.memories[1].double().numpy()]
    want = hand_ties(shards, 0.53, 1.0)
    close = np.isclose(hook.memories[0].double().numpy(), want, rtol=1e-5, atol=1e-7)
    # float32 weight decay leaves exact magnitude ties: at the trimming cut, which of them is kept is
    # the sort's choice (torch.topk, as the code; numpy's stable argsort here) — only those may differ
    cut = [np.abs(x) == np.sort(np.abs(x).ravel())[::-1][int(0.53 * x.size) - 1] for x in shards]
    assert close[~(cut[0] | cut[1])].all() and (~close).sum() < 0.01 * close.size


def _cache(model, hook, text):
    with torch.no_grad():
        _, cache = model.run_with_cache(model.to_tokens(text), names_filter=lambda n: n in (hook.input_hook, hook.hook_name))
    return cache[hook.input_hook], cache[hook.hook_name]


def test_retrieval_rule():
    """The code's rule: the running best starts at the current shard's score (even under its
    threshold); a memory takes over when above both the best and its own threshold."""
    a, out = torch.tensor([[[1.0, 0.0]]]), torch.zeros(1, 1, 2)

    def hook(current, memories, floor, floors):
        mem = torch.stack([torch.tensor([[m, 0.0], [0.0, 0.0]]) for m in memories])
        return WiseSideMemory("blocks.0.hook_mlp_out", torch.tensor([[current, 0.0], [0.0, 0.0]]), floor, 1.0, "relu",
                              memories=mem, memory_floors=tuple(floors))

    assert int(hook(2.0, [1.0, 3.0], 1.5, (0.5, 0.5)).retrieve(a, out)) == 1     # the largest score
    assert int(hook(2.0, [1.0, 3.0], 1.5, (0.5, 3.0)).retrieve(a, out)) == 2     # 3 is not > its threshold 3: current
    assert int(hook(2.0, [1.8], 5.0, (1.0,)).retrieve(a, out)) == -1             # 1.8 under the current's 2: main
    assert int(hook(0.0, [1.8, 1.8], math.inf, (1.0, 1.0)).retrieve(a, out)) == 0  # ties: the earlier memory
    routed = hook(0.0, [1.0, 3.0], math.inf, (0.5, 0.5)).route(a, out)
    assert torch.equal(routed, torch.tensor([[[3.0, 0.0]]]))


def test_edited_prompts_retrieve_their_own_shard(toy_model, facts, person_records, edit7):
    hook = edit7.hooks["layer4"]
    want = [0, 0, 0, 0, 1, 1, 2]  # merged shards 1-2, shard 3, the current shard
    w_out, b_out = toy_model.blocks[4].mlp.W_out.detach(), toy_model.blocks[4].mlp.b_out.detach()
    for r, index in zip(facts[:7], want, strict=True):
        a, out = _cache(toy_model, hook, r.prompt.format(r.subject))
        choice = hook.retrieve(a, out)
        assert (choice == index).all(), (r.subject, choice.tolist())
        delta = hook.memories[index] if index < hook.n_memories else hook.delta
        assert torch.allclose(hook.route(a, out), a @ (w_out + delta) + b_out, atol=1e-5)
    # with every threshold above every score, nothing is routed: the main memory's output bit for bit
    # (at this scale the merged memory, floor = its shards' least, takes most unrelated prompts too)
    from dataclasses import replace

    high = Edit("wise", {}, edit7.model_fingerprint, edit7.config, edit7.requests, edit7.info, hooks={"layer4": replace(
        hook, activation_floor=1e6, memory_floors=(1e6,) * hook.n_memories)})
    texts = [r.prompt.format(r.subject) for r in facts[:7] + person_records[300:303]]
    with torch.no_grad():
        before = [toy_model(toy_model.to_tokens(t)) for t in texts]
        with high.applied(toy_model):
            after = [toy_model(toy_model.to_tokens(t)) for t in texts]
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))


@pytest.mark.parametrize("n", [7, 8])  # 8: the current shard is empty (floor inf, no mask)
def test_save_load_and_undo(toy_model, facts, edit7, tmp_path, n):
    edit = edit7 if n == 7 else wise(toy_model, facts[:8], **SHARDS)
    hook = edit.hooks["layer4"]
    if n == 8:
        assert hook.n_memories == 2 and hook.mask is None and hook.activation_floor == math.inf
        assert not hook.delta.any()
    texts = [r.prompt.format(r.subject) for r in facts[:n]]
    state = snapshot(toy_model)
    with torch.no_grad():
        plain = [toy_model(toy_model.to_tokens(t))[0, -1] for t in texts]
        with edit.applied(toy_model):
            edited = [toy_model(toy_model.to_tokens(t))[0, -1] for t in texts]
    assert_unchanged(toy_model, state, no_edits=True)
    assert all(not torch.equal(x, y) for x, y in zip(plain, edited, strict=True))
    loaded = Edit.load(edit.save(tmp_path / "wise"), toy_model)
    back = loaded.hooks["layer4"]
    assert loaded.content_hash() == edit.content_hash() and back.memory_floors == hook.memory_floors
    assert torch.equal(back.memories, hook.memories) and back.activation_floor == hook.activation_floor
    with torch.no_grad(), loaded.applied(toy_model):
        assert all(torch.equal(toy_model(toy_model.to_tokens(t))[0, -1], e) for t, e in zip(texts, edited, strict=True))
    assert_unchanged(toy_model, state, no_edits=True)
    # the memories are part of what the edit does
    from dataclasses import replace

    other = Edit("wise", {}, edit.model_fingerprint, edit.config, edit.requests, edit.info,
                 hooks={"layer4": replace(hook, memory_floors=(hook.memory_floors[0] + 1.0, *hook.memory_floors[1:]))})
    assert other.content_hash() != edit.content_hash()


@pytest.mark.parametrize("split", [3, 4, 5])
def test_continuation_across_a_boundary_equals_one_call(toy_model, facts, edit7, split):
    first = wise(toy_model, facts[:split], **SHARDS)
    more = wise(toy_model, facts[split:7], memory=first, **SHARDS)
    got, want = more.hooks["layer4"], edit7.hooks["layer4"]
    assert len(more.requests) == 7 and got.n_edits == 7 and more.info["merged_at"] == ([4] if split < 4 else [])
    if split % SHARDS["save_freq"] == 0:  # at a boundary the held shard is saved as trained: the same memory
        assert more.content_hash() == edit7.content_hash()
    else:  # mid-shard the held W_side − W_out is added back to W_out: float32 rounding of the trajectory
        assert got.n_memories == want.n_memories and torch.equal(got.mask, want.mask)
        assert torch.allclose(got.memories, want.memories, atol=1e-4) and torch.allclose(got.delta, want.delta, atol=1e-4)
        assert got.memory_floors == pytest.approx(want.memory_floors, rel=1e-4)


def test_bad_settings_are_refused_before_any_compute(toy_model, facts, edit7):
    for fields, match in [(dict(save_freq=2, merge_freq=3), "merge_freq"), (dict(merge_alg="dare_ties"), "not implemented"),
                          (dict(merge_alg="mean"), "merge_alg"), (dict(densities=0.0), "densities"),
                          (dict(densities=1.5), "densities"), (dict(weights=0.0), "weights"),
                          (dict(retrieve=False), "retrieve"), (dict(densities=1e-9), "keeps no entry")]:
        with refused_before_any_forward(toy_model), pytest.raises(EditConfigError, match=match):
            wise(toy_model, facts[:2], **fields)
    for fields, match in [(dict(SHARDS, merge_freq=8), "merge_freq"), (dict(SHARDS, save_freq=4), "save_freq")]:
        with refused_before_any_forward(toy_model), pytest.raises(EditConfigError, match=match):
            wise(toy_model, facts[7:8], memory=edit7, **fields)
