"""The one adapter between interp_edit and TransformerLens.

Every TransformerLens-specific call of the toolkit lives here: building and loading a
``HookedTransformer``, the processing flags of ``from_pretrained``, converting local Hugging
Face checkpoints with TransformerLens' own weight converters, and exporting back to a
Hugging Face ``GPT2LMHeadModel``. Another backend (e.g. TransformerBridge) would be added here.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import einops
import torch

from interp_edit.errors import CheckpointError, ExportError, ModelNotFoundError

#: Built-in models and the folder (inside the installed package) that holds each one.
BUILTIN_MODELS: dict[str, Path] = {
    "toyworld": Path(__file__).parent / "toyworld" / "checkpoint",
}

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

#: TransformerLens' processing defaults for hub models (those of ``from_pretrained``).
HUB_PROCESSING = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)


def _resolution_help() -> str:
    return (
        f"built-in models: {', '.join(sorted(BUILTIN_MODELS))}. Any other name is passed to "
        "TransformerLens' HookedTransformer.from_pretrained, which accepts its official model "
        "names and aliases (e.g. 'gpt2-xl', 'gpt2-small'; see "
        "transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES) and needs the Hugging Face "
        "hub or its cache. A local Hugging Face folder (with config.json) or a model object "
        "(hf_model=...) is converted offline with TransformerLens' weight converters."
    )


def build_hooked_transformer(config: dict[str, Any], tokenizer=None, *, init_weights: bool = True):
    """A fresh ``HookedTransformer`` from a plain config dict (HookedTransformerConfig fields)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(**{**config, "init_weights": init_weights})
    return HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right")


def load_model(
    name: str = "toyworld",
    device: str | torch.device = "cpu",
    *,
    hf_model: Any | None = None,
    tokenizer: Any | None = None,
    fold_ln: bool | None = None,
    center_writing_weights: bool | None = None,
    center_unembed: bool | None = None,
    fold_value_biases: bool | None = None,
    dtype: torch.dtype = torch.float32,
    **from_pretrained_kwargs: Any,
):
    """Load a model as a TransformerLens ``HookedTransformer``.

    - ``"toyworld"`` (default): the embedded toy-world model, read from the files shipped in the
      package; never trains, never touches the network. Its weights are *not* processed
      (no LayerNorm folding) unless a processing flag is set, so ``W_out`` etc. are the real
      weights and export to Hugging Face is exact.
    - a local Hugging Face folder (containing ``config.json``) or ``hf_model=<PreTrainedModel>``:
      converted offline with TransformerLens' own config and weight converters (TransformerLens'
      ``from_pretrained`` would still ask the hub for the config). Pass ``tokenizer=`` unless the
      folder holds tokenizer files.
    - any other name: ``HookedTransformer.from_pretrained(name, ...)``, the path users with a hub
      call (e.g. ``"gpt2-xl"``).

    Processing flags left as ``None`` take TransformerLens' defaults for hub and Hugging Face
    models (all True) and no processing for the toy world.
    """
    flags = dict(
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
        fold_value_biases=fold_value_biases,
    )
    if hf_model is None and name in BUILTIN_MODELS:
        name = str(BUILTIN_MODELS[name])
    elif hf_model is None and Path(name).is_dir() and not (Path(name) / CONFIG_FILE).is_file():
        raise CheckpointError(f"missing checkpoint file {Path(name) / CONFIG_FILE}")
    if hf_model is not None or _is_local_hf_folder(name):
        processing = {k: HUB_PROCESSING[k] if v is None else v for k, v in flags.items()}
        return _load_local_hf(name, hf_model, tokenizer, device, dtype, processing)
    if _is_checkpoint_folder(name):
        if from_pretrained_kwargs:
            raise TypeError(f"load_model({name!r}) takes no from_pretrained options: {sorted(from_pretrained_kwargs)}")
        processing = {k: bool(v) for k, v in flags.items()}
        return load_checkpoint(name, device=device, dtype=dtype, **processing)
    processing = {k: HUB_PROCESSING[k] if v is None else v for k, v in flags.items()}
    return _load_hub(name, device, dtype, tokenizer, processing, from_pretrained_kwargs)


def _is_local_hf_folder(name: str) -> bool:
    """A folder whose config.json is a Hugging Face model config (it has ``model_type``)."""
    path = Path(name) / CONFIG_FILE
    return path.is_file() and "model_type" in _read_json(path)


def _is_checkpoint_folder(name: str) -> bool:
    """A folder written by :func:`save_checkpoint` (its config.json has a ``model`` section)."""
    path = Path(name) / CONFIG_FILE
    return path.is_file() and "model" in _read_json(path)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"missing checkpoint file {path}") from None
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read checkpoint file {path}: {err}") from None


def _load_hub(name, device, dtype, tokenizer, processing, kwargs):
    from transformer_lens import HookedTransformer, loading_from_pretrained

    try:
        loading_from_pretrained.get_official_model_name(name)
    except ValueError:
        raise ModelNotFoundError(f"unknown model name {name!r}. {_resolution_help()}") from None
    return HookedTransformer.from_pretrained(
        name, device=device, dtype=dtype, tokenizer=tokenizer, **processing, **kwargs
    )


def _load_local_hf(name, hf_model, tokenizer, device, dtype, processing):
    """Mirror of TransformerLens' from_pretrained for a local folder or model object, with no hub."""
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    if hf_model is None:
        from transformers import AutoModelForCausalLM

        hf_model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
        if tokenizer is None and (Path(name) / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(name)
    with tempfile.TemporaryDirectory() as tmp:
        # TransformerLens converts a config from a folder; give it a complete one.
        config = copy.deepcopy(hf_model.config)
        config.architectures = config.architectures or [type(hf_model).__name__]
        config.save_pretrained(tmp)
        _complete_config_file(Path(tmp) / CONFIG_FILE)
        cfg = loading.get_pretrained_model_config(
            tmp, hf_cfg=hf_model.config.to_dict(), fold_ln=processing["fold_ln"], device=device, dtype=dtype
        )
        if getattr(hf_model.config, "n_inner", None):  # TransformerLens assumes d_mlp = 4 d_model for GPT-2
            cfg.d_mlp = hf_model.config.n_inner
        cfg.tokenizer_name = None  # never let TransformerLens look the tokenizer up on the hub
        state_dict = loading.get_pretrained_state_dict(tmp, cfg, hf_model, dtype=dtype)
    model = HookedTransformer(cfg, tokenizer, move_to_device=False, default_padding_side="right")
    model.load_and_process_state_dict(state_dict, **processing)
    model.move_model_modules_to_device()
    model.eval()
    return model


def _complete_config_file(path: Path) -> None:
    """Add fields TransformerLens reads that configs built in code lack (GPT-2's ``n_ctx``)."""
    data = json.loads(path.read_text())
    if "n_positions" in data and "n_ctx" not in data:
        data["n_ctx"] = data["n_positions"]
        path.write_text(json.dumps(data))


def load_checkpoint(
    folder: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    fold_ln: bool = False,
    center_writing_weights: bool = False,
    center_unembed: bool = False,
    fold_value_biases: bool = False,
):
    """Load a checkpoint folder written by :func:`save_checkpoint`."""
    from safetensors.torch import load_file
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    meta = _read_json(folder / CONFIG_FILE)
    if "model" not in meta:
        raise CheckpointError(f"checkpoint file {folder / CONFIG_FILE} has no 'model' section")
    tokenizer_file = folder / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise CheckpointError(f"missing checkpoint file {tokenizer_file}")
    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
    except Exception as err:  # noqa: BLE001 - any parse failure means a corrupt file
        raise CheckpointError(f"cannot read checkpoint file {tokenizer_file}: {err}") from None
    weights_file = folder / WEIGHTS_FILE
    if not weights_file.is_file():
        raise CheckpointError(f"missing checkpoint file {weights_file}")
    try:
        state_dict = load_file(str(weights_file))
    except Exception as err:  # noqa: BLE001 - safetensors' own error type varies by version
        raise CheckpointError(f"cannot read checkpoint file {weights_file}: {err}") from None
    model = build_hooked_transformer({**meta["model"], "device": str(device), "dtype": dtype}, tokenizer, init_weights=False)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith(("IGNORE", ".mask"))}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    if expected != got:
        diff = sorted(set(expected.items()) ^ set(got.items()))[:6]
        raise CheckpointError(f"checkpoint file {weights_file} does not match {folder / CONFIG_FILE}: {diff}")
    model.load_and_process_state_dict(
        {k: v.to(dtype) for k, v in state_dict.items()},
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
        fold_value_biases=fold_value_biases,
    )
    model.eval()
    #: the checkpoint's config (e.g. a toy world's ``world`` section: see interp_edit.toyworld.model_world)
    model.checkpoint_config = meta
    return model


def save_checkpoint(model, folder: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write weights (safetensors), config and tokenizer of an unprocessed model to a folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if not k.endswith(("IGNORE", ".mask"))}
    save_file(state, str(folder / WEIGHTS_FILE))
    meta = {"model": model_config_dict(model), **(extra or {})}
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    model.tokenizer.save_pretrained(str(folder))
    _ordinary_permissions(folder / WEIGHTS_FILE)


def _ordinary_permissions(path: Path) -> None:
    """Give a file the mode ``open()`` would (0666 less the umask); safetensors writes 0600."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


#: HookedTransformerConfig fields that define the toy world's architecture.
_CONFIG_FIELDS = (
    "n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_vocab", "d_vocab_out",
    "act_fn", "normalization_type", "positional_embedding_type", "eps", "default_prepend_bos",
    "original_architecture", "model_name", "seed",
)


def model_config_dict(model) -> dict[str, Any]:
    cfg = model.cfg
    return {f: getattr(cfg, f) for f in _CONFIG_FIELDS}


_HF_ACT = {"gelu_new": "gelu_new", "gelu": "gelu", "relu": "relu", "gelu_fast": "gelu_fast"}


def _final_norm_bias_and_lm_head(model) -> tuple[torch.Tensor, torch.Tensor] | None:
    """GPT-2's ``ln_f`` bias and ``lm_head`` weight reproducing ``W_U`` and ``b_U``, or None.

    GPT-2's lm_head has no bias, but folding LayerNorm moves the final norm's bias into b_U.
    - b_U = 0: the final norm's own bias (zero if it was folded) and W_Uᵀ.
    - folded norm (LNPre, output n with Σn = 0): ln_f bias = 1/d and lm_head = W_U + 1 ⊗ (b_U − m),
      m = the mean of W_U over d_model, give (n + 1/d)·lm_head = n·W_U + b_U exactly.
    - LayerNorm with weights: b_U must equal b·W_U for some b (solved by least squares).
    """
    cfg = model.cfg
    w_u = model.W_U.detach().double().cpu()  # [d_model, vocab]
    b_u = model.b_U.detach().double().cpu()
    bias = getattr(model.ln_final, "b", None)
    bias = torch.zeros(cfg.d_model, dtype=torch.float64) if bias is None else bias.detach().double().cpu()
    if b_u.abs().max().item() == 0.0:
        return bias.float(), w_u.T.float()
    if cfg.normalization_type == "LNPre":
        shift = b_u - w_u.mean(0)
        return torch.full((cfg.d_model,), 1.0 / cfg.d_model), (w_u + shift[None, :]).T.float()
    extra = torch.linalg.lstsq(w_u.T, b_u.unsqueeze(1)).solution.squeeze(1)
    if (w_u.T @ extra - b_u).abs().max().item() > 1e-6 * max(1.0, b_u.abs().max().item()):
        return None
    return (bias + extra).float(), w_u.T.float()


def to_hf(model):
    """Export a GPT-2-shaped ``HookedTransformer`` to a Hugging Face ``GPT2LMHeadModel``.

    Works for processed (folded LayerNorm, centred weights) and unprocessed models. Returns
    ``(hf_model, tokenizer)``. Raises :class:`ExportError` naming the property that a GPT-2
    cannot represent (e.g. a non-zero unembedding bias, rotary positions).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = model.cfg
    problems = []
    if cfg.positional_embedding_type != "standard":
        problems.append(f"positional_embedding_type={cfg.positional_embedding_type!r} (need 'standard')")
    if cfg.normalization_type not in ("LN", "LNPre"):
        problems.append(f"normalization_type={cfg.normalization_type!r} (need 'LN' or 'LNPre')")
    if cfg.act_fn not in _HF_ACT:
        problems.append(f"act_fn={cfg.act_fn!r} (need one of {sorted(_HF_ACT)})")
    if cfg.attn_only or cfg.parallel_attn_mlp or cfg.gated_mlp:
        problems.append("attn_only / parallel_attn_mlp / gated_mlp blocks")
    if cfg.n_heads * cfg.d_head != cfg.d_model:
        problems.append(f"n_heads*d_head={cfg.n_heads * cfg.d_head} != d_model={cfg.d_model}")
    if getattr(cfg, "n_key_value_heads", None) not in (None, cfg.n_heads):
        problems.append("grouped-query attention")
    if cfg.d_vocab_out != cfg.d_vocab:
        problems.append(f"d_vocab_out={cfg.d_vocab_out} != d_vocab={cfg.d_vocab}")
    final = _final_norm_bias_and_lm_head(model)
    if final is None:
        problems.append("an unembedding bias b_U that is not of the form b @ W_U (GPT-2's lm_head has no bias)")
    if problems:
        raise ExportError("cannot export to GPT2LMHeadModel: " + "; ".join(problems))

    hf_cfg = GPT2Config(
        vocab_size=cfg.d_vocab,
        n_positions=cfg.n_ctx,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_inner=cfg.d_mlp,
        activation_function=_HF_ACT[cfg.act_fn],
        layer_norm_epsilon=cfg.eps,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=False,
        bos_token_id=getattr(model.tokenizer, "bos_token_id", None),
        eos_token_id=getattr(model.tokenizer, "eos_token_id", None),
    )
    hf = GPT2LMHeadModel(hf_cfg)
    sd: dict[str, torch.Tensor] = {
        "transformer.wte.weight": model.W_E,
        "transformer.wpe.weight": model.W_pos,
    }

    def norm(prefix: str, module) -> None:
        w = getattr(module, "w", None)
        sd[prefix + ".weight"] = w if w is not None else torch.ones(cfg.d_model)
        b = getattr(module, "b", None)
        sd[prefix + ".bias"] = b if b is not None else torch.zeros(cfg.d_model)

    for i, block in enumerate(model.blocks):
        p = f"transformer.h.{i}"
        attn = block.attn
        norm(f"{p}.ln_1", block.ln1)
        norm(f"{p}.ln_2", block.ln2)
        qkv = [einops.rearrange(w, "h m d -> m (h d)") for w in (attn.W_Q, attn.W_K, attn.W_V)]
        sd[f"{p}.attn.c_attn.weight"] = torch.cat(qkv, dim=1)
        sd[f"{p}.attn.c_attn.bias"] = torch.cat([einops.rearrange(b, "h d -> (h d)") for b in (attn.b_Q, attn.b_K, attn.b_V)])
        sd[f"{p}.attn.c_proj.weight"] = einops.rearrange(attn.W_O, "h d m -> (h d) m")
        sd[f"{p}.attn.c_proj.bias"] = attn.b_O
        sd[f"{p}.mlp.c_fc.weight"] = block.mlp.W_in
        sd[f"{p}.mlp.c_fc.bias"] = block.mlp.b_in
        sd[f"{p}.mlp.c_proj.weight"] = block.mlp.W_out
        sd[f"{p}.mlp.c_proj.bias"] = block.mlp.b_out
    norm("transformer.ln_f", model.ln_final)
    sd["transformer.ln_f.bias"], sd["lm_head.weight"] = final
    sd = {k: v.detach().clone().float().cpu() for k, v in sd.items()}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith(("attn.bias", "attn.masked_bias"))]
    if missing or unexpected:
        raise ExportError(f"GPT2LMHeadModel weights not matched: missing {missing}, unexpected {unexpected}")
    hf.eval()
    return hf, model.tokenizer


# --- hook points -------------------------------------------------------------------------
#: Activation sites by the names interp_edit uses, and their TransformerLens hook names.
_SITE_HOOKS = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "mlp_pre": "blocks.{layer}.mlp.hook_pre",
    "mlp_post": "blocks.{layer}.mlp.hook_post",
    "z": "blocks.{layer}.attn.hook_z",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "pattern": "blocks.{layer}.attn.hook_pattern",
    "ln1_scale": "blocks.{layer}.ln1.hook_scale",
    "ln2_scale": "blocks.{layer}.ln2.hook_scale",
    "ln_final_scale": "ln_final.hook_scale",
}


def hook_name(site: str, layer: int | None = None) -> str:
    """The TransformerLens hook name of an activation site (``"mlp_out"``, 3) -> ``"blocks.3.hook_mlp_out"``."""
    try:
        template = _SITE_HOOKS[site]
    except KeyError:
        raise KeyError(f"unknown activation site {site!r}; known: {sorted(_SITE_HOOKS)}") from None
    if "{layer}" in template:
        if layer is None:
            raise ValueError(f"site {site!r} needs a layer")
        return template.format(layer=layer)
    return template


#: Per-block weights by their TransformerLens names (shapes as TransformerLens stores them).
_LAYER_WEIGHTS = {
    "W_in": "mlp.W_in", "b_in": "mlp.b_in", "W_out": "mlp.W_out",  # [d_model, d_mlp], [d_mlp], [d_mlp, d_model]
    "W_V": "attn.W_V", "W_O": "attn.W_O",  # [head, d_model, d_head], [head, d_head, d_model]
}


def layer_weight(model, name: str, layer: int) -> torch.Tensor:
    """A block's weight, detached, without stacking all layers (``("W_out", 3)`` -> ``blocks.3.mlp.W_out``)."""
    try:
        path = _LAYER_WEIGHTS[name]
    except KeyError:
        raise KeyError(f"unknown layer weight {name!r}; known: {sorted(_LAYER_WEIGHTS)}") from None
    module, attr = path.split(".")
    return getattr(getattr(model.blocks[layer], module), attr).detach()


def norm_weight(model, norm: str, layer: int | None = None) -> torch.Tensor:
    """The gain γ [d_model] of a normalisation (``"ln1"``, ``"ln2"`` of a block, or
    ``"ln_final"``); ones where the model has none (folded LayerNorm, ``LNPre``)."""
    module = model.ln_final if norm == "ln_final" else getattr(model.blocks[layer], norm)
    weight = getattr(module, "w", None)
    return weight.detach() if weight is not None else torch.ones(model.cfg.d_model, device=model.cfg.device)


def norm_bias(model, norm: str, layer: int | None = None) -> torch.Tensor:
    """The bias β [d_model] of a normalisation (zeros where it has none)."""
    module = model.ln_final if norm == "ln_final" else getattr(model.blocks[layer], norm)
    bias = getattr(module, "b", None)
    return bias.detach() if bias is not None else torch.zeros(model.cfg.d_model, device=model.cfg.device)


def norm_centres(model) -> bool:
    """Whether the model's normalisations subtract the mean (LayerNorm) or not (RMSNorm)."""
    return model.cfg.normalization_type in ("LN", "LNPre")


def run_with_hooks(model, tokens, hooks: list[tuple[str, Any]]) -> torch.Tensor:
    """Logits of a forward with temporary hooks; the hooks are removed even on an exception."""
    with model.hooks(fwd_hooks=hooks):
        return model(tokens, return_type="logits")


def forward_from_layer(model, residual: torch.Tensor, start_layer: int, hooks: list[tuple[str, Any]] = (),
                       positions: list[int] | None = None,
                       prefix_kv: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None) -> torch.Tensor:
    """Logits of the model run from the input of block ``start_layer`` (``n_layers``: only the
    final norm and unembedding) on a given residual stream, with temporary hooks.

    With ``positions``, only those positions (indices into ``residual``) are unembedded:
    logits [batch, len(positions), vocab]. With ``prefix_kv = (keys, values)`` (per layer,
    [batch, prefix, head, d_head]), ``residual`` holds only the positions after a prefix whose
    attention keys and values are given: the prefix is not recomputed.
    """
    kwargs = {}
    if prefix_kv is not None:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
        from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

        keys, values = prefix_kv
        entries = [TransformerLensKeyValueCacheEntry(k, v, frozen=True) for k, v in zip(keys, values, strict=True)]
        mask = torch.ones(residual.shape[0], keys[0].shape[1], dtype=torch.int, device=residual.device)
        kwargs["past_kv_cache"] = TransformerLensKeyValueCache(entries, mask, frozen=True)
    with model.hooks(fwd_hooks=list(hooks)):
        final = model(residual, start_at_layer=start_layer, stop_at_layer=model.cfg.n_layers, **kwargs)
    if positions is not None:
        final = final[:, positions]
    return unembed(model, model.ln_final(final))


def unembed(model, normalised: torch.Tensor) -> torch.Tensor:
    """Logits from the final-normed residual. Same as TransformerLens' ``model.unembed`` but
    without its per-call copy of W_U (150 MB for a GPT-2 vocabulary)."""
    return normalised @ model.W_U + model.b_U


def run_with_cache(model, tokens, names: list[str], hooks: list[tuple[str, Any]] = ()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and the activations at ``names`` of one forward (extra hooks run first)."""
    cache: dict[str, torch.Tensor] = {}

    def save(act, hook):
        cache[hook.name] = act.detach()

    with model.hooks(fwd_hooks=list(hooks) + [(n, save) for n in names]):
        logits = model(tokens, return_type="logits")
    return logits, cache


# --- parameters and fingerprints (used by the editors) -------------------------------------
#: Weights an ``Edit`` may change, with the activation that multiplies them and the activation
#: their product is added to: ``out += input @ ΔW`` (input flattened over heads for ``W_O``).
_DELTA_SITES = {
    "mlp.W_out": ("mlp_post", "mlp_out"),
    "attn.W_O": ("z", "attn_out"),
}


def parameter_layer(name: str) -> int | None:
    """The block index of a TransformerLens parameter name (``"blocks.3.mlp.W_out"`` -> 3)."""
    parts = name.split(".")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else None


def get_parameter(model, name: str) -> torch.nn.Parameter:
    """A parameter by its TransformerLens name; a clear error for an unknown name."""
    params = dict(model.named_parameters())
    if name not in params:
        raise KeyError(f"model has no parameter {name!r} (e.g. 'blocks.0.mlp.W_out', 'blocks.0.attn.W_O')")
    return params[name]


def weight_matrix_shape(model, name: str) -> tuple[int, int]:
    """The 2-D shape an edit's delta of ``name`` has: ``W_O`` [head, d_head, d_model] is seen as
    [head·d_head, d_model] (the concatenated head outputs ``z`` times ``W_O``)."""
    param = get_parameter(model, name)
    return (int(param.shape[:-1].numel()), int(param.shape[-1]))


def delta_hook_sites(name: str) -> tuple[str, str]:
    """Hook names (input activation, output to add to) that reproduce a weight delta of
    ``name`` with hooks instead of changing the weight."""
    layer = parameter_layer(name)
    suffix = name.split(".", 2)[2] if layer is not None else name
    if suffix not in _DELTA_SITES:
        raise KeyError(f"no hook equivalent for a delta of {name!r}; supported: {sorted(_DELTA_SITES)} of a block")
    source, target = _DELTA_SITES[suffix]
    return hook_name(source, layer), hook_name(target, layer)


def add_persistent_hook(model, name: str, fn) -> Any:
    """Register ``fn(act, hook)`` on hook point ``name`` until :func:`remove_persistent_hook`;
    it survives ``model.reset_hooks()`` and the hook contexts every analysis uses (a
    TransformerLens *permanent* hook). Returns the handle."""
    if name not in model.hook_dict:
        raise KeyError(f"the model has no hook point {name!r}")
    point = model.hook_dict[name]
    point.add_hook(fn, dir="fwd", is_permanent=True)
    return point.fwd_hooks[-1]


def remove_persistent_hook(model, name: str, handle: Any) -> None:
    """Remove a hook added by :func:`add_persistent_hook` (no other hook is touched)."""
    point = model.hook_dict[name]
    handle.hook.remove()
    point.fwd_hooks = [h for h in point.fwd_hooks if h is not handle]


def hook_counts(model) -> dict[str, int]:
    """Hook point name -> number of forward and backward hooks on it (only the non-empty ones);
    ``{}`` means the model carries no hooks."""
    out = {}
    for name, point in model.hook_dict.items():
        n = len(point.fwd_hooks) + len(point.bwd_hooks)
        if n:
            out[name] = n
    return out


def model_fingerprint(model) -> str:
    """A short hash identifying the *base* model: its architecture and the weights that no
    editor changes (token and position embeddings, unembedding). It is therefore the same
    before and after an edit, and differs between two differently trained models."""
    import hashlib

    cfg = model.cfg
    digest = hashlib.sha256()
    digest.update(json.dumps([cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab,
                              cfg.n_ctx, cfg.act_fn, cfg.normalization_type]).encode())
    for tensor in (model.W_E, model.W_pos if cfg.positional_embedding_type == "standard" else None, model.W_U):
        if tensor is None:
            continue
        rows = tensor.detach()[: 4096].to("cpu", torch.float32).contiguous()
        digest.update(rows.numpy().tobytes())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def frozen_parameters(model):
    """No parameter of ``model`` requires grad inside the block; the flags are restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def forward_to_layer(model, tokens: torch.Tensor, stop_layer: int, names: list[str], hooks: list[tuple[str, Any]] = ()) -> dict[str, torch.Tensor]:
    """Activations at ``names`` of a forward that stops before block ``stop_layer`` (the blocks
    after the needed ones are not run)."""
    cache: dict[str, torch.Tensor] = {}

    def save(act, hook):
        cache[hook.name] = act.detach()

    with model.hooks(fwd_hooks=list(hooks) + [(n, save) for n in names]):
        model(tokens, stop_at_layer=stop_layer)
    return cache


def residual_from_layer(model, residual: torch.Tensor, start_layer: int, hooks: list[tuple[str, Any]] = ()) -> torch.Tensor:
    """The final residual stream (before the final norm) of the blocks from ``start_layer`` on,
    run on ``residual`` with temporary hooks; differentiable. Callers normalise and unembed
    only the positions they need (:func:`unembed`)."""
    with model.hooks(fwd_hooks=list(hooks)):
        return model(residual, start_at_layer=start_layer, stop_at_layer=model.cfg.n_layers)
