"""What neuron attribution finds on the toy-world model (numbers for docs/attribution.md).

1. Ablation check: for ``--facts`` CounterFact-style facts, zero-ablate each fact's top-k value
   neurons (FFN and attention together, and FFN only) against k random neurons of the same
   kinds and layers (never one of the top ones); mean drop of p(true object), k = 10, 50, 300.
2. Q-V pathways on the two-hop birth-country questions (first phrasing; trained and held-out
   compositions): value layers and query layers, best first, with their scores.
3. Ablating the neurons of the top pathways: top-1 accuracy before / after on those two-hop
   questions and on the one-hop facts of the same chains (person → birth city, city → country);
   control: as many random FFN neurons of the same layers.

Prints ``key=value`` lines. Usage: ``python benchmarks/attribution_effects.py [--facts 50]``.
"""

from __future__ import annotations

import argparse
import random

import torch


def random_like(top, cfg, n_pos: int, rng: random.Random):
    """For each top neuron, a random neuron of the same kind and layer outside the top set."""
    from interp_edit import Neuron

    taken = {s.neuron for s in top}
    out = []
    for s in top:
        n = s.neuron
        while True:
            if n.kind == "ffn":
                cand = Neuron("ffn", n.layer, rng.randrange(cfg.d_mlp))
            else:
                cand = Neuron("attn", n.layer, rng.randrange(cfg.d_head), head=rng.randrange(cfg.n_heads), pos=rng.randrange(n_pos))
            if cand not in taken:
                taken.add(cand)
                out.append(cand)
                break
    return out


def ablation_check(model, records, ks, rng) -> None:
    from interp_edit import ablate_neurons, neuron_attribution

    drops = {(k, kinds, which): [] for k in ks for kinds in ("all", "ffn") for which in ("top", "random")}
    for record in records:
        prompt = record.prompt.format(record.subject)
        result = neuron_attribution(model, prompt, record.target_true, top_k=max(ks))
        for k in ks:
            for kinds, sel in (("all", ("ffn", "attn")), ("ffn", ("ffn",))):
                top = result.value_neurons(k, sel)
                rand = random_like(top, model.cfg, len(result.str_tokens), rng)
                drops[k, kinds, "top"].append(ablate_neurons(model, top, prompt, record.target_true).mean_drop)
                drops[k, kinds, "random"].append(ablate_neurons(model, rand, prompt, record.target_true).mean_drop)
    base = ablate_neurons(model, [], [r.prompt.format(r.subject) for r in records], [r.target_true for r in records])
    print(f"ablation_facts={len(records)} mean_p_target_before={base.probs_before.mean().item():.4f} "
          f"accuracy_before={base.accuracy_before:.3f}")
    for (k, kinds, which), values in drops.items():
        print(f"ablation_k{k}_{kinds}_{which}_mean_drop={sum(values) / len(values):.4f}")


def pathway_check(model, world, n_pathways) -> None:
    from interp_edit import Neuron, ablate_neurons, qv_pathways
    from interp_edit.toyworld import counterfact_records, multihop_questions

    questions = [q for q in multihop_questions(world) if len(q.hops) == 2]
    for subset, chosen in (("trained", [q for q in questions if q.trained]), ("heldout", [q for q in questions if not q.trained])):
        prompts, answers = [q.questions[0] for q in chosen], [q.answer for q in chosen]
        result = qv_pathways(model, prompts, answers, n_value=50, top_pathways=max(n_pathways))
        print(f"pathways_{subset}_prompts={len(prompts)}")
        print(f"pathways_{subset}_value_layers={result.value_layers} scores={[round(v, 2) for v in result.value_layer_scores.tolist()]}")
        print(f"pathways_{subset}_query_layers={result.query_layers} scores={[round(v, 2) for v in result.query_layer_scores.tolist()]}")
        print(f"pathways_{subset}_top3={[(p.label, round(p.weight, 2)) for p in result.pathways[:3]]}")
        flow = result.layer_flow()
        print(f"pathways_{subset}_flow_query_to_value_layers={[(q, v, round(flow[q, v].item(), 2)) for q, v in flow.nonzero().tolist()]}")
        born = {r.subject: r for r in counterfact_records(world, relations=("born_in",))}
        located = {r.subject: r for r in counterfact_records(world, relations=("located_in",))}
        one_hop = [(born[q.subject].prompt.format(q.subject), q.chain[1]) for q in chosen]
        one_hop += [(located[q.chain[1]].prompt.format(q.chain[1]), q.chain[2]) for q in chosen]
        rng = random.Random(0)
        for n in n_pathways:
            neurons = result.pathway_neurons(n)
            taken = set(neurons)
            control = []
            for nrn in neurons:
                cand = nrn
                while cand in taken:
                    cand = Neuron("ffn", nrn.layer, rng.randrange(model.cfg.d_mlp))
                taken.add(cand)
                control.append(cand)
            for which, chosen_neurons in (("top", neurons), ("random", control)):
                two = ablate_neurons(model, chosen_neurons, prompts, answers)
                one = ablate_neurons(model, chosen_neurons, [p for p, _ in one_hop], [a for _, a in one_hop])
                print(f"pathways_{subset}_ablate_{which}{n}_neurons={len(chosen_neurons)} two_hop_acc={two.accuracy_before:.3f}->"
                      f"{two.accuracy_after:.3f} one_hop_acc={one.accuracy_before:.3f}->{one.accuracy_after:.3f} two_hop_p="
                      f"{two.probs_before.mean():.3f}->{two.probs_after.mean():.3f} one_hop_p={one.probs_before.mean():.3f}->"
                      f"{one.probs_after.mean():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--facts", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from interp_edit import load_model
    from interp_edit.toyworld import counterfact_records, world_of

    model = load_model("toyworld")
    world = world_of(model)
    rng = random.Random(args.seed)
    ablation_check(model, rng.sample(counterfact_records(world), args.facts), (10, 50, 300), rng)
    pathway_check(model, world, (10, 50, 200))


if __name__ == "__main__":
    main()
