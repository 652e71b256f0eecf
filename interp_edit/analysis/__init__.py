"""First-class analyses: each is ``fn(model, inputs, ...) -> XResult`` with ``.plot()`` and ``.save()``."""

from interp_edit.analysis.ablation import AblationResult, ablate_neurons
from interp_edit.analysis.aie import AIEResult, average_indirect_effect
from interp_edit.analysis.attribution import (
    Neuron,
    NeuronAttributionResult,
    ScoredNeuron,
    layer_attribution_scores,
    neuron_attribution,
)
from interp_edit.analysis.contrast import AttributionDiffResult, attribution_diff
from interp_edit.analysis.edit_token_aie import EditTokenAIE, TokenFact, edit_token_aie
from interp_edit.analysis.layers import attention_mlp_balance, select_layer_window
from interp_edit.analysis.lens import DLAResult, LogitLensResult, direct_logit_attribution, logit_lens
from interp_edit.analysis.patching import PatchingResult, activation_patch, attribution_patch, attribution_patch_error
from interp_edit.analysis.pathways import Pathway, PathwayResult, qv_pathways
from interp_edit.analysis.tracing import CausalTraceResult, causal_trace

__all__ = [
    "EditTokenAIE",
    "TokenFact",
    "edit_token_aie",
    "AttributionDiffResult",
    "attribution_diff",
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
    "CausalTraceResult",
    "DLAResult",
    "LogitLensResult",
    "PatchingResult",
    "activation_patch",
    "attention_mlp_balance",
    "attribution_patch",
    "attribution_patch_error",
    "average_indirect_effect",
    "causal_trace",
    "direct_logit_attribution",
    "logit_lens",
    "select_layer_window",
]
