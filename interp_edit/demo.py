"""``interp-edit demo``: the main job on the embedded toy-world model."""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from interp_edit.adapter import load_model
from interp_edit.batching import last_token_logits
from interp_edit.toyworld import counterfact_records, world_of
from interp_edit.toyworld.world import stable_seed


def run_demo(n_facts: int = 6, top_k: int = 5, seed: int = 0, figures: str | Path = "results/demo",
             aie_facts: int = 100, model: str = "toyworld") -> None:
    """Show what a toy-world model (``model``: ``"toyworld"`` or a checkpoint folder) knows of its
    own world, trace and attribute its facts, and edit one."""
    start = time.perf_counter()
    import transformer_lens  # noqa: F401 - a one-off cost, reported apart from the model's load

    imported = time.perf_counter()
    model = load_model(model)
    cfg = model.cfg
    from importlib.metadata import version

    from interp_edit.adapter.bridge import backend_of

    print(
        f"Loaded the toy-world model in {time.perf_counter() - imported:.2f}s (TransformerLens "
        f"{version('transformer-lens')}, import {imported - start:.1f}s; backend {backend_of(model)!r}): "
        f"{cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, d_mlp {cfg.d_mlp}, vocabulary {cfg.d_vocab}"
    )
    world = world_of(model)
    records = counterfact_records(world)
    rng = random.Random(stable_seed("demo", seed))
    chosen = rng.sample(records, min(n_facts, len(records)))
    prompts = [r.prompt.format(r.subject) for r in chosen]
    probs = torch.softmax(last_token_logits(model, prompts), dim=-1)
    for record, prompt, p in zip(chosen, prompts, probs, strict=True):
        top = torch.topk(p, top_k)
        print(f"\n{prompt!r} -> true object {record.target_true!r}  (subject tokens: {model.to_str_tokens(' ' + record.subject, prepend_bos=False)})")
        for rank, (prob, idx) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True), 1):
            token = model.tokenizer.decode([idx])
            mark = "  <- true" if token.strip() == record.target_true else ""
            print(f"  {rank}. {token!r:16} {prob:.3f}{mark}")

    trace_and_aie(model, records, Path(figures), aie_facts, seed)
    attribution_and_pathways(model, world, records, Path(figures))
    edit_one_fact(model, records, seed, Path(figures))


def trace_and_aie(model, records, figures: Path, aie_facts: int, seed: int) -> None:
    """A causal trace of one fact and the AIE over many, written to ``figures``."""
    from interp_edit.analysis import average_indirect_effect, causal_trace
    from interp_edit.analysis.tracing import default_window

    window = default_window(model.cfg.n_layers)  # ROME's 10 of 48 layers, scaled to this depth
    record = next(r for r in records if r.relation_id == "born_in")
    prompt = "As everyone knows, " + record.prompt.format(record.subject)
    trace = causal_trace(model, prompt, record.subject, record.target_true, window=window, seed=seed)
    html, png = trace.save(figures / "demo_causal_trace")
    print(f"\nCausal trace of {prompt!r} -> {record.target_true!r} (window {window}): clean "
          f"{trace.clean_score:.3f}, corrupted {trace.corrupted_score:.3f}; figure {png}")
    for site in trace.top_sites(3):
        print(f"  restore {site['kind']:6} layer {site['layer']} at {site['token']!r}: +{site['indirect_effect']:.3f}")
    rng = random.Random(stable_seed("demo-aie", seed))
    person = [r for r in records if r.relation_id in ("born_in", "profession", "speaks", "instrument")]
    aie = average_indirect_effect(model, rng.sample(person, min(aie_facts, len(person))), window=window, seed=seed)
    html, png = aie.save(figures / "demo_aie")
    print(f"\nAverage indirect effect over {aie.n_facts} facts ({aie.n_skipped} skipped); figure {png}")
    for kind in aie.kinds:
        peak = aie.peak(kind)
        print(f"  {kind:6} peak: {peak['role']} token, layer {peak['layer']}, effect {peak['effect']:.3f}")


def attribution_and_pathways(model, world, records, figures: Path, n_questions: int = 20) -> None:
    """Neuron attribution of one fact and the query → value pathways of two-hop questions."""
    from interp_edit.analysis import neuron_attribution, qv_pathways
    from interp_edit.toyworld import multihop_questions

    record = next(r for r in records if r.relation_id == "born_in")
    prompt = record.prompt.format(record.subject)
    result = neuron_attribution(model, prompt, record.target_true, top_k=50)
    html, png = result.save(figures / "demo_attribution")
    result.save(figures / "demo_attribution_query", view="query")
    print(f"\nNeuron attribution of {prompt!r} -> {record.target_true!r}; figure {png}")
    for row in result.table(5):
        print(f"  {row['neuron']:<14} {row['kind']:<4} +{row['score']:.3f} log p  promotes {row['top_tokens']}")
    questions = [q for q in multihop_questions(world) if len(q.hops) == 2 and q.trained][:n_questions]
    pathways = qv_pathways(model, [q.questions[0] for q in questions], [q.answer for q in questions], n_value=30, top_pathways=40)
    html, png = pathways.save(figures / "demo_pathways")
    pathways.save(figures / "demo_pathway_layers", view="layers")
    print(f"\nQuery -> value pathways over {len(questions)} two-hop questions; figure {png}")
    print(f"  value layers (best first) {pathways.value_layers}, query layers {pathways.query_layers}")
    for p in pathways.pathways[:3]:
        print(f"  {p.label:<18} weight {p.weight:.3f}")


def edit_one_fact(model, records, seed: int, figures: Path | None = None) -> None:
    """A ROME edit of one toy fact: the top-3 before and after on the edit prompt, a held-out
    paraphrase, a neighbour (must keep its answer) and the subject's other facts; with
    ``figures``, the pre/post attribution diff of the edit (layer maps per prompt group and the
    most changed neurons)."""
    from interp_edit.analysis import attribution_diff
    from interp_edit.editing import rome

    rng = random.Random(stable_seed("demo-edit", seed))
    born_in = [r for r in records if r.relation_id == "born_in"]
    # a fact with a neighbour (another person born in that city; a small world may have none)
    record = rng.choice([r for r in born_in if r.neighborhood_prompts] or born_in)
    shown = [("edit prompt", record.prompt.format(record.subject)), ("paraphrase", record.paraphrase_prompts[0]),
             *[("neighbour", p) for p in record.neighborhood_prompts[:1]], ("other fact", record.same_subject_prompts[0][0])]
    prompts = [prompt for _, prompt in shown]
    start = time.perf_counter()
    edit = rome(model, [record])
    seconds = time.perf_counter() - start

    def top3() -> list[str]:
        probs = torch.softmax(last_token_logits(model, prompts), dim=-1)
        return [", ".join(f"{model.tokenizer.decode([i]).strip()} {p:.2f}" for p, i in
                          zip(*(t.tolist() for t in torch.topk(row, 3)), strict=True)) for row in probs]

    before = top3()
    with edit.applied(model):
        after = top3()
    print(f"\nROME edit ({seconds:.1f}s, layer {edit.layers()[0]}): {record.subject} born in "
          f"{record.target_true} -> {record.target_new}")
    for (label, prompt), b, a in zip(shown, before, after, strict=True):
        print(f"  {label:11} {prompt!r}")
        print(f"    before: {b}")
        print(f"    after:  {a}")
    if figures is not None:
        diff = attribution_diff(model, edit, record, neurons=("edit",))
        html, png = diff.save(figures / "demo_edit_diff", view="groups")
        diff.save(figures / "demo_edit_diff_neurons", view="neurons")
        layer = diff.layer_diff("edit")
        print(f"\nPre/post attribution diff of the edit (after - before, edit prompt); figure {png}")
        for d, what in enumerate(("promotes new", "suppresses old")):
            for m, module in enumerate(("attention", "FFN")):
                values = " ".join(f"{v:+.2f}" for v in layer[:, m, d].tolist())
                print(f"  {what:14} {module:9} by layer: {values}")
        top = diff.top_neurons("edit", "promote_new", k=3)
        print("  most changed neurons (promote new): " + ", ".join(f"{r['neuron']} {r['change']:+.3f}" for r in top))
