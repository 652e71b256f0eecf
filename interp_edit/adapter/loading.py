"""Loading models as TransformerLens ``HookedTransformer``s: the built-in toy world, local
Hugging Face folders and model objects (converted offline), hub names, and checkpoints."""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from interp_edit.adapter import bridge, config_fields, equivalence, families, layout, streaming
from interp_edit.adapter.architecture import check_supported
from interp_edit.errors import (
    CheckpointError,
    ExportError,
    InvalidArgumentError,
    ModelNotFoundError,
    UnsupportedArchitectureError,
)


class BuiltinModels(dict):
    """Built-in models and the folder (inside the installed package) that holds each one: a
    plain ``dict`` of name -> ``Path``; :func:`load_model` resolves these names offline.

    >>> sorted(BUILTIN_MODELS)
    ['toyworld']
    >>> (BUILTIN_MODELS["toyworld"] / "config.json").is_file()
    True
    >>> toy = load_model("toyworld")            # the same as load_model(str(BUILTIN_MODELS["toyworld"]))
    """


BUILTIN_MODELS: dict[str, Path] = BuiltinModels({
    "toyworld": Path(__file__).parent.parent / "toyworld" / "checkpoint",
})

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
        "hub or its cache; under TransformerLens 4 (the bridge backend) also a Hugging Face repository "
        "id ('owner/name'). A local Hugging Face folder (with config.json) or a model object "
        "(hf_model=...) is converted offline with TransformerLens' weight converters."
    )


def build_hooked_transformer(config: dict[str, Any], tokenizer=None, *, init_weights: bool = True):
    """A fresh ``HookedTransformer`` from a plain config dict (HookedTransformerConfig fields).
    What builds one (the toy world's trainer) needs TransformerLens 3.x: under 4.x this raises
    :class:`InvalidArgumentError` saying so."""
    if not bridge.hooked_available():
        from importlib.metadata import version

        raise InvalidArgumentError(
            f"building a HookedTransformer from a config (the toy world's trainer does) needs TransformerLens 3.x: "
            f"TransformerLens {version('transformer-lens')} removed HookedTransformer; install transformer-lens<4 to "
            "train, or load an existing model with backend='bridge'"
        )
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(**{**config, "init_weights": init_weights})
    return _laid_out(HookedTransformer(cfg, tokenizer=tokenizer, default_padding_side="right"))


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
    backend: str | None = None,
    check_equivalence: bool | None = None,
    **from_pretrained_kwargs: Any,
):
    """Load a model as a TransformerLens ``HookedTransformer`` (``backend="hooked"``) or
    ``TransformerBridge`` (``backend="bridge"``, see :mod:`interp_edit.adapter.bridge`: the
    Hugging Face weights, unprocessed). ``backend=None`` picks the family's default: hooked
    where TransformerLens has ``HookedTransformer`` (3.x) and a converter for the family,
    else the bridge (families only the bridge has, e.g. StarCoder2, StableLM; every family
    under TransformerLens 4). Asking for a backend that cannot load the model raises an error
    naming the one that can.

    - ``"toyworld"`` (default): the embedded toy-world model, read from the files shipped in the
      package; never trains, never touches the network. Its weights are *not* processed
      (no LayerNorm folding) unless a processing flag is set, so ``W_out`` etc. are the real
      weights and export to Hugging Face is exact.
    - a local Hugging Face folder (containing ``config.json``) or ``hf_model=<PreTrainedModel>``:
      converted offline with TransformerLens' own config and weight converters (TransformerLens'
      ``from_pretrained`` would still ask the hub for the config). Pass ``tokenizer=`` unless the
      folder holds tokenizer files.
      Memory: the hooked backend converts one decoder layer at a time
      (:mod:`~interp_edit.adapter.streaming`), so loading needs the converted weights plus one
      layer's float32 working copies, with the weights made directly in ``dtype`` on ``device``
      (measured on the CPU, a 0.85 B Llama-style model in bfloat16: peak above the start 1.34×
      the weights' bytes from a folder, 1.46–1.60× from an object, against 8.45× and 6.26×
      before; see docs/gpu.md); a folder's Hugging Face weights are read one
      layer at a time and dropped, a ``hf_model`` is left unchanged (and keeps its own memory).
      The bridge reads a folder straight into ``dtype`` on ``device`` (×1.0) and wraps an
      ``hf_model`` in place (no copy).
    - any other name: ``HookedTransformer.from_pretrained(name, ...)``, the path users with a hub
      call (e.g. ``"gpt2-xl"``).

    Every model is checked against :func:`~interp_edit.adapter.architecture.check_supported`:
    an architecture the toolkit does not cover raises ``UnsupportedArchitectureError`` naming
    what is missing, here rather than deep inside an analysis.

    ``dtype``: the weights' dtype (``torch.float32`` default, ``torch.bfloat16``, ``torch.float16``,
    ``torch.float64`` or a name such as ``"bf16"``); what runs in which precision is the rule of
    :mod:`interp_edit.precision`. Another dtype raises ``InvalidArgumentError`` before loading.

    Every argument is checked where it enters, before anything is loaded (a ``hf_model`` passed
    in is left as it was): ``name`` a str (or a path), ``device`` a str or ``torch.device`` this
    machine has (``"meta"`` only for an ``hf_model`` built on the meta device: weights loaded
    there would be dropped), the
    processing flags ``True`` / ``False`` / ``None``, ``hf_model`` a ``transformers.PreTrainedModel``,
    ``tokenizer`` a ``transformers.PreTrainedTokenizerBase`` of at most the model's vocabulary
    (a smaller one is fine). A model converted from Hugging Face (a folder or ``hf_model=``) needs
    a tokenizer on either backend (:func:`~interp_edit.adapter.bridge.require_tokenizer`). The
    wrong kind raises ``InvalidArgumentError`` naming the argument, what was given and what is
    expected:

    >>> load_model("mine", hf_model="gpt2")
    Traceback (most recent call last):
    ...
    interp_edit.errors.InvalidArgumentError: hf_model= must be a Hugging Face model object ...

    >>> toy = load_model("toyworld")                          # the shipped model, offline
    >>> toy.cfg.n_layers, toy.cfg.d_model
    (6, 128)
    >>> type(toy).__name__ in ("HookedTransformer", "TransformerBridge")  # 3.x: hooked by default; 4.x: the bridge
    True
    >>> from interp_edit.adapter import architecture
    >>> from interp_edit.adapter.tiny import tiny_hf_model    # any Hugging Face model object
    >>> hf = tiny_hf_model("llama", vocab_size=len(model.tokenizer))
    >>> tiny = load_model("tiny-llama", hf_model=hf, tokenizer=model.tokenizer)
    >>> architecture(tiny).norm, architecture(tiny).positional, architecture(tiny).gated_mlp
    ('rmsnorm', 'rotary', True)

    A model loaded from Hugging Face (an object, a folder, or a hub model on the bridge) is
    compared with the Hugging Face model on a short probe at load
    (:mod:`~interp_edit.adapter.equivalence`: one forward of each, both already in memory):
    beyond a dtype-aware tolerance the load is refused (``UnsupportedArchitectureError`` naming
    the largest log-probability difference and the config fields set away from their defaults),
    and the measured difference is recorded on the model
    (:func:`~interp_edit.adapter.equivalence.load_check`). ``check_equivalence``: ``None``
    (default) checks wherever both models are in memory — a hooked load streamed from a folder
    holds no Hugging Face model, and records that the check was skipped; ``True`` checks that
    one too (reading the folder's model whole for the probe: one more copy of the weights,
    dropped after); ``False`` measures and records the difference but never refuses. Configs
    no backend covers (mixture-of-experts MLPs, ALiBi) are refused before anything is converted
    (:func:`~interp_edit.adapter.families.check_covered`).

    Processing flags left as ``None`` take TransformerLens' defaults for hub and Hugging Face
    models (all True; but no unembedding centring under a final-logit soft-cap, see
    :func:`_local_processing`) and no processing for the toy world.
    """
    from interp_edit.precision import check_dtype

    dtype = check_dtype(dtype)  # the one dtype rule: interp_edit.precision
    flags = dict(
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
        fold_value_biases=fold_value_biases,
    )
    name = _check_load_args(name, device, flags, hf_model, tokenizer)
    _check_equivalence_arg(check_equivalence)
    bridge.check_backend(backend)
    if backend is None and not bridge.hooked_available():
        backend = "bridge"
    if backend == "bridge":
        if any(flags.values()):
            raise InvalidArgumentError(
                f"backend='bridge' keeps the Hugging Face weights unprocessed: "
                f"{sorted(k for k, v in flags.items() if v)} need backend='hooked'"
            )
        if from_pretrained_kwargs:
            raise TypeError(f"load_model(backend='bridge') takes no from_pretrained options: {sorted(from_pretrained_kwargs)}")
    if hf_model is None and name in BUILTIN_MODELS:
        name = str(BUILTIN_MODELS[name])
    elif hf_model is None and Path(name).is_dir() and not (Path(name) / CONFIG_FILE).is_file():
        raise CheckpointError(f"missing checkpoint file {Path(name) / CONFIG_FILE}")
    elif hf_model is None and _path_like(name) and not Path(name).exists():
        raise ModelNotFoundError(f"no such folder {name!r} (from {os.getcwd()!r}); load_model reads a model folder "
                                 "written by save_pretrained or save_checkpoint, or a name it knows")
    if hf_model is None and _is_local_hf_folder(name) and not any((Path(name) / f).is_file() for f in HF_WEIGHT_FILES):
        raise CheckpointError(f"missing weights file in {name}: none of {', '.join(HF_WEIGHT_FILES)}")
    if hf_model is not None or _is_local_hf_folder(name):
        folder = None
        if hf_model is None:  # the folder's model as a meta skeleton: its class and config, no memory
            folder, tokenizer = name, _folder_tokenizer(name, tokenizer)
            _check_tokenizer_fits(tokenizer, name, backend, _folder_vocab(name), folder=name)
            hf_model = _folder_skeleton(name, dtype)
            _check_folder_weights(name, hf_model, dtype)
            if hf_model is None:
                folder, (hf_model, tokenizer) = None, _read_local_hf(name, tokenizer, dtype)
        else:
            _check_tokenizer_fits(tokenizer, name, backend, _model_vocab(hf_model))
        families.check_covered(hf_model.config, type(hf_model).__name__)  # MoE, ALiBi: before any conversion
        probe_vocab = _probe_vocab(tokenizer, hf_model)
        if backend is None:
            backend = _default_backend(hf_model)
        if backend == "bridge":
            bridge.check_bridge_family(type(hf_model).__name__, hooked_can=_hooked_converts(hf_model))
            _check_conversion(hf_model, "bridge")
            if folder is not None:
                hf_model = _read_local_hf_weights(folder, dtype, device)
            reference = equivalence.reference(hf_model, probe_vocab)  # before the bridge wraps (and casts) it
            model = check_supported(bridge.boot(name, hf_model, tokenizer, device, dtype))
            return _verified(model, reference, "bridge", name, check_equivalence)
        if from_pretrained_kwargs:
            raise TypeError(f"load_model({name!r}) takes no from_pretrained options: {sorted(from_pretrained_kwargs)}")
        _check_conversion(hf_model, "hooked")
        if type(hf_model).__name__ in bridge.BRIDGE_ARCHITECTURES and not _hooked_converts(hf_model):
            raise UnsupportedArchitectureError(
                f"model architecture {type(hf_model).__name__!r} cannot run on backend='hooked': TransformerLens' "
                "HookedTransformer has no converter for it; load it with backend='bridge' (or leave backend unset)"
            )
        model = _load_local_hf(name, hf_model, tokenizer, device, dtype, flags, folder=folder)
        model.cfg.model_name = name  # the name it was loaded by, as on the bridge (not hooked_config's temporary folder)
        model = check_supported(model, hf_config=hf_model.config)
        reference = equivalence.reference(hf_model, probe_vocab)  # None for a folder's meta skeleton
        if reference is None and check_equivalence and folder is not None:  # asked for: read the folder's model whole for the probe
            reference = equivalence.reference(_read_local_hf_weights(folder, dtype, "cpu"), probe_vocab)
        return _verified(model, reference, "hooked", name, check_equivalence)
    if check_equivalence and (_is_checkpoint_folder(name) or backend != "bridge"):
        raise InvalidArgumentError(
            f"check_equivalence=True compares a model loaded from Hugging Face (hf_model=, a Hugging Face folder, or a hub "
            f"model on backend='bridge') with the Hugging Face model; {name!r} is not loaded from one"
        )
    if _is_checkpoint_folder(name) and backend == "bridge":
        return check_supported(_checkpoint_on_bridge(name, device, dtype))
    if _is_checkpoint_folder(name):
        if from_pretrained_kwargs:
            raise TypeError(f"load_model({name!r}) takes no from_pretrained options: {sorted(from_pretrained_kwargs)}")
        processing = {k: bool(v) for k, v in flags.items()}
        return check_supported(load_checkpoint(name, device=device, dtype=dtype, **processing))
    if backend == "bridge":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not hub_name_loadable(name):
            raise ModelNotFoundError(f"unknown model name {name!r}. {_resolution_help()}")
        try:
            hf = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
        except OSError as err:  # offline, or no such repository (or a mistyped relative folder)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelNotFoundError(f"{name!r} is no folder here ({os.getcwd()!r}) and could not be loaded from the "
                                     f"Hugging Face hub: {first[:300]}") from err
        families.check_covered(hf.config, type(hf).__name__)
        bridge.check_bridge_family(type(hf).__name__, hooked_can=_hooked_converts(hf))
        _check_conversion(hf, "bridge")
        _check_tokenizer_fits(tokenizer, name, backend, _model_vocab(hf), required=False)
        tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(name)
        reference = equivalence.reference(hf, _probe_vocab(tokenizer, hf))
        return _verified(check_supported(bridge.boot(name, hf, tokenizer, device, dtype)), reference, "bridge", name,
                         check_equivalence)
    processing = {k: HUB_PROCESSING[k] if v is None else v for k, v in flags.items()}
    model = _load_hub(name, device, dtype, tokenizer, processing, from_pretrained_kwargs)
    _check_tokenizer_fits(tokenizer, name, backend, model.cfg.d_vocab, required=False)  # the hub's vocabulary: known once loaded
    return check_supported(model)


# --- the load-time equivalence check (interp_edit.adapter.equivalence) ------------------------
def _check_equivalence_arg(value) -> None:
    if value is not None and not isinstance(value, bool):
        raise InvalidArgumentError(
            f"check_equivalence= must be True, False or None (the default: check wherever the Hugging Face model is in "
            f"memory), got {_shown(value)}"
        )


def _probe_vocab(tokenizer, hf_model) -> int:
    """The ids the probe may use: those of the tokenizer that the model's embedding has."""
    vocab = _model_vocab(hf_model) or len(tokenizer)
    return min(vocab, len(tokenizer)) if tokenizer is not None else vocab


def _verified(model, reference, backend: str, name: str, check_equivalence: bool | None):
    """``model`` compared with the Hugging Face ``reference`` (refused beyond the tolerance
    unless ``check_equivalence=False``), the result recorded on it; or, where no Hugging Face
    model was in memory, the reason recorded."""
    if reference is None:
        return equivalence.skipped(
            model, backend,
            "not checked: a hooked load from a folder streams the Hugging Face weights one layer at a time, so no Hugging "
            "Face model is in memory to compare with (check_equivalence=True reads it whole for the check)",
        )
    return equivalence.verify(model, reference, backend, name, enforce=check_equivalence is not False)


# --- the arguments, checked where they enter load_model (before anything is loaded) ---------
def _shown(value: Any) -> str:
    """``value`` for an error message: its repr (cut short) and its type's name."""
    text = repr(value)
    return f"{text if len(text) <= 80 else text[:77] + '...'} ({type(value).__name__})"


def _check_load_args(name, device, flags: dict[str, Any], hf_model, tokenizer) -> str:
    """Check the kind of each of load_model's arguments (``backend`` and ``dtype`` have their own
    rules); return ``name`` as a str (a path is taken as its str). Raises
    :class:`InvalidArgumentError` (:class:`~interp_edit.errors.EmptyInputError` for an empty
    name) naming the argument, what was given and what is expected."""
    from interp_edit.validation import check_str

    name = check_str(os.fspath(name) if isinstance(name, os.PathLike) else name, "name")
    _check_hf_model(hf_model)
    _check_device(device, hf_model)
    for flag, value in flags.items():
        if value is not None and not isinstance(value, bool):
            raise InvalidArgumentError(
                f"{flag}= must be True, False or None (the default for the model's kind), got {_shown(value)}"
            )
    _check_tokenizer_kind(tokenizer)
    return name


def _check_device(device, hf_model=None) -> None:
    """``device``: a ``torch.device`` or a str torch parses as one, on hardware this machine has.
    ``"meta"`` only for an ``hf_model`` that is itself on the meta device (a weightless model the
    caller built to read its architecture): loading real weights there would drop them."""
    if not isinstance(device, (str, torch.device)):
        raise InvalidArgumentError(f"device= must be a str or torch.device (e.g. 'cpu', 'cuda', 'cuda:1'), got {_shown(device)}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise InvalidArgumentError(f"device= {device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1'): {err}") from None
    if parsed.type == "meta" and not (hf_model is not None and all(p.is_meta for p in hf_model.parameters())):
        raise InvalidArgumentError(
            f"device= {device!r}: a model on the meta device holds no weights, so no analysis or editor can run on "
            "it; load on 'cpu' or 'cuda' (device='meta' is for an hf_model= built on the meta device, to read its "
            "architecture)")
    count = torch.cuda.device_count() if parsed.type == "cuda" and torch.cuda.is_available() else 0
    if parsed.type == "cuda" and (parsed.index or 0) >= count:
        raise InvalidArgumentError(f"device= {device!r}: this machine has {count} CUDA device(s) torch can use")
    if parsed.type not in ("cpu", "cuda"):  # mps, xpu, ...: an empty tensor there says whether torch can use it
        try:
            torch.empty(0, device=parsed)
        except (RuntimeError, AssertionError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InvalidArgumentError(f"device= {device!r}: torch cannot use it on this machine ({first[:200]})") from None


def _check_hf_model(hf_model) -> None:
    """``hf_model``: None or a Hugging Face model object (``transformers.PreTrainedModel``)."""
    from transformers import PreTrainedModel

    if hf_model is None or isinstance(hf_model, PreTrainedModel):
        return
    hint = f"; to load the folder or hub model {hf_model!r}, pass it as the name: load_model({hf_model!r})" if isinstance(
        hf_model, (str, os.PathLike)) else ""
    raise InvalidArgumentError(
        f"hf_model= must be a Hugging Face model object (a transformers.PreTrainedModel, e.g. "
        f"AutoModelForCausalLM.from_pretrained(folder)) or None, got {_shown(hf_model)}{hint}"
    )


def _check_tokenizer_kind(tokenizer) -> None:
    """``tokenizer``: None or a Hugging Face tokenizer (``transformers.PreTrainedTokenizerBase``)."""
    from transformers import PreTrainedTokenizerBase

    if tokenizer is None or isinstance(tokenizer, PreTrainedTokenizerBase):
        return
    raise InvalidArgumentError(
        f"tokenizer= must be a Hugging Face tokenizer (a transformers.PreTrainedTokenizerBase, e.g. "
        f"AutoTokenizer.from_pretrained(folder)) or None, got {_shown(tokenizer)}"
    )


def _check_tokenizer_fits(tokenizer, name: str, backend: str | None, vocab: int | None, *,
                          folder: str | None = None, required: bool = True) -> None:
    """A model converted from Hugging Face needs a tokenizer (``required``: the rule of
    :func:`~interp_edit.adapter.bridge.require_tokenizer`, on both backends), and one whose ids
    all index the model's embedding: ``len(tokenizer)`` at most the model's vocabulary
    ``vocab`` (a smaller tokenizer is fine: models often pad their vocabulary)."""
    if required:
        bridge.require_tokenizer(tokenizer, name, backend, folder=folder)
    if tokenizer is None or vocab is None or len(tokenizer) <= vocab:
        return
    raise InvalidArgumentError(
        f"tokenizer= has {len(tokenizer)} tokens (len(tokenizer)) but model {name!r} has a vocabulary of {vocab} "
        f"(d_vocab, its embedding's rows): ids {vocab}..{len(tokenizer) - 1} would index past the embedding; pass the "
        f"model's own tokenizer, or one of at most {vocab} tokens"
    )


def _model_vocab(hf_model) -> int | None:
    """The rows of a Hugging Face model's token embedding (its config's ``vocab_size`` where the
    model does not say), read without touching the weights."""
    try:
        return int(hf_model.get_input_embeddings().weight.shape[0])
    except (AttributeError, NotImplementedError, TypeError, IndexError):
        config = hf_model.config
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        return getattr(config, "vocab_size", None)


def _folder_vocab(folder: str) -> int | None:
    """A Hugging Face folder's ``vocab_size`` (its config.json's, or its text config's)."""
    data = _read_json(Path(folder) / CONFIG_FILE)
    text = data.get("text_config")
    return data.get("vocab_size") or (text.get("vocab_size") if isinstance(text, dict) else None)


#: the weights files of a ``save_pretrained`` folder, one of which it holds
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _path_like(name: str) -> bool:
    """A name that can only be a path, not a hub id or a TransformerLens name: absolute,
    relative to ``.`` / ``..`` / ``~``, ending in a separator, or of more than two parts."""
    return (os.path.isabs(name) or name.startswith(("./", "../", "~", ".\\", "..\\")) or name.endswith(("/", os.sep))
            or name.count("/") >= 2)


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


def _official_model_name(name: str) -> str | None:
    """TransformerLens' official name for a hub name or alias, or None (its registry moved to
    ``transformer_lens.supported_models`` in 4.0)."""
    try:
        from transformer_lens.supported_models import get_official_model_name
    except ImportError:
        from transformer_lens.loading_from_pretrained import get_official_model_name
    try:
        return get_official_model_name(name)
    except ValueError:
        return None


def hub_name_loadable(name: str) -> bool:
    """Whether ``load_model`` can resolve ``name`` as a hub model without loading it: a
    TransformerLens official name or alias, or — on the bridge under TransformerLens 4, which
    loads any Hugging Face repository — an ``owner/name`` repository id."""
    if _official_model_name(name) is not None:
        return True
    return not bridge.hooked_available() and name.count("/") == 1 and all(name.split("/"))


def _load_hub(name, device, dtype, tokenizer, processing, kwargs):
    from transformer_lens import HookedTransformer

    if _official_model_name(name) is None:
        raise ModelNotFoundError(f"unknown model name {name!r}. {_resolution_help()}")
    return _laid_out(HookedTransformer.from_pretrained(
        name, device=device, dtype=dtype, tokenizer=tokenizer, **processing, **kwargs
    ))


def _hooked_converts(hf_model) -> bool:
    """Whether the hooked backend can load ``hf_model`` (HookedTransformer present and a config
    converter for its architecture)."""
    if not bridge.hooked_available() or config_fields.conversion_gaps(hf_model.config, "hooked"):
        return False
    try:
        hooked_config(hf_model.config, architecture=type(hf_model).__name__)
    except UnsupportedArchitectureError:
        return False
    return True


def _check_conversion(hf_model, backend: str) -> None:
    """Refuse, before converting, a config that uses what ``backend``'s conversion does not
    convert (:func:`~interp_edit.adapter.config_fields.conversion_gaps`), naming each field and
    the backend that does convert it."""
    gaps = config_fields.conversion_gaps(hf_model.config, backend)
    if gaps:
        other = "hooked" if backend == "bridge" else "bridge"
        raise UnsupportedArchitectureError(
            f"model architecture {type(hf_model).__name__!r} cannot run on backend={backend!r}: its conversion does not "
            f"convert {'; '.join(gaps)}; load it with backend={other!r} (or leave backend unset)"
        )


def _default_backend(hf_model) -> str:
    """The family's default backend: hooked where it converts, else the bridge."""
    if _hooked_converts(hf_model):
        return "hooked"
    bridge.check_bridge_family(type(hf_model).__name__, hooked_can=False)
    return "bridge"


def _read_local_hf(name, tokenizer, dtype):
    """The folder's Hugging Face model, read whole (TransformerLens' whole-model conversion)."""
    return _read_local_hf_weights(name, dtype, "cpu"), _folder_tokenizer(name, tokenizer)


def _read_local_hf_weights(name, dtype, device):
    """The folder's Hugging Face model in ``dtype`` on ``device``, read straight into its
    parameters (transformers builds it on the meta device first: no second copy)."""
    from transformers import AutoModelForCausalLM

    device = torch.device(device)
    placement = {} if device.type == "cpu" else {"device_map": {"": device}}
    model, report = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, low_cpu_mem_usage=True,
                                                         output_loading_info=True, **placement)
    missing = sorted(report.get("missing_keys") or [])
    if missing:  # transformers fills them with random values; its report of it is not shown
        raise CheckpointError(
            f"the weights in {name} do not match {Path(name) / CONFIG_FILE}: no tensor for "
            f"{', '.join(missing[:4])}" + (f" (and {len(missing) - 4} more)" if len(missing) > 4 else "")
            + " (a missing or partial weights file?)")
    return model


def _folder_tokenizer(name, tokenizer):
    if tokenizer is None and (Path(name) / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name)
    return tokenizer


def _folder_skeleton(name, dtype):
    """The folder's model with its tensors on the meta device, or None where transformers
    cannot build it that way (the folder is then read whole)."""
    try:
        return streaming.folder_skeleton(name, dtype)
    except (ValueError, RuntimeError, NotImplementedError, TypeError, KeyError):
        return None


def _check_folder_weights(folder, skeleton, dtype) -> None:
    """Before any weight is read: the folder's safetensors files readable, and each tensor of the
    shape its config.json gives (else :class:`CheckpointError` naming the file or the tensors,
    where transformers would raise a bare ``RuntimeError`` pointing at a report it did not show)."""
    if skeleton is None:
        return
    try:
        weights = streaming.FolderWeights(folder, skeleton, dtype, "cpu")
    except streaming.CannotStream:  # not safetensors, or keys that are not the parameters: transformers reads it
        return
    wrong = weights.mismatches()
    if wrong:
        raise CheckpointError(
            f"the weights in {folder} do not match {Path(folder) / CONFIG_FILE}: {'; '.join(wrong[:4])}"
            + (f" (and {len(wrong) - 4} more)" if len(wrong) > 4 else "")
        )


def _checkpoint_on_bridge(folder, device, dtype):
    """A toy-world-style checkpoint (HookedTransformer weights) on the bridge backend: exported
    to a GPT-2 Hugging Face model (:func:`~interp_edit.adapter.export.checkpoint_to_hf`, read from
    the weights file: no HookedTransformer is built) and booted. A processed checkpoint's norms
    (``fold_ln``: ``LNPre``, no gain or bias in the file) become LayerNorms of gain 1 and bias 0,
    which compute what ``LNPre`` does; the folded gains are in the weights after them."""
    from types import SimpleNamespace

    from interp_edit.adapter.export import checkpoint_to_hf

    folder = Path(folder)
    meta, tokenizer, state = _read_checkpoint(folder)
    cfg = SimpleNamespace(**{"attn_only": False, "parallel_attn_mlp": False, "gated_mlp": False, "n_key_value_heads": None,
                             "d_vocab_out": meta["model"].get("d_vocab"), **meta["model"]})

    def tree(prefix, norms=()):
        out = SimpleNamespace(**{norm: SimpleNamespace() for norm in norms})  # a norm with no tensor in the file: LNPre
        for key, value in state.items():
            if key.startswith(prefix):
                module, _, attr = key[len(prefix):].rpartition(".")
                node = out
                for part in filter(None, module.split(".")):
                    node = node.__dict__.setdefault(part, SimpleNamespace())
                setattr(node, attr, value)
        return out

    top = SimpleNamespace(
        cfg=cfg, tokenizer=tokenizer, W_E=state["embed.W_E"], W_pos=state["pos_embed.W_pos"],
        W_U=state["unembed.W_U"], b_U=state["unembed.b_U"], ln_final=tree("ln_final."),
        blocks=[tree(f"blocks.{i}.", ("ln1", "ln2")) for i in range(cfg.n_layers)],
    )
    try:
        hf, _ = checkpoint_to_hf(top)
    except RuntimeError as err:  # the weights' shapes are not the config's
        detail = str(err).strip().splitlines()[1:2] or [str(err)]
        raise CheckpointError(
            f"checkpoint file {folder / WEIGHTS_FILE} does not match {folder / CONFIG_FILE}: {detail[0].strip()}"
        ) from None
    except (AttributeError, KeyError, ExportError) as err:
        raise UnsupportedArchitectureError(
            f"checkpoint {folder} is not GPT-2-shaped ({err}), so backend='bridge' cannot load it; load it with backend='hooked'"
        ) from None
    model = bridge.boot(str(meta["model"].get("model_name", folder.name)), hf, tokenizer, device, dtype)
    model.checkpoint_config = meta
    return model


def _local_processing(flags: dict[str, bool | None], cfg) -> dict[str, bool]:
    """The processing flags for a converted Hugging Face model: TransformerLens' hub defaults,
    except that the unembedding is not centred under a final-logit soft-cap (Gemma-2):
    ``cap·tanh(x/cap)`` is not invariant to the per-position shift centring adds, so the
    centred model would predict other probabilities."""
    processing = {k: HUB_PROCESSING[k] if v is None else bool(v) for k, v in flags.items()}
    if (cfg.output_logits_soft_cap or 0) > 0:
        if flags["center_unembed"]:
            raise InvalidArgumentError(
                f"center_unembed=True changes the outputs of {cfg.original_architecture} "
                f"(final-logit soft-cap {cfg.output_logits_soft_cap}: the cap is not shift-invariant); "
                "leave center_unembed unset or pass False"
            )
        processing["center_unembed"] = False
    return processing


def _load_local_hf(name, hf_model, tokenizer, device, dtype, flags, *, folder=None, streamed=True):
    """Mirror of TransformerLens' from_pretrained for a local folder or model object, with no hub.

    Converted one decoder layer at a time (:mod:`~interp_edit.adapter.streaming`: the
    converted weights plus one layer's working copies, no second full copy; ``hf_model`` is left unchanged; from
    ``folder``, ``hf_model`` is its meta skeleton and each layer is read from the safetensors
    files and dropped once converted). Where a model cannot be streamed (its weights are not in
    safetensors; a family whose converter does not loop over one list of decoder layers, none
    of GPT-2, GPT-J, GPT-NeoX, OPT, Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma-2, Phi) or with
    ``streamed=False``, TransformerLens converts the whole model at once, as before: the
    Hugging Face model, its converted state dict and the HookedTransformer side by side (×3
    and more)."""
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    fold_ln = HUB_PROCESSING["fold_ln"] if flags["fold_ln"] is None else bool(flags["fold_ln"])

    def config():
        return hooked_config(hf_model.config, architecture=type(hf_model).__name__, fold_ln=fold_ln, device=device,
                             dtype=dtype)

    cfg = config()
    processing = _local_processing(flags, cfg)
    if streamed:
        try:
            return _laid_out(streaming.stream_hooked(hf_model, cfg, tokenizer, processing, device, dtype, folder=folder))
        except streaming.CannotStream:
            cfg = config()
    if folder is not None:  # read in float32 for a half-precision load: processed, then rounded once (as streamed)
        hf_model, tokenizer = _read_local_hf(folder, tokenizer, streaming.processing_dtype(dtype))
    with tempfile.TemporaryDirectory() as tmp:  # TransformerLens wants an existing path; it reads hf_model
        state_dict = loading.get_pretrained_state_dict(tmp, cfg, hf_model, dtype=dtype)
    model = HookedTransformer(cfg, tokenizer, move_to_device=False, default_padding_side="right")
    model.load_and_process_state_dict(state_dict, **processing)
    model.move_model_modules_to_device()
    model.eval()
    return _laid_out(model)


def _laid_out(model):
    """Every hooked load ends here: attention weights stored in the order the forward reads them
    (:mod:`~interp_edit.adapter.layout`)."""
    layout.store_attention_as_read(model)
    return model


def hooked_config(hf_config, *, architecture: str | None = None, fold_ln: bool = True,
                  device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """The ``HookedTransformerConfig`` of a Hugging Face model config, offline and without
    weights: TransformerLens' own conversion (which reads a config folder: the config is
    written to a temporary one, whose name becomes ``model_name``), or ours
    (:mod:`~interp_edit.adapter.families`) for the families TransformerLens converts by hub
    name only. ``architecture`` (e.g. ``"LlamaForCausalLM"``) is needed when the config does
    not list its ``architectures``."""
    from transformer_lens import HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading

    config = copy.deepcopy(hf_config)
    config.architectures = config.architectures or ([architecture] if architecture else None)
    if not config.architectures:
        raise InvalidArgumentError("hooked_config: the Hugging Face config names no architecture; pass architecture=")
    hf_architecture = config.architectures[0]
    with tempfile.TemporaryDirectory() as tmp:
        if hf_architecture in families.CONFIG_BUILDERS:
            fields = families.hooked_config_dict(
                hf_architecture, config, model_name=Path(tmp).name, fold_ln=fold_ln, device=device, dtype=dtype
            )
            return HookedTransformerConfig.from_dict(fields)
        # TransformerLens converts a config from a folder; give it a complete one.
        config.save_pretrained(tmp)
        _complete_config_file(Path(tmp) / CONFIG_FILE)
        try:
            cfg = loading.get_pretrained_model_config(
                tmp, hf_cfg=config.to_dict(), fold_ln=fold_ln, device=device, dtype=dtype
            )
        except (NotImplementedError, KeyError, AttributeError) as err:
            # NotImplementedError: no converter; KeyError / AttributeError: a converter for another kind of
            # model (BERT, T5: TransformerLens' encoders), whose config is no HookedTransformer's
            kind = "" if isinstance(err, NotImplementedError) else (
                f" that makes a HookedTransformer (its conversion fails: {type(err).__name__} {err})")
            raise UnsupportedArchitectureError(
                f"model architecture {hf_architecture!r} is not covered by interp_edit: TransformerLens has no "
                f"config converter for it{kind} (covered: the families of interp_edit.adapter.tiny.FAMILIES and the "
                "other causal language models TransformerLens converts)"
            ) from None
    if getattr(config, "n_inner", None):  # TransformerLens assumes d_mlp = 4 d_model for GPT-2
        cfg.d_mlp = config.n_inner
    cfg.tokenizer_name = None  # never let TransformerLens look the tokenizer up on the hub
    return cfg


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
    from interp_edit.precision import check_dtype

    dtype = check_dtype(dtype)
    folder = Path(folder)
    meta, tokenizer, state_dict = _read_checkpoint(folder)
    weights_file = folder / WEIGHTS_FILE
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
    _laid_out(model)
    #: the checkpoint's config (e.g. a toy world's ``world`` section: see interp_edit.toyworld.model_world)
    model.checkpoint_config = meta
    return model


def _read_checkpoint(folder: Path):
    """(config, tokenizer, weights) of a checkpoint folder; a missing or unreadable file is a
    :class:`CheckpointError` naming it."""
    from safetensors.torch import load_file
    from transformers import PreTrainedTokenizerFast

    meta = _read_json(folder / CONFIG_FILE)
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(f"checkpoint file {folder / CONFIG_FILE} has no 'model' section")
    _check_checkpoint_config(meta["model"], folder / CONFIG_FILE)
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
    return meta, tokenizer, state_dict


def save_checkpoint(model, folder: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write weights (safetensors), config and tokenizer of an unprocessed model to a folder.

    The config records the fields of :data:`_CONFIG_FIELDS` (the toy world's architecture); a
    model whose config sets another field that changes its forward (a gated MLP, grouped-query
    attention, local attention, ...: a converted Hugging Face model of most families), or a
    TransformerBridge, is refused with :class:`CheckpointError` before anything is written (its
    checkpoint would not load, or would load as another model); save the Hugging Face model
    instead (:func:`~interp_edit.adapter.export.to_hf`, or ``model.original_model`` on the bridge)."""
    from safetensors.torch import save_file

    _check_checkpointable(model)
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


#: the checkpoint config's fields by kind (what :func:`_check_checkpoint_config` reads them as)
_POSITIVE_INT_FIELDS = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_vocab")
_TEXT_FIELDS = ("act_fn", "positional_embedding_type", "model_name")
_REQUIRED_FIELDS = ("n_layers", "d_model", "n_ctx", "d_head")


def _check_checkpoint_config(section, path: Path) -> None:
    """The ``model`` section of a checkpoint's config.json holds :data:`_CONFIG_FIELDS` of the
    right types (else :class:`CheckpointError` naming the file and the field, where building the
    model raised a bare ``TypeError`` or ``ValueError``)."""
    def bad(field: str, problem: str) -> CheckpointError:
        return CheckpointError(f"checkpoint file {path}: field 'model.{field}' {problem}")

    def integer(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not isinstance(section, dict):
        raise CheckpointError(f"checkpoint file {path}: 'model' must be an object of config fields, got {section!r:.80}")
    unknown = sorted(set(section) - set(_CONFIG_FIELDS))
    if unknown:
        raise bad(unknown[0], f"is not a checkpoint config field (fields: {', '.join(_CONFIG_FIELDS)})")
    for field in _REQUIRED_FIELDS:
        if field not in section:
            raise bad(field, "is missing")
    for field, value in section.items():
        if field in _POSITIVE_INT_FIELDS and not (integer(value) and value >= 1):
            raise bad(field, f"must be an integer >= 1, got {value!r}")
        if field == "d_vocab_out" and not (integer(value) and (value >= 1 or value == -1)):
            raise bad(field, f"must be an integer >= 1 (or -1: d_vocab), got {value!r}")
        if field in _TEXT_FIELDS and not isinstance(value, str):
            raise bad(field, f"must be a string, got {value!r}")
        if field in ("normalization_type", "original_architecture") and not (value is None or isinstance(value, str)):
            raise bad(field, f"must be a string or null, got {value!r}")
        if field == "eps" and not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf):
            raise bad(field, f"must be a positive number, got {value!r}")
        if field == "default_prepend_bos" and not isinstance(value, bool):
            raise bad(field, f"must be true or false, got {value!r}")
        if field == "seed" and not (value is None or integer(value)):
            raise bad(field, f"must be an integer or null, got {value!r}")


#: HookedTransformerConfig fields a checkpoint need not record: where and in which dtype the model runs, hook
#: switches, initialisation and bookkeeping (none changes what the loaded model computes).
_UNRECORDED_FIELDS = frozenset({
    "device", "n_devices", "dtype", "use_attn_result", "use_split_qkv_input", "use_hook_mlp_in", "use_attn_in",
    "use_hook_tokens", "ungroup_grouped_query_attention", "init_mode", "initializer_range", "init_weights", "n_params",
    "tokenizer_name", "tokenizer_prepends_bos", "from_checkpoint", "checkpoint_index", "checkpoint_label_type",
    "checkpoint_value", "trust_remote_code", "load_in_4bit", "quantization_method", "decoder_start_token_id",
    "tie_word_embeddings", "layer_norm_folding",
})


def _check_checkpointable(model) -> None:
    """Refuse (before writing) a model :func:`save_checkpoint`'s config cannot describe: a bridge, or a
    HookedTransformer whose config differs, in a field that changes the forward, from the one
    :func:`load_checkpoint` builds from the recorded fields."""
    if bridge.is_bridge(model):
        raise CheckpointError(
            "save_checkpoint writes a HookedTransformer's weights; this model is a TransformerBridge (backend='bridge'), "
            "whose weights are its Hugging Face model's: save model.original_model.save_pretrained(folder) and the "
            "tokenizer, then load_model(folder)"
        )
    from transformer_lens import HookedTransformerConfig

    rebuilt = HookedTransformerConfig(**model_config_dict(model)).to_dict()
    current = model.cfg.to_dict()
    lost = sorted(f"{k}={v!r}" for k, v in current.items() if k not in _UNRECORDED_FIELDS and rebuilt.get(k) != v)
    if lost:
        raise CheckpointError(
            f"cannot save model {model.cfg.model_name!r} as a checkpoint: its config.json records only "
            f"{', '.join(_CONFIG_FIELDS)}, and this model also has {', '.join(lost)} (loaded back it would be another "
            "model); save its Hugging Face model instead (to_hf for GPT-2-shaped models, or the Hugging Face model it was "
            "loaded from)"
        )


def model_config_dict(model) -> dict[str, Any]:
    cfg = model.cfg
    return {f: getattr(cfg, f) for f in _CONFIG_FIELDS}

