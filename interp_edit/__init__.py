"""interp_edit: mechanistic interpretability of knowledge editing on TransformerLens.

The public API is re-exported here. Imports are lazy (PEP 562) so that ``import interp_edit``
and ``interp-edit --help`` stay quick; TransformerLens loads on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "interp_edit.model",
    "to_hf": "interp_edit.model",
    "BUILTIN_MODELS": "interp_edit.model",
    "CounterFactRecord": "interp_edit.prompts",
    "MultiHopQuestion": "interp_edit.prompts",
    "last_token_logits": "interp_edit.batching",
    "InterpEditError": "interp_edit.errors",
    "ModelNotFoundError": "interp_edit.errors",
    "CheckpointError": "interp_edit.errors",
    "TokenizationError": "interp_edit.errors",
    "SubjectNotFoundError": "interp_edit.errors",
    "ExportError": "interp_edit.errors",
}

__all__ = [
    "BUILTIN_MODELS",
    "CheckpointError",
    "CounterFactRecord",
    "ExportError",
    "InterpEditError",
    "ModelNotFoundError",
    "MultiHopQuestion",
    "SubjectNotFoundError",
    "TokenizationError",
    "last_token_logits",
    "load_model",
    "to_hf",
    "__version__",
]

if TYPE_CHECKING:
    from interp_edit.batching import last_token_logits
    from interp_edit.errors import (
        CheckpointError,
        ExportError,
        InterpEditError,
        ModelNotFoundError,
        SubjectNotFoundError,
        TokenizationError,
    )
    from interp_edit.model import BUILTIN_MODELS, load_model, to_hf
    from interp_edit.prompts import CounterFactRecord, MultiHopQuestion


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'interp_edit' has no attribute {name!r}")
