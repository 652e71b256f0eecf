"""PyTorch's fused norm, attention and GELU kernels in TransformerLens' modules, inside a context.

TransformerLens writes LayerNorm and RMSNorm out in five to nine elementwise operations,
attention as explicit scores, a causal mask rebuilt in every layer, a softmax, a NaN guard and
a weighted sum, and GPT-2's tanh GELU (``gelu_new``, ``gelu_fast``) in seven, each a separate
operation in the forward and again in the backward. Inside :func:`fused_kernels` the norms run
as one ``F.layer_norm`` / ``F.rms_norm``, the attention core as one
``F.scaled_dot_product_attention`` (as the Hugging Face models that the editors' reference code
runs compute them) and the tanh GELU of an MLP as one ``F.gelu(approximate="tanh")``::

    with fused_kernels(model):
        loss = loss_of(model(tokens))      # same result within float rounding, fewer operations
        loss.backward()

The queries, keys, values and the output projection are TransformerLens' own computation, bit for
bit; rotary positions are TransformerLens' ``apply_rotary``. A module keeps TransformerLens'
forward (an MLP its activation), checked on every call, whenever a hook sits on one of its hook
points (so ``run_with_cache`` and every patching hook see exactly what TransformerLens computes), and for a
call with an additive mask or a position bias. A call with TransformerLens' key/value cache
entry and padding mask (the editors' reuse of an unedited prefix) is fused, with
TransformerLens' causal and padding mask, its rotary positions and its zero pattern for a query
that may attend to no key. An attention module keeps TransformerLens' forward for good (checked
on entry) when its configuration has what the fused call does not reproduce: split or per-head
inputs, a per-head result, local or bidirectional attention, ALiBi or relative position biases,
soft-capped scores, query/key norms or clipping, log-n scaling, attention sinks, ungrouped
key/value heads or 4-bit weights. The forward then differs from
TransformerLens' by float rounding only (``tests/test_fused_kernels.py``: every family, float32
and bfloat16). In half precision the norms keep TransformerLens' float32 normalisation and its
rounding before the weight.

The editors' optimisation loops enter it (their ``kernels`` field, ``"fused"`` by default);
the analyses do not unless asked (``causal_trace(..., kernels="fused")``), so a trace or a
patching run is TransformerLens' computation exactly by default. The bridge (its blocks are
Hugging Face modules, fused already) is left as it is. Entering it where it is already entered
changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from jaxtyping import Float

from interp_edit.adapter.forwards import hooked, replace_attribute, replace_forward, restore_forwards

#: the settings of an editor's ``kernels`` field: fused kernels, or TransformerLens' modules
KERNELS = ("fused", "transformer_lens")
#: TransformerLens norm classes -> (centred, with a weight, with a bias)
_NORMS = {"LayerNorm": (True, True, True), "LayerNormPre": (True, False, False),
          "RMSNorm": (False, True, False), "RMSNormPre": (False, False, False)}
_ATTENTIONS = ("Attention", "GroupedQueryAttention")
#: TransformerLens config flags whose attention the fused call does not reproduce
_ATTENTION_FLAGS = ("use_split_qkv_input", "use_attn_in", "use_attn_result", "load_in_4bit", "use_qk_norm",
                    "use_logn_attn", "use_attention_sinks", "ungroup_grouped_query_attention")
_FULL = (torch.float32, torch.float64)


def _from_transformer_lens(module: torch.nn.Module, names) -> bool:
    return type(module).__name__ in names and type(module).__module__.startswith("transformer_lens.")


class _FusedNorm:
    """A norm's ``forward`` inside the context."""

    __slots__ = ("norm", "previous", "centred", "weighted", "biased")

    def __init__(self, norm: torch.nn.Module, previous):
        self.norm, self.previous = norm, previous
        self.centred, self.weighted, self.biased = _NORMS[type(norm).__name__]

    def __call__(self, x: Float[torch.Tensor, "*rows d"], *args, **kwargs) -> Float[torch.Tensor, "*rows d"]:
        norm = self.norm
        w = norm.w if self.weighted else None
        if args or kwargs or hooked(norm) or (w is not None and (w.dtype, w.device) != (x.dtype, x.device)):
            return self.previous(x, *args, **kwargs)
        dtype, eps, shape = norm.cfg.dtype, norm.eps, (x.shape[-1],)
        b = norm.b if self.biased else None
        if dtype in _FULL:  # TransformerLens normalises and applies the weight in the model's dtype
            return F.layer_norm(x, shape, w, b, eps) if self.centred else F.rms_norm(x, shape, w, eps)
        # half precision: TransformerLens normalises in float32, rounds, then applies the weight
        h = x.to(torch.float32)
        out = (F.layer_norm(h, shape, eps=eps) if self.centred else F.rms_norm(h, shape, eps=eps)).to(dtype)
        if w is not None:
            out = out * w
        return out + b if b is not None else out


#: TransformerLens' MLP classes whose forward applies ``act_fn`` to the pre-activation alone
_MLPS = ("MLP", "GatedMLP")
#: TransformerLens' tanh GELUs written out elementwise (GPT-2's ``gelu_new``, ``gelu_fast``)
_TANH_GELUS = ("gelu_new", "gelu_fast")


class _FusedActivation:
    """An MLP's ``act_fn`` inside the context: the tanh GELU as one ``F.gelu(approximate="tanh")``
    (TransformerLens writes it out in seven elementwise operations, and autograd differentiates
    each), or TransformerLens' own where a hook sits on one of the MLP's hook points."""

    __slots__ = ("mlp", "previous")

    def __init__(self, mlp: torch.nn.Module, previous):
        self.mlp, self.previous = mlp, previous

    def __call__(self, x: Float[torch.Tensor, "*rows d_mlp"]) -> Float[torch.Tensor, "*rows d_mlp"]:
        if hooked(self.mlp):
            return self.previous(x)
        return F.gelu(x, approximate="tanh")


def _fusable_activation(mlp: torch.nn.Module) -> bool:
    """Whether this MLP's activation is a tanh GELU that TransformerLens writes out."""
    act = vars(mlp).get("act_fn")
    return (_from_transformer_lens(mlp, _MLPS) and getattr(act, "__name__", None) in _TANH_GELUS
            and getattr(act, "__module__", "").startswith("transformer_lens."))


def _fusable_attention(attn: torch.nn.Module) -> bool:
    """Whether this attention module's configuration is one the fused call reproduces."""
    cfg = attn.cfg
    cap = getattr(cfg, "attn_scores_soft_cap", None)
    return (_from_transformer_lens(attn, _ATTENTIONS)
            and cfg.positional_embedding_type in ("standard", "rotary")
            and getattr(attn, "attn_type", "global") == "global"
            and (getattr(attn, "_attention_dir_override", None) or cfg.attention_dir) == "causal"
            and not any(getattr(cfg, flag, False) for flag in _ATTENTION_FLAGS)
            and (cap is None or cap <= 0)
            and getattr(cfg, "clip_qkv", None) is None
            and getattr(attn, "q_norm", None) is None and getattr(attn, "k_norm", None) is None
            and isinstance(attn.attn_scale, (int, float)))


def _project(x: Float[torch.Tensor, "batch pos d_model"], w: Float[torch.Tensor, "head d_model d_head"],
             b: Float[torch.Tensor, "head d_head"]) -> Float[torch.Tensor, "batch pos head d_head"]:
    """TransformerLens' query / key / value projection (``simple_attn_linear``), bit for bit."""
    flat = w.permute(0, 2, 1).reshape(w.shape[0] * w.shape[2], w.shape[1])
    return F.linear(x, flat, b.reshape(-1)).reshape(x.shape[0], x.shape[1], b.shape[0], b.shape[1])


class _FusedAttention:
    """An attention module's ``forward`` inside the context."""

    __slots__ = ("attn", "previous", "rotary", "grouped")

    def __init__(self, attn: torch.nn.Module, previous):
        self.attn, self.previous = attn, previous
        self.rotary = attn.cfg.positional_embedding_type == "rotary"
        self.grouped = type(attn).__name__ == "GroupedQueryAttention"

    def __call__(self, query_input: Float[torch.Tensor, "batch pos d_model"],
                 key_input: Float[torch.Tensor, "batch pos d_model"],
                 value_input: Float[torch.Tensor, "batch pos d_model"], *args, **kwargs
                 ) -> Float[torch.Tensor, "batch pos d_model"]:
        attn = self.attn
        cache, mask = kwargs.get("past_kv_cache_entry"), kwargs.get("attention_mask")
        if (args or any(v is not None for k, v in kwargs.items() if k not in _FUSED_ARGUMENTS) or query_input.ndim != 3
                or key_input.ndim != 3 or value_input.ndim != 3 or query_input.shape[1] != key_input.shape[1]
                or hooked(attn)):
            return self.previous(query_input, key_input, value_input, *args, **kwargs)
        q = _project(query_input, attn.W_Q, attn.b_Q)
        if self.grouped:
            k, v = _project(key_input, attn._W_K, attn._b_K), _project(value_input, attn._W_V, attn._b_V)
        else:
            k, v = _project(key_input, attn.W_K, attn.b_K), _project(value_input, attn.W_V, attn.b_V)
        offset = 0
        if cache is not None:  # TransformerLens' own cache entry joins its keys and values to ours
            offset = cache.past_keys.size(1)
            k, v = cache.append(k, v)
        if self.rotary:
            q, k = attn.apply_rotary(q, offset, mask), attn.apply_rotary(k, 0, mask)
        if self.grouped:
            k = torch.repeat_interleave(k, dim=2, repeats=attn.repeat_kv_heads)
            v = torch.repeat_interleave(v, dim=2, repeats=attn.repeat_kv_heads)
        batch, pos, heads, d_head = q.shape
        allowed, has_key = _allowed(pos, k.shape[1], offset, mask, q.device)
        z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed,
                                           is_causal=allowed is None, scale=1.0 / attn.attn_scale)
        if has_key is not None:  # TransformerLens: a query that may attend to no key gets a zero pattern
            z = z * has_key.to(z.dtype)
        z = z.transpose(1, 2).reshape(batch, pos, heads * d_head)
        w_out = attn.W_O.permute(2, 0, 1).reshape(attn.W_O.shape[-1], heads * d_head).contiguous()  # as TransformerLens
        return F.linear(z.to(w_out.dtype), w_out, attn.b_O)


#: the attention call's arguments the fused call reproduces (any other one given: TransformerLens')
_FUSED_ARGUMENTS = ("past_kv_cache_entry", "attention_mask")


def _allowed(queries: int, keys: int, offset: int, mask: torch.Tensor | None, device
             ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """TransformerLens' attention mask as ``scaled_dot_product_attention`` takes it: None for a
    plain causal call; else (which keys each query may attend to, [batch or 1, 1, query, key],
    with a query that may attend to none let to attend to its own position; whether each query
    may attend to any key, [batch or 1, 1, query, 1], by which the caller multiplies its output).
    No row is left empty: older PyTorch kernels returned NaN for one."""
    if mask is None and offset == 0:
        return None, None
    query_positions = torch.arange(offset, offset + queries, device=device)
    allowed = (torch.arange(keys, device=device)[None, :] <= query_positions[:, None])[None, None]
    if mask is None:
        return allowed, None
    allowed = allowed & mask.to(device).bool()[:, None, None, :]
    has_key = allowed.any(-1, keepdim=True)
    own = torch.arange(keys, device=device)[None, :] == query_positions[:, None]
    return allowed | (own & ~has_key), has_key


def _wrapper(module: torch.nn.Module, previous):
    if _from_transformer_lens(module, _NORMS):
        return _FusedNorm(module, previous)
    if _from_transformer_lens(module, _ATTENTIONS) and _fusable_attention(module):
        return _FusedAttention(module, previous)
    return None


def _candidates(model) -> Iterator[torch.nn.Module]:
    """The blocks' norms and attention modules and the final norm: the direct children of the
    model and of its blocks (a few dozen modules where ``model.modules()`` has thousands)."""
    yield from model._modules.values()
    for block in model.blocks._modules.values():
        yield from block._modules.values()


@contextlib.contextmanager
def fused_kernels(model, enabled: bool = True) -> Iterator[None]:
    """Within the context, the model's TransformerLens norms and attention run PyTorch's fused
    kernels where they can (see the module's docstring); on exit every module is as it was.
    ``enabled=False`` enters nothing (so a caller can pass its setting through)."""
    from interp_edit.adapter import bridge

    if not enabled or bridge.is_bridge(model):
        yield
        return
    patched = []
    try:
        for module in _candidates(model):
            if isinstance(vars(module).get("forward"), (_FusedNorm, _FusedAttention)):
                continue  # entered already
            if _fusable_activation(module):
                replace_attribute(module, "act_fn", _FusedActivation(module, module.act_fn), patched)
                continue
            wrapper = _wrapper(module, module.forward)
            if wrapper is not None:
                replace_forward(module, wrapper, patched)
        yield
    finally:
        restore_forwards(patched)
