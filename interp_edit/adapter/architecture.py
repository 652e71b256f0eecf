"""What differs between model families, described once and read by every analysis and editor.

>>> arch = architecture(model)           # derived from the loaded model's config, cached on it
>>> arch.parallel_blocks                 # GPT-J, GPT-NeoX / Pythia, Phi-2: attention and MLP read resid_pre
>>> arch.ffn_input_site                  # "resid_pre" there, "resid_mid" for sequential blocks
>>> arch.post_norms                      # Gemma-2: a norm between W_out / W_O and the residual
>>> arch.input_norms                     # False for OLMo-2 / OLMo-3: no norm before either sublayer
>>> arch.shared_norm                     # Phi-2, Cohere, Falcon-7B: the MLP reads the attention's input norm
>>> arch.kv_head(h)                      # the key/value head that query head h reads (GQA / MQA)

Nothing outside :mod:`interp_edit.adapter` asks a TransformerLens config field or assumes a
GPT-2 hook name: it asks this description. :func:`check_supported` is run at load time and
names the property a model has that the toolkit does not cover.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from interp_edit.adapter import bridge, config_fields
from interp_edit.errors import UnsupportedArchitectureError

_ARCH_ATTR = "_interp_edit_architecture"

#: A block's input norms (before attention / before the MLP): absent where the architecture has
#: none (``Architecture.input_norms`` False: OLMo-2 / OLMo-3).
INPUT_NORMS = ("ln1", "ln2")


@dataclass(frozen=True)
class Architecture:
    """The architecture of a loaded model, in the terms the toolkit's methods need.

    - ``family``: the Hugging Face architecture it was converted from (``"LlamaForCausalLM"``),
      or TransformerLens' ``original_architecture`` / ``"custom"``.
    - ``parallel_blocks``: attention and MLP both read the block's input (``resid_pre``) and
      write to ``resid_post``; there is no ``resid_mid``.
    - ``shared_norm``: a parallel block with one input norm that attention and MLP both read
      (GPT-J, Phi-2, Cohere, Falcon's old decoder): the MLP's input norm ``ln2`` *is* ``ln1``
      (same input, same gain), so its scale and output are ln1's. A HookedTransformer holds a
      copy of it as ``ln2``; on the bridge the ``ln2`` hook names are ln1's hook points
      (:func:`interp_edit.adapter.bridge.share_the_norm`, the one place that maps them).
    - ``norm``: ``"layernorm"`` (subtracts the mean) or ``"rmsnorm"``; ``norm_folded``: the gains
      are folded into the following weights (TransformerLens ``LNPre`` / ``RMSPre``).
    - ``post_norms``: a norm after each sublayer, before its output joins the residual
      (Gemma-2, Gemma-3): ``hook_attn_out`` / ``hook_mlp_out`` see the *normed* output, so a
      weight delta of ``W_O`` / ``W_out`` must be added before that norm, and a head's part of
      the normed output is its frozen-scale share (its hook and gain:
      :func:`~interp_edit.adapter.hooks.post_norm_scale`).
    - ``input_norms``: each sublayer reads the residual through a norm (``ln1`` / ``ln2``), as
      in every pre-norm block; False where neither has one (OLMo-2, OLMo-3: their norms are the
      post-sublayer ones, ``post_norms``). Attention and MLP then read the raw residual
      (``resid_pre`` / ``resid_mid``): what a reader takes from ``ln1`` / ``ln2`` is gain 1, bias
      0, scale 1 and no centring (:func:`~interp_edit.adapter.params.norm_weight`,
      :func:`~interp_edit.adapter.readout.input_scale`), and the bridge has no ``ln1`` / ``ln2``
      hook points (:func:`~interp_edit.adapter.bridge.check_no_input_norms`).
    - ``qk_norm``: queries and keys are normalised before rotary (Qwen3, Gemma-3, OLMo-2); the
      keys a key/value cache holds are the normed ones, not ``hook_k``. ``qk_norm_whole``: the
      norm is over the whole projection (all heads' queries, all key/value heads' keys at once:
      OLMo-2's ``q_norm`` / ``k_norm`` of width ``n_heads · d_head``), not per head — one head's
      normed query depends on the others' through the shared scale.
    - ``gated_mlp``: ``act(x W_gate) * (x W_in)``; the nonlinearity acts on the gate.
    - ``n_kv_heads``: key/value heads (``n_heads`` for multi-head attention).
    - ``positional``: ``"standard"`` (learned, ``hook_pos_embed``) or ``"rotary"``.
    - ``logit_softcap`` / ``attn_softcap``: ``cap · tanh(x / cap)`` on the final logits /
      attention scores (Gemma-2), or None.
    - ``embedding_scale``: the factor the token embeddings are multiplied by (Gemma: √d_model;
      TransformerLens folds it into ``W_E``, so ``hook_embed`` already carries it).
    - ``attn_bias`` / ``mlp_bias``: the attention's q/k/v projections / the MLP have biases in
      the Hugging Face model (Llama's ``attention_bias`` / ``mlp_bias``, StableLM's
      ``use_qkv_bias``, StarCoder2's ``use_bias`` …); a HookedTransformer holds zeros where there
      are none.
    - ``sliding_window``: the keys some layers attend to are the last this many (Mistral,
      Qwen2 with ``use_sliding_window``, Gemma-2's local layers), or None (none, or a window
      at least the context length).
    - ``rotary_dim``: the dimensions of each head rotary rotates (partial rotary: GPT-J, GPT-NeoX,
      Phi, StableLM), None for learned positions.
    - ``attn_scale``: attention scores are divided by it (√d_head; Gemma-2 √query_pre_attn_scalar).
    - ``logit_scale``: the final logits are multiplied by it (1.0; Cohere, Granite).
    - ``residual_multiplier``: each sublayer's output is multiplied by it before it joins the
      residual, ``resid + residual_multiplier · out`` (1.0; Granite's ``residual_multiplier``).
      ``hook_attn_out`` / ``hook_mlp_out`` see the *scaled* contribution (the bridge fires them
      after the multiplication), so what a row of ``W_out`` / ``W_O`` writes to the residual is
      the row times it (:func:`~interp_edit.adapter.readout.write_gain`) and a weight delta must
      be added to the raw output before it
      (:func:`~interp_edit.adapter.hooks.sublayer_output_hooks`).

    The forward-changing properties are read from the Hugging Face config field by field where
    the model came from Hugging Face (:mod:`interp_edit.adapter.config_fields`: the table of
    config field -> property, and the family constants); on the hooked backend the
    HookedTransformer's config must say the same wherever it says it.
    """

    family: str
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    n_kv_heads: int
    parallel_blocks: bool
    norm: str
    norm_folded: bool
    post_norms: bool
    qk_norm: bool
    gated_mlp: bool
    positional: str
    logit_softcap: float | None
    attn_softcap: float | None
    embedding_scale: float
    attn_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    rotary_dim: int | None = None
    attn_scale: float | None = None
    logit_scale: float = 1.0
    shared_norm: bool = False
    residual_multiplier: float = 1.0
    input_norms: bool = True
    qk_norm_whole: bool = False

    @property
    def writes_raw_output(self) -> bool:
        """Whether a sublayer's raw output (``z W_O + b_O``, ``post W_out + b_out``) joins the
        residual as it is: no post-sublayer norm and no residual multiplier between them, so
        ``hook_attn_out`` / ``hook_mlp_out`` are that raw output."""
        return not self.post_norms and self.residual_multiplier == 1.0

    @property
    def ffn_input_site(self) -> str:
        """The residual site the MLP reads (through its pre-norm)."""
        return "resid_pre" if self.parallel_blocks else "resid_mid"

    @property
    def norm_centres(self) -> bool:
        """Whether the normalisations subtract the mean (LayerNorm) or not (RMSNorm)."""
        return self.norm == "layernorm"

    @property
    def input_norm_centres(self) -> bool:
        """Whether what a sublayer reads is centred: by its input norm (a LayerNorm); never where
        there is no input norm (``input_norms`` False: the raw residual)."""
        return self.input_norms and self.norm_centres

    @property
    def grouped_query(self) -> bool:
        return self.n_kv_heads != self.n_heads

    def kv_head(self, head: int) -> int:
        """The key/value head query head ``head`` reads."""
        return head // (self.n_heads // self.n_kv_heads)

    @property
    def has_pos_embed(self) -> bool:
        """Whether learned position embeddings are added to the residual (``hook_pos_embed``)."""
        return self.positional == "standard"


_HF_CONFIG_ATTR = "_interp_edit_hf_config"


def architecture(model) -> Architecture:
    """The :class:`Architecture` of a loaded model (computed once and kept on the model)."""
    cached = getattr(model, _ARCH_ATTR, None)
    if cached is not None:
        return cached
    if bridge.is_bridge(model):
        arch = _from_bridge(model)
    else:
        arch = _from_config(model.cfg, getattr(model, _HF_CONFIG_ATTR, None))
    setattr(model, _ARCH_ATTR, arch)
    return arch


def _softcap(value) -> float | None:
    return float(value) if value is not None and value > 0 else None


def _scale(value) -> float:
    """Attention scales, rounded so that √x from either backend's arithmetic compares equal."""
    return round(float(value), 9)


@functools.cache
def _default_hf_config(hf_architecture: str):
    """The default config of the Hugging Face class ``hf_architecture`` (None where unknown)."""
    try:
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    for model_type, name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items():
        if name == hf_architecture:
            try:
                return AutoConfig.for_model(model_type)
            except Exception:  # noqa: BLE001 - a config class that cannot be built with its defaults
                return None
    return None


def _stated_by_hooked(cfg, context: int | None) -> dict:
    """The forward-changing properties a HookedTransformerConfig states itself."""
    rotary = cfg.positional_embedding_type == "rotary"
    window = cfg.window_size if getattr(cfg, "use_local_attn", False) else None
    gemma = str(cfg.original_architecture or "").startswith("Gemma")
    return dict(
        parallel_blocks=bool(cfg.parallel_attn_mlp),
        qk_norm=bool(getattr(cfg, "use_qk_norm", False)),
        post_norms=bool(getattr(cfg, "use_normalization_before_and_after", False)),
        n_kv_heads=int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads),
        rotary_dim=int(cfg.rotary_dim or cfg.d_head) if rotary else None,
        sliding_window=config_fields.effective_window(window, context),
        attn_scale=_scale(cfg.attn_scale if cfg.use_attn_scale else 1.0),
        logit_softcap=_softcap(getattr(cfg, "output_logits_soft_cap", None)),
        attn_softcap=_softcap(getattr(cfg, "attn_scores_soft_cap", None)),
        embedding_scale=cfg.d_model**0.5 if gemma else 1.0,
        residual_multiplier=1.0,  # a HookedTransformer adds every sublayer output unscaled
    )


#: The HookedTransformerConfig field behind each property :func:`_stated_by_hooked` reads.
_HOOKED_FIELDS = dict(
    parallel_blocks="parallel_attn_mlp", qk_norm="use_qk_norm", post_norms="use_normalization_before_and_after",
    n_kv_heads="n_key_value_heads", rotary_dim="rotary_dim", sliding_window="use_local_attn / window_size",
    attn_scale="attn_scale", logit_softcap="output_logits_soft_cap", attn_softcap="attn_scores_soft_cap",
    embedding_scale="original_architecture (Gemma: W_E scaled by √d_model)",
    residual_multiplier="(none: HookedTransformer adds the sublayer outputs unscaled)",
)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6)
    return a == b


def _from_config(cfg, hf_config=None) -> Architecture:
    """The description of a HookedTransformer. From Hugging Face (``hf_config``): the properties
    read from it field by field (:func:`~interp_edit.adapter.config_fields.describe_hf_config`),
    and every one the HookedTransformerConfig states must agree (else
    :class:`UnsupportedArchitectureError` naming both). Otherwise what the HookedTransformerConfig
    states, and the rest (biases, logit scale) from the default config of its
    ``original_architecture`` (a HookedTransformer has every bias as a parameter: a custom model
    is described with them)."""
    norm_type = cfg.normalization_type or "none"
    norm = "rmsnorm" if norm_type.startswith("RMS") else "layernorm"
    context = config_fields.n_ctx(hf_config) if hf_config is not None else None
    stated = _stated_by_hooked(cfg, context)
    if hf_config is not None:
        props = config_fields.describe_hf_config(hf_config)
        props["attn_scale"] = _scale(props["attn_scale"])
        wrong = [f"{p}: the Hugging Face config says {props[p]!r}, HookedTransformerConfig.{_HOOKED_FIELDS[p]} says "
                 f"{stated[p]!r}" for p in stated if not _same(props[p], stated[p])]
        if wrong:
            raise UnsupportedArchitectureError(
                f"model {cfg.original_architecture or cfg.model_name!r}: TransformerLens' conversion disagrees with the "
                f"Hugging Face config: {'; '.join(wrong)}; load it with backend='bridge'"
            )
    else:
        default = _default_hf_config(str(cfg.original_architecture or ""))
        # a custom model: every property at its default, with the biases a HookedTransformer holds
        props = config_fields.describe_hf_config(default) if default is not None else dict(
            config_fields.DEFAULTS, attn_bias=True, mlp_bias=True)
        props = {**props, **stated}
    return Architecture(
        family=str(cfg.original_architecture or "custom"),
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        d_head=cfg.d_head,
        d_mlp=cfg.d_mlp,
        norm=norm,
        norm_folded=norm_type.endswith("Pre"),
        gated_mlp=bool(cfg.gated_mlp),
        positional=str(cfg.positional_embedding_type),
        **{p: props[p] for p in config_fields.PROPERTIES},
    )


def _from_bridge(model) -> Architecture:
    """The :class:`~interp_edit.adapter.architecture.Architecture` of a bridge model, from its
    Hugging Face config: the family's norm, MLP and positions from
    :data:`~interp_edit.adapter.bridge.BRIDGE_ARCHITECTURES`, every forward-changing property
    from the config's fields (:func:`~interp_edit.adapter.config_fields.describe_hf_config`)."""
    hf_architecture = model._interp_edit_hf_architecture
    spec = bridge.BRIDGE_ARCHITECTURES[hf_architecture]
    c = model.original_model.config
    d_model = bridge._get(c, "hidden_size", "n_embd")
    props = config_fields.describe_hf_config(c)
    props["attn_scale"] = _scale(props["attn_scale"])
    positional = spec.get("positional", "rotary")
    if positional != "rotary":
        props["rotary_dim"] = None
    return Architecture(
        family=hf_architecture,
        n_layers=bridge._get(c, "num_hidden_layers", "n_layer"),
        d_model=d_model,
        n_heads=bridge._get(c, "num_attention_heads", "n_head"),
        d_head=config_fields.head_dim(c),
        d_mlp=bridge._get(c, "intermediate_size", "n_inner", "ffn_hidden_size", default=4 * d_model),
        norm=spec["norm"],
        norm_folded=False,
        gated_mlp=spec["gated"],
        positional=positional,
        **{p: props[p] for p in config_fields.PROPERTIES},
    )


def check_supported(model, hf_config=None):
    """Return ``model`` (its :class:`Architecture` computed and kept on it), or raise
    :class:`UnsupportedArchitectureError` naming every property of it that the toolkit's
    analyses and editors do not cover. ``hf_config``: the Hugging Face config a HookedTransformer
    was converted from; the description is then read from it field by field and checked against
    the HookedTransformer's config (a disagreement refuses the model). A bridge model's is read
    from its Hugging Face model."""
    if hf_config is not None and not bridge.is_bridge(model):
        setattr(model, _HF_CONFIG_ATTR, hf_config)
        if getattr(model, _ARCH_ATTR, None) is not None:
            setattr(model, _ARCH_ATTR, None)  # described again, from the Hugging Face config
    if bridge.is_bridge(model):  # the bridge backend's families are listed, and checked at load
        architecture(model)
        return model
    from transformer_lens.loading_from_pretrained import POST_NORM_ARCHITECTURES

    cfg = model.cfg
    missing = []
    if cfg.attn_only:
        missing.append("attention-only blocks (no MLP: nothing for the FFN analyses and editors to read)")
    if getattr(cfg, "num_experts", None):
        missing.append(f"mixture-of-experts MLPs (num_experts={cfg.num_experts})")
    if cfg.normalization_type is None:
        missing.append("no normalisation layers (normalization_type=None)")
    if getattr(cfg, "post_embedding_ln", False):
        missing.append("a norm after the embeddings (post_embedding_ln)")
    if cfg.positional_embedding_type not in ("standard", "rotary"):
        missing.append(f"positional_embedding_type={cfg.positional_embedding_type!r} (covered: 'standard', 'rotary')")
    if cfg.original_architecture in POST_NORM_ARCHITECTURES:
        missing.append(f"post-norm-only blocks of {cfg.original_architecture} (norms after the sublayers, none before, "
                       "which HookedTransformer names ln1 / ln2, the input norms' names; backend='bridge' covers OLMo-2 / "
                       "OLMo-3 from TransformerLens 4 on)")
    if getattr(cfg, "use_attn_in", False) or getattr(cfg, "use_split_qkv_input", False):
        missing.append("use_attn_in / use_split_qkv_input hook modes")
    if missing:
        name = cfg.original_architecture or cfg.model_name
        raise UnsupportedArchitectureError(f"model {name!r} is not covered by interp_edit: " + "; ".join(missing))
    architecture(model)
    return model
