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
    lengths = [len(s) for s in sequences]
    width = max(lengths)
    out = torch.tensor([[*s, *[pad_id] * (width - len(s))] for s in sequences], dtype=torch.long)
    return out.view(len(sequences), width), torch.tensor(lengths, dtype=torch.long)


@torch.no_grad()
def last_token_logits(model, prompts: Sequence[str], batch_size: int = 256) -> Float[Tensor, "batch vocab"]:
    """Logits of the next token after each prompt, batched with right padding.

    With right padding and a causal model, the logits at a prompt's last real position do not
    depend on the padding after it, so the result equals one forward per prompt.

    >>> logits = last_token_logits(model, ["Talvik Corlo was born in", "Beldel Kordor was born in"])
    >>> logits.shape                             # [prompt, vocab]
    torch.Size([2, 1113])
    >>> [model.tokenizer.decode(i) for i in logits.argmax(-1)]
    [' Karsa', ' Gemmel']
    """
    from interp_edit.validation import check_int, check_prompt_batch

    check_int(batch_size, "batch_size", minimum=1)
    ids = check_prompt_batch(model, prompts, allow_empty=True)  # BOS-first ids, each checked
    if not ids:
        return torch.empty(0, model.cfg.d_vocab_out)
    # batches of similar lengths pad less (the toy world's evaluation sets: 27% fewer positions)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    rows = []
    for start in range(0, len(ids), batch_size):
        tokens, lengths = pad_right([ids[i] for i in order[start : start + batch_size]], model.tokenizer.pad_token_id)
        logits = model(tokens.to(model.cfg.device), return_type="logits")
        rows.append(logits[torch.arange(len(lengths)), lengths.to(logits.device) - 1].float().cpu())
    out = torch.empty(len(ids), rows[0].shape[-1])
    out[torch.tensor(order)] = torch.cat(rows)
    return out


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


# ---------------------------------------------------------------------------------------------
# Memory budgets: the one rule for how much the batched engines (restorations behind causal
# tracing, patching and AIE; attribution's vocabulary projections) may hold per forward.

#: share of the device's free memory a forward may use when no budget is given
DEFAULT_BUDGET_SHARE = 0.25


def free_memory(device) -> int:
    """Free bytes on ``device``: ``torch.cuda.mem_get_info`` on a GPU, psutil's available
    memory on the CPU (and on any other device)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory_budget(memory_budget, name: str = "memory_budget") -> None:
    """``memory_budget`` is None (the default) or a positive number of bytes (an int, or a float
    such as ``2e9``); anything else raises :class:`InvalidArgumentError` naming it."""
    import math

    from interp_edit.errors import InvalidArgumentError

    if memory_budget is None:
        return
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float)):
        raise InvalidArgumentError(f"{name} must be a number of bytes (or None for "
                                   f"{DEFAULT_BUDGET_SHARE:.0%} of the free memory), got "
                                   f"{type(memory_budget).__name__} {memory_budget!r}")
    if not math.isfinite(memory_budget) or memory_budget <= 0:
        raise InvalidArgumentError(f"{name} must be a positive number of bytes, got {memory_budget!r}")


def resolve_memory_budget(memory_budget, device) -> int:
    """The budget in bytes: ``memory_budget`` if given (checked), else
    :data:`DEFAULT_BUDGET_SHARE` of :func:`free_memory` of the device."""
    check_memory_budget(memory_budget)
    if memory_budget is None:
        return max(1, int(DEFAULT_BUDGET_SHARE * free_memory(device)))
    return int(memory_budget)


def rows_within(memory_budget: int, bytes_per_row: int, limit: int | None = None) -> int:
    """How many rows of ``bytes_per_row`` fit in the budget: at least 1 (one row is the
    smallest unit of work; a budget below one row runs one row per forward), at most ``limit``."""
    rows = max(1, int(memory_budget) // max(1, int(bytes_per_row)))
    return rows if limit is None else min(rows, limit)


def forward_row_bytes(model, n_pos: int, n_keys: int | None = None, n_scored: int = 1) -> int:
    """An upper estimate of the bytes one row (one sequence) of a no-grad forward holds at its
    peak: per position the residual stream and its copies (6 · d_model), the MLP's hidden
    activations (3 · d_mlp), queries / keys / values and outputs (4 · heads · d_head) and
    two attention-score matrices (2 · heads · ``n_keys``, all positions attended to,
    ``n_pos`` by default), in the model's dtype; plus the logits of ``n_scored`` positions
    and their float32 log-softmax."""
    cfg = model.cfg
    n_keys = n_pos if n_keys is None else n_keys
    elt = torch.empty(0, dtype=model.W_E.dtype).element_size()
    d_mlp = cfg.d_mlp or 4 * cfg.d_model
    per_pos = 6 * cfg.d_model + 3 * d_mlp + 4 * cfg.n_heads * cfg.d_head + 2 * cfg.n_heads * n_keys
    return elt * n_pos * per_pos + n_scored * cfg.d_vocab_out * (elt + 8)


#: rows per batched forward when the caller gives no ``max_rows``: large merged forwards on a
#: GPU (each forward costs a fixed launch overhead), today's size elsewhere
CUDA_MAX_ROWS = 16384
OTHER_MAX_ROWS = 1024


def default_max_rows(device) -> int:
    """The most rows a batched restoration forward holds when the caller sets no ``max_rows``:
    16,384 on CUDA, 1,024 on the CPU (the memory budget may allow fewer)."""
    return CUDA_MAX_ROWS if torch.device(device).type == "cuda" else OTHER_MAX_ROWS


def forward_overhead_row_layers(model, n_pos: int, device) -> float:
    """What one more forward costs, as the number of row-layers (one sequence of ``n_pos``
    positions through one block) that cost as much: how the merged restoration engine decides
    whether to cut a forward to skip lower layers. On CUDA a forward costs a fixed launch and
    Python-hook overhead (~5 ms; a row-layer ~24·d_model²·n_pos FLOP at ~4e14 FLOP/s); on the
    CPU about as much as 8e6 / d_model² row-positions (the by-layer engine's rule)."""
    d = model.cfg.d_model
    if torch.device(device).type == "cuda":
        return 5e-3 * 4e14 / (24 * d * d * max(1, n_pos))
    return max(32.0, 8e6 / d**2) / max(1, n_pos)
