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

from interp_edit.adapter import fused_kernels
from interp_edit.analysis.gap import ScoreGap
from interp_edit.analysis.restore import resolve_merge
from interp_edit.analysis.scoring import encode_target
from interp_edit.analysis.tracing import (
    KINDS,
    CausalTraceResult,
    TraceSettings,
    causal_trace,
    default_window,
    subject_embedding_std,
)
from interp_edit.batching import last_token_logits, resolve_memory_budget
from interp_edit.errors import InterpEditError, InvalidArgumentError, PromptTooLongError
from interp_edit.progress import progress_bar
from interp_edit.prompts import tokenize_with_subject
from interp_edit.validation import check_choice, check_int, check_sequence, check_str

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
    """Mean indirect effect ``effects[kind, role, layer]`` over the facts the model knows.

    Fields:

    - ``effects``: [kind, role, layer] float tensor, the indirect effect (restored score minus
      corrupted score) averaged over the traced facts; NaN where no fact has a token of that
      role (e.g. ``middle_subject`` when every subject is two tokens long).
    - ``counts``: [kind, role, layer] integer tensor, how many facts contributed to each cell.
    - ``kinds``: the restored activations, e.g. ``("hidden", "mlp", "attn")``.
    - ``roles``: the token roles of ROME's figure, in order: ``first_subject``,
      ``middle_subject``, ``last_subject``, ``first_subsequent``, ``further``, ``last``.
    - ``n_facts`` / ``n_skipped``: facts traced / left out (the model's clean top-1 was not the
      first target token); ``skipped``: one dict per left-out fact (its index, prompt, reason).
    - ``mean_clean_score`` / ``mean_corrupted_score``: the metric without and with the
      corruption (nothing restored), averaged over the traced facts.
    - ``settings``: the options of the traces (noise, samples, window, metric, ...).

    >>> aie = average_indirect_effect(model, records[:3], samples=2, progress=False)
    >>> aie.effects.shape                     # [kind, role, layer]
    torch.Size([3, 6, 6])
    >>> aie.n_facts + aie.n_skipped
    3
    >>> aie.curve("mlp", "last_subject").shape
    torch.Size([6])
    >>> sorted(aie.peak("mlp"))
    ['effect', 'kind', 'layer', 'role']
    >>> fig = aie.plot()                      # or aie.plot("lines")
    """

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

    @property
    def gap(self) -> ScoreGap:
        """The mean clean − corrupted gap of the traced facts (each one the model knows: its
        clean top-1 is the target) and whether it is worth localising; see
        :mod:`~interp_edit.analysis.gap`."""
        return ScoreGap(self.mean_clean_score, self.mean_corrupted_score, self.settings.get("metric", "prob"), True)

    def curve(self, kind: str, role: str) -> Float[Tensor, " layer"]:
        check_choice(kind, "kind", self.kinds)
        check_choice(role, "role", self.roles)
        return self.effects[self.kinds.index(kind), self.roles.index(role)]

    def peak(self, kind: str) -> dict:
        """The (role, layer) with the largest mean effect of one kind."""
        check_choice(kind, "kind", self.kinds)
        block = self.effects[self.kinds.index(kind)].nan_to_num(-math.inf)
        role, layer = divmod(block.argmax().item(), block.shape[1])
        return dict(kind=kind, role=self.roles[role], layer=layer, effect=block[role, layer].item())

    def __repr__(self) -> str:
        from interp_edit.reprs import number, short_repr

        peaks = []
        for kind in self.kinds:
            p = self.peak(kind)
            peaks.append(f"{kind} {p['role']} L{p['layer']} {number(p['effect'], 3)}")
        return short_repr("AIEResult", WARNING=self.gap.repr_note(),
                          n_facts=str(self.n_facts), skipped=str(self.n_skipped),
                          severed=self.settings.get("severed"),
                          clean=number(self.mean_clean_score), corrupted=number(self.mean_corrupted_score),
                          peaks="[" + "; ".join(peaks) + "]")

    def plot(self, view: str = "heatmap"):
        """``heatmap``: ROME's figure, token roles × layers per kind; ``lines``: one curve per role."""
        from interp_edit.viz.traces import aie_figure

        return aie_figure(self, view)

    def save(self, path: str | Path, view: str = "heatmap") -> tuple[Path, Path]:
        from interp_edit.viz.export import save_figure

        return save_figure(self.plot(view), path)


def _as_fact(fact, index: int = 0) -> tuple[str, str, str]:
    """(prompt, subject, target) from a CounterFactRecord, a dataset case (its rewrite: e.g.
    :func:`~interp_edit.data.load_dataset`'s), a dict or a 3-tuple; a malformed fact raises
    :class:`InvalidArgumentError` naming its index."""
    try:
        if hasattr(fact, "rewrite") and hasattr(fact.rewrite, "subject"):
            fact = fact.rewrite
        if hasattr(fact, "prompt") and hasattr(fact, "subject"):
            prompt, subject, target = fact.prompt, fact.subject, fact.target_true
        elif isinstance(fact, dict):
            rw = fact.get("requested_rewrite", fact)
            target = rw["target_true"]["str"] if isinstance(rw["target_true"], dict) else rw["target_true"]
            prompt, subject = rw["prompt"], rw["subject"]
        elif isinstance(fact, (tuple, list)) and len(fact) == 3:
            return tuple(fact)
        else:
            raise InvalidArgumentError(f"facts[{index}]: expected a CounterFact record, a dict or a (prompt, subject, "
                                       f"target) tuple, got {fact!r}")
        if not isinstance(prompt, str) or not isinstance(subject, str):
            raise InvalidArgumentError(f"facts[{index}]: prompt and subject must be strings, got {prompt!r}, {subject!r}")
        return prompt.format(subject), subject, target
    except (KeyError, TypeError, IndexError, ValueError) as err:
        if isinstance(err, InvalidArgumentError):
            raise
        raise InvalidArgumentError(f"facts[{index}]: malformed fact {fact!r}: {type(err).__name__} {err}") from None


def check_facts(model, facts: Sequence[tuple[str, str, str]]) -> None:
    """Every fact's prompt, subject and target are strings, the subject occurs in the prompt,
    and the prompt with its teacher-forced target fits the context; the error names the
    fact's index. Nothing is run."""
    if not facts:
        raise InvalidArgumentError("no facts given; nothing to average")
    for i, (prompt, subject, target) in enumerate(facts):
        try:
            tok = tokenize_with_subject(model.tokenizer, check_str(prompt, "prompt"), check_str(subject, "subject"))
            length = len(tok.tokens) + len(encode_target(model.tokenizer, target)) - 1
        except InterpEditError as err:
            raise type(err)(f"facts[{i}]: {err}") from None
        if length > model.cfg.n_ctx:
            raise PromptTooLongError(f"facts[{i}]: prompt {prompt!r} with its target is {length} tokens; "
                                     f"the model's context is {model.cfg.n_ctx}")


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
    max_rows: int | None = None,
    memory_budget: int | float | None = None,
    merge: str = "auto",
    kernels: str = "transformer_lens",
) -> AIEResult:
    """Trace every fact the model gets right (clean top-1 = first target token) and average
    the indirect effects by token role × layer. Facts are CounterFact records, CounterFact
    dicts or ``(prompt, subject, target)`` tuples. The noise scale is, as in ROME, 3 × the std
    of the embeddings of all the facts' subject tokens unless ``embedding_std`` is given.
    ``severed`` is :func:`causal_trace`'s (it needs ``"hidden"`` in ``kinds``). ``max_rows``
    and ``memory_budget`` bound each batched forward, ``merge`` chooses which
    restorations share one and ``kernels="fused"`` runs every forward with PyTorch's fused
    kernels, all as in :func:`causal_trace` (the effects do not depend on the first three; the
    fused kernels change them by float rounding only). Every fact's trace draws its noise from
    ``seed``, as the authors' code draws every trace's from ``RandomState(1)``: the facts' order
    does not change the result.

    >>> aie = average_indirect_effect(model, records[:3], samples=2, kinds=("mlp",), progress=False)
    >>> aie.kinds, aie.effects.shape
    (('mlp',), torch.Size([1, 6, 6]))
    >>> facts = [("Talvik Corlo was born in", "Talvik Corlo", "Karsa")]   # tuples work too
    >>> average_indirect_effect(model, facts, samples=2, progress=False).n_facts
    1
    """
    if metric == "logit_diff":  # (checked before the facts: no fact can satisfy it)
        raise InvalidArgumentError("metric 'logit_diff' needs a foil per fact, which the AIE does not take; "
                                   "use 'prob' or 'logprob', or causal_trace(..., foil=) per fact")
    facts = [_as_fact(f, i) for i, f in enumerate(check_sequence(facts, "facts", nonempty=False))]
    check_facts(model, facts)
    window = default_window(model.cfg.n_layers) if window is None else window
    # the trace settings are checked once, before any fact is traced
    TraceSettings(tuple(check_sequence(kinds, "kinds")), "gaussian", noise, samples, window, metric, severed, seed,
                  embedding_std, kernels=kernels).validate()
    if max_rows is not None:
        check_int(max_rows, "max_rows", minimum=1)
    resolve_merge(merge, model.cfg.device)
    budget = resolve_memory_budget(memory_budget, model.cfg.device)  # checked before any forward
    with fused_kernels(model, kernels == "fused"):  # entered once around every trace
        return _average(model, facts, kinds, noise, samples, window, metric, severed, seed, embedding_std, progress,
                        max_rows, budget, merge, kernels)


def _average(model, facts, kinds, noise, samples, window, metric, severed, seed, embedding_std, progress, max_rows,
             budget, merge, kernels) -> AIEResult:
    """:func:`average_indirect_effect`'s traces, its arguments checked."""
    std = embedding_std or subject_embedding_std(model, [s for _, s, _ in facts])
    predicted = last_token_logits(model, [p for p, _, _ in facts]).argmax(-1).tolist()
    per_fact, skipped, clean, corrupted = [], [], [], []
    for i, (prompt, subject, target) in enumerate(progress_bar(facts, desc="AIE", disable=not progress)):
        if predicted[i] != encode_target(model.tokenizer, target)[0]:
            skipped.append(dict(index=i, prompt=prompt, target=target, predicted=model.tokenizer.decode([predicted[i]])))
            continue
        trace = causal_trace(model, prompt, subject, target, kinds=kinds, noise=noise, samples=samples,
                             window=window, metric=metric, severed=severed, seed=seed,
                             embedding_std=std, max_rows=max_rows, memory_budget=budget, merge=merge)
        per_fact.append(effects_by_role(trace))
        clean.append(trace.clean_score)
        corrupted.append(trace.corrupted_score)
    if not per_fact:
        raise InvalidArgumentError(f"the model gets none of the {len(facts)} facts right; nothing to average")
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
                      embedding_std=std, kernels=kernels),
    )
