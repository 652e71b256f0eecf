"""WISE (a side memory of one layer's W_out behind an activation router, a hooked edit): edited
prompts give the new targets, a prompt the router sends to the main memory is bitwise the
unedited model's, the routing distance against one computed here from the weights, the first SGD
step against a plain gradient of the NLL written here, the shard mask and margin loss, lifelong
continuation of a memory, save / load, bitwise undo, and bad input refused before any compute."""

from __future__ import annotations

import pytest
import torch
from model_state import StoppedRun, assert_unchanged, refused_before_any_forward, snapshot, stops_after_batch

from interp_edit.adapter.bridge import hooked_available
from interp_edit.editing import Edit, EditRequest, get_editor
from interp_edit.editing.methods.wise import WISEConfig, gradient_mask, margin_loss, wise
from interp_edit.editing.wise_memory import WiseSideMemory
from interp_edit.errors import EditConfigError, EditRequestError
from interp_edit.evaluation.counterfact import counterfact_scores, mean_scores

#: small models: one thread is faster than two on this 2-core machine shared with other jobs
pytestmark = pytest.mark.usefixtures("one_thread")
#: prompts about nobody in the edited facts, for the router's main-memory side
UNRELATED = ["Zellen Hul plays the", "The capital of Norvania is", "Fenpas Astlo speaks", "Cormi Corlen plays the",
             "Ostra Vell was born in", "Talvik Corlo works as a"]


def _last_logits(model, texts):
    with torch.no_grad():
        return torch.cat([model(model.to_tokens(t))[0, -1:] for t in texts])


def _cache(model, hook, text):
    with torch.no_grad():
        _, cache = model.run_with_cache(model.to_tokens(text), names_filter=lambda n: n in (hook.input_hook, hook.hook_name))
    return cache[hook.input_hook], cache[hook.hook_name]


@pytest.fixture(scope="module")
def facts(distinct_subject_records):
    return distinct_subject_records[:7]


@pytest.fixture(scope="module")
def edit5(toy_model, facts):
    return wise(toy_model, facts[:5])  # the toy-world preset: layer 4, generated templates and loc prompts


def test_edited_prompts_give_the_new_targets(toy_model, facts, edit5):
    assert edit5.config["preset"] == "toyworld" and not edit5.changes_weights and edit5.layers() == [4]
    hook = edit5.hooks["layer4"]
    assert hook.n_edits == 5 and hook.threshold == pytest.approx(edit5.info["activation_floor"] * 0.8)
    assert len(edit5.info["prefixes"]) == 10 and edit5.info["steps"] == [40] * 5
    unedited = mean_scores(counterfact_scores(toy_model, facts[:5]))
    with edit5.applied(toy_model):
        scores = mean_scores(counterfact_scores(toy_model, facts[:5]))
        top = _last_logits(toy_model, [r.prompt.format(r.subject) for r in facts[:5]]).argmax(-1)
    got = [toy_model.tokenizer.decode(t).strip() for t in top]
    # docs/editing.md: efficacy / paraphrase / neighbourhood 1.0 / 1.0 / 0.76 (unedited 0.0 / 0.0 / 1.0)
    assert got == [r.target_new for r in facts[:5]]
    assert unedited["efficacy"] == 0.0 and scores["efficacy"] == 1.0 and scores["paraphrase"] == 1.0
    assert scores["neighborhood"] == pytest.approx(0.76, abs=0.09) and unedited["neighborhood"] == 1.0


def test_a_prompt_routed_to_the_main_memory_is_bitwise_unchanged(toy_model, person_records, edit5):
    hook = edit5.hooks["layer4"]
    pool = UNRELATED + [r.prompt.format(r.subject) for r in person_records[300:330]]
    main = [t for t in pool if not hook.routed(*_cache(toy_model, hook, t)).any()][:4]
    routed = [t for t in pool if hook.routed(*_cache(toy_model, hook, t)).all()][:2]
    assert len(main) == 4, "precondition: some unrelated prompts score below the router's threshold"
    with torch.no_grad():
        plain = [toy_model(toy_model.to_tokens(t)) for t in main + routed]
        with edit5.applied(toy_model):
            edited = [toy_model(toy_model.to_tokens(t)) for t in main + routed]
        with edit5.hooked(toy_model):
            hooked = [toy_model(toy_model.to_tokens(t)) for t in main + routed]
    for i, (a, b, c) in enumerate(zip(plain, edited, hooked, strict=True)):
        assert torch.equal(b, c)
        assert torch.equal(a, b) == (i < len(main))  # the main memory's: bit for bit; the side memory's: not


def test_routing_distance_and_side_output_against_the_weights(toy_model, facts, edit5):
    """d = ‖gelu_new(A·W_side + b) − gelu_new(A·W + b)‖ per position, from the weights (not the
    hook's own arithmetic); its mean decides; a routed prompt's MLP output is A·W_side + b."""
    hook = edit5.hooks["layer4"]
    mlp = toy_model.blocks[4].mlp
    w, b = mlp.W_out.detach().double(), mlp.b_out.detach().double()
    w_side = w + hook.delta.double()

    def gelu_new(x):
        return 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x ** 3)))

    for text in [facts[0].prompt.format(facts[0].subject), *UNRELATED[:3]]:
        a, out = _cache(toy_model, hook, text)
        a = a.double()
        expected = (gelu_new(a @ w_side + b) - gelu_new(a @ w + b)).norm(dim=-1)
        assert torch.allclose(hook.distances(*_cache(toy_model, hook, text)).double(), expected, rtol=1e-4, atol=1e-4)
        assert bool(hook.routed(*_cache(toy_model, hook, text)).all()) == bool(expected.mean() >= hook.threshold)
    # the edited MLP output of a routed prompt is the side memory's, by the weights
    text = next(t for t in [r.prompt.format(r.subject) for r in facts[:5]] if hook.routed(*_cache(toy_model, hook, t)).all())
    a, _ = _cache(toy_model, hook, text)
    with edit5.applied(toy_model), torch.no_grad():
        _, cache = toy_model.run_with_cache(toy_model.to_tokens(text), names_filter=hook.hook_name)
    assert torch.allclose(cache[hook.hook_name].double(), a.double() @ w_side + b, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not hooked_available(), reason="differentiates through the TransformerLens parameter blocks.4.mlp.W_out "
                    "by torch.func.functional_call; on the bridge it is a view of the Hugging Face weight, not a module attribute")
def test_first_step_is_a_masked_sgd_step_on_the_nll(toy_model, facts):
    """One step (distances are 0 before it, so only the NLL has a gradient): ΔW = clamp(−lr ·
    (mask ⊙ ∇ + wd · W), ±c), ∇ of the NLL / (|target| + 1) taken here through the weight itself."""
    r = facts[0]
    lr, wd, c = 0.7, 1e-3, 0.05
    e = wise(toy_model, [r], n_iter=1, lr=lr, weight_decay=wd, norm_constraint=c, prefixes=(),
             loc_prompts=("Zellen Hul plays the harp",), seed=3)
    prompt = toy_model.to_tokens(r.prompt.format(r.subject))[0].tolist()
    target = toy_model.tokenizer.encode(" " + r.target_new, add_special_tokens=False)
    tokens = torch.tensor([prompt + target])
    w = toy_model.blocks[4].mlp.W_out.detach().clone().requires_grad_(True)
    logits = torch.func.functional_call(toy_model, {"blocks.4.mlp.W_out": w}, (tokens,))
    logp = logits[0, len(prompt) - 1: -1].log_softmax(-1)
    nll = -logp[torch.arange(len(target)), target].sum() / (len(target) + 1)
    (grad,) = torch.autograd.grad(nll, w)
    mask = gradient_mask(tuple(w.shape), 0.2, seed=3).float()
    expected = torch.clamp(-lr * (mask * grad + wd * w.detach()), -c, c)
    assert torch.allclose(e.hooks["layer4"].delta, expected, rtol=1e-4, atol=1e-6)
    assert e.hooks["layer4"].activation_floor == 0.0  # recorded before the step, as the code records it


def test_mask_and_margin_loss():
    mask = gradient_mask((64, 32), 0.2, seed=0)
    assert mask.dtype == torch.bool and abs(mask.float().mean() - 0.2) < 0.03
    assert torch.equal(mask, gradient_mask((64, 32), 0.2, seed=0)) and not torch.equal(mask, gradient_mask((64, 32), 0.2, seed=1))
    # every margin met: 0; each one missed adds its positive part's mean
    assert float(margin_loss(torch.tensor([30.0]), torch.tensor([2.0]), 5.0, 20.0, 10.0)) == 0.0
    assert float(margin_loss(torch.tensor([30.0, 10.0]), torch.tensor([2.0]), 5.0, 20.0, 10.0)) == pytest.approx(2.0 + 10.0)


def test_lifelong_continuation(toy_model, facts, edit5):
    more = wise(toy_model, facts[5:7], memory=edit5)
    hook, old = more.hooks["layer4"], edit5.hooks["layer4"]
    assert hook.n_edits == 7 and len(more.requests) == 7 and more.info["continues"] == edit5.content_hash()
    assert torch.equal(hook.mask, old.mask) and hook.activation_floor <= old.activation_floor
    assert not torch.equal(hook.delta, old.delta)
    # the masked-out entries moved by weight decay only (and the clamp), the trained ones by far more
    moved = (hook.delta - old.delta).abs()
    assert moved[~hook.mask].max() < 0.05 * moved[hook.mask].max()
    with edit5.applied(toy_model), pytest.raises(EditConfigError, match="memory.*undo it first"):
        wise(toy_model, facts[5:6], memory=edit5, n_iter=1)
    with refused_before_any_forward(toy_model), pytest.raises(EditConfigError, match="save_freq"):
        wise(toy_model, facts[5:7], memory=edit5, save_freq=6)
    with refused_before_any_forward(toy_model), pytest.raises(EditConfigError, match="layer 4"):
        wise(toy_model, facts[5:6], memory=edit5, layer=5)


def test_save_load_round_trip_and_bitwise_undo(toy_model, facts, edit5, tmp_path):
    texts = [r.prompt.format(r.subject) for r in facts[:4]] + UNRELATED[:2]
    before = snapshot(toy_model)
    plain = _last_logits(toy_model, texts)
    with edit5.applied(toy_model):
        edited = _last_logits(toy_model, texts)
    assert_unchanged(toy_model, before, no_edits=True)
    assert torch.equal(_last_logits(toy_model, texts), plain)
    loaded = Edit.load(edit5.save(tmp_path / "wise"), toy_model)
    hook = loaded.hooks["layer4"]
    assert isinstance(hook, WiseSideMemory) and loaded.content_hash() == edit5.content_hash()
    assert hook.threshold == edit5.hooks["layer4"].threshold and hook.n_edits == 5
    with loaded.applied(toy_model):
        assert torch.equal(_last_logits(toy_model, texts), edited)
    assert_unchanged(toy_model, before, no_edits=True)


def test_routing_options(edit5):
    from dataclasses import replace

    hook = edit5.hooks["layer4"]
    a, out = torch.randn(2, 3, 512), torch.randn(2, 3, 128)
    d = hook.distances(a, out)
    seq = replace(hook, routing="sequence").scores(d)
    assert torch.allclose(seq, d.mean(-1, keepdim=True).expand_as(d))
    assert torch.allclose(replace(hook, routing="batch").scores(d), d.mean().expand_as(d))
    assert torch.allclose(replace(hook, routing="prefix").scores(d)[:, -1], d.mean(-1))
    assert torch.allclose(replace(hook, routing="prefix").scores(d)[:, 0], d[:, 0])
    long = torch.rand(1, 101)
    assert torch.equal(hook.scores(long)[0, 0], long.max())  # > 100 positions: the largest (the code's)


def test_a_sequence_is_scored_by_its_own_positions_not_its_batchs_padding(edit5):
    hook = edit5.hooks["layer4"]
    torch.manual_seed(0)
    d = torch.rand(3, 120) * 10
    lengths = torch.tensor([120, 7, 101])
    got = hook.scores(d, lengths)[:, 0]
    # by hand: the mean of a row's first L distances; the largest of them beyond 100 (the code's)
    assert torch.allclose(got[1], d[1, :7].mean()) and torch.equal(got[0], d[0].max()) and torch.equal(got[2], d[2, :101].max())
    assert torch.equal(hook.scores(d[1:2, :7])[0, 0], got[1])  # the same row alone, unpadded


def test_padded_lengths_read_the_right_padding_off_the_embeddings(toy_model):
    from interp_edit.adapter import hook_name, padded_lengths
    from interp_edit.batching import pad_right

    rows = [toy_model.to_tokens(t)[0].tolist() for t in ("Zellen Hul plays the", "The capital of Norvania is a city")]
    tokens, lengths = pad_right(rows, toy_model.tokenizer.pad_token_id)
    with torch.no_grad():
        _, cache = toy_model.run_with_cache(tokens, names_filter=lambda n: n == hook_name("embed"))
    assert padded_lengths(toy_model, cache[hook_name("embed")]).tolist() == [len(r) for r in rows] == lengths.tolist()


def test_a_prompt_is_routed_as_alone_whatever_it_is_batched_with(toy_model, toy_world):
    # a neighbour the router sends to the side memory alone (its mean distance 30.2 over the 28.2
    # threshold) was sent to the main memory next to a longer prompt, whose padding lowered its
    # mean to 28.0: log p of the new target -0.80 alone, -8.55 batched
    from interp_edit.evaluation.logprobs import score_continuations
    from interp_edit.toyworld import counterfact_records

    record = counterfact_records(toy_world)[0]
    e = wise(toy_model, [record])
    longer = "In the old records, as everyone in the town has always known, Pimser Jorrin was born in"
    with e.applied(toy_model):
        for prompt in [*record.neighborhood_prompts, record.prompt.format(record.subject)]:
            alone = score_continuations(toy_model, [prompt], [record.target_new]).logprobs[0]
            batched = score_continuations(toy_model, [prompt, longer], [record.target_new] * 2).logprobs[0]
            assert torch.allclose(batched, alone, atol=1e-4), prompt


@pytest.mark.parametrize("fields, match", [
    (dict(n_iter=0), "n_iter"),
    (dict(lr=0.0), "lr"),
    (dict(mask_ratio=0.0), "mask_ratio"),
    (dict(mask_ratio=1.5), "mask_ratio"),
    (dict(alpha=-1.0), "alpha"),
    (dict(act_ratio=0.0), "act_ratio"),
    (dict(norm_constraint=float("inf")), "norm_constraint"),
    (dict(routing="token"), "routing"),
    (dict(loc_prompts=()), "loc_prompts"),
    (dict(prefixes=("",)), "prefixes"),
    (dict(save_freq=0), "save_freq"),
    (dict(layer=9), "out of range"),
    (dict(bogus=1), "bogus"),
])
def test_bad_config_is_refused_before_any_compute(toy_model, facts, fields, match):
    with refused_before_any_forward(toy_model), pytest.raises(EditConfigError, match=match):
        wise(toy_model, facts[:2], **fields)


def test_bad_request_and_memory_are_refused_before_any_compute(toy_model, facts):
    bad = [EditRequest("{} was born in", "Talvik Corlo", "Gemmel"), EditRequest("{} plays the", "Nobody Known", "")]
    with refused_before_any_forward(toy_model), pytest.raises(EditRequestError, match="request 1"):
        wise(toy_model, bad)
    not_wise = Edit("grace", {}, "0" * 16)
    with refused_before_any_forward(toy_model), pytest.raises(EditConfigError, match="argument 'memory'"):
        wise(toy_model, facts[:1], memory=not_wise)


def test_registry_presets_and_run_experiment(toy_model):
    from interp_edit.evaluation.runner import run_experiment

    assert get_editor("wise").config_class is WISEConfig
    assert WISEConfig.for_model(toy_model, preset="gpt2-xl").layer == 8
    assert WISEConfig.for_model(toy_model, preset="Llama-2-7b-hf").n_iter == 70
    res = run_experiment(toy_model, "toyworld-counterfact", "wise", n=2, batch_size=2, unrelated=5, fluency=False,
                         progress=False, config={"n_iter": 3})
    assert res.settings["method"] == "wise" and "efficacy_score" in res.final_metrics()


def test_a_sequential_run_extends_one_memory_and_resumes_to_the_same_one(toy_model, tmp_path):
    """Sequential WISE follows its lifelong protocol: each batch extends the last batch's side
    memory (memory=), the model holds one memory, not one stacked per batch; a resumed run
    re-applies the last memory only and ends with the same memory as the protocol run by hand."""
    from interp_edit.data import load_dataset
    from interp_edit.evaluation import runner
    from interp_edit.evaluation.runner import run_experiment

    kwargs = dict(n=3, batch_size=1, sequential=True, unrelated=2, fluency=False, progress=False, seed=1,
                  config={"n_iter": 2})
    state = snapshot(toy_model)
    result = run_experiment(toy_model, "toyworld-counterfact", "wise", out=tmp_path / "run", **kwargs)
    assert_unchanged(toy_model, state, no_edits=True)
    files = [tmp_path / "run" / entry["edit_file"] for entry in result.batches]
    last = Edit.load(files[-1])
    assert list(last.hooks) == ["layer4"] and last.hooks["layer4"].n_edits == 3
    # by hand: the same requests, each call continuing the memory before it (none applied meanwhile)
    data = {c.case_id: c for c in load_dataset("toyworld-counterfact")}
    memory = None
    for entry in result.batches:
        requests = [r for i in entry["case_ids"] for r in runner._requests([data[i]])]
        memory = wise(toy_model, requests, memory=memory, n_iter=2)
    assert memory.content_hash() == last.content_hash()

    with stops_after_batch(1), pytest.raises(StoppedRun):
        run_experiment(toy_model, "toyworld-counterfact", "wise", out=tmp_path / "cut", **kwargs)
    resumed = run_experiment(toy_model, "toyworld-counterfact", "wise", out=tmp_path / "cut", **kwargs)
    assert Edit.load(tmp_path / "cut" / resumed.batches[-1]["edit_file"]).content_hash() == last.content_hash()
    assert_unchanged(toy_model, state, no_edits=True)


@pytest.mark.parametrize("family", __import__("family_models").FAMILY_NAMES)
def test_padded_lengths_on_every_family(family):
    from family_models import family_model

    from interp_edit.adapter import hook_name, padded_lengths
    from interp_edit.batching import pad_right

    model = family_model(family)
    rows = [[1, 5, 9, 11, 7], [1, 5, 9], [1, 13]]
    tokens, lengths = pad_right(rows, model.tokenizer.pad_token_id)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=lambda n: n == hook_name("embed"))
    assert padded_lengths(model, cache[hook_name("embed")]).tolist() == [5, 3, 2]
