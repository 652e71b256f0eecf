"""The evaluation cases every loader produces, one dataclass per format, and ``Dataset``.

Targets are stored without their leading space (as in the public files); metrics score a
target as the continuation of its prompt with one space prepended. Every case can say which
fact(s) it rewrites (:meth:`rewrites`) as plain :class:`Rewrite` objects, which the editing
layer accepts as requests — this package never imports the editing layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

FORMATS = ("counterfact", "zsre", "mquake", "mcq")
MCQ_KINDS = ("reliability", "generalisation", "locality", "portability")


@dataclass(frozen=True)
class Rewrite:
    """One requested rewrite: ``prompt.format(subject)`` should continue with ``target_new``
    instead of ``target_true``."""

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None

    @property
    def text(self) -> str:
        return self.prompt.format(self.subject)

    def as_dict(self) -> dict:
        """The fields the editing layer's ``as_request`` reads."""
        return {"prompt": self.prompt, "subject": self.subject, "target_new": self.target_new,
                "target_true": self.target_true}


@dataclass(frozen=True)
class MultiHopProbe:
    """Phrasings of one multi-hop question whose answer an edit changes: before the edit the
    answer is ``answer``, after it ``new_answer`` (aliases count too)."""

    questions: tuple[str, ...]
    answer: str
    new_answer: str
    answer_aliases: tuple[str, ...] = ()
    new_answer_aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class CounterFactCase:
    """A CounterFact record (Meng et al. 2022). ``multihop`` (optional, an extension) holds
    multi-hop questions whose answer the rewrite changes."""

    case_id: str
    rewrite: Rewrite
    paraphrase_prompts: tuple[str, ...]
    neighborhood_prompts: tuple[str, ...]
    generation_prompts: tuple[str, ...] = ()
    attribute_prompts: tuple[str, ...] = ()
    multihop: MultiHopProbe | None = None

    def rewrites(self) -> tuple[Rewrite, ...]:
        return (self.rewrite,)


#: zsRE's new target: ``"alt"`` (EasyEdit: the file's ``alt`` replaces ``answers[0]``) or
#: ``"answer"`` (ROME / MEMIT / AlphaEdit ``dsets/zsre.py``: ``answers[0]`` is written, nothing named as replaced)
ZSRE_TARGETS = ("alt", "answer")


@dataclass(frozen=True)
class ZsRECase:
    """A zsRE question (MEND split): ``src`` asked about ``subject``, rewritten to
    ``target_new``; ``rephrase`` is a paraphrase; ``loc`` / ``loc_ans`` an unrelated question
    and its answer (specificity). Which answer is the new one is the loader's ``zsre_target``
    (:data:`ZSRE_TARGETS`): the file's ``alt`` with ``answers[0]`` as the one replaced
    (EasyEdit), or ``answers[0]`` itself with none replaced (ROME / MEMIT / AlphaEdit)."""

    case_id: str
    subject: str
    src: str
    rephrase: str
    target_new: str
    answers: tuple[str, ...]
    loc: str
    loc_ans: str
    #: the answer the edit replaces (``None``: none named, as in ROME's zsRE requests)
    target_true: str | None = None

    @property
    def rewrite(self) -> Rewrite:
        return Rewrite(self.src.replace(self.subject, "{}", 1), self.subject, self.target_new, self.target_true)

    def rewrites(self) -> tuple[Rewrite, ...]:
        return (self.rewrite,)


@dataclass(frozen=True)
class MQuAKECase:
    """A MQuAKE case: one or more rewrites and a multi-hop question (several phrasings) whose
    answer changes from ``answer`` to ``new_answer`` once all rewrites hold."""

    case_id: str
    requested_rewrite: tuple[Rewrite, ...]
    probe: MultiHopProbe

    @property
    def rewrite(self) -> Rewrite:
        return self.requested_rewrite[0]

    def rewrites(self) -> tuple[Rewrite, ...]:
        return self.requested_rewrite


@dataclass(frozen=True)
class MCQQuestion:
    """A multiple-choice question: ``prompt`` is the full text after which the model's next
    token is the choice; ``labels`` are the strings whose next-token logits are compared
    (``" A"`` … ``" E"`` in the CaseEdit layout, or the options themselves for a cloze);
    ``answer`` is the index of the right option *after* the edit (for ``locality``: the
    unchanged answer)."""

    kind: str
    prompt: str
    options: tuple[str, ...]
    labels: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class MCQCase:
    """One edit and its four multiple-choice questions (reliability, generalisation, locality,
    portability), in the spirit of CaseEdit."""

    case_id: str
    rewrite: Rewrite
    questions: tuple[MCQQuestion, ...]

    def rewrites(self) -> tuple[Rewrite, ...]:
        return (self.rewrite,)


Case = CounterFactCase | ZsRECase | MQuAKECase | MCQCase


@dataclass
class Dataset:
    """Validated cases of one format. ``skipped`` lists the error messages of records left out
    with ``strict=False``.

    >>> ds = load_dataset("toyworld-counterfact")
    >>> ds.format, len(ds) > 1000, type(ds[0]).__name__
    ('counterfact', True, 'CounterFactCase')
    >>> ds[0].rewrites()[0].text               # what an editor is asked to change
    'Talvik Corlo was born in'
    >>> e = rome(model, [ds[0].rewrites()[0].as_dict()])     # editors take dicts
    """

    name: str
    format: str
    cases: tuple
    source: str = ""
    skipped: list[str] = field(default_factory=list)
    #: the toy world a built-in dataset was built from (a ``WorldSpec``; ``None`` for files)
    world: object | None = None
    #: a zsRE dataset's new target (one of :data:`ZSRE_TARGETS`; ``None`` for other formats)
    zsre_target: str | None = None
    #: where each case's record is in the source, as error messages name it (``"record 3"``,
    #: ``"record 3 (line 5)"`` in a JSONL file), one per case; empty: the case's position
    places: tuple[str, ...] = ()

    def place(self, index: int) -> str:
        """Where case ``index`` came from in the source (see :attr:`places`)."""
        return self.places[index] if len(self.places) == len(self.cases) else f"record {index}"

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Iterator:
        return iter(self.cases)

    def __getitem__(self, index):
        return self.cases[index]

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def __repr__(self) -> str:
        convention = f", zsre_target={self.zsre_target!r}" if self.zsre_target == "answer" else ""
        return f"Dataset(name={self.name!r}, format={self.format!r}, cases={len(self.cases)}, skipped={self.n_skipped}{convention})"


def case_to_dict(case) -> dict:
    """A case as plain JSON-able data (for results files)."""
    return asdict(case)
