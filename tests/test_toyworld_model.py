"""The shipped toy-world checkpoint: quality bar, ROME-style fact storage, demo and CLI."""

from __future__ import annotations

import random

import torch

from interp_edit.toyworld import counterfact_records
from interp_edit.toyworld.world import stable_seed


def test_fact_recall_in_training_templates(toy_metrics):
    assert toy_metrics["fact_acc"] >= 0.97


def test_fact_recall_in_heldout_paraphrases(toy_metrics):
    assert toy_metrics["paraphrase_acc"] >= 0.90


def test_eval_reports_every_accuracy(toy_metrics):
    for key in ("fact_acc", "paraphrase_acc", "twohop_trained_acc", "twohop_heldout_acc"):
        assert 0.0 <= toy_metrics[key] <= 1.0


def _subject_positions(model, prompt: str, subject: str) -> list[int]:
    tokens = model.to_tokens(prompt)[0].tolist()
    subj = model.tokenizer.encode(" " + subject, add_special_tokens=False)
    for i in range(len(tokens) - len(subj) + 1):
        if tokens[i : i + len(subj)] == subj:
            return list(range(i, i + len(subj)))
    raise AssertionError(f"subject {subject!r} not found in {prompt!r}")


@torch.no_grad()
def naive_mlp_trace(model, prompt, subject, target, noise_std, samples=10, seed=0):
    """ROME-style MLP indirect effects by a plain loop: one run_with_hooks per (layer, pos)."""
    tokens = model.to_tokens(prompt).repeat(samples, 1)
    subj = _subject_positions(model, prompt, subject)
    target_id = model.tokenizer.encode(" " + target, add_special_tokens=False)[0]
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(samples, len(subj), model.cfg.d_model, generator=gen) * noise_std

    def corrupt(embed, hook):
        embed[:, subj] += noise
        return embed

    _, cache = model.run_with_cache(tokens[:1], names_filter=lambda n: n.endswith("hook_mlp_out"))

    def prob(hooks):
        logits = model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", corrupt)] + hooks)
        return torch.softmax(logits[:, -1], -1)[:, target_id].mean().item()

    p_corrupt = prob([])
    effects = torch.zeros(model.cfg.n_layers, tokens.shape[1])
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.hook_mlp_out"
        for pos in range(tokens.shape[1]):
            def restore(out, hook, pos=pos, name=name):
                out[:, pos] = cache[name][0, pos]
                return out

            effects[layer, pos] = prob([(name, restore)]) - p_corrupt
    return effects, subj


def test_facts_are_enriched_at_the_last_subject_token_in_early_layers(toy_model, toy_world):
    """The ROME signature the editors rely on: over 20 facts, the largest average MLP
    indirect effect is at the last subject token, in the first half of the layers."""
    records = [r for r in counterfact_records(toy_world) if r.relation_id in ("born_in", "profession", "speaks", "instrument")]
    rng = random.Random(stable_seed("trace-check"))
    rng.shuffle(records)
    noise_std = 3 * toy_model.W_E.std().item()
    roles = ("first_subject", "last_subject", "after_subject", "last_token")
    totals = torch.zeros(toy_model.cfg.n_layers, len(roles))
    used = 0
    for record in records:
        prompt = record.prompt.format(record.subject)
        top = toy_model(prompt)[0, -1].argmax().item()
        if toy_model.tokenizer.decode([top]).strip() != record.target_true:
            continue
        effects, subj = naive_mlp_trace(toy_model, prompt, record.subject, record.target_true, noise_std)
        last = effects.shape[1] - 1
        after = [p for p in range(subj[-1] + 1, last)]
        totals[:, 0] += effects[:, subj[0]]
        totals[:, 1] += effects[:, subj[-1]]
        totals[:, 2] += effects[:, after].mean(1) if after else 0
        totals[:, 3] += effects[:, last]
        used += 1
        if used == 20:
            break
    assert used == 20
    mean = totals / used
    layer, role = divmod(mean.argmax().item(), len(roles))
    print("mean MLP indirect effect [layer x (first subj, last subj, after subj, last token)]:\n", mean)
    assert roles[role] == "last_subject", mean
    assert layer < toy_model.cfg.n_layers / 2, mean
