"""References for the circuits tests, written here from TransformerLens' own switches and hook
names and sharing no code with :mod:`interp_edit.analysis.circuits` (nor the adapter's hook
tables): the nodes and edges of a model, one-edge-at-a-time patching, autograd gradients at the
receivers, Riemann sums of path integrals, hop-by-hop path patching, circuit runs.

They work on a HookedTransformer and on a TransformerBridge alike (the bridge has the same
setters ``set_use_split_qkv_input`` … and the HookedTransformer hook names as aliases; caches are
kept by the names asked for, not ``hook.name``, which on the bridge is its own).

A sender's output is what it adds to the residual stream; with post-sublayer norms (Gemma-2,
Gemma-3, OLMo-2: a block has ``ln1_post``) a head's is its frozen-scale share ``γ · result_h / scale``
of the normed attention output, γ the gain as the norm multiplies it: HookedTransformer's
``ln1_post.w`` (TransformerLens stores Gemma's ``1 + w``), or ``1 + w`` of the bridge's Hugging
Face ``Gemma*RMSNorm`` (which stores ``w``), ``w`` of OLMo-2's ``Olmo2RMSNorm``."""

from __future__ import annotations

import contextlib
import random

import pytest
import torch

CLEAN, CORRUPTED = "Talvik Corlo was born in", "Beldel Kordor was born in"


def shared_norm_bridge(model) -> bool:
    """A TransformerBridge whose blocks have one input norm (no ``ln2``: Phi-2, Cohere, Falcon-7B)."""
    return hasattr(model, "original_model") and getattr(model.blocks[0], "ln1", None) is not None \
        and getattr(model.blocks[0], "ln2", None) is None


@contextlib.contextmanager
def split_inputs(model):
    """TransformerLens' switches on; on a shared-norm bridge also the MLP's own input: its
    input becomes ``norm(blocks.L.hook_mlp_in(x))``, ``x`` the block's input and ``norm`` the
    one input norm's Hugging Face module (the definition the engine's MLP receiver follows)."""
    before = (model.cfg.use_split_qkv_input, model.cfg.use_attn_result, model.cfg.use_hook_mlp_in)
    model.set_use_split_qkv_input(True)
    model.set_use_attn_result(True)
    model.set_use_hook_mlp_in(True)
    handles = []
    if shared_norm_bridge(model):
        for block in model.blocks:
            inputs = []
            handles.append(block.ln1.register_forward_pre_hook(lambda module, args, inputs=inputs: inputs.append(args[0])))
            handles.append(block.mlp.register_forward_pre_hook(
                lambda module, args, block=block, inputs=inputs:
                (block.ln1.original_component(block.hook_mlp_in(inputs.pop())),) + tuple(args[1:])))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        model.set_use_split_qkv_input(before[0])
        model.set_use_attn_result(before[1])
        model.set_use_hook_mlp_in(before[2])


def has_post_norms(model) -> bool:
    try:
        return getattr(model.blocks[0], "ln1_post", None) is not None
    except AttributeError:  # a TransformerBridge block raises for a missing submodule
        return False


def post_norm_gain(model, layer: int) -> torch.Tensor:
    """γ of ``blocks.{layer}.ln1_post`` as it multiplies."""
    norm = model.blocks[layer].ln1_post
    hf = getattr(norm, "original_component", None)
    if hf is not None:  # the bridge: Hugging Face's Gemma RMSNorm computes x · (1 + w), OLMo-2's x · w
        return (1.0 + hf.weight).detach() if type(hf).__name__.startswith("Gemma") else hf.weight.detach()
    return norm.w.detach()


def residual_multiplier(model) -> float:
    """What a block multiplies its sublayers' outputs by on their way into the residual: Granite's
    ``residual_multiplier`` of the Hugging Face config (1 elsewhere, and on HookedTransformer)."""
    hf = getattr(model, "original_model", None)
    return float(getattr(getattr(hf, "config", None), "residual_multiplier", 1.0) or 1.0)


def n_kv_heads(model) -> int:
    return model.cfg.n_key_value_heads or model.cfg.n_heads


def parallel(model) -> bool:
    return bool(model.cfg.parallel_attn_mlp)


def ref_senders(model):
    """(name, hook, head index or None, layer or -1)."""
    out = [("input", "blocks.0.hook_resid_pre", None, -1)]
    for layer in range(model.cfg.n_layers):
        out += [(f"a{layer}.h{h}", f"blocks.{layer}.attn.hook_result", h, layer) for h in range(model.cfg.n_heads)]
        out.append((f"m{layer}", f"blocks.{layer}.hook_mlp_out", None, layer))
    return out


def ref_receivers(model):
    """(name, hook, index or None, layer, kind)."""
    grouped = n_kv_heads(model) != model.cfg.n_heads
    out = []
    for layer in range(model.cfg.n_layers):
        out += [(f"a{layer}.h{h}<q>", f"blocks.{layer}.hook_q_input", h, layer, "attn") for h in range(model.cfg.n_heads)]
        for kind in "kv":
            out += [(f"a{layer}.{'kv' if grouped else 'h'}{g}<{kind}>", f"blocks.{layer}.hook_{kind}_input", g, layer, "attn")
                    for g in range(n_kv_heads(model))]
        out.append((f"m{layer}", f"blocks.{layer}.hook_mlp_in", None, layer, "mlp"))
    out.append(("logits", f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", None, model.cfg.n_layers, "logits"))
    return out


def ref_allowed(model, sender, receiver) -> bool:
    s_name, _, _, s_layer = sender
    _, _, _, r_layer, r_kind = receiver
    if s_name == "input" or r_kind == "logits":
        return True
    if s_layer < r_layer:
        return True
    # same layer: only a head feeding its own layer's MLP in a sequential block
    return s_layer == r_layer and r_kind == "mlp" and s_name.startswith("a") and not parallel(model)


def ref_tokens(model, text):
    return torch.tensor([[model.tokenizer.bos_token_id] + model.tokenizer.encode(text, add_special_tokens=False)])


def logits_of(model, tokens, hooks=()):
    with model.hooks(fwd_hooks=list(hooks)):
        return model(tokens, return_type="logits")


def ref_metrics(model, clean, corrupted):
    """The metrics on last-position logits (answer = clean top-1, foil = corrupted top-1)."""
    with torch.no_grad():
        lc = logits_of(model, clean)[0, -1]
        lk = logits_of(model, corrupted)[0, -1]
    answer, foil = int(lc.argmax()), int(lk.argmax())
    ref_logp = torch.log_softmax(lc, -1)
    return {
        "logit_diff": lambda logits: logits[0, -1, answer] - logits[0, -1, foil],
        "prob": lambda logits: torch.softmax(logits[0, -1], -1)[answer],
        "kl": lambda logits: (ref_logp.exp() * (ref_logp - torch.log_softmax(logits[0, -1], -1))).sum(),
    }


def ref_metric(model, clean, corrupted, metric):
    return ref_metrics(model, clean, corrupted)[metric]


def recorder(model, out: dict):
    """Hooks that fill ``out`` (sender name -> [pos, d_model], prompt 0) with every sender's
    output as a forward computes it (they change nothing)."""
    post = has_post_norms(model)
    results: dict[int, torch.Tensor] = {}
    hooks = []

    def resid(act, hook):
        out["input"] = act[0]

    def result(act, hook, layer):
        if post:
            results[layer] = act[0]
        elif residual_multiplier(model) == 1.0:
            for h in range(model.cfg.n_heads):
                out[f"a{layer}.h{h}"] = act[0, :, h]

    def from_z(act, hook, layer):  # a head's raw result z_h W_O[h], times the residual multiplier
        w_o = model.blocks[layer].attn.W_O.detach()
        shares = torch.einsum("phd,hdm->phm", act[0].to(w_o.dtype), w_o) * residual_multiplier(model)
        for h in range(model.cfg.n_heads):
            out[f"a{layer}.h{h}"] = shares[:, h]

    def scale(act, hook, layer):
        share = post_norm_gain(model, layer) * results.pop(layer) / act[0][:, None, :]
        for h in range(model.cfg.n_heads):
            out[f"a{layer}.h{h}"] = share[:, h]

    def mlp(act, hook, layer):
        out[f"m{layer}"] = act[0]

    hooks.append(("blocks.0.hook_resid_pre", resid))
    for layer in range(model.cfg.n_layers):
        hooks.append((f"blocks.{layer}.attn.hook_result", lambda a, hook, layer=layer: result(a, hook, layer)))
        if residual_multiplier(model) != 1.0:
            hooks.append((f"blocks.{layer}.attn.hook_z", lambda a, hook, layer=layer: from_z(a, hook, layer)))
        if post:
            hooks.append((f"blocks.{layer}.ln1_post.hook_scale", lambda a, hook, layer=layer: scale(a, hook, layer)))
        hooks.append((f"blocks.{layer}.hook_mlp_out", lambda a, hook, layer=layer: mlp(a, hook, layer)))
    return hooks


def ref_outputs(model, tokens):
    out = {}
    with split_inputs(model), torch.no_grad():
        logits_of(model, tokens, recorder(model, out))
    return out


def ref_cache(model, tokens, names, hooks=()):
    """Activations at ``names`` (prompt 0), by the names asked for."""
    cache = {}

    def keep(act, hook, name):
        cache[name] = act[0].detach().clone()

    with split_inputs(model), torch.no_grad():
        logits_of(model, tokens, list(hooks) + [(n, lambda a, hook, n=n: keep(a, hook, n)) for n in names])
    return cache


def all_edges(model):
    return [(s[0], r[0]) for s in ref_senders(model) for r in ref_receivers(model) if ref_allowed(model, s, r)]


def sample_edges(model, k=8, seed=0):
    rng = random.Random(seed)
    picked = rng.sample(all_edges(model), k - 2)
    return picked + [("input", "logits"), (f"m{model.cfg.n_layers - 2}", "logits")]


def add_at(model, receiver, delta):
    """A hook adding ``delta`` [pos, d_model] to the input of receiver ``receiver`` (prompt 0)."""
    _, hook, index, _, _ = {r[0]: r for r in ref_receivers(model)}[receiver]

    def fn(act, hook):
        act = act.clone()
        if index is None:
            act[0] += delta.to(act.dtype)
        else:
            act[0, :, index] += delta.to(act.dtype)
        return act

    return (hook, fn)


def ref_exact_scores(model, metric_names, edges=None):
    """metric -> {(sender, receiver): score}, one patched forward per edge (all edges, or ``edges``)."""
    clean, corrupted = ref_tokens(model, CLEAN), ref_tokens(model, CORRUPTED)
    metrics = {name: f for name, f in ref_metrics(model, clean, corrupted).items() if name in metric_names}
    clean_out, corrupt_out = ref_outputs(model, clean), ref_outputs(model, corrupted)
    with split_inputs(model), torch.no_grad():
        logits = logits_of(model, clean)
    base = {name: f(logits).item() for name, f in metrics.items()}
    scores = {name: {} for name in metrics}
    for s, r in (edges if edges is not None else all_edges(model)):
        with split_inputs(model), torch.no_grad():
            logits = logits_of(model, clean, [add_at(model, r, corrupt_out[s] - clean_out[s])])
        for name, f in metrics.items():
            scores[name][(s, r)] = f(logits).item() - base[name]
    return scores


def ref_gradients(model, tokens, metric, receivers, extra_hooks=()):
    """∂metric/∂(receiver input) for the named receivers, with zero probes added at their hooks."""
    wanted = {r[0]: r for r in ref_receivers(model) if r[0] in receivers}
    probes = {}

    def probe_hook(act, hook, name):
        probe = torch.zeros_like(act, requires_grad=True)
        probes[name] = probe
        return act + probe

    names = sorted({r[1] for r in wanted.values()})
    hooks = list(extra_hooks) + [(h, lambda a, hook, h=h: probe_hook(a, hook, h)) for h in names]
    with split_inputs(model), torch.enable_grad():
        value = metric(logits_of(model, tokens, hooks))
        # a receiver upstream of an extra hook that replaces its activation gets no gradient: zero
        found = torch.autograd.grad(value, [probes[n] for n in names], allow_unused=True)
        grads = {n: torch.zeros_like(probes[n]) if g is None else g for n, g in zip(names, found, strict=True)}
    out = {}
    for name, (_, hook, index, _, _) in wanted.items():
        out[name] = grads[hook][0] if index is None else grads[hook][0, :, index]
    return out


def ref_riemann(model, hook, edges, alphas):
    """Δ_s · mean over ``alphas`` of ∂M/∂x_r in clean runs whose activation at ``hook`` is
    moved to ``corrupted + α (clean − corrupted)`` (the whole activation: all heads of a layer
    at ``attn.hook_result``; a post-norm block's normed attention output at ``hook_attn_out``)."""
    clean, corrupted = ref_tokens(model, CLEAN), ref_tokens(model, CORRUPTED)
    metric = ref_metric(model, clean, corrupted, "logit_diff")
    a, b = ref_cache(model, corrupted, [hook])[hook], ref_cache(model, clean, [hook])[hook]
    receivers = {r for _, r in edges}
    total = None
    for alpha in alphas:
        grads = ref_gradients(model, clean, metric, receivers,
                              extra_hooks=[(hook, lambda act, hook, alpha=alpha: (a + alpha * (b - a))[None].to(act.dtype))])
        total = grads if total is None else {k: total[k] + grads[k] for k in total}
    clean_out, corrupt_out = ref_outputs(model, clean), ref_outputs(model, corrupted)
    return {(s, r): ((corrupt_out[s] - clean_out[s]) * total[r] / len(alphas)).sum().item() for s, r in edges}


def ref_path_integral(model, hook, edges, n=32):
    """The path integral of :func:`ref_riemann`: a midpoint Riemann sum of ``n`` points."""
    return ref_riemann(model, hook, edges, [(i + 0.5) / n for i in range(n)])


def ref_circuit_metric(model, keep):
    """The clean run in which every receiver reads the corrupted output of each sender whose
    edge to it is not kept (and this run's output of the others)."""
    clean, corrupted = ref_tokens(model, CLEAN), ref_tokens(model, CORRUPTED)
    metric = ref_metric(model, clean, corrupted, "logit_diff")
    corrupt_out = ref_outputs(model, corrupted)
    current = {}
    senders, receivers = ref_senders(model), ref_receivers(model)

    def write(act, hook, name):
        act = act.clone()
        for receiver in receivers:
            r_name, h, index, _, _ = receiver
            if h != name:
                continue
            for sender in senders:
                if ref_allowed(model, sender, receiver) and (sender[0], r_name) not in keep:
                    d = corrupt_out[sender[0]] - current[sender[0]]
                    if index is None:
                        act[0] += d
                    else:
                        act[0, :, index] += d
        return act

    hooks = recorder(model, current) + [(h, lambda a, hook, h=h: write(a, hook, h)) for h in sorted({r[1] for r in receivers})]
    with split_inputs(model), torch.no_grad():
        value = metric(logits_of(model, clean, hooks)).item()
        full = metric(logits_of(model, clean)).item()
        none = metric(logits_of(model, corrupted)).item()
    return (value - none) / (full - none)


def ref_path_patch(model, path, metric="logit_diff"):
    """Classic path patching, hop by hop: the first receiver's input gets the sender's corrupted
    output; a clean run with that input records the next sender's output; the next receiver's
    input gets that output's change, …; the last run — only the last receiver's input changed,
    everything after it computed freely — gives the metric, minus the clean one's."""
    clean, corrupted = ref_tokens(model, CLEAN), ref_tokens(model, CORRUPTED)
    metric = ref_metric(model, clean, corrupted, metric)
    clean_out, corrupt_out = ref_outputs(model, clean), ref_outputs(model, corrupted)
    edges = [tuple(p.strip() for p in e.split("->")) for e in path]
    delta = corrupt_out[edges[0][0]] - clean_out[edges[0][0]]
    for (_, receiver), (next_sender, _) in zip(edges[:-1], edges[1:], strict=True):
        seen = {}
        with split_inputs(model), torch.no_grad():
            logits_of(model, clean, [add_at(model, receiver, delta)] + recorder(model, seen))
        delta = seen[next_sender] - clean_out[next_sender]
    with split_inputs(model), torch.no_grad():
        value = metric(logits_of(model, clean, [add_at(model, edges[-1][1], delta)])).item()
        base = metric(logits_of(model, clean)).item()
    return value - base


def receiver_kind_edges(model):
    """One edge into a receiver of every kind, by name: ``<v>``, ``<q>``, ``<k>`` (a key/value
    head's with grouped-query attention), an MLP (from an MLP; from a head of an earlier layer,
    and of its own layer in a sequential block) and ``logits``."""
    kv = "kv" if n_kv_heads(model) != model.cfg.n_heads else "h"
    edges = [("input", f"a0.{kv}0<v>"), ("a0.h0", "a1.h1<q>"), ("m0", f"a1.{kv}0<k>"), ("m0", "m1"), ("a1.h2", "m2")]
    if not parallel(model):
        edges.append(("a1.h3", "m1"))
    return edges + [("m1", "logits")]


def two_edge_paths(model):
    """Paths of two edges that do not end at ``logits``: through an MLP, through a query input
    into a value input, into an MLP, and through a value input (a key/value head's)."""
    kv = "kv" if n_kv_heads(model) != model.cfg.n_heads else "h"
    return [["input -> m0", "m0 -> m1"], ["a0.h0 -> a1.h3<q>", f"a1.h3 -> a2.{kv}0<v>"],
            ["input -> a1.h2<q>", "a1.h2 -> m2"], [f"input -> a1.{kv}0<v>", "a1.h0 -> m2"]]


def assert_first_order_terms(model, edges, clean_text=CLEAN, corrupted_text=CORRUPTED):
    """EAP, clean–corrupted and denoising EAP of ``edges`` equal Δ_s · ∂M/∂x_r computed here
    (autograd at the reference's receivers), and nothing off the allowed edges scores."""
    from interp_edit.analysis.circuits import edge_scores

    clean, corrupted = ref_tokens(model, clean_text), ref_tokens(model, corrupted_text)
    metric = ref_metric(model, clean, corrupted, "logit_diff")
    receivers = {r for _, r in edges}
    g_clean = ref_gradients(model, clean, metric, receivers)
    g_corrupt = ref_gradients(model, corrupted, metric, receivers)
    clean_out, corrupt_out = ref_outputs(model, clean), ref_outputs(model, corrupted)
    eap = edge_scores(model, clean_text, corrupted_text, method="eap")
    both = edge_scores(model, clean_text, corrupted_text, method="clean_corrupted")
    denoise = edge_scores(model, clean_text, corrupted_text, method="eap", direction="denoise")
    for s, r in edges:
        delta = corrupt_out[s] - clean_out[s]
        assert eap.edge(s, r) == pytest.approx((delta * g_clean[r]).sum().item(), rel=1e-4, abs=1e-5), (s, r)
        mean_grad = (g_clean[r] + g_corrupt[r]) / 2
        assert both.edge(s, r) == pytest.approx((delta * mean_grad).sum().item(), rel=1e-4, abs=1e-5), (s, r)
        assert denoise.edge(s, r) == pytest.approx((-delta * g_corrupt[r]).sum().item(), rel=1e-4, abs=1e-5), (s, r)
    assert (eap.scores[~eap.graph.allowed] == 0).all() and (both.scores[~both.graph.allowed] == 0).all()
