"""GRACE (a key-value codebook at one layer, a hooked activation edit): edited prompts give
the new targets, prompts far from every key are bitwise unchanged, the authors' codebook rules
(new key, split radii on a conflict, coverage on the same target) and replacement scopes, the
value training against a plain Adam loop written here, several requests in one codebook,
save / load, bitwise undo, and bad input refused before any compute."""

from __future__ import annotations

import pytest
import torch
from model_state import StoppedRun, assert_unchanged, refused_before_any_forward, snapshot, stops_after_batch

from interp_edit.editing import Edit, EditRequest, get_editor
from interp_edit.editing.methods.grace import GraceCodebook, GRACEConfig, build_codebook, grace, lost_requests
from interp_edit.errors import EditConfigError, EditRequestError, KeyCollisionWarning
from interp_edit.evaluation.counterfact import counterfact_scores, mean_scores

#: small models: one thread is faster than two on this 2-core machine shared with other jobs
pytestmark = pytest.mark.usefixtures("one_thread")


def _last_logits(model, texts):
    with torch.no_grad():
        return torch.cat([model(model.to_tokens(t))[0, -1:] for t in texts])


@pytest.fixture(scope="module")
def facts(person_records):
    """30 person facts with distinct prompts (the codebook keys on the last prompt token)."""
    out, seen = [], set()
    for r in person_records[100:]:
        text = r.prompt.format(r.subject)
        if text not in seen:
            seen.add(text)
            out.append(r)
        if len(out) == 30:
            return out


@pytest.fixture(scope="module")
def edit30(toy_model, facts):
    return grace(toy_model, facts)  # the toy-world preset: layer 3's MLP output, ε 3, warm values


def test_edited_prompts_give_the_new_targets(toy_model, facts, edit30):
    assert edit30.config["preset"] == "toyworld" and not edit30.changes_weights
    assert edit30.info["n_keys"] == len(facts) and edit30.layers() == [3]
    unedited = mean_scores(counterfact_scores(toy_model, facts))
    with edit30.applied(toy_model):
        scores = mean_scores(counterfact_scores(toy_model, facts))
        top = _last_logits(toy_model, [r.prompt.format(r.subject) for r in facts[:5]]).argmax(-1)
    assert [toy_model.tokenizer.decode(t).strip() for t in top] == [r.target_new for r in facts[:5]]
    # docs/editing.md: efficacy 1.000, paraphrase 0.753, neighbourhood 0.990 (unedited 1.000)
    assert scores["efficacy"] == 1.0
    assert scores["paraphrase"] == pytest.approx(0.753, abs=0.034)
    assert scores["neighborhood"] == pytest.approx(0.990, abs=0.011) and unedited["neighborhood"] == 1.0


def test_a_prompt_far_from_every_key_is_bitwise_unchanged(toy_model, facts, edit30):
    hook = edit30.hooks["layer3"]
    subjects = {r.subject for r in facts}
    far = ["Zellen Hul plays the", "The capital of Norvania is"]
    assert not any(s in t for s in subjects for t in far)
    with torch.no_grad():
        _, cache = toy_model.run_with_cache(toy_model.to_tokens(far[0]), names_filter=hook.hook_name)
    dist, index = hook.nearest(cache[hook.hook_name])
    assert (dist > hook.epsilons[index]).all()  # the precondition: no position within any radius
    with torch.no_grad():
        plain = [toy_model(toy_model.to_tokens(t)) for t in far]
        with edit30.applied(toy_model):
            edited = [toy_model(toy_model.to_tokens(t)) for t in far]
        with edit30.hooked(toy_model):
            hooked = [toy_model(toy_model.to_tokens(t)) for t in far]
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(plain, edited, hooked, strict=True))


def test_the_authors_codebook_rules():
    e1, e2 = torch.eye(4)[0], torch.eye(4)[1]
    a, b = (1,), (2,)
    # far apart: two keys of radius ε
    keys, radii, owners = build_codebook(torch.stack([0 * e1, 10 * e1]), [a, b], eps=1.0)
    assert len(keys) == 2 and radii.tolist() == [1.0, 1.0] and owners == [[0], [1]]
    # within ε + ε_j, another target: a new key, both radii split at d / 2
    keys, radii, owners = build_codebook(torch.stack([0 * e1, 1.5 * e1]), [a, b], eps=1.0)
    assert len(keys) == 2 and owners == [[0], [1]]
    assert radii[0].item() == pytest.approx(0.75 - 1e-5) and radii[1].item() == pytest.approx(0.75)
    # within reach, the same target: no new key, the radius grows to cover the query
    keys, radii, owners = build_codebook(torch.stack([0 * e1, 1.5 * e2]), [a, a], eps=1.0)
    assert len(keys) == 1 and owners == [[0, 1]] and radii.item() == pytest.approx(1.5)
    # ... and stays when the query is already inside
    keys, radii, owners = build_codebook(torch.stack([0 * e1, 0.5 * e2]), [a, a], eps=1.0)
    assert radii.item() == pytest.approx(1.0) and owners == [[0, 1]]


@pytest.mark.parametrize("replacement", ["last", "prompt", "all"])
def test_replacement_scopes(replacement):
    keys = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    values = torch.tensor([[5.0, 5.0], [7.0, 7.0]])
    hook = GraceCodebook("h", keys, values, torch.tensor([1.0, 1.0]), replacement)
    act = torch.tensor([[[3.0, 3.0], [0.5, 0.0], [4.0, 4.0], [0.0, 0.2], [9.0, 9.0]],   # matches key 0 at 1 and 3
                        [[3.0, 3.0], [4.0, 4.0], [4.0, 5.0], [6.0, 6.0], [5.0, 5.0]]])  # no match
    out = hook(act)
    expected = act.clone()
    if replacement == "last":
        expected[0, 1] = expected[0, 3] = values[0]
    elif replacement == "prompt":  # the positions before the last matched one
        expected[0, :3] = values[0]
    else:
        expected[0, :] = values[0]
    assert torch.equal(out, expected)
    unmatched = act[1:]
    assert hook(unmatched) is unmatched  # no match: the activation itself, untouched


def test_value_training_equals_a_plain_adam_loop(toy_model, facts):
    """One request, warm start, replacement at the last prompt token: the value is what plain
    Adam on the teacher-forced target NLL, through a TransformerLens hook written here, gives."""
    record, layer, steps, lr = facts[0], 2, 4, 0.3
    e = grace(toy_model, [record], layer=layer, n_iter=steps, lr=lr, value_init="warm", replacement="last")
    name = f"blocks.{layer}.hook_mlp_out"
    prompt = toy_model.to_tokens(record.prompt.format(record.subject))
    target = toy_model.tokenizer.encode(" " + record.target_new, add_special_tokens=False)
    tokens = torch.cat([prompt, torch.tensor([target[:-1]], dtype=prompt.dtype)], 1) if len(target) > 1 else prompt
    last = prompt.shape[1] - 1
    with torch.no_grad():
        _, cache = toy_model.run_with_cache(prompt, names_filter=name)
    value = cache[name][0, last].clone().requires_grad_(True)
    optimiser = torch.optim.Adam([value], lr=lr)

    def put(act, hook):
        act = act.clone()
        act[0, last] = value
        return act

    for p in toy_model.parameters():
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            logits = toy_model.run_with_hooks(tokens, fwd_hooks=[(name, put)])
            logp = torch.log_softmax(logits[0, last : last + len(target)].float(), -1)
            loss = -logp[torch.arange(len(target)), torch.tensor(target)].mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    finally:
        for p in toy_model.parameters():
            p.requires_grad_(True)
    hook = e.hooks[f"layer{layer}"]
    assert torch.allclose(hook.keys[0], cache[name][0, last], atol=1e-6)
    assert torch.allclose(hook.values[0], value.detach(), atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_and_bitwise_undo(toy_model, facts, edit30, tmp_path):
    texts = [r.prompt.format(r.subject) for r in facts[:4]] + ["Zellen Hul plays the"]
    before = snapshot(toy_model)
    plain = _last_logits(toy_model, texts)
    with edit30.applied(toy_model):
        edited = _last_logits(toy_model, texts)
    assert_unchanged(toy_model, before, no_edits=True)
    assert torch.equal(_last_logits(toy_model, texts), plain)
    loaded = Edit.load(edit30.save(tmp_path / "grace"), toy_model)
    assert loaded.content_hash() == edit30.content_hash() and loaded.info["n_keys"] == len(facts)
    with loaded.applied(toy_model):
        assert torch.equal(_last_logits(toy_model, texts), edited)
    assert_unchanged(toy_model, before, no_edits=True)


@pytest.mark.parametrize("fields, match", [
    (dict(eps=0.0), "eps"),
    (dict(n_iter=0), "n_iter"),
    (dict(lr=-1.0), "lr"),
    (dict(replacement="first"), "replacement"),
    (dict(site="mlp_in"), "site"),
    (dict(edit_token="verb_last"), "edit_token"),
    (dict(value_init="hot"), "value_init"),
    (dict(layer=9), "out of range"),
    (dict(eps=float("inf")), "eps"),
    (dict(bogus=1), "bogus"),
])
def test_bad_config_is_refused_before_any_compute(toy_model, facts, fields, match):
    with refused_before_any_forward(toy_model), pytest.raises(EditConfigError, match=match):
        grace(toy_model, facts[:2], **fields)


def test_requests_on_one_key_are_warned_and_recorded(toy_model):
    """Keyed at the subject, one person's two facts have one query: the authors' split leaves
    both keys no radius (neither edit holds), which is warned about and recorded."""
    requests = [EditRequest("{} was born in", "Talvik Corlo", "Gemmel"), EditRequest("{} speaks", "Zellen Hul", "Ostic"),
                EditRequest("{} plays the", "Talvik Corlo", "harp")]
    with pytest.warns(KeyCollisionWarning, match=r"\[\[0, 2\]\]"):
        e = grace(toy_model, requests, n_iter=2, edit_token="subject_last")
    assert e.info["key_collisions"] == [[0, 2]] and e.info["n_keys"] == 3
    assert (e.hooks["layer3"].epsilons <= 0).tolist() == [True, False, True]


def test_a_batch_whose_every_key_collides_gives_an_edit_that_changes_nothing(toy_model):
    """With no key given a radius no value can fire: training gets no gradient (it crashed in
    autograd), the values stay as the authors' code leaves them, and the applied edit changes
    no logit. The repr says none of the targets holds (not "at most one")."""
    from interp_edit.batching import last_token_logits

    requests = [EditRequest("{} was born in", "Talvik Corlo", "Gemmel"), EditRequest("{} plays the", "Talvik Corlo", "harp")]
    with pytest.warns(KeyCollisionWarning):
        e = grace(toy_model, requests, n_iter=2, edit_token="subject_last")
    assert (e.hooks["layer3"].epsilons <= 0).all()
    assert "share one key (none of their targets holds)" in repr(e)
    prompts = [r.prompt.format(r.subject) for r in requests]
    before = last_token_logits(toy_model, prompts)
    with e.applied(toy_model):
        assert torch.equal(last_token_logits(toy_model, prompts), before)


def test_bad_request_is_refused_before_any_compute(toy_model):
    bad = [EditRequest("{} was born in", "Talvik Corlo", "Gemmel"), EditRequest("{} plays the", "Nobody Known", "")]
    with refused_before_any_forward(toy_model), pytest.raises(EditRequestError, match="request 1"):
        grace(toy_model, bad)


def test_registry_presets_and_run_experiment(toy_model):
    from interp_edit.evaluation.runner import run_experiment

    assert get_editor("grace").config_class is GRACEConfig
    assert GRACEConfig.for_model(toy_model, preset="gpt2-xl").layer == 35
    res = run_experiment(toy_model, "toyworld-counterfact", "grace", n=2, batch_size=2, unrelated=5, fluency=False,
                         progress=False, config={"n_iter": 5})
    assert res.settings["method"] == "grace" and "efficacy_score" in res.final_metrics()


def test_a_continued_codebook_is_the_one_the_whole_sequence_builds(toy_model, facts):
    """memory=: the authors' adaptor keeps one codebook across edits. Continuing a 3-request
    codebook with 3 more gives the keys, radii and key owners of building all 6 in one call,
    keeps the trained values of keys no new request reaches, holds all 6 requests, and the first
    call's edits still hold."""
    first = grace(toy_model, facts[:3])
    more = grace(toy_model, facts[3:6], memory=first)
    whole = grace(toy_model, facts[:6])
    book, old, ref = more.hooks["layer3"], first.hooks["layer3"], whole.hooks["layer3"]
    # keys read in batches of 3 and of 6: equal up to the CPU's batch-size-dependent rounding (~1e-6)
    torch.testing.assert_close(book.keys, ref.keys, rtol=0, atol=1e-5)
    torch.testing.assert_close(book.epsilons, ref.epsilons, rtol=0, atol=1e-5)
    assert more.info["key_requests"] == whole.info["key_requests"] and more.info["key_labels"] == whole.info["key_labels"]
    assert torch.equal(book.values[:3], old.values)  # distinct prompts: no new request joins an old key
    assert len(more.requests) == 6 and more.info["continues"] == first.content_hash() and len(more.info["target_nll"]) == 3
    with more.applied(toy_model):
        top = _last_logits(toy_model, [r.prompt.format(r.subject) for r in facts[:6]]).argmax(-1)
    assert [toy_model.tokenizer.decode(t).strip() for t in top] == [r.target_new for r in facts[:6]]


def test_a_conflict_with_an_earlier_calls_key_splits_both_radii(toy_model):
    """One query (read in another call: equal up to float rounding), another target, in a later
    call: the authors' split applies across calls (stacked codebooks never compared them) — both
    radii shrink to half the keys' distance, and neither key can fire on the other's prompt."""
    first = grace(toy_model, [EditRequest("{} was born in", "Talvik Corlo", "Gemmel")], n_iter=2, edit_token="subject_last")
    # the earlier key's radius goes <= 0 and the new one's is a rounding error's: warned and recorded as lost
    with pytest.warns(KeyCollisionWarning, match=r"\[\[0, 1\]\]"):
        more = grace(toy_model, [EditRequest("{} plays the", "Talvik Corlo", "harp")], n_iter=2,
                     edit_token="subject_last", memory=first)
    assert more.info["key_collisions"] == [[0, 1]]
    book = more.hooks["layer3"]
    distance = float((book.keys[0] - book.keys[1]).norm())
    assert more.info["n_keys"] == 2 and distance < 1e-3 and first.hooks["layer3"].epsilons.item() == 3.0
    assert book.epsilons.tolist() == pytest.approx([distance / 2 - 1e-5, distance / 2], abs=1e-6)


def test_a_memory_that_cannot_be_continued_is_refused_before_any_compute(toy_model, facts):
    first = grace(toy_model, facts[:1], n_iter=2)
    with first.applied(toy_model), pytest.raises(EditConfigError, match="memory.*undo it first"):
        grace(toy_model, facts[1:2], n_iter=2, memory=first)
    older = Edit(first.method, {}, first.model_fingerprint, first.config, first.requests,
                 {k: v for k, v in first.info.items() if k != "key_labels"}, hooks=dict(first.hooks))
    for memory, fields, match in [(first, {"layer": 2}, "blocks.3.hook_mlp_out"), (first, {"replacement": "all"}, "replacement"),
                                  (older, {}, "does not record its keys' targets"), ("grace", {}, "must be an Edit returned by grace")]:
        with refused_before_any_forward(toy_model), pytest.raises(EditConfigError, match=match):
            grace(toy_model, facts[1:2], n_iter=2, memory=memory, **fields)


def test_a_sequential_run_extends_one_codebook_and_resumes_to_the_same_one(toy_model, tmp_path):
    """Sequential GRACE runs keep one codebook (memory=), not one stacked per batch; a resumed
    run re-applies the last codebook only and ends with the codebook of the protocol run by hand."""
    from interp_edit.data import load_dataset
    from interp_edit.evaluation import runner
    from interp_edit.evaluation.runner import run_experiment

    kwargs = dict(n=3, batch_size=1, sequential=True, unrelated=2, fluency=False, progress=False, seed=1,
                  config={"n_iter": 3})
    state = snapshot(toy_model)
    result = run_experiment(toy_model, "toyworld-counterfact", "grace", out=tmp_path / "run", **kwargs)
    assert_unchanged(toy_model, state, no_edits=True)
    last = Edit.load(tmp_path / "run" / result.batches[-1]["edit_file"])
    assert list(last.hooks) == ["layer3"] and len(last.requests) == 3
    data = {c.case_id: c for c in load_dataset("toyworld-counterfact")}
    memory = None
    for entry in result.batches:
        memory = grace(toy_model, runner._requests([data[i] for i in entry["case_ids"]]), memory=memory, n_iter=3)
    assert memory.content_hash() == last.content_hash()

    with stops_after_batch(1), pytest.raises(StoppedRun):
        run_experiment(toy_model, "toyworld-counterfact", "grace", out=tmp_path / "cut", **kwargs)
    resumed = run_experiment(toy_model, "toyworld-counterfact", "grace", out=tmp_path / "cut", **kwargs)
    assert Edit.load(tmp_path / "cut" / resumed.batches[-1]["edit_file"]).content_hash() == last.content_hash()
    assert_unchanged(toy_model, state, no_edits=True)


def test_a_near_coincident_conflict_is_lost_whichever_call_made_the_first_key():
    """A query equal to another target's key up to float rounding (3e-6 apart: read in another
    call or another batch) leaves the earlier key's radius <= 0 and the new one a rounding error's:
    both requests are reported lost, also when the earlier key came from an earlier call."""
    e1 = torch.eye(4)[0]
    queries, labels = torch.stack([e1, e1 + 3e-6 * torch.eye(4)[1]]), [(1,), (2,)]
    keys, radii, owners = build_codebook(queries, labels, eps=1.0)
    assert radii[0] <= 0 < radii[1] < 1e-5 and lost_requests(keys, radii, owners) == [[0, 1]]
    start = build_codebook(queries[:1], labels[:1], eps=1.0)
    keys, radii, owners = build_codebook(queries[1:], labels[1:], eps=1.0, start=(start[0], start[1], labels[:1], start[2]))
    assert owners == [[0], [1]] and lost_requests(keys, radii, owners) == [[0, 1]]
    # farther apart than the rule's margin: both keep a radius, nothing is lost
    keys, radii, owners = build_codebook(torch.stack([e1, 2 * e1]), labels, eps=1.0)
    assert lost_requests(keys, radii, owners) == []
