"""Neuron-level attribution: the vectorised scores equal log p recomputed by adding each
neuron's vector explicitly; ablating the top neurons matters; bad input fails cleanly."""

from __future__ import annotations

import random

import pytest
import torch

from interp_edit import Neuron, ablate_neurons, layer_attribution_scores, neuron_attribution
from interp_edit.errors import EmptyInputError, InvalidArgumentError, PromptTooLongError

PROMPT = "As everyone knows, Talvik Corlo was born in"

#: many small forwards, which a second thread only slows down when the cores are busy
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tiny_model, toy_model):
    return {"tiny": tiny_model, "toy": toy_model}


def _explicit_logprob(model, cache, residual, target_id, keep_bias=False):
    """log p(target) of a residual vector through the final LayerNorm frozen at the prompt's
    last-position scale, written out by hand."""
    sigma = cache["ln_final.hook_scale"][0, -1, 0]
    normed = (residual - residual.mean()) / sigma * model.ln_final.w
    if keep_bias:
        normed = normed + model.ln_final.b
    logits = normed @ model.W_U + (model.b_U if keep_bias else 0.0)
    return torch.log_softmax(logits, -1)[target_id].item()


@pytest.mark.parametrize("keep_bias", [False, True])
@pytest.mark.parametrize("which", ["tiny", "toy"])
def test_scores_equal_explicit_recomputation(models, which, keep_bias):
    model = models[which]
    result = neuron_attribution(model, PROMPT, "Karsa", top_k=20, keep_bias=keep_bias)
    with torch.no_grad():
        _, cache = model.run_with_cache(model.to_tokens(PROMPT))
    t = result.target_id
    cfg = model.cfg
    gen = torch.Generator().manual_seed(1)

    def lp(x):
        return _explicit_logprob(model, cache, x, t, keep_bias)

    ffn = [(int(torch.randint(cfg.n_layers, (1,), generator=gen)), int(torch.randint(cfg.d_mlp, (1,), generator=gen))) for _ in range(8)]
    ffn += [(s.neuron.layer, s.neuron.index) for s in result.top_ffn[:3]]
    for layer, i in ffn:
        base = cache[f"blocks.{layer}.hook_resid_mid"][0, -1]
        vector = cache[f"blocks.{layer}.mlp.hook_post"][0, -1, i] * model.blocks[layer].mlp.W_out[i]
        assert result.ffn_scores[layer, i].item() == pytest.approx(lp(base + vector) - lp(base), abs=1e-4)
    n_pos = cache["hook_embed"].shape[1]
    attn = [tuple(int(torch.randint(hi, (1,), generator=gen)) for hi in (cfg.n_layers, cfg.n_heads, cfg.d_head, n_pos)) for _ in range(8)]
    attn += [(s.neuron.layer, s.neuron.head, s.neuron.index, s.neuron.pos) for s in result.top_attn[:3]]
    for layer, h, j, p in attn:
        base = cache[f"blocks.{layer}.hook_resid_pre"][0, -1]
        coef = cache[f"blocks.{layer}.attn.hook_pattern"][0, h, -1, p] * cache[f"blocks.{layer}.attn.hook_v"][0, p, h, j]
        vector = coef * model.blocks[layer].attn.W_O[h, j]
        assert result.attn_scores[layer, h, j, p].item() == pytest.approx(lp(base + vector) - lp(base), abs=1e-4)
    for layer in range(cfg.n_layers):
        pre = cache[f"blocks.{layer}.hook_resid_pre"][0, -1]
        mid = pre + cache[f"blocks.{layer}.hook_attn_out"][0, -1]
        post = mid + cache[f"blocks.{layer}.hook_mlp_out"][0, -1]
        assert result.layer_scores[layer, 0].item() == pytest.approx(lp(mid) - lp(pre), abs=1e-4)
        assert result.layer_scores[layer, 1].item() == pytest.approx(lp(post) - lp(mid), abs=1e-4)
    assert torch.allclose(layer_attribution_scores(model, PROMPT, "Karsa", keep_bias=keep_bias), result.layer_scores, atol=1e-6)
    # the layer scores telescope to log p(final) - log p(embeddings); with the biases kept the
    # frozen readout of the final residual is the model itself
    embed = cache["blocks.0.hook_resid_pre"][0, -1]
    assert result.layer_scores.sum().item() == pytest.approx(result.logprob - lp(embed), abs=1e-4)
    if keep_bias:
        assert result.logprob == pytest.approx(result.model_logprob, abs=1e-5)
    # head score = sum of its neurons; the top lists are sorted and agree with the score tensors
    assert torch.allclose(result.head_scores, result.attn_scores.sum((2, 3)))
    assert [s.score for s in result.top_ffn] == sorted((s.score for s in result.top_ffn), reverse=True)
    assert result.top_ffn[0].score == pytest.approx(result.ffn_scores.max().item())
    assert result.top_attn[0].score == pytest.approx(result.attn_scores.max().item())


def test_query_shares_are_exact(toy_model):
    result = neuron_attribution(toy_model, PROMPT, "Karsa", top_k=30)
    # shares of all residual components sum to one: the query components add up to the importance
    total = result.ffn_query_scores.sum().item() + result.ffn_query_embed
    assert total == pytest.approx(sum(s.score for s in result.top_ffn), rel=1e-4)
    # attention query neurons, recomputed by hand for the value neurons of one layer
    with torch.no_grad():
        _, cache = toy_model.run_with_cache(toy_model.to_tokens(PROMPT))
    layer = max(s.neuron.layer for s in result.top_attn)
    expected = torch.zeros(toy_model.cfg.d_mlp)
    source = layer - 1
    for s in result.top_attn:
        if s.neuron.layer != layer:
            continue
        n = s.neuron
        kappa = toy_model.blocks[layer].attn.W_V[n.head, :, n.index] * toy_model.blocks[layer].ln1.w
        kappa = kappa - kappa.mean()
        denom = cache[f"blocks.{layer}.hook_resid_pre"][0, n.pos] @ kappa
        outputs = cache[f"blocks.{source}.mlp.hook_post"][0, n.pos][:, None] * toy_model.blocks[source].mlp.W_out
        expected += (outputs @ kappa) / denom * s.score
    # `layer` is the deepest value-neuron layer, so only its value neurons read layer `source`
    assert torch.allclose(result.query_scores[source], expected.detach(), atol=1e-4)
    ranked = [s.score for s in result.query_neurons]
    assert ranked == sorted(ranked, reverse=True) and ranked[0] == pytest.approx(result.query_scores.max().item())


def test_top_neurons_carry_tokens_and_labels(toy_model):
    result = neuron_attribution(toy_model, PROMPT, top_k=5)
    assert result.target_token.strip() == "Karsa" and result.target_note is None
    assert result.top_ffn[0].label.startswith("L") and "N" in result.top_ffn[0].label
    assert result.top_attn[0].label.startswith("L") and "H" in result.top_attn[0].label
    assert all(len(s.top_tokens) == 5 for s in result.top_ffn + result.top_attn)
    rows = result.table(3)
    assert [r["rank"] for r in rows] == [1, 2, 3] and rows[0]["score"] >= rows[1]["score"]


def test_ablating_top_neurons_beats_random_neurons(toy_model, toy_world):
    from interp_edit.toyworld import counterfact_records

    rng = random.Random(0)
    facts = rng.sample(counterfact_records(toy_world), 20)
    k, cfg = 20, toy_model.cfg
    top_drops, random_drops = [], []
    for record in facts:
        prompt = record.prompt.format(record.subject)
        result = neuron_attribution(toy_model, prompt, record.target_true, top_k=k)
        top = result.value_neurons(k)
        same_layers = [Neuron("ffn", s.neuron.layer, rng.randrange(cfg.d_mlp)) if s.neuron.kind == "ffn" else
                       Neuron("attn", s.neuron.layer, rng.randrange(cfg.d_head), head=rng.randrange(cfg.n_heads),
                              pos=rng.randrange(len(result.str_tokens))) for s in top]
        top_drops.append(ablate_neurons(toy_model, top, prompt, record.target_true).mean_drop)
        random_drops.append(ablate_neurons(toy_model, same_layers, prompt, record.target_true).mean_drop)
    top_mean, random_mean = sum(top_drops) / len(facts), sum(random_drops) / len(facts)
    assert top_mean > 0.1
    assert top_mean > 10 * max(random_mean, 0.005)


def test_ablation_modes_and_batches(toy_model):
    prompts = [PROMPT, "Talvik Corlo works as a", "The homeland of Talvik Corlo is"]
    neurons = [Neuron("ffn", 0, 3), Neuron("attn", 2, 5, head=1), Neuron("attn", 3, 7, head=2, pos=3)]
    zero = ablate_neurons(toy_model, neurons, prompts)
    # batched = one prompt at a time, and "before" is the plain model
    for i, prompt in enumerate(prompts):
        single = ablate_neurons(toy_model, neurons, prompt)
        assert single.probs_after.item() == pytest.approx(zero.probs_after[i].item(), abs=1e-5)
        with torch.no_grad():
            probs = torch.softmax(toy_model(toy_model.to_tokens(prompt))[0, -1], -1)
        assert single.probs_before.item() == pytest.approx(probs.max().item(), abs=1e-5)
    assert zero.accuracy_before == 1.0
    # zero-ablating by hand
    def hooks(act, hook):
        if hook.name == "blocks.0.mlp.hook_post":
            act[..., 3] = 0
        elif hook.name == "blocks.2.attn.hook_z":
            act[:, :, 1, 5] = 0
        else:
            act[:, 3, 2, 7] = 0
        return act
    with torch.no_grad():
        logits = toy_model.run_with_hooks(toy_model.to_tokens(PROMPT), fwd_hooks=[
            ("blocks.0.mlp.hook_post", hooks), ("blocks.2.attn.hook_z", hooks), ("blocks.3.attn.hook_v", hooks)])
    assert zero.probs_after[0].item() == pytest.approx(torch.softmax(logits[0, -1], -1)[zero.target_ids[0]].item(), abs=1e-5)
    mean = ablate_neurons(toy_model, neurons, prompts, mode="mean")
    assert torch.equal(mean.probs_before, zero.probs_before)
    assert not torch.allclose(mean.probs_after, zero.probs_after)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda m: neuron_attribution(m, " ".join(["Veltra"] * 70) + " was born in"), PromptTooLongError, ["Veltra Veltra", "context"]),
        (lambda m: neuron_attribution(m, ""), EmptyInputError, ["prompt"]),
        (lambda m: neuron_attribution(m, PROMPT, top_k=0), InvalidArgumentError, ["top_k", PROMPT]),
        (lambda m: neuron_attribution(m, PROMPT, target=10**6), InvalidArgumentError, ["10000", PROMPT]),
        (lambda m: layer_attribution_scores(m, " ".join(["Veltra"] * 70), 5), PromptTooLongError, ["Veltra"]),
        (lambda m: ablate_neurons(m, [Neuron("ffn", 9, 0)], PROMPT), InvalidArgumentError, ["L9N0", "layer"]),
        (lambda m: ablate_neurons(m, [Neuron("attn", 0, 0, head=0, pos=40)], PROMPT), InvalidArgumentError, ["position 40", PROMPT]),
        (lambda m: ablate_neurons(m, [Neuron("ffn", 0, 0)], PROMPT, mode="half"), InvalidArgumentError, ["half"]),
        (lambda m: ablate_neurons(m, [Neuron("ffn", 0, 0)], [PROMPT, PROMPT], ["Karsa"]), InvalidArgumentError, ["2 prompts"]),
        (lambda m: ablate_neurons(m, [Neuron("ffn", 0, 0)], [" ".join(["Veltra"] * 70)]), PromptTooLongError, ["Veltra"]),
    ],
)
def test_bad_input_raises_specific_errors(toy_model, call, error, words):
    with pytest.raises(error) as err:
        call(toy_model)
    for word in words:
        assert word in str(err.value)
    assert all(not hp.fwd_hooks for hp in toy_model.hook_dict.values())


def test_multi_token_target_and_top_k_clipping(toy_model):
    result = neuron_attribution(toy_model, "Talvik Corlo plays the piano with", "Talvik Corlo", top_k=10**6)
    first = toy_model.tokenizer.encode(" Talvik", add_special_tokens=False)[0]
    assert result.target_id == first and "first token" in result.target_note and "2 tokens" in result.target_note
    cfg = toy_model.cfg
    assert len(result.top_ffn) == cfg.n_layers * cfg.d_mlp
    assert len(result.top_attn) == result.attn_scores.numel()
    assert len(result.query_neurons) == cfg.n_layers * cfg.d_mlp


def test_hooks_are_removed_after_an_exception_inside_a_hook(toy_model, monkeypatch):
    import interp_edit.analysis.ablation as ablation

    def broken(*args, **kwargs):
        def hook(act, hook):
            raise RuntimeError("boom inside a hook")
        return hook

    monkeypatch.setattr(ablation, "_ablation_hook", broken)
    with pytest.raises(RuntimeError, match="boom"):
        ablate_neurons(toy_model, [Neuron("ffn", 1, 2)], PROMPT)
    assert all(not hp.fwd_hooks for hp in toy_model.hook_dict.values())
    monkeypatch.undo()
    assert ablate_neurons(toy_model, [Neuron("ffn", 1, 2)], PROMPT).probs_before.item() > 0.5


def test_figures_and_save(toy_model, tmp_path):
    result = neuron_attribution(toy_model, PROMPT, top_k=10)
    for view in ("overview", "neurons", "heads", "layers", "query"):
        assert result.plot(view).data
    assert list(result.plot("neurons").data[0].x)[:3] == [s.label for s in result.top_ffn[:3]]
    assert "promotes" in result.plot("neurons").data[0].customdata[0]
    html, png = result.save(tmp_path / "attribution")
    assert html.stat().st_size > 1000 and png.stat().st_size > 1000
    ablation = ablate_neurons(toy_model, result.top_ffn, PROMPT)
    assert len(ablation.plot().data) == 2


def test_attribute_command(capsys, tmp_path):
    from interp_edit.cli import main

    assert main(["attribute", "--prompt", PROMPT, "--top-k", "20", "--show", "5", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "target=' Karsa'" in out and "layer=5 attn_score=" in out
    ranked = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in ranked] == ["1", "2", "3", "4", "5"]
    scores = [float(row[3]) for row in ranked]
    assert scores == sorted(scores, reverse=True)
    assert (tmp_path / "attribution_overview.png").is_file() and (tmp_path / "attribution_query.html").is_file()
    assert main(["attribute", "--prompt", " ".join(["Veltra"] * 70)]) == 2
    assert "context" in capsys.readouterr().err


def test_first_order_method_is_the_gradient_of_the_exact_score(toy_model):
    from interp_edit.analysis.attribution import first_order_logprobs, frozen_unembed, shifted_logprobs

    with torch.no_grad():
        _, cache = toy_model.run_with_cache(toy_model.to_tokens(PROMPT))
    readout = frozen_unembed(toy_model, cache["ln_final.hook_scale"][0, -1, 0].item())
    base = cache["blocks.2.hook_resid_mid"][0, -1]
    weights = toy_model.blocks[2].mlp.W_out.detach()[:16]
    target = toy_model.tokenizer.encode(" Karsa", add_special_tokens=False)[0]
    errors = []
    for c in (0.3, 0.03):
        coefs = torch.full((16, 1), c)
        exact = shifted_logprobs(readout, base, weights, coefs, target)
        errors.append((exact - first_order_logprobs(readout, base, weights, coefs, target)).abs().max().item())
    assert errors[1] < errors[0] / 30  # the remainder is second order in the coefficient
    exact = neuron_attribution(toy_model, PROMPT, "Karsa", top_k=50)
    approx = neuron_attribution(toy_model, PROMPT, "Karsa", top_k=50, method="first_order")
    assert approx.settings["method"] == "first_order" and torch.equal(approx.layer_scores, exact.layer_scores)
    assert len({s.neuron for s in exact.top_ffn} & {s.neuron for s in approx.top_ffn}) >= 40
    with pytest.raises(InvalidArgumentError, match="method"):
        neuron_attribution(toy_model, PROMPT, method="second_order")
