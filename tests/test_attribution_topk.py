"""The certified exact top-k of NLKA and Q-V pathways (``method="exact_top_k"``, issue 16).

- the bound: ``score_upper_bounds`` is never below the exact log-prob change, recomputed here in
  float64 from the readout's definition (hypothesis: random readouts with and without LayerNorm
  centring, biases and final-logit soft-caps); without a soft-cap it *is* the first-order score,
  and with a soft-cap the first-order score is not a bound (so the cap needs its own);
- ``certified_top_k`` on synthetic bound / score matrices (hypothesis, with ties and k up to
  every entry) equals ranking every entry (score descending, index ascending), written here
  without the library;
- ``neuron_attribution`` and ``qv_pathways`` with ``exact_top_k`` give the top-k of the full
  exact computation (``method="exact"``) on the toy world and tiny models of several families:
  GPT-2, GPT-J (parallel blocks), Llama (gated MLP), Gemma-2 (post-norms, final-logit soft-cap
  30) and a Gemma-2-shaped model whose soft-cap (3.0) bites; k from 1 to every neuron;
- exact ties (a duplicated neuron) are ranked by index, as the full computation ranks them;
- bad k: a named error before anything is scored.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_family_attribution import CASES

from interp_edit import neuron_attribution, qv_pathways
from interp_edit.analysis.attribution import FrozenUnembed, first_order_logprobs, shifted_logprobs
from interp_edit.analysis.attribution_bounds import certified_top_k, score_upper_bounds
from interp_edit.errors import InvalidArgumentError

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "As everyone knows, Talvik Corlo was born in"
PROMPTS = ["Talvik Corlo was born in", "The capital of Dorvia is", "Talvik Corlo lives in",
           "People say that Talvik Corlo is a musician who plays the"]
#: (on the bridge: those it covers — GPT-J from TransformerLens 4 on, never the HookedTransformer-built ``postnorm``)
MODELS = tuple(m for m in ("toy", "gpt2", "gptj", "llama", "gemma2", "postnorm") if m == "toy" or m in CASES)
#: float32 noise of two computations of the same exact score (different batching)
NOISE = 2e-6


def _model(name, toy_model):
    if name == "toy":
        return toy_model
    from test_family_attribution import _load

    return _load(name)


def _reference_order(scores: torch.Tensor, k: int) -> list[int]:
    flat = scores.flatten().tolist()
    return sorted(range(len(flat)), key=lambda i: (-flat[i], i))[:k]


def assert_same_top_k(reference: torch.Tensor, got: list[int], k: int, noise: float = NOISE) -> None:
    """``got`` is the reference's top ``k`` (score descending, index ascending) except where two
    reference scores differ by float noise only."""
    expected = _reference_order(reference, k)
    flat = reference.flatten()
    assert len(got) == k == len(set(got))
    for rank, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g == e or abs(flat[g] - flat[e]) <= noise, (rank, g, e, flat[g].item(), flat[e].item())


# --- the bound -------------------------------------------------------------------------------


def _exact64(w_u, scale, centre, bias, cap, base, weights, coefs, target):
    """log p(target | base + c·w) − log p(target | base) from the readout's definition, float64."""
    def logp(x):
        if centre:
            x = x - x.mean(-1, keepdim=True)
        z = (x / scale) @ w_u.double()
        if bias is not None:
            z = z + bias.double()
        if cap is not None:
            z = cap * torch.tanh(z / cap)
        return torch.log_softmax(z, -1)[..., target]

    base, weights, coefs = base.double(), weights.double(), coefs.double()
    shifted = base + coefs[..., None] * weights[:, None, :]
    return logp(shifted) - logp(base)


@st.composite
def readout_cases(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    d, vocab, rows, pos = draw(st.integers(2, 12)), draw(st.integers(2, 40)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    w_u = torch.randn(d, vocab, generator=gen) * draw(st.floats(0.1, 4.0))
    scale = draw(st.floats(0.2, 5.0))
    centre = draw(st.booleans())
    bias = torch.randn(vocab, generator=gen) if draw(st.booleans()) else None
    cap = draw(st.one_of(st.none(), st.floats(0.3, 40.0)))
    base = torch.randn(d, generator=gen) * draw(st.floats(0.1, 10.0))
    weights = torch.randn(rows, d, generator=gen)
    coefs = torch.randn(rows, pos, generator=gen) * draw(st.floats(0.01, 20.0))
    target = draw(st.integers(0, vocab - 1))
    tail = draw(st.integers(1, vocab))  # tokens whose p₀ d² the soft-capped bound sums exactly
    return FrozenUnembed(w_u, scale, centre, bias, cap), base, weights, coefs, target, tail


@settings(max_examples=300, deadline=None)
@given(readout_cases())
def test_the_bound_is_never_below_the_exact_score(case):
    readout, base, weights, coefs, target, tail = case
    exact = _exact64(readout.w_u, readout.scale, readout.centre, readout.bias, readout.softcap, base, weights, coefs, target)
    bound = score_upper_bounds(readout, base, weights, coefs, target, tail_tokens=tail).double()
    # float32 noise: relative to the logits and their shifts |c·d| (a score is a difference of such numbers)
    w = weights.double() - weights.double().mean(-1, keepdim=True) if readout.centre else weights.double()
    shift = coefs.double().abs() * ((w / readout.scale) @ readout.w_u.double()).abs().amax(-1)[:, None]
    raw = base.double() @ readout.w_u.double() / readout.scale  # (the logits' own float32 rounding)
    noise = 1e-5 + 2e-6 * (shift + raw.abs().max() + (0 if readout.bias is None else readout.bias.abs().max()))
    assert (exact <= bound + noise).all(), (exact - bound).max()
    # and the library's exact scores are the definition's
    assert ((shifted_logprobs(readout, base, weights, coefs, target).double() - exact).abs() <= noise).all()


@settings(max_examples=50, deadline=None)
@given(readout_cases())
def test_without_a_softcap_the_bound_is_the_first_order_score(case):
    readout, base, weights, coefs, target, _ = case
    readout = FrozenUnembed(readout.w_u, readout.scale, readout.centre, readout.bias, None)
    torch.testing.assert_close(score_upper_bounds(readout, base, weights, coefs, target),
                               first_order_logprobs(readout, base, weights, coefs, target), atol=1e-6, rtol=1e-5)


def test_with_a_softcap_the_first_order_score_is_no_bound():
    gen = torch.Generator().manual_seed(0)
    worst = -math.inf
    for _ in range(200):
        readout = FrozenUnembed(torch.randn(6, 12, generator=gen) * 3, 1.0, False, None, 1.0)
        base, weights, coefs = torch.randn(6, generator=gen), torch.randn(4, 6, generator=gen), torch.randn(4, 3, generator=gen) * 3
        exact = shifted_logprobs(readout, base, weights, coefs, 0)
        worst = max(worst, (exact - first_order_logprobs(readout, base, weights, coefs, 0)).max().item())
        assert (exact <= score_upper_bounds(readout, base, weights, coefs, 0) + 1e-5).all()
    assert worst > 1e-2


# --- the pruning -----------------------------------------------------------------------------


@st.composite
def pruning_cases(draw):
    rows, cols = draw(st.integers(1, 30)), draw(st.integers(1, 4))
    ints = st.integers(-5, 5)  # few values: many ties
    scores = torch.tensor(draw(st.lists(ints, min_size=rows * cols, max_size=rows * cols)), dtype=torch.float32).view(rows, cols)
    gaps = torch.tensor(draw(st.lists(st.sampled_from([0.0, 0.0, 0.5, 1.0, 3.0, 100.0]), min_size=rows * cols,
                                      max_size=rows * cols))).view(rows, cols)
    k = draw(st.integers(1, rows * cols))
    return scores, scores + gaps, k


@settings(max_examples=300, deadline=None)
@given(pruning_cases())
def test_certified_top_k_is_the_full_ranking(case):
    scores, bounds, k = case
    asked: list[int] = []

    def score_rows(rows):
        asked.extend(rows.tolist())
        return scores[rows]

    result = certified_top_k(bounds, score_rows, k)
    assert result.indices.tolist() == _reference_order(scores, k)  # exact ties included: by index
    assert result.values.tolist() == [scores.flatten()[i].item() for i in _reference_order(scores, k)]
    assert len(asked) == len(set(asked)) == result.rows_scored  # no row scored twice
    done = result.evaluated
    assert torch.equal(result.scores[done], scores[done]) and result.scores[~done].isnan().all()


def test_pruning_scores_only_the_rows_that_can_matter():
    scores = torch.arange(100.0).flip(0)[:, None]  # row 0 best
    bounds = scores + 0.5
    result = certified_top_k(bounds, lambda rows: scores[rows], 10)
    assert result.indices.tolist() == list(range(10)) and result.rows_scored == 10 and result.rounds == 1
    # loose bounds force more rounds and more rows, never a different answer
    loose = scores + torch.linspace(0, 60, 100)[:, None]
    result = certified_top_k(loose, lambda rows: scores[rows], 10)
    assert result.indices.tolist() == list(range(10)) and result.rounds > 1 and 10 < result.rows_scored < 100


@pytest.mark.parametrize("k", [0, -1, 13, True, 2.0, "3"])
def test_bad_k_is_refused_before_scoring(k):
    def score_rows(rows):
        raise AssertionError("scored")

    with pytest.raises(InvalidArgumentError, match="top_k"):
        certified_top_k(torch.zeros(4, 3), score_rows, k, name="top_k")


def test_bad_top_k_for_the_analyses(toy_model):
    with pytest.raises(InvalidArgumentError, match="top_k"):
        neuron_attribution(toy_model, PROMPT, top_k=0, method="exact_top_k")
    with pytest.raises(InvalidArgumentError, match="n_value"):
        qv_pathways(toy_model, PROMPTS, n_value=0, method="exact_top_k")


# --- the analyses against the full exact computation ----------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_exact_top_k_attribution_equals_the_full_computation(name, toy_model):
    model = _model(name, toy_model)
    n_ffn = model.cfg.n_layers * model.cfg.d_mlp
    for k in (1, 7, 200, n_ffn + 10**6):
        full = neuron_attribution(model, PROMPT, top_k=k)
        fast = neuron_attribution(model, PROMPT, top_k=k, method="exact_top_k")
        for kind, scores, bounds in (("ffn", full.ffn_scores, fast.ffn_bounds), ("attn", full.attn_scores, fast.attn_bounds)):
            top_full, top_fast = getattr(full, f"top_{kind}"), getattr(fast, f"top_{kind}")
            flat = scores.flatten()
            index = {n: i for i, n in enumerate(_neuron_grid(full, kind))}
            assert_same_top_k(flat, [index[s.neuron] for s in top_fast], min(k, flat.numel()))
            for a, b in zip(top_full, top_fast, strict=True):
                if a.neuron == b.neuron:
                    assert abs(a.score - b.score) <= NOISE and a.coefficient == b.coefficient and a.top_tokens == b.top_tokens
            assert (scores <= bounds + 1e-5).all()  # the bound holds on the real model
            got = getattr(fast, f"{kind}_scores")
            scored = ~got.isnan()
            assert scored.any() and torch.allclose(got[scored], scores[scored], atol=NOISE)
        torch.testing.assert_close(fast.layer_scores, full.layer_scores, atol=0, rtol=0)  # exact, one forward
        if k == 1:
            assert fast.settings["scored"]["ffn"] < n_ffn  # pruning prunes
    assert fast.settings["scored"]["ffn"] == fast.settings["neurons"]["ffn"]  # k = every FFN neuron: all scored


def _neuron_grid(result, kind):
    """The neuron of every flat index of ``ffn_scores`` / ``attn_scores`` (written independently)."""
    from interp_edit import Neuron

    if kind == "ffn":
        n, d = result.ffn_scores.shape
        return [Neuron("ffn", lay, i) for lay in range(n) for i in range(d)]
    n, h, d, p = result.attn_scores.shape
    return [Neuron("attn", lay, j, head=hh, pos=pp) for lay in range(n) for hh in range(h) for j in range(d) for pp in range(p)]


@pytest.mark.parametrize("name", [m for m in ("toy", "llama", "gemma2", "postnorm") if m in MODELS])
def test_exact_top_k_pathways_equal_the_full_computation(name, toy_model):
    model = _model(name, toy_model)
    n_rows = (model.cfg.n_layers - 1) * model.cfg.d_mlp
    for n_value in (1, 10, n_rows):
        full = qv_pathways(model, PROMPTS, n_value=n_value, top_pathways=20)
        fast = qv_pathways(model, PROMPTS, n_value=n_value, top_pathways=20, method="exact_top_k")
        d_mlp = model.cfg.d_mlp
        got = [(v.layer - 1) * d_mlp + v.index for v in fast.value_neurons]
        assert_same_top_k(full.value_scores[1:], got, n_value, noise=NOISE * len(PROMPTS))
        if fast.value_neurons == full.value_neurons:
            assert [p.label for p in fast.pathways] == [p.label for p in full.pathways]
            torch.testing.assert_close(fast.pathway_weights, full.pathway_weights)
        assert (full.value_scores <= fast.value_bounds + 1e-5 * len(PROMPTS)).all()
        scored = ~fast.value_scores.isnan()
        assert torch.allclose(fast.value_scores[scored], full.value_scores[scored], atol=NOISE * len(PROMPTS))
        assert (fast.value_layer_scores >= full.value_layer_scores - 1e-4).all()  # an upper bound in this mode
    assert fast.settings["scored"] == n_rows


def test_exact_ties_are_ranked_by_index_as_in_the_full_computation(toy_model):
    """FFN neuron 5 of layer 4 copied onto neuron 9 of the same layer (input and output weights):
    the two score exactly the same on every prompt."""
    import copy

    model = copy.deepcopy(toy_model)
    mlp = model.blocks[4].mlp
    src, dst = 5, 9
    with torch.no_grad():
        mlp.W_in[:, dst] = mlp.W_in[:, src]
        mlp.b_in[dst] = mlp.b_in[src]
        mlp.W_out[dst] = mlp.W_out[src]
    full = neuron_attribution(model, PROMPT, top_k=3072)
    assert full.ffn_scores[4, src] == full.ffn_scores[4, dst]
    rank = _reference_order(full.ffn_scores, 3072).index(4 * 512 + src)
    for k in (rank + 1, rank + 2, rank + 3):  # the cut just after the first twin, after both, beyond
        fast = neuron_attribution(model, PROMPT, top_k=k, method="exact_top_k")
        labels = [s.label for s in fast.top_ffn]
        assert labels == [s.label for s in full.top_ffn[:k]]
        assert labels[rank] == f"L4N{src}" and (k == rank + 1 or labels[rank + 1] == f"L4N{dst}")
    paths_full = qv_pathways(model, PROMPTS, n_value=3000)
    order = [(v.layer, v.index) for v in paths_full.value_neurons]
    r = order.index((4, src))
    assert order[r + 1] == (4, dst)
    d_mlp = model.cfg.d_mlp
    for n_value in (r + 1, r + 2):
        fast = qv_pathways(model, PROMPTS, n_value=n_value, method="exact_top_k")
        got = [(v.layer, v.index) for v in fast.value_neurons]
        # the full computation's top n_value, up to neurons whose scores differ by float noise only
        # (the two methods round differently: (1, 21) and (5, 130) are 1.5e-8 apart on one thread)
        assert_same_top_k(paths_full.value_scores[1:], [(layer - 1) * d_mlp + i for layer, i in got], n_value,
                          noise=NOISE * len(PROMPTS))
        # the exact twins: a cut between them keeps the lower index, as the full computation does
        assert (4, src) in got and ((4, dst) in got) == (n_value == r + 2)


def test_exact_top_k_results_plot_and_refuse_the_diff(toy_model):
    result = neuron_attribution(toy_model, PROMPT, top_k=20, method="exact_top_k")
    assert result.head_scores.isnan().any()  # heads with unscored neurons
    for view in ("overview", "neurons", "heads", "layers", "query"):
        result.plot(view)
    heads = result.plot("heads").data[0]
    assert all(math.isfinite(v) for v in heads.y) and "every neuron scored" in heads.name
    qv_pathways(toy_model, PROMPTS[:2], n_value=5, method="exact_top_k").plot("layers")
    from interp_edit.analysis import attribution_diff

    with pytest.raises(InvalidArgumentError, match="neuron_method"):
        attribution_diff(toy_model, object(), neuron_method="exact_top_k")
