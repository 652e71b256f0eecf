"""``load_dataset(name_or_path)``: built-in toy-world datasets by name, local JSON / JSONL
files in any of the four formats, or (``hf:owner/name[:split]``) a Hugging Face copy when a
hub is reachable. Every record is validated; ``strict=False`` skips bad records and counts
them in ``Dataset.skipped``."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from interp_edit.data.cases import ZSRE_TARGETS, CounterFactCase, Dataset, MCQCase, MQuAKECase, ZsRECase
from interp_edit.data.formats import PARSERS, Where, parse_zsre, sniff_format
from interp_edit.errors import DatasetError


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    format: str
    description: str
    #: world -> records (dicts in the format's public layout)
    build: Callable


def builtin_datasets() -> dict[str, BuiltinDataset]:
    """The datasets available by name (built offline from the toy world)."""
    from interp_edit.data import toyworld as toy
    from interp_edit.data.commonsense import toy_commonsense
    from interp_edit.data.ripple import toy_ripple

    found = [
        BuiltinDataset("toyworld-counterfact", "counterfact", "every toy-world fact as a CounterFact case (+ multi-hop probes)", toy.toy_counterfact),
        BuiltinDataset("toyworld-zsre", "zsre", "toy-world people's facts as zsRE questions (MEND layout)", toy.toy_zsre),
        BuiltinDataset("toyworld-mquake", "mquake", "birth-city rewrites with 2-/3-hop questions through them", toy.toy_mquake),
        BuiltinDataset("toyworld-mcq", "mcq", "birth-city rewrites with four cloze multiple-choice questions", toy.toy_mcq),
        BuiltinDataset("toyworld-csk", "commonsense", "relation statements with verb / object spans (MEMIT-CSK)", toy_commonsense),
        BuiltinDataset("toyworld-ripple", "ripple", "birth-city and city-country rewrites with ripple tests (RippleEdits)", toy_ripple),
    ]
    return {d.name: d for d in found}


def _parsers() -> dict:
    """Every record format's parser, by format name."""
    from interp_edit.data.commonsense import parse_commonsense
    from interp_edit.data.ripple import parse_ripple

    return {**PARSERS, "commonsense": parse_commonsense, "ripple": parse_ripple}


def check_zsre_target(zsre_target) -> str:
    """``zsre_target`` if it is one of :data:`~interp_edit.data.cases.ZSRE_TARGETS`, else
    :class:`DatasetError` naming it."""
    if not isinstance(zsre_target, str) or zsre_target not in ZSRE_TARGETS:
        raise DatasetError(f"zsre_target must be one of {ZSRE_TARGETS} ('alt': EasyEdit's new answer; 'answer': "
                           f"answers[0], as ROME / MEMIT / AlphaEdit), got {zsre_target!r}")
    return zsre_target


def parse_records(records: Sequence, fmt: str, source: str, *, strict: bool = True, name: str | None = None,
                  zsre_target: str = "alt", lines: Sequence[int] | None = None) -> Dataset:
    """Validate ``records`` (dicts) of format ``fmt`` into a :class:`Dataset` (``zsre_target``:
    see :func:`load_dataset`; ``lines``: each record's line in a JSONL file, for messages)."""
    check_zsre_target(zsre_target)
    parsers = _parsers()
    if fmt not in parsers:
        raise DatasetError(f"{source}: unknown format {fmt!r}; formats: {list(parsers)}")
    parse = parsers[fmt] if fmt != "zsre" else functools.partial(parse_zsre, target=zsre_target)
    cases, skipped, seen, places = [], [], {}, []
    for index, record in enumerate(records):
        where = Where(source, index, lines[index] if lines is not None else None)
        try:
            case = parse(record, where)
            if case.case_id in seen:
                raise where.error("case_id", f"duplicate case id {case.case_id!r} (first at record {seen[case.case_id]})")
        except DatasetError as err:
            if strict:
                raise
            skipped.append(str(err))
            continue
        seen[case.case_id] = index
        cases.append(case)
        places.append(where.record)
    return Dataset(name or source, fmt, tuple(cases), source, skipped, zsre_target=zsre_target if fmt == "zsre" else None,
                   places=tuple(places))


def _read_records(path: Path) -> tuple[list, list[int] | None]:
    """The file's records and, for JSONL, each one's line number (blank lines are skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DatasetError(f"{path}: cannot read: {err}") from None
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save the file as UTF-8 JSON") from None
    if path.suffix == ".jsonl":
        records, lines = [], []
        for line_no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DatasetError(f"{path}: line {line_no}: not JSON: {err}") from None
                lines.append(line_no)
        return records, lines
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not JSON: {err}") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data, None


def _from_hub(spec: str) -> list[dict]:
    repo, _, split = spec.removeprefix("hf:").partition(":")
    if not repo.strip():
        raise DatasetError(f"{spec!r}: no repository named; give hf:owner/name or hf:owner/name:split")
    try:
        import datasets
    except ImportError:
        raise DatasetError(f"{spec}: the 'datasets' package is not installed") from None
    try:
        return [dict(r) for r in datasets.load_dataset(repo, split=split or "train")]
    except Exception as err:  # network / hub errors come in many types
        raise DatasetError(f"{spec}: cannot load from the Hugging Face hub: {err}") from None


def load_dataset(name_or_path: str | Path, *, format: str | None = None, strict: bool = True,
                 world=None, seed: int = 0, tokenizer=None, model=None, zsre_target: str = "alt") -> Dataset:
    """A validated dataset: a built-in name (``toyworld-counterfact``, ``toyworld-zsre``,
    ``toyworld-mquake``, ``toyworld-mcq``, ``toyworld-csk``, ``toyworld-ripple``), a local ``.json`` (a list of records) or ``.jsonl``
    file, or ``hf:owner/name[:split]``. The format is guessed from the first record unless
    given. With ``tokenizer``, targets must also tokenise to at least one token (see
    :func:`check_tokens`).

    A built-in dataset is built from ``world``, else from ``model``'s own toy world (the one
    its checkpoint names), else from the shipped model's world; ``world`` and ``model`` of
    different worlds raise :class:`DatasetError` naming both.

    ``zsre_target``: a zsRE case's new answer. ``"alt"`` (default; EasyEdit): the record's
    ``alt`` replaces ``answers[0]``. ``"answer"`` (ROME / MEMIT / AlphaEdit ``dsets/zsre.py``,
    whose published zsRE numbers are of this): ``answers[0]`` is written, no answer named as
    replaced (the edit's efficacy / paraphrase *scores*, which compare against it, are NaN; the
    token accuracies are the papers' metrics).

    >>> load_dataset("toyworld-zsre")
    Dataset(name='toyworld-zsre', format='zsre', cases=..., skipped=0)
    >>> import json
    >>> with open("cases.json", "w") as f:                 # any CounterFact-format file
    ...     json.dump([r.to_counterfact() for r in records[:3]], f)
    >>> len(load_dataset("cases.json"))
    3
    """
    from interp_edit.toyworld.model_world import WorldSpec, check_same_world, shipped_world, world_or_shipped

    check_zsre_target(zsre_target)
    builtins = builtin_datasets()
    key = str(name_or_path)
    if key in builtins:
        spec = builtins[key]
        if world is None:
            world = world_or_shipped(model) if model is not None else shipped_world()
        elif model is not None:
            check_same_world(model, WorldSpec.of(world), f"dataset {key!r} (world=)")
        dataset = parse_records(spec.build(world, seed), spec.format, key, strict=strict, name=key, zsre_target=zsre_target)
        dataset = replace(dataset, world=WorldSpec.of(world))
    else:
        path = Path(key)
        lines = None
        if key.startswith("hf:"):
            records = _from_hub(key)
        elif path.is_file():
            records, lines = _read_records(path)
        else:
            raise DatasetError(f"no dataset named {key!r} and no such file; built-in datasets: {sorted(builtins)}")
        fmt = format or (sniff_format(records[0]) if records else None)
        if fmt is None:
            raise DatasetError(f"{key}: cannot tell the format from the first record; pass format= one of {list(_parsers())}")
        dataset = parse_records(records, fmt, key, strict=strict, name=path.stem if not key.startswith("hf:") else key,
                                zsre_target=zsre_target, lines=lines)
    return check_tokens(dataset, tokenizer, strict=strict) if tokenizer is not None else dataset


def _targets(case) -> list[tuple[str, str, str | None]]:
    """(field, text, the prompt it must be one token after, or ``None``: at least one token) of
    every string a metric scores as a continuation."""
    out = []
    for i, r in enumerate(case.rewrites()):
        prefix = "requested_rewrite." if len(case.rewrites()) == 1 else f"requested_rewrite[{i}]."
        out += [(prefix + "target_new", r.target_new, None), (prefix + "target_true", r.target_true or " x", None)]
    if isinstance(case, ZsRECase):
        out += [("loc_ans", case.loc_ans, None)] + [(f"answers[{i}]", a, None) for i, a in enumerate(case.answers)]
    probe = case.probe if isinstance(case, MQuAKECase) else getattr(case, "multihop", None) if isinstance(case, CounterFactCase) else None
    if probe is not None:
        prefix = "multihop." if isinstance(case, CounterFactCase) else ""
        out += [(prefix + "answer", probe.answer, None), (prefix + "new_answer", probe.new_answer, None)]
    if isinstance(case, MCQCase):
        for q, question in enumerate(case.questions):
            out += [(f"questions[{q}].labels[{i}]", label, question.prompt) for i, label in enumerate(question.labels)]
    return out


def _label_problem(tokenizer, label: str, prompt: str) -> str | None:
    """Why ``label`` is not one token as the continuation of ``prompt`` (the token whose logit
    the question compares), or ``None``. Judged in context, as ``encode_target`` scores a target:
    a SentencePiece / Metaspace tokenizer encodes ``" A"`` alone as ``["▁", "▁A"]`` but continues
    a prompt with the one token ``"▁A"``."""
    from interp_edit.errors import InterpEditError
    from interp_edit.prompts import encode_target

    try:
        ids = encode_target(tokenizer, label.lstrip(" "), prompt)
    except InterpEditError as err:
        return f"does not tokenise as the continuation of its question's prompt ({err})"
    return None if len(ids) == 1 else f"is {len(ids)} tokens after its question's prompt, not one"


def check_tokens(dataset: Dataset, tokenizer, *, strict: bool = True) -> Dataset:
    """Targets must tokenise (with their leading space) to at least one token, and MCQ labels
    to exactly one as the continuation of their question's prompt. A failure names the source,
    the case's record (its position in the file, and its line in a JSONL file) and id, and the
    field; ``strict=False`` drops such cases (counted in ``skipped``)."""
    keep, skipped, places = [], list(dataset.skipped), []
    for index, case in enumerate(dataset.cases):
        problem = None
        for field, text, prompt in _targets(case):
            if prompt is not None and text.strip():
                what = _label_problem(tokenizer, text, prompt)
            else:
                ids = tokenizer.encode(" " + text.lstrip(" "), add_special_tokens=False) if text.strip() else []
                what = None if ids else "tokenises to nothing"
            if what is not None:
                problem = f"{dataset.source}: {dataset.place(index)} (case {case.case_id}): field {field!r}: {text!r} {what}"
                break
        if problem is None:
            keep.append(case)
            places.append(dataset.place(index))
        elif strict:
            raise DatasetError(problem)
        else:
            skipped.append(problem)
    return replace(dataset, cases=tuple(keep), skipped=skipped, places=tuple(places))
