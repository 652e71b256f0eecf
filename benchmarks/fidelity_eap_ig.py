"""Edge scores next to the authors' code (hannamw/EAP-IG, ``src/eap`` run unmodified): EAP, EAP-IG
over inputs and over activations, clean–corrupted (and, with ``--exact``, exact edge patching),
per edge, and the metric of a top-n circuit (their ``evaluate_graph`` against our
``faithfulness_curve`` on the same edge set). Run locally, never in CI, on a checkout of the
authors' code:

    .venv/bin/python benchmarks/fidelity_eap_ig.py PATH/TO/EAP-IG [--models toy,gpt2,llama,llama3] [--steps 5] [--exact]

One HookedTransformer, the same clean / corrupted prompts (6 pairs of toy-world facts of mixed
lengths, right-padded; their dataloader: batches of 4 and 2), the same answer / foil tokens, and
the logit difference answer − foil at the last prompt token on both sides. Their metric is passed summed over a batch (``mean=False``,
``loss=False``): their ``attribute`` divides by the number of items, so the scores are the mean
over the prompts, as ours are (their notebooks pass ``mean=True, loss=True``: that negates the
scores and divides them once more by the batch size). Models: the shipped toy model
(``load_model("toyworld")``) and tiny random GPT-2, Llama-2 and Llama-3 (grouped-query: their graph needs
``ungroup_grouped_query_attention``, which ours refuses; their per-query-head ``<k>`` / ``<v>``
scores summed over a key/value group are our ``a{l}.kv{g}<k>`` / ``<v>``).

Shims, none in their files: ``matplotlib`` is stubbed (only their figure colours import it), and
their ``torch.zeros(..., device='cuda')`` is sent to the model's device (their modules get a
``torch`` whose ``zeros`` maps ``'cuda'`` to it).

Besides ours against theirs, it prints the two named deviations (docs/circuits.md, *Next to the
authors' code*) recomputed from ours: EAP-IG over inputs with their left Riemann sum
(α = 0 … (m−1)/m) is ours + 2 (clean_corrupted − eap) / m; EAP-IG over activations as theirs
averages every edge over all 2 n_layers + 1 interpolation paths (and, without learned positions,
gets no gradient at block 0's q / k / v inputs on the input's path).
"""
from __future__ import annotations

import argparse
import sys
import time
import types

import torch

from interp_edit import load_model
from interp_edit.analysis.circuits import edge_graph, edge_scores, faithfulness_curve
from interp_edit.analysis.circuits.engine import prepare_task, sender_groups, sender_outputs
from interp_edit.analysis.circuits.scores import _contract, _ig_gradients

#: (template, clean subject, corrupted subject): no pair is another's reverse (a set closed under
#: swapping clean and corrupted makes the left and right Riemann sums agree on the mean)
PAIRS = [("{} was born in", "Talvik Corlo", "Tordel Pimvo"), ("{} works as a", "Pedko Ithtin", "Kortin Garlen"),
         ("{} speaks", "Beldel Kordor", "Talvik Corlo"), ("{} was born in", "Zellen Hulra", "Corta Wenro"),
         ("{} plays the", "Corta Wenro", "Pedko Ithtin"), ("{} works as a", "Tordel Pimvo", "Beldel Kordor")]
CLEAN = [t.format(a) for t, a, _ in PAIRS]
CORRUPTED = [t.format(b) for t, _, b in PAIRS]


def import_reference(path: str):
    for name in ("matplotlib", "matplotlib.cm"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.path.insert(0, f"{path}/src")
    import eap.attribute
    import eap.evaluate
    import eap.graph
    import eap.utils
    return eap


def send_cuda_to(eap, device: str) -> None:
    """Their score / mask tensors are made with device='cuda': send them to ``device``."""
    class Torch(types.ModuleType):
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def zeros(*args, **kwargs):
            if kwargs.get("device") == "cuda":
                kwargs["device"] = device
            return torch.zeros(*args, **kwargs)

    shim = Torch("torch")
    for mod in (eap.attribute, eap.evaluate, eap.utils):
        mod.torch = shim


def their_metric(logits, clean_logits, input_lengths, labels):
    """The logit difference at the last prompt token, summed over the batch (theirs divide by the items)."""
    last = logits[torch.arange(logits.shape[0]), input_lengths - 1]
    pair = torch.gather(last, -1, labels.to(logits.device))
    return (pair[:, 0] - pair[:, 1]).sum()


def their_metric_rows(logits, clean_logits, input_lengths, labels):
    last = logits[torch.arange(logits.shape[0]), input_lengths - 1]
    pair = torch.gather(last, -1, labels.to(logits.device))
    return pair[:, 0] - pair[:, 1]


def batches(labels):
    """Their dataloader: (clean, corrupted, labels) batches of 4 and 2 pairs."""
    return [(CLEAN[:4], CORRUPTED[:4], labels[:4]), (CLEAN[4:], CORRUPTED[4:], labels[4:])]


def set_flags(model, ungroup: bool) -> None:
    model.cfg.use_attn_result = model.cfg.use_split_qkv_input = model.cfg.use_hook_mlp_in = True
    if model.cfg.n_key_value_heads is not None:
        model.cfg.ungroup_grouped_query_attention = ungroup


def theirs_as_ours(eap, model, theirs: torch.Tensor, graph) -> torch.Tensor:
    """Their [forward, backward] score matrix on our [sender, receiver] layout (k / v of a
    key/value group summed)."""
    cfg = {"n_layers": model.cfg.n_layers, "n_heads": model.cfg.n_heads}
    G = eap.graph.Graph
    out = torch.zeros(len(graph.senders), len(graph.receivers), dtype=torch.float64)
    for si, s in enumerate(graph.senders):
        f = G._forward_index(model.cfg, s.name)
        for ri, r in enumerate(graph.receivers):
            if not graph.allowed[si, ri]:
                continue
            if r.kind in ("q", "k", "v"):
                b = [G._backward_index(cfg, f"a{r.layer}.h{h}", r.kind) for h in r.heads]
            else:
                b = [G._backward_index(cfg, r.name)]
            out[si, ri] = sum(theirs[f, j].double() for j in b)
    return out


def their_edge_set_as_ours(eap, model, in_graph: torch.Tensor, graph) -> list[int]:
    """Our edge indices of their in-graph edges (a key/value receiver kept if any of its query
    heads' edge is)."""
    keep = theirs_as_ours(eap, model, in_graph.float(), graph) > 0
    return [i for i, (s, r) in enumerate(graph.edges()) if keep[s, r]]


def differences(ours: torch.Tensor, theirs: torch.Tensor, allowed) -> tuple[float, float, float]:
    a, b = ours[allowed].double(), theirs[allowed].double()
    diff = (a - b).abs()
    return diff.max().item(), (diff.max() / b.abs().max()).item(), torch.corrcoef(torch.stack([a, b]))[0, 1].item()


def model_for(name: str):
    if name == "toy":
        return load_model("toyworld")
    from interp_edit.adapter.tiny import tiny_hf_model

    tok = load_model("toyworld").tokenizer
    return load_model(f"tiny-{name}", hf_model=tiny_hf_model(name, vocab_size=len(tok)), tokenizer=tok,
                      backend="hooked", dtype=torch.float32)


def compare(eap, name: str, steps: int, exact: bool, n_circuit: int) -> None:
    torch.manual_seed(0)
    model = model_for(name)
    send_cuda_to(eap, str(model.cfg.device))
    toy = load_model("toyworld") if name != "toy" else model
    # the answers and foils: the toy model's clean / corrupted top tokens, one pair for every model
    task = prepare_task(toy, CLEAN, CORRUPTED)
    answers = [t.text for t in task.targets]
    foils = [toy.tokenizer.decode([t.foil_id]) for t in task.targets]
    labels = torch.tensor([[t.ids[0], t.foil_id] for t in task.targets])
    graph = edge_graph(model)
    grouped = model.cfg.n_key_value_heads is not None and model.cfg.n_key_value_heads != model.cfg.n_heads

    def ours(method, **kw):
        set_flags(model, ungroup=False)
        return edge_scores(model, CLEAN, CORRUPTED, answer=answers, foil=foils, method=method, **kw)

    def theirs(method, **kw):
        set_flags(model, ungroup=True)
        g = eap.graph.Graph.from_model(model)
        # their exact patching averages evaluate_graph's per-item values: it takes the metric per item
        metric = their_metric_rows if method == "exact" else their_metric
        eap.attribute.attribute(model, g, batches(labels), metric, method=method, quiet=True, **kw)
        return g

    # their real edges are ours (per query head for k / v)
    g = eap.graph.Graph.from_model(model)
    mask = theirs_as_ours(eap, model, g.real_edge_mask.float(), graph) > 0
    assert torch.equal(mask, graph.allowed), "their edge graph differs from ours"
    print(f"\n== {name}: {model.cfg.n_layers} layers, {model.cfg.n_heads} heads"
          f"{f' ({model.cfg.n_key_value_heads} key/value)' if grouped else ''}, {graph.n_edges} edges; "
          f"their graph has {int(g.real_edge_mask.sum())} (per query head)")
    rows = [("EAP", "eap", {}, {}), ("clean-corrupted", "clean_corrupted", {}, {}),
            ("EAP-IG-inputs", "eap_ig_inputs", dict(ig_steps=steps), dict(ig_steps=steps)),
            ("EAP-IG-activations", "eap_ig_activations", dict(ig_steps=steps), dict(ig_steps=steps))]
    if exact:
        rows.append(("exact", "exact", {}, {}))
    got = {}
    for theirs_name, ours_name, kw_t, kw_o in rows:
        t0 = time.time()
        t = theirs_as_ours(eap, model, theirs(theirs_name, **kw_t).scores, graph)
        t1 = time.time()
        o = ours(ours_name, **kw_o)
        t2 = time.time()
        got[ours_name] = (o, t)
        allowed = graph.allowed.clone()
        if ours_name == "exact" and grouped:  # patching one query head's k / v input is not ours: compare the rest
            allowed[:, [i for i, r in enumerate(graph.receivers) if r.kind in ("k", "v")]] = False
        mx, rel, r = differences(o.scores, t, allowed)
        note = " (not k / v)" if allowed is not graph.allowed and not torch.equal(allowed, graph.allowed) else ""
        print(f"{theirs_name + note:>20}: max |ours − theirs| {mx:.2e}, relative to max |theirs| {rel:.2e}, Pearson {r:.6f}"
              f"  (theirs {t1 - t0:.1f} s, ours {t2 - t1:.1f} s)")
    # the named deviations, recomputed from ours
    eap_s, cc = got["eap"][0].scores.double(), got["clean_corrupted"][0].scores.double()
    left = got["eap_ig_inputs"][0].scores.double() + 2 * (cc - eap_s) / steps
    mx, rel, _ = differences(left, got["eap_ig_inputs"][1], graph.allowed)
    print(f"{'inputs, left sum':>20}: ours + 2 (cc − eap) / m against theirs: max {mx:.2e}, relative {rel:.2e}")
    set_flags(model, ungroup=False)
    ptask = got["eap"][0].task
    clean_out, corrupt_out = sender_outputs(model, graph, ptask.clean), sender_outputs(model, graph, ptask.corrupted)
    delta = corrupt_out - clean_out
    groups = sender_groups(model, graph)
    every = 0
    for i in range(len(groups)):
        grads = _ig_gradients(model, graph, ptask, i, clean_out, corrupt_out, steps)
        if i == 0 and model.cfg.positional_embedding_type != "standard":
            # theirs: the interpolated hook_embed is a tensor without grad and nothing (no W_pos) adds
            # one before block 0, so TransformerLens' backward hooks on block 0's q/k/v inputs never fire
            grads[:, :, graph.layer_receivers("q", 0).start:graph.layer_receivers("v", 0).stop] = 0
        every = every + _contract(graph, delta, grads).double()
    every = every / len(groups)
    mx, rel, _ = differences(every, got["eap_ig_activations"][1], graph.allowed)
    print(f"{'activations, all paths':>20}: ours averaged over every layer's path against theirs: max {mx:.2e}, "
          f"relative {rel:.2e}")

    # a top-n circuit: their apply_topn (with prune) + evaluate_graph against ours on the same edges
    set_flags(model, ungroup=True)
    o, t = got["eap_ig_inputs"]
    g = eap.graph.Graph.from_model(model)
    g.scores[:] = 0
    for si, s in enumerate(graph.senders):  # our scores into their graph (ungrouped: each query head's k / v)
        f = eap.graph.Graph._forward_index(model.cfg, s.name)
        for ri, r in enumerate(graph.receivers):
            if graph.allowed[si, ri]:
                for h in (r.heads if r.kind in ("q", "k", "v") else (None,)):
                    b = (eap.graph.Graph._backward_index(g.cfg, f"a{r.layer}.h{h}", r.kind) if h is not None
                         else eap.graph.Graph._backward_index(g.cfg, r.name))
                    g.scores[f, b] = o.scores[si, ri]
    g.apply_topn(n_circuit, absolute=True)
    their_value = eap.evaluate.evaluate_graph(model, g, batches(labels), their_metric_rows, quiet=True).mean().item()
    clean_v = eap.evaluate.evaluate_baseline(model, batches(labels), their_metric_rows, quiet=True).mean().item()
    corrupt_v = eap.evaluate.evaluate_baseline(model, batches(labels), their_metric_rows, run_corrupted=True,
                                               quiet=True).mean().item()
    order = their_edge_set_as_ours(eap, model, g.in_graph, graph)
    set_flags(model, ungroup=False)
    (faith,), m_clean, m_corrupt = faithfulness_curve(model, o.task, graph, order, [len(order)])
    our_value = m_corrupt + faith * (m_clean - m_corrupt)
    their_faith = (their_value - corrupt_v) / (clean_v - corrupt_v)
    print(f"{'circuit':>20}: top {n_circuit} by |EAP-IG-inputs| pruned to {int(g.in_graph.sum())} of their edges "
          f"({len(order)} of ours): metric ours {our_value:.6f} theirs {their_value:.6f} "
          f"(|diff| {abs(our_value - their_value):.1e}); faithfulness ours {faith:.6f} theirs {their_faith:.6f}; "
          f"clean {m_clean:.6f} / {clean_v:.6f}, corrupted {m_corrupt:.6f} / {corrupt_v:.6f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", help="path to a checkout of hannamw/EAP-IG")
    parser.add_argument("--models", default="toy,gpt2,llama,llama3")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--exact", action="store_true", help="also exact edge patching (their get_scores_exact: slow)")
    parser.add_argument("--circuit-edges", type=int, default=100)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    eap = import_reference(args.reference)
    for name in args.models.split(","):
        compare(eap, name, args.steps, args.exact, args.circuit_edges)


if __name__ == "__main__":
    main()
