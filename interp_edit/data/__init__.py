"""Datasets for evaluating edits: validated loaders of the public CounterFact, zsRE (MEND
split) and MQuAKE formats, a multiple-choice format, and the toy world in each of them.
This layer never imports the editing layer."""

from interp_edit.data.cases import (
    FORMATS,
    MCQ_KINDS,
    ZSRE_TARGETS,
    CounterFactCase,
    Dataset,
    MCQCase,
    MCQQuestion,
    MQuAKECase,
    MultiHopProbe,
    Rewrite,
    ZsRECase,
)
from interp_edit.data.loaders import builtin_datasets, check_tokens, load_dataset, parse_records
from interp_edit.statistics.corpus import Corpus, read_texts

__all__ = [
    "FORMATS",
    "MCQ_KINDS",
    "ZSRE_TARGETS",
    "CounterFactCase",
    "Dataset",
    "MCQCase",
    "MCQQuestion",
    "MQuAKECase",
    "MultiHopProbe",
    "Rewrite",
    "ZsRECase",
    "builtin_datasets",
    "Corpus",
    "read_texts",
    "check_tokens",
    "load_dataset",
    "parse_records",
]
