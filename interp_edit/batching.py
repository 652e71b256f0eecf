"""Tokenising prompts for batched forwards: BOS first, right padding, last-token indices."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt with the BOS token prepended (as TransformerLens does)."""
    bos = tokenizer.bos_token_id
    return [[bos] + tokenizer.encode(p, add_special_tokens=False) for p in prompts]


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, " batch"]]:
    """Right-pad id lists into a tensor; also return each sequence's length."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    out = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.long)
    for i, seq in enumerate(sequences):
        out[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out, lengths


@torch.no_grad()
def last_token_logits(model, prompts: Sequence[str], batch_size: int = 256) -> Float[Tensor, "batch vocab"]:
    """Logits of the next token after each prompt, batched with right padding.

    With right padding and a causal model, the logits at a prompt's last real position do not
    depend on the padding after it, so the result equals one forward per prompt.
    """
    from interp_edit.validation import check_int, check_prompt_batch

    check_int(batch_size, "batch_size", minimum=1)
    ids = check_prompt_batch(model, prompts, allow_empty=True)  # BOS-first ids, each checked
    rows = []
    for start in range(0, len(ids), batch_size):
        tokens, lengths = pad_right(ids[start : start + batch_size], model.tokenizer.pad_token_id)
        logits = model(tokens.to(model.cfg.device), return_type="logits")
        rows.append(logits[torch.arange(len(lengths)), lengths.to(logits.device) - 1].float().cpu())
    return torch.cat(rows) if rows else torch.empty(0, model.cfg.d_vocab_out)


def prompt_tokens(model, prompt: str) -> Int[Tensor, "1 pos"]:
    """BOS + the prompt's tokens; a prompt longer than the context is an error (TransformerLens'
    ``to_tokens`` would silently truncate it)."""
    from interp_edit.errors import EmptyInputError, PromptTooLongError
    from interp_edit.validation import check_str

    check_str(prompt, "prompt", nonempty=False)
    if not prompt or not prompt.strip():
        raise EmptyInputError(f"empty prompt {prompt!r}")
    ids = encode_prompts(model.tokenizer, [prompt])[0]
    if len(ids) > model.cfg.n_ctx:
        raise PromptTooLongError(f"prompt {prompt!r} is {len(ids)} tokens; the model's context is {model.cfg.n_ctx}")
    return torch.tensor([ids], device=model.cfg.device)
