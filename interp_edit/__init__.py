"""interp_edit: mechanistic interpretability of knowledge editing on TransformerLens.

The public API is re-exported here. Imports are lazy (PEP 562) so that ``import interp_edit``
and ``interp-edit --help`` stay quick; TransformerLens loads on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "AIEResult": "interp_edit.analysis",
    "AblationResult": "interp_edit.analysis",
    "Neuron": "interp_edit.analysis",
    "NeuronAttributionResult": "interp_edit.analysis",
    "Pathway": "interp_edit.analysis",
    "PathwayResult": "interp_edit.analysis",
    "ScoredNeuron": "interp_edit.analysis",
    "ablate_neurons": "interp_edit.analysis",
    "layer_attribution_scores": "interp_edit.analysis",
    "neuron_attribution": "interp_edit.analysis",
    "qv_pathways": "interp_edit.analysis",
    "CausalTraceResult": "interp_edit.analysis",
    "DLAResult": "interp_edit.analysis",
    "LogitLensResult": "interp_edit.analysis",
    "PatchingResult": "interp_edit.analysis",
    "activation_patch": "interp_edit.analysis",
    "attention_mlp_balance": "interp_edit.analysis",
    "attribution_patch": "interp_edit.analysis",
    "attribution_patch_error": "interp_edit.analysis",
    "average_indirect_effect": "interp_edit.analysis",
    "causal_trace": "interp_edit.analysis",
    "direct_logit_attribution": "interp_edit.analysis",
    "logit_lens": "interp_edit.analysis",
    "select_layer_window": "interp_edit.analysis",
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
    "AIEResult",
    "AblationResult",
    "Neuron",
    "NeuronAttributionResult",
    "Pathway",
    "PathwayResult",
    "ScoredNeuron",
    "ablate_neurons",
    "layer_attribution_scores",
    "neuron_attribution",
    "qv_pathways",
    "BUILTIN_MODELS",
    "CausalTraceResult",
    "CheckpointError",
    "CounterFactRecord",
    "DLAResult",
    "ExportError",
    "InterpEditError",
    "LogitLensResult",
    "ModelNotFoundError",
    "MultiHopQuestion",
    "PatchingResult",
    "SubjectNotFoundError",
    "TokenizationError",
    "activation_patch",
    "attention_mlp_balance",
    "attribution_patch",
    "attribution_patch_error",
    "average_indirect_effect",
    "causal_trace",
    "direct_logit_attribution",
    "last_token_logits",
    "load_model",
    "logit_lens",
    "select_layer_window",
    "to_hf",
    "__version__",
]

if TYPE_CHECKING:
    from interp_edit.analysis import (
        AblationResult,
        AIEResult,
        CausalTraceResult,
        DLAResult,
        LogitLensResult,
        Neuron,
        NeuronAttributionResult,
        PatchingResult,
        Pathway,
        PathwayResult,
        ScoredNeuron,
        ablate_neurons,
        activation_patch,
        attention_mlp_balance,
        attribution_patch,
        attribution_patch_error,
        average_indirect_effect,
        causal_trace,
        direct_logit_attribution,
        layer_attribution_scores,
        logit_lens,
        neuron_attribution,
        qv_pathways,
        select_layer_window,
    )
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
