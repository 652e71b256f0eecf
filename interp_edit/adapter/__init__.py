"""The one adapter between interp_edit and TransformerLens.

Every TransformerLens-specific call of the toolkit lives in this package, and every difference
between model families (parallel blocks, norms, gates, attention groups, positional schemes,
soft-caps, embedding scales) is described here once, in :mod:`interp_edit.adapter.architecture`,
and read by every analysis and editor.

- :mod:`~interp_edit.adapter.loading` — ``load_model``: the toy world, local Hugging Face folders
  and model objects (converted offline), hub names, checkpoints;
- :mod:`~interp_edit.adapter.families` — configs TransformerLens knows by hub name only (Gemma,
  Gemma-2, Phi-2 from a local folder), converted from the Hugging Face config;
- :mod:`~interp_edit.adapter.bridge` — the TransformerBridge backend (``backend="bridge"``):
  everything that differs from HookedTransformer, in one place;
- :mod:`~interp_edit.adapter.bridge_attention` — on the bridge, GPT-J's and GPT-Neo's attention
  computed by interp_edit through the bridge's hook points (TransformerLens' generic attention
  discards edits of the pattern);
- :mod:`~interp_edit.adapter.architecture` — :class:`Architecture`, the description of a loaded
  model that everything else reads;
- :mod:`~interp_edit.adapter.hooks` — hook names, forwards with temporary hooks, partial forwards,
  unembedding (with the logit soft-cap), persistent hooks;
- :mod:`~interp_edit.adapter.params` — weights by name, the weights an ``Edit`` may change and
  their hook equivalents, fingerprints;
- :mod:`~interp_edit.adapter.shared_norm` — ``shared_first_norm``: a block's first norm computed
  once for its queries, keys and values (TransformerLens computes it three times), inside every
  forward the adapter runs;
- :mod:`~interp_edit.adapter.fused` — ``fused_kernels``: TransformerLens' norms and attention
  run as PyTorch's fused kernels (within float rounding), inside the editors' optimisation loops;
- :mod:`~interp_edit.adapter.forwards` — how those two contexts replace a module's ``forward`` and
  give it back;
- :mod:`~interp_edit.adapter.layout` — attention weights stored in the order the hooked
  forward reads them (no per-forward weight copies);
- :mod:`~interp_edit.adapter.export` — ``to_hf`` (GPT-2-shaped models);
- :mod:`~interp_edit.adapter.tiny` — tiny randomly initialised Hugging Face models of every
  supported family, for tests and benchmarks;
- :mod:`~interp_edit.adapter.identity` — ``known_model``: the published model (GPT-2 XL, GPT-J,
  Llama-2/3, Qwen2.5/3, Mistral) a loaded model is, from its architecture and dimensions (the
  editors' presets are looked up by it);
- :mod:`~interp_edit.adapter.tiny_tokenizers` — Llama-, Gemma- and Qwen-style tokenizers
  trained offline on the toy world's texts.
"""

from interp_edit.adapter.architecture import Architecture, architecture
from interp_edit.adapter.bridge import backend_of
from interp_edit.adapter.equivalence import LoadCheck, load_check
from interp_edit.adapter.export import to_hf
from interp_edit.adapter.fused import KERNELS, fused_kernels
from interp_edit.adapter.hooks import (
    add_persistent_hook,
    cached_keys_values,
    forward_from_layer,
    forward_to_layer,
    hook_counts,
    hook_name,
    remove_persistent_hook,
    residual_at_layer,
    residual_from_layer,
    run_with_cache,
    run_with_hooks,
    sublayer_output_hooks,
    supports_padded_prefix_kv,
    supports_prefix_kv,
    unembed,
    unembedding_processing,
)
from interp_edit.adapter.layout import attention_layout_is_read_order, store_attention_as_read
from interp_edit.adapter.loading import (
    BUILTIN_MODELS,
    CONFIG_FILE,
    HUB_PROCESSING,
    WEIGHTS_FILE,
    _read_json,  # noqa: F401  (used by interp_edit.toyworld)
    build_hooked_transformer,
    load_checkpoint,
    load_model,
    model_config_dict,
    save_checkpoint,
)
from interp_edit.adapter.params import (
    applied_edit_stack,
    delta_hook_sites,
    delta_hooks,
    forget_fingerprint,
    frozen_parameters,
    get_parameter,
    has_parameter,
    layer_weight,
    model_fingerprint,
    norm_bias,
    norm_centres,
    norm_weight,
    padded_lengths,
    parameter_layer,
    post_norm_preimage,
    token_embeddings,
    weight_checksum,
    weight_matrix_shape,
)
from interp_edit.adapter.shared_norm import shared_first_norm

__all__ = [
    "LoadCheck",
    "load_check",
    "Architecture", "architecture", "to_hf", "add_persistent_hook", "cached_keys_values", "forward_from_layer", "forward_to_layer", "residual_at_layer",
    "hook_counts", "hook_name", "remove_persistent_hook", "residual_from_layer", "run_with_cache", "run_with_hooks", "sublayer_output_hooks",
    "unembed", "unembedding_processing", "BUILTIN_MODELS", "CONFIG_FILE", "HUB_PROCESSING", "WEIGHTS_FILE", "build_hooked_transformer",
    "load_checkpoint", "load_model", "model_config_dict", "save_checkpoint", "delta_hook_sites", "delta_hooks", "forget_fingerprint", "frozen_parameters",
    "get_parameter", "layer_weight", "model_fingerprint", "norm_bias", "norm_centres", "norm_weight",
    "parameter_layer", "post_norm_preimage", "weight_matrix_shape", "has_parameter", "supports_padded_prefix_kv", "supports_prefix_kv", "token_embeddings", "padded_lengths",
    "backend_of", "applied_edit_stack", "weight_checksum", "attention_layout_is_read_order", "store_attention_as_read",
    "shared_first_norm", "fused_kernels", "KERNELS",
]
