"""Average indirect effect (AIE) of causal traces over a dataset of facts, by token role as in
the ROME paper (Meng et al. 2022, Fig. 2)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from interp_edit.analysis.scoring import encode_target
from interp_edit.analysis.tracing import KINDS, CausalTraceResult, causal_trace, default_window, subject_embedding_std
from interp_edit.batching import last_token_logits
from interp_edit.progress import progress_bar

ROLES = (
    "first_subject",
    "middle_subject",
    "last_subject",
    "first_subsequent",
    "further",
    "last",
)


def role_positions(subject_span: tuple[int, int], prompt_len: int) -> dict[str, list[int]]:
    """Token positions of each role (BOS excluded). The last prompt token is only ``last``;
    a one-token subject is both first and last subject token."""
    s0, s1 = subject_span
    last = prompt_len - 1
    return {
        "first_subject": [s0],
        "middle_subject": list(range(s0 + 1, s1 - 1)),
        "last_subject": [s1 - 1],
        "first_subsequent": [s1] if s1 < last else [],
        "further": list(range(s1 + 1, last)),
        "last": [last],
    }


def effects_by_role(trace: CausalTraceResult) -> Float[Tensor, "kind role layer"]:
    """Indirect effects of one trace averaged within each role (NaN where a role is empty)."""
    ie = trace.indirect_effects
    prompt_len = len(trace.tokens) - (len(trace.target_ids) - 1)
    out = torch.full((ie.shape[0], len(ROLES), ie.shape[1]), math.nan)
    for r, positions in enumerate(role_positions(trace.subject_span, prompt_len).values()):
        if positions:
            out[:, r] = ie[:, :, positions].mean(-1)
    return out


@dataclass
class AIEResult:
    """Mean indirect effect ``effects[kind, role, layer]`` over the facts the model knows."""

    effects: Float[Tensor, "kind role layer"]
    #: how many facts contributed to each (kind, role, layer) cell (roles can be empty)
    counts: Tensor
    kinds: tuple[str, ...]
    roles: tuple[str, ...]
    n_facts: int
    n_skipped: int
    skipped: list[dict]
    mean_clean_score: float
    mean_corrupted_score: float
    settings: dict = field(default_factory=dict)

    def curve(self, kind: str, role: str) -> Float[Tensor, " layer"]:
        return self.effects[self.kinds.index(kind), self.roles.index(role)]

    def peak(self, kind: str) -> dict:
        """The (role, layer) with the largest mean effect of one kind."""
        block = self.effects[self.kinds.index(kind)].nan_to_num(-math.inf)
        role, layer = divmod(block.argmax().item(), block.shape[1])
        return dict(kind=kind, role=self.roles[role], layer=layer, effect=block[role, layer].item())

    def __repr__(self) -> str:
        from interp_edit.reprs import number, short_repr

        peaks = []
        for kind in self.kinds:
            p = self.peak(kind)
            peaks.append(f"{kind} {p['role']} L{p['layer']} {number(p['effect'], 3)}")
        return short_repr("AIEResult", n_facts=str(self.n_facts), skipped=str(self.n_skipped),
                          clean=number(self.mean_clean_score), corrupted=number(self.mean_corrupted_score),
                          peaks="[" + "; ".join(peaks) + "]")

    def plot(self):
        from interp_edit.viz.traces import aie_figure

        return aie_figure(self)

    def save(self, path: str | Path) -> tuple[Path, Path]:
        from interp_edit.viz.export import save_figure

        return save_figure(self.plot(), path)


def _as_fact(fact) -> tuple[str, str, str]:
    """(prompt, subject, target) from a CounterFactRecord, a dict or a 3-tuple."""
    if hasattr(fact, "prompt") and hasattr(fact, "subject"):
        return fact.prompt.format(fact.subject), fact.subject, fact.target_true
    if isinstance(fact, dict):
        rw = fact.get("requested_rewrite", fact)
        return rw["prompt"].format(rw["subject"]), rw["subject"], rw["target_true"]["str"] if isinstance(rw["target_true"], dict) else rw["target_true"]
    prompt, subject, target = fact
    return prompt, subject, target


@torch.no_grad()
def average_indirect_effect(
    model,
    facts: Iterable,
    *,
    kinds: Sequence[str] = KINDS,
    noise: float = 3.0,
    samples: int = 10,
    window: int | None = None,
    metric: str = "prob",
    severed: str | None = None,
    seed: int = 0,
    embedding_std: float | None = None,
    progress: bool = True,
    max_rows: int = 1024,
) -> AIEResult:
    """Trace every fact the model gets right (clean top-1 = first target token) and average
    the indirect effects by token role × layer. Facts are CounterFact records, CounterFact
    dicts or ``(prompt, subject, target)`` tuples. The noise scale is, as in ROME, 3 × the std
    of the embeddings of all the facts' subject tokens unless ``embedding_std`` is given."""
    facts = [_as_fact(f) for f in facts]
    window = default_window(model.cfg.n_layers) if window is None else window
    std = embedding_std or subject_embedding_std(model, [s for _, s, _ in facts])
    predicted = last_token_logits(model, [p for p, _, _ in facts]).argmax(-1).tolist()
    per_fact, skipped, clean, corrupted = [], [], [], []
    for i, (prompt, subject, target) in enumerate(progress_bar(facts, desc="AIE", disable=not progress)):
        if predicted[i] != encode_target(model.tokenizer, target)[0]:
            skipped.append(dict(index=i, prompt=prompt, target=target, predicted=model.tokenizer.decode([predicted[i]])))
            continue
        trace = causal_trace(model, prompt, subject, target, kinds=kinds, noise=noise, samples=samples,
                             window=window, metric=metric, severed=severed, seed=seed + i,
                             embedding_std=std, max_rows=max_rows)
        per_fact.append(effects_by_role(trace))
        clean.append(trace.clean_score)
        corrupted.append(trace.corrupted_score)
    if not per_fact:
        raise ValueError(f"the model gets none of the {len(facts)} facts right; nothing to average")
    stacked = torch.stack(per_fact)
    return AIEResult(
        effects=stacked.nanmean(0),
        counts=(~stacked.isnan()).sum(0),
        kinds=tuple(kinds),
        roles=ROLES,
        n_facts=len(per_fact),
        n_skipped=len(skipped),
        skipped=skipped,
        mean_clean_score=sum(clean) / len(clean),
        mean_corrupted_score=sum(corrupted) / len(corrupted),
        settings=dict(noise=noise, samples=samples, window=window, metric=metric, severed=severed, seed=seed,
                      embedding_std=std),
    )
