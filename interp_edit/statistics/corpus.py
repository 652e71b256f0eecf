"""Texts of a statistics corpus (the texts key statistics are averaged over), from wherever a
user has them. ``corpus=`` of :func:`interp_edit.statistics.collect.second_moments` and of every
editor is one of:

- an iterable of strings (a list, a generator): the texts themselves;
- a path (``str`` or :class:`~pathlib.Path`) of
  - a **text file** (``.txt``, ``.text``, ``.md`` or any suffix other than ``.jsonl``): one text
    per line by default; ``Corpus(path, unit="paragraph")`` makes each block of lines separated
    by a blank line one text (its lines joined with ``"\\n"``);
  - a **JSONL file** (``.jsonl``): one JSON object per line, the text in field ``"text"``;
    ``Corpus(path, field="content")`` names another field;
  - a **folder**: every ``.txt`` / ``.text`` / ``.md`` / ``.jsonl`` file below it (recursively, in
    sorted path order), each read as above — or, if the folder is a ``datasets`` saved
    directory (``Dataset.save_to_disk``; it holds ``dataset_info.json`` or
    ``dataset_dict.json``), the dataset it holds (``datasets.load_from_disk``; split ``split``
    of a ``DatasetDict``; column ``field``);
- a **Hugging Face hub dataset**: a name that is not an existing path (``"wikitext"``), a
  ``(name, config)`` tuple (``("wikitext", "wikitext-103-raw-v1")``) or
  ``Corpus("wikitext", name="wikitext-103-raw-v1")``. This needs the network: in offline mode
  (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``) or when the hub cannot be reached it raises
  :class:`~interp_edit.errors.CorpusUnavailableError` saying so;
- a :class:`Corpus`, which names any of the above with its options.

A name ending in ``.txt`` / ``.jsonl`` (or containing a path separator and starting with ``.``,
``/`` or ``~``) that does not exist is a missing file, not a hub name. Blank texts are skipped.
An empty, unreadable or field-less corpus raises :class:`~interp_edit.errors.CorpusError`
naming the file (and line / record) — callers read the texts they need before any forward.

This module is the data layer: it never imports a model or the editing layer.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from interp_edit.errors import CorpusError, CorpusUnavailableError

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl",)
#: the files that mark a ``datasets`` ``save_to_disk`` directory
DATASETS_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass(frozen=True)
class Corpus:
    """A corpus source with its reading options (see the module docstring)."""

    #: a path (file, folder, ``datasets`` directory) or a hub dataset name
    source: str | Path
    #: JSONL / ``datasets`` / hub: the column holding the text
    field: str = "text"
    #: text files: ``"line"`` (one text per line) or ``"paragraph"`` (blank-line separated blocks)
    unit: Literal["line", "paragraph"] = "line"
    #: hub: the dataset's configuration (e.g. ``"wikitext-103-raw-v1"``)
    name: str | None = None
    #: ``datasets`` directory of a ``DatasetDict``, hub: the split read
    split: str = "train"

    def __post_init__(self) -> None:
        if not isinstance(self.source, (str, Path)) or not str(self.source).strip():
            raise CorpusError(f"Corpus.source must be a path or a hub dataset name, got {self.source!r}")
        if not isinstance(self.field, str) or not self.field:
            raise CorpusError(f"Corpus.field must be a non-empty string, got {self.field!r}")
        if self.unit not in ("line", "paragraph"):
            raise CorpusError(f"Corpus.unit must be 'line' or 'paragraph', got {self.unit!r}")


def as_corpus(corpus) -> Corpus | list | Iterable[str]:
    """``corpus`` as a :class:`Corpus` when it names a source (a path, a hub name or a
    ``(name, config)`` tuple); an iterable of texts is returned as it is."""
    if isinstance(corpus, Corpus):
        return corpus
    if isinstance(corpus, (str, Path)):
        return Corpus(corpus)
    if isinstance(corpus, tuple) and 1 <= len(corpus) <= 2 and all(isinstance(c, str) for c in corpus):
        return Corpus(corpus[0], name=corpus[1] if len(corpus) == 2 else None)
    return corpus


def describe(corpus) -> str:
    """A short description of ``corpus`` for provenance records and messages."""
    corpus = as_corpus(corpus)
    if not isinstance(corpus, Corpus):
        return "texts given in memory"
    kind = source_kind(corpus)
    where = str(Path(corpus.source).expanduser().resolve()) if kind != "hub" else str(corpus.source)
    extra = {"text": f"one text per {corpus.unit}", "jsonl": f"field {corpus.field!r}", "folder": "",
             "datasets": f"field {corpus.field!r}", "hub": f"config {corpus.name!r}, split {corpus.split!r}, field {corpus.field!r}"}[kind]
    return f"{kind} {where}" + (f" ({extra})" if extra else "")


def source_kind(corpus: Corpus) -> str:
    """``"text"``, ``"jsonl"``, ``"folder"``, ``"datasets"`` or ``"hub"``; a missing path raises."""
    path = Path(corpus.source).expanduser()
    if path.is_dir():
        return "datasets" if any((path / m).is_file() for m in DATASETS_MARKERS) else "folder"
    if path.is_file():
        return "jsonl" if path.suffix.lower() in JSONL_SUFFIXES else "text"
    text = str(corpus.source)
    if path.exists() or path.suffix.lower() in (*TEXT_SUFFIXES, *JSONL_SUFFIXES, ".json") or text.startswith(("/", ".", "~")) \
            or isinstance(corpus.source, Path):
        raise CorpusError(f"corpus {text!r} does not exist (a file, a folder or a datasets directory was expected)")
    return "hub"


def iter_texts(corpus) -> Iterator[str]:
    """The non-blank texts of ``corpus``, lazily, in order."""
    corpus = as_corpus(corpus)
    if not isinstance(corpus, Corpus):
        yield from _memory_texts(corpus)
        return
    kind = source_kind(corpus)
    path = Path(corpus.source).expanduser()
    if kind == "text":
        yield from _text_file(path, corpus.unit)
    elif kind == "jsonl":
        yield from _jsonl_file(path, corpus.field)
    elif kind == "folder":
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (*TEXT_SUFFIXES, *JSONL_SUFFIXES))
        if not files:
            raise CorpusError(f"corpus folder {str(path)!r} holds no {'/'.join(TEXT_SUFFIXES + JSONL_SUFFIXES)} file")
        for file in files:
            yield from (_jsonl_file(file, corpus.field) if file.suffix.lower() in JSONL_SUFFIXES
                        else _text_file(file, corpus.unit))
    elif kind == "datasets":
        yield from _datasets_dir(path, corpus)
    else:
        yield from _hub(corpus)


def read_texts(corpus, n_texts: int) -> list[str]:
    """The first ``n_texts`` non-blank texts of ``corpus``; an empty corpus raises
    :class:`CorpusError` naming it."""
    texts = list(itertools.islice(iter_texts(corpus), n_texts))
    if not texts:
        raise CorpusError(f"the statistics corpus ({describe(corpus)}) has no text")
    return texts


def corpus_hash(texts: Sequence[str]) -> str:
    """A content hash of ``texts`` (in order), 12 hex digits."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\x1e")
    return digest.hexdigest()[:12]


# --- readers --------------------------------------------------------------------------------

def _memory_texts(texts: Iterable) -> Iterator[str]:
    try:
        items = iter(texts)
    except TypeError:
        raise CorpusError(f"corpus must be texts, a path, a hub dataset name or a Corpus, got {texts!r}") from None
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise CorpusError(f"corpus item {i} is not a string: {text!r}")
        if text.strip():
            yield text


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                yield number, line.rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise CorpusError(f"corpus file {str(path)!r} is not UTF-8 text ({err})") from None
    except OSError as err:
        raise CorpusError(f"corpus file {str(path)!r} cannot be read ({err.strerror or err})") from None


def _text_file(path: Path, unit: str) -> Iterator[str]:
    if unit == "line":
        yield from (line for _, line in _lines(path) if line.strip())
        return
    block: list[str] = []
    for _, line in _lines(path):
        if line.strip():
            block.append(line)
        elif block:
            yield "\n".join(block)
            block = []
    if block:
        yield "\n".join(block)


def _jsonl_file(path: Path, field: str) -> Iterator[str]:
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CorpusError(f"corpus file {str(path)!r} line {number} is not JSON ({err.msg})") from None
        if not isinstance(record, dict) or field not in record:
            fields = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise CorpusError(f"corpus file {str(path)!r} line {number} has no text field {field!r} (it has: {fields}); "
                              "name the field with Corpus(path, field=...)")
        text = record[field]
        if not isinstance(text, str):
            raise CorpusError(f"corpus file {str(path)!r} line {number}: field {field!r} is not a string: {text!r}")
        if text.strip():
            yield text


def _column(rows, field: str, where: str) -> Iterator[str]:
    columns = list(getattr(rows, "column_names", None) or [])
    if columns and field not in columns:
        raise CorpusError(f"corpus {where} has no text field {field!r} (columns: {columns}); name it with Corpus(..., field=...)")
    for i, row in enumerate(rows):
        if field not in row:
            raise CorpusError(f"corpus {where} record {i} has no text field {field!r} (fields: {sorted(row)})")
        text = row[field]
        if not isinstance(text, str):
            raise CorpusError(f"corpus {where} record {i}: field {field!r} is not a string: {text!r}")
        if text.strip():
            yield text


def _datasets_dir(path: Path, corpus: Corpus) -> Iterator[str]:
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except Exception as err:
        raise CorpusError(f"corpus datasets directory {str(path)!r} cannot be read ({err})") from None
    if isinstance(data, datasets.DatasetDict):
        if corpus.split not in data:
            raise CorpusError(f"corpus datasets directory {str(path)!r} has no split {corpus.split!r} (splits: {sorted(data)})")
        data = data[corpus.split]
    yield from _column(data, corpus.field, f"datasets directory {str(path)!r}")


def offline() -> bool:
    """Whether Hugging Face offline mode is set in the environment."""
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE") for v in OFFLINE_VARIABLES)


def _is_connection_error(err: BaseException) -> bool:
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, (ConnectionError, TimeoutError)) or "connect" in type(err).__name__.lower() \
                or "couldn't reach" in str(err).lower() or "offline" in str(err).lower():
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def _hub(corpus: Corpus) -> Iterator[str]:
    label = repr(corpus.source) + (f" (config {corpus.name!r})" if corpus.name else "")
    alternatives = "pass corpus= a text / JSONL file, a folder, a datasets directory or a list of strings"
    if offline():
        raise CorpusUnavailableError(f"the corpus {label} is a Hugging Face hub dataset and needs the network, but offline mode "
                                     f"is set ({'/'.join(OFFLINE_VARIABLES)}); {alternatives}")
    import datasets

    args = (str(corpus.source),) if corpus.name is None else (str(corpus.source), corpus.name)
    try:
        data = datasets.load_dataset(*args, split=corpus.split, streaming=True)
    except Exception as err:
        if _is_connection_error(err):
            raise CorpusUnavailableError(f"the corpus {label} is a Hugging Face hub dataset and needs the network, which "
                                         f"cannot be reached ({type(err).__name__}: {err}); {alternatives}") from None
        raise CorpusError(f"the hub dataset {label} cannot be loaded ({type(err).__name__}: {err}); {alternatives}") from None
    yield from _column(data, corpus.field, f"hub dataset {label}")


__all__ = ["Corpus", "as_corpus", "corpus_hash", "describe", "iter_texts", "offline", "read_texts", "source_kind"]
