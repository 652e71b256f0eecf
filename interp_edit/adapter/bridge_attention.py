"""Attention that honours edits of its pattern, for the bridge families whose attention
TransformerLens hands whole to Hugging Face (GPT-J, GPT-Neo).

>>> model = load_model("EleutherAI/gpt-j-6B", backend="bridge")      # routed at boot: nothing to call
>>> model.run_with_hooks(tokens, fwd_hooks=[("blocks.3.attn.hook_pattern", edit)])   # the edit changes z
>>> routed(model)                                                      # True: this model's attention is interp_edit's

Why: TransformerLens' generic ``AttentionBridge`` runs the Hugging Face attention module whole
and fires ``attn.hook_pattern`` (and ``hook_attn_scores``, with the pattern in it) only after it
has run, so an edit of the pattern is discarded and a hook on ``hook_z`` cannot read this
forward's pattern (measured on TransformerLens 4.3). For these families interp_edit computes the
eager attention itself, on the model being loaded only, through the bridge block's own hook
points: ``scores -> attn.hook_attn_scores -> softmax -> attn.hook_pattern -> pattern @ v``. Its
projections, rotary, caching and output projection stay Hugging Face's (and the bridge's hooks
on them: ``hook_q`` / ``hook_k`` / ``hook_v`` / ``hook_z`` / ``hook_attn_out``).

This is a named deviation from the bridge's own path, so it reproduces Hugging Face's eager
attention for each family exactly (checked by the load-time equivalence check against the
Hugging Face model, :mod:`interp_edit.adapter.equivalence`):

- GPT-J (:func:`gptj_attention`): scores in float32 scaled by ``1 / sqrt(head_dim)`` (the module's
  ``scaling``), plus Hugging Face's eager causal / padding mask, softmax in float32, then cast to
  the values' dtype. Selected through transformers' public ``AttentionInterface`` under
  :data:`NAME` (with ``AttentionMaskInterface``'s eager mask: an additive float mask) on that
  model alone (``set_attn_implementation``); every other model keeps its own implementation.
- GPT-Neo (:func:`gptneo_attention`): scores in float32 *without* any scaling, the layer's own
  causal mask (a local layer's window: the module's ``bias`` buffer), plus the padding mask,
  softmax in float32, cast to the values' dtype. transformers' GPT-Neo does not go through the
  ``AttentionInterface`` (its ``_attn`` method is eager-only), so each of the model's attention
  modules gets this as its own ``_attn`` (an instance attribute; the class is untouched).

The only state outside the model is transformers' registry of the named function, registered
once (:func:`register`).
"""

from __future__ import annotations

import types

import torch
from torch import nn

#: The name of interp_edit's attention in transformers' ``AttentionInterface`` /
#: ``AttentionMaskInterface``.
NAME = "interp_edit_hooked_eager"

#: The Hugging Face architectures whose bridge attention interp_edit computes, and how it is
#: put in place (``"interface"``: transformers' AttentionInterface; ``"method"``: the module's
#: ``_attn``).
ROUTED = {"GPTJForCausalLM": "interface", "GPTNeoForCausalLM": "method"}

#: The attribute of a Hugging Face attention module holding the bridge's
#: ``(hook_attn_scores, hook_pattern)`` for it.
_HOOKS = "_interp_edit_pattern_hooks"


def _scores_and_pattern_hooks(module):
    hooks = getattr(module, _HOOKS, None)
    if hooks is None:  # a model not booted by interp_edit's bridge selected the name: plain eager attention
        return (lambda t: t), (lambda t: t)
    return hooks


def gptj_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Hugging Face's eager attention for GPT-J (``[batch, heads, pos, d_head]`` in,
    ``[batch, pos, heads, d_head]`` out), with the scores and the pattern through the bridge's
    ``hook_attn_scores`` / ``hook_pattern``. Returns no weights, so the bridge fires no second,
    post-hoc ``hook_pattern``."""
    scores_hook, pattern_hook = _scores_and_pattern_hooks(module)
    scores = torch.matmul(query.to(torch.float32), key.to(torch.float32).transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    scores = scores_hook(scores)
    pattern = nn.functional.softmax(scores, dim=-1).to(value.dtype)
    pattern = nn.functional.dropout(pattern, p=dropout, training=module.training)
    pattern = pattern_hook(pattern)
    return torch.matmul(pattern, value).transpose(1, 2).contiguous(), None


def gptneo_attention(self, query, key, value, attention_mask=None):
    """Hugging Face's ``GPTNeoSelfAttention._attn`` (no ``1 / sqrt(d)`` scaling; the layer's
    causal or local-window mask from its ``bias`` buffer), with the scores and the pattern through
    the bridge's ``hook_attn_scores`` / ``hook_pattern``. Returns no weights (see
    :func:`gptj_attention`)."""
    scores_hook, pattern_hook = _scores_and_pattern_hooks(self)
    scores = torch.matmul(query.to(torch.float32), key.to(torch.float32).transpose(-1, -2))
    query_length, key_length = query.size(-2), key.size(-2)
    allowed = self.bias[:, :, key_length - query_length: key_length, :key_length]
    lowest = torch.tensor(torch.finfo(scores.dtype).min, dtype=scores.dtype, device=scores.device)
    scores = torch.where(allowed, scores, lowest)
    if attention_mask is not None:
        scores = scores + attention_mask
    scores = scores_hook(scores)
    pattern = self.attn_dropout(nn.functional.softmax(scores, dim=-1).to(value.dtype))
    pattern = pattern_hook(pattern)
    return torch.matmul(pattern, value), None


def register() -> None:
    """Register :func:`gptj_attention` (and the eager mask) under :data:`NAME` in transformers'
    registries; idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(NAME, gptj_attention)  # registering the same function again changes nothing
    AttentionMaskInterface.register(NAME, eager_mask)


def route(model, hf_architecture: str) -> None:
    """Make the bridge ``model``'s attention interp_edit's (for :data:`ROUTED` architectures;
    any other model is left as it is): each block's Hugging Face attention module is given its
    block's ``attn.hook_attn_scores`` / ``attn.hook_pattern``, and that model alone computes its
    attention with :func:`gptj_attention` / :func:`gptneo_attention`."""
    how = ROUTED.get(hf_architecture)
    if how is None:
        return
    modules = []
    for block in model.blocks:
        attn = block.attn
        hf_attn = attn.original_component
        setattr(hf_attn, _HOOKS, (attn.hook_attn_scores, attn.hook_pattern))
        modules.append(hf_attn)
    if how == "interface":
        register()
        model.original_model.set_attn_implementation(NAME)
    else:
        for hf_attn in modules:
            hf_attn._attn = types.MethodType(gptneo_attention, hf_attn)
    model._interp_edit_routed_attention = hf_architecture


def routed(model) -> bool:
    """Whether ``model``'s attention is computed by this module (:func:`route`)."""
    return getattr(model, "_interp_edit_routed_attention", None) is not None
