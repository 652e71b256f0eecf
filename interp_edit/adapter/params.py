"""Weights by name, normalisation parameters, the weights an ``Edit`` may change and their hook
equivalents, and the base-model fingerprint."""

from __future__ import annotations

import contextlib
import json
import weakref
from typing import Any

import torch

from interp_edit.adapter import bridge
from interp_edit.adapter.architecture import INPUT_NORMS, architecture
from interp_edit.adapter.hooks import hook_name

#: Per-block weights by their TransformerLens names (shapes as TransformerLens stores them).
_LAYER_WEIGHTS = {
    "W_in": "mlp.W_in", "b_in": "mlp.b_in", "W_out": "mlp.W_out",  # [d_model, d_mlp], [d_mlp], [d_mlp, d_model]
    "W_V": "attn.W_V", "W_O": "attn.W_O",  # [head, d_model, d_head], [head, d_head, d_model]
}


#: attribute of the model object that holds the stack of edits applied to it in place, oldest
#: first, as ``(edit, saved originals)`` entries (written by :mod:`interp_edit.editing.edit`)
APPLIED_EDITS_ATTR = "_interp_edit_applied"


def applied_edit_stack(model) -> list:
    """The ``(edit, saved)`` entries of the edits applied in place to ``model``, oldest first."""
    return getattr(model, APPLIED_EDITS_ATTR, None) or []


def layer_weight(model, name: str, layer: int) -> torch.Tensor:
    """A block's weight, detached, without stacking all layers (``("W_out", 3)`` -> ``blocks.3.mlp.W_out``)."""
    try:
        path = _LAYER_WEIGHTS[name]
    except KeyError:
        raise KeyError(f"unknown layer weight {name!r}; known: {sorted(_LAYER_WEIGHTS)}") from None
    if bridge.is_bridge(model):
        weight = bridge.parameter(model, f"blocks.{layer}.{path}").detach()
        if name == "W_V" and weight.shape[0] != model.cfg.n_heads:  # one per query head, as HookedTransformer's
            weight = weight.repeat_interleave(model.cfg.n_heads // weight.shape[0], dim=0)
        return weight
    module, attr = path.split(".")
    return getattr(getattr(model.blocks[layer], module), attr).detach()


def _like_weights(model) -> dict:
    """Device and dtype of the model's weights: the ones / zeros standing in for a norm that is
    not there multiply bfloat16 or float16 weights without promoting them to float32."""
    return {"device": model.cfg.device, "dtype": model.W_E.dtype}


def _no_input_norm(model, norm: str) -> bool:
    return norm in INPUT_NORMS and not architecture(model).input_norms


def norm_weight(model, norm: str, layer: int | None = None) -> torch.Tensor:
    """The gain γ [d_model] of a normalisation (``"ln1"``, ``"ln2"`` of a block, or
    ``"ln_final"``); ones where the model has none (folded LayerNorm, ``LNPre``; ``ln1`` /
    ``ln2`` of a block without input norms, whose sublayers read the raw residual)."""
    if _no_input_norm(model, norm):
        return torch.ones(model.cfg.d_model, **_like_weights(model))
    if bridge.is_bridge(model):
        return bridge.norm_gain(model, norm, layer)
    module = model.ln_final if norm == "ln_final" else getattr(model.blocks[layer], norm)
    weight = getattr(module, "w", None)
    return weight.detach() if weight is not None else torch.ones(model.cfg.d_model, **_like_weights(model))


def norm_bias(model, norm: str, layer: int | None = None) -> torch.Tensor:
    """The bias β [d_model] of a normalisation (zeros where it has none, or there is no such norm:
    ``ln1`` / ``ln2`` without input norms)."""
    if _no_input_norm(model, norm):
        return torch.zeros(model.cfg.d_model, **_like_weights(model))
    if bridge.is_bridge(model):
        bias = bridge.norm_bias(model, norm, layer)
        return bias if bias is not None else torch.zeros(model.cfg.d_model, **_like_weights(model))
    module = model.ln_final if norm == "ln_final" else getattr(model.blocks[layer], norm)
    bias = getattr(module, "b", None)
    return bias.detach() if bias is not None else torch.zeros(model.cfg.d_model, **_like_weights(model))


def norm_centres(model) -> bool:
    """Whether the model's normalisations subtract the mean (LayerNorm) or not (RMSNorm)."""
    return architecture(model).norm_centres


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
    """A parameter by its TransformerLens name; a clear error for an unknown name. On the
    bridge backend: a view of the Hugging Face parameter in TransformerLens' layout (in-place
    changes change the model)."""
    if bridge.is_bridge(model):
        return bridge.parameter(model, name)
    try:
        return model.get_parameter(name)  # a walk down the name, not a listing of every parameter
    except AttributeError:
        raise KeyError(f"model has no parameter {name!r} (e.g. 'blocks.0.mlp.W_out', 'blocks.0.attn.W_O')") from None


def has_parameter(model, name: str) -> bool:
    """Whether the model has the parameter ``name`` (TransformerLens name)."""
    try:
        get_parameter(model, name)
    except KeyError:
        return False
    return True


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


def delta_hooks(model, name: str, through) -> list[tuple[str, Any]]:
    """Hooks that add ``through(input)`` — the weight's input activation (flattened over heads
    for ``W_O``) times a delta — to the raw output of the weight ``name``, so that the hooks
    have the effect of changing the weight in place; on post-norm models the addition is made
    before the post-sublayer norm (:func:`~interp_edit.adapter.hooks.sublayer_output_hooks`)."""
    from interp_edit.adapter.hooks import sublayer_output_hooks

    source, _ = delta_hook_sites(name)
    kind = "attn" if name.endswith("attn.W_O") else "mlp"
    store: dict[str, torch.Tensor] = {}

    def keep(act, hook):
        store["input"] = act

    def add(out, hook):
        inputs = store.pop("input")
        flat = inputs.reshape(*inputs.shape[:2], -1)
        return out + through(flat.to(out.dtype)).to(out.device, out.dtype)

    return [(source, keep), *sublayer_output_hooks(model, kind, parameter_layer(name), add)]



def model_fingerprint(model) -> str:
    """A short hash identifying the *base* model: its architecture (the
    :class:`~interp_edit.adapter.architecture.Architecture` description, which names the Hugging
    Face family, less ``norm_folded``, a loading choice) and the weights that no editor changes
    (token and position embeddings, unembedding), hashed as bfloat16 numbers. It is therefore
    the same before and after an edit, on either backend, for a checkpoint loaded in float32 or
    bfloat16 (an edit computed on one applies to the other), and differs between two
    differently trained models — and between two families whose embeddings happen to coincide
    (tiny random models built from one seed). The context length is not part of it:
    HookedTransformer caps some families' ``n_ctx`` at load, the bridge does not, and a learned
    position table is hashed anyway. Fingerprints recorded before the bfloat16 rounding (an
    edit file or statistics of an earlier version) are recognised by :func:`fingerprint_matches`."""
    return _fingerprint(model, legacy=False)


def fingerprint_matches(recorded: str, model) -> bool:
    """Whether a recorded fingerprint (an edit's, a statistic's) is ``model``'s: its
    :func:`model_fingerprint`, or the one earlier versions computed (the weights hashed as
    loaded, not rounded to bfloat16; computed only when the first differs)."""
    return recorded == model_fingerprint(model) or recorded == _fingerprint(model, legacy=True)


def _fingerprint(model, *, legacy: bool) -> str:
    import hashlib

    arch, cfg = architecture(model), model.cfg
    # the weights' hash is remembered on the model, keyed by the identity and version counter of
    # each hashed tensor: hashing a large unembedding costs seconds (an 8 B model's is 2 GB in
    # float32) and editors ask for the fingerprint on every edit; the header with it, keyed by
    # the (kept) Architecture object
    key = (arch, cfg.d_vocab, cfg.act_fn)
    state = None if legacy else _weights_state(model)
    remembered = None if legacy else model.__dict__.get(FINGERPRINT_ATTR)
    if (state is not None and remembered is not None and remembered[0][0] is arch and remembered[0][1:] == key[1:]
            and _same_state(remembered[2], state)):
        return remembered[3]
    header = _fingerprint_header(arch, cfg)
    digest = hashlib.sha256()
    digest.update(header.encode())
    for tensor in _fingerprinted_weights(model):
        if tensor is None:
            continue
        rows = tensor.detach()[: 4096]
        if not legacy:  # float32 and bfloat16 loads of a checkpoint hash alike
            rows = rows.to(torch.bfloat16)
        digest.update(rows.to("cpu", torch.float32).contiguous().numpy().tobytes())
    value = digest.hexdigest()[:16]
    if state is not None:
        object.__setattr__(model, FINGERPRINT_ATTR, (key, header, state, value))
    return value


def _fingerprint_header(arch, cfg) -> str:
    """The architecture's part of :func:`model_fingerprint`."""
    import dataclasses

    described = dataclasses.asdict(arch)
    described.pop("norm_folded")
    # properties added later: at their default they are left out, so those models' fingerprints stay as they were
    for later, default in (("shared_norm", False), ("residual_multiplier", 1.0), ("input_norms", True),
                           ("qk_norm_whole", False)):
        if described[later] == default:
            described.pop(later)
    return json.dumps([described, cfg.d_vocab, cfg.act_fn], sort_keys=True)


#: where :func:`model_fingerprint` remembers its last value (on the model object)
FINGERPRINT_ATTR = "_interp_edit_fingerprint"


def _weights_state(model) -> tuple | None:
    """What identifies the fingerprinted tensors' current contents without reading them: for
    each, the tensor it is a view of (held weakly: a replaced parameter is another object), its
    storage address, version counter (bumped by every in-place change made through the tensor
    or a view of it), shape, dtype and device. None when a tensor keeps no version counter (made
    under ``torch.inference_mode``): then nothing is remembered. A change made through ``.data``
    (which has its own counter) is not seen; :func:`forget_fingerprint` drops the remembered
    value."""
    state = []
    for tensor in _fingerprint_sources(model):
        if tensor is None:
            state.append(None)
            continue
        if tensor.is_inference():
            return None
        base = tensor if tensor._base is None else tensor._base
        state.append((weakref.ref(base), tensor.data_ptr(), tensor._version, tuple(tensor.shape), tensor.dtype,
                      str(tensor.device)))
    return tuple(state)


def _same_state(old: tuple, new: tuple) -> bool:
    """Two :func:`_weights_state` values name the same tensors in the same versions."""
    if len(old) != len(new):
        return False
    for a, b in zip(old, new, strict=True):
        if a is None or b is None:
            if a is not b:
                return False
        elif a[0]() is None or a[0]() is not b[0]() or a[1:] != b[1:]:
            return False
    return True


def forget_fingerprint(model) -> None:
    """Drop the fingerprint remembered on ``model`` (after changing its embeddings or unembedding
    through ``.data``, which :func:`model_fingerprint` cannot see); the next call hashes again."""
    model.__dict__.pop(FINGERPRINT_ATTR, None)


def token_embeddings(model) -> torch.Tensor:
    """``W_E`` [vocab, d_model] as ``hook_embed`` sees it (Gemma's √d scale included) on either
    backend."""
    if bridge.is_bridge(model):
        return bridge.token_embedding(model, architecture(model).embedding_scale)
    return model.W_E


def padded_lengths(model, embedded: torch.Tensor, pad_row: torch.Tensor | None = None) -> torch.Tensor | None:
    """Each sequence's length before the right padding of its batch, read from ``hook_embed``'s
    activation ``embedded`` [batch, pos, d_model]: the trailing positions whose embedding is the
    pad token's (``model.tokenizer.pad_token_id``, what :func:`~interp_edit.batching.pad_right`
    and TransformerLens pad with) are padding. A sequence keeps at least its first position (a
    BOS-first row is never all padding). None where the tokenizer has no pad token.

    ``pad_row``: the pad token's embedding as ``hook_embed`` sees it, when the caller keeps it
    (it is read from :func:`token_embeddings` otherwise).

    >>> padded_lengths(model, model.embed(pad_right([[1, 5, 7], [1, 5]], pad_id)[0]))
    tensor([3, 2])
    """
    tokenizer = getattr(model, "tokenizer", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None or embedded.dim() != 3:
        return None
    if pad_row is None:
        pad_row = token_embeddings(model)[pad].detach()
    pad_row = pad_row.to(embedded.device, embedded.dtype)
    is_pad = (embedded.detach() == pad_row).all(-1)  # [batch, pos]
    trailing = is_pad.flip(-1).to(torch.int64).cumprod(-1).sum(-1)
    return (embedded.shape[1] - trailing).clamp(min=1)


def _fingerprint_sources(model) -> tuple:
    """The stored tensors the fingerprint reads: token embedding, position embedding (or None),
    unembedding."""
    if bridge.is_bridge(model):
        position = bridge.position_embedding(model) if architecture(model).has_pos_embed else None
    else:
        position = model.W_pos if model.cfg.positional_embedding_type == "standard" else None
    return model.W_E, position, model.W_U


def _fingerprinted_weights(model) -> tuple:
    """:func:`_fingerprint_sources` as hashed: the token embedding as ``hook_embed`` sees it (the
    bridge's times the family's embedding scale), so the same tensors on both backends for the
    same weights."""
    w_e, position, w_u = _fingerprint_sources(model)
    if bridge.is_bridge(model):
        w_e = bridge.token_embedding(model, architecture(model).embedding_scale)
    return w_e, position, w_u


@contextlib.contextmanager
def frozen_parameters(model):
    """No parameter of ``model`` requires grad inside the block; the flags are restored after."""
    thawed = [p for p in _parameters(model) if p.requires_grad]
    try:
        for p in thawed:
            p.requires_grad = False
        yield model
    finally:
        for p in thawed:
            p.requires_grad = True


def _parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """``model.parameters()`` without building every module's name, and passing over the modules
    without parameters or children at once (a HookedTransformer has a module per hook point:
    listing the toy model's parameters takes 27 µs instead of 135 µs)."""
    found: dict[int, torch.nn.Parameter] = {}
    stack = [model]
    while stack:
        module = stack.pop()
        if module is None:
            continue
        if module._parameters:
            for p in module._parameters.values():
                if p is not None:
                    found.setdefault(id(p), p)
        if module._modules:
            stack.extend(module._modules.values())
    return list(found.values())


_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@torch.no_grad()
def weight_checksum(tensor: torch.Tensor, *, chunk_rows: int = 4096) -> tuple[int, int, int]:
    """An exact fingerprint of a tensor's bits, computed where it lives (no copy to the CPU).
    Seen as a matrix [rows, cols] of integers (its elements' bits), it is the sum of its row
    sums, and the row sums and the column sums weighted by their index (from 1), each row and
    column sum wrapping at the element width (32 bits for float32: integer sums, so the same
    bits give the same fingerprint in any order of summation). A change of one value changes its
    row sum; rows or columns swapped change the weighted sums (but for collisions no user edit
    makes). Two reductions over the tensor, in chunks of ``chunk_rows`` rows."""
    flat = tensor.detach().contiguous()
    flat = flat.view(-1, flat.shape[-1]) if flat.dim() > 1 else flat.view(1, -1)
    ints = flat.view(_INT_VIEW[flat.element_size()])
    wrap = torch.int64 if ints.element_size() == 8 else torch.int32
    n_rows, width = ints.shape
    sums = torch.zeros(2, dtype=torch.int64, device=ints.device)  # the total and the rows weighted
    columns = torch.zeros(width, dtype=wrap, device=ints.device)
    for start in range(0, n_rows, chunk_rows):
        block = ints[start : start + chunk_rows]
        rows = block.sum(1, dtype=wrap).to(torch.int64)
        index = torch.arange(start + 1, start + 1 + rows.numel(), device=rows.device)
        sums += torch.stack([rows, rows * index]).sum(1)
        columns += block.sum(0, dtype=wrap)
    by_column = (columns.to(torch.int64) * torch.arange(1, width + 1, device=columns.device)).sum()
    total, by_row, by_column = torch.cat([sums, by_column[None]]).tolist()  # one copy to the host
    return total, by_row, by_column


def post_norm_preimage(model, layer: int, kind: str, raw: torch.Tensor | None, change: torch.Tensor) -> torch.Tensor:
    """The change of a sublayer's raw output ``raw`` [n, d_model] that moves its contribution to
    the residual by ``change`` [n, d_model]. Where the raw output joins the residual as it is
    (``architecture(model).writes_raw_output``) that is ``change`` itself. A residual multiplier
    r (Granite: the block adds ``r · out``) divides it by r, exactly (``raw`` is not read, and
    may be None, where there is no post-sublayer norm). With a post-sublayer norm (Gemma-2's
    RMSNorm ``w ⊙ x / rms(x)``), the raw output keeps its rms and is moved to
    ``(w ⊙ x / rms(x) + change) / w · rms(x)``: exact up to the rms of the new direction, i.e. to
    first order in ``change``. MEMIT-style editors re-measure the residual after each layer,
    which corrects the rest."""
    arch = architecture(model)
    if arch.residual_multiplier != 1.0:  # the multiplier acts after the post-sublayer norm, if any
        change = change / arch.residual_multiplier
    if not arch.post_norms:
        return change
    norm_name = "ln1_post" if kind == "attn" else "ln2_post"
    if bridge.is_bridge(model):
        gain, eps = bridge.norm_gain(model, norm_name, layer).to(raw.dtype), bridge.norm_eps(model, norm_name, layer)
    else:
        norm = model.get_submodule(f"blocks.{layer}.{norm_name}")
        gain, eps = norm.w.detach().to(raw.dtype), norm.eps
    if gain.abs().min().item() < 1e-6:
        raise ValueError(f"blocks.{layer} post-norm gain has a zero entry: its output cannot be moved there")
    rms = (raw.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    normed = gain * raw / rms
    return (normed + change) / gain * rms - raw
