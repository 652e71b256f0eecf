"""The toy world: a synthetic knowledge base, its tokenizer, and the small GPT-2-style model
trained on it that ships with the package (``load_model("toyworld")``)."""

from __future__ import annotations

from pathlib import Path

from interp_edit.toyworld.model_world import (
    WorldSpec,
    attach_world,
    check_same_world,
    checkpoint_world_spec,
    shipped_world,
    world_of,
    world_or_shipped,
    world_spec_of,
)
from interp_edit.toyworld.records import counterfact_records, multihop_questions
from interp_edit.toyworld.tokenizer import build_tokenizer
from interp_edit.toyworld.world import Fact, Person, ToyWorld, build_world


def load_world(checkpoint: str | Path | None = None) -> ToyWorld:
    """The world a toy-world checkpoint folder was trained on (default: the shipped model's).
    For a loaded model use :func:`world_of`."""
    return checkpoint_world_spec(checkpoint).build()


def to_hf(model):
    """The toy-world model as a Hugging Face ``GPT2LMHeadModel`` and its tokenizer."""
    from interp_edit.adapter import to_hf as _to_hf

    return _to_hf(model)


__all__ = [
    "Fact",
    "Person",
    "ToyWorld",
    "WorldSpec",
    "attach_world",
    "check_same_world",
    "checkpoint_world_spec",
    "shipped_world",
    "world_of",
    "world_or_shipped",
    "world_spec_of",
    "build_tokenizer",
    "build_world",
    "counterfact_records",
    "load_world",
    "multihop_questions",
    "to_hf",
]
