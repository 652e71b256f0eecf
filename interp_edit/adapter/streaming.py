"""Converting a Hugging Face model to a ``HookedTransformer`` one decoder layer at a time, so
loading needs about one copy of the weights (the converted one) and never a second.

Used by :func:`interp_edit.adapter.loading.load_model` for local Hugging Face folders
(safetensors) and ``hf_model=`` objects on the hooked backend::

    model = load_model("/models/llama-3-8b", dtype="bf16", device="cuda")   # streamed
    model = load_model("mine", hf_model=hf, tokenizer=tok, dtype="bf16")     # hf is left as it was

How: the ``HookedTransformer`` is built with its parameters on the meta device (accelerate's
``init_empty_weights``: no memory); TransformerLens' own weight converter and weight processing
(``get_pretrained_state_dict``'s converter, ``ProcessWeights.process_weights``: fold_ln, centring,
value-bias folding) run first on the model without its decoder layers (embeddings, final norm,
unembedding), then on one decoder layer at a time (the other tensors replaced by meta
stand-ins, so the converter's work on them costs nothing); each converted, processed layer is
moved to the target device and dtype and becomes that layer's parameters. From a folder, the
Hugging Face model is a meta skeleton whose tensors are read from the safetensors files only
for the layer being converted (``safetensors.safe_open``, one tensor at a time) and dropped
after it. The result is the model TransformerLens' ``get_pretrained_state_dict`` +
``load_and_process_state_dict`` give (tests/test_load_streaming.py checks every tiny family).

Precision: from a folder, each tensor is read in float32 (:func:`processing_dtype`; float64 for
a float64 load), converted and processed in it, and cast to the target dtype once, when it becomes
the model's parameter: exactly what a float32 ``hf_model=`` object gives (reading a float32
folder straight into bfloat16 would round each weight twice, before and after folding, and give
another fingerprint). A bfloat16-stored folder is read exactly into float32.

Peak memory above the start: the converted weights (×1.0) plus one decoder layer in float32 (as
read, and as converted) and the float32 working copies of one part of that layer
(TransformerLens' processing upcasts and copies what it is given; a layer is processed in
:data:`LAYER_PARTS`, the other parts as meta stand-ins), or of the embeddings / unembedding,
converted first while nothing else is held. Freed working copies are handed back to
the operating system after each layer (glibc's ``malloc_trim``). Measured on the CPU
(benchmarks/bench_load_memory.py, a 0.85 B Llama-style model in bfloat16): 1.21× the weights'
bytes from a folder, 1.14× from an object (1.17× from a folder while its layers were read in the
target dtype; 1.64× / 1.43× with the layer processed whole and no trim); the larger the model,
the smaller one layer's share.

Every family TransformerLens converts with a per-layer loop over one list of decoder layers
streams (GPT-2, GPT-J, GPT-NeoX, OPT, Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma-2, Phi); a
model this module cannot stream (no such layer list, weights not in safetensors, file keys
that are not the model's parameter names, a missing weight matrix) raises
:class:`CannotStream`, and the loader falls back to TransformerLens' whole-model conversion.
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open

from interp_edit.adapter import layout


class CannotStream(Exception):
    """This model cannot be converted layer by layer (the loader converts it whole instead)."""


# --- the Hugging Face side -------------------------------------------------------------------
def find_layers(hf_model, n_layers: int) -> tuple[str, torch.nn.ModuleList]:
    """The dotted name and the module list of ``hf_model``'s ``n_layers`` decoder layers."""
    for name, module in hf_model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers and name.rsplit(".", 1)[-1] in ("layers", "h"):
            return name, module
    raise CannotStream(f"no list of {n_layers} decoder layers in {type(hf_model).__name__}")


def _view(module: torch.nn.Module, path: list[str], layers: list[torch.nn.Module], meta: bool) -> torch.nn.Module:
    """A shallow stand-in for ``module`` (the original is never changed) whose module list at
    ``path`` holds ``layers``; with ``meta`` every other matrix (embeddings, unembedding) is a
    meta tensor of its shape (vectors, e.g. norm gains, stay: converters combine them with the
    layers' tensors)."""
    new = copy.copy(module)
    if meta:
        new._parameters = {k: v if v is None or v.dim() < 2 else torch.nn.Parameter(v.detach().to("meta"),
                                                                                   requires_grad=False)
                           for k, v in module._parameters.items()}
    children = {}
    for name, child in module._modules.items():
        if path and name == path[0]:
            children[name] = torch.nn.ModuleList(layers) if len(path) == 1 else _view(child, path[1:], layers, meta)
        elif meta and child is not None:
            children[name] = _view(child, [], layers, meta)
        else:
            children[name] = child
    new._modules = children
    return new


class FolderWeights:
    """The safetensors files of a ``save_pretrained`` folder, read a few tensors at a time into
    a meta skeleton of the model (:func:`folder_skeleton`).

    ``dtype`` is the dtype the tensors are read in: :func:`stream_hooked` passes the processing
    dtype (:func:`processing_dtype`, float32 for a half-precision load), never the half-precision
    target, so that each weight is rounded to the target once, after the processing."""

    def __init__(self, folder: str | Path, hf_model, dtype: torch.dtype, device: str | torch.device):
        folder = Path(folder)
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (folder / "model.safetensors").is_file():
            with _opened(folder / "model.safetensors") as f:
                weight_map = {key: "model.safetensors" for key in f.keys()}
        else:
            raise CannotStream(f"no safetensors weights in {folder}")
        renames = _renames(hf_model)
        #: parameter name -> (file, key in the file)
        self.files = {_renamed(key, renames): (folder / file, key) for key, file in weight_map.items()}
        self.dtype, self.device = dtype, torch.device(device)
        # tied parameters (e.g. lm_head.weight = embed_tokens.weight) are one group, stored once
        groups: dict[int, list[str]] = {}
        for name, param in hf_model.named_parameters(remove_duplicate=False):
            groups.setdefault(id(param), []).append(name)
        self.groups = list(groups.values())
        self.model = hf_model
        for names in self.groups:
            if not any(n in self.files for n in names):
                raise CannotStream(f"{folder} holds no weights for {names[0]}")

    def mismatches(self) -> list[str]:
        """``name: file shape, model shape`` for each tensor whose shape in the files is not the
        skeleton's (a config.json that does not describe the folder's weights), read from the
        files' headers only."""
        params = dict(self.model.named_parameters(remove_duplicate=False))
        by_file: dict[Path, list[tuple[str, str]]] = {}
        for name, (file, key) in self.files.items():
            if name in params:
                by_file.setdefault(file, []).append((name, key))
        out = []
        for file, names in by_file.items():
            with _opened(file) as f:
                for name, key in names:
                    shape = tuple(f.get_slice(key).get_shape())
                    if shape != tuple(params[name].shape):
                        out.append(f"{name}: {shape} in {file.name}, {tuple(params[name].shape)} by config.json")
        return out

    @contextmanager
    def loaded(self, keep) -> Iterator[None]:
        """Within the block, the skeleton's parameters whose name satisfies ``keep`` hold the
        file's tensors (in this reader's dtype, on its device); after it, meta again."""
        wanted = [names for names in self.groups if keep(names[0])]
        saved = []
        by_file: dict[Path, list[tuple[str, list[str]]]] = {}
        for names in wanted:
            file, key = self.files[next(n for n in names if n in self.files)]
            by_file.setdefault(file, []).append((key, names))
        try:
            for file, groups in by_file.items():
                with _opened(file) as f:
                    for key, names in groups:
                        tensor = f.get_tensor(key).to(device=self.device, dtype=self.dtype)
                        param = torch.nn.Parameter(tensor, requires_grad=False)
                        for name in names:
                            owner, _, leaf = name.rpartition(".")
                            module = self.model.get_submodule(owner)
                            saved.append((module, leaf, module._parameters[leaf]))
                            module._parameters[leaf] = param
                        del tensor, param
            yield
        finally:
            for module, leaf, old in reversed(saved):
                module._parameters[leaf] = old


@contextmanager
def _opened(file: Path):
    """``safe_open`` of a weights file; a file it cannot read is a :class:`CheckpointError` naming it."""
    from interp_edit.errors import CheckpointError

    try:
        handle = safe_open(str(file), framework="pt")
    except FileNotFoundError:
        raise CheckpointError(f"missing checkpoint file {file}") from None
    except Exception as err:  # noqa: BLE001 - safetensors' own error type varies by version
        raise CheckpointError(f"cannot read checkpoint file {file}: {err}") from None
    with handle as f:
        yield f


def _renames(hf_model) -> list[tuple[list[str], str]]:
    """transformers' renamings of checkpoint keys for this model (e.g. GPT-NeoX's ``embed_out``
    → ``lm_head``): (source patterns, target). A checkpoint conversion that does more than rename
    (merging tensors) cannot be read tensor by tensor."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming
    except ImportError:  # transformers 4 reads the keys as they are
        return []
    out = []
    for transform in get_model_conversion_mapping(hf_model):
        if type(transform) is not WeightRenaming or len(transform.target_patterns) != 1:
            raise CannotStream(f"{type(hf_model).__name__}'s checkpoint keys need {type(transform).__name__}")
        out.append((list(transform.source_patterns), transform.target_patterns[0]))
    return out


def _renamed(key: str, renames: list[tuple[list[str], str]]) -> str:
    for sources, target in renames:
        for source in sources:
            key = re.sub(source, target, key)
    return key


def folder_skeleton(folder: str | Path, dtype: torch.dtype):
    """The Hugging Face model of a ``save_pretrained`` folder with every tensor on the meta
    device (no memory): its class and config, for choosing the backend and converting."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(folder))
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def processing_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a load into ``dtype`` converts and processes the weights in: float32 for
    bfloat16 / float16 (float64 for float64). The result is cast to ``dtype`` once, at the end, as
    for a float32 ``hf_model=`` object: a half-precision folder load is bit-identical to the same
    model's float32 load cast to ``dtype`` (same fingerprint; a float32 edit applies to it)."""
    from interp_edit.precision import accumulate_dtype

    return accumulate_dtype(dtype)


# --- the TransformerLens side ----------------------------------------------------------------
def _convert(hf_view, cfg, n_layers: int):
    """TransformerLens' weight converter of ``cfg``'s architecture on ``hf_view`` with ``n_layers``:
    (its state dict, the config it ran with)."""
    from transformer_lens import loading_from_pretrained as loading

    cfg_part = copy.copy(cfg)
    cfg_part.n_layers = n_layers
    with tempfile.TemporaryDirectory() as tmp:  # TransformerLens wants an existing path; it reads hf_view
        return loading.get_pretrained_state_dict(tmp, cfg_part, hf_view, dtype=cfg.dtype), cfg_part


def _fill_missing(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], device="cpu") -> None:
    """TransformerLens' ``fill_missing_keys`` for what a converter leaves out: norm gains 1,
    biases 0 (HookedTransformer's initial values); a missing weight matrix cannot be streamed."""
    for key, meta in expected.items():
        if key in state:
            continue
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "w":
            state[key] = torch.ones(meta.shape, dtype=meta.dtype, device=device)
        elif leaf == "b" or leaf.startswith(("b_", "_b_")):
            state[key] = torch.zeros(meta.shape, dtype=meta.dtype, device=device)
        else:
            raise CannotStream(f"the converter gives no {key}")


def _process(state, cfg, processing: dict[str, bool]) -> dict[str, torch.Tensor]:
    """``load_and_process_state_dict``'s processing (TransformerLens' ``ProcessWeights``)."""
    from transformer_lens.weight_processing import ProcessWeights

    fold_ln = processing["fold_ln"]
    if fold_ln and cfg.normalization_type not in ("LN", "LNPre", "RMS", "RMSPre"):
        fold_ln = False
    elif fold_ln and not any(k.endswith((".ln1.w", ".ln2.w", "ln_final.w")) for k in state):
        fold_ln = False
    elif fold_ln and cfg.normalization_type in ("LN", "RMS"):  # would swap the norm modules
        raise CannotStream("fold_ln on a config whose norms are not folded yet")
    return ProcessWeights.process_weights(state, cfg, **{**processing, "fold_ln": fold_ln})


#: A decoder layer's parts, processed one after the other (each a tuple of name prefixes within
#: ``blocks.0.``), so that TransformerLens' float32 working copies are of one part at a time: the
#: attention with its input norm, the MLP's input side with its norm, the MLP's output. A tensor no
#: part names (a buffer, a post-norm) is real in every part.
LAYER_PARTS = (("ln1", "attn."), ("ln2", "mlp.W_in", "mlp.W_gate", "mlp.b_in"), ("mlp.W_out", "mlp.b_out"))


def _process_layer(state: dict[str, torch.Tensor], cfg, processing: dict[str, bool]) -> dict[str, torch.Tensor]:
    """:func:`_process` of one converted layer (``blocks.0.``; every other tensor on the meta
    device), one :data:`LAYER_PARTS` part at a time: in each pass the other parts' tensors are
    meta stand-ins, and each output comes from the pass where it is a real tensor. A value that
    depends on a meta tensor is meta (or the pass raises), so a real output is the whole pass's
    value. Where a family's processing mixes parts (the pass raises, or some output is real in
    no pass), the layer is processed whole."""
    def part(key: str) -> int | None:
        if not key.startswith("blocks.0."):
            return None  # outside the layer: a meta stand-in already
        name = key[len("blocks.0."):]
        return next((i for i, prefixes in enumerate(LAYER_PARTS) if name.startswith(prefixes)), -1)

    parts = {key: part(key) for key in state}
    out: dict[str, torch.Tensor] = {}
    names: set[str] = set()
    try:
        for index in sorted({p for p in parts.values() if p is not None and p >= 0}):
            view = {k: v if parts[k] in (index, -1, None) else v.to("meta") for k, v in state.items()}
            done = _process(view, cfg, processing)
            for key, value in done.items():
                if key.startswith("blocks.0."):
                    names.add(key)
                    if key not in out and value.device.type != "meta":
                        out[key] = value
            del view, done
            _release_freed_memory()
    except RuntimeError:  # a part's processing reads another part's tensor
        return _process(state, cfg, processing)
    if names - set(out):
        return _process(state, cfg, processing)
    return out


class _Target:
    """The meta-built HookedTransformer whose parameters are filled in, part by part."""

    def __init__(self, model, device, dtype):
        self.model, self.device, self.dtype = model, torch.device(device), dtype
        self.params = dict(model.named_parameters())
        self.buffers = dict(model.named_buffers())
        self.written: set[str] = set()

    def expected(self, prefix: str, rename: str) -> dict[str, torch.Tensor]:
        return {k.replace(prefix, rename, 1): v for k, v in self.params.items() if k.startswith(prefix)}

    def assign(self, key: str, value: torch.Tensor, source_storages: set[int]) -> None:
        if key in self.buffers:
            self.buffers[key].copy_(value)
            return
        if key not in self.params:
            return  # e.g. folded norm gains: load_state_dict(strict=False) drops them too
        meta = self.params[key]
        if tuple(value.shape) != tuple(meta.shape):
            raise CannotStream(f"{key}: converted shape {tuple(value.shape)}, model shape {tuple(meta.shape)}")
        # attention weights straight into the order the forward reads them (interp_edit.adapter.layout)
        out = layout.as_stored(key, value.detach().to(device=self.device, dtype=self.dtype))
        if out.untyped_storage().data_ptr() in source_storages:  # never share memory with the source
            out = out.clone()
        owner, _, leaf = key.rpartition(".")
        self.model.get_submodule(owner)._parameters[leaf] = torch.nn.Parameter(out, requires_grad=meta.requires_grad)
        self.written.add(key)


def _release_freed_memory() -> None:
    """Hand the memory freed since the last call back to the operating system (glibc's
    ``malloc_trim``; nothing elsewhere). Without it, glibc keeps the freed float32 working copies
    of every converted layer in its heap (its mmap threshold grows to their size), and the
    process' resident memory grows by about half the weights over a load."""
    import ctypes
    import sys

    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # another C library (musl): nothing to trim
        return
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


def _storages(module: torch.nn.Module) -> set[int]:
    return {p.untyped_storage().data_ptr() for p in module.parameters() if p.device.type != "meta"}


@torch.no_grad()  # no autograd graph through the user's parameters (it would keep intermediates alive)
def stream_hooked(hf_model, cfg, tokenizer, processing: dict[str, bool], device, dtype, folder: str | Path | None = None):
    """A ``HookedTransformer`` of ``cfg`` holding ``hf_model``'s weights converted and processed
    (``processing``: the ``load_and_process_state_dict`` flags) one layer at a time, on
    ``device`` in ``dtype``. With ``folder``, ``hf_model`` is its :func:`folder_skeleton` and
    the weights are read from the folder's files; otherwise ``hf_model`` is never changed and
    shares no memory with the result. Raises :class:`CannotStream` (before building anything
    large) where this model cannot be streamed."""
    from accelerate import init_empty_weights
    from transformer_lens import HookedTransformer

    layers_name, layers = find_layers(hf_model, cfg.n_layers)
    path = layers_name.split(".")
    # read in the processing dtype (float32 for a half-precision load): rounding each tensor to
    # bfloat16 here and again after folding would differ from the float32 path by one ulp
    weights = FolderWeights(folder, hf_model, processing_dtype(dtype), device) if folder is not None else None
    with init_empty_weights(include_buffers=False):
        model = HookedTransformer(cfg, tokenizer, move_to_device=False, default_padding_side="right")
    target = _Target(model, device, dtype)
    layer_prefix = layers_name + "."
    vectors = {name: p.dim() < 2 for name, p in hf_model.named_parameters(remove_duplicate=False)}

    # the embeddings, positions, final norm and unembedding (the decoder layers left out)
    with weights.loaded(lambda n: not n.startswith(layer_prefix)) if weights else _nothing():
        state, cfg_rest = _convert(_view(hf_model, path, [], meta=False), cfg, 0)
        _fill_missing(state, {k: v for k, v in target.params.items() if not k.startswith("blocks.")})
        sources = _storages(hf_model)
        # the embedding side and the unembedding side one after the other (their processing is
        # independent), each with the other as meta stand-ins: half the float32 working copies
        for side in (lambda k: k.startswith(("embed.", "pos_embed.")), lambda k: not k.startswith(("embed.", "pos_embed."))):
            part = _process({k: v if side(k) else v.to("meta") for k, v in state.items()}, cfg_rest, processing)
            for key in [k for k in part if side(k)]:
                target.assign(key, part.pop(key), sources)
            del part
        del state, sources
    _release_freed_memory()

    for index in range(cfg.n_layers):
        prefix = f"{layer_prefix}{index}."
        # this layer, and the vectors outside the layers (a converter may combine them with it)
        def keep(name, prefix=prefix):
            return name.startswith(prefix) or (not name.startswith(layer_prefix) and vectors.get(name, False))

        with weights.loaded(keep) if weights else _nothing():
            layer = layers[index]
            state, cfg_one = _convert(_view(hf_model, path, [layer], meta=True), cfg, 1)
            state = {k: v if k.startswith("blocks.0.") else v.to("meta") for k, v in state.items()}
            _fill_missing(state, target.expected(f"blocks.{index}.", "blocks.0."))
            _fill_missing(state, {k: v for k, v in target.params.items() if not k.startswith("blocks.")}, "meta")
            sources = _storages(layer)
            state = _process_layer(state, cfg_one, processing)
            for key in [k for k in state if k.startswith("blocks.0.")]:
                target.assign(f"blocks.{index}." + key[len("blocks.0."):], state.pop(key), sources)
            del state, sources, layer
        _release_freed_memory()

    missing = sorted(set(target.params) - target.written)
    if missing:
        raise CannotStream(f"nothing converted for {missing[:4]}")
    model.move_model_modules_to_device()
    model.eval()
    return model


@contextmanager
def _nothing() -> Iterator[None]:
    yield
