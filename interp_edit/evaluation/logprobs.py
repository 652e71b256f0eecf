"""Teacher-forced scoring of target continuations, batched: per-token log-probabilities and
whether each target token is the model's top-1 prediction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from interp_edit.analysis.scoring import encode_target
from interp_edit.batching import encode_prompts, pad_right


@dataclass(frozen=True)
class TokenScores:
    """Per (prompt, target) pair: the target tokens' log-probabilities and top-1 hits."""

    logprobs: list[Float[Tensor, " tokens"]]
    top1: list[Bool[Tensor, " tokens"]]

    @property
    def total(self) -> Float[Tensor, " n"]:
        """Σ log p(t_i | prompt, t_<i): the log of the target's probability."""
        return torch.stack([lp.sum() for lp in self.logprobs]) if self.logprobs else torch.zeros(0)

    @property
    def n_tokens(self) -> Float[Tensor, " n"]:
        return torch.tensor([float(len(lp)) for lp in self.logprobs])

    @property
    def mean(self) -> Float[Tensor, " n"]:
        """The mean per-token log-probability (what ROME's evaluation compares)."""
        return self.total / self.n_tokens

    @property
    def prob(self) -> Float[Tensor, " n"]:
        """The target's probability: the product of its teacher-forced token probabilities."""
        return self.total.exp()

    @property
    def token_accuracy(self) -> Float[Tensor, " n"]:
        """The fraction of target tokens that are the top-1 prediction (teacher-forced)."""
        return torch.stack([hit.float().mean() for hit in self.top1]) if self.top1 else torch.zeros(0)

    @property
    def exact(self) -> Bool[Tensor, " n"]:
        """Every target token is top-1: greedy decoding emits the target right after the prompt."""
        return torch.stack([hit.all() for hit in self.top1]) if self.top1 else torch.zeros(0, dtype=torch.bool)


@torch.no_grad()
def score_continuations(model, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 256) -> TokenScores:
    """Teacher-force each target (a leading space added as in CounterFact) after its prompt."""
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    prompt_ids = encode_prompts(model.tokenizer, prompts)
    target_ids = [encode_target(model.tokenizer, t, p) for p, t in zip(prompts, targets, strict=True)]
    logprobs, top1 = [], []
    for start in range(0, len(prompts), batch_size):
        p_ids, t_ids = prompt_ids[start : start + batch_size], target_ids[start : start + batch_size]
        seqs = [list(p) + list(t[:-1]) for p, t in zip(p_ids, t_ids, strict=True)]
        tokens, _ = pad_right(seqs, model.tokenizer.pad_token_id or 0)
        logp = torch.log_softmax(model(tokens.to(model.cfg.device)).float(), -1).cpu()
        for row, (p, t) in enumerate(zip(p_ids, t_ids, strict=True)):
            pos = torch.arange(len(p) - 1, len(p) - 1 + len(t))
            ids = torch.tensor(t)
            logprobs.append(logp[row, pos, ids])
            top1.append(logp[row, pos].argmax(-1) == ids)
    return TokenScores(logprobs, top1)


def continuation_logprobs(model, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 256
                          ) -> tuple[Float[Tensor, " n"], Float[Tensor, " n"]]:
    """For each (prompt, target): the summed log-probability of the target's tokens given the
    prompt (teacher-forced; a leading space is added to the target as in CounterFact) and the
    number of target tokens. ``sum / count`` is the mean per-token log-probability."""
    scores = score_continuations(model, prompts, targets, batch_size)
    return scores.total, scores.n_tokens
