"""TransformerLens configs for families TransformerLens 3.9 converts by hub name only.

TransformerLens' ``convert_hf_model_config`` writes Gemma and Gemma-2 configs as literal dicts
keyed on hub names (``google/gemma-2b``, ``google/gemma-2-9b`` …): a local folder or a model
object of these families raises ``NotImplementedError``. Its Phi-2 branch reads
``hf_config.partial_rotary_factor``, which transformers 5 keeps inside ``rope_parameters``
(``AttributeError``). Each function here builds the same ``HookedTransformerConfig`` fields as
TransformerLens' hub entry for that family, read from the Hugging Face config object instead of
copied from the hub name, so any size of the family loads offline. The weights are converted by
TransformerLens' own weight converters (``convert_gemma_weights`` adds Gemma's ``1 + w`` to the
RMSNorm gains and scales ``W_E`` by √d_model; ``convert_phi_weights``).

:data:`CONFIG_BUILDERS` maps a Hugging Face architecture name to its builder;
:func:`hooked_config_dict` applies TransformerLens' common post-processing (folded norms,
dtype, device) as ``get_pretrained_model_config`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from interp_edit.adapter import config_fields


def _rope(hf_config) -> dict:
    """transformers 5 keeps rotary settings in ``rope_parameters``; earlier versions at the top."""
    params = getattr(hf_config, "rope_parameters", None)
    return dict(params) if isinstance(params, dict) else {}


def _rope_theta(hf_config) -> float:
    theta = getattr(hf_config, "rope_theta", None)
    return float(theta if theta is not None else _rope(hf_config).get("rope_theta", 10000.0))


def _partial_rotary_factor(hf_config) -> float:
    factor = getattr(hf_config, "partial_rotary_factor", None)
    return float(factor if factor is not None else _rope(hf_config).get("partial_rotary_factor", 1.0))


def _head_dim(hf_config) -> int:
    head_dim = getattr(hf_config, "head_dim", None)
    return int(head_dim) if head_dim else hf_config.hidden_size // hf_config.num_attention_heads


def _activation(hf_config) -> str:
    """The activation Hugging Face's modelling code applies (Gemma's ``hidden_activation``
    takes precedence over ``hidden_act``, as in ``GemmaMLP``)."""
    return getattr(hf_config, "hidden_activation", None) or hf_config.hidden_act


def _dimensions(hf_config, head_dim: int, eps: float) -> dict[str, Any]:
    """The sizes every converted config shares, read from a Hugging Face config."""
    return {
        "d_model": hf_config.hidden_size,
        "d_head": head_dim,
        "n_heads": hf_config.num_attention_heads,
        "d_mlp": hf_config.intermediate_size,
        "n_layers": hf_config.num_hidden_layers,
        "n_ctx": hf_config.max_position_embeddings,
        "eps": eps,
        "d_vocab": hf_config.vocab_size,
        "initializer_range": hf_config.initializer_range,
    }


def _gemma_common(hf_config) -> dict[str, Any]:
    head_dim = _head_dim(hf_config)
    return {
        **_dimensions(hf_config, head_dim, hf_config.rms_norm_eps),
        "act_fn": _activation(hf_config),
        "normalization_type": "RMS",
        "rotary_base": _rope_theta(hf_config),
        "rotary_dim": head_dim,
        "positional_embedding_type": "rotary",
        "use_attn_scale": True,
        "n_key_value_heads": hf_config.num_key_value_heads,
        "gated_mlp": True,
        "final_rms": True,
    }


def gemma_config(hf_config) -> dict[str, Any]:
    """Gemma (``GemmaForCausalLM``): multi-query or multi-head attention, GeGLU MLP, RMSNorm with
    ``1 + w`` gains, √d_model embedding scale (both in the weight converter)."""
    return _gemma_common(hf_config)


def gemma2_config(hf_config) -> dict[str, Any]:
    """Gemma-2 (``Gemma2ForCausalLM``): Gemma plus norms after each sublayer, attention-score and
    final-logit soft-caps, ``query_pre_attn_scalar``⁻½ attention scale, and sliding-window
    attention on the layers ``layer_types`` marks ``sliding_attention`` (none when
    ``sliding_window`` is None or spans the whole context)."""
    cfg = _gemma_common(hf_config)
    cfg.update(
        use_normalization_before_and_after=True,
        attn_scores_soft_cap=float(hf_config.attn_logit_softcapping or -1.0),
        output_logits_soft_cap=float(hf_config.final_logit_softcapping or -1.0),
        attn_scale=float(hf_config.query_pre_attn_scalar) ** 0.5,
    )
    window = getattr(hf_config, "sliding_window", None)
    # A window as long as the context masks nothing the causal mask does not: global attention.
    if window and window < hf_config.max_position_embeddings:
        layer_types = getattr(hf_config, "layer_types", None) or [
            "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(hf_config.num_hidden_layers)
        ]
        cfg.update(
            use_local_attn=True,
            window_size=int(window),
            attn_types=["local" if t == "sliding_attention" else "global" for t in layer_types],
        )
    return cfg


def phi_config(hf_config) -> dict[str, Any]:
    """Phi-1/1.5/2 (``PhiForCausalLM``): parallel attention and MLP behind one LayerNorm, partial
    rotary (``partial_rotary_factor``, top-level or in ``rope_parameters``), biases everywhere."""
    head_dim = hf_config.hidden_size // hf_config.num_attention_heads
    if getattr(hf_config, "qk_layernorm", False):
        from interp_edit.errors import UnsupportedArchitectureError

        raise UnsupportedArchitectureError("Phi model with qk_layernorm=True: per-head q/k LayerNorm is not converted")
    return {
        **_dimensions(hf_config, head_dim, hf_config.layer_norm_eps),
        "act_fn": hf_config.hidden_act,
        "normalization_type": "LN",
        "positional_embedding_type": "rotary",
        "rotary_base": _rope_theta(hf_config),
        "rotary_dim": round(_partial_rotary_factor(hf_config) * head_dim),
        "use_attn_scale": True,
        "parallel_attn_mlp": True,
        "default_prepend_bos": False,
    }


#: Hugging Face architecture -> builder of its HookedTransformerConfig fields.
CONFIG_BUILDERS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "GemmaForCausalLM": gemma_config,
    "Gemma2ForCausalLM": gemma2_config,
    "PhiForCausalLM": phi_config,
}


def hooked_config_dict(architecture: str, hf_config, *, model_name: str, fold_ln: bool, device, dtype) -> dict:
    """The complete HookedTransformerConfig fields for ``architecture`` (a key of
    :data:`CONFIG_BUILDERS`), post-processed as TransformerLens' ``get_pretrained_model_config``
    does for a hub model: folded norms become ``LNPre`` / ``RMSPre``, no tokenizer name (never
    looked up on the hub), weights not initialised (they are loaded)."""
    cfg = CONFIG_BUILDERS[architecture](hf_config)
    cfg.setdefault("default_prepend_bos", True)
    if fold_ln:
        cfg["normalization_type"] = {"LN": "LNPre", "RMS": "RMSPre"}[cfg["normalization_type"]]
    cfg.update(
        original_architecture=architecture,
        model_name=model_name,
        tokenizer_name=None,
        init_weights=False,
        from_checkpoint=False,
        device=device,
        n_devices=1,
        dtype=dtype,
    )
    return cfg


# --- what no backend covers, read from the Hugging Face config (both backends ask here) -------
#: Config fields that count a mixture-of-experts MLP's experts (at the top level, or inside a
#: sub-config such as DBRX's ``ffn_config`` or a multimodal model's ``text_config``): one of them
#: above 1 means the MLP is a router over experts.
MOE_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "num_routed_experts", "moe_num_experts", "n_experts")

#: Families whose attention always adds ALiBi biases (no config field says so).
ALIBI_MODEL_TYPES = ("bloom",)


def _config_items(data: dict, path: str = "", depth: int = 2):
    """(dotted field name, value) of a config dict and of the dicts it nests (sub-configs)."""
    for key, value in data.items():
        name = f"{path}{key}"
        yield name, key, value
        if isinstance(value, dict) and depth > 0:
            yield from _config_items(value, name + ".", depth - 1)


def uncovered_properties(hf_config) -> list[str]:
    """What ``hf_config`` (a Hugging Face config) describes that neither backend covers, each
    naming the property and the config field that says so: mixture-of-experts MLPs (any
    :data:`MOE_FIELDS` above 1), ALiBi attention biases (Bloom; Falcon's ``alibi``; MPT's
    ``attn_config.alibi``; ``position_embedding_type='alibi'``), and the fields of
    :data:`~interp_edit.adapter.config_fields.REFUSED_FIELDS` (post-norm OPT, bidirectional
    attention ...). Read from the config alone: nothing is converted or built."""
    data = hf_config.to_dict()
    model_type = str(getattr(hf_config, "model_type", "") or "")
    missing = []
    experts = [(name, value) for name, key, value in _config_items(data)
               if key in MOE_FIELDS and isinstance(value, int) and not isinstance(value, bool) and value > 1]
    experts += [(name, "on") for name, key, value in _config_items(data) if key == "enable_moe_block" and value is True]
    if experts:
        name, value = experts[0]
        missing.append(f"mixture-of-experts MLPs (num_experts={value}), from the config field {name}")
    alibi = [name for name, key, value in _config_items(data)
             if (key == "alibi" and value is True and "." in name)  # top-level: config_fields.REFUSED_FIELDS
             or (key == "position_embedding_type" and value == "alibi")]
    if model_type in ALIBI_MODEL_TYPES:
        alibi.insert(0, f"model_type={model_type!r}, always")
    if alibi:
        missing.append(f"ALiBi attention biases (linear position biases, no rotary or learned positions), from {alibi[0]}")
    return missing + config_fields.refused_properties(hf_config)


def check_covered(hf_config, architecture: str) -> None:
    """Raise :class:`~interp_edit.errors.UnsupportedArchitectureError` naming every property of
    ``hf_config`` that no backend covers (:func:`uncovered_properties`); called by ``load_model``
    for every Hugging Face model, object or folder, on either backend, before any weight is
    converted or the model is wrapped."""
    missing = uncovered_properties(hf_config)
    if missing:
        from interp_edit.errors import UnsupportedArchitectureError

        raise UnsupportedArchitectureError(
            f"model architecture {architecture!r} cannot run on backend='bridge' nor backend='hooked': "
            f"interp_edit does not cover " + "; ".join(missing)
        )
