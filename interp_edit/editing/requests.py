"""Edit requests: what to change ("{} was born in", subject, new target), validated and
tokenised with the subject's token span.

A request's prompt holds ``{}`` where the subject goes. Targets are stored without their
leading space (as in CounterFact); they are scored as the continuation of the prompt with one
space prepended, and a target of several tokens is teacher-forced everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from interp_edit.errors import EditConfigError, EditRequestError, InterpEditError
from interp_edit.prompts import CounterFactRecord, encode_target, template_problem, tokenize_with_subject


@dataclass(frozen=True)
class EditRequest:
    """Rewrite the fact ``prompt.format(subject) -> target_true`` to ``-> target_new``.

    ``target_true`` is optional (the editors do not need it; the quick metrics do).
    ``paraphrases`` are optional extra prompts (full strings) some editors use as sources.
    ``verb`` and ``object`` are optional spans of the filled prompt (e.g. ``"was born in"``)
    for editors that edit at another token than the subject's (MEMIT-CSK's ``edit_token``).

    >>> req = EditRequest("{} was born in", "Talvik Corlo", "Gemmel", target_true="Karsa")
    >>> req.text
    'Talvik Corlo was born in'
    >>> e = edit(model, [req], "rome")          # the model is unchanged until e.apply(model)
    >>> e.requests[0]["target_new"]
    'Gemmel'
    """

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    paraphrases: tuple[str, ...] = ()
    verb: str | None = None
    object: str | None = None

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.format(self.subject)

    def as_dict(self) -> dict:
        return {"prompt": self.prompt, "subject": self.subject, "target_new": self.target_new,
                "target_true": self.target_true, "paraphrases": list(self.paraphrases),
                "verb": self.verb, "object": self.object}


#: where an editor writes: a span of the request (subject / verb / object) and which of its
#: tokens, or the prompt's last token
EDIT_TOKENS = ("subject_last", "subject_first", "verb_last", "verb_first", "object_last", "object_first", "prompt_last")


def subject_token_name(offset: int) -> str:
    """The edit token of the subject's ``offset``-th token (0 = its first): ``"subject_<offset>"``
    (what ``edit_token="traced"`` resolves to per request)."""
    return f"subject_{offset}"


def subject_offset(edit_token: str) -> int | None:
    """The offset within the subject that a ``"subject_<k>"`` edit token names, else ``None``."""
    head, _, tail = edit_token.partition("_")
    return int(tail) if head == "subject" and tail.isdigit() else None


def is_edit_token(edit_token: str) -> bool:
    """One of :data:`EDIT_TOKENS` or a ``"subject_<k>"`` offset token."""
    return edit_token in EDIT_TOKENS or subject_offset(edit_token) is not None


def _subject_position(span: tuple[int, int], edit_token: str, index: int, subject: str) -> int:
    """The position of a subject edit token (first / last / ``subject_<k>``) in a subject span."""
    offset = subject_offset(edit_token)
    if offset is None:
        return span[0] if edit_token.endswith("_first") else span[1] - 1
    if offset >= span[1] - span[0]:
        raise EditRequestError(f"request {index}: edit token {edit_token!r}: the subject {subject!r} has only "
                               f"{span[1] - span[0]} tokens")
    return span[0] + offset


@dataclass(frozen=True)
class TokenizedRequest:
    """A request tokenised for one model: the filled prompt's ids (BOS first), the subject's
    token span, and the new target's ids (with its leading space)."""

    index: int
    request: EditRequest
    prompt_ids: tuple[int, ...]
    subject_span: tuple[int, int]
    target_ids: tuple[int, ...]
    #: the fingerprint of the model it was tokenised for
    model_fingerprint: str
    #: one of :data:`EDIT_TOKENS`: the token keys are read at and targets are written to
    edit_token: str = "subject_last"
    #: the token position of ``edit_token`` in ``prompt_ids``
    edit_position: int = -1

    def __post_init__(self) -> None:
        if self.edit_position < 0:
            object.__setattr__(self, "edit_position", self.subject_span[1] - 1)

    @property
    def subject_last(self) -> int:
        return self.subject_span[1] - 1


#: the keys of a flat request dict (one without ``requested_rewrite``): this class's fields,
#: EasyEdit's names for two of them, and fields of the evaluation records that ``edit()`` does
#: not read; any other key is refused (:func:`as_request`) rather than silently dropped
REQUEST_KEYS = ("prompt", "subject", "target_new", "target_true", "paraphrases", "verb", "object")
#: EasyEdit's per-request keys (``BaseEditor.edit``, the KnowEdit files of ``examples/KnowEdit.md``):
#: ``ground_truth`` is ``target_true`` (KnowEdit's ZsRE gives a list: its first answer is taken),
#: ``rephrase_prompt`` (a str or a list) the ``paraphrases``; the locality / portability inputs,
#: ``cond`` (the in-context editors' "old >> new || prompt" line) and ``KnowEditDataset``'s
#: ``portability_*`` / ``locality_*`` lists are evaluation inputs, accepted and not read by the editors
EASYEDIT_KEYS = ("ground_truth", "rephrase_prompt", "locality", "locality_prompt", "locality_ground_truth",
                 "loc_prompt", "portability", "portability_prompt", "portability_ground_truth", "cond",
                 "portability_r", "portability_s", "portability_l", "locality_rs", "locality_f")
#: fields of a :class:`CounterFactRecord` (flattened) other than the request's own:
#: ``paraphrase_prompts`` are read as the paraphrases, the others are evaluation data
RECORD_KEYS = ("case_id", "relation_id", "paraphrase_prompts", "neighborhood_prompts", "attribute_prompts",
               "generation_prompts", "same_subject_prompts")
_FLAT_KEYS = REQUEST_KEYS + EASYEDIT_KEYS + RECORD_KEYS


def _flat_request(item: dict, index: int) -> dict:
    """A flat request dict's fields under this class's names: EasyEdit's ``ground_truth`` and
    ``rephrase_prompt`` (and CounterFact's ``paraphrase_prompts``) renamed, a key no format
    knows refused, and an EasyEdit prompt written out in full (no ``{}``) turned into a
    template at the subject's first occurrence."""
    unknown = [key for key in item if key not in _FLAT_KEYS]
    if unknown:
        raise EditRequestError(
            f"request {index}: unknown key {unknown[0]!r}{f' (and {unknown[1:]})' if unknown[1:] else ''}; a request dict "
            f"takes {list(REQUEST_KEYS)}, EasyEdit's {list(EASYEDIT_KEYS)} (ground_truth is target_true, rephrase_prompt "
            f"the paraphrases), CounterFact record fields {list(RECORD_KEYS)}, or a public CounterFact record "
            "(with 'requested_rewrite')"
        )
    data = {key: item[key] for key in REQUEST_KEYS if key in item}
    item = dict(item)
    if item.get("ground_truth") is not None:
        item["ground_truth"] = _first_answer(item["ground_truth"], index)
    for key in ("rephrase_prompt", "paraphrase_prompts"):
        value = item.get(key)
        if value is not None and not (isinstance(value, str) and value.strip() or isinstance(value, (list, tuple))
                                      and all(isinstance(p, str) and p.strip() for p in value)):
            raise EditRequestError(f"request {index}: field {key!r} must be a non-empty string or a list of non-empty "
                                   f"strings, got {value!r}")

    def same(value):  # lists and tuples alike; EasyEdit's rephrase_prompt may be one str
        return (value,) if isinstance(value, str) else tuple(value) if isinstance(value, (list, tuple)) else value

    for ours, theirs in (("target_true", "ground_truth"), ("paraphrases", "rephrase_prompt"),
                         ("paraphrases", "paraphrase_prompts")):
        if item.get(theirs) is None:
            continue
        value = same(item[theirs]) if theirs == "rephrase_prompt" else item[theirs]
        if data.get(ours) is not None and same(data[ours]) != same(value):
            raise EditRequestError(f"request {index}: fields {ours!r} and {theirs!r} (the same field under two "
                                   f"names) differ: {data[ours]!r} vs {item[theirs]!r}; give one of them")
        data[ours] = value
    prompt, subject = data.get("prompt"), data.get("subject")
    if (any(key in item for key in EASYEDIT_KEYS) and isinstance(prompt, str) and isinstance(subject, str)
            and subject and "{}" not in prompt and subject in prompt):
        data["prompt"] = prompt.replace(subject, "{}", 1)  # EasyEdit's prompts hold the subject itself
    return data


def _first_answer(value, index: int) -> str:
    """EasyEdit's ``ground_truth``: a string, or (KnowEdit's ZsRE) a list of answers whose first
    is the one replaced, as EasyEdit reads it; anything else is an error naming ``ground_truth``."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        if not value:
            raise EditRequestError(f"request {index}: field 'ground_truth' is an empty list; give the answer the edit "
                                   "replaces (a string, or a list whose first item is it)")
        if not isinstance(value[0], str) or not value[0].strip():
            raise EditRequestError(f"request {index}: field 'ground_truth[0]' must be a non-empty string, got {value[0]!r}")
        return value[0]
    raise EditRequestError(f"request {index}: field 'ground_truth' must be a string or a list of strings, got "
                           f"{value!r} ({type(value).__name__})")


def as_request(item, index: int = 0) -> EditRequest:
    """An :class:`EditRequest` from an EditRequest, a :class:`CounterFactRecord`, or a dict:
    either this class's fields (EasyEdit's ``ground_truth`` / ``rephrase_prompt`` read as
    ``target_true`` / ``paraphrases``; a key of no format refused, see :data:`REQUEST_KEYS`) or
    a public CounterFact record with ``requested_rewrite``; or any object with an ``as_dict()``
    giving such a dict, e.g. a data set case's :class:`~interp_edit.data.cases.Rewrite`
    (``case.rewrites()``). A MQuAKE record (several rewrites) is refused: edit its rewrites."""
    if isinstance(item, EditRequest):
        return item
    if isinstance(item, TokenizedRequest):
        return item.request
    if isinstance(item, CounterFactRecord):
        return EditRequest(item.prompt, item.subject, item.target_new, item.target_true,
                           tuple(item.paraphrase_prompts))
    if not isinstance(item, dict) and callable(getattr(item, "as_dict", None)) and not isinstance(item, type):
        # a Rewrite of the data layer (which never imports this one) reads as its dict
        as_dict = item.as_dict()
        if not isinstance(as_dict, dict):
            raise EditRequestError(f"request {index}: {type(item).__name__}.as_dict() gave a {type(as_dict).__name__}, not a dict")
        item = as_dict
    if isinstance(item, dict):
        data = item.get("requested_rewrite", None)
        if isinstance(data, (list, tuple)):
            raise EditRequestError(
                f"request {index}: field 'requested_rewrite' is a list of {len(data)} rewrites (a MQuAKE case); a "
                "request is one rewrite: load the file with interp_edit.data.load_dataset(...) and pass each case's "
                "rewrites, [r for case in dataset for r in case.rewrites()]")
        if data is not None and not isinstance(data, dict):
            raise EditRequestError(f"request {index}: field 'requested_rewrite' must be an object with prompt, subject "
                                   f"and target_new, got {type(data).__name__} {data!r:.80}")
        if data is None:
            data = _flat_request(item, index)
            paraphrases = data.get("paraphrases")
        else:
            paraphrases = item.get("paraphrase_prompts", data.get("paraphrases"))
        try:
            def text(value):
                return value["str"] if isinstance(value, dict) else value

            if isinstance(paraphrases, (str, bytes)):
                raise EditRequestError(f"request {index}: field 'paraphrases' must be a list of non-empty strings, "
                                       f"got {paraphrases!r}")
            return EditRequest(data["prompt"], data["subject"], text(data["target_new"]),
                               text(data["target_true"]) if data.get("target_true") is not None else None,
                               tuple(paraphrases or ()), data.get("verb"), data.get("object"))
        except KeyError as err:
            raise EditRequestError(f"request {index}: missing field {err.args[0]!r} in {item!r}") from None
    raise EditRequestError(f"request {index}: expected an EditRequest, a CounterFactRecord, a data set Rewrite "
                           f"(case.rewrites()) or a dict, got {type(item).__name__}")


def validate_request(request: EditRequest, index: int) -> None:
    """Raise :class:`EditRequestError` naming the request index and the field at fault."""
    for field in ("prompt", "subject", "target_new"):
        value = getattr(request, field)
        if not isinstance(value, str) or not value.strip():
            raise EditRequestError(f"request {index}: field {field!r} is empty or not a string: {value!r}")
    if "{}" not in request.prompt and request.subject not in request.prompt:
        raise EditRequestError(
            f"request {index}: field 'subject': {request.subject!r} is not in the prompt {request.prompt!r}, "
            "which has no '{}' for it either"
        )
    problem = template_problem(request.prompt)
    if problem:
        raise EditRequestError(f"request {index}: field 'prompt' {problem}: {request.prompt!r}")
    if request.target_true is not None and not isinstance(request.target_true, str):
        raise EditRequestError(f"request {index}: field 'target_true' is not a string: {request.target_true!r}")
    if isinstance(request.paraphrases, (str, bytes)) or not all(isinstance(p, str) and p.strip() for p in request.paraphrases):
        raise EditRequestError(f"request {index}: field 'paraphrases' must be a list of non-empty strings, got {request.paraphrases!r}")
    for field in ("verb", "object"):
        span = getattr(request, field)
        if span is not None and (not isinstance(span, str) or not span.strip() or span not in request.text):
            raise EditRequestError(f"request {index}: field {field!r}: span {span!r} does not occur in the prompt {request.text!r}")
    if request.target_true is not None and request.target_new.strip() == request.target_true.strip():
        raise EditRequestError(
            f"request {index}: field 'target_new' equals target_true ({request.target_new!r}): nothing to edit"
        )


def edit_span_text(request: EditRequest, edit_token: str, index: int = 0) -> str | None:
    """The text of the span ``edit_token`` names (``None`` for ``prompt_last``); a span the
    request does not give raises :class:`EditRequestError` naming it."""
    if not is_edit_token(edit_token):
        raise EditRequestError(f"unknown edit token {edit_token!r}; known: {list(EDIT_TOKENS)} or 'subject_<k>'")
    kind = edit_token.split("_", 1)[0]
    if kind == "prompt":
        return None
    span = getattr(request, kind)
    if span is None:
        raise EditRequestError(f"request {index}: edit token {edit_token!r} needs the request's field {kind!r} (the span), which is not given")
    return span


def edit_position_of(tokenizer, text: str, request: EditRequest, edit_token: str, before: str = "", index: int = 0,
                     subject_tokens=None) -> tuple[tuple[int, ...], int]:
    """The ids of ``text`` (BOS first) and the position of ``edit_token`` in them. ``before``
    is the text ahead of the request's prompt in ``text`` (a context prefix), whose own
    occurrences of the span are skipped, as are occurrences inside the subject (a verb ``in``
    is not the ``in`` of "Justin"); a span found only there raises :class:`EditRequestError`.
    ``subject_tokens``: the caller's :func:`tokenize_with_subject` of ``text`` with the subject at
    its slot, used instead of tokenising again for a subject or prompt token."""
    span = edit_span_text(request, edit_token, index)
    if span is None or edit_token.startswith("subject"):
        tok = subject_tokens if subject_tokens is not None else tokenize_with_subject(
            tokenizer, text, request.subject, occurrence=slot_occurrence(text, before, request))
        if span is None:
            return tok.tokens, len(tok.tokens) - 1
        return tok.tokens, _subject_position(tok.subject_span, edit_token, index, request.subject)
    subject_start = len(before) + request.prompt.index("{}")
    subject_end = subject_start + len(request.subject)
    starts = [i for i in range(len(text)) if text.startswith(span, i)]
    outside = [n for n, i in enumerate(starts)
               if i >= len(before) and (i + len(span) <= subject_start or i >= subject_end)]
    if not outside:
        kind = edit_token.rsplit("_", 1)[0]
        raise EditRequestError(f"request {index}: field {kind!r}: span {span!r} occurs in the prompt {request.text!r} "
                               f"only inside the subject {request.subject!r}")
    tok = tokenize_with_subject(tokenizer, text, span, occurrence=outside[0])
    return tok.tokens, (tok.subject_span[0] if edit_token.endswith("_first") else tok.subject_span[1] - 1)


def slot_occurrence(text: str, before: str, request: EditRequest) -> int:
    """Which occurrence of the subject in ``text`` (``before`` + the filled prompt) is the one
    written into the ``{}`` slot: the subject's text can also occur earlier, in a context
    prefix or in the prompt's own words ahead of the slot; keys are read at the slot."""
    slot = len(before) + request.prompt.index("{}")
    return sum(text.startswith(request.subject, i) for i in range(slot))


def prepare_requests(model, requests: Iterable, fingerprint: str,
                     edit_token: str | Sequence[str] = "subject_last") -> list[TokenizedRequest]:
    """Validate and tokenise every request for ``model``; ``edit_token`` (one of
    :data:`EDIT_TOKENS` or ``"subject_<k>"``, or one per request) is where keys are read and
    targets written. Already tokenised requests must come from a model with the same
    fingerprint."""
    if isinstance(requests, (str, bytes)) or not (isinstance(requests, (EditRequest, CounterFactRecord, dict, Iterable))
                                                  or callable(getattr(requests, "as_dict", None))):
        raise EditRequestError(f"expected a list of edit requests, got {requests!r} ({type(requests).__name__})")
    single = isinstance(requests, (EditRequest, CounterFactRecord, dict)) or (
        not isinstance(requests, Iterable) and callable(getattr(requests, "as_dict", None)))  # one Rewrite
    items = [requests] if single else list(requests)
    if not items:
        raise EditRequestError("no edit requests given")
    tokens = [edit_token] * len(items) if isinstance(edit_token, str) else list(edit_token)
    if len(tokens) != len(items):
        raise EditRequestError(f"{len(tokens)} edit tokens for {len(items)} requests")
    out = []
    for index, (item, edit_token) in enumerate(zip(items, tokens, strict=True)):
        if isinstance(item, TokenizedRequest) and item.model_fingerprint != fingerprint:
            raise EditRequestError(
                f"request {index}: tokenised for another model (fingerprint {item.model_fingerprint}, "
                f"this model {fingerprint}); pass the plain EditRequest instead"
            )
        request = as_request(item, index)
        validate_request(request, index)
        try:
            tok = tokenize_with_subject(model.tokenizer, request.text, request.subject,
                                        occurrence=slot_occurrence(request.text, "", request))
        except InterpEditError as err:
            raise EditRequestError(f"request {index}: field 'subject': {err}") from None
        target_ids = encode_target(model.tokenizer, request.target_new, request.text)
        if len(tok.tokens) + len(target_ids) > model.cfg.n_ctx:
            raise EditRequestError(
                f"request {index}: field 'prompt': {request.text!r} with its target is "
                f"{len(tok.tokens) + len(target_ids)} tokens, more than the model's context {model.cfg.n_ctx}"
            )
        try:
            _, position = edit_position_of(model.tokenizer, request.text, request, edit_token, index=index, subject_tokens=tok)
        except InterpEditError as err:
            if isinstance(err, EditRequestError):
                raise
            raise EditRequestError(f"request {index}: edit token {edit_token!r}: {err}") from None
        out.append(TokenizedRequest(index, request, tok.tokens, tok.subject_span, target_ids, fingerprint, edit_token, position))
    check_against_each_other([r.request for r in out])
    return out


def check_against_each_other(requests: Sequence[EditRequest]) -> None:
    """Requests are checked against each other, not only one at a time: two requests whose
    filled prompts are the same text but whose new targets differ conflict (no model can continue
    one text two ways; an editor would silently keep one of them, whatever each names as its
    subject), and a request given twice (same subject and prompt) is a duplicate; either raises
    :class:`EditRequestError` naming both indices."""
    seen: dict[tuple[str, str], int] = {}
    texts: dict[str, int] = {}
    for index, request in enumerate(requests):
        text = request.text.strip()
        if text in texts and requests[texts[text]].target_new.strip() != request.target_new.strip():
            first = requests[texts[text]]
            raise EditRequestError(
                f"requests {texts[text]} and {index} conflict: the same prompt {request.text!r} (subjects "
                f"{first.subject!r} and {request.subject!r}) with different new targets ({first.target_new!r} vs "
                f"{request.target_new!r})"
            )
        key = (request.subject.strip(), text)
        if key in seen:
            raise EditRequestError(
                f"request {index} duplicates request {seen[key]} ({request.text!r} -> {request.target_new!r}); give it once"
            )
        seen[key] = index
        texts.setdefault(text, index)


def key_collisions(requests: Sequence[TokenizedRequest]) -> list[list[int]]:
    """Groups of request indices (position in ``requests``) that share one key: the same tokens
    up to and including the edit position (a causal model then gives them the same activation
    there, in any context prefix) but different new targets. Empty when every request has its
    own key."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(tuple(r.prompt_ids[: r.edit_position + 1]), []).append(i)
    return [members for members in groups.values()
            if len({requests[i].request.target_new.strip() for i in members}) > 1]


def describe_collisions(model, requests: Sequence[TokenizedRequest], groups: list[list[int]], editor: str) -> str:
    """The message of a key collision: which requests, at which token, and what to do."""
    parts = []
    for members in groups:
        r = requests[members[0]]
        token = model.tokenizer.decode([r.prompt_ids[r.edit_position]])
        targets = [requests[i].request.target_new for i in members]
        parts.append(f"requests {members} ({r.request.subject!r}, keyed at token {token!r}; new targets {targets})")
    return (f"{editor}: {'; '.join(parts)} share one key: the same tokens up to the edit position, so the editor gives "
            "them one value and at most one new target per group can hold. Edit them in separate calls (one fact per "
            "subject per call), choose another edit_token, or use an editor that reads the whole prompt (e.g. 'ft'); "
            "strict=True makes this an error")


def fill_prefix(prefix: str, text: str) -> str:
    """A context prefix followed by a prompt (the empty prefix gives the bare prompt)."""
    return text if not prefix else f"{prefix} {text}"


def tokenize_in_context(model, request: TokenizedRequest, prefixes: Sequence[str]) -> list[tuple[tuple[int, ...], int]]:
    """For each context prefix: the ids of ``prefix + prompt`` and the position of the
    request's edit token (by default the subject's last token) in them."""
    out = []
    for prefix in prefixes:
        before = fill_prefix(prefix, "")  # the prefix and its separator, before the prompt
        ids, pos = edit_position_of(model.tokenizer, fill_prefix(prefix, request.request.text), request.request,
                                    request.edit_token, before, request.index)
        if len(ids) + len(request.target_ids) - 1 > model.cfg.n_ctx:
            raise EditConfigError(
                f"request {request.index}: with the context prefix {prefix!r} the prompt {request.request.text!r} and its "
                f"target are {len(ids) + len(request.target_ids) - 1} tokens, more than the model's context "
                f"{model.cfg.n_ctx}; lower prefix_length"
            )
        out.append((ids, pos))
    return out
