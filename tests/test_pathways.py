"""Query → value pathways on the toy world's two-hop questions: shapes, rankings consistent
with the scores, and pathway weights recomputed by hand."""

from __future__ import annotations

import pytest
import torch

from interp_edit import neuron_attribution, qv_pathways
from interp_edit.errors import EmptyInputError, InvalidArgumentError, PromptTooLongError

#: many small forwards, which a second thread only slows down when the cores are busy
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def two_hop(toy_world):
    from interp_edit.toyworld import multihop_questions

    questions = [q for q in multihop_questions(toy_world) if len(q.hops) == 2 and q.trained][:6]
    return [q.questions[0] for q in questions], [q.answer for q in questions]


@pytest.fixture(scope="module")
def result(toy_model, two_hop):
    prompts, answers = two_hop
    return qv_pathways(toy_model, prompts, answers, n_value=20, top_pathways=30)


def test_shapes_and_rankings(toy_model, result, two_hop):
    n, d_mlp = toy_model.cfg.n_layers, toy_model.cfg.d_mlp
    assert result.value_scores.shape == result.query_scores.shape == (n, d_mlp)
    assert result.pathway_weights.shape == (n, d_mlp, 20)
    assert len(result.value_neurons) == 20 and len(result.pathways) == 30
    # rankings follow the scores
    assert torch.allclose(result.value_layer_scores, result.value_scores.sum(-1))
    assert torch.allclose(result.query_layer_scores, result.query_scores.sum(-1))
    assert torch.allclose(result.query_scores, result.pathway_weights.sum(-1))
    assert result.value_layer_scores[result.value_layers].tolist() == sorted(result.value_layer_scores.tolist(), reverse=True)
    # query layers: only those holding a pathway (the last layer never does), by signed score
    holding = [layer for layer in range(n) if result.pathway_weights[layer].ne(0).any()]
    assert sorted(result.query_layers) == holding and n - 1 not in holding
    assert result.query_layer_scores[result.query_layers].tolist() == sorted(result.query_layer_scores[holding].tolist(), reverse=True)
    value_of = [result.value_scores[v.layer, v.index].item() for v in result.value_neurons]
    assert value_of == sorted(value_of, reverse=True) and value_of[0] == pytest.approx(result.value_scores[1:].max().item())
    assert min(v.layer for v in result.value_neurons) >= 1
    weights = [p.weight for p in result.pathways]
    assert weights == sorted(weights, reverse=True) and weights[0] == pytest.approx(result.pathway_weights.max().item())
    # a query neuron always sits below its value neuron; the last layer queries nothing
    assert all(p.query.layer < p.value.layer for p in result.pathways)
    assert result.query_scores[-1].abs().max().item() == 0.0
    assert result.layer_flow().sum().item() == pytest.approx(sum(max(w, 0.0) for w in weights), rel=1e-5)
    # value scores are the per-prompt NLKA FFN scores summed over the dataset
    prompts, answers = two_hop
    summed = sum(neuron_attribution(toy_model, p, a, top_k=1).ffn_scores for p, a in zip(prompts[:2], answers[:2], strict=True))
    partial = qv_pathways(toy_model, prompts[:2], answers[:2], n_value=5)
    assert torch.allclose(partial.value_scores, summed, atol=1e-5)


def test_pathway_weight_recomputed_by_hand(toy_model, result, two_hop):
    """weight(q → v) = Σ_prompts m_q · ((W_out[q] − mean) / σ_ln2) · (γ_ln2 ⊙ W_in[:, v]), the
    amount the query neuron adds to the value neuron's pre-activation."""
    prompts, _ = two_hop
    checked = (result.pathways[0], result.pathways[-1])
    totals = [0.0 for _ in checked]
    for prompt in prompts:
        with torch.no_grad():
            _, cache = toy_model.run_with_cache(toy_model.to_tokens(prompt))
        for i, pathway in enumerate(checked):
            q, v = pathway.query, pathway.value
            out = cache[f"blocks.{q.layer}.mlp.hook_post"][0, -1, q.index] * toy_model.blocks[q.layer].mlp.W_out[q.index]
            sigma = cache[f"blocks.{v.layer}.ln2.hook_scale"][0, -1, 0]
            w_in = toy_model.blocks[v.layer].mlp.W_in[:, v.index] * toy_model.blocks[v.layer].ln2.w
            totals[i] += (((out - out.mean()) / sigma) @ w_in).item()
    for pathway, total in zip(checked, totals, strict=True):
        assert pathway.weight == pytest.approx(total, rel=1e-4, abs=1e-5)


def test_contributions_add_up_to_the_pre_activation(toy_model, two_hop):
    """With one prompt, the contributions of every residual component (embeddings, each
    attention output, each FFN neuron of earlier layers) plus the norm bias and b_in give the
    value neuron's pre-activation exactly: the weights are real contributions."""
    prompt, answer = two_hop[0][0], two_hop[1][0]
    single = qv_pathways(toy_model, [prompt], [answer], n_value=3)
    v = max(single.value_neurons, key=lambda n: n.layer)
    column = single.value_neurons.index(v)
    with torch.no_grad():
        _, cache = toy_model.run_with_cache(toy_model.to_tokens(prompt))
    block = toy_model.blocks[v.layer]
    w_in = block.mlp.W_in[:, v.index] * block.ln2.w
    sigma = cache[f"blocks.{v.layer}.ln2.hook_scale"][0, -1, 0]

    def contrib(x):
        return (((x - x.mean()) / sigma) @ w_in).item()

    others = contrib(cache["hook_embed"][0, -1] + cache["hook_pos_embed"][0, -1])
    others += sum(contrib(cache[f"blocks.{lay}.hook_attn_out"][0, -1]) for lay in range(v.layer + 1))
    others += sum(contrib(toy_model.blocks[lay].mlp.b_out) for lay in range(v.layer))
    neurons = single.pathway_weights[: v.layer, :, column].sum().item()
    constant = (block.ln2.b @ block.mlp.W_in[:, v.index] + block.mlp.b_in[v.index]).item()
    pre = cache[f"blocks.{v.layer}.mlp.hook_pre"][0, -1, v.index].item()
    assert neurons + others + constant == pytest.approx(pre, abs=1e-3)


def test_bad_input(toy_model, two_hop):
    prompts, answers = two_hop
    with pytest.raises(InvalidArgumentError, match="2 prompts but 1 targets"):
        qv_pathways(toy_model, prompts[:2], answers[:1])
    with pytest.raises(EmptyInputError):
        qv_pathways(toy_model, [], [])
    with pytest.raises(PromptTooLongError, match="Veltra"):
        qv_pathways(toy_model, [" ".join(["Veltra"] * 70)], ["Karsa"])
    n, d_mlp = toy_model.cfg.n_layers, toy_model.cfg.d_mlp
    assert len(qv_pathways(toy_model, prompts[:1], answers[:1], n_value=10**6, top_pathways=1).value_neurons) == (n - 1) * d_mlp
    with pytest.raises(InvalidArgumentError, match="min_value_layer"):
        qv_pathways(toy_model, prompts[:1], answers[:1], min_value_layer=n)
    clipped = qv_pathways(toy_model, prompts[:1], answers[:1], n_value=2, top_pathways=10**6)
    assert 0 < len(clipped.pathways) == int((clipped.pathway_weights != 0).sum())


#: the review's prompts: with every neuron of layers >= 1 a value neuron, every query layer's summed score is negative
BIRTH = ["Talvik Corlo was born in", "Beldel Kordor was born in"]


def test_query_layers_rank_only_layers_that_hold_a_pathway(toy_model):
    """A layer at or above the highest value neuron's scores exactly 0 by construction: it is
    not ranked, even when every real query layer's signed sum is negative (it used to rank
    first, above them)."""
    n = toy_model.cfg.n_layers
    res = qv_pathways(toy_model, BIRTH, n_value=10**6, top_pathways=3)
    assert max(v.layer for v in res.value_neurons) == n - 1
    scores = res.query_layer_scores
    assert scores[: n - 1].lt(0).all() and scores[n - 1] == 0  # the case that used to rank layer n - 1 first
    assert sorted(res.query_layers) == list(range(n - 1))
    assert res.query_layers == sorted(range(n - 1), key=lambda layer: -scores[layer].item())  # largest signed sum first
    assert f"query_layers={res.query_layers[:3]}" in repr(res) and "WARNING" not in repr(res)
    # value layers: every layer with a nonzero value score, largest signed sum first
    assert res.value_layers == sorted(range(n), key=lambda layer: -res.value_layer_scores[layer].item())
    # a value neuron in layer 2 at most: layers 2 and up hold no query neuron
    low = qv_pathways(toy_model, BIRTH, n_value=3, min_value_layer=1, top_pathways=3)
    top = max(v.layer for v in low.value_neurons)
    assert sorted(low.query_layers) == [layer for layer in range(top) if low.pathway_weights[layer].ne(0).any()]
    assert all(layer < top for layer in low.query_layers)


def test_no_pathway_is_said_in_the_repr_and_the_figures(toy_model, result):
    res = qv_pathways(toy_model, BIRTH, n_value=5, min_value_layer=0)
    assert {v.layer for v in res.value_neurons} == {0}  # nothing below layer 0 can feed them
    assert res.pathways == [] and res.query_layer_scores.eq(0).all()
    assert res.query_layers == [] and "query_layers=[]" in repr(res)
    assert repr(res).startswith("PathwayResult(WARNING='no query → value pathway")
    for view in ("sankey", "layers"):
        assert "WARNING: no query → value pathway" in res.plot(view).layout.title.text
    assert res.value_layers  # the value evidence is still there
    # a result with pathways carries no warning
    assert result.warnings() == [] and "WARNING" not in repr(result) and "WARNING" not in result.plot().layout.title.text


def test_figures(result):
    sankey = result.plot()
    assert sankey.data[0].type == "sankey" and sum(sankey.data[0].link.value) == pytest.approx(result.layer_flow().sum().item())
    assert len(result.plot("layers").data) == 2
    neurons = result.pathway_neurons(5)
    assert len(neurons) == len(set(neurons)) and neurons[0] == result.pathways[0].query
