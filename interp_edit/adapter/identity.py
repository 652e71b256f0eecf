"""Which published model a loaded model is, recognised from its architecture and dimensions.

A model loaded with ``hf_model=`` or from a local folder carries the name it was loaded by (a
label, a folder path) as ``cfg.model_name``, so the editors' presets (the papers' hyperparameters
per model) cannot be looked up by name. :func:`known_model` recognises the models the knowledge-editing papers use
from what does not depend on how they were loaded: the Hugging Face architecture and the
dimensions (layers, width, heads, key/value heads, MLP width, vocabulary).

>>> known_model(model)        # "gpt2-xl", "gpt-j-6B", "Llama-2-7b-hf", ... or None

The names are TransformerLens' ``model_name`` of each model's hub checkpoint (the presets'
keys). Fine-tuned variants with the same shapes (``Llama-2-7b-chat-hf``, ``Qwen2.5-7B-Instruct``,
``Meta-Llama-3-8B-Instruct``) are recognised as their base model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """The architecture and dimensions that identify a published model."""

    architecture: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_mlp: int
    d_vocab: tuple[int, ...]

    def matches(self, cfg) -> bool:
        """Whether ``cfg`` has this shape (a config lacking a field has none of the shapes)."""
        fields = ("original_architecture", "n_layers", "d_model", "n_heads", "d_mlp", "d_vocab")
        if not all(hasattr(cfg, f) for f in fields):
            return False
        n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        return (
            cfg.original_architecture == self.architecture
            and (cfg.n_layers, cfg.d_model, cfg.n_heads, n_kv, cfg.d_mlp)
            == (self.n_layers, self.d_model, self.n_heads, self.n_kv_heads, self.d_mlp)
            and cfg.d_vocab in self.d_vocab
        )


#: Published model -> its shape (from each checkpoint's config.json on the hub).
KNOWN_MODELS: dict[str, ModelShape] = {
    "gpt2-xl": ModelShape("GPT2LMHeadModel", 48, 1600, 25, 25, 6400, (50257,)),
    "gpt-j-6B": ModelShape("GPTJForCausalLM", 28, 4096, 16, 16, 16384, (50400,)),
    "gpt-neox-20b": ModelShape("GPTNeoXForCausalLM", 44, 6144, 64, 64, 24576, (50432,)),
    "Llama-2-7b-hf": ModelShape("LlamaForCausalLM", 32, 4096, 32, 32, 11008, (32000,)),
    "Meta-Llama-3-8B": ModelShape("LlamaForCausalLM", 32, 4096, 32, 8, 14336, (128256,)),
    "Qwen2.5-7B": ModelShape("Qwen2ForCausalLM", 28, 3584, 28, 4, 18944, (152064,)),
    "Qwen3-8B": ModelShape("Qwen3ForCausalLM", 36, 4096, 32, 8, 12288, (151936,)),
    # v0.1 / v0.2 have 32,000 tokens, v0.3 32,768; the blocks are the same
    "Mistral-7B-v0.1": ModelShape("MistralForCausalLM", 32, 4096, 32, 8, 14336, (32000, 32768)),
}


def _identity_fields(model_or_cfg):
    """The fields :meth:`ModelShape.matches` reads: a HookedTransformer's config (or the config
    itself) as it is; a TransformerBridge's from its architecture description (its config does not
    record the Hugging Face architecture)."""
    from interp_edit.adapter import bridge

    if not bridge.is_bridge(model_or_cfg):
        return getattr(model_or_cfg, "cfg", model_or_cfg)
    from types import SimpleNamespace

    from interp_edit.adapter.architecture import architecture

    arch = architecture(model_or_cfg)
    return SimpleNamespace(original_architecture=arch.family, n_layers=arch.n_layers, d_model=arch.d_model,
                           n_heads=arch.n_heads, n_key_value_heads=arch.n_kv_heads, d_mlp=arch.d_mlp,
                           d_vocab=model_or_cfg.cfg.d_vocab, model_name=model_or_cfg.cfg.model_name)


def known_model(model_or_cfg) -> str | None:
    """The name (a key of :data:`KNOWN_MODELS`) of the published model whose architecture and
    dimensions ``model_or_cfg`` (a model on either backend, or a HookedTransformer config) has,
    or None."""
    cfg = _identity_fields(model_or_cfg)
    for name, shape in KNOWN_MODELS.items():
        if shape.matches(cfg):
            return name
    return None


def preset_key(model_or_cfg) -> str | None:
    """The key under which the editors' presets are looked up: the recognised published model,
    else ``cfg.model_name`` unless that names a published model whose shape this model does not
    have (a tiny model in a folder called ``gpt-j-6B`` gets no GPT-J preset)."""
    cfg = _identity_fields(model_or_cfg)
    name = known_model(cfg)
    if name is not None:
        return name
    return None if cfg.model_name in KNOWN_MODELS else cfg.model_name
