"""Teacher-forced log-probabilities of target continuations, batched."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from interp_edit.analysis.scoring import encode_target
from interp_edit.batching import encode_prompts, pad_right


@torch.no_grad()
def continuation_logprobs(model, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 256
                          ) -> tuple[Float[Tensor, " n"], Float[Tensor, " n"]]:
    """For each (prompt, target): the summed log-probability of the target's tokens given the
    prompt (teacher-forced; a leading space is added to the target as in CounterFact) and the
    number of target tokens. ``sum / count`` is the mean per-token log-probability."""
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    prompt_ids = encode_prompts(model.tokenizer, prompts)
    target_ids = [encode_target(model.tokenizer, t) for t in targets]
    totals = torch.zeros(len(prompts))
    for start in range(0, len(prompts), batch_size):
        p_ids, t_ids = prompt_ids[start : start + batch_size], target_ids[start : start + batch_size]
        seqs = [list(p) + list(t[:-1]) for p, t in zip(p_ids, t_ids, strict=True)]
        tokens, _ = pad_right(seqs, model.tokenizer.pad_token_id or 0)
        logp = torch.log_softmax(model(tokens.to(model.cfg.device)).float(), -1).cpu()
        for row, (p, t) in enumerate(zip(p_ids, t_ids, strict=True)):
            pos = torch.arange(len(p) - 1, len(p) - 1 + len(t))
            totals[start + row] = logp[row, pos, torch.tensor(t)].sum()
    counts = torch.tensor([float(len(t)) for t in target_ids])
    return totals, counts
