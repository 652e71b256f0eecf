"""Average indirect effect (AIE) per layer at one chosen token of each prompt, from hidden-state
causal traces with and without the MLPs severed (ROME's Fig. 3 contrast). MEMIT-CSK chooses its
layer window from such a curve at its edit token (methods.md A6), which may be a verb or object
token, not one of the ROME roles of :mod:`interp_edit.analysis.aie`.

For every fact the model gets right (clean top-1 = first target token) two traces run with the
same noise draws: ``hidden`` restores the residual ``h^l`` at the chosen position; ``severed``
does the same while the MLP outputs of all later layers at that position stay at their
corrupted values. Their difference, ``mlp_mediated = hidden − severed``, is the part of the
effect that needs the later MLPs.

Every fact's traces draw their noise from the call's ``seed``, as the authors' code draws every
trace's from ``RandomState(1)`` (and as :func:`~interp_edit.analysis.aie.average_indirect_effect`
does): a fact is corrupted the same way wherever it stands in the list, so the result does not
depend on the facts' order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from interp_edit.adapter import fused_kernels
from interp_edit.analysis.gap import ScoreGap
from interp_edit.analysis.restore import resolve_merge
from interp_edit.analysis.scoring import encode_target
from interp_edit.analysis.tracing import TraceSettings, causal_trace, subject_embedding_std
from interp_edit.batching import last_token_logits, resolve_memory_budget
from interp_edit.errors import InterpEditError, InvalidArgumentError
from interp_edit.prompts import tokenize_with_subject
from interp_edit.validation import check_int, check_str

CURVES = ("mlp_mediated", "severed", "hidden")


@dataclass(frozen=True)
class TokenFact:
    """A prompt, its subject (the corrupted span), the answer to score (``None``: the clean
    top-1) and the token position whose per-layer effect is wanted."""

    prompt: str
    subject: str
    target: str | None
    position: int


@dataclass
class EditTokenAIE:
    """Per-layer mean indirect effects at the chosen positions, over ``n_facts`` traced facts.

    ``hidden`` / ``severed``: [layer] mean effects of restoring the residual (with the later
    MLPs severed for ``severed``); ``mlp_mediated`` = ``hidden − severed``; ``skipped``: the
    facts left out, with the reason.

    >>> from interp_edit.analysis.edit_token_aie import TokenFact
    >>> res = edit_token_aie(model, [TokenFact("Talvik Corlo was born in", "Talvik Corlo", "Karsa", 4)], samples=2)
    >>> res.hidden.shape, res.n_facts
    (torch.Size([6]), 1)
    >>> fig = res.plot(window=(1, 2))
    """

    hidden: Float[Tensor, " layer"]
    severed: Float[Tensor, " layer"]
    n_facts: int
    skipped: list[dict] = field(default_factory=list)
    mean_clean_score: float = 0.0
    mean_corrupted_score: float = 0.0
    settings: dict = field(default_factory=dict)

    @property
    def gap(self) -> ScoreGap:
        """The mean clean − corrupted gap (probabilities) of the traced facts and whether it is
        worth localising (see :mod:`~interp_edit.analysis.gap`); its warnings show in the repr
        and the figure title, as :class:`~interp_edit.analysis.aie.AIEResult`'s do."""
        return ScoreGap(self.mean_clean_score, self.mean_corrupted_score, "prob", True)

    @property
    def mlp_mediated(self) -> Float[Tensor, " layer"]:
        return self.hidden - self.severed

    def curve(self, name: str = "mlp_mediated") -> Float[Tensor, " layer"]:
        """One of :data:`CURVES`."""
        if name not in CURVES:
            raise InvalidArgumentError(f"unknown AIE curve {name!r}; choose from {CURVES}")
        return getattr(self, name)

    def __repr__(self) -> str:
        from interp_edit.reprs import number, short_repr

        curve = self.mlp_mediated
        peak = int(curve.nan_to_num(-float("inf")).argmax()) if curve.numel() else None
        return short_repr("EditTokenAIE", WARNING=self.gap.repr_note(), n_facts=str(self.n_facts), skipped=str(len(self.skipped)),
                          clean=number(self.mean_clean_score), corrupted=number(self.mean_corrupted_score),
                          mlp_mediated_peak=f"L{peak} {number(curve[peak].item(), 3)}" if peak is not None else None)

    def plot(self, window: Sequence[int] = ()):
        """A Plotly figure of the three curves per layer; ``window`` (layers) is shaded, e.g. the
        window MEMIT-CSK chose.

        >>> from interp_edit.analysis.edit_token_aie import TokenFact
        >>> fig = edit_token_aie(model, [TokenFact("Talvik Corlo was born in", "Talvik Corlo", "Karsa", 1)], samples=2).plot()
        """
        from interp_edit.viz.edit_token_aie import edit_token_aie_figure

        return edit_token_aie_figure(self, window)

    def save(self, path: str | Path, window: Sequence[int] = ()) -> tuple[Path, Path]:
        from interp_edit.viz.export import save_figure

        return save_figure(self.plot(window), path)

    @classmethod
    def from_dict(cls, data: dict) -> EditTokenAIE:
        """The inverse of :meth:`as_dict` (e.g. from ``edit.info["aie"]``)."""
        return cls(torch.tensor(data["hidden"]), torch.tensor(data["severed"]), data["n_facts"], list(data["skipped"]),
                   data["mean_clean_score"], data["mean_corrupted_score"], dict(data["settings"]))

    def as_dict(self) -> dict:
        return {"hidden": self.hidden.tolist(), "severed": self.severed.tolist(),
                "mlp_mediated": self.mlp_mediated.tolist(), "n_facts": self.n_facts, "skipped": self.skipped,
                "mean_clean_score": self.mean_clean_score, "mean_corrupted_score": self.mean_corrupted_score,
                "settings": self.settings}


def check_token_facts(model, facts: Sequence[TokenFact]) -> list[int]:
    """Every fact is a :class:`TokenFact` of strings whose subject occurs in its prompt and whose
    ``position`` is one of the prompt's tokens at or after the subject's first token (the
    corruption of the subject cannot reach a position before it); the error names the fact's
    index. Nothing is run. Returns each prompt's token count."""
    if isinstance(facts, (str, TokenFact)) or not isinstance(facts, Sequence) or not facts:
        raise InvalidArgumentError(f"facts must be a non-empty list of TokenFact, got {facts!r}")
    lengths = []
    for i, fact in enumerate(facts):
        if not isinstance(fact, TokenFact):
            raise InvalidArgumentError(f"facts[{i}]: expected a TokenFact, got {type(fact).__name__}")
        try:
            check_str(fact.target, "target", optional=True)
            tok = tokenize_with_subject(model.tokenizer, check_str(fact.prompt, "prompt"),
                                        check_str(fact.subject, "subject"))
            check_int(fact.position, "position", minimum=0)
        except InterpEditError as err:
            raise type(err)(f"facts[{i}]: {err}") from None
        n, start = len(tok.tokens), tok.subject_span[0]
        if fact.position >= n:
            raise InvalidArgumentError(f"facts[{i}]: position {fact.position} is past the prompt's last token "
                                       f"({n} tokens: {fact.prompt!r})")
        if fact.position < start:
            raise InvalidArgumentError(f"facts[{i}]: position {fact.position} is before the subject {fact.subject!r} "
                                       f"(its first token is at {start}): the corruption cannot reach it; choose a "
                                       "position at or after the subject's first token")
        lengths.append(n)
    return lengths


@torch.no_grad()
def edit_token_aie(model, facts: Sequence[TokenFact], *, noise: float = 3.0, samples: int = 10, seed: int = 0,
                   embedding_std: float | None = None, max_rows: int | None = None,
                   memory_budget: int | float | None = None, merge: str = "auto",
                   kernels: str = "transformer_lens") -> EditTokenAIE:
    """AIE per layer at each fact's ``position`` (see the module docstring). Facts the model gets
    wrong are skipped and listed; a position before the subject (the corruption cannot reach
    it) is refused (:func:`check_token_facts`). Every fact's noise comes from ``seed`` (the
    module docstring), so the facts' order does not matter. The
    noise scale is 3 × the std of the embeddings of all the facts' subject tokens unless
    ``embedding_std`` is given (as in ROME). ``max_rows``, ``memory_budget``, ``merge`` and
    ``kernels`` are :func:`causal_trace`'s. Every fact and setting is checked before any forward.

    >>> from interp_edit.analysis.edit_token_aie import TokenFact
    >>> facts = [TokenFact("Talvik Corlo was born in", "Talvik Corlo", "Karsa", position=4),  # "born"
    ...          TokenFact("Mermi Corgun was born in", "Mermi Corgun", None, position=4)]
    >>> res = edit_token_aie(model, facts, samples=2)
    >>> res.n_facts + len(res.skipped), res.curve("mlp_mediated").shape
    (2, torch.Size([6]))
    """
    check_token_facts(model, facts)
    TraceSettings(("hidden",), "gaussian", noise, samples, 1, "prob", None, seed, embedding_std,
                  kernels=kernels).validate()
    if max_rows is not None:
        check_int(max_rows, "max_rows", minimum=1)
    resolve_merge(merge, model.cfg.device)
    budget = resolve_memory_budget(memory_budget, model.cfg.device)
    with fused_kernels(model, kernels == "fused"):  # entered once around every trace
        return _average(model, facts, noise, samples, seed, embedding_std, max_rows, budget, merge, kernels)


def _average(model, facts, noise, samples, seed, embedding_std, max_rows, budget, merge, kernels) -> EditTokenAIE:
    """:func:`edit_token_aie`'s traces, its arguments checked."""
    std = embedding_std or subject_embedding_std(model, [f.subject for f in facts])
    predicted = last_token_logits(model, [f.prompt for f in facts]).argmax(-1).tolist()
    hidden, severed, skipped, clean, corrupted = [], [], [], [], []
    for i, fact in enumerate(facts):
        if fact.target is not None and predicted[i] != encode_target(model.tokenizer, fact.target)[0]:
            skipped.append(dict(index=i, prompt=fact.prompt, reason="the model does not predict the target"))
            continue
        traces = [causal_trace(model, fact.prompt, fact.subject, fact.target, kinds=("hidden",), noise=noise,
                               samples=samples, severed=cut, seed=seed, embedding_std=std,
                               max_rows=max_rows, memory_budget=budget, merge=merge)
                  for cut in (None, "mlp")]
        hidden.append(traces[0].indirect_effects[0, :, fact.position])
        severed.append(traces[1].indirect_effects[0, :, fact.position])
        clean.append(traces[0].clean_score)
        corrupted.append(traces[0].corrupted_score)
    if not hidden:
        raise InvalidArgumentError(f"none of the {len(facts)} facts could be traced: {skipped[:3]}")
    return EditTokenAIE(torch.stack(hidden).mean(0), torch.stack(severed).mean(0), len(hidden), skipped,
                        sum(clean) / len(clean), sum(corrupted) / len(corrupted),
                        dict(noise=noise, samples=samples, seed=seed, embedding_std=std, kernels=kernels))
