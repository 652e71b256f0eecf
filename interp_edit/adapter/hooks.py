"""Hook points by the names interp_edit uses, forwards with temporary hooks, partial forwards
(from / to a layer), unembedding, and persistent hooks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from interp_edit.adapter.shared_norm import shared_first_norm

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
    "mlp_pre_linear": "blocks.{layer}.mlp.hook_pre_linear",
    "ln1_post_scale": "blocks.{layer}.ln1_post.hook_scale",
    "ln2_post_scale": "blocks.{layer}.ln2_post.hook_scale",
    # edge-level sites: they exist only under the circuits engine's ``edge_hook_mode``
    # (TransformerLens's use_attn_result / use_split_qkv_input / use_hook_mlp_in)
    "result": "blocks.{layer}.attn.hook_result",
    "q_input": "blocks.{layer}.hook_q_input",
    "k_input": "blocks.{layer}.hook_k_input",
    "v_input": "blocks.{layer}.hook_v_input",
    "mlp_in": "blocks.{layer}.hook_mlp_in",
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


# --- edge-level hook switches (the circuits engine) -----------------------------------------------
def hook_switches(model) -> dict[str, bool]:
    """The model's TransformerLens switches of the edge-level sites (``result``, ``q_input`` …,
    ``mlp_in``): ``use_attn_result``, ``use_split_qkv_input``, ``use_hook_mlp_in``."""
    from interp_edit.adapter.bridge import EDGE_HOOK_SWITCHES

    return {name: bool(getattr(model.cfg, name, False)) for name in EDGE_HOOK_SWITCHES}


def set_hook_switches(model, values: dict[str, bool]) -> None:
    """Set switches of :func:`hook_switches`: a HookedTransformer's config fields, or a
    TransformerBridge's setters (which copy them to its blocks; check
    :func:`~interp_edit.adapter.bridge.edge_hooks_missing` first)."""
    from interp_edit.adapter import bridge

    for name, value in values.items():
        if bridge.is_bridge(model):
            bridge.set_hook_switch(model, name, value)
        else:
            setattr(model.cfg, name, bool(value))


def post_norm_scale(model, kind: str, layer: int) -> tuple[str, torch.Tensor]:
    """The post-sublayer norm after a block's attention (``kind="attn"``: ``ln1_post``) or MLP
    (``"mlp"``: ``ln2_post``) of a post-norm architecture (Gemma-2, Gemma-3): the hook name of
    its scale (``hook_scale``, [batch, pos, 1]: ``sqrt(mean(x²) + eps)`` of the raw sublayer
    output ``x``) and its gain γ [d_model] as it multiplies, detached, so that the norm's output
    is ``γ · x / scale``. Gemma's RMSNorm multiplies by ``1 + w``: HookedTransformer's ``w`` holds
    ``1 + w`` already (TransformerLens adds the 1 at conversion), the bridge's Hugging Face
    module holds ``w`` (:func:`~interp_edit.adapter.bridge.norm_gain` adds it)."""
    from interp_edit.adapter import bridge

    if kind not in ("attn", "mlp"):
        raise ValueError(f"kind must be 'attn' or 'mlp', got {kind!r}")
    norm = "ln1_post" if kind == "attn" else "ln2_post"
    if bridge.is_bridge(model):
        gain = bridge.norm_gain(model, norm, layer)
    else:
        gain = getattr(model.blocks[layer], norm).w.detach()
    return hook_name(f"{norm}_scale", layer), gain


@contextlib.contextmanager
def temporary_hooks(model, fwd_hooks) -> Iterator[Any]:
    """``model.hooks(fwd_hooks=...)``, removing on exit only the hooks it added::

        with temporary_hooks(model, [("blocks.0.hook_resid_post", fn)]):
            logits = model(tokens)

    TransformerLens' context clears every hook point of the model on exit (a cost per call that
    grows with the model's hook points: 13% of a fine-tuning edit on the toy model). On a
    HookedTransformer with hook point names, each hook is added to its point and its own handle
    removed after (even on an exception); anything else (the bridge, a name filter) goes through
    TransformerLens' context."""
    from interp_edit.adapter import bridge

    fwd_hooks = list(fwd_hooks)
    points = getattr(model, "hook_dict", {})
    if bridge.is_bridge(model) or not all(isinstance(name, str) and name in points for name, _ in fwd_hooks):
        with model.hooks(fwd_hooks=fwd_hooks), shared_first_norm(model):
            yield model
        return
    added = []
    try:
        for name, fn in fwd_hooks:
            point = points[name]
            point.add_hook(fn, dir="fwd")
            added.append((point, point.fwd_hooks[-1]))
        with shared_first_norm(model):
            yield model
    finally:
        for point, handle in reversed(added):
            handle.hook.remove()
            point.fwd_hooks = [h for h in point.fwd_hooks if h is not handle]


def run_with_hooks(model, tokens, hooks: list[tuple[str, Any]]) -> torch.Tensor:
    """Logits of a forward with temporary hooks; the hooks are removed even on an exception."""
    with temporary_hooks(model, hooks):
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
    from interp_edit.adapter import bridge

    if bridge.is_bridge(model):
        _refuse_bridge_prefix(prefix_kv)
        final = bridge.run_from_layer(model, residual, start_layer, hooks)
        if positions is not None:
            final = final[:, positions]
        return unembed(model, model.ln_final(final))
    kwargs = _prefix_kv_kwargs(residual, prefix_kv)
    with temporary_hooks(model, hooks):
        final = model(residual, start_at_layer=start_layer, stop_at_layer=model.cfg.n_layers, **kwargs)
    if positions is not None:
        final = final[:, positions]
    return unembed(model, model.ln_final(final))


def _refuse_bridge_prefix(prefix_kv) -> None:
    """The bridge backend recomputes every position: a key/value prefix given to it is refused."""
    if prefix_kv is not None:
        raise ValueError("the bridge backend reuses no key/value prefix (supports_prefix_kv(model) is False)")


def _prefix_kv_kwargs(residual: torch.Tensor, prefix_kv, prefix_mask: torch.Tensor | None = None) -> dict[str, Any]:
    """HookedTransformer's keyword arguments that make a forward on ``residual`` (the positions
    after a prefix) attend to a given key/value prefix: a frozen key/value cache (per layer,
    [batch, prefix, head, d_head]; layers below the start are never read) and, with
    ``prefix_mask`` ([batch, prefix], False on padding: a left-padded prefix of a different
    length per row), the attention mask over prefix and new positions, from which
    TransformerLens also takes each position's rotary index (``cumsum(mask) − 1``)."""
    if prefix_kv is None:
        return {}
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    keys, values = prefix_kv
    entries = [TransformerLensKeyValueCacheEntry(k, v, frozen=True) for k, v in zip(keys, values, strict=True)]
    batch, device = residual.shape[0], residual.device
    if prefix_mask is None:
        mask = torch.ones(batch, keys[0].shape[1], dtype=torch.int, device=device)
        return {"past_kv_cache": TransformerLensKeyValueCache(entries, mask, frozen=True)}
    mask = prefix_mask.to(device=device, dtype=torch.int)
    full = torch.cat([mask, torch.ones(batch, residual.shape[1], dtype=torch.int, device=device)], dim=1)
    return {"past_kv_cache": TransformerLensKeyValueCache(entries, mask, frozen=True), "attention_mask": full}


def supports_prefix_kv(model) -> bool:
    """Whether :func:`forward_from_layer` can reuse a key/value prefix (``prefix_kv``): the
    hooked backend can, the bridge backend cannot (it recomputes every position)."""
    from interp_edit.adapter import bridge

    return not bridge.is_bridge(model)


def supports_padded_prefix_kv(model) -> bool:
    """Whether a key/value prefix may be left-padded (``residual_from_layer``'s
    ``prefix_mask``: a prefix of its own length per row): where the prefix can be reused at all
    (:func:`supports_prefix_kv`), except where attention reads positions from the number of
    columns rather than from the mask (TransformerLens' dynamic-NTK rotary and log-n attention
    scaling, Qwen-1's), which padding would shift."""
    cfg = model.cfg
    return supports_prefix_kv(model) and not (getattr(cfg, "use_dynamic_ntk_rope", False) or getattr(cfg, "use_logn_attn", False))


def sublayer_output_hooks(model, kind: str, layer: int, fn) -> list[tuple[str, Any]]:
    """Hooks through which ``fn(raw, hook)`` sees — and may replace, by returning a tensor — the
    *raw* output of a block's attention (``kind="attn"``: ``z @ W_O + b_O``) or MLP (``"mlp"``:
    ``post @ W_out + b_out``), i.e. what the sublayer's output weight produces.

    Without post-sublayer norms or a residual multiplier that is ``hook_attn_out`` /
    ``hook_mlp_out``. With a residual multiplier (Granite: the block adds ``residual_multiplier ·
    out``, and the bridge fires ``hook_attn_out`` / ``hook_mlp_out`` on the scaled contribution)
    it is the sublayer module's own output hook, ``attn.hook_out`` / ``mlp.hook_out``, before the
    multiplication. With post-sublayer norms (Gemma-2: ``ln1_post`` / ``ln2_post`` sit between
    the weight and the residual, and the hooks see the normed output) the raw output is read as
    ``hook_normalized · hook_scale`` of that norm and a replacement is normalised again by the
    norm's own rule. Either way a change of ``W_O`` / ``W_out`` made by hooks equals the same
    change made in place. ``fn`` returning None leaves the activation untouched (bit for bit)."""
    from interp_edit.adapter import bridge
    from interp_edit.adapter.architecture import architecture

    if kind not in ("attn", "mlp"):
        raise ValueError(f"kind must be 'attn' or 'mlp', got {kind!r}")
    arch = architecture(model)
    if not arch.post_norms:
        def direct(out, hook):
            new = fn(out, hook)
            return out if new is None else new

        if arch.residual_multiplier == 1.0:
            return [(hook_name(f"{kind}_out", layer), direct)]
        if not bridge.is_bridge(model):  # pragma: no cover - the hooked backend refuses a residual multiplier
            from interp_edit.errors import UnsupportedArchitectureError

            raise UnsupportedArchitectureError("a residual multiplier on the hooked backend (it adds sublayer outputs unscaled)")
        return [(f"blocks.{layer}.{kind}.hook_out", direct)]  # the module's output, before the multiplier

    short = "ln1_post" if kind == "attn" else "ln2_post"
    norm_name = f"blocks.{layer}.{short}"
    eps = bridge.norm_eps(model, short, layer) if bridge.is_bridge(model) else model.get_submodule(norm_name).eps
    store: dict[str, torch.Tensor] = {}

    def keep_scale(scale, hook):
        store["scale"] = scale

    def renormalise(normalised, hook):
        raw = normalised * store.pop("scale")
        new = fn(raw, hook)
        if new is None:
            return normalised
        new = new.float() if new.dtype not in (torch.float32, torch.float64) else new
        return (new / (new.pow(2).mean(-1, keepdim=True) + eps).sqrt()).to(normalised.dtype)

    return [(f"{norm_name}.hook_scale", keep_scale), (f"{norm_name}.hook_normalized", renormalise)]


def cached_keys_values(model, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What a key/value cache holds for ``layer``, from the activations at ``attn.hook_k`` /
    ``attn.hook_v``: the keys after the per-head q/k norm where the architecture has one
    (Qwen3; ``hook_k`` is taken before it; a norm over the whole projection, ``qk_norm_whole``,
    is refused), and after TransformerLens' ``clip_qkv``; both
    before rotary (the cache is rotated when read)."""
    from interp_edit.adapter import bridge
    from interp_edit.adapter.architecture import architecture

    if bridge.is_bridge(model):  # no key/value prefix is reused on the bridge (supports_prefix_kv)
        return keys, values
    attn = model.blocks[layer].attn
    arch = architecture(model)
    if arch.qk_norm_whole:  # pragma: no cover - only the bridge loads such families (OLMo-2), and it reuses no cache
        from interp_edit.errors import UnsupportedArchitectureError

        raise UnsupportedArchitectureError("qk_norm_whole: a key/value cache of keys normed over the whole projection "
                                           "(HookedTransformer's q/k norm is per head)")
    if arch.qk_norm:
        with torch.no_grad():
            keys = attn._apply_qk_norm(keys, attn.k_norm)
    clip = getattr(model.cfg, "clip_qkv", None)
    if clip is not None:
        keys, values = keys.clamp(-clip, clip), values.clamp(-clip, clip)
    return keys, values


def unembed(model, normalised: torch.Tensor) -> torch.Tensor:
    """Logits from the final-normed residual. Same as TransformerLens' ``model.unembed`` but
    without its per-call copy of W_U (150 MB for a GPT-2 vocabulary); with the logit scale
    (Cohere, Granite: :func:`unembedding`) and the final-logit soft-cap ``cap · tanh(logits /
    cap)`` where the model has one (Gemma-2)."""
    from interp_edit.adapter.architecture import architecture

    w_u, b_u = unembedding(model)
    return softcap(normalised @ w_u + b_u, architecture(model).logit_softcap)


def unembedding(model) -> tuple[torch.Tensor, torch.Tensor]:
    """``W_U`` [d_model, vocab] and ``b_U`` [vocab] as the model's logits read them: times the
    architecture's ``logit_scale`` (Cohere's ``logit_scale``, Granite's ``1 / logits_scaling``;
    TransformerLens' ``W_U`` is the bare ``lm_head`` on the bridge). Not detached."""
    from interp_edit.adapter.architecture import architecture

    scale = architecture(model).logit_scale
    if scale == 1.0:
        return model.W_U, model.b_U
    return model.W_U * scale, model.b_U * scale


def unembedding_processing(model) -> tuple[str, ...]:
    """How the model's ``W_U`` differs from the checkpoint's raw unembedding (``lm_head``): the
    processing TransformerLens applies to a hub model by default, read from the model itself.

    - ``"final_norm_folded"``: the final norm's gain is folded into ``W_U`` (``fold_ln``: the
      architecture's ``norm_folded``);
    - ``"centred"``: every row of ``W_U`` has mean 0 over the vocabulary (``center_unembed``),
      measured: the largest row mean is under 1 % of the spread a row mean of uncentred random
      weights has (``rms(W_U) / √vocab``). A trained or random uncentred ``W_U`` is far above.

    Empty for the bridge (no processing) and a model loaded with the processing off. A method
    that reads ``W_U`` as the authors' code reads ``lm_head`` (FiNE's neuron scores) warns with it.

    >>> unembedding_processing(load_model("toyworld"))
    ()
    """
    from interp_edit.adapter.architecture import architecture

    out = ["final_norm_folded"] if architecture(model).norm_folded else []
    with torch.no_grad():
        w_u = model.W_U.detach()
        row_means = w_u.mean(-1, dtype=torch.float64)  # [d_model]
        spread = w_u.double().pow(2).mean().sqrt() / w_u.shape[-1] ** 0.5
        if float(spread) > 0 and float(row_means.abs().max()) < 0.01 * float(spread):
            out.append("centred")
    return tuple(out)


def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """``cap · tanh(logits / cap)`` (Gemma-2's final-logit soft-cap); ``logits`` for ``None``."""
    return logits if cap is None else cap * torch.tanh(logits / cap)


def run_with_cache(model, tokens, names: list[str], hooks: list[tuple[str, Any]] = ()) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and the activations at ``names`` of one forward (extra hooks run first)."""
    cache: dict[str, torch.Tensor] = {}
    with temporary_hooks(model, list(hooks) + [(n, _saver(cache, n)) for n in names]):
        logits = model(tokens, return_type="logits")
    return logits, cache


def _saver(cache: dict[str, torch.Tensor], name: str):
    """A hook keeping its activation under ``name`` (the name asked for: on the bridge, the
    HookedTransformer names are aliases and ``hook.name`` is the bridge's own)."""

    def save(act, hook):
        cache[name] = act.detach()

    return save


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


def forward_to_layer(model, tokens: torch.Tensor, stop_layer: int, names: list[str], hooks: list[tuple[str, Any]] = ()) -> dict[str, torch.Tensor]:
    """Activations at ``names`` of a forward that stops before block ``stop_layer`` (the blocks
    after the needed ones are not run)."""
    cache: dict[str, torch.Tensor] = {}
    with temporary_hooks(model, list(hooks) + [(n, _saver(cache, n)) for n in names]):
        model(tokens, stop_at_layer=stop_layer)
    return cache


def residual_at_layer(model, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """The residual stream entering block ``layer`` (what its ``hook_resid_pre`` sees, after the
    model's own hooks), detached, from a forward that runs only the blocks before it.

    >>> start = residual_at_layer(model, tokens, 3)      # [batch, pos, d_model]
    >>> final = residual_from_layer(model, start, 3)     # the rest of the forward
    """
    from interp_edit.adapter import bridge

    name = hook_name("resid_pre", layer)
    if bridge.is_bridge(model) or model.hook_dict[name].fwd_hooks:
        # the bridge's partial forward, or a hook on the point itself: read it where it fires
        return forward_to_layer(model, tokens, layer + 1, [name])[name]
    with torch.no_grad(), shared_first_norm(model):
        return model(tokens, stop_at_layer=layer)


def residual_from_layer(model, residual: torch.Tensor, start_layer: int, hooks: list[tuple[str, Any]] = (),
                        prefix_kv: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None,
                        prefix_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The final residual stream (before the final norm) of the blocks from ``start_layer`` on,
    run on ``residual`` with temporary hooks; differentiable. Callers normalise and unembed
    only the positions they need (:func:`unembed`).

    With ``prefix_kv = (keys, values)`` (per layer, [batch, prefix, head, d_head], as
    :func:`cached_keys_values` gives them), ``residual`` holds only the positions after a prefix
    that is not recomputed; ``prefix_mask`` ([batch, prefix] bool) marks a left-padded prefix's
    real positions, so that each row may have a prefix of its own length (the hooked backend
    only: :func:`supports_prefix_kv`; a left-padded one: :func:`supports_padded_prefix_kv`)."""
    from interp_edit.adapter import bridge

    if bridge.is_bridge(model):
        _refuse_bridge_prefix(prefix_kv)
        return bridge.run_from_layer(model, residual, start_layer, hooks)
    kwargs = _prefix_kv_kwargs(residual, prefix_kv, prefix_mask)
    with temporary_hooks(model, hooks):
        return model(residual, start_at_layer=start_layer, stop_at_layer=model.cfg.n_layers, **kwargs)
