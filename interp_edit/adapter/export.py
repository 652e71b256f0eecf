"""Export of a GPT-2-shaped ``HookedTransformer`` (or TransformerLens 4 bridge) to a Hugging
Face ``GPT2LMHeadModel``, in the model's dtype. What GPT-2 cannot compute is read from the
architecture description (:mod:`interp_edit.adapter.architecture`, the same on both backends)
and refused, as are edits applied through hooks (they are in no weight the export copies)."""

from __future__ import annotations

import einops
import torch

from interp_edit.errors import ExportError

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
    w_u = model.W_U.detach().double().cpu()  # [d_model, vocab]; float64 here, cast to the model's dtype at the end
    b_u = model.b_U.detach().double().cpu()
    bias = getattr(model.ln_final, "b", None)
    bias = torch.zeros(cfg.d_model, dtype=torch.float64) if bias is None else bias.detach().double().cpu()
    if b_u.abs().max().item() == 0.0:
        return bias, w_u.T
    if cfg.normalization_type == "LNPre":
        shift = b_u - w_u.mean(0)
        return torch.full((cfg.d_model,), 1.0 / cfg.d_model, dtype=torch.float64), (w_u + shift[None, :]).T
    extra = torch.linalg.lstsq(w_u.T, b_u.unsqueeze(1)).solution.squeeze(1)
    if (w_u.T @ extra - b_u).abs().max().item() > 1e-6 * max(1.0, b_u.abs().max().item()):
        return None
    return bias + extra, w_u.T


def to_hf(model):
    """Export a GPT-2-shaped ``HookedTransformer`` to a Hugging Face ``GPT2LMHeadModel``.

    Works for processed (folded LayerNorm, centred weights) and unprocessed models. Returns
    ``(hf_model, tokenizer)``; the Hugging Face model holds the weights in the model's dtype
    (float64, float32, bfloat16 or float16), on the CPU. Raises :class:`ExportError` naming the
    property that a GPT-2 cannot represent (e.g. a non-zero unembedding bias, rotary positions,
    read from :func:`~interp_edit.adapter.architecture.architecture`), or the edits applied to the
    model in place through hooks (GRACE, WISE, MEGA, steering: ``edit.undo(model)`` them first;
    edits that change weights — ROME, MEMIT, fine-tuning … — are exported with the weights).

    >>> hf_model, tokenizer = to_hf(model)
    >>> type(hf_model).__name__
    'GPT2LMHeadModel'
    >>> ids = torch.tensor([tokenizer.encode("Talvik Corlo was born in")])
    >>> tokenizer.decode(hf_model(ids).logits[0, -1].argmax())     # the same answer as the TL model
    ' Karsa'
    """
    from interp_edit.adapter import bridge
    from interp_edit.adapter.architecture import architecture

    _refuse_hook_edits(model)
    arch = architecture(model)
    if not bridge.is_bridge(model):
        return _to_hf(model, arch)
    try:  # TransformerLens 4's bridge exposes the HookedTransformer weights to_hf reads; 3.9's does not
        return _to_hf(model, arch)
    except AttributeError as err:
        raise ExportError(
            f"cannot export to GPT2LMHeadModel: this TransformerBridge (backend='bridge') does not expose the "
            f"HookedTransformer weights to_hf reads ({err}); it runs its Hugging Face model as it is: that model is "
            "model.original_model (save it with model.original_model.save_pretrained(folder))"
        ) from None


def _refuse_hook_edits(model) -> None:
    """:class:`ExportError` naming the edits applied to ``model`` in place that act through
    hooks (their hooks are no weight, so the export would silently be the model without them)."""
    from interp_edit.adapter.params import applied_edit_stack

    hooked = [entry[0] for entry in applied_edit_stack(model) if entry[2] or getattr(entry[0], "hooks", None)]
    if hooked:
        names = ", ".join(f"{edit.method} (hooks at {sorted({h.hook_name for h in edit.hooks.values()})})"
                          for edit in hooked)
        raise ExportError(
            f"cannot export to GPT2LMHeadModel: the model has edits applied through hooks, which no exported weight "
            f"holds: {names}; the export would be the model without them. Undo them first (edit.undo(model), newest "
            "first) or export before applying them; edits that change weights (ROME, MEMIT, fine-tuning …) export"
        )


def _gpt2_problems(cfg, arch) -> list[str]:
    """What GPT-2's blocks cannot compute. ``arch``: the model's
    :class:`~interp_edit.adapter.architecture.Architecture` (the same on both backends; a bridge's
    TransformerLens config leaves e.g. GPT-Neo's local layers and unscaled scores unstated), or None
    for a checkpoint's weights (:func:`checkpoint_to_hf`: its config's fields, HookedTransformerConfig's
    defaults — GPT-2's — where it records none)."""
    problems = []
    positional = arch.positional if arch is not None else cfg.positional_embedding_type
    if positional != "standard":
        problems.append(f"positional_embedding_type={positional!r} (need 'standard')")
    if cfg.normalization_type not in ("LN", "LNPre") or (arch is not None and arch.norm != "layernorm"):
        problems.append(f"normalization_type={cfg.normalization_type!r} (need 'LN' or 'LNPre')")
    if cfg.act_fn not in _HF_ACT:
        problems.append(f"act_fn={cfg.act_fn!r} (need one of {sorted(_HF_ACT)})")
    parallel = arch.parallel_blocks if arch is not None else cfg.parallel_attn_mlp
    gated = arch.gated_mlp if arch is not None else cfg.gated_mlp
    if cfg.attn_only or parallel or gated:
        problems.append("attn_only / parallel_attn_mlp / gated_mlp blocks")
    if cfg.n_heads * cfg.d_head != cfg.d_model:
        problems.append(f"n_heads*d_head={cfg.n_heads * cfg.d_head} != d_model={cfg.d_model}")
    kv_heads = arch.n_kv_heads if arch is not None else (getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
    if kv_heads != cfg.n_heads:
        problems.append("grouped-query attention")
    root = cfg.d_head ** 0.5
    if arch is not None:  # what GPT-2's attention computes: every layer global, scores divided by sqrt(d_head)
        if arch.sliding_window is not None:
            problems.append(f"local (sliding-window) attention layers (window {arch.sliding_window})")
        scale = arch.attn_scale if arch.attn_scale is not None else root
        if arch.attn_softcap is not None or arch.logit_softcap is not None:
            problems.append("attention-score or final-logit soft-caps")
        if arch.qk_norm:
            problems.append("q/k norms")
        if arch.post_norms or not arch.input_norms or arch.shared_norm:
            problems.append("norms other than GPT-2's (post-sublayer norms, no input norms, or one norm shared by "
                            "attention and MLP)")
        for name in ("logit_scale", "residual_multiplier", "embedding_scale"):
            if getattr(arch, name) != 1.0:
                problems.append(f"{name}={getattr(arch, name):g} (GPT-2: 1)")
    else:  # a checkpoint's config (HookedTransformerConfig's defaults, GPT-2's, where it records nothing)
        if getattr(cfg, "use_local_attn", False):
            problems.append(f"local (sliding-window) attention layers (window {getattr(cfg, 'window_size', None)})")
        scale = float(getattr(cfg, "attn_scale", -1.0) or -1.0) if getattr(cfg, "use_attn_scale", True) else 1.0
        scale = root if scale < 0 else scale  # -1: unset, sqrt(d_head)
        if (getattr(cfg, "attn_scores_soft_cap", -1.0) or -1.0) > 0 or (getattr(cfg, "output_logits_soft_cap", -1.0) or -1.0) > 0:
            problems.append("attention-score or final-logit soft-caps")
        if getattr(cfg, "use_qk_norm", False):
            problems.append("q/k norms")
    if abs(scale - root) > 1e-6 * root:
        problems.append(f"attention scores divided by {scale:g} (GPT-2 divides by sqrt(d_head) = {root:g})")
    if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
        problems.append("attention scores divided by the layer index (scale_attn_by_inverse_layer_idx)")
    return problems


def checkpoint_to_hf(weights):
    """:func:`to_hf` of a checkpoint's weights laid out as a model's attributes (``cfg`` from
    its config.json, ``blocks``, ``W_E`` …: :func:`interp_edit.adapter.loading._checkpoint_on_bridge`),
    with no model built: the config's fields are its description."""
    return _to_hf(weights, None)


def _to_hf(model, arch):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = model.cfg
    dtype = model.W_E.dtype  # the export keeps the model's dtype
    problems = _gpt2_problems(cfg, arch)
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
    hf = GPT2LMHeadModel(hf_cfg).to(dtype)
    hf.config.dtype = dtype  # what save_pretrained records
    sd: dict[str, torch.Tensor] = {
        "transformer.wte.weight": model.W_E,
        "transformer.wpe.weight": model.W_pos,
    }

    def norm(prefix: str, module) -> None:  # a folded norm (LNPre) has no gain or bias: 1 and 0
        w = getattr(module, "w", None)
        sd[prefix + ".weight"] = w if w is not None else torch.ones(cfg.d_model)
        b = getattr(module, "b", None)
        sd[prefix + ".bias"] = b if b is not None else torch.zeros(cfg.d_model)

    def bias(value, *shape):  # no bias in the Hugging Face model (a bridge's GPT-Neo q/k/v): zeros
        return value if value is not None else torch.zeros(*shape, dtype=dtype)

    for i, block in enumerate(model.blocks):
        p = f"transformer.h.{i}"
        attn = block.attn
        norm(f"{p}.ln_1", block.ln1)
        norm(f"{p}.ln_2", block.ln2)
        qkv = [einops.rearrange(w, "h m d -> m (h d)") for w in (attn.W_Q, attn.W_K, attn.W_V)]
        sd[f"{p}.attn.c_attn.weight"] = torch.cat(qkv, dim=1)
        qkv_bias = [bias(b, cfg.n_heads, cfg.d_head) for b in (attn.b_Q, attn.b_K, attn.b_V)]
        sd[f"{p}.attn.c_attn.bias"] = torch.cat([einops.rearrange(b, "h d -> (h d)") for b in qkv_bias])
        sd[f"{p}.attn.c_proj.weight"] = einops.rearrange(attn.W_O, "h d m -> (h d) m")
        sd[f"{p}.attn.c_proj.bias"] = bias(attn.b_O, cfg.d_model)
        sd[f"{p}.mlp.c_fc.weight"] = block.mlp.W_in
        sd[f"{p}.mlp.c_fc.bias"] = bias(block.mlp.b_in, cfg.d_mlp)
        sd[f"{p}.mlp.c_proj.weight"] = block.mlp.W_out
        sd[f"{p}.mlp.c_proj.bias"] = bias(block.mlp.b_out, cfg.d_model)
    norm("transformer.ln_f", model.ln_final)
    sd["transformer.ln_f.bias"], sd["lm_head.weight"] = final
    sd = {k: v.detach().to(device="cpu", dtype=dtype).clone(memory_format=torch.contiguous_format) for k, v in sd.items()}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith(("attn.bias", "attn.masked_bias"))]
    if missing or unexpected:
        raise ExportError(f"GPT2LMHeadModel weights not matched: missing {missing}, unexpected {unexpected}")
    hf.eval()
    return hf, model.tokenizer

