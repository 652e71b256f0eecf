"""Records the toolkit passes around (CounterFact-style edit cases, multi-hop questions) and the
one place prompts and targets are tokenised: :func:`tokenize_with_subject` (a prompt's tokens and
where its subject lies in them) and :func:`encode_target` (a target's tokens as the continuation
of a prompt). Editing requests are prepared from these in
:func:`interp_edit.editing.requests.prepare_requests`; analyses score targets with them.

Target strings are stored without their leading space, as in the public CounterFact and
MQuAKE files; code that scores a target as the continuation of a prompt prepends one space.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class CounterFactRecord:
    """One editing case in the CounterFact layout (Meng et al. 2022), plus the prompts about
    the same subject's other relations (to measure an edit's leakage into them).

    Every editor takes these as requests:

    >>> r = records[0]                      # counterfact_records(world)[0]
    >>> r.prompt.format(r.subject), r.target_true, r.target_new
    ('Talvik Corlo was born in', 'Karsa', 'Gemmel')
    >>> r.to_counterfact()["requested_rewrite"]["target_new"]
    {'str': 'Gemmel'}
    >>> e = rome(model, [r])
    """

    case_id: int
    prompt: str
    subject: str
    relation_id: str
    target_true: str
    target_new: str
    paraphrase_prompts: tuple[str, ...]
    neighborhood_prompts: tuple[str, ...]
    attribute_prompts: tuple[str, ...]
    #: (prompt, answer) pairs for the subject's other relations
    same_subject_prompts: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        if "{}" not in self.prompt:
            raise ValueError(f"case {self.case_id}: prompt {self.prompt!r} has no '{{}}' for the subject")

    def to_counterfact(self) -> dict:
        """The record as a dict in the public CounterFact JSON format (extra keys kept)."""
        return {
            "case_id": self.case_id,
            "requested_rewrite": {
                "prompt": self.prompt,
                "subject": self.subject,
                "relation_id": self.relation_id,
                "target_new": {"str": self.target_new},
                "target_true": {"str": self.target_true},
            },
            "paraphrase_prompts": list(self.paraphrase_prompts),
            "neighborhood_prompts": list(self.neighborhood_prompts),
            "attribute_prompts": list(self.attribute_prompts),
            "generation_prompts": [self.prompt.format(self.subject)],
            "same_subject_prompts": [list(p) for p in self.same_subject_prompts],
        }


@dataclass(frozen=True)
class MultiHopQuestion:
    """A multi-hop question in the MQuAKE spirit: several phrasings of one chained query.

    >>> from interp_edit.toyworld import multihop_questions
    >>> q = multihop_questions(world)[0]
    >>> q.subject, len(q.chain) == len(q.hops) + 1, q.answer == q.chain[-1]
    ('Talvik Corlo', True, True)
    >>> sorted(q.to_mquake())[:3]
    ['answer', 'answer_alias', 'case_id']
    """

    case_id: int
    subject: str
    hops: tuple[str, ...]
    #: the entities along the chain, subject first, answer last
    chain: tuple[str, ...]
    questions: tuple[str, ...]
    answer: str
    #: whether this composition (subject and chain) was stated in the training data
    trained: bool

    def to_mquake(self) -> dict:
        triples = [[self.chain[i], self.hops[i], self.chain[i + 1]] for i in range(len(self.hops))]
        out = asdict(self)
        out.update(questions=list(self.questions), orig={"triples": triples}, answer_alias=[])
        return out


@dataclass(frozen=True)
class TokenizedPrompt:
    """A prompt's token ids (BOS first) and the token span of its subject."""

    prompt: str
    tokens: tuple[int, ...]
    str_tokens: tuple[str, ...]
    subject: str
    #: token indices [start, end) of the subject in ``tokens``
    subject_span: tuple[int, int]


def tokenize_with_subject(tokenizer, prompt: str, subject: str, occurrence: int = 0) -> TokenizedPrompt:
    """Tokenise ``prompt`` (BOS prepended) and locate ``subject``'s tokens.

    The subject is found by characters (its ``occurrence``-th appearance, 0 = first) and
    mapped to the tokens that overlap it, so it works whether or not the tokenizer folds the
    preceding space into the subject's first token.
    """
    from interp_edit.errors import EmptyInputError, SubjectNotFoundError
    from interp_edit.validation import check_int, check_str

    check_str(prompt, "prompt", nonempty=False)
    check_str(subject, "subject", nonempty=False)
    check_int(occurrence, "subject occurrence")
    if not prompt or not prompt.strip():
        raise EmptyInputError(f"empty prompt {prompt!r}")
    if not subject or not subject.strip():
        raise EmptyInputError(f"empty subject {subject!r} for prompt {prompt!r}")
    enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    tokens = (tokenizer.bos_token_id, *ids) if tokenizer.bos_token_id is not None else tuple(ids)
    shift = len(tokens) - len(ids)
    str_tokens = tuple(tokenizer.decode([t]) for t in tokens)
    starts = [i for i in range(len(prompt)) if prompt.startswith(subject, i)]
    if occurrence >= len(starts) or occurrence < 0:
        found = f"it occurs {len(starts)} time(s)" if starts else "it does not occur"
        raise SubjectNotFoundError(
            f"subject {subject!r} (occurrence {occurrence}) not found in prompt {prompt!r}: {found}; "
            f"the prompt tokenises as {list(str_tokens)}"
        )
    lo, hi = starts[occurrence], starts[occurrence] + len(subject)
    inside = [i for i, (a, b) in enumerate(offsets) if a < hi and b > lo]
    return TokenizedPrompt(prompt, tokens, str_tokens, subject, (inside[0] + shift, inside[-1] + 1 + shift))


def template_problem(prompt: str) -> str | None:
    """What makes ``prompt`` no template of one subject slot, or None: it must hold exactly one
    ``'{}'`` and no other brace (a stray field such as ``'{city}'`` would fail at ``format``).
    The one rule of the dataset loaders and the edit requests.

    >>> template_problem("{} was born in"), template_problem("{} lives in {city}")[:25]
    (None, "has a brace besides the o")
    """
    if prompt.count("{}") != 1:
        return "must contain exactly one '{}' where the subject goes"
    stray = prompt.replace("{}", "", 1)
    if "{" in stray or "}" in stray:
        return "has a brace besides the one '{}' slot (a stray template field such as '{city}'?)"
    return None


#: the text a target is encoded after when the caller gives no prompt: one plain word
NEUTRAL_CONTEXT = "The"


def encode_target(tokenizer, target: str, prompt: str | None = None) -> tuple[int, ...]:
    """The token ids of ``target`` as the continuation of ``prompt`` (default
    :data:`NEUTRAL_CONTEXT`): the tokens of ``prompt + " " + target`` after those of ``prompt``.

    Encoding ``" " + target`` on its own is right for byte-level BPE (GPT-2, Qwen) but not for
    SentencePiece / Metaspace tokenizers (Llama, Mistral, Gemma), which turn the leading space
    into a bare ``"▁"`` token (``["▁", "▁Paris"]``) that never follows a prompt. Raises
    :class:`~interp_edit.errors.TokenizationError` when the prompt's tokens are not a prefix of
    the whole text's (a merge across the boundary), naming both."""
    from interp_edit.errors import EmptyInputError, InvalidArgumentError, TokenizationError

    if not isinstance(target, str):
        raise InvalidArgumentError(f"target must be a string, got {target!r} ({type(target).__name__})")
    if not target or not target.strip():
        raise EmptyInputError(f"empty target {target!r}")
    context = NEUTRAL_CONTEXT if prompt is None else prompt
    text = target if target.startswith(" ") else " " + target
    before = list(tokenizer.encode(context, add_special_tokens=False))
    whole = list(tokenizer.encode(context + text, add_special_tokens=False))
    if whole[: len(before)] != before or len(whole) == len(before):
        raise TokenizationError(
            f"target {target!r} does not tokenise as a continuation of {context!r}: "
            f"{context!r} -> {before}, {context + text!r} -> {whole}"
        )
    return tuple(whole[len(before):])
