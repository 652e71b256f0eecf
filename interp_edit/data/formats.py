"""Parsers of the public record formats, validating each record field by field.

A bad record raises :class:`~interp_edit.errors.DatasetError` naming the file, the record
index (its position among the file's records, blank JSONL lines not counted; in a JSONL file
also its line number) and the field. Formats:

- **counterfact** (ROME's ``counterfact.json``): ``case_id``, ``requested_rewrite`` {``prompt``
  with ``{}``, ``subject``, ``target_new`` {``str``}, ``target_true`` {``str``}, ``relation_id``},
  ``paraphrase_prompts`` (non-empty), ``neighborhood_prompts`` (non-empty),
  ``generation_prompts`` / ``attribute_prompts`` (optional), ``multihop`` (optional extension:
  {``questions``, ``answer``, ``new_answer``}).
- **zsre** (MEND split, e.g. ``zsre_mem_eval.json``): ``subject``, ``src`` (contains the
  subject), ``alt`` (the new answer; ``pred`` when ``alt`` is absent), ``answers`` (non-empty
  list; the first is the true answer), ``rephrase`` (non-empty), ``loc``, ``loc_ans``;
  ``case_id`` optional (default: the record index). With ``zsre_target="answer"`` (ROME /
  MEMIT / AlphaEdit) the edit writes ``answers[0]`` and ``alt`` is not read.
- **mquake** (``MQuAKE-CF-3k.json``): ``case_id``, ``requested_rewrite`` (non-empty list of
  CounterFact rewrites), ``questions`` (non-empty), ``answer``, ``new_answer``,
  ``answer_alias`` / ``new_answer_alias`` (optional lists).
- **mcq** (this toolkit's layout, CaseEdit-style): ``case_id``, ``requested_rewrite`` (as
  CounterFact), optional ``labels`` (default ``["A", "B", "C", "D", "E"]``), ``questions``: a
  non-empty list of {``kind``: reliability | generalisation | locality | portability,
  ``prompt``, ``options`` (as many as labels), ``answer``: the right option's index (or its
  label), optional ``labels``}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from interp_edit.data.cases import (
    MCQ_KINDS,
    CounterFactCase,
    MCQCase,
    MCQQuestion,
    MQuAKECase,
    MultiHopProbe,
    Rewrite,
    ZsRECase,
)
from interp_edit.errors import DatasetError
from interp_edit.prompts import template_problem

DEFAULT_MCQ_LABELS = ("A", "B", "C", "D", "E")


@dataclass(frozen=True)
class Where:
    """A record's place, for error messages."""

    source: str
    index: int
    #: the record's line in a JSONL file (``None`` for a JSON list or records in memory)
    line: int | None = None

    @property
    def record(self) -> str:
        """``record <index>`` (its position among the file's records), with its line in a JSONL file."""
        return f"record {self.index}" + (f" (line {self.line})" if self.line is not None else "")

    def error(self, field: str, problem: str) -> DatasetError:
        return DatasetError(f"{self.source}: {self.record}: field {field!r}: {problem}")


def _get(record: dict, key: str, where: Where, prefix: str = "") -> Any:
    if not isinstance(record, dict):
        raise where.error(prefix.rstrip(".") or "<record>", f"expected an object, got {type(record).__name__}")
    if key not in record or record[key] is None:
        raise where.error(prefix + key, "missing")
    return record[key]


def _text(record: dict, key: str, where: Where, prefix: str = "") -> str:
    value = _get(record, key, where, prefix)
    if isinstance(value, dict) and "str" in value:  # CounterFact's {"str": ..., "id": ...}
        value = value["str"]
    if not isinstance(value, str):
        raise where.error(prefix + key, f"expected a string, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise where.error(prefix + key, f"empty string {value!r}")
    return value


def _texts(record: dict, key: str, where: Where, prefix: str = "", *, required: bool = True) -> tuple[str, ...]:
    if not required and record.get(key) is None:
        return ()
    value = _get(record, key, where, prefix)
    if isinstance(value, str) or not isinstance(value, list):
        raise where.error(prefix + key, f"expected a list of strings, got {type(value).__name__}")
    if required and not value:
        raise where.error(prefix + key, "empty list")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise where.error(f"{prefix}{key}[{i}]", f"expected a non-empty string, got {item!r}")
    return tuple(value)


def _case_id(record: dict, where: Where, default: int | None = None) -> str:
    if default is not None and record.get("case_id") is None:
        return str(default)
    value = _get(record, "case_id", where)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, str) and not value.strip()):
        raise where.error("case_id", f"expected an int or a non-empty string, got {value!r}")
    return str(value)


def parse_rewrite(data: dict, where: Where, prefix: str = "requested_rewrite.") -> Rewrite:
    prompt = _text(data, "prompt", where, prefix)
    problem = template_problem(prompt)
    if problem:
        raise where.error(prefix + "prompt", f"{problem}: {prompt!r}")
    rewrite = Rewrite(prompt, _text(data, "subject", where, prefix), _text(data, "target_new", where, prefix),
                      _text(data, "target_true", where, prefix))
    if rewrite.target_new.strip() == rewrite.target_true.strip():
        raise where.error(prefix + "target_new", f"equals target_true ({rewrite.target_new!r}): nothing to edit")
    return rewrite


def _probe(data: dict, where: Where, prefix: str = "") -> MultiHopProbe:
    return MultiHopProbe(
        _texts(data, "questions", where, prefix), _text(data, "answer", where, prefix),
        _text(data, "new_answer", where, prefix), _texts(data, "answer_alias", where, prefix, required=False),
        _texts(data, "new_answer_alias", where, prefix, required=False),
    )


def parse_counterfact(record: dict, where: Where) -> CounterFactCase:
    rewrite = parse_rewrite(_get(record, "requested_rewrite", where), where)
    multihop = record.get("multihop") if isinstance(record, dict) else None
    return CounterFactCase(
        _case_id(record, where), rewrite, _texts(record, "paraphrase_prompts", where),
        _texts(record, "neighborhood_prompts", where), _texts(record, "generation_prompts", where, required=False),
        _texts(record, "attribute_prompts", where, required=False),
        _probe(multihop, where, "multihop.") if multihop is not None else None,
    )


def parse_zsre(record: dict, where: Where, target: str = "alt") -> ZsRECase:
    """One zsRE record; ``target`` (:data:`~interp_edit.data.cases.ZSRE_TARGETS`) picks the new answer."""
    subject, src = _text(record, "subject", where), _text(record, "src", where)
    if subject not in src:
        raise where.error("subject", f"{subject!r} does not occur in src {src!r}")
    problem = template_problem(src.replace(subject, "{}", 1))  # the case's prompt: src with the subject's slot
    if problem:
        raise where.error("src", f"as a template of its subject, {problem}: {src!r}")
    rephrase = _text(record, "rephrase", where)
    answers = _texts(record, "answers", where)
    if target == "answer":  # ROME's dsets/zsre.py: the first answer is written; alt is not read
        target_new, target_true = answers[0], None
    else:
        new_field = "alt" if record.get("alt") is not None else "pred"
        target_new, target_true = _text(record, new_field, where), answers[0]
        if target_new.strip() == target_true.strip():
            raise where.error(new_field, f"equals answers[0] ({target_new!r}), the answer it replaces: nothing to "
                              "edit (zsre_target='answer' writes answers[0] instead, as ROME / MEMIT do)")
    return ZsRECase(_case_id(record, where, default=where.index), subject, src, rephrase, target_new, answers,
                    _text(record, "loc", where), _text(record, "loc_ans", where), target_true)


def parse_mquake(record: dict, where: Where) -> MQuAKECase:
    rewrites = _get(record, "requested_rewrite", where)
    if not isinstance(rewrites, list) or not rewrites:
        raise where.error("requested_rewrite", "expected a non-empty list of rewrites")
    parsed = tuple(parse_rewrite(r, where, f"requested_rewrite[{i}].") for i, r in enumerate(rewrites))
    return MQuAKECase(_case_id(record, where), parsed, _probe(record, where))


def _mcq_question(data: dict, where: Where, prefix: str, labels: tuple[str, ...]) -> MCQQuestion:
    kind = _text(data, "kind", where, prefix)
    if kind not in MCQ_KINDS:
        raise where.error(prefix + "kind", f"{kind!r} is not one of {MCQ_KINDS}")
    labels = _texts(data, "labels", where, prefix) if data.get("labels") is not None else labels
    options = _texts(data, "options", where, prefix)
    if len(options) != len(labels):
        raise where.error(prefix + "options", f"{len(options)} options but {len(labels)} labels {list(labels)}")
    if len(set(labels)) != len(labels):
        raise where.error(prefix + "labels", f"repeated labels {list(labels)}")
    answer = _get(data, "answer", where, prefix)
    if isinstance(answer, str) and answer in labels:
        answer = labels.index(answer)
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(options):
        raise where.error(prefix + "answer", f"expected an option index in [0, {len(options)}) or a label, got {answer!r}")
    return MCQQuestion(kind, _text(data, "prompt", where, prefix), options, labels, answer)


def parse_mcq(record: dict, where: Where) -> MCQCase:
    rewrite = parse_rewrite(_get(record, "requested_rewrite", where), where)
    labels = _texts(record, "labels", where) if record.get("labels") is not None else DEFAULT_MCQ_LABELS
    questions = _get(record, "questions", where)
    if not isinstance(questions, list) or not questions:
        raise where.error("questions", "expected a non-empty list of questions")
    parsed = tuple(_mcq_question(q, where, f"questions[{i}].", labels) for i, q in enumerate(questions))
    return MCQCase(_case_id(record, where), rewrite, parsed)


PARSERS = {"counterfact": parse_counterfact, "zsre": parse_zsre, "mquake": parse_mquake, "mcq": parse_mcq}


def sniff_format(record: Any) -> str | None:
    """Guess a record's format from its keys (None if nothing fits)."""
    if not isinstance(record, dict):
        return None
    if "src" in record and "loc" in record:
        return "zsre"
    rewrite = record.get("requested_rewrite")
    if isinstance(rewrite, list):
        return "mquake"
    if isinstance(rewrite, dict):
        if "tests" in record and "edit_kind" in record:
            return "ripple"
        if "relapse" in record and "kind" in record:
            return "commonsense"
        return "mcq" if "questions" in record else "counterfact"
    return None
