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
    "phi3": "Phi-3: RMSNorm, GQA, fused q/k/v and gate/up projections",
    "gptneo": "GPT-Neo: learned positions, global and local (windowed) attention layers, unscaled scores",
}

#: Families only the TransformerBridge backend loads (TransformerLens' HookedTransformer has no
#: converter for them): ``load_model(..., hf_model=tiny_hf_model(f, ...))`` picks the bridge.
BRIDGE_ONLY_FAMILIES: dict[str, str] = {
    "starcoder2": "StarCoder2: LayerNorm with biases, GQA, rotary, plain (ungated) GELU MLP with biases",
    "stablelm": "StableLM: LayerNorm, GQA, partial rotary, gated SiLU MLP",
    "gemma3": "Gemma-3 (text): post-sublayer norms, per-head q/k RMSNorm, local and global layers",
    "olmo": "OLMo: LayerNorm without gains or biases, gated SiLU MLP",
    "falcon": "Falcon (new decoder): parallel blocks with two norms, multi-query attention",
    "bigcode": "GPT-BigCode / StarCoder: multi-query attention, learned positions",
    "granite": "Granite: embedding, attention, residual and logit multipliers",
    "smollm3": "SmolLM3: GQA, rotary on three layers of four (NoPE on the rest)",
    "cohere": "Cohere (Command-R): parallel blocks reading one shared LayerNorm (gain, no bias), GQA, logit scale",
    "falcon7b": "Falcon's old decoder (Falcon-7B): parallel blocks reading one shared norm, multi-query attention",
    "olmo2": "OLMo-2: no input norms (RMSNorm after each sublayer only), q/k RMSNorm over the whole projection, GQA",
    "olmo3": "OLMo-3: OLMo-2's blocks with local (a 4-token sliding window) and global layers",
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
        "phi3": lambda: T.Phi3ForCausalLM(_llama_like(T.Phi3Config, s, num_key_value_heads=kv, pad_token_id=None, bos_token_id=None,
                                                      eos_token_id=None,
                                                      resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0)),
        "gptneo": lambda: T.GPTNeoForCausalLM(T.GPTNeoConfig(
            vocab_size=V, max_position_embeddings=C, hidden_size=d, num_layers=L, num_heads=H, intermediate_size=None,
            attention_types=[[["global", "local"], L // 2], [["global"], L % 2]] if L % 2 else [[["global", "local"], L // 2]],
            window_size=max(2, C // 4), bos_token_id=None, eos_token_id=None, resid_dropout=0.0, embed_dropout=0.0, attention_dropout=0.0,
            initializer_range=init)),
        "gemma3": lambda: T.Gemma3ForCausalLM(_llama_like(
            T.Gemma3TextConfig, s, num_key_value_heads=kv, head_dim=dh, sliding_window=C, query_pre_attn_scalar=dh)),
        "olmo": lambda: T.OlmoForCausalLM(_llama_like(T.OlmoConfig, s, num_key_value_heads=kv, pad_token_id=None,
                                                        bos_token_id=None, eos_token_id=None)),
        "olmo2": lambda: T.Olmo2ForCausalLM(_llama_like(T.Olmo2Config, s, num_key_value_heads=kv, pad_token_id=None,
                                                          bos_token_id=None, eos_token_id=None)),
        "olmo3": lambda: T.Olmo3ForCausalLM(_llama_like(
            T.Olmo3Config, s, num_key_value_heads=kv, sliding_window=4, pad_token_id=None, bos_token_id=None,
            eos_token_id=None, layer_types=["sliding_attention" if (i + 1) % 3 else "full_attention" for i in range(L)])),
        "falcon": lambda: T.FalconForCausalLM(T.FalconConfig(
            vocab_size=V, hidden_size=d, num_hidden_layers=L, num_attention_heads=H, num_kv_heads=1,
            new_decoder_architecture=True, parallel_attn=True, bias=False, max_position_embeddings=C,
            initializer_range=init, hidden_dropout=0.0, attention_dropout=0.0, tie_word_embeddings=False)),
        "falcon7b": lambda: T.FalconForCausalLM(T.FalconConfig(
            vocab_size=V, hidden_size=d, num_hidden_layers=L, num_attention_heads=H, multi_query=True,
            num_kv_heads=1,  # read by the new decoder only (Falcon-7B's config leaves it at n_head)
            new_decoder_architecture=False, parallel_attn=True, alibi=False, bias=False, max_position_embeddings=C,
            initializer_range=init, hidden_dropout=0.0, attention_dropout=0.0, tie_word_embeddings=False)),
        "cohere": lambda: T.CohereForCausalLM(_llama_like(T.CohereConfig, s, num_key_value_heads=kv, logit_scale=0.5,
                                                            pad_token_id=None, bos_token_id=None, eos_token_id=None)),
        "bigcode": lambda: T.GPTBigCodeForCausalLM(T.GPTBigCodeConfig(
            vocab_size=V, n_positions=C, n_embd=d, n_layer=L, n_head=H, n_inner=F, multi_query=True, bos_token_id=None,
            eos_token_id=None, initializer_range=init, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False)),
        "granite": lambda: T.GraniteForCausalLM(_llama_like(
            T.GraniteConfig, s, num_key_value_heads=kv, embedding_multiplier=2.0, residual_multiplier=0.5,
            attention_multiplier=1.0 / dh, logits_scaling=2.0)),
        "smollm3": lambda: T.SmolLM3ForCausalLM(_llama_like(T.SmolLM3Config, s, num_key_value_heads=kv, pad_token_id=None,
                                                              bos_token_id=None, eos_token_id=None)),
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
