"""Fast default-suite tests for five bugs a mutation probe found the default suite missed
(issue 29, "test strength"); each is checked against a computation written here, sharing no
code with the implementation:

1. the bridge's grouped-query value weights (``layer_weight(model, "W_V", l)`` repeats each
   key/value head for the query heads that read it): per-head OV contributions of a tiny GQA
   Llama (4 query heads, 2 key/value heads) on the bridge, against the raw Hugging Face
   ``v_proj`` / ``o_proj`` weights — runs under TransformerLens 3.9 too, which has the bridge;
2. the certified top-k keeps a float32 rounding margin: a bound that rounds below its own
   exact score must not prune the row (synthetic, real float32 bounds, and the margin rule on
   the toy model);
3. ``stats_samples="auto"``: a last growth step shorter than the schedule's (the corpus or
   ``max_samples`` ends) never declares convergence, also not from the cache;
4. MEMIT's spread over three layers: each layer writes the remaining residual divided by the
   number of layers left, re-measured after the lower layers' updates;
5. the direction of the paraphrase comparison ([p(new) > p(true)]) and of the neighbourhood
   one ([p(true) > p(new)]) in every evaluation path, on hand-built log-probabilities.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_stats_sources import corpus, plain_moment

# --- 1. the bridge's GQA value-weight layout -------------------------------------------------


def test_bridge_gqa_value_weights_give_each_query_head_its_key_value_heads_output(toy_model):
    """Query head h of a grouped-query model reads key/value head h // (n_heads / n_kv_heads)
    (Hugging Face's ``repeat_kv``: each kv head serves a run of consecutive query heads). The
    per-head OV contribution computed from ``layer_weight``'s ``W_V`` / ``W_O`` equals the one
    computed here from the raw ``v_proj`` / ``o_proj`` weights, and the heads of the reference
    sum to the model's own ``hook_attn_out``."""
    from interp_edit import load_model
    from interp_edit.adapter import architecture
    from interp_edit.adapter.params import layer_weight
    from interp_edit.adapter.tiny import tiny_hf_model

    tokenizer = toy_model.tokenizer
    hf = tiny_hf_model("llama3", vocab_size=len(tokenizer), seed=5)
    config = hf.config
    n_heads, n_kv = config.num_attention_heads, config.num_key_value_heads
    assert (n_heads, n_kv) == (4, 2) and not getattr(config, "attention_bias", False)
    d_head = config.hidden_size // n_heads
    raw = [(block.self_attn.v_proj.weight.detach().double().clone(), block.self_attn.o_proj.weight.detach().double().clone(),
            block.input_layernorm.weight.detach().double().clone(), float(config.rms_norm_eps)) for block in hf.model.layers]
    model = load_model("tiny-llama3-gqa", hf_model=hf, tokenizer=tokenizer, backend="bridge", dtype=torch.float32)
    n_layers = model.cfg.n_layers
    names = {f"blocks.{lay}.{site}" for lay in range(n_layers)
             for site in ("hook_resid_pre", "attn.hook_pattern", "hook_attn_out")}
    tokens = model.to_tokens("As everyone knows, Talvik Corlo was born in Karsa")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    group = n_heads // n_kv
    arch = architecture(model)
    assert [arch.kv_head(h) for h in range(n_heads)] == [h // group for h in range(n_heads)]
    for layer, (v_proj, o_proj, gain, eps) in enumerate(raw):
        x = cache[f"blocks.{layer}.hook_resid_pre"][0].double()  # [pos, d_model]
        normed = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gain  # Llama's RMSNorm
        values = (normed @ v_proj.T).view(len(x), n_kv, d_head)  # v_proj's rows: kv head g = rows g·d_head …
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0].double()  # [head, query, key]
        assert pattern.shape[0] == n_heads
        reference = torch.stack([pattern[h] @ values[:, h // group] @ o_proj[:, h * d_head:(h + 1) * d_head].T
                                 for h in range(n_heads)])  # [head, pos, d_model]
        # the reference is the model's own attention: its heads add up to hook_attn_out (no o_proj bias)
        torch.testing.assert_close(reference.sum(0), cache[f"blocks.{layer}.hook_attn_out"][0].double(), atol=1e-4, rtol=1e-4)
        w_v, w_o = layer_weight(model, "W_V", layer).double(), layer_weight(model, "W_O", layer).double()
        assert w_v.shape == (n_heads, config.hidden_size, d_head)
        for h in range(n_heads):
            g = h // group
            assert torch.equal(w_v[h], v_proj[g * d_head:(g + 1) * d_head].T), (layer, h)
        got = torch.stack([pattern[h] @ (normed @ w_v[h]) @ w_o[h] for h in range(n_heads)])
        torch.testing.assert_close(got, reference, atol=1e-9, rtol=1e-9)


# --- 2. the certified top-k's float32 rounding margin ----------------------------------------


def _full_order(scores: torch.Tensor, k: int) -> list[int]:
    flat = scores.flatten().tolist()
    return sorted(range(len(flat)), key=lambda i: (-flat[i], i))[:k]


def test_a_bound_one_rounding_below_its_score_does_not_prune_the_row():
    """Row 1's exact score is one float32 step above row 0's; its bound, computed in float32,
    came out one step below row 0's score (two steps below its own): within the rounding
    margin, so row 1 must still be scored and win the top-1."""
    from interp_edit.analysis.attribution_bounds import SLACK, certified_top_k

    s0 = torch.tensor(0.25)
    above, below = torch.nextafter(s0, torch.tensor(1.0)), torch.nextafter(s0, torch.tensor(0.0))
    scores = torch.stack([s0, above])[:, None]
    bounds = torch.stack([torch.tensor(1.0), below])[:, None]  # row 0: a loose bound, scored first
    assert (scores[1] - bounds[1]).item() < SLACK
    result = certified_top_k(bounds, lambda rows: scores[rows], 1)
    assert result.indices.tolist() == [1] and result.values.tolist() == [above.item()]
    assert result.evaluated.tolist() == [True, True]


def test_certified_top_k_of_real_float32_bounds_equals_the_full_ranking(one_thread):
    """The same neuron contribution written two ways (w, c) and (3w, c/3): mathematically one
    score, in float32 two scores and two bounds a rounding apart, and the bound of one can
    round below the other's exact score. Over many such pairs the certified top-1 is always
    the full ranking of the exact scores (ties: lower index), including the pairs where a
    certificate without rounding margin would pick the other row; there the two candidates'
    float64 scores differ by less than float32 rounding (so either is right against float64,
    and the certificate must follow the exact scores it was given)."""
    from interp_edit.analysis.attribution import FrozenUnembed, shifted_logprobs
    from interp_edit.analysis.attribution_bounds import certified_top_k, score_upper_bounds

    sensitive = 0
    for seed in range(2000):
        gen = torch.Generator().manual_seed(seed)
        w_u = torch.randn(16, 64, generator=gen)
        readout = FrozenUnembed(w_u, 1.0, False, None, None)
        base = torch.randn(16, generator=gen) * 2
        w0 = torch.randn(16, generator=gen)
        c0 = torch.randn(1, generator=gen).abs() * 1e-2
        weights, coefs = torch.stack([w0, w0 * 3.0]), torch.stack([c0, c0 / 3.0])
        target = int((w0 @ w_u).argmax())  # the direction promotes the target: positive scores
        scores = shifted_logprobs(readout, base, weights, coefs, target)
        bounds = score_upper_bounds(readout, base, weights, coefs, target)
        expected = _full_order(scores, 1)
        assert certified_top_k(bounds, lambda rows, s=scores: s[rows], 1).indices.tolist() == expected, seed
        if certified_top_k(bounds, lambda rows, s=scores: s[rows], 1, slack=0.0).indices.tolist() != expected:
            sensitive += 1  # the float32 bound of the better row rounded below the other's exact score
            z = base.double() + coefs.double() * weights.double()
            logp = torch.log_softmax(z @ w_u.double(), -1)[:, target] - torch.log_softmax(base.double() @ w_u.double(), -1)[target]
            assert (logp[0] - logp[1]).abs() < 1e-7 * logp.abs().max() + 1e-9
            if sensitive == 2:
                break
    assert sensitive == 2  # the case this test is about did occur


def test_exact_top_k_scores_every_neuron_whose_bound_is_within_the_margin(toy_model):
    """``neuron_attribution(method="exact_top_k")`` leaves a neuron unscored (NaN) only if its
    bound plus the rounding margin (at least ``SLACK``) is below the k-th exact score. At
    k = 1500 the k-th scores are small and float32 rounding puts many bounds below their
    exact scores, so the margin decides which neurons are scored."""
    from interp_edit import neuron_attribution
    from interp_edit.analysis.attribution_bounds import SLACK

    result = neuron_attribution(toy_model, "As everyone knows, Talvik Corlo was born in", top_k=1500,
                                method="exact_top_k", n_tokens=0)
    for kind in ("ffn", "attn"):
        scores, bounds = getattr(result, f"{kind}_scores").flatten(), getattr(result, f"{kind}_bounds").flatten()
        kth = min(s.score for s in getattr(result, f"top_{kind}"))
        unscored = scores.isnan()
        assert unscored.any(), kind  # pruning prunes
        assert not (unscored & (bounds + SLACK >= kth)).any(), (kind, int((unscored & (bounds + SLACK >= kth)).sum()))


# --- 3. "auto" statistics: a short last step does not count -----------------------------------


def test_auto_statistics_do_not_settle_on_a_short_last_step(toy_model, toy_world, tmp_path):
    """350 texts, growing from 100 by 2: the schedule is 100, 200, 350, and 350 < 2·200, a
    short last step. The tolerance is chosen (from an independent recomputation) between the
    change 100 → 200 and the smaller change 200 → 350, so only the short step would pass it:
    the sample must not converge (it warns and uses all 350 texts). The same when
    ``max_samples`` ends a longer corpus, with both 200 and 350 already cached: that pair is no
    evidence of settling either."""
    from interp_edit.statistics.auto import auto_statistics
    from interp_edit.statistics.keys import key_statistics

    texts = corpus(toy_world, 350, seed=29)
    name = "blocks.0.mlp.hook_post"
    with torch.no_grad():
        _, cache = toy_model.run_with_cache(toy_model.to_tokens("Talvik Corlo was born in"), names_filter=name)
    key = cache[name][0, 2].double()  # the subject's last token (BOS, Talvik, Corlo)
    solutions, total, count, done = [], 0, 0, 0
    for n in (100, 200, 350):
        more, added = plain_moment(toy_model, texts[done:n], 0)
        total, count, done = total + more, count + added, n
        solutions.append(torch.linalg.solve(total / count, key))
    changes = [float((b - a).norm() / b.norm()) for a, b in zip(solutions, solutions[1:], strict=False)]
    assert changes[1] < 0.8 * changes[0], changes  # the overlap-heavy short step changes less
    tolerance = math.sqrt(changes[0] * changes[1])

    def auto(texts_, **kw):
        with pytest.warns(UserWarning, match="did not settle within 350 texts"):
            return auto_statistics(toy_model, [0], "mlp_post", texts_, {0: key[None]}, tolerance=tolerance, start=100,
                                   growth=2, cache_dir=tmp_path, **kw)[0]

    longer = corpus(toy_world, 500, seed=29)
    assert longer[:350] == texts
    first = auto(texts)  # the corpus ends
    key_statistics(toy_model, [0], corpus=texts, n_samples=200, cache_dir=tmp_path, progress=False)  # now 200 and 350 are cached
    for stats in (first, auto(longer, max_samples=350)):  # max_samples ends
        info = stats.provenance.auto
        assert not info["converged"] and not info["from_cache"], info
        assert [s["n_texts"] for s in info["steps"]] == [100, 200, 350] and stats.provenance.n_texts == 350
        assert [s["counts"] for s in info["steps"]] == [False, True, False]
        assert [s["relative_change"] for s in info["steps"][1:]] == pytest.approx(changes, rel=1e-3)
        torch.testing.assert_close(stats.moment, total / count, atol=1e-6, rtol=1e-5)


# --- 4. MEMIT's spread of the residual over the layers ----------------------------------------


def test_memit_writes_the_remaining_residual_over_the_layers_left(toy_model, toy_world, person_records, tmp_path):
    """MEMIT over layers (0, 1, 2): layer i writes R_i = (z − h_i) / (3 − i) (kmeng01/memit's
    ``resid = targets / (len(layers) - i)``), h_i the last edited layer's output measured with
    the updates of layers < i in place. Here z is read off layer 0's residual (z = h_0 + 3·R_0)
    and each later R_i is recomputed from a forward with the earlier deltas added by hooks."""
    from interp_edit.editing.methods.memit import memit

    layers = (0, 1, 2)
    records = person_records[:2]
    edit = memit(toy_model, records, layers=layers, steps=3, n_prefixes=1, prefix_length=3, corpus=corpus(toy_world, 150, seed=31),
                 stats_samples=150, cache_dir=tmp_path)
    tokenizer = toy_model.tokenizer
    positions = []
    for r in records:  # the subject's last token (BOS first)
        positions.append(len(tokenizer(r.prompt[: r.prompt.index("{}")] + r.subject)["input_ids"]) - 1)
    assert edit.info["edit_token"]["positions"] == positions
    deltas = [edit.deltas[f"blocks.{layer}.mlp.W_out"] for layer in layers]
    site = f"blocks.{layers[-1]}.hook_resid_post"

    def measured(n_applied: int) -> torch.Tensor:
        """h: the last layer's output at the edit token of each bare prompt, deltas of the first
        ``n_applied`` layers added to their MLP outputs."""
        hooks, kept = [], {}
        for layer, delta in zip(layers[:n_applied], deltas, strict=False):
            def keep(act, hook, layer=layer):
                kept[layer] = act

            def add(out, hook, layer=layer, delta=delta):
                return out + (kept[layer].double() @ delta.left.double() @ delta.right.double()).to(out.dtype)

            hooks += [(f"blocks.{layer}.mlp.hook_post", keep), (f"blocks.{layer}.hook_mlp_out", add)]
        rows = []
        for r, pos in zip(records, positions, strict=True):
            with torch.no_grad(), toy_model.hooks(fwd_hooks=hooks):
                _, cache = toy_model.run_with_cache(toy_model.to_tokens(r.prompt.format(r.subject)), names_filter=site)
            rows.append(cache[site][0, pos].double())
        return torch.stack(rows)

    written = [d.right.double() for d in deltas]  # R_i [request, d_model]
    h = [measured(i) for i in range(len(layers))]
    z = h[0] + len(layers) * written[0]
    scale = written[0].abs().max().item()
    for i in range(1, len(layers)):
        assert not torch.allclose(h[i], h[i - 1], atol=1e-3 * scale)  # the lower layers' updates moved h
        torch.testing.assert_close(written[i], (z - h[i]) / (len(layers) - i), atol=1e-4 * scale, rtol=1e-3)


# --- 5. the direction of the paraphrase and neighbourhood comparisons -------------------------

NEW, TRUE = "Gemmel", "Karsa"
#: log p(target | prompt) per token, by (prompt, target): known by construction
LOGPROBS = {
    # rewrite prompt: new wins
    ("Talvik Corlo was born in", NEW): [-0.1], ("Talvik Corlo was born in", TRUE): [-4.0],
    # paraphrases: new wins, new wins, true wins, a tie (counts for neither) -> 2/4
    ("P1 Talvik Corlo's birthplace is", NEW): [-1.0], ("P1 Talvik Corlo's birthplace is", TRUE): [-2.0],
    ("P2 Talvik Corlo came into the world in", NEW): [-0.5], ("P2 Talvik Corlo came into the world in", TRUE): [-3.0],
    ("P3 Talvik Corlo was brought up in", NEW): [-4.0], ("P3 Talvik Corlo was brought up in", TRUE): [-1.0],
    ("P4 Talvik Corlo is a native of", NEW): [-2.0], ("P4 Talvik Corlo is a native of", TRUE): [-2.0],
    # neighbourhood (other subjects, true object Karsa): new wins, true wins, true wins -> 2/3
    ("N1 Korwa Drarin was born in", NEW): [-1.0], ("N1 Korwa Drarin was born in", TRUE): [-3.0],
    ("N2 Mira Tessan was born in", NEW): [-5.0], ("N2 Mira Tessan was born in", TRUE): [-0.1],
    ("N3 Olen Varr was born in", NEW): [-6.0], ("N3 Olen Varr was born in", TRUE): [-0.2],
    # the subject's other relation: its answer wins
    ("Talvik Corlo speaks", NEW): [-3.0], ("Talvik Corlo speaks", "Velan"): [-1.0],
}
PARAPHRASES = ("P1 Talvik Corlo's birthplace is", "P2 Talvik Corlo came into the world in",
               "P3 Talvik Corlo was brought up in", "P4 Talvik Corlo is a native of")
NEIGHBOURS = ("N1 Korwa Drarin was born in", "N2 Mira Tessan was born in", "N3 Olen Varr was born in")


def _prob_mean(prompts, first, second) -> float:
    return sum(math.exp(LOGPROBS[(p, first)][0]) - math.exp(LOGPROBS[(p, second)][0]) for p in prompts) / len(prompts)


@pytest.fixture
def forced_logprobs(monkeypatch):
    """Every evaluation path's teacher-forced scoring replaced by the table above."""
    from interp_edit.evaluation import cases, counterfact, metrics
    from interp_edit.evaluation.logprobs import TokenScores

    def score(model, prompts, targets, batch_size=256):
        rows = [torch.tensor(LOGPROBS[(p, t)]) for p, t in zip(prompts, targets, strict=True)]
        return TokenScores(rows, [torch.zeros(len(r), dtype=torch.bool) for r in rows])

    for module in (metrics, counterfact, cases):
        monkeypatch.setattr(module, "score_continuations", score)


def test_paraphrase_counts_new_over_true_and_neighbourhood_true_over_new(forced_logprobs):
    from interp_edit.evaluation import metrics

    model = object()  # never run: the scores come from the table
    for compare in ("mean_logprob", "prob"):
        assert metrics.paraphrase_score(model, PARAPHRASES, NEW, TRUE, compare) == 0.5
        assert metrics.efficacy_score(model, PARAPHRASES, NEW, TRUE, compare) == 0.5
        assert metrics.neighborhood_score(model, NEIGHBOURS, NEW, TRUE, compare) == pytest.approx(2 / 3)
        assert metrics.efficacy_score(model, ["Talvik Corlo was born in"], NEW, TRUE, compare) == 1.0
    assert metrics.paraphrase_magnitude(model, PARAPHRASES, NEW, TRUE) == pytest.approx(_prob_mean(PARAPHRASES, NEW, TRUE))
    assert metrics.neighborhood_magnitude(model, NEIGHBOURS, NEW, TRUE) == pytest.approx(_prob_mean(NEIGHBOURS, TRUE, NEW))


def test_counterfact_scores_and_case_metrics_use_the_same_directions(forced_logprobs):
    from interp_edit.data.cases import CounterFactCase, Rewrite
    from interp_edit.evaluation.cases import aggregate, evaluate_cases
    from interp_edit.evaluation.counterfact import counterfact_scores
    from interp_edit.prompts import CounterFactRecord

    record = CounterFactRecord(0, "{} was born in", "Talvik Corlo", "born_in", TRUE, NEW, PARAPHRASES, NEIGHBOURS, (),
                               (("Talvik Corlo speaks", "Velan"),))
    [row] = counterfact_scores(object(), [record])
    assert (row["efficacy"], row["paraphrase"], row["same_subject"]) == (1.0, 0.5, 1.0)
    assert row["neighborhood"] == pytest.approx(2 / 3)
    case = CounterFactCase("c0", Rewrite("{} was born in", "Talvik Corlo", NEW, TRUE), PARAPHRASES, NEIGHBOURS)
    [metrics] = evaluate_cases(object(), [case])
    assert (metrics["efficacy_score"], metrics["paraphrase_score"]) == (1.0, 0.5)
    assert metrics["neighborhood_score"] == pytest.approx(2 / 3)
    assert metrics["paraphrase_magnitude"] == pytest.approx(_prob_mean(PARAPHRASES, NEW, TRUE))
    assert metrics["neighborhood_magnitude"] == pytest.approx(_prob_mean(NEIGHBOURS, TRUE, NEW))
    assert aggregate([metrics])["counterfact_score"] == pytest.approx(3 / (1 / 1.0 + 1 / 0.5 + 1 / (2 / 3)))
