"""KN (knowledge neurons, Dai et al. 2022, as EasyEdit runs it): the integrated-gradient
attribution against a plain loop, the selection rule, the edit formula, toy-world efficacy,
the model left unchanged, refusals before any forward, and the experiment runner."""

from __future__ import annotations

import pytest
import torch
from model_state import assert_unchanged, refused_before_any_forward, snapshot

from interp_edit.adapter import model_fingerprint
from interp_edit.editing import Edit, EditRequest, SparseRowDelta, get_editor, prepare_requests
from interp_edit.editing.methods.kn import KNConfig, coarse_neurons, kn, kn_attribution, refine_neurons
from interp_edit.errors import EditConfigError, EditRequestError
from interp_edit.evaluation.counterfact import counterfact_scores, mean_scores

REQUEST = EditRequest("{} was born in", "Talvik Corlo", target_new="Gemmel", target_true="Karsa")


@pytest.fixture(scope="module")
def records(person_records):
    return person_records[:20]


def _plain_ig(model, ids, target, layer, neurons, steps):
    """Attr(l, i) = a_i / steps · Σ_k ∂p(target)/∂a_i at α_k a, α_k = k/(steps−1): one full forward
    per step, the activation at the last position replaced through a hook on a leaf tensor."""
    tokens = torch.tensor([ids])
    name = f"blocks.{layer}.mlp.hook_post"
    _, cache = model.run_with_cache(tokens, names_filter=[name])
    base = cache[name][0, -1].detach().double()
    total = torch.zeros_like(base)
    for k in range(steps):
        leaf = (base * (k / (steps - 1))).float().requires_grad_(True)

        def hook(act, hook, leaf=leaf):
            out = act.clone()
            out[0, -1] = leaf
            return out

        logits = model.run_with_hooks(tokens, fwd_hooks=[(name, hook)])
        prob = torch.softmax(logits[0, -1].double(), -1)[target]
        (grad,) = torch.autograd.grad(prob, leaf)
        total += grad.double()
    return [float(base[i] * total[i] / steps) for i in neurons]


def test_attribution_equals_a_plain_riemann_sum_loop(toy_model):
    request = prepare_requests(toy_model, [REQUEST], model_fingerprint(toy_model))[0]
    true_id = toy_model.tokenizer.encode(" Karsa", add_special_tokens=False)[0]
    # 7 steps in chunks of 3: the engine's batching must not change the sum
    scores = kn_attribution(toy_model, request.prompt_ids, (true_id,), [1, 4], steps=7, batch_size=3)
    assert scores.shape == (2, toy_model.cfg.d_mlp)
    for row, layer in enumerate([1, 4]):
        neurons = [int(scores[row].argmax()), int(scores[row].argmin()), 5]
        expected = _plain_ig(toy_model, request.prompt_ids, true_id, layer, neurons, 7)
        got = [float(scores[row, i]) for i in neurons]
        assert got == pytest.approx(expected, rel=1e-3, abs=1e-6), layer


def test_selection_is_the_threshold_and_share_rule():
    scores = torch.tensor([[1.0, 0.25, 0.2, -3.0], [0.19, 0.5, 0.0, 0.21]])
    # > 0.2 × max (= 0.2), strictly: 0.2 itself is out
    assert coarse_neurons(scores, 0.2) == [(0, 0), (0, 1), (1, 1), (1, 3)]
    coarse = [[(0, 0), (0, 1)], [(0, 0), (1, 3)], [(0, 0), (0, 1)], [(2, 2), (0, 0)], [(0, 1)]]
    # 5 prompts: (0, 0) coarse in 4, (0, 1) in 3; p = 0.4 keeps more than 2, p = 0.6 more than 3
    assert refine_neurons(coarse, 0.4, refine=True) == [(0, 0), (0, 1)]
    assert refine_neurons(coarse, 0.6, refine=True) == [(0, 0)]
    # without refinement (EasyEdit): every coarse neuron of every prompt
    assert refine_neurons(coarse, 0.4, refine=False) == [(0, 0), (0, 1), (1, 3), (2, 2)]


def _greedy(model, ids, n):
    ids = list(ids)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[-n:]


@pytest.mark.parametrize("settings", [{}, {"vectors": "unembedding", "old": "target_true", "old_scale": 0.5, "new_scale": 3.0}])
def test_delta_is_the_formula_on_the_selected_rows(toy_model, settings):
    result = kn(toy_model, [REQUEST], steps=6, batch_size=6, **settings)
    cfg = KNConfig.for_model(toy_model, **settings)
    request = prepare_requests(toy_model, [REQUEST], model_fingerprint(toy_model))[0]
    true_ids = toy_model.tokenizer.encode(" Karsa", add_special_tokens=False)
    old = _greedy(toy_model, request.prompt_ids, len(request.target_ids)) if cfg.old == "argmax" else true_ids

    def vec(ids):
        table = toy_model.W_E.detach() if cfg.vectors == "embedding" else toy_model.W_U.detach().T
        return table[ids].double().sum(0)

    expected = (cfg.new_scale * vec(list(request.target_ids)) - cfg.old_scale * vec(old)).float()
    # the neurons are the rule applied to the engine's attribution of the true answer
    scores = kn_attribution(toy_model, request.prompt_ids, tuple(true_ids), list(range(toy_model.cfg.n_layers)), steps=6, batch_size=6)
    neurons = refine_neurons([coarse_neurons(scores, cfg.adaptive_threshold)], cfg.p, False)
    assert result.info["neurons"] == [[list(n) for n in neurons]]
    assert result.info["old_tokens"] == [old]
    assert neurons
    touched = []
    for name, delta in result.deltas.items():
        assert isinstance(delta, SparseRowDelta) and name.endswith(".mlp.W_out")
        layer = int(name.split(".")[1])
        for row, value in zip(delta.rows.tolist(), delta.values, strict=True):
            touched.append([layer, row])
            torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    assert sorted(touched) == result.info["neurons"][0]
    assert result.info["attributions"][0] == pytest.approx([float(scores[n]) for n in neurons], rel=1e-5)


def test_refine_keeps_neurons_shared_by_the_paraphrases(toy_model, records):
    record = records[0]
    result = kn(toy_model, [record], refine=True, p=0.5, steps=4, batch_size=4, layers=(0, 1))
    request = prepare_requests(toy_model, [record], model_fingerprint(toy_model))[0]
    from interp_edit.prompts import encode_target, tokenize_with_subject

    prompts = [request.prompt_ids] + [tokenize_with_subject(toy_model.tokenizer, t, request.request.subject).tokens
                                      for t in request.request.paraphrases]
    true_ids = encode_target(toy_model.tokenizer, request.request.target_true, request.request.text)
    coarse = [coarse_neurons(kn_attribution(toy_model, p, true_ids, [0, 1], steps=4, batch_size=4), 0.2) for p in prompts]
    assert len(result.info["coarse"][0]) == len(prompts) > 1
    assert result.info["neurons"][0] == [list(n) for n in refine_neurons(coarse, 0.5, True)]


def test_edits_move_the_target_on_20_toy_facts(toy_model, records):
    """Measured on these 20 single edits (every layer, 20 steps): EasyEdit's rule (W_E rows, the
    toy model's embeddings are untied) efficacy 0.15, paraphrase 0.12, neighbourhood 0.94, ~21
    neurons per edit (unedited 0.00 / 0.00 / 1.00); with W_U columns efficacy 1.00, paraphrase
    1.00 but neighbourhood 0.00."""
    before = snapshot(toy_model)
    rows, neurons = [], []
    for record in records:
        result = kn(toy_model, [record])
        neurons.append(len(result.info["neurons"][0]))
        with result.applied(toy_model):
            rows += counterfact_scores(toy_model, [record])
    assert_unchanged(toy_model, before, no_edits=True)
    assert min(neurons) >= 1
    scores = mean_scores(rows)
    # unedited (measured): efficacy 0.00, efficacy_magnitude -0.99
    assert scores["efficacy"] >= 0.1 and scores["efficacy_magnitude"] > -0.9


def test_model_unchanged_undo_bitwise_save_load(toy_model, records, tmp_path):
    before = snapshot(toy_model)
    result = kn(toy_model, records[:3], steps=4, batch_size=2)  # sequential: 3 requests
    assert_unchanged(toy_model, before, no_edits=True)
    assert len(result.info["neurons"]) == 3 and result.method == "kn"
    result.apply(toy_model)
    assert any(not torch.equal(v, before[k]) for k, v in toy_model.state_dict().items())
    result.undo(toy_model)
    assert_unchanged(toy_model, before, no_edits=True)
    loaded = Edit.load(result.save(tmp_path / "kn"), toy_model)
    assert set(loaded.deltas) == set(result.deltas)
    for name, delta in result.deltas.items():
        assert torch.equal(loaded.deltas[name].rows, delta.rows) and torch.equal(loaded.deltas[name].values, delta.values)


@pytest.mark.parametrize("bad", [dict(steps=1), dict(batch_size=0), dict(adaptive_threshold=0.0), dict(adaptive_threshold=1.5),
                                 dict(p=1.0), dict(activation="mid"), dict(vectors="both"), dict(old="mean"),
                                 dict(old_scale=-1.0), dict(new_scale=float("nan")), dict(layers=(99,)), dict(layers=()),
                                 dict(steps="20"), dict(lr_scale=1.0), dict(preset="llama-2")])
def test_bad_config_is_refused_before_any_forward(toy_model, bad):
    with refused_before_any_forward(toy_model), pytest.raises(EditConfigError):
        kn(toy_model, [REQUEST], **bad)


@pytest.mark.parametrize("requests, match", [
    ([REQUEST, EditRequest("{} plays the", "Talvik Corlo", "flute")], "request 1: KN needs 'target_true'"),
    ([EditRequest("{} plays the", "Talvik Corlo", "", target_true="flute")], "request 0"),
    # refine: a paraphrase without the subject
    ([EditRequest("{} plays the", "Talvik Corlo", "flute", target_true="harp", paraphrases=("Someone plays the",))],
     "request 0: paraphrase"),
])
def test_bad_requests_are_refused_before_any_forward(toy_model, requests, match):
    with refused_before_any_forward(toy_model), pytest.raises(EditRequestError, match=match):
        kn(toy_model, requests, refine=True)


def test_registry_presets_and_run_experiment(toy_model, tiny_model):
    from interp_edit.evaluation.runner import run_experiment

    assert get_editor("kn").config_class is KNConfig
    assert KNConfig.for_model(toy_model).preset == "toyworld"
    assert KNConfig.for_model(toy_model, preset="gpt-j-6B").adaptive_threshold == 0.1
    gpt2 = KNConfig.for_model(toy_model, preset="gpt2-xl")
    assert (gpt2.steps, gpt2.batch_size, gpt2.adaptive_threshold, gpt2.p, gpt2.refine) == (20, 20, 0.2, 0.4, False)
    before = snapshot(tiny_model)
    result = kn(tiny_model, [REQUEST], steps=4, batch_size=4, layers=(0, 2))
    assert {int(n.split(".")[1]) for n in result.deltas} <= {0, 2}
    assert_unchanged(tiny_model, before, no_edits=True)
    res = run_experiment(toy_model, "toyworld-counterfact", "kn", n=2, batch_size=2, unrelated=5, fluency=False,
                         progress=False, config={"steps": 4, "batch_size": 4})
    assert res.settings["method"] == "kn" and "efficacy_score" in res.final_metrics()
