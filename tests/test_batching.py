"""Batched next-token logits (``interp_edit.batching.last_token_logits``): prompts of mixed
lengths, in any order and any batch size, give each prompt's own logits, in the order given."""

from __future__ import annotations

import torch

from interp_edit.batching import last_token_logits

PROMPTS = [
    "Talvik Corlo was born in",
    "Talvik Corlo",
    "The birthplace of Beldel Kordor is",
    "Beldel Kordor was born in the city of",
    "born",
]


def _one_at_a_time(model, prompts):
    rows = []
    for prompt in prompts:
        ids = [model.tokenizer.bos_token_id, *model.tokenizer.encode(prompt, add_special_tokens=False)]
        rows.append(model(torch.tensor([ids]), return_type="logits")[0, -1])
    return torch.stack(rows)


def test_mixed_lengths_give_each_prompts_own_logits_in_the_given_order(toy_model):
    expected = _one_at_a_time(toy_model, PROMPTS)
    for batch_size in (1, 2, 3, 8):
        got = last_token_logits(toy_model, PROMPTS, batch_size=batch_size)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_no_prompts_give_an_empty_table(toy_model):
    assert last_token_logits(toy_model, []).shape == (0, toy_model.cfg.d_vocab_out)
