"""The toy world: a synthetic knowledge base, its tokenizer, and the small GPT-2-style model
trained on it that ships with the package (``load_model("toyworld")``)."""

from __future__ import annotations

from pathlib import Path

from interp_edit.toyworld.records import counterfact_records, multihop_questions
from interp_edit.toyworld.tokenizer import build_tokenizer
from interp_edit.toyworld.world import Fact, Person, ToyWorld, build_world


def load_world(checkpoint: str | Path | None = None) -> ToyWorld:
    """The world a toy-world checkpoint was trained on (default: the shipped model's)."""
    from interp_edit.errors import CheckpointError
    from interp_edit.model import BUILTIN_MODELS, CONFIG_FILE, _read_json

    folder = Path(checkpoint) if checkpoint else BUILTIN_MODELS["toyworld"]
    meta = _read_json(folder / CONFIG_FILE)
    if "world" not in meta:
        raise CheckpointError(f"checkpoint file {folder / CONFIG_FILE} has no 'world' section (not a toy-world model)")
    return build_world(meta["world"]["seed"], meta["world"]["n_people"])


def to_hf(model):
    """The toy-world model as a Hugging Face ``GPT2LMHeadModel`` and its tokenizer."""
    from interp_edit.model import to_hf as _to_hf

    return _to_hf(model)


__all__ = [
    "Fact",
    "Person",
    "ToyWorld",
    "build_tokenizer",
    "build_world",
    "counterfact_records",
    "load_world",
    "multihop_questions",
    "to_hf",
]
