"""Circuits on every family in the matrix (issue 30): the post-sublayer-norm families (Gemma-2 on
the hooked backend; Gemma-3 on the TransformerBridge, with Llama-3 — grouped-query attention —
and GPT-NeoX — parallel blocks — there too), checked as ``test_circuits.py`` checks the hooked
pre-norm families, against the references of :mod:`circuit_reference` (no code shared with
:mod:`interp_edit.analysis.circuits`):

- a head's sender output under a post-norm is its frozen-scale share ``γ · result_h / scale``,
  and the shares sum to exactly what the block adds (``hook_attn_out``), with Gemma's gain
  convention read right (``1 + w``) on either backend;
- exact edge patching against the one-edge-at-a-time loop on a sample of edges;
- EAP, its clean–corrupted and denoising variants against autograd first-order terms;
- EAP-IG (inputs; activations of a layer's heads and of an MLP) against the right Riemann sum
  of the path integral, point by point;
- path patching against the hop-by-hop loop; faithfulness against the circuit run;
- what is still refused on the bridge (a TransformerLens without the per-head hook switches,
  an attention bridge without the q/k/v fork, gated attention, ``use_attn_in`` on), before any
  forward, the settings left as they were.

Each family's model is tiny and few edges are sampled for the loops, to keep the time small."""

from __future__ import annotations

import pytest
import torch
from circuit_reference import (
    CLEAN,
    CORRUPTED,
    assert_first_order_terms,
    has_post_norms,
    n_kv_heads,
    parallel,
    post_norm_gain,
    receiver_kind_edges,
    ref_cache,
    ref_circuit_metric,
    ref_exact_scores,
    ref_outputs,
    ref_path_patch,
    ref_riemann,
    ref_tokens,
    residual_multiplier,
    sample_edges,
    two_edge_paths,
)
from family_models import BACKEND, FAMILY_NAMES, family_model
from model_state import assert_unchanged, refused_before_any_forward, snapshot

FAMILIES = ("gemma2",) if BACKEND == "hooked" else ("gemma3", "llama3", "neox") + tuple(
    f for f in ("granite",) if f in FAMILY_NAMES) + tuple(  # a residual multiplier (TransformerLens 4)
    f for f in ("phi", "cohere", "falcon7b") if f in FAMILY_NAMES) + tuple(  # one shared input norm
    f for f in ("olmo2", "olmo3") if f in FAMILY_NAMES)  # no input norms (TransformerLens 4)
#: the post-norm families, checked on every method (the others: sender outputs and exact patching)
FULL = ("gemma2", "gemma3", "olmo2", "olmo3")

bridge_only = pytest.mark.skipif(BACKEND != "bridge", reason="refusals of the TransformerBridge backend")


def flags(model):
    return (model.cfg.use_split_qkv_input, model.cfg.use_attn_result, model.cfg.use_hook_mlp_in)


def kv(model, group):
    return f"{'kv' if n_kv_heads(model) != model.cfg.n_heads else 'h'}{group}"


def edges_for(model):
    """A random sample, and the edges a post-norm touches: heads into their own layer's MLP
    (sequential blocks), into later heads' q/k/v, into the logits."""
    picked = sample_edges(model, k=8, seed=1)
    same_layer_mlp = [("a1.h2", "m1")] if not parallel(model) else [("a0.h2", "m1")]
    return picked + same_layer_mlp + [("a0.h1", "a1.h3<q>"), ("a0.h3", f"a2.{kv(model, 0)}<v>"), ("a1.h0", "logits")]


def one_top_token(model) -> bool:
    """Whether the clean and corrupted prompts' top tokens coincide (some tiny random models)."""
    from circuit_reference import logits_of

    with torch.no_grad():
        return bool(logits_of(model, ref_tokens(model, CLEAN))[0, -1].argmax() ==
                    logits_of(model, ref_tokens(model, CORRUPTED))[0, -1].argmax())


def _checked(family):
    m = family_model(family)
    state = snapshot(m)
    yield m
    assert_unchanged(m, state)
    assert flags(m) == (False, False, False)


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    """Every family of the backend's list: sender outputs and exact edge patching."""
    yield from _checked(request.param)


@pytest.fixture(scope="module", params=[f for f in FAMILIES if f in FULL])
def post_model(request):
    """The post-norm family of the backend: every method."""
    yield from _checked(request.param)


#: the bridge families whose attention is interp_edit's (adapter.bridge_attention) in TransformerLens'
#: generic AttentionBridge, which has no per-head q/k/v fork: the circuits refuse them by that capability
NO_QKV_FORK = ("gptj", "gptneo") if BACKEND == "bridge" else ()


@pytest.fixture(scope="module", params=[f for f in FAMILY_NAMES if f not in NO_QKV_FORK])
def any_model(request):
    """Every family of the backend's matrix (that the circuits run on)."""
    yield from _checked(request.param)


def test_every_family_of_the_matrix_has_its_edges(any_model):
    """Every family runs the circuits: its senders' outputs are the reference's and add up to
    what each block writes, and EAP scores every allowed edge (finite, 0 elsewhere)."""
    from interp_edit.analysis.circuits import edge_scores

    check_shares(any_model)
    scores = edge_scores(any_model, CLEAN, CORRUPTED, method="eap", metric="prob")
    assert torch.isfinite(scores.scores).all() and (scores.scores[~scores.graph.allowed] == 0).all()
    assert scores.flat().abs().max() > 0


def test_a_heads_output_is_its_frozen_scale_share_of_what_the_block_adds(model):
    """The engine's sender outputs are the reference's; with a post-norm the heads' shares sum
    to ``hook_attn_out`` exactly, and the adapter's gain times the norm's own normalised output
    is its output (Gemma's ``1 + w``, whichever way the backend stores it)."""
    check_shares(model)


def check_shares(model):
    from interp_edit.adapter.hooks import post_norm_scale
    from interp_edit.analysis.circuits import edge_graph
    from interp_edit.analysis.circuits.engine import prepare_task, sender_outputs

    graph = edge_graph(model)
    task = prepare_task(model, CLEAN, CORRUPTED, metric="prob")  # tiny Granite's two top tokens coincide
    got = sender_outputs(model, graph, task.corrupted)[0]
    want = ref_outputs(model, ref_tokens(model, CORRUPTED))
    for i, sender in enumerate(graph.senders):
        torch.testing.assert_close(got[:, i], want[sender.name].float(), atol=1e-5, rtol=1e-5, msg=sender.name)
    layers = range(model.cfg.n_layers)
    names = [f"blocks.{layer}.hook_attn_out" for layer in layers]
    if has_post_norms(model):
        names += [f"blocks.{layer}.ln1_post.hook_normalized" for layer in layers]
    cache = ref_cache(model, ref_tokens(model, CORRUPTED), names)
    for layer in layers:
        heads = sum(want[f"a{layer}.h{h}"] for h in range(model.cfg.n_heads))
        if has_post_norms(model):  # Gemma has no b_O: the shares are all the block adds
            torch.testing.assert_close(heads, cache[f"blocks.{layer}.hook_attn_out"], atol=2e-6, rtol=1e-5)
            name, gain = post_norm_scale(model, "attn", layer)
            assert name == f"blocks.{layer}.ln1_post.hook_scale"
            torch.testing.assert_close(gain, post_norm_gain(model, layer), atol=0, rtol=0)
            torch.testing.assert_close(gain * cache[f"blocks.{layer}.ln1_post.hook_normalized"],
                                       cache[f"blocks.{layer}.hook_attn_out"], atol=2e-6, rtol=1e-5)
        else:
            b_o = getattr(model.blocks[layer].attn, "b_O", None)  # the bridge has None where Hugging Face has no bias
            b_o = 0.0 if b_o is None else b_o * residual_multiplier(model)
            torch.testing.assert_close(heads + b_o, cache[f"blocks.{layer}.hook_attn_out"],
                                       atol=2e-6, rtol=1e-5)


def test_the_post_norm_gain_is_gemmas_one_plus_w():
    """TransformerLens' HookedTransformer stores Gemma's ``1 + w`` in ``ln1_post.w``; the bridge
    keeps Hugging Face's ``w``: the gain the engine multiplies by is ``1 + w`` of the Hugging
    Face model on either backend, bit for bit (w is drawn from U(-0.5, 0.5), far from 0 and 1)."""
    from family_models import bridge_hf, family_hf

    from interp_edit.adapter.hooks import post_norm_scale

    family = "gemma2" if BACKEND == "hooked" else "gemma3"
    model = family_model(family)
    hf = family_hf(family) if BACKEND == "hooked" else bridge_hf(family)
    for layer in range(model.cfg.n_layers):
        w = hf.model.layers[layer].post_attention_layernorm.weight.detach().float()
        _, gain = post_norm_scale(model, "attn", layer)
        torch.testing.assert_close(gain.float(), 1.0 + w, atol=0, rtol=0)
        _, gain = post_norm_scale(model, "mlp", layer)
        torch.testing.assert_close(gain.float(), 1.0 + hf.model.layers[layer].post_feedforward_layernorm.weight.detach().float(),
                                   atol=0, rtol=0)


def test_exact_edge_patching_equals_a_one_edge_at_a_time_loop(model):
    from interp_edit.analysis.circuits import edge_scores

    edges = edges_for(model)
    metrics = (("logit_diff", "kl") if has_post_norms(model) else ("prob",) if one_top_token(model)
               else ("logit_diff",))  # where the clean and corrupted top tokens coincide there is no logit difference
    reference = ref_exact_scores(model, metrics, edges)
    for metric in metrics:
        got = edge_scores(model, CLEAN, CORRUPTED, method="exact", metric=metric, max_rows=400)
        want = reference[metric]
        scale = max(abs(v) for v in want.values())
        for (s, r), value in want.items():
            assert got.edge(s, r) == pytest.approx(value, abs=2e-4 * scale + 1e-6), (metric, s, r)


def test_eap_and_clean_corrupted_equal_the_hand_computed_first_order_terms(post_model):
    assert_first_order_terms(post_model, edges_for(post_model))


def test_eap_ig_is_the_right_riemann_sum_of_the_path_integral(post_model):
    """Two steps, α = 1/2 and 1, over activations: the embeddings move (as in EAP-IG over
    inputs), the heads of layer 0 together (under a post-norm: the block's normed attention
    output moves by the change of their shares), the MLP of layer 0 alone."""
    from interp_edit.analysis.circuits import edge_scores

    model = post_model
    alphas = (0.5, 1.0)
    heads = [("a0.h1", "a1.h2<q>"), ("a0.h3", f"a1.{kv(model, 0)}<k>"), ("a0.h2", "logits"), ("a0.h1", "m2")]
    heads += [("a0.h0", "m0")] if not parallel(model) else []
    mlp = [("m0", "a1.h1<q>"), ("m0", "logits")]
    inputs = [("input", "a0.h2<q>"), ("input", "m1"), ("input", "logits")]
    head_hook = "blocks.0.hook_attn_out" if has_post_norms(model) else "blocks.0.attn.hook_result"
    want = {**ref_riemann(model, head_hook, heads, alphas), **ref_riemann(model, "blocks.0.hook_mlp_out", mlp, alphas)}
    want_inputs = ref_riemann(model, "blocks.0.hook_resid_pre", inputs, alphas)
    acts = edge_scores(model, CLEAN, CORRUPTED, method="eap_ig_activations", ig_steps=2)
    for (s, r), value in {**want, **want_inputs}.items():  # the input's group moves as in EAP-IG over inputs
        assert acts.edge(s, r) == pytest.approx(value, rel=1e-4, abs=1e-5), (s, r)


def test_path_patching_equals_a_hop_by_hop_hook_loop(post_model):
    from interp_edit.analysis.circuits import path_patch

    model = post_model
    last = f"a2.{kv(model, (3 * n_kv_heads(model)) // model.cfg.n_heads)}<v>"  # read by head 3 of layer 2
    mlp_hop = ["a1.h2 -> m1", "m1 -> logits"] if not parallel(model) else ["a0.h1 -> m1", "m1 -> logits"]
    paths = [["a0.h1 -> logits"], ["a0.h0 -> a1.h3<q>", f"a1.h3 -> {last}", "a2.h3 -> logits"], mlp_hop,
             ["input -> m0", "m0 -> a1.h0<q>", "a1.h0 -> m2", "m2 -> logits"]]
    res = path_patch(model, CLEAN, CORRUPTED, paths)
    for path, effect in zip(paths, res.effects.tolist(), strict=True):
        want = ref_path_patch(model, path)
        assert effect == pytest.approx(want, abs=1e-4 * max(1.0, abs(want))), path


def test_a_path_not_ending_at_logits_passes_its_last_receivers_change_on(model):
    """A one-edge path is exact edge patching (the reference's one-edge loop) for every receiver
    kind, and a two-edge path ending at a q/k/v or MLP input the hop-by-hop loop, in every family
    (post-norms: the last node's layer-mates' frozen-scale shares move with the norm's scale)."""
    from interp_edit.analysis.circuits import path_patch

    metric = "prob" if one_top_token(model) else "logit_diff"  # no logit difference where the top tokens coincide
    edges = receiver_kind_edges(model)
    want = {(f"{s} -> {r}",): v for (s, r), v in ref_exact_scores(model, (metric,), edges)[metric].items()}
    want.update({tuple(p): ref_path_patch(model, p, metric) for p in two_edge_paths(model)})
    res = path_patch(model, CLEAN, CORRUPTED, [list(p) for p in want], metric=metric)
    scale = max(abs(v) for v in want.values())
    assert scale > 1e-4  # the check has something to see
    for path, effect in zip(res.paths, res.effects.tolist(), strict=True):
        assert effect == pytest.approx(want[path], abs=2e-4 * scale + 1e-6), (metric, path)


def test_faithfulness_is_the_metric_of_the_circuit_run(post_model):
    from interp_edit.analysis.circuits import edge_graph, find_circuit

    model = post_model
    c = find_circuit(model, CLEAN, CORRUPTED, method="eap", n_edges=10, curve=(0, 10, 40, edge_graph(model).n_edges))
    assert c.faithfulness[0] == pytest.approx(0.0, abs=1e-4)
    edges = c.scores.graph.edges()
    for k, value in zip(c.curve_sizes, c.faithfulness, strict=True):
        if k == 0:  # every edge patched: the corrupted run
            continue
        keep = {(c.graph.senders[edges[i][0]].name, c.graph.receivers[edges[i][1]].name) for i in c.order[:k]}
        assert value == pytest.approx(ref_circuit_metric(model, keep), abs=2e-4), k


# --- what is still refused -------------------------------------------------------------------------


def _no_switch_setter(monkeypatch, model):
    monkeypatch.delattr(type(model), "set_use_split_qkv_input")
    return r"TransformerLens \S+'s TransformerBridge has no set_use_split_qkv_input"


def _no_fork(monkeypatch, model):
    monkeypatch.setattr(model.blocks[1].attn, "supports_split_qkv_fork", False)
    return r"block 1's \w+ has no q/k/v input fork \(supports_split_qkv_fork\) in TransformerLens"


def _gated(monkeypatch, model):
    monkeypatch.setattr(model.cfg, "gated_q_proj", True, raising=False)
    return "gated attention"


def _attn_in(monkeypatch, model):
    model.set_use_attn_in(True)  # turned off again by the test
    return "use_attn_in is on"


@bridge_only
@pytest.mark.parametrize("why", [_no_switch_setter, _no_fork, _gated, _attn_in], ids=lambda f: f.__name__.strip("_"))
def test_what_the_bridge_cannot_fork_is_refused_before_any_forward(monkeypatch, why):
    from interp_edit.analysis.circuits import edge_scores, find_circuit, path_patch
    from interp_edit.errors import UnsupportedArchitectureError

    model = family_model("llama3")
    try:
        named = why(monkeypatch, model)
        before = (*flags(model), model.cfg.use_attn_in)
        for run in (lambda: edge_scores(model, CLEAN, CORRUPTED, method="eap"),
                    lambda: find_circuit(model, CLEAN, CORRUPTED, method="eap"),
                    lambda: path_patch(model, CLEAN, CORRUPTED, ["a0.h1 -> logits"])):
            with refused_before_any_forward(model), pytest.raises(UnsupportedArchitectureError, match=named):
                run()
            assert (*flags(model), model.cfg.use_attn_in) == before
    finally:
        monkeypatch.undo()
        if model.cfg.use_attn_in:
            model.set_use_attn_in(False)
    assert flags(model) == (False, False, False)


@bridge_only
@pytest.mark.parametrize("family", [f for f in NO_QKV_FORK if f in FAMILY_NAMES])
def test_the_families_with_interp_edits_attention_are_refused_by_what_the_bridge_cannot_fork(family):
    """GPT-J / GPT-Neo on the bridge (TransformerLens 4: interp_edit computes their attention,
    adapter.bridge_attention) keep TransformerLens' generic AttentionBridge, which has no per-head
    q/k/v input fork: the circuits refuse them by that capability, before any forward, the
    model's switches left as they were."""
    from interp_edit.analysis.circuits import edge_scores, find_circuit, path_patch
    from interp_edit.errors import UnsupportedArchitectureError

    model = family_model(family)
    for run in (lambda: edge_scores(model, CLEAN, CORRUPTED, method="eap"),
                lambda: find_circuit(model, CLEAN, CORRUPTED, method="eap"),
                lambda: path_patch(model, CLEAN, CORRUPTED, ["a0.h1 -> logits"])):
        with refused_before_any_forward(model), pytest.raises(UnsupportedArchitectureError,
                                                              match=r"AttentionBridge has no q/k/v input fork"):
            run()
    assert flags(model) == (False, False, False)


@bridge_only
@pytest.mark.parametrize("family", [f for f in ("phi", "cohere", "falcon7b") if f in FAMILY_NAMES])
def test_shared_norm_blocks_keep_their_forward_with_the_mlps_own_input(family):
    """One input norm for attention and MLP (Phi-2, Cohere, Falcon's old decoder): in the edge
    hooks' mode the MLP reads the norm of its own hooked input — unhooked, the same forward."""
    from interp_edit.analysis.circuits.engine import edge_hook_mode

    model = family_model(family)
    tokens = ref_tokens(model, CLEAN)
    with torch.no_grad():
        plain = model(tokens, return_type="logits")
        with edge_hook_mode(model):
            hooked = model(tokens, return_type="logits")
            seen = []
            model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_mlp_in", lambda act, hook: seen.append(act.shape))])
    torch.testing.assert_close(hooked, plain, atol=1e-5, rtol=1e-5)
    assert seen == [(1, tokens.shape[1], model.cfg.d_model)]
    assert flags(model) == (False, False, False)
