"""Tiny randomly initialised Hugging Face models of every family the toolkit covers.

>>> hf = tiny_hf_model("qwen3", vocab_size=len(tokenizer))      # a Qwen3ForCausalLM, 3 layers, d_model 64
>>> model = load_model("tiny-qwen3", hf_model=hf, tokenizer=tokenizer)

They are built from the ``transformers`` config classes, offline, with weights drawn large
(``initializer_range`` 0.2, norm gains drawn around 1, biases non-zero) so that exactness
checks are not met trivially. ``size="gpt2-small"`` gives the same family at GPT-2-small width
and depth (benchmarks). ``FAMILIES`` lists the names.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: Family name -> a one-line description (what the tiny model exercises).
FAMILIES: dict[str, str] = {
    "gpt2": "GPT-2: LayerNorm, learned positions, sequential blocks",
    "gptj": "GPT-J: parallel attention + MLP, one shared norm, partial rotary",
    "neox": "GPT-NeoX / Pythia: parallel blocks, two norms, partial rotary",
    "opt": "OPT: LayerNorm, learned positions (offset 2), ReLU",
    "llama": "Llama-2: RMSNorm, rotary, gated SiLU MLP, multi-head attention",
    "llama3": "Llama-3: as Llama with grouped-query attention",
    "qwen2": "Qwen2 / Qwen2.5: GQA with q/k/v biases",
    "qwen3": "Qwen3: GQA, per-head q/k RMSNorm",
    "mistral": "Mistral: GQA (sliding window off at this length)",
    "gemma": "Gemma: multi-query attention, GeGLU, √d embedding scale, (1 + w) RMSNorm",
    "gemma2": "Gemma-2: post-sublayer norms, attention and final-logit soft-caps",
    "phi": "Phi-2: parallel blocks, one LayerNorm, partial rotary, dense biases",
}

#: Families only the TransformerBridge backend loads (TransformerLens' HookedTransformer has no
#: converter for them): ``load_model(..., hf_model=tiny_hf_model(f, ...))`` picks the bridge.
BRIDGE_ONLY_FAMILIES: dict[str, str] = {
    "starcoder2": "StarCoder2: LayerNorm with biases, GQA, rotary, plain (ungated) GELU MLP with biases",
    "stablelm": "StableLM: LayerNorm, GQA, partial rotary, gated SiLU MLP",
}

_SIZES = {
    "tiny": dict(d_model=64, n_layers=3, n_heads=4, d_mlp=128, n_ctx=64),
    "gpt2-small": dict(d_model=768, n_layers=12, n_heads=12, d_mlp=3072, n_ctx=256),
}


def _llama_like(cls, s, **extra):
    kwargs = dict(
        hidden_size=s["d_model"], intermediate_size=s["d_mlp"], num_hidden_layers=s["n_layers"],
        num_attention_heads=s["n_heads"], num_key_value_heads=s["n_heads"], max_position_embeddings=s["n_ctx"],
        vocab_size=s["vocab_size"], initializer_range=s["init"], tie_word_embeddings=False,
    )
    kwargs.update(extra)
    return cls(**kwargs)


def _configs(s: dict) -> dict[str, Callable[[], object]]:
    import transformers as T

    d, L, H, F, C, V, init = s["d_model"], s["n_layers"], s["n_heads"], s["d_mlp"], s["n_ctx"], s["vocab_size"], s["init"]
    dh = d // H
    kv = max(1, H // 2)
    return {
        "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(
            vocab_size=V, n_positions=C, n_embd=d, n_layer=L, n_head=H, n_inner=F, initializer_range=init,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
        "gptj": lambda: T.GPTJForCausalLM(T.GPTJConfig(
            vocab_size=V, n_positions=C, n_embd=d, n_layer=L, n_head=H, n_inner=F, rotary_dim=dh // 2,
            initializer_range=init, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
        "neox": lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(
            vocab_size=V, hidden_size=d, num_hidden_layers=L, num_attention_heads=H, intermediate_size=F,
            max_position_embeddings=C, rotary_pct=0.5, initializer_range=init, use_parallel_residual=True,
            tie_word_embeddings=False)),
        "opt": lambda: T.OPTForCausalLM(T.OPTConfig(
            vocab_size=V, hidden_size=d, num_hidden_layers=L, ffn_dim=F, num_attention_heads=H,
            max_position_embeddings=C, word_embed_proj_dim=d, init_std=init, dropout=0.0)),
        "llama": lambda: T.LlamaForCausalLM(_llama_like(T.LlamaConfig, s)),
        "llama3": lambda: T.LlamaForCausalLM(_llama_like(T.LlamaConfig, s, num_key_value_heads=kv)),
        "qwen2": lambda: T.Qwen2ForCausalLM(_llama_like(T.Qwen2Config, s, num_key_value_heads=kv)),
        "qwen3": lambda: T.Qwen3ForCausalLM(_llama_like(T.Qwen3Config, s, num_key_value_heads=kv, head_dim=dh)),
        "mistral": lambda: T.MistralForCausalLM(_llama_like(T.MistralConfig, s, num_key_value_heads=kv, sliding_window=None)),
        "gemma": lambda: T.GemmaForCausalLM(_llama_like(T.GemmaConfig, s, num_key_value_heads=1, head_dim=dh)),
        "gemma2": lambda: T.Gemma2ForCausalLM(_llama_like(
            T.Gemma2Config, s, num_key_value_heads=kv, head_dim=dh, sliding_window=C, query_pre_attn_scalar=dh,
            attn_logit_softcapping=50.0, final_logit_softcapping=30.0)),
        "phi": lambda: T.PhiForCausalLM(T.PhiConfig(
            vocab_size=V, hidden_size=d, intermediate_size=F, num_hidden_layers=L, num_attention_heads=H,
            max_position_embeddings=C, partial_rotary_factor=0.5, initializer_range=init, resid_pdrop=0.0,
            embd_pdrop=0.0, attention_dropout=0.0, tie_word_embeddings=False)),
        "starcoder2": lambda: T.Starcoder2ForCausalLM(_llama_like(
            T.Starcoder2Config, s, num_key_value_heads=kv, sliding_window=None, residual_dropout=0.0,
            embedding_dropout=0.0, attention_dropout=0.0)),
        "stablelm": lambda: T.StableLmForCausalLM(_llama_like(T.StableLmConfig, s, num_key_value_heads=kv,
                                                              partial_rotary_factor=0.5)),
    }


def tiny_hf_model(family: str, *, vocab_size: int, size: str = "tiny", seed: int = 0, init: float = 0.2):
    """A randomly initialised Hugging Face causal LM of ``family`` (see :data:`FAMILIES`), in
    eval mode. Norm gains are drawn from U(0.5, 1.5) (Gemma's ``1 + w`` gains from U(-0.5, 0.5))
    and every bias from N(0, 0.05²), so that folding and centring are really exercised."""
    if family not in FAMILIES and family not in BRIDGE_ONLY_FAMILIES:
        raise KeyError(f"unknown family {family!r}; known: {sorted(FAMILIES) + sorted(BRIDGE_ONLY_FAMILIES)}")
    if size not in _SIZES:
        raise KeyError(f"unknown size {size!r}; known: {sorted(_SIZES)}")
    spec = dict(_SIZES[size], vocab_size=vocab_size, init=init)
    torch.manual_seed(seed)
    model = _configs(spec)[family]()
    gemma = family.startswith("gemma")
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if p.ndim == 1 and leaf == "weight":  # every 1-D weight is a norm gain
                p.uniform_(-0.5, 0.5) if gemma else p.uniform_(0.5, 1.5)
            elif p.ndim == 1 and leaf == "bias":
                p.normal_(0.0, 0.05)
    return model.eval()
