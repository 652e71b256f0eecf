"""FiNE's behaviour where it follows the authors' code (opanhw/FiNE, ``easyeditor/models/fine``;
``benchmarks/reference_compare_fine.py`` runs that code next to ours): one δ per (target token,
rank) slot, the repetition penalty's max over every target token, the batch call's independent
requests, bfloat16 δ as a named option, and the code's learning rates. Each reference here is
computed from a plain forward of the toy model or from the code's published numbers, not with
the implementation's helpers."""

from __future__ import annotations

import math

import pytest
import torch

from interp_edit.editing import EditRequest, FiNEConfig, fine

# a six-token new target that the toy model does not predict
REQUEST = EditRequest("{} was born in", "Talvik Corlo", "Gemmel Karsa Dovin")
# a three-token one whose last token is the likeliest to follow the full target (penalties 6e-7 / 4e-8 / 8e-6)
REPEATING = EditRequest("{} was born in", "Talvik Corlo", "Gemmel , Talvik")


def _ids(model, text: str, target: str) -> tuple[list[int], list[int]]:
    prompt = model.tokenizer(text)["input_ids"]
    return list(prompt), list(model.tokenizer.encode(" " + target, add_special_tokens=False))


def _top_k_per_token(model, request, top_k: int, layers: list[int]) -> list[list[tuple[int, int]]]:
    """Per target token: the top-k (layer, neuron) by m_i · (W_out[i] · W_U[:, t]), t the unedited argmax."""
    prompt, target = _ids(model, request.text, request.target_new)
    logits, cache = model.run_with_cache(torch.tensor([prompt + target[:-1]]))
    out = []
    for j in range(len(target)):
        pos = len(prompt) - 1 + j
        t = int(logits[0, pos].argmax())
        scores = torch.stack([cache[f"blocks.{layer}.mlp.hook_post"][0, pos] * (model.blocks[layer].mlp.W_out @ model.W_U[:, t])
                              for layer in layers])
        top = scores.flatten().topk(top_k).indices.tolist()
        out.append([(layers[i // scores.shape[1]], i % scores.shape[1]) for i in top])
    return out


def test_a_neuron_chosen_for_several_target_tokens_gets_one_delta_per_token(toy_model):
    # the code: deltas = zeros(top_k * n_tokens, d_model); every slot is its own Adam parameter with the
    # same gradient, so after one Adam step (|update| = lr per entry) a neuron chosen by n tokens moves n·lr
    cfg = FiNEConfig.for_model(toy_model)
    layers = list(range(toy_model.cfg.n_layers - cfg.n_frozen))
    per_token = _top_k_per_token(toy_model, REQUEST, 40, layers)
    counts: dict[tuple[int, int], int] = {}
    for slots in per_token:
        for n in slots:
            counts[n] = counts.get(n, 0) + 1
    assert max(counts.values()) >= 2  # the request exercises it
    lr = 1e-3
    for slots_mode, expected in (("per_token", counts), ("union", dict.fromkeys(counts, 1))):
        edit = fine(toy_model, [REQUEST], top_k=40, steps=1, lr=lr, neuron_slots=slots_mode)
        assert edit.info["steps"] == [1]
        seen = 0
        for name, delta in edit.deltas.items():
            layer = int(name.split(".")[1])
            for row, values in zip(delta.rows.tolist(), delta.values, strict=True):
                magnitude = values.abs().median().item()
                assert magnitude == pytest.approx(expected[(layer, row)] * lr, rel=1e-3), (slots_mode, layer, row)
                seen += 1
        assert seen == len(counts)


def _loss_at_zero(model, request, repetition: str, beta: float) -> tuple[float, float]:
    """max_j NLL_j + β · penalty at δ = 0 (KL 0, norm 0), from one plain forward of prompt + target."""
    prompt, target = _ids(model, request.text, request.target_new)
    logp = torch.log_softmax(model(torch.tensor([prompt + target]))[0].double(), -1)
    nll = [-logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(target)]
    p_after = [logp[-1, t].exp().item() for t in target]
    penalties = [-math.log(1 - p) for p in p_after]
    penalty = max(penalties) if repetition == "max" else penalties[0]
    return max(nll) + beta * penalty, max(nll)


def test_the_repetition_penalty_is_the_max_over_every_target_token(toy_model):
    # the code: (-log(1 - softmax(logits[0, -1])[target_ids])).max() * beta
    beta = 1e6  # large enough that the penalty's choice of token shows in the loss
    losses = {}
    for repetition in ("max", "first"):
        expected, max_nll = _loss_at_zero(toy_model, REPEATING, repetition, beta)
        # one step at a negligible lr: the reported loss is the loss at δ ≈ 0
        edit = fine(toy_model, [REPEATING], steps=1, lr=1e-12, repetition_weight=beta, kl_weight=0.0,
                    norm_weight=0.0, repetition=repetition)
        assert edit.info["max_nll"][0] == pytest.approx(max_nll, rel=1e-5)
        assert edit.info["loss"][0] == pytest.approx(expected, rel=1e-4)
        losses[repetition] = edit.info["loss"][0]
    assert losses["max"] > losses["first"] * 1.2  # the two choices really differ here


def test_the_default_repetition_and_slots_are_the_codes():
    cfg = FiNEConfig()
    assert (cfg.repetition, cfg.neuron_slots, cfg.sequential, cfg.delta_dtype) == ("max", "per_token", True, "float32")


def test_sequential_false_is_the_sum_of_edits_made_on_the_unedited_model(toy_model, person_records):
    # the code's apply_fine_to_model with several requests: each located and optimised on the model as
    # given, all deltas written at the end
    records = [r for r in person_records if r.relation_id == "profession"][:3]
    batch = fine(toy_model, records, steps=5, sequential=False)
    singles = [fine(toy_model, [r], steps=5) for r in records]
    d_mlp = toy_model.cfg.d_mlp
    names = set(batch.deltas) | {n for s in singles for n in s.deltas}
    for name in names:
        expected = sum(s.deltas[name].dense(d_mlp).double() for s in singles if name in s.deltas)
        assert torch.allclose(batch.deltas[name].dense(d_mlp).double(), expected, atol=1e-7)
    sequential = fine(toy_model, records, steps=5)  # the default: each sees the earlier ones
    assert any(not torch.allclose(sequential.deltas[n].dense(d_mlp), batch.deltas[n].dense(d_mlp), atol=1e-6)
               for n in set(sequential.deltas) & set(batch.deltas)) or set(sequential.deltas) != set(batch.deltas)


def test_bfloat16_deltas_as_the_code_learns_them(toy_model, person_records):
    record = person_records[0]
    bf16 = fine(toy_model, [record], steps=5, lr=1e-2, delta_dtype="bfloat16")
    f32 = fine(toy_model, [record], steps=5, lr=1e-2)
    values = torch.cat([d.values for d in bf16.deltas.values()])
    assert torch.equal(values, values.to(torch.bfloat16).float())  # every entry a bfloat16 number
    ours = torch.cat([d.values for d in f32.deltas.values()])
    assert not torch.equal(ours, ours.to(torch.bfloat16).float())


def test_learning_rates_are_the_codes():
    # hparams/FINE/gptj-6b.yaml, llama2-7b.yaml, llama3-8b.yaml: lr 1e-3, 5e-3, 1e-3
    assert FiNEConfig().lr == 1e-3
    assert FiNEConfig.PRESETS["gpt-j-6B"]["lr"] == 1e-3
    assert FiNEConfig.PRESETS["Llama-2-7b-hf"]["lr"] == 5e-3
    assert FiNEConfig.PRESETS["Meta-Llama-3-8B"]["lr"] == 1e-3
    assert FiNEConfig().top_k == 5 and FiNEConfig().n_frozen == 3 and FiNEConfig().steps == 50  # neuron_num, last_layer, epochs


@pytest.mark.parametrize(("flags", "expected"), [
    ({}, ("final_norm_folded", "centred")),  # TransformerLens' hub defaults
    ({"fold_ln": False, "center_unembed": False}, ()),
    ({"fold_ln": True, "center_unembed": False}, ("final_norm_folded",)),
    ({"fold_ln": False, "center_unembed": True}, ("centred",)),
])
def test_the_unembedding_processing_is_read_from_the_model(flags, expected):
    from interp_edit import load_model
    from interp_edit.adapter import unembedding_processing
    from interp_edit.adapter.bridge import hooked_available
    from interp_edit.adapter.tiny import tiny_hf_model

    if not hooked_available():
        pytest.skip("weight processing is HookedTransformer's (the bridge keeps the Hugging Face weights)")
    tokenizer = load_model("toyworld").tokenizer
    hf = tiny_hf_model("llama", vocab_size=len(tokenizer))
    raw = hf.lm_head.weight.detach().T.clone()  # [d_model, vocab], before any processing
    model = load_model("tiny-llama", hf_model=hf, tokenizer=tokenizer, **flags)
    assert unembedding_processing(model) == expected
    # the reference: the model's W_U against the checkpoint's lm_head, by hand
    assert torch.equal(model.W_U.detach(), raw) == (expected == ())


def test_a_centred_trained_unembedding_is_recognised_and_fine_warns_on_it(toy_model, person_records):
    from interp_edit.adapter import unembedding_processing

    assert unembedding_processing(toy_model) == ()  # the toy model is loaded unprocessed
    with pytest.warns() as caught:  # nothing FiNE-specific on an unprocessed model
        fine(toy_model, person_records[:1], steps=1)
        import warnings

        warnings.warn("sentinel", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["sentinel"]
    w_u = toy_model.W_U.data
    original = w_u.clone()
    try:
        w_u -= w_u.mean(-1, keepdim=True)  # TransformerLens' center_unembed, by hand
        assert unembedding_processing(toy_model) == ("centred",)
        with pytest.warns(UserWarning, match=r"processed \(centred\).*fold_ln=False, center_unembed=False"):
            e = fine(toy_model, person_records[:1], steps=1)
        assert e.info["unembedding_processing"] == ["centred"]
    finally:
        w_u.copy_(original)
