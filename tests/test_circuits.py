"""Circuits (issue 30, parts 1–3): the edge graph, edge scores and circuits, on tiny random
models of three families — GPT-2 (sequential blocks), GPT-NeoX (parallel blocks) and Llama-3
(grouped-query attention) — each checked against references (:mod:`circuit_reference`) that
share no code with :mod:`interp_edit.analysis.circuits`:

- exact edge patching against a plain loop that patches one edge at a time with its own hooks;
- EAP against the first-order term Δ_s · ∂M/∂x_r computed by hand with autograd on a few edges;
- EAP-IG (inputs and activations) against a fine midpoint Riemann sum of the path integral,
  the error shrinking as ``ig_steps`` grows; the clean–corrupted variant against its definition;
- faithfulness against a forward whose receivers read the corrupted outputs of the senders
  outside the circuit, recomputed here;
- bad input refused naming the argument before any forward, the model left as it was.

These run on the hooked backend; the post-norm families (Gemma-2 here, Gemma-3 on the bridge)
and the TransformerBridge backend get the same kinds of checks in
``test_circuits_families.py``. The graph, bad input, refusals and restored settings are
checked on either backend."""

from __future__ import annotations

import dataclasses
import functools
import json

import pytest
import torch
from circuit_reference import (
    CLEAN,
    CORRUPTED,
    assert_first_order_terms,
    receiver_kind_edges,
    ref_allowed,
    ref_circuit_metric,
    ref_exact_scores,
    ref_gradients,
    ref_metric,
    ref_path_integral,
    ref_path_patch,
    ref_receivers,
    ref_riemann,
    ref_senders,
    ref_tokens,
    sample_edges,
    two_edge_paths,
)
from family_models import BACKEND, family_model
from model_state import assert_unchanged, refused_before_any_forward, snapshot

#: the per-family exactness checks of this module (the bridge's: test_circuits_families.py)
hooked_only = pytest.mark.skipif(BACKEND != "hooked", reason="the bridge's exactness checks are in test_circuits_families.py")

FAMILIES = ("gpt2", "neox", "llama3")


def flags(model):
    return (model.cfg.use_split_qkv_input, model.cfg.use_attn_result, model.cfg.use_hook_mlp_in)


# --- the graph ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES + ("gemma",))
def test_graph_matches_the_residual_stream_rule(family):
    from interp_edit.analysis.circuits import edge_graph

    model = family_model(family)
    g = edge_graph(model)
    senders, receivers = ref_senders(model), ref_receivers(model)
    assert [s.name for s in g.senders] == [s[0] for s in senders]
    assert [r.name for r in g.receivers] == [r[0] for r in receivers]
    expected = torch.tensor([[ref_allowed(model, s, r) for r in receivers] for s in senders])
    assert torch.equal(g.allowed, expected)
    n_kv = model.cfg.n_key_value_heads or model.cfg.n_heads
    assert sum(r.kind == "k" for r in g.receivers) == model.cfg.n_layers * n_kv
    if n_kv != model.cfg.n_heads:  # a key/value receiver is read by every head of its group
        k0 = g.receivers[g.receiver_index("a0.kv0<k>")]
        assert len(k0.heads) == model.cfg.n_heads // n_kv
    if model.cfg.parallel_attn_mlp:
        assert not g.allowed[g.sender_index("a1.h0"), g.receiver_index("m1")]
    else:
        assert g.allowed[g.sender_index("a1.h0"), g.receiver_index("m1")]
    assert "edges=" in repr(g)


# --- exact edge patching --------------------------------------------------------------------


@hooked_only
@pytest.mark.parametrize("family,metrics", [("gpt2", ("logit_diff", "prob", "kl")), ("neox", ("logit_diff",)),
                                            ("llama3", ("logit_diff", "kl"))])
def test_exact_edge_patching_equals_a_one_edge_at_a_time_loop(family, metrics):
    from interp_edit.analysis.circuits import edge_scores

    model = family_model(family)
    state = snapshot(model)
    reference = ref_exact_scores(model, metrics)
    for metric in metrics:
        got = edge_scores(model, CLEAN, CORRUPTED, method="exact", metric=metric, max_rows=300)
        want = reference[metric]
        assert len(want) == got.graph.n_edges
        scale = max(abs(v) for v in want.values())
        for (s, r), value in want.items():
            assert got.edge(s, r) == pytest.approx(value, abs=2e-4 * scale + 1e-6), (metric, s, r)
    assert_unchanged(model, state)
    assert flags(model) == (False, False, False)


@hooked_only
def test_a_batch_of_prompts_scores_the_mean_of_its_prompts():
    """Prompts of different lengths share right-padded forwards; each prompt's own scores
    averaged are the batch's, also when the rows of one forward hold several edges."""
    from interp_edit.analysis.circuits import edge_scores

    model = family_model("gpt2")
    pairs = [(CLEAN, CORRUPTED), ("Talvik Corlo speaks", "Beldel Kordor speaks")]
    for method in ("exact", "eap"):
        batch = edge_scores(model, [c for c, _ in pairs], [k for _, k in pairs], method=method, max_rows=41)
        each = [edge_scores(model, c, k, method=method, max_rows=128) for c, k in pairs]
        torch.testing.assert_close(batch.scores, (each[0].scores + each[1].scores) / 2, atol=2e-4, rtol=1e-4)


# --- EAP, EAP-IG, clean–corrupted -----------------------------------------------------------


@hooked_only
@pytest.mark.parametrize("family", FAMILIES)
def test_eap_and_clean_corrupted_equal_the_hand_computed_first_order_terms(family):
    model = family_model(family)
    assert_first_order_terms(model, sample_edges(model))


@hooked_only
@pytest.mark.parametrize("family", FAMILIES)
def test_eap_ig_inputs_approaches_the_path_integral(family):
    from interp_edit.analysis.circuits import edge_scores

    model = family_model(family)
    edges = sample_edges(model)
    exact = ref_path_integral(model, "blocks.0.hook_resid_pre", edges)
    errors = []
    for steps in (1, 4, 16):
        got = edge_scores(model, CLEAN, CORRUPTED, method="eap_ig_inputs", ig_steps=steps)
        errors.append(max(abs(got.edge(s, r) - v) for (s, r), v in exact.items()))
    scale = max(abs(v) for v in exact.values())
    assert errors[0] > errors[1] > 2 * errors[2], errors  # the right Riemann sum's error falls as 1 / steps
    assert errors[2] < 0.1 * scale, (errors, scale)
    eap = edge_scores(model, CLEAN, CORRUPTED, method="eap")
    one = edge_scores(model, CLEAN, CORRUPTED, method="eap_ig_inputs", ig_steps=1)
    torch.testing.assert_close(one.scores, eap.scores, atol=1e-4 * scale, rtol=1e-4)  # one step: the gradient at the clean run


@hooked_only
@pytest.mark.parametrize("family", ("gpt2", "llama3"))
def test_eap_ig_activations_approaches_the_path_integral_of_the_senders_layer(family):
    """The heads of layer 0 move together from corrupted to clean: their edges' scores approach
    the path integral along that path; the input's edges are those of EAP-IG over inputs."""
    from interp_edit.analysis.circuits import edge_scores

    model = family_model(family)
    n_kv = model.cfg.n_key_value_heads or model.cfg.n_heads
    k_name = f"a1.{'kv' if n_kv != model.cfg.n_heads else 'h'}0<k>"
    edges = [("a0.h1", "a1.h2<q>"), ("a0.h3", k_name), ("a0.h0", "m0"), ("a0.h2", "logits"), ("a0.h1", "m2")]
    exact = ref_path_integral(model, "blocks.0.attn.hook_result", edges)
    errors = []
    runs = {}
    for steps in (2, 8):
        runs[steps] = edge_scores(model, CLEAN, CORRUPTED, method="eap_ig_activations", ig_steps=steps)
        errors.append(max(abs(runs[steps].edge(s, r) - v) for (s, r), v in exact.items()))
    scale = max(abs(v) for v in exact.values())
    assert errors[1] < errors[0] / 2.5, errors  # the right Riemann sum's error falls as 1 / steps
    assert errors[1] < 0.2 * scale, (errors, scale)
    inputs = edge_scores(model, CLEAN, CORRUPTED, method="eap_ig_inputs", ig_steps=2)
    torch.testing.assert_close(runs[2].scores[0], inputs.scores[0], atol=1e-4 * scale, rtol=1e-4)


@hooked_only
@pytest.mark.parametrize("family", ("gpt2", "llama"))
def test_eap_ig_riemann_points_are_the_named_ones_not_the_reference_codes(family):
    """The two named deviations from hannamw/EAP-IG (docs/circuits.md, *Next to the authors'
    code*), point by point with 3 steps. Over inputs: α = 1/3, 2/3, 1 (the clean run counted,
    the corrupted one not), where the reference's loop takes α = 0, 1/3, 2/3. Over activations:
    an edge integrates along its sender's own layer only (layer-1 heads, layer-1 MLP), where the
    reference averages each edge over every layer's path."""
    from interp_edit.analysis.circuits import edge_scores

    model = family_model(family)
    right, left = (1 / 3, 2 / 3, 1.0), (0.0, 1 / 3, 2 / 3)
    inputs = [("input", "a0.h2<q>"), ("input", "m1"), ("input", "logits"), ("a0.h1", "m2"), ("m1", "a2.h0<v>")]
    got = edge_scores(model, CLEAN, CORRUPTED, method="eap_ig_inputs", ig_steps=3)
    want, theirs = ref_riemann(model, "blocks.0.hook_resid_pre", inputs, right), \
        ref_riemann(model, "blocks.0.hook_resid_pre", inputs, left)
    scale = max(abs(v) for v in want.values())
    for edge, value in want.items():
        assert got.edge(*edge) == pytest.approx(value, rel=1e-4, abs=1e-5 * scale), edge
    assert max(abs(got.edge(*e) - theirs[e]) for e in inputs) > 0.01 * scale  # the left sum differs here

    heads = [("a1.h0", "a2.h1<q>"), ("a1.h3", "m2"), ("a1.h2", "logits")]
    mlp = [("m1", "a2.h3<k>"), ("m1", "logits")]
    acts = edge_scores(model, CLEAN, CORRUPTED, method="eap_ig_activations", ig_steps=3)
    want = {**ref_riemann(model, "blocks.1.attn.hook_result", heads, right),
            **ref_riemann(model, "blocks.1.hook_mlp_out", mlp, right)}
    other = ref_riemann(model, "blocks.0.hook_mlp_out", heads + mlp, right)  # another layer's path
    scale = max(abs(v) for v in want.values())
    for edge, value in want.items():
        assert acts.edge(*edge) == pytest.approx(value, rel=1e-4, abs=1e-5 * scale), edge
    assert max(abs(want[e] - other[e]) for e in want) > 0.01 * scale  # the paths differ: the choice matters


@hooked_only
def test_the_reference_codes_eap_ig_conventions_are_named_options():
    """ig_points="left" and ig_paths="all" are hannamw/EAP-IG's conventions: the left Riemann
    points over inputs; over activations every edge averaged over every layer's path (input,
    each layer's heads, each MLP), against references written in the test."""
    from interp_edit.analysis.circuits import edge_scores
    from interp_edit.errors import InvalidArgumentError

    model = family_model("gpt2")
    left = (0.0, 1 / 3, 2 / 3)
    edges = [("input", "a0.h2<q>"), ("a0.h1", "m2"), ("m1", "a2.h0<v>"), ("a1.h2", "logits"), ("m0", "logits")]
    got = edge_scores(model, CLEAN, CORRUPTED, method="eap_ig_inputs", ig_steps=3, ig_points="left")
    want = ref_riemann(model, "blocks.0.hook_resid_pre", edges, left)
    scale = max(abs(v) for v in want.values())
    for edge, value in want.items():
        assert got.edge(*edge) == pytest.approx(value, rel=1e-4, abs=1e-5 * scale), edge
    assert got.settings == {"ig_points": "left"}

    paths = ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.{site}" for layer in range(model.cfg.n_layers)
                                           for site in ("attn.hook_result", "hook_mlp_out")]
    per_path = [ref_riemann(model, hook, edges, (1 / 3, 2 / 3, 1.0)) for hook in paths]
    mean = {e: sum(p[e] for p in per_path) / len(paths) for e in edges}
    acts = edge_scores(model, CLEAN, CORRUPTED, method="eap_ig_activations", ig_steps=3, ig_paths="all")
    scale = max(abs(v) for v in mean.values())
    for edge, value in mean.items():
        assert acts.edge(*edge) == pytest.approx(value, rel=1e-4, abs=1e-5 * scale), edge
    assert acts.settings == {"ig_points": "right", "ig_paths": "all"}
    for bad in ({"ig_points": "middle"}, {"ig_paths": "mine"}):
        with pytest.raises(InvalidArgumentError, match=next(iter(bad))):
            edge_scores(model, CLEAN, CORRUPTED, method="eap_ig_inputs", **bad)


# --- circuits -------------------------------------------------------------------------------


@hooked_only
@pytest.mark.parametrize("family,selection", [("gpt2", "top_n"), ("neox", "greedy"), ("llama3", "top_n")])
def test_faithfulness_is_the_metric_of_the_circuit_run(family, selection):
    from interp_edit.analysis.circuits import find_circuit

    model = family_model(family)
    state = snapshot(model)
    c = find_circuit(model, CLEAN, CORRUPTED, method="eap", n_edges=25, selection=selection, curve=(0, 10, 25, 100))
    assert c.faithfulness[0] == pytest.approx(0.0, abs=1e-4)
    for k, value in zip(c.curve_sizes, c.faithfulness, strict=True):
        edges = c.scores.graph.edges()
        keep = {(c.graph.senders[edges[i][0]].name, c.graph.receivers[edges[i][1]].name) for i in c.order[:k]}
        assert value == pytest.approx(ref_circuit_metric(model, keep), abs=2e-4), k
    full = find_circuit(model, CLEAN, CORRUPTED, method="eap", n_edges=5, curve=(c.graph.n_edges,))
    assert full.faithfulness[0] == pytest.approx(1.0, abs=1e-4)
    assert_unchanged(model, state)


@hooked_only
def test_selections():
    from interp_edit.analysis.circuits import find_circuit

    model = family_model("llama3")
    top = find_circuit(model, CLEAN, CORRUPTED, method="eap", n_edges=30, curve=(30,))
    flat = top.scores.flat().abs()
    kept = flat[top.order[:30]]
    assert kept.min() >= flat[top.order[30:]].max()
    greedy = find_circuit(model, CLEAN, CORRUPTED, method="eap", n_edges=30, selection="greedy", curve=(30,))
    g = greedy.graph
    edges = g.edges()
    reached = set()
    for i in greedy.order:  # every edge reads into the logits or a node an earlier edge carries
        s, r = edges[i]
        receiver = g.receivers[r]
        owners = {f"a{receiver.layer}.h{h}" for h in receiver.heads} if receiver.heads else {receiver.node}
        assert receiver.kind == "logits" or owners & reached, g.edge_name(s, r)
        reached.add(g.senders[s].name)


@hooked_only
def test_result_repr_plot_and_save(tmp_path):
    from interp_edit.analysis.circuits import find_circuit
    from interp_edit.reprs import REPR_LIMIT

    model = family_model("gpt2")
    c = find_circuit(model, CLEAN, CORRUPTED, method="eap_ig_inputs", ig_steps=2, n_edges=12, curve=(0, 12))
    text = repr(c)
    assert text.startswith("CircuitResult(") and "faithfulness=" in text and len(text) <= REPR_LIMIT
    assert repr(c.scores).startswith("EdgeScores(") and "ig_steps=2" in repr(c.scores)
    fig = c.plot()
    lines = [t for t in fig.data if t.mode == "lines" and t.x[0] is not None]
    assert len(lines) == 12
    colours = {t.line.color for t in lines}
    signs = {v >= 0 for _, v in c.edges}
    assert len(colours) == len(signs)
    assert fig.layout.yaxis.autorange == "reversed"
    assert len(c.plot("faithfulness").data[0].x) == 2
    saved = json.loads(c.save(tmp_path / "circuit.json").read_text())
    assert saved["n_edges"] == 12 and len(saved["edges"]) == 12 and saved["faithfulness"] == list(c.faithfulness)
    assert list(tmp_path.iterdir()) == [tmp_path / "circuit.json"]


def test_a_circuit_from_scores_given_equals_one_that_computes_them():
    """``scores=``: no new scoring (no gradient pass), the same order and faithfulness as
    computing the scores in the call; and on another model (here edited by hand) the curve is
    measured on that model, with its own clean run as KL's reference."""
    from interp_edit.analysis.circuits import edge_scores, find_circuit

    model = family_model("gpt2")
    computed = find_circuit(model, CLEAN, CORRUPTED, method="clean_corrupted", metric="kl", n_edges=15, curve=(0, 5, 15))
    scores = edge_scores(model, CLEAN, CORRUPTED, method="clean_corrupted", metric="kl")
    calls = []
    with model.hooks(bwd_hooks=[("hook_embed", lambda grad, hook: calls.append(1))]):
        reused = find_circuit(model, scores=scores, n_edges=15, curve=(0, 5, 15), selection="top_n")
    assert not calls and reused.scores is scores and reused.settings["reused_scores"]
    assert reused.order == computed.order and reused.faithfulness == pytest.approx(computed.faithfulness, abs=1e-6)
    assert not computed.settings["reused_scores"]
    saved = model.blocks[0].mlp.W_out.detach().clone()
    try:
        with torch.no_grad():
            model.blocks[0].mlp.W_out.mul_(3.0)
        on_edited = find_circuit(model, scores=scores, n_edges=15, curve=(15,))
        fresh = find_circuit(model, CLEAN, CORRUPTED, method="clean_corrupted", metric="kl", n_edges=15, curve=(15,))
        # the same kept edges, measured on the edited model (the KL reference is its own clean run)
        assert on_edited.clean_value == pytest.approx(0.0, abs=1e-6)
        from interp_edit.analysis.circuits.circuit import faithfulness_curve
        from interp_edit.analysis.circuits.engine import prepare_task
        task = prepare_task(model, CLEAN, CORRUPTED, answer=scores.answers[0], metric="kl")
        expected, _, _ = faithfulness_curve(model, task, fresh.graph, on_edited.order, [15])
        assert on_edited.faithfulness[0] == pytest.approx(expected[0], abs=1e-5)
    finally:
        with torch.no_grad():
            model.blocks[0].mlp.W_out.copy_(saved)


@pytest.mark.parametrize("kwargs,named", [
    (dict(clean=CLEAN), "clean"), (dict(foil="Karsa"), "foil"), (dict(method="exact"), "method"),
    (dict(metric="prob"), "metric"), (dict(ig_steps=3), "ig_steps"), (dict(scores="scores"), "EdgeScores"),
])
def test_scores_given_with_contradicting_arguments_are_refused(kwargs, named):
    from interp_edit.analysis.circuits import edge_scores, find_circuit
    from interp_edit.errors import InterpEditError

    model = family_model("gpt2")
    scores = edge_scores(model, CLEAN, CORRUPTED, method="eap")
    args = dict(scores=scores) | kwargs
    with refused_before_any_forward(model), pytest.raises(InterpEditError, match=named):
        find_circuit(model, **args)


def test_scores_of_another_graph_are_refused():
    from interp_edit.analysis.circuits import edge_scores, find_circuit
    from interp_edit.errors import InterpEditError

    scores = edge_scores(family_model("gpt2"), CLEAN, CORRUPTED, method="eap")
    model = family_model("llama3")
    with refused_before_any_forward(model), pytest.raises(InterpEditError, match="another edge graph"):
        find_circuit(model, scores=scores)


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,named", [
    (dict(method="eapp"), "method"),
    (dict(method="eap_ig_inputs", ig_steps=0), "ig_steps"),
    (dict(ig_steps=2.5), "ig_steps"),
    (dict(metric="accuracy"), "metric"),
    (dict(direction="sideways"), "direction"),
    (dict(max_rows=0), "max_rows"),
    (dict(clean=[CLEAN, CLEAN]), "corrupted"),
    (dict(answer=["Karsa", "Karsa"]), "answer"),
    (dict(corrupted="Mermi Corgun was born in"), "corrupted[0]"),
    (dict(clean=""), "clean"),
])
def test_bad_input_is_refused_before_any_forward(kwargs, named):
    from interp_edit.analysis.circuits import edge_scores
    from interp_edit.errors import InterpEditError

    model = family_model("gpt2")
    args = dict(clean=CLEAN, corrupted=CORRUPTED)
    args.update(kwargs)
    clean, corrupted = args.pop("clean"), args.pop("corrupted")
    with refused_before_any_forward(model), pytest.raises(InterpEditError, match=named.replace("[", r"\[")):
        edge_scores(model, clean, corrupted, **args)


KL_ZERO = [dict(method="eap"), dict(method="eap_ig_inputs", ig_steps=1), dict(method="eap_ig_activations", ig_steps=1),
           dict(method="eap_ig_activations", ig_steps=1, ig_paths="all")]


def test_kl_scores_that_are_zero_by_construction_are_refused_before_any_forward():
    """KL(p_clean ‖ p_run) is 0 with a zero gradient at the clean run (checked here with
    autograd), so EAP (noising: its gradient at the clean run) and EAP-IG with one right Riemann
    point (α = 1: the clean run) score every edge 0 — refused by edge_scores and find_circuit
    before any forward, naming method, metric and ig_steps and what to use instead; the
    combinations whose gradient is taken elsewhere (denoising EAP, the left point, two steps,
    clean–corrupted) still score."""
    from interp_edit.analysis.circuits import edge_scores, find_circuit
    from interp_edit.errors import InvalidArgumentError

    model = family_model("gpt2")
    clean, corrupted = ref_tokens(model, CLEAN), ref_tokens(model, CORRUPTED)
    grads = ref_gradients(model, clean, ref_metric(model, clean, corrupted, "kl"), {"a1.h0<q>", "m1", "logits"})
    assert max(g.abs().max().item() for g in grads.values()) < 1e-5  # why: nothing to first order at the clean run
    for kwargs in KL_ZERO:
        named = f"method={kwargs['method']!r}.*metric='kl'" if kwargs["method"] == "eap" else \
            f"method={kwargs['method']!r} with ig_steps=1 and metric='kl'"
        with refused_before_any_forward(model), pytest.raises(InvalidArgumentError, match=named) as err:
            edge_scores(model, CLEAN, CORRUPTED, metric="kl", **kwargs)
        assert "eap_ig_inputs" in str(err.value) and "ig_steps >= 2" in str(err.value) and "'exact'" in str(err.value)
        circuit_kwargs = {k: v for k, v in kwargs.items() if k != "ig_paths"}
        with refused_before_any_forward(model), pytest.raises(InvalidArgumentError, match=named):
            find_circuit(model, CLEAN, CORRUPTED, metric="kl", n_edges=5, **circuit_kwargs)
    for kwargs in (dict(method="eap", direction="denoise"), dict(method="eap_ig_inputs", ig_steps=1, ig_points="left"),
                   dict(method="eap_ig_inputs", ig_steps=2), dict(method="clean_corrupted")):
        assert edge_scores(model, CLEAN, CORRUPTED, metric="kl", **kwargs).scores.abs().max() > 1e-3, kwargs


@pytest.mark.parametrize("kwargs,named", [(dict(n_edges=10**6), "n_edges"), (dict(curve=(5, -1)), r"curve\[1\]"),
                                          (dict(selection="best"), "selection")])
def test_bad_circuit_input_is_refused_before_any_forward(kwargs, named):
    from interp_edit.analysis.circuits import find_circuit
    from interp_edit.errors import InterpEditError

    model = family_model("gpt2")
    with refused_before_any_forward(model), pytest.raises(InterpEditError, match=named):
        find_circuit(model, CLEAN, CORRUPTED, **kwargs)


def test_ungrouped_key_value_heads_are_refused_by_name(monkeypatch):
    """ungroup_grouped_query_attention gives every query head its own key/value input, which
    the graph (one per key/value head) does not have; refused before any forward."""
    from interp_edit.analysis.circuits import edge_scores
    from interp_edit.errors import UnsupportedArchitectureError

    model = family_model("llama3")
    monkeypatch.setattr(model.cfg, "ungroup_grouped_query_attention", True, raising=False)
    with refused_before_any_forward(model), pytest.raises(UnsupportedArchitectureError, match="ungroup_grouped_query"):
        edge_scores(model, CLEAN, CORRUPTED)
    assert flags(model) == (False, False, False)


def test_layernorm_post_norms_are_refused_by_name(monkeypatch):
    """The frozen-scale shares are defined for RMSNorm post-norms (the families that have post-norms);
    a LayerNorm one (no family here: the description is altered) is refused naming it."""
    from interp_edit.adapter import architecture
    from interp_edit.analysis.circuits import path_patch
    from interp_edit.errors import UnsupportedArchitectureError

    model = family_model("gpt2")
    altered = dataclasses.replace(architecture(model), post_norms=True)
    monkeypatch.setattr(model, "_interp_edit_architecture", altered)
    with refused_before_any_forward(model), pytest.raises(UnsupportedArchitectureError, match="layernorm post-sublayer"):
        path_patch(model, CLEAN, CORRUPTED, ["a0.h1 -> logits"])
    assert flags(model) == (False, False, False)


# --- path patching --------------------------------------------------------------------------


@hooked_only
@pytest.mark.parametrize("family", FAMILIES)
def test_path_patching_equals_a_hop_by_hop_hook_loop(family):
    from interp_edit.analysis.circuits import edge_scores, path_patch

    model = family_model(family)
    state = snapshot(model)
    n_kv = model.cfg.n_key_value_heads or model.cfg.n_heads
    kv = "kv" if n_kv != model.cfg.n_heads else "h"
    last = f"a2.{kv}{(3 * n_kv) // model.cfg.n_heads}<v>"  # read by head 3 of layer 2
    mlp_hop = ["m0 -> m1", "m1 -> logits"] if not model.cfg.parallel_attn_mlp else ["a0.h1 -> m1", "m1 -> logits"]
    paths = [["a0.h1 -> logits"], ["input -> a1.h2<q>", "a1.h2 -> logits"],
             ["a0.h0 -> a1.h3<q>", f"a1.h3 -> {last}", "a2.h3 -> logits"], mlp_hop,
             ["input -> m0", "m0 -> a1.h0<q>", "a1.h0 -> m2", "m2 -> logits"]]
    res = path_patch(model, CLEAN, CORRUPTED, paths)
    for path, effect in zip(paths, res.effects.tolist(), strict=True):
        want = ref_path_patch(model, path)
        assert effect == pytest.approx(want, abs=1e-4 * max(1.0, abs(want))), path
    one = edge_scores(model, CLEAN, CORRUPTED, method="exact", max_rows=300)  # a one-edge path is edge patching
    assert res.effects[0].item() == pytest.approx(one.edge("a0.h1", "logits"), abs=1e-5)
    assert repr(res).startswith("PathPatchingResult(") and len(res.plot().data[0].y) == len(paths)
    assert_unchanged(model, state)


@hooked_only
@pytest.mark.parametrize("family", ("toy",) + FAMILIES)
def test_a_path_not_ending_at_logits_passes_its_last_receivers_change_on(family, request):
    """Classic path patching (Wang et al. 2022; Goldowsky-Dill et al. 2023): the last receiver's
    node passes its changed output on freely. So a one-edge path is exact edge patching of that
    edge for every receiver kind (q / k / v inputs, MLP inputs, logits): the one-edge-at-a-time
    loop of the reference; and a two-edge path that ends at a q/k/v or MLP input is the
    hop-by-hop loop (before the fix both were ~0: every receiver after the path read clean)."""
    from interp_edit.analysis.circuits import edge_scores, path_patch

    model = request.getfixturevalue("toy_model") if family == "toy" else family_model(family)
    state = snapshot(model)
    edges = receiver_kind_edges(model)
    want = ref_exact_scores(model, ("logit_diff",), edges)["logit_diff"]
    paths = [f"{s} -> {r}" for s, r in edges] + two_edge_paths(model)
    res = path_patch(model, CLEAN, CORRUPTED, paths)
    got = dict(zip([tuple(p) for p in res.paths], res.effects.tolist(), strict=True))
    for s, r in edges:
        value = want[(s, r)]
        assert got[(f"{s} -> {r}",)] == pytest.approx(value, abs=1e-4 * max(1.0, abs(value))), (s, r)
    for path in two_edge_paths(model):
        value = ref_path_patch(model, path)
        assert got[tuple(path)] == pytest.approx(value, abs=1e-4 * max(1.0, abs(value))), path
    assert max(abs(want[e]) for e in edges if e[1] != "logits") > 1e-2  # the check has something to see
    if family == "toy":  # and the engine's exact edge patching is the same number
        exact = edge_scores(model, CLEAN, CORRUPTED, method="exact", max_rows=600)
        for s, r in edges:
            assert got[(f"{s} -> {r}",)] == pytest.approx(exact.edge(s, r), abs=1e-5), (s, r)
    assert_unchanged(model, state)


@pytest.mark.parametrize("paths,named", [(["a0.h1 -> a0.h2<q>"], r"paths\[0\]\[0\]"),
                                         ([["a0.h1 -> a1.h2<q>", "a1.h3 -> logits"]], r"paths\[0\]\[1\]"),
                                         (["nonsense"], r"paths\[0\]\[0\]"), ("a0.h1 -> logits", "paths")])
def test_bad_paths_are_refused_before_any_forward(paths, named):
    from interp_edit.analysis.circuits import path_patch
    from interp_edit.errors import InterpEditError

    model = family_model("gpt2")
    with refused_before_any_forward(model), pytest.raises(InterpEditError, match=named):
        path_patch(model, CLEAN, CORRUPTED, paths)


def test_settings_and_hooks_are_restored_after_an_exception():
    from interp_edit.analysis.circuits import edge_graph
    from interp_edit.analysis.circuits.engine import masked_forward, prepare_task, sender_outputs

    model = family_model("gpt2")
    state = snapshot(model)
    graph = edge_graph(model)
    task = prepare_task(model, CLEAN, CORRUPTED)
    source = sender_outputs(model, graph, task.clean)
    with pytest.raises(RuntimeError):  # a mask of the wrong shape fails inside the forward
        masked_forward(model, graph, task.clean, source, torch.zeros(1, 3, 3))
    assert flags(model) == (False, False, False)
    assert_unchanged(model, state)


# --- review fixes: undefined faithfulness, multi-token answers, top(n) ----------------------


def _top_two(model, prompt):
    """The model's two most likely next tokens after ``prompt`` (an answer and a foil that differ)."""
    top = model(model.to_tokens(prompt))[0, -1].topk(2).indices.tolist()
    return model.tokenizer.decode([top[0]]), model.tokenizer.decode([top[1]])


def test_same_prompts_make_faithfulness_undefined_within_the_engines_rounding():
    """Clean == corrupted: the engine's full-model and everything-patched runs differ only by
    float rounding (batches of other shapes; ~3e-6 logits on the tiny GPT-2, which a fixed 1e-12
    let through as a curve of noise over noise). The tolerance is the dtype's eps times the
    scored logits' scale, so the intended error is raised — before any forward by find_circuit
    for identical prompts, by faithfulness_curve for a prepared task — while a small but real
    gap (prob ~2e-4) is still measured, with the repr's WARNING."""
    from interp_edit.analysis.circuits import edge_graph, find_circuit
    from interp_edit.analysis.circuits.circuit import faithfulness_curve, rounding_tolerance
    from interp_edit.analysis.circuits.engine import prepare_task
    from interp_edit.analysis.gap import metric_gap
    from interp_edit.errors import InvalidArgumentError

    model = family_model("gpt2")
    answer, foil = _top_two(model, CLEAN)
    graph = edge_graph(model)
    task = prepare_task(model, CLEAN, CLEAN, answer, foil)
    with pytest.raises(InvalidArgumentError, match="float32 rounding.*faithfulness is undefined"):
        faithfulness_curve(model, task, graph, list(range(graph.n_edges)), [1, 10])
    with refused_before_any_forward(model), pytest.raises(InvalidArgumentError, match="same prompts.*undefined"):
        find_circuit(model, [CLEAN, CORRUPTED], [CLEAN, CORRUPTED], answer=answer, foil=foil, method="eap")
    # the tolerance: eps of the dtype times the scale of the metric and the logits
    assert rounding_tolerance(torch.float32, 0.1, 0.1, 20.0) == pytest.approx(8 * 2**-23 * 20)
    assert rounding_tolerance(torch.bfloat16, -3.0, 0.0, 0.5) == pytest.approx(8 * 2**-7 * 3)
    # a real gap far below the metric's floor is measured (and flagged by the results' gap)
    small = prepare_task(model, CLEAN, CORRUPTED, "born", metric="prob")
    faith, m_clean, m_corrupt = faithfulness_curve(model, small, graph, list(range(graph.n_edges)), [0, graph.n_edges])
    assert 1e-5 < m_clean - m_corrupt < 1e-2 and faith == [0.0, pytest.approx(1.0, abs=1e-3)]
    assert "below 0.01 (prob)" in metric_gap(m_clean, m_corrupt, "prob").repr_note()


def test_logit_diff_scores_a_multi_token_answer_and_foil_by_their_first_token_and_says_so():
    """The first-token rule of interp_edit.analysis.scoring (and of ``attribute --target``):
    with logit_diff, ``answer=" Karsa Gemmel"`` / ``foil=" Gemmel Karsa"`` score exactly as
    " Karsa" / " Gemmel", and the result names each cut argument and its token count (it used
    to cut them silently); other metrics teacher-force the whole answer, with no note."""
    from interp_edit.analysis.circuits import find_circuit
    from interp_edit.analysis.circuits.engine import prepare_task

    model = family_model("gpt2")
    assert len(model.to_str_tokens(" Karsa Gemmel", prepend_bos=False)) == 2
    one = prepare_task(model, CLEAN, CORRUPTED, " Karsa", " Gemmel")
    two = prepare_task(model, CLEAN, CORRUPTED, " Karsa Gemmel", " Gemmel Karsa")
    # the same tokens, targets and scored position: every score is computed from the same numbers
    assert torch.equal(one.clean, two.clean) and torch.equal(one.corrupted, two.corrupted)
    assert one.positions == two.positions and one.notes == ()
    assert [(t.ids, t.foil_id) for t in one.targets] == [(t.ids, t.foil_id) for t in two.targets]
    scores = _two_token_scores()
    assert scores.target_notes == two.notes and len(two.notes) == 2
    assert scores.target_notes[0].startswith("answer ' Karsa Gemmel' of prompt 0 is 2 tokens")
    assert scores.target_notes[1].startswith("foil ' Gemmel Karsa' of prompt 0 is 2 tokens")
    assert "first token ' Karsa'" in scores.target_notes[0] and "first token ' Gemmel'" in scores.target_notes[1]
    assert "note=" in repr(scores) and "Karsa Gemmel" in repr(scores) and scores.to_dict()["target_notes"]
    c = find_circuit(model, scores=scores, n_edges=3, curve=(3,))
    assert c.target_notes == scores.target_notes and "note=" in repr(c)
    whole = prepare_task(model, CLEAN, CORRUPTED, " Karsa Gemmel", metric="logprob")
    assert whole.notes == () and len(whole.targets[0].ids) == 2 and len(whole.positions[0]) == 2


@functools.cache
def _two_token_scores():
    """EAP scores with a two-token answer and foil (shared by the tests below)."""
    from interp_edit.analysis.circuits import edge_scores

    return edge_scores(family_model("gpt2"), CLEAN, CORRUPTED, answer=" Karsa Gemmel", foil=" Gemmel Karsa", method="eap")


def test_top_and_plot_refuse_a_negative_or_non_integer_count():
    """``top(n)`` / ``plot(n_edges)`` check their count as find_circuit checks ``n_edges``
    (check_int): ``top(-1)`` used to return all edges but one and ``top(2.5)`` a bare TypeError."""
    from interp_edit.errors import InvalidArgumentError

    scores = _two_token_scores()
    for bad, message in ((-1, "n must be >= 0, got -1"), (2.5, "n must be an integer, got 2.5"),
                         (True, "n must be an integer")):
        with pytest.raises(InvalidArgumentError, match=message):
            scores.top(bad)
        with pytest.raises(InvalidArgumentError, match=message.replace("n must", "n_edges must")):
            scores.plot(n_edges=bad)
    assert scores.top(0) == [] and len(scores.top(3)) == 3 and len(scores.top(10**6)) == scores.graph.n_edges
