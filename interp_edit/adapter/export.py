"""Export of a GPT-2-shaped ``HookedTransformer`` to a Hugging Face ``GPT2LMHeadModel``."""

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

    >>> hf_model, tokenizer = to_hf(model)
    >>> type(hf_model).__name__
    'GPT2LMHeadModel'
    >>> ids = torch.tensor([tokenizer.encode("Talvik Corlo was born in")])
    >>> tokenizer.decode(hf_model(ids).logits[0, -1].argmax())     # the same answer as the TL model
    ' Karsa'
    """
    from interp_edit.adapter import bridge

    if not bridge.is_bridge(model):
        return _to_hf(model)
    try:  # TransformerLens 4's bridge exposes the HookedTransformer weights to_hf reads; 3.9's does not
        return _to_hf(model)
    except AttributeError as err:
        raise ExportError(
            f"cannot export to GPT2LMHeadModel: this TransformerBridge (backend='bridge') does not expose the "
            f"HookedTransformer weights to_hf reads ({err}); it runs its Hugging Face model as it is: that model is "
            "model.original_model (save it with model.original_model.save_pretrained(folder))"
        ) from None


def _to_hf(model):
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
    # what GPT-2's attention computes: every layer global, scores divided by sqrt(d_head), no cap or q/k norm (a
    # config without these fields, e.g. a checkpoint's, has HookedTransformerConfig's defaults: GPT-2's)
    if getattr(cfg, "use_local_attn", False):
        problems.append(f"local (sliding-window) attention layers (attn_types={cfg.attn_types}, window_size={cfg.window_size})")
    scale = float(getattr(cfg, "attn_scale", -1.0) or -1.0) if getattr(cfg, "use_attn_scale", True) else 1.0
    scale = cfg.d_head ** 0.5 if scale < 0 else scale  # -1: unset (a bridge's config), sqrt(d_head)
    if abs(scale - cfg.d_head ** 0.5) > 1e-6 * cfg.d_head ** 0.5:
        problems.append(f"attention scores divided by {scale:g} (GPT-2 divides by sqrt(d_head) = {cfg.d_head ** 0.5:g})")
    if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
        problems.append("attention scores divided by the layer index (scale_attn_by_inverse_layer_idx)")
    if (getattr(cfg, "attn_scores_soft_cap", -1.0) or -1.0) > 0 or (getattr(cfg, "output_logits_soft_cap", -1.0) or -1.0) > 0:
        problems.append("attention-score or final-logit soft-caps")
    if getattr(cfg, "use_qk_norm", False):
        problems.append("q/k norms")
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
    sd = {k: v.detach().float().cpu().clone(memory_format=torch.contiguous_format) for k, v in sd.items()}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith(("attn.bias", "attn.masked_bias"))]
    if missing or unexpected:
        raise ExportError(f"GPT2LMHeadModel weights not matched: missing {missing}, unexpected {unexpected}")
    hf.eval()
    return hf, model.tokenizer

