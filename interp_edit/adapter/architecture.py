"""What differs between model families, described once and read by every analysis and editor.

>>> arch = architecture(model)           # derived from the loaded model's config, cached on it
>>> arch.parallel_blocks                 # GPT-J, GPT-NeoX / Pythia, Phi-2: attention and MLP read resid_pre
>>> arch.ffn_input_site                  # "resid_pre" there, "resid_mid" for sequential blocks
>>> arch.post_norms                      # Gemma-2: a norm between W_out / W_O and the residual
>>> arch.kv_head(h)                      # the key/value head that query head h reads (GQA / MQA)

Nothing outside :mod:`interp_edit.adapter` asks a TransformerLens config field or assumes a
GPT-2 hook name: it asks this description. :func:`check_supported` is run at load time and
names the property a model has that the toolkit does not cover.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from interp_edit.adapter import bridge
from interp_edit.errors import UnsupportedArchitectureError

_ARCH_ATTR = "_interp_edit_architecture"


@dataclass(frozen=True)
class Architecture:
    """The architecture of a loaded model, in the terms the toolkit's methods need.

    - ``family``: the Hugging Face architecture it was converted from (``"LlamaForCausalLM"``),
      or TransformerLens' ``original_architecture`` / ``"custom"``.
    - ``parallel_blocks``: attention and MLP both read the block's input (``resid_pre``) and
      write to ``resid_post``; there is no ``resid_mid``.
    - ``norm``: ``"layernorm"`` (subtracts the mean) or ``"rmsnorm"``; ``norm_folded``: the gains
      are folded into the following weights (TransformerLens ``LNPre`` / ``RMSPre``).
    - ``post_norms``: a norm after each sublayer, before its output joins the residual
      (Gemma-2): ``hook_attn_out`` / ``hook_mlp_out`` see the *normed* output, so a weight delta
      of ``W_O`` / ``W_out`` must be added before that norm.
    - ``qk_norm``: queries and keys are normalised per head before rotary (Qwen3, Gemma-3); the
      keys a key/value cache holds are the normed ones, not ``hook_k``.
    - ``gated_mlp``: ``act(x W_gate) * (x W_in)``; the nonlinearity acts on the gate.
    - ``n_kv_heads``: key/value heads (``n_heads`` for multi-head attention).
    - ``positional``: ``"standard"`` (learned, ``hook_pos_embed``) or ``"rotary"``.
    - ``logit_softcap`` / ``attn_softcap``: ``cap · tanh(x / cap)`` on the final logits /
      attention scores (Gemma-2), or None.
    - ``embedding_scale``: the factor the token embeddings are multiplied by (Gemma: √d_model;
      TransformerLens folds it into ``W_E``, so ``hook_embed`` already carries it).
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

    @property
    def ffn_input_site(self) -> str:
        """The residual site the MLP reads (through its pre-norm)."""
        return "resid_pre" if self.parallel_blocks else "resid_mid"

    @property
    def norm_centres(self) -> bool:
        """Whether the normalisations subtract the mean (LayerNorm) or not (RMSNorm)."""
        return self.norm == "layernorm"

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


def architecture(model) -> Architecture:
    """The :class:`Architecture` of a loaded model (computed once and kept on the model)."""
    cached = getattr(model, _ARCH_ATTR, None)
    if cached is not None:
        return cached
    arch = _from_bridge(model) if bridge.is_bridge(model) else _from_config(model.cfg)
    setattr(model, _ARCH_ATTR, arch)
    return arch


def _softcap(value) -> float | None:
    return float(value) if value is not None and value > 0 else None


def _from_config(cfg) -> Architecture:
    norm_type = cfg.normalization_type or "none"
    norm = "rmsnorm" if norm_type.startswith("RMS") else "layernorm"
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    scale = cfg.d_model**0.5 if str(cfg.original_architecture or "").startswith("Gemma") else 1.0
    return Architecture(
        family=str(cfg.original_architecture or "custom"),
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        d_head=cfg.d_head,
        d_mlp=cfg.d_mlp,
        n_kv_heads=int(n_kv),
        parallel_blocks=bool(cfg.parallel_attn_mlp),
        norm=norm,
        norm_folded=norm_type.endswith("Pre"),
        post_norms=bool(getattr(cfg, "use_normalization_before_and_after", False)),
        qk_norm=bool(getattr(cfg, "use_qk_norm", False)),
        gated_mlp=bool(cfg.gated_mlp),
        positional=str(cfg.positional_embedding_type),
        logit_softcap=_softcap(getattr(cfg, "output_logits_soft_cap", None)),
        attn_softcap=_softcap(getattr(cfg, "attn_scores_soft_cap", None)),
        embedding_scale=scale,
    )


def _from_bridge(model) -> Architecture:
    """The :class:`~interp_edit.adapter.architecture.Architecture` of a bridge model, from its
    Hugging Face config."""
    hf_architecture = model._interp_edit_hf_architecture
    spec = bridge.BRIDGE_ARCHITECTURES[hf_architecture]
    c = model.original_model.config
    d_model = bridge._get(c, "hidden_size", "n_embd")
    n_heads = bridge._get(c, "num_attention_heads", "n_head")
    parallel = spec.get("parallel", False)
    parallel = bool(getattr(c, parallel, False)) if isinstance(parallel, str) else bool(parallel)
    return Architecture(
        family=hf_architecture,
        n_layers=bridge._get(c, "num_hidden_layers", "n_layer"),
        d_model=d_model,
        n_heads=n_heads,
        d_head=bridge._get(c, "head_dim", default=d_model // n_heads),
        d_mlp=bridge._get(c, "intermediate_size", "n_inner", default=4 * d_model),
        n_kv_heads=int(bridge._get(c, "num_key_value_heads", default=n_heads)),
        parallel_blocks=parallel,
        norm=spec["norm"],
        norm_folded=False,
        post_norms=spec.get("post_norms", False),
        qk_norm=spec.get("qk_norm", False),
        gated_mlp=spec["gated"],
        positional=spec.get("positional", "rotary"),
        logit_softcap=_softcap(getattr(c, "final_logit_softcapping", None)),
        attn_softcap=_softcap(getattr(c, "attn_logit_softcapping", None)),
        embedding_scale=math.sqrt(d_model) if spec.get("gemma") else 1.0,
    )


def _softcap(value) -> float | None:
    return float(value) if value is not None and value > 0 else None


def check_supported(model):
    """Return ``model`` (its :class:`Architecture` computed and kept on it), or raise
    :class:`UnsupportedArchitectureError` naming every property of it that the toolkit's
    analyses and editors do not cover."""
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
        missing.append(f"post-norm-only blocks of {cfg.original_architecture} (norms after the sublayers, none before)")
    if getattr(cfg, "use_attn_in", False) or getattr(cfg, "use_split_qkv_input", False):
        missing.append("use_attn_in / use_split_qkv_input hook modes")
    if missing:
        name = cfg.original_architecture or cfg.model_name
        raise UnsupportedArchitectureError(f"model {name!r} is not covered by interp_edit: " + "; ".join(missing))
    architecture(model)
    return model
