"""The architecture description's forward-changing properties, read from a Hugging Face config
field by field: the one table (:data:`FIELD_RULES`) that says which config field sets which
property of :class:`~interp_edit.adapter.architecture.Architecture`, and the family constants
(:data:`FAMILY_CONSTANTS`) for what a family always does and no field says.

>>> describe_hf_config(StableLmConfig(use_parallel_residual=True, qk_layernorm=True))
{'parallel_blocks': True, 'qk_norm': True, 'attn_bias': False, ...}

:func:`describe_hf_config` applies, per property: the family constant (by ``model_type``),
then the rules of :data:`FIELD_RULES` whose field the config has, in table order (a later rule
of the same property wins only where its field is present). :mod:`interp_edit.adapter.architecture`
reads it for every model that came from Hugging Face (the bridge: always; the hooked backend:
where ``check_supported`` was given the Hugging Face config, and then it checks that the
HookedTransformer's own config says the same).

:data:`NOT_DESCRIBED` lists, once, the config fields of the family matrix's config classes
that change nothing the description says, with the reason; :data:`SIZE_FIELDS` the sizes (the
description's ``n_layers`` / ``d_model`` / ... read them). ``tests/test_architecture_fields.py``
holds every field of every matrix config class to one of the three.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: The description's properties this module derives (the others, ``norm`` / ``gated_mlp`` /
#: ``positional`` / the sizes, follow from the family and the sizes).
PROPERTIES = ("parallel_blocks", "qk_norm", "attn_bias", "mlp_bias", "sliding_window", "rotary_dim", "post_norms",
              "n_kv_heads", "attn_scale", "logit_softcap", "attn_softcap", "logit_scale", "embedding_scale",
              "shared_norm", "residual_multiplier", "input_norms", "qk_norm_whole")


def _rope(config) -> dict:
    params = getattr(config, "rope_parameters", None)
    return dict(params) if isinstance(params, dict) else {}


def _field(config, name: str):
    """A top-level field, or (``rope_parameters.x``) one inside ``rope_parameters``."""
    if name.startswith("rope_parameters."):
        return _rope(config).get(name.split(".", 1)[1])
    return getattr(config, name, None)


def _has(config, name: str) -> bool:
    if name.startswith("rope_parameters."):
        return name.split(".", 1)[1] in _rope(config)
    return name in config.to_dict()


def head_dim(config) -> int:
    d = getattr(config, "head_dim", None)
    d_model = getattr(config, "hidden_size", None) or config.n_embd
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    return int(d) if d else d_model // heads


def n_ctx(config) -> int | None:
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def effective_window(window, context: int | None) -> int | None:
    """A sliding window, or None where it masks nothing the causal mask does not (unset, 0, or
    at least the context length)."""
    if not window or window <= 0:
        return None
    return None if context is not None and window >= context else int(window)


def _sliding_window(config, value):
    if _has(config, "use_sliding_window") and not config.use_sliding_window:
        return None  # Qwen2 / Qwen3: the window is off unless use_sliding_window
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, (list, tuple)) and "sliding_attention" not in layer_types:
        return None  # no layer slides (Qwen2: only layers from max_window_layers on do)
    return effective_window(value, n_ctx(config))


def _softcap(value):
    return float(value) if value is not None and value > 0 else None


@dataclass(frozen=True)
class FieldRule:
    """Config ``field`` (``rope_parameters.x``: inside ``rope_parameters``) sets ``property`` to
    ``derive(config, value)``; ``families``: the config classes (``model_type``) that have it."""

    field: str
    property: str
    derive: Callable[[Any, Any], Any]
    families: str
    #: config classes (``model_type``) whose field of this name is an alias another rule reads
    not_for: tuple[str, ...] = ()


def _flag(config, value) -> bool:
    return bool(value)


def _falcon_shared_norm(config) -> bool:
    """Falcon's parallel blocks read one norm (``input_layernorm``) unless the new decoder has
    two (``ln_attn`` / ``ln_mlp``: ``num_ln_in_parallel_attn`` 2, which None means there)."""
    if not config.parallel_attn:
        return False  # sequential: input_layernorm and post_attention_layernorm
    if getattr(config, "new_decoder_architecture", False):
        return getattr(config, "num_ln_in_parallel_attn", None) == 1
    return True


#: The one table: config field -> description property. Read in order; a rule applies where the
#: config has its field (``None`` values too: e.g. ``sliding_window=None`` is "no window").
FIELD_RULES: tuple[FieldRule, ...] = (
    # parallel residual: attention and MLP both read resid_pre
    FieldRule("use_parallel_residual", "parallel_blocks", _flag, "gpt_neox, stablelm"),
    FieldRule("parallel_attn", "parallel_blocks", _flag, "falcon"),
    FieldRule("new_decoder_architecture", "parallel_blocks", lambda c, v: bool(v) or bool(c.parallel_attn),
              "falcon (the new decoder: parallel blocks, two norms)"),
    # one input norm per parallel block, read by attention and MLP (ln2 is ln1)
    FieldRule("use_parallel_residual", "shared_norm", _flag, "stablelm (parallel: input_layernorm only)",
              not_for=("gpt_neox",)),  # GPT-NeoX's parallel blocks have two norms
    FieldRule("parallel_attn", "shared_norm", lambda c, v: _falcon_shared_norm(c),
              "falcon (the old decoder's parallel blocks, or num_ln_in_parallel_attn=1)"),
    # per-head q/k norm
    FieldRule("qk_layernorm", "qk_norm", _flag, "stablelm, phi, persimmon"),
    FieldRule("use_qk_norm", "qk_norm", _flag, "cohere"),
    # biases
    FieldRule("attention_bias", "attn_bias", _flag,
              "llama, gpt_neox, qwen3, gemma, gemma2, gemma3_text, granite, olmo, olmo2, olmo3, smollm3"),
    FieldRule("use_qkv_bias", "attn_bias", _flag, "stablelm"),
    FieldRule("use_bias", "attn_bias", _flag, "starcoder2"),
    FieldRule("use_bias", "mlp_bias", _flag, "starcoder2"),
    FieldRule("enable_bias", "attn_bias", _flag, "opt"),
    FieldRule("enable_bias", "mlp_bias", _flag, "opt"),
    FieldRule("mlp_bias", "mlp_bias", _flag, "llama, granite, smollm3"),
    FieldRule("bias", "attn_bias", _flag, "falcon"),
    FieldRule("bias", "mlp_bias", _flag, "falcon"),
    # sliding windows (Qwen2 / Qwen3: only with use_sliding_window)
    FieldRule("sliding_window", "sliding_window", _sliding_window,
              "mistral, qwen2, qwen3, gemma2, gemma3_text, starcoder2, phi3, smollm3, olmo3"),
    FieldRule("use_sliding_window", "sliding_window",
              lambda c, v: _sliding_window(c, getattr(c, "sliding_window", None)), "qwen2, qwen3, smollm3"),
    FieldRule("window_size", "sliding_window",
              lambda c, v: effective_window(v, n_ctx(c)) if "local" in (c.attention_layers or ()) else None,
              "gpt_neo (its 'local' layers)"),
    # partial rotary
    FieldRule("rotary_dim", "rotary_dim", lambda c, v: int(v) if v else head_dim(c), "gptj"),
    FieldRule("rotary_pct", "rotary_dim", lambda c, v: round(float(v) * head_dim(c)), "gpt_neox (transformers 4)"),
    FieldRule("partial_rotary_factor", "rotary_dim", lambda c, v: round(float(v) * head_dim(c)), "phi, stablelm (transformers 4)"),
    FieldRule("rope_parameters.partial_rotary_factor", "rotary_dim", lambda c, v: round(float(v) * head_dim(c)),
              "gpt_neox, phi, stablelm (transformers 5)"),
    # multi-query / grouped-query attention
    FieldRule("num_key_value_heads", "n_kv_heads",
              lambda c, v: int(v) if v else int(c.num_attention_heads), "llama, mistral, qwen2, qwen3, gemma, ...",
              not_for=("falcon", "gpt_bigcode")),  # there: derived from multi_query / num_kv_heads
    FieldRule("multi_query", "n_kv_heads", lambda c, v: int(c.num_kv_heads) if getattr(c, "new_decoder_architecture", False)
              else (1 if v else int(c.num_attention_heads)), "gpt_bigcode, falcon (the old decoder)"),
    # attention-score scale, soft-caps, logit scales, embedding multipliers
    FieldRule("scale_attn_weights", "attn_scale", lambda c, v: math.sqrt(head_dim(c)) if v else 1.0, "gpt2, gpt_bigcode"),
    FieldRule("attention_multiplier", "attn_scale", lambda c, v: 1.0 / float(v), "granite (scores times it)"),
    FieldRule("query_pre_attn_scalar", "attn_scale", lambda c, v: math.sqrt(float(v)), "gemma2"),
    FieldRule("attn_logit_softcapping", "attn_softcap", lambda c, v: _softcap(v), "gemma2"),
    FieldRule("final_logit_softcapping", "logit_softcap", lambda c, v: _softcap(v), "gemma2"),
    FieldRule("logit_scale", "logit_scale", lambda c, v: float(v), "cohere (logits times it)"),
    FieldRule("logits_scaling", "logit_scale", lambda c, v: 1.0 / float(v), "granite (logits divided by it)"),
    FieldRule("embedding_multiplier", "embedding_scale", lambda c, v: float(v), "granite"),
    # what each sublayer's output is multiplied by before it joins the residual
    FieldRule("residual_multiplier", "residual_multiplier", lambda c, v: 1.0 if v is None else float(v),
              "granite (resid + residual_multiplier · sublayer output)"),
)


def _sqrt_d(config) -> float:
    return math.sqrt(config.hidden_size)


#: What a family always does and no config field says (by ``model_type``); a rule of
#: :data:`FIELD_RULES` overrides it where the config has the field.
FAMILY_CONSTANTS: dict[str, dict[str, Any]] = {
    "gpt2": dict(attn_bias=True, mlp_bias=True),
    "gptj": dict(parallel_blocks=True, shared_norm=True, attn_bias=False, mlp_bias=True),
    "gpt_neox": dict(mlp_bias=True),
    "opt": dict(),
    "phi": dict(parallel_blocks=True, shared_norm=True, attn_bias=True, mlp_bias=True),
    "cohere": dict(parallel_blocks=True, shared_norm=True),  # one LayerNorm (gain, no bias) per block
    "qwen2": dict(attn_bias=True),  # q/k/v biases, always (o_proj none)
    "qwen3": dict(qk_norm=True),
    "gemma": dict(embedding_scale=_sqrt_d),
    "gemma2": dict(embedding_scale=_sqrt_d, post_norms=True),
    "gemma3_text": dict(embedding_scale=_sqrt_d, post_norms=True, qk_norm=True),
    "gpt_neo": dict(attn_scale=1.0, mlp_bias=True),  # GPT-Neo does not scale its scores; q/k/v without biases
    "gpt_bigcode": dict(attn_bias=True, mlp_bias=True),
    "falcon": dict(),
    "olmo": dict(),
    # no norm before either sublayer: an RMSNorm after each (post_norms), q/k RMSNorms over the whole projection
    "olmo2": dict(post_norms=True, input_norms=False, qk_norm=True, qk_norm_whole=True),
    "olmo3": dict(post_norms=True, input_norms=False, qk_norm=True, qk_norm_whole=True),
}

#: Every property's value where neither a family constant nor a field says otherwise.
DEFAULTS: dict[str, Any] = dict(
    parallel_blocks=False, qk_norm=False, attn_bias=False, mlp_bias=False, sliding_window=None, rotary_dim=None,
    post_norms=False, n_kv_heads=None, attn_scale=None, logit_softcap=None, attn_softcap=None, logit_scale=1.0,
    embedding_scale=1.0, shared_norm=False, residual_multiplier=1.0, input_norms=True, qk_norm_whole=False,
)

#: Learned-position families (no rotary, so no rotary_dim).
_LEARNED_POSITIONS = ("gpt2", "opt", "gpt_neo", "gpt_bigcode")


def rules_for(config) -> list[FieldRule]:
    """The rules of :data:`FIELD_RULES` whose field ``config`` has (and reads as the rule says)."""
    model_type = str(getattr(config, "model_type", "") or "")
    return [rule for rule in FIELD_RULES if _has(config, rule.field) and model_type not in rule.not_for]


def describe_hf_config(config) -> dict[str, Any]:
    """The description's forward-changing properties (:data:`PROPERTIES`) of a Hugging Face
    config: defaults, then the family constants, then the config's fields (:data:`FIELD_RULES`)."""
    model_type = str(getattr(config, "model_type", "") or "")
    out = dict(DEFAULTS)
    for prop, value in FAMILY_CONSTANTS.get(model_type, {}).items():
        out[prop] = value(config) if callable(value) else value
    for rule in rules_for(config):
        out[rule.property] = rule.derive(config, _field(config, rule.field))
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    if out["n_kv_heads"] is None:
        out["n_kv_heads"] = int(heads)
    if out["attn_scale"] is None:
        out["attn_scale"] = math.sqrt(head_dim(config))
    if model_type in _LEARNED_POSITIONS:
        out["rotary_dim"] = None
    elif out["rotary_dim"] is None:
        out["rotary_dim"] = head_dim(config)
    return out


#: Config fields that are sizes (read into the description's ``n_layers``, ``d_model``,
#: ``n_heads``, ``d_head``, ``d_mlp``, ``n_kv_heads`` or the vocabulary / context length).
SIZE_FIELDS = frozenset({
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "head_dim",
    "max_position_embeddings", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "ffn_dim",
    "num_layers", "num_heads", "ffn_hidden_size",
    "num_kv_heads",  # Falcon's; the description's n_kv_heads reads it (num_key_value_heads, multi_query)
})

_EVAL = "dropout: off in eval mode, where every analysis and editor runs models"
_TOKENS = "special-token ids: tokenization, not the forward"
_NONLINEAR = ("the MLP nonlinearity: analyses read its input and output at mlp.hook_pre / mlp.hook_post and never "
              "recompute it; both backends convert it and the load-time equivalence check holds them to it")
_EPS = "norm epsilon: read from the loaded model's norms (params.norm_eps, TransformerLens cfg.eps), never from the description"
_ROPE = ("rotary frequencies: inside attention (hook_q / hook_k are before rotary, hook_pattern after); analyses never "
         "recompute them; converters read them and the equivalence check holds them to it")

#: Fields of the matrix's config classes that change nothing the description says, once, with
#: the reason. A field here that a converter drops still cannot load silently wrong: the
#: load-time equivalence check (interp_edit.adapter.equivalence) refuses it.
NOT_DESCRIBED: dict[str, str] = {
    # bookkeeping
    "use_cache": "key/value caching: the same outputs", "return_dict": "output container",
    "output_attentions": "extra outputs only", "output_hidden_states": "extra outputs only",
    "initializer_range": "initialisation only (the weights are loaded)", "init_std": "initialisation only",
    "tie_word_embeddings": "W_U is read from the model (tied or not, the weights are what they are)",
    "is_decoder": "always a decoder here", "is_encoder_decoder": "always a decoder here",
    "max_window_layers": "read through use_sliding_window (which layers slide); without a window nothing",
    "pretraining_tp": "a numerically equivalent split of the projections (tensor-parallel pre-training)",
    "add_cross_attention": "cross-attention runs only with encoder states, never given to a causal LM here",
    "summary_type": "sequence-classification head only", "summary_use_proj": "sequence-classification head only",
    "summary_activation": "sequence-classification head only", "summary_proj_to_labels": "sequence-classification head only",
    "summary_first_dropout": "sequence-classification head only", "classifier_dropout": "classification head only",
    "layerdrop": "drops layers in training only",
    # dropout
    **{f: _EVAL for f in ("attn_pdrop", "resid_pdrop", "embd_pdrop", "attention_dropout", "hidden_dropout", "dropout",
                          "embedding_dropout", "residual_dropout", "embed_dropout", "resid_dropout")},
    # tokens
    **{f: _TOKENS for f in ("bos_token_id", "eos_token_id", "pad_token_id")},
    # nonlinearity, eps, rotary frequencies
    **{f: _NONLINEAR for f in ("activation_function", "hidden_act", "hidden_activation", "activation")},
    **{f: _EPS for f in ("layer_norm_epsilon", "layer_norm_eps", "rms_norm_eps", "norm_epsilon")},
    **{f: _ROPE for f in ("rope_parameters.rope_theta", "rope_parameters.rope_type", "rope_theta",
                          "rope_parameters.full_attention", "rope_parameters.sliding_attention",
                          "original_max_position_embeddings")},
    **{f: ("which layers apply rotary (SmolLM3's NoPE layers): inside attention, after hook_q / hook_k, which analyses "
           "never recompute; the equivalence check holds the conversion to it") for f in ("no_rope_layers", "no_rope_layer_interval")},
    "attention_layers": "read through window_size (which layers are local); GPT-Neo's global layers see the whole context",
    "attention_types": "the same as attention_layers, run-length encoded",
    "_sliding_window_pattern": "read through sliding_window and layer_types (which layers slide)",
    **{f: "softmax in float32: the same numbers to rounding" for f in ("attention_softmax_in_fp32",
                                                                      "scale_attention_softmax_in_fp32")},
    "num_ln_in_parallel_attn": ("Falcon's norms per parallel block: read through parallel_attn (shared_norm: one norm "
                                "is ln1 and ln2 both; two, the new decoder's default, are ln1 / ln2)"),
    "scale_attn_by_inverse_layer_idx": ("GPT-2 attention scores divided by layer+1: inside the score computation, which "
                                        "analyses read at hook_pattern and never recompute; the hooked converter drops it "
                                        "and the equivalence check refuses that load (the bridge runs it)"),
    "reorder_and_upcast_attn": "GPT-2 computes the scores in float32: the same numbers to rounding",
}

#: Fields of the matrix's config classes whose value (the predicate true) makes the load refuse
#: on every backend (not described: no analysis or editor covers what they switch on), with why.
REFUSED_FIELDS: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    "do_layer_norm_before": (lambda c, v: v is False, "post-norm blocks (OPT-350m: the norm after each sublayer)"),
    "word_embed_proj_dim": (lambda c, v: v is not None and v != c.hidden_size,
                            "projections between a narrower embedding and the residual (OPT-350m's project_in/out)"),
    "layer_norm_elementwise_affine": (lambda c, v: v is False, "LayerNorms without gains or biases"),
    "_remove_final_layer_norm": (lambda c, v: v is True, "no final norm before the unembedding"),
    "use_bidirectional_attention": (lambda c, v: v is True, "bidirectional (non-causal) attention"),
    "clip_qkv": (lambda c, v: v is not None, "queries, keys and values clamped inside attention (OLMo's clip_qkv): "
                 "analyses that recompute them from the residual would not clamp"),
    # layer_types: otherwise read through sliding_window (which layers slide)
    "layer_types": (lambda c, v: bool(set(v or ()) - {"full_attention", "sliding_attention"}),
                    "layers that are not softmax attention (Qwen3.5's 'linear_attention': Gated DeltaNet), from layer_types"),
    "hidden_size_per_layer_input": (lambda c, v: bool(v), "per-layer input embeddings added inside every layer "
                                                         "(Gemma-4's hidden_size_per_layer_input)"),
    "per_layer_config": (lambda c, v: bool(v), "layers of different shapes (per_layer_config: head sizes per layer)"),
    "num_kv_shared_layers": (lambda c, v: bool(v), "layers that reuse an earlier layer's keys and values"),
    "alibi": (lambda c, v: v is True, "ALiBi attention biases (linear position biases, no rotary or learned positions)"),
}


def refused_properties(config) -> list[str]:
    """What ``config`` switches on that no analysis covers (:data:`REFUSED_FIELDS`), each naming
    the property and the field."""
    data = config.to_dict()
    return [f"{why} ({field}={data[field]!r})" for field, (refuses, why) in REFUSED_FIELDS.items()
            if field in data and refuses(config, data[field])]


#: (model_type, field) -> (predicate on the value, what) for what TransformerLens' HookedTransformer
#: conversion (the hooked backend) does not convert though the bridge runs it: the hooked backend
#: must refuse these (before converting: its converters crash or drop them), the bridge loads them.
HOOKED_GAPS: dict[tuple[str, str], tuple[Callable[[Any, Any], bool], str]] = {
    ("gpt_neox", "attention_bias"): (lambda c, v: v is False, "GPT-NeoX attention without biases"),
    ("opt", "enable_bias"): (lambda c, v: v is False, "OPT without biases"),
    ("phi", "num_key_value_heads"): (lambda c, v: v not in (None, c.num_attention_heads), "Phi with grouped-query attention"),
    ("phi", "qk_layernorm"): (lambda c, v: v is True, "Phi with per-head q/k LayerNorm"),
    ("gpt_neo", "intermediate_size"): (lambda c, v: v is not None and v != 4 * c.hidden_size,
                                      "GPT-Neo with an MLP width other than 4 × hidden_size (the converter assumes 4×)"),
    ("llama", "attention_bias"): (lambda c, v: v is True, "Llama attention biases"),
    ("llama", "mlp_bias"): (lambda c, v: v is True, "Llama MLP biases"),
    # these converters take d_head = hidden_size / num_attention_heads whatever head_dim says
    **{(family, "head_dim"): (lambda c, v: v is not None and v != c.hidden_size // c.num_attention_heads,
                              f"{name} with head_dim other than hidden_size / num_attention_heads")
       for family, name in (("llama", "Llama"), ("qwen2", "Qwen2"), ("phi3", "Phi-3"))},
}


def hooked_gaps(config) -> list[str]:
    """What ``config`` uses that the hooked backend's conversion does not convert
    (:data:`HOOKED_GAPS`), each naming the field; empty where it converts all of it."""
    model_type = str(getattr(config, "model_type", "") or "")
    data = config.to_dict()
    return [f"{why} ({field}={data[field]!r})" for (family, field), (gap, why) in HOOKED_GAPS.items()
            if family == model_type and field in data and gap(config, data[field])]


#: The same for the bridge backend (TransformerLens' TransformerBridge adapters): what its
#: adapter for the family cannot boot.
BRIDGE_FIELD_GAPS: dict[tuple[str, str], tuple[Callable[[Any, Any], bool], str]] = {
    ("gpt_neox", "attention_bias"): (lambda c, v: v is False, "GPT-NeoX attention without biases (the bridge's q/k/v split asserts a bias)"),
    ("falcon", "num_kv_heads"): (lambda c, v: bool(c.new_decoder_architecture) and v != 1,
                                 "Falcon with several key/value heads (the bridge's fused q/k/v split assumes one)"),
    ("falcon", "num_ln_in_parallel_attn"): (lambda c, v: bool(c.new_decoder_architecture) and v == 1,
                                            "Falcon's new decoder with one norm per block (the bridge's adapter reads "
                                            "ln_attn, which such a block lacks)"),
    ("falcon", "multi_query"): (lambda c, v: not c.new_decoder_architecture and not v,
                                "Falcon's old decoder with multi-head attention (the bridge's fused q/k/v split assumes "
                                "one key/value head)"),
    ("phi", "qk_layernorm"): (lambda c, v: v is True, "Phi with per-head q/k LayerNorm (the bridge's Phi adapter has no "
                                                      "q/k norm: it refuses to boot, or would skip it)"),
    ("gpt_bigcode", "multi_query"): (lambda c, v: not v, "GPT-BigCode with multi-head attention (the bridge's adapter "
                                                          "splits q/k/v for multi-query attention only)"),
    ("gpt2", "scale_attn_weights"): (lambda c, v: v is False, "GPT-2 with unscaled attention scores (the bridge's "
                                                              "attention divides them by sqrt(d_head) whatever the config "
                                                              "says)"),
}


def conversion_gaps(config, backend: str) -> list[str]:
    """What ``config`` uses that ``backend`` (``"hooked"`` / ``"bridge"``) does not convert."""
    if backend == "hooked":
        return hooked_gaps(config)
    model_type = str(getattr(config, "model_type", "") or "")
    data = config.to_dict()
    return [f"{why} ({field}={data[field]!r})" for (family, field), (gap, why) in BRIDGE_FIELD_GAPS.items()
            if family == model_type and field in data and gap(config, data[field])]
