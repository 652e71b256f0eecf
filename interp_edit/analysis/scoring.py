"""What an analysis measures at the output: the target and the metric (a target's tokens come
from :func:`interp_edit.prompts.encode_target`).

A target string is scored as the continuation of the prompt; like CounterFact, a target
without a leading space gets one (``"Paris"`` -> ``" Paris"``). A target of several tokens is
teacher-forced: the model reads the prompt followed by all target tokens but the last, and

- ``prob`` = the probability of the whole target = Π_i p(t_i | prompt, t_<i),
- ``logprob`` = Σ_i log p(t_i | prompt, t_<i),
- ``logit_diff`` = logit(t_0) − logit(foil) at the last prompt token (first target token only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from interp_edit.errors import InvalidArgumentError
from interp_edit.prompts import NEUTRAL_CONTEXT, encode_target  # noqa: F401  (tokenising lives in prompts.py)

METRICS = ("prob", "logprob", "logit_diff")


@dataclass(frozen=True)
class Target:
    text: str
    ids: tuple[int, ...]
    #: the competing token of ``logit_diff`` (None for the other metrics)
    foil_id: int | None = None


def check_metric(metric: str) -> None:
    if not isinstance(metric, str) or metric not in METRICS:
        raise InvalidArgumentError(f"unknown metric {metric!r}; choose one of {METRICS}")


def score_positions(prompt_len: int, target: Target) -> list[int]:
    """Positions whose next-token logits score the target (``prompt_len`` counts BOS)."""
    return list(range(prompt_len - 1, prompt_len - 1 + len(target.ids)))


def score_logits(logits: Float[Tensor, "row target vocab"], target: Target, metric: str) -> Float[Tensor, " row"]:
    """The metric per row from the logits at :func:`score_positions` (in that order)."""
    if metric == "logit_diff":
        first = logits[:, 0].float()
        return first[:, target.ids[0]] - first[:, target.foil_id]
    logp = torch.log_softmax(logits.float(), dim=-1)
    ids = torch.tensor(target.ids, device=logits.device)
    total = logp[:, torch.arange(len(ids), device=logits.device), ids].sum(-1)
    return total.exp() if metric == "prob" else total
