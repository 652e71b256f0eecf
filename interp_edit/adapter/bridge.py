"""The TransformerBridge backend: where it differs from ``HookedTransformer``, in one place.

``load_model(..., backend="bridge")`` wraps the native Hugging Face model in TransformerLens'
``TransformerBridge`` (booted from the in-memory model, never the hub) in compatibility mode
*without weight processing*: the weights are the Hugging Face ones (no folded norms, no centred
writing weights), and the hook points carry the HookedTransformer names (``blocks.3.hook_mlp_out``,
``blocks.3.attn.hook_z`` …) that :mod:`interp_edit.adapter.hooks` uses. What differs, and is
handled here and nowhere else:

- weights by their TransformerLens names (``blocks.3.mlp.W_out`` …) are *views* of the Hugging
  Face parameters in TransformerLens' layout (the bridge's own ``W_out`` / ``W_O`` properties),
  so in-place writes of an ``Edit`` change the model; :func:`parameter`;
- norm gains are read from the Hugging Face modules (Gemma's ``1 + w``), :func:`norm_gain`;
- the token embedding as the residual sees it (Gemma's √d scale, folded into ``W_E`` by
  HookedTransformer), :func:`token_embedding`;
- a forward from block ``l`` (HookedTransformer's ``start_at_layer``, which the bridge lacks)
  replaces ``blocks.l.hook_resid_pre`` of a forward on placeholder tokens, :func:`run_from_layer`;
- a block with one shared input norm (``Architecture.shared_norm``: Phi-2, Cohere, Falcon's old
  decoder) has no ``ln2`` on the bridge: its ``ln2`` hook names are made ln1's hook points,
  :func:`share_the_norm`, so every reader asks for ``ln2`` as on any other model;
- blocks without input norms (``Architecture.input_norms`` False: OLMo-2, OLMo-3, from
  TransformerLens 4 on) have no ``ln1`` / ``ln2`` hook points and their post-sublayer norms as
  ``ln1_post`` / ``ln2_post``; the layout is checked at boot, :func:`check_no_input_norms`;
- the per-head result and q / k / v input hooks (``use_attn_result`` …) are switched through
  the bridge's setters, and only where its attention forks them exactly (TransformerLens'
  per-head fork; not gated attention), :func:`edge_hooks_missing`, :func:`set_hook_switch`;
- GPT-J's and GPT-Neo's attention, which TransformerLens' generic ``AttentionBridge`` runs whole
  in Hugging Face (discarding pattern edits), is computed through the bridge's hook points by
  :mod:`interp_edit.adapter.bridge_attention`, called from :func:`boot` for those models only;
- which Hugging Face architectures it covers, and what their description needs
  (:data:`BRIDGE_ARCHITECTURES`, read by :mod:`interp_edit.adapter.architecture`, which builds
  the :class:`~interp_edit.adapter.architecture.Architecture` from the Hugging Face config).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch

from interp_edit.adapter import bridge_attention
from interp_edit.errors import InvalidArgumentError, UnsupportedArchitectureError

BACKENDS = ("hooked", "bridge")

#: Hugging Face architectures the bridge backend covers, with what the family always is and no
#: config field says: the norm kind, a gated MLP, learned positions, and Gemma's ``1 + w`` norm
#: gains. Everything a config field sets (parallel blocks, q/k norms, post-norms, biases, the
#: attention and logit scales ...) is read from the config
#: (:mod:`interp_edit.adapter.config_fields`).
BRIDGE_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "GPT2LMHeadModel": dict(norm="layernorm", gated=False, positional="standard"),
    "GPTNeoXForCausalLM": dict(norm="layernorm", gated=False),
    "LlamaForCausalLM": dict(norm="rmsnorm", gated=True),
    "MistralForCausalLM": dict(norm="rmsnorm", gated=True),
    "Qwen2ForCausalLM": dict(norm="rmsnorm", gated=True),
    "Qwen3ForCausalLM": dict(norm="rmsnorm", gated=True),
    "GemmaForCausalLM": dict(norm="rmsnorm", gated=True, gemma=True),
    "PhiForCausalLM": dict(norm="layernorm", gated=False),
    "Gemma2ForCausalLM": dict(norm="rmsnorm", gated=True, gemma=True),
    "Phi3ForCausalLM": dict(norm="rmsnorm", gated=True),
    # only the bridge has these (HookedTransformer 3.9 has no converter)
    "Starcoder2ForCausalLM": dict(norm="layernorm", gated=False),
    "StableLmForCausalLM": dict(norm="layernorm", gated=True),
    "Gemma3ForCausalLM": dict(norm="rmsnorm", gated=True, gemma=True),
    "OlmoForCausalLM": dict(norm="layernorm", gated=True),
    "FalconForCausalLM": dict(norm="layernorm", gated=False),
    "GPTBigCodeForCausalLM": dict(norm="layernorm", gated=False, positional="standard"),
    "GraniteForCausalLM": dict(norm="rmsnorm", gated=True),
    "SmolLM3ForCausalLM": dict(norm="rmsnorm", gated=True),
    "CohereForCausalLM": dict(norm="layernorm", gated=True),  # LayerNorm with a gain and no bias
    # no input norms: RMSNorms after the sublayers only (ln1_post / ln2_post), from TransformerLens 4 on
    "Olmo2ForCausalLM": dict(norm="rmsnorm", gated=True),
    "Olmo3ForCausalLM": dict(norm="rmsnorm", gated=True),
    # attention computed by interp_edit through the bridge's hook points (bridge_attention), from TransformerLens 4 on
    "GPTJForCausalLM": dict(norm="layernorm", gated=False),  # one shared norm per block: share_the_norm
    "GPTNeoForCausalLM": dict(norm="layernorm", gated=False, positional="standard"),
}

#: Architectures the bridge boots whose HookedTransformer-named hooks are incomplete in
#: TransformerLens 3.9 / 4.x, so interp_edit's analyses cannot run on them there.
BRIDGE_GAPS: dict[str, str] = {
    "OPTForCausalLM": "TransformerLens' bridge hands OPT's attention whole to the Hugging Face module and fires "
                      "attn.hook_pattern only after it has run (4.3; 3.9 fires none), so an edit of the pattern is "
                      "discarded (measured: the logits do not change); and its ln2.hook_scale / hook_normalized drop "
                      "the batch axis ([batch·pos, ...] on 3.9 and 4.3)",
}

#: Why TransformerLens 3.9's bridge cannot run GPT-J / GPT-Neo (from 4 on, interp_edit computes
#: their attention through the bridge's hook points: :mod:`interp_edit.adapter.bridge_attention`).
_DELEGATED_ATTENTION_39 = (
    "TransformerLens 3.9's bridge hands {family}'s attention whole to the Hugging Face module and {what}, so an edit "
    "of the pattern cannot change the output; from 4 on interp_edit computes this attention through the bridge's "
    "hook points (interp_edit.adapter.bridge_attention)"
)


_OLMO2_NAMES = (
    "TransformerLens 3.9's bridge names OLMo-2's post-sublayer norms ln1 / ln2, the input norms' names, in blocks that "
    "have no input norm: their hook_scale would be read as the scale the attention / MLP reads through, and there is no "
    "ln1_post / ln2_post for the post-norm readers (frozen-scale shares, weight deltas before the norm); 4.x names "
    "them ln1_post / ln2_post")

#: Architectures the bridge backend covers only from a TransformerLens version on, with why the
#: older bridge cannot (:func:`version_gap`; found by the load-time equivalence check).
BRIDGE_MIN_VERSIONS: dict[str, tuple[tuple[int, ...], str]] = {
    "CohereForCausalLM": ((4,), "TransformerLens 3.9's Cohere adapter applies logit_scale only by folding it into W_U "
                                "when it processes the weights, which the bridge backend never does: its logits lack "
                                "the scale (measured: 1.9 off Hugging Face's log-probabilities)"),
    "GraniteForCausalLM": ((4,), "TransformerLens 3.9's Granite adapter fires hook_embed before the embedding_multiplier, "
                                 "so hook_embed is not what joins the residual (measured: resid_pre is the multiplier "
                                 "times hook_embed) and the residual's components do not add up to it (direct logit "
                                 "attribution 1.3% off the logit)"),
    "Olmo2ForCausalLM": ((4,), _OLMO2_NAMES),
    "Olmo3ForCausalLM": ((4,), _OLMO2_NAMES),
    "GPTJForCausalLM": ((4,), _DELEGATED_ATTENTION_39.format(family="GPT-J", what="fires no attn.hook_pattern")),
    "GPTNeoForCausalLM": ((4,), _DELEGATED_ATTENTION_39.format(
        family="GPT-Neo", what="fires attn.hook_pattern only after it has run (an edit of it is discarded)")),
}


def version_gap(hf_architecture: str) -> str | None:
    """Why the installed TransformerLens' bridge cannot run ``hf_architecture`` though a newer one
    can (:data:`BRIDGE_MIN_VERSIONS`), or None."""
    if hf_architecture not in BRIDGE_MIN_VERSIONS:
        return None
    from importlib.metadata import version

    needed, why = BRIDGE_MIN_VERSIONS[hf_architecture]
    installed = version("transformer-lens")
    parts = tuple(int(p) for p in installed.split(".")[: len(needed)] if p.isdigit())
    if parts >= needed:
        return None
    return f"{why}; install transformer-lens>={'.'.join(map(str, needed))} (installed: {installed})"


def hooked_available() -> bool:
    """Whether the installed TransformerLens has ``HookedTransformer`` (3.x; 4.0 removed it)."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


def is_bridge(model) -> bool:
    """Whether ``model`` is a TransformerBridge (else a HookedTransformer)."""
    return getattr(model, "_interp_edit_backend", None) == "bridge"


def backend_of(model) -> str:
    return "bridge" if is_bridge(model) else "hooked"


def check_backend(backend: str | None) -> None:
    if backend is not None and backend not in BACKENDS:
        raise InvalidArgumentError(f"backend must be one of {BACKENDS} (or None for the family's default), got {backend!r}")
    if backend == "hooked" and not hooked_available():
        from importlib.metadata import version

        raise InvalidArgumentError(
            f"backend='hooked' needs TransformerLens' HookedTransformer, which TransformerLens "
            f"{version('transformer-lens')} no longer has (removed in 4.0); load the model with backend='bridge' "
            "(or leave backend unset), or install transformer-lens<4"
        )


#: Why each backend cannot do without a tokenizer (:func:`require_tokenizer`).
_WHY_A_TOKENIZER = {
    "bridge": "it would otherwise look one up on the Hugging Face hub under that name",
    "hooked": "a HookedTransformer without one loads, then fails at the first prompt it encodes",
    None: "backend='bridge' would look one up on the Hugging Face hub under that name; a HookedTransformer without "
          "one loads, then fails at the first prompt it encodes",
}


def require_tokenizer(tokenizer, name: str, backend: str | None, *, folder: str | None = None) -> None:
    """The one rule for a model converted from Hugging Face (a folder or ``hf_model=``), on either
    backend: it needs a tokenizer (``tokenizer=``, or the folder's tokenizer files). Raises
    :class:`InvalidArgumentError` naming ``tokenizer`` (and the ``folder`` that holds no
    tokenizer files) before anything is loaded."""
    if tokenizer is not None:
        return
    who = "load_model" if backend is None else f"backend={backend!r}"
    lacking = f"; folder {folder} holds no tokenizer files (tokenizer_config.json)" if folder is not None else ""
    raise InvalidArgumentError(
        f"tokenizer: {who} needs a tokenizer for model {name!r} ({_WHY_A_TOKENIZER.get(backend, _WHY_A_TOKENIZER[None])})"
        f"{lacking}; pass tokenizer=, or load a folder that holds one"
    )


def check_bridge_family(hf_architecture: str, hooked_can: bool) -> None:
    """Raise naming the backend that can load ``hf_architecture`` if the bridge backend cannot."""
    if hf_architecture in BRIDGE_ARCHITECTURES:
        too_old = version_gap(hf_architecture)
        if too_old is not None:
            raise UnsupportedArchitectureError(
                f"model architecture {hf_architecture!r} cannot run on backend='bridge' here: {too_old}")
        return
    if hooked_can:
        other = "load it with backend='hooked'"
    elif not hooked_available():
        other = "backend='hooked' (TransformerLens' HookedTransformer, transformer-lens<4) may load it"
    else:
        other = "the hooked backend has no config converter for it either"
    why = BRIDGE_GAPS.get(hf_architecture, "interp_edit's bridge backend does not cover this architecture")
    raise UnsupportedArchitectureError(
        f"model architecture {hf_architecture!r} cannot run on backend='bridge': {why} "
        f"(bridge families: {sorted(BRIDGE_ARCHITECTURES)}); {other}"
    )


def boot(name: str, hf_model, tokenizer, device, dtype):
    """A TransformerBridge around ``hf_model`` (in memory; no hub access), in compatibility
    mode without weight processing, checked and tagged as the bridge backend. The bridge takes
    ``hf_model`` over: its modules are wrapped in place (no copy of the weights), so the object
    passed in is the bridge's from then on — pass a separate instance to keep a plain one.
    Booting a second bridge over an object one already wraps would rewire the first bridge's
    modules: it is refused (``InvalidArgumentError``), before anything changes."""
    from transformer_lens.model_bridge import TransformerBridge

    if getattr(hf_model, "_interp_edit_bridged", False):
        raise InvalidArgumentError(
            "hf_model: this Hugging Face model already backs a TransformerBridge (backend='bridge' wraps the "
            "modules it is given in place); a second bridge over it would rewire the first one's modules — "
            "pass another instance of the model"
        )
    require_tokenizer(tokenizer, name, "bridge")  # TransformerBridge would fetch one from the hub by ``name``
    hf_architecture = type(hf_model).__name__
    if not getattr(hf_model.config, "architectures", None):
        hf_model.config.architectures = [hf_architecture]
    hf_model = hf_model.to(device=device, dtype=dtype).eval()
    _give_norms_a_gain(hf_model)
    quiet = logging.getLogger().manager.disable
    logging.disable(logging.WARNING)  # the bridge warns about every legacy alias it registers
    try:
        model = TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype)
        model.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    finally:
        logging.disable(quiet)
    model._interp_edit_backend = "bridge"
    model._interp_edit_hf_architecture = hf_architecture
    hf_model._interp_edit_bridged = True
    share_the_norm(model)
    bridge_attention.route(model, hf_architecture)  # GPT-J, GPT-Neo: attention that honours pattern edits
    model.eval()
    return model


#: The hook points of a block's norm (``blocks.{l}.ln1.<point>``) that a shared norm's ``ln2``
#: names resolve to.
_NORM_HOOKS = ("hook_in", "hook_scale", "hook_normalized", "hook_out")


def share_the_norm(model) -> None:
    """The one place the bridge backend maps the MLP's input norm onto the attention's, for a
    model whose parallel blocks read one shared norm (``Architecture.shared_norm``): the bridge
    then has no ``blocks.{l}.ln2`` (the Hugging Face block has one ``input_layernorm``), and
    ``blocks.{l}.ln2.hook_scale`` / ``hook_normalized`` / ``hook_in`` / ``hook_out`` are made
    aliases of ``blocks.{l}.ln1``'s hook points (TransformerLens' ``hook_aliases``, as its own
    ``hook_resid_pre`` → ``hook_in``). What a reader caches or freezes at ``ln2`` is then what
    the MLP's norm is — ln1's scale and output, same input and gain — and the gain, bias and eps
    of ``ln2`` are ln1's (:func:`norm_gain`). A hook *editing* ``ln2`` edits the one norm both
    sublayers read, as it would on the Hugging Face model. A block whose adapter disagrees with
    the description (an ``ln2`` in a shared-norm block, none in another) is refused.

    Blocks without input norms (``Architecture.input_norms`` False: OLMo-2, OLMo-3) are checked
    by :func:`check_no_input_norms` instead, and nothing is mapped."""
    if not _input_norms(model):
        check_no_input_norms(model)
        return
    shared = _shared_norm(model)
    for layer, block in enumerate(model.blocks):
        has_ln2 = getattr(block, "ln2", None) is not None
        if has_ln2 == shared:
            raise UnsupportedArchitectureError(
                f"model architecture {model._interp_edit_hf_architecture!r}: its config describes "
                f"{'one shared norm' if shared else 'two norms'} per block, but TransformerLens' bridge gives block {layer} "
                f"{'an ln2' if has_ln2 else 'no ln2'}; interp_edit cannot tell which norm the MLP reads"
            )
    if not shared:
        return
    aliases = {f"blocks.{layer}.ln2.{point}": f"blocks.{layer}.ln1.{point}"
               for layer in range(len(model.blocks)) for point in _NORM_HOOKS}
    model.hook_aliases = {**model.hook_aliases, **aliases}  # an instance attribute over the class's table
    hook_dict = model.hook_dict
    missing = [name for name in aliases if name not in hook_dict]
    if missing:
        raise UnsupportedArchitectureError(
            f"model architecture {model._interp_edit_hf_architecture!r}: the bridge does not resolve the shared norm's "
            f"ln2 hook names to ln1's (e.g. {missing[0]!r}); interp_edit needs them for the MLP's input norm"
        )


def check_no_input_norms(model) -> None:
    """The bridge's layout of blocks without input norms (``Architecture.input_norms`` False:
    OLMo-2, OLMo-3), which :mod:`interp_edit.adapter` relies on: no ``ln1`` / ``ln2`` (so no
    ``blocks.L.ln1.*`` / ``ln2.*`` hook points: a reader of an input norm gets gain 1, scale 1 —
    :func:`~interp_edit.adapter.params.norm_weight`,
    :func:`~interp_edit.adapter.readout.input_scale` — and never asks for them), the
    post-sublayer norms as ``ln1_post`` / ``ln2_post`` (their ``hook_scale`` and
    ``hook_normalized``; ``hook_attn_out`` / ``hook_mlp_out`` their outputs), and
    ``hook_resid_mid`` the MLP's own input (TransformerLens 4's ``mlp.hook_in``). Anything else —
    TransformerLens 3.9 names the post-norms ``ln1`` / ``ln2`` — is refused, naming what the
    block has."""
    names = model.hook_dict
    for layer, block in enumerate(model.blocks):
        wrong = [n for n in ("ln1", "ln2") if getattr(block, n, None) is not None]
        wrong += [f"no {n}" for n in ("ln1_post", "ln2_post") if getattr(block, n, None) is None]
        wrong += [f"no {p}" for p in (f"blocks.{layer}.{n}.{h}" for n in ("ln1_post", "ln2_post")
                                      for h in ("hook_scale", "hook_normalized")) if p not in names]
        mid = names.get(f"blocks.{layer}.hook_resid_mid")
        if mid is None or mid is not getattr(getattr(block, "mlp", None), "hook_in", None):
            wrong.append("a hook_resid_mid that is not the MLP's input")
        if wrong:
            raise UnsupportedArchitectureError(
                f"model architecture {model._interp_edit_hf_architecture!r}: its config describes blocks without input "
                f"norms (a norm after each sublayer only), but TransformerLens' bridge gives block {layer} "
                f"{', '.join(wrong)}; interp_edit reads the post-sublayer norms as ln1_post / ln2_post")


def _give_norms_a_gain(hf_model) -> None:
    """OLMo's LayerNorm has no gain or bias; the bridge's norm, when a hook edits ``hook_scale``
    (a frozen-norm readout), rebuilds the output from the module's ``weight``. Give such norms a
    non-persistent ``weight`` of ones (Hugging Face's forward never reads it; no state-dict key)."""
    for module in hf_model.modules():
        if type(module).__name__.endswith("LayerNorm") and getattr(module, "weight", None) is None \
                and hasattr(module, "normalized_shape"):
            size = module.normalized_shape
            module.register_buffer("weight", torch.ones(size, device=_device_of(hf_model)), persistent=False)


def _device_of(hf_model):
    return next(hf_model.parameters()).device


# --- the architecture ----------------------------------------------------------------------
def _get(config, *names, default=None):
    for n in names:
        value = getattr(config, n, None)
        if value is not None:
            return value
    return default


# --- weights -------------------------------------------------------------------------------
#: TransformerLens parameter names (after ``blocks.{l}.``) the bridge exposes as views.
_BLOCK_PARAMS = ("mlp.W_out", "mlp.b_out", "mlp.W_in", "mlp.b_in", "mlp.W_gate", "attn.W_O", "attn.b_O",
                 "attn.W_V", "attn.W_K", "attn.W_Q", "attn.b_V", "attn.b_K", "attn.b_Q")


_ZERO_BIASES = ("b_out", "b_O", "b_in")


def parameter(model, name: str) -> torch.Tensor:
    """The weight ``name`` (TransformerLens name and layout) of a bridge model: a view of the
    Hugging Face parameter, so in-place changes change the model."""
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blocks" and parts[1].isdigit() and ".".join(parts[2:]) in _BLOCK_PARAMS:
        layer = int(parts[1])
        if layer < len(model.blocks):
            tensor = getattr(getattr(model.blocks[layer], parts[2]), parts[3], None)
            if tensor is not None:
                return tensor
            if parts[3] in _ZERO_BIASES:  # HookedTransformer holds zeros where Hugging Face has no bias
                size = model.cfg.d_mlp if parts[3] == "b_in" else model.cfg.d_model
                return torch.zeros(size, device=model.W_U.device, dtype=model.W_U.dtype)
    elif name in ("W_U", "W_E"):
        return getattr(model, name)
    raise KeyError(f"model has no parameter {name!r} (e.g. 'blocks.0.mlp.W_out', 'blocks.0.attn.W_O')")


def _norm_layout(model) -> dict[str, bool]:
    """The description's ``shared_norm`` and ``input_norms``, read from the Hugging Face config as
    :mod:`~interp_edit.adapter.architecture` reads them (this module sits below that one) — once,
    at boot (:func:`share_the_norm`): the norm readers ask for them on every layer."""
    known = getattr(model, "_interp_edit_norm_layout", None)
    if known is None:
        from interp_edit.adapter import config_fields

        props = config_fields.describe_hf_config(model.original_model.config)
        known = {p: bool(props[p]) for p in ("shared_norm", "input_norms")}
        model._interp_edit_norm_layout = known
    return known


def _shared_norm(model) -> bool:
    """The description's ``shared_norm`` (:func:`_norm_layout`)."""
    return _norm_layout(model)["shared_norm"]


def _input_norms(model) -> bool:
    """The description's ``input_norms`` (:func:`_norm_layout`)."""
    return _norm_layout(model)["input_norms"]


def _norm_module(model, norm: str, layer: int | None):
    if norm == "ln2" and _shared_norm(model):  # one shared norm: the MLP's is ln1 (share_the_norm)
        norm = "ln1"
    module = model.ln_final if norm == "ln_final" else getattr(model.blocks[layer], norm)
    return module.original_component


def norm_gain(model, norm: str, layer: int | None = None) -> torch.Tensor:
    """The gain γ of a norm as it multiplies (Gemma's RMSNorm multiplies by ``1 + w``)."""
    weight = _norm_module(model, norm, layer).weight.detach()  # OLMo's: ones (_give_norms_a_gain)
    return 1.0 + weight if BRIDGE_ARCHITECTURES[model._interp_edit_hf_architecture].get("gemma") else weight


def norm_bias(model, norm: str, layer: int | None = None) -> torch.Tensor | None:
    bias = getattr(_norm_module(model, norm, layer), "bias", None)
    return None if bias is None else bias.detach()


def norm_eps(model, norm: str, layer: int | None = None) -> float:
    module = _norm_module(model, norm, layer)
    return float(_get(module, "eps", "variance_epsilon"))


def token_embedding(model, scale: float) -> torch.Tensor:
    """``W_E`` as ``hook_embed`` sees it (times ``scale``: Gemma's √d, from the architecture)."""
    w_e = model.W_E
    return w_e if scale == 1.0 else w_e * torch.tensor(scale, dtype=w_e.dtype)


def position_embedding(model) -> torch.Tensor:
    """Learned position embeddings [n_ctx, d_model] (ask the architecture whether there are any)."""
    return model.original_model.transformer.wpe.weight


# --- edge-level hooks (the circuits engine) ----------------------------------------------------
#: The TransformerLens switches that give every head its own output (``attn.hook_result``) and
#: its own q / k / v input (``blocks.L.hook_q_input`` …), and the MLP its own input
#: (``blocks.L.hook_mlp_in``). A TransformerBridge turns them on through its setters
#: (``set_use_attn_result`` …), which also copy them to the blocks' own configs.
EDGE_HOOK_SWITCHES = ("use_attn_result", "use_split_qkv_input", "use_hook_mlp_in")


def _transformer_lens_version() -> str:
    from importlib.metadata import version

    return version("transformer-lens")


def edge_hooks_missing(model) -> str | None:
    """Why this bridge cannot give the edge-level hooks of :data:`EDGE_HOOK_SWITCHES` exactly
    (None where it can). It reads the model only: nothing is switched. A bridge forks the
    q / k / v inputs before ``ln1`` (as HookedTransformer does) only with an attention bridge
    of TransformerLens' ``JointQKVAttentionBridge`` / ``PositionEmbeddingsAttentionBridge``
    kinds in a block that wires its ``ln1``; anything else would leave the hooks silent, or
    fork the normed input."""
    tl = _transformer_lens_version()
    lacking = [f"set_{s}" for s in EDGE_HOOK_SWITCHES if not callable(getattr(model, f"set_{s}", None))]
    if lacking:
        return f"TransformerLens {tl}'s TransformerBridge has no {', '.join(lacking)} (the per-head hook switches)"
    try:
        from transformer_lens.model_bridge.generalized_components.joint_qkv_attention import JointQKVAttentionBridge
        from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
            PositionEmbeddingsAttentionBridge,
        )
    except ImportError:
        return f"TransformerLens {tl} has no attention bridge that forks the q/k/v inputs"
    if getattr(model.cfg, "use_attn_in", False):
        return ("use_attn_in is on, and a bridge forks either one shared attention input or split q/k/v inputs: "
                "call model.set_use_attn_in(False) first")
    for layer, block in enumerate(model.blocks):
        parts = getattr(block, "submodules", None) or {}
        attn = parts.get("attn")
        if attn is None:
            return f"block {layer} has no attention bridge"
        kind = type(attn).__name__
        if getattr(getattr(attn, "config", None), "gated_q_proj", False) or getattr(model.cfg, "gated_q_proj", False):
            return (f"block {layer}'s gated attention (gated_q_proj: Qwen3.5 / Qwen3-Next) has no per-head q/k/v input "
                    f"in TransformerLens {tl}")
        if not (isinstance(attn, (JointQKVAttentionBridge, PositionEmbeddingsAttentionBridge))
                and getattr(attn, "supports_split_qkv_fork", False)):
            return f"block {layer}'s {kind} has no q/k/v input fork (supports_split_qkv_fork) in TransformerLens {tl}"
        if not getattr(attn, "supports_attn_result", False):
            return f"block {layer}'s {kind} computes no per-head result (supports_attn_result) in TransformerLens {tl}"
        ln1 = parts.get("ln1")
        if _input_norms(model) and (ln1 is None or getattr(ln1, "original_component", None) is None):
            return f"block {layer} has no ln1 for the q/k/v fork to read before (it would fork the normed input)"
        # without input norms (OLMo-2) the attention's input is the block's: the fork reads resid_pre itself
        if not hasattr(block, "hook_mlp_in"):
            return f"block {layer} has no hook_mlp_in in TransformerLens {tl}"
        if _shared_norm(model):  # the MLP's input is routed through hook_mlp_in by shared_norm_mlp_inputs
            if parts.get("mlp") is None:
                return f"block {layer} has no MLP bridge for its input to be routed through hook_mlp_in"
            continue
        target = parts.get("mlp" if getattr(block, "mlp_reads_resid_directly", False) else "ln2")
        if target is None or getattr(target, "original_component", None) is None:
            return f"block {layer}'s hook_mlp_in has nothing to fire on (no ln2 before its MLP)"
    return None


@contextlib.contextmanager
def shared_norm_mlp_inputs(model):
    """Inside the block, a bridge whose blocks read one shared input norm (``shared_norm``: Phi-2,
    Cohere, Falcon's old decoder) gives each MLP an input of its own: the MLP reads
    ``ln1(blocks.L.hook_mlp_in(resid_pre))`` — the shared norm's Hugging Face module on the
    block's input, through the hook — instead of the attention's normed input. Unhooked, that is
    the same norm of the same input, so the forward is unchanged; a hook on ``hook_mlp_in`` then
    moves the MLP's input alone, as HookedTransformer's copy of the norm (``ln2``) does. (The
    bridge fires ``hook_mlp_in`` on ``ln2``'s input, which these blocks lack.) Nothing is
    installed for other models; the hooks are removed on leaving, also on an exception."""
    handles = []
    try:
        if is_bridge(model) and _shared_norm(model):
            for block in model.blocks:
                ln1, mlp = block.submodules["ln1"], block.submodules["mlp"]
                seen: dict[str, torch.Tensor] = {}

                def keep(module, args, seen=seen):
                    seen["resid_pre"] = args[0]

                def reroute(module, args, block=block, norm=ln1.original_component, seen=seen):
                    return (norm(block.hook_mlp_in(seen.pop("resid_pre"))), *args[1:])

                handles.append(ln1.register_forward_pre_hook(keep))
                handles.append(mlp.register_forward_pre_hook(reroute))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def result_hook_scale(model, layer: int) -> float:
    """The factor a block's residual multiplier (Granite) already applies to what
    ``blocks.{layer}.attn.hook_result`` shows: TransformerLens 4.3's bridge shows the heads'
    scaled contribution (its ``_result_contribution_scale``), an older bridge and
    HookedTransformer the raw result (1.0)."""
    if not is_bridge(model):
        return 1.0
    return float(getattr(model.blocks[layer].attn, "_result_contribution_scale", 1.0) or 1.0)


def set_hook_switch(model, name: str, value: bool) -> None:
    """Turn one of :data:`EDGE_HOOK_SWITCHES` on or off through the bridge's setter."""
    if name not in EDGE_HOOK_SWITCHES:
        raise ValueError(f"unknown hook switch {name!r}; known: {EDGE_HOOK_SWITCHES}")
    getattr(model, f"set_{name}")(bool(value))


# --- forwards ------------------------------------------------------------------------------
def run_from_layer(model, residual: torch.Tensor, start_layer: int, hooks) -> torch.Tensor:
    """The final residual (before the final norm) of blocks ``start_layer`` … on ``residual``,
    with temporary hooks; differentiable. The bridge cannot start a forward inside the model:
    it runs on placeholder tokens and ``blocks.{start_layer}.hook_resid_pre`` is replaced by
    ``residual`` (the earlier blocks' work is discarded)."""
    n = model.cfg.n_layers
    if start_layer >= n:
        with model.hooks(fwd_hooks=list(hooks)):
            return residual
    store: dict[str, torch.Tensor] = {}

    def inject(act, hook):
        return residual.to(act.dtype)

    def keep(act, hook):
        store["final"] = act

    placeholder = torch.zeros(residual.shape[:2], dtype=torch.long, device=residual.device)
    names = [(f"blocks.{start_layer}.hook_resid_pre", inject), *hooks, (f"blocks.{n - 1}.hook_resid_post", keep)]
    with model.hooks(fwd_hooks=names):
        model(placeholder, return_type=None)
    return store["final"]
