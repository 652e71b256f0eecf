"""Deliverable 3 (presets) of issue 13: the published models are recognised from their
architecture and dimensions, whatever their ``model_name``, and get their published editor
settings; ``edit.config["preset"]`` says which preset applied.

The configs are built without weights: Hugging Face config objects with each hub checkpoint's
values (typed here from the checkpoints' config.json, independently of
``interp_edit.adapter.identity``) converted by the same path ``load_model(hf_model=...)`` takes,
and TransformerLens' own offline hub configs where it has them."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest

from interp_edit.adapter.bridge import hooked_available, is_bridge, version_gap
from interp_edit.adapter.identity import KNOWN_MODELS, known_model, preset_key
from interp_edit.adapter.loading import hooked_config
from interp_edit.editing import AlphaEditConfig, MEMITConfig, ROMEConfig, rome
from interp_edit.editing.registry import editors
from interp_edit.errors import EditConfigError


def _hf_configs():
    import transformers as T

    llama = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32)
    return {
        "gpt2-xl": T.GPT2Config(n_layer=48, n_embd=1600, n_head=25, vocab_size=50257, n_positions=1024),
        "gpt-j-6B": T.GPTJConfig(n_layer=28, n_embd=4096, n_head=16, vocab_size=50400, rotary_dim=64, n_positions=2048),
        "gpt-neox-20b": T.GPTNeoXConfig(hidden_size=6144, num_hidden_layers=44, num_attention_heads=64,
                                        intermediate_size=24576, vocab_size=50432, rotary_pct=0.25,
                                        max_position_embeddings=2048),
        "Llama-2-7b-hf": T.LlamaConfig(**llama, intermediate_size=11008, num_key_value_heads=32, vocab_size=32000),
        "Meta-Llama-3-8B": T.LlamaConfig(**llama, intermediate_size=14336, num_key_value_heads=8, vocab_size=128256,
                                         rope_theta=500000.0),
        "Qwen2.5-7B": T.Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                    num_attention_heads=28, num_key_value_heads=4, vocab_size=152064),
        "Qwen3-8B": T.Qwen3Config(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                                  num_key_value_heads=8, head_dim=128, vocab_size=151936),
        "Mistral-7B-v0.1": T.MistralConfig(**llama, intermediate_size=14336, num_key_value_heads=8, vocab_size=32000),
    }


_ARCHITECTURES = {
    "gpt2-xl": "GPT2LMHeadModel", "gpt-j-6B": "GPTJForCausalLM", "gpt-neox-20b": "GPTNeoXForCausalLM",
    "Llama-2-7b-hf": "LlamaForCausalLM",
    "Meta-Llama-3-8B": "LlamaForCausalLM", "Qwen2.5-7B": "Qwen2ForCausalLM", "Qwen3-8B": "Qwen3ForCausalLM",
    "Mistral-7B-v0.1": "MistralForCausalLM",
}


#: the backends the recognition is checked on (the bridge's config does not record the Hugging
#: Face architecture: it is read from the architecture description)
BACKENDS = ("hooked", "bridge") if hooked_available() else ("bridge",)


@pytest.fixture(scope="module", params=BACKENDS)
def converted(request):
    """name -> a stand-in for that checkpoint loaded with hf_model= under a temporary folder's
    name: on the hooked backend the converted HookedTransformerConfig (``.cfg``), on the bridge a
    TransformerBridge over the Hugging Face model built on the meta device (no weights), except
    :data:`NOT_ON_META_BRIDGE`."""
    if request.param == "hooked":
        return {name: _fake_model(hooked_config(c, architecture=_ARCHITECTURES[name])) for name, c in _hf_configs().items()}
    return {name: _meta_bridge(c, _ARCHITECTURES[name], "tmp3x9q2") for name, c in _hf_configs().items()
            if _ARCHITECTURES[name] not in NOT_ON_META_BRIDGE}


#: published models the meta-device bridge stand-ins leave out, and why
NOT_ON_META_BRIDGE = {
    "GPT2LMHeadModel": "the bridge splits GPT-2's fused QKV weights at boot, which needs real (not meta) weights",
    **({"GPTJForCausalLM": "TransformerLens 3.9's bridge cannot run GPT-J (BRIDGE_MIN_VERSIONS)"}
       if version_gap("GPTJForCausalLM") else {}),
}


def _meta_bridge(hf_config, architecture, model_name):
    import torch
    import transformers

    from interp_edit import load_model

    tokenizer = _tokenizer()
    with torch.device("meta"):  # the boot's own new layers too (the bridge's split of GPT-NeoX's fused q/k/v: 61 s on the CPU)
        hf = getattr(transformers, architecture)(hf_config)
        return load_model(model_name, hf_model=hf, tokenizer=tokenizer, backend="bridge", device="meta")


@functools.cache
def _tokenizer():
    from interp_edit import load_model

    return load_model("toyworld").tokenizer


def _fake_model(cfg):
    return SimpleNamespace(cfg=cfg)


def test_every_published_model_is_recognised_from_its_converted_config(converted):
    on_bridge = is_bridge(next(iter(converted.values())))
    assert set(converted) == {n for n, shape in KNOWN_MODELS.items() if not on_bridge or shape.architecture not in NOT_ON_META_BRIDGE}
    for name, model in converted.items():
        assert model.cfg.model_name != name  # a temporary folder name: the name cannot be what tells
        assert known_model(model) == name
        assert preset_key(model) == name


@pytest.mark.skipif(not hooked_available(), reason="TransformerLens 4 removed loading_from_pretrained")
@pytest.mark.parametrize("hub_name, expected", [
    ("meta-llama/Llama-2-7b-hf", "Llama-2-7b-hf"),
    ("meta-llama/Llama-2-7b-chat-hf", "Llama-2-7b-hf"),
    ("meta-llama/Meta-Llama-3-8B", "Meta-Llama-3-8B"),
    ("meta-llama/Meta-Llama-3-8B-Instruct", "Meta-Llama-3-8B"),
])
def test_transformerlens_hub_configs_are_recognised(hub_name, expected):
    """TransformerLens' own (offline) configs of hub checkpoints: the hub-name load path."""
    from transformer_lens import loading_from_pretrained

    assert known_model(loading_from_pretrained.get_pretrained_model_config(hub_name)) == expected


@pytest.mark.parametrize("change", [
    dict(n_layers=47), dict(d_mlp=11000), dict(n_key_value_heads=4), dict(d_vocab=32001),
    dict(original_architecture="MistralForCausalLM"),
])
def test_one_different_dimension_is_not_the_published_model(change):
    llama2 = dict(original_architecture="LlamaForCausalLM", n_layers=32, d_model=4096, n_heads=32, n_key_value_heads=32,
                  d_mlp=11008, d_vocab=32000, model_name="tmp")  # Llama-2-7b-hf's config.json
    assert known_model(SimpleNamespace(**llama2)) == "Llama-2-7b-hf"
    assert known_model(SimpleNamespace(**{**llama2, **change})) is None


def test_llama3_shapes_under_the_mistral_architecture_are_mistral(converted):
    assert known_model(converted["Mistral-7B-v0.1"]) == "Mistral-7B-v0.1" != known_model(converted["Meta-Llama-3-8B"])


@pytest.mark.parametrize("name, editor_config, expected", [
    ("gpt2-xl", ROMEConfig, dict(layer=17, steps=20, lr=0.5, weight_decay=0.5)),
    ("gpt-j-6B", ROMEConfig, dict(layer=5, steps=20)),
    ("Llama-2-7b-hf", ROMEConfig, dict(layer=5, steps=25, weight_decay=1e-3)),
    ("Mistral-7B-v0.1", MEMITConfig, dict(layers=(4, 5, 6, 7, 8), clamp_norm_factor=4.0, mom2_update_weight=15_000.0)),
    ("gpt-j-6B", MEMITConfig, dict(layers=(3, 4, 5, 6, 7, 8), steps=25, mom2_update_weight=15_000.0)),
    ("Meta-Llama-3-8B", AlphaEditConfig, dict(layers=(4, 5, 6, 7, 8), lr=0.1, l2=10.0, nullspace_threshold=2e-2)),
    ("Qwen2.5-7B", AlphaEditConfig, dict(layers=(4, 5, 6, 7, 8), l2=1.0, clamp_norm_factor=4.0)),
])
def test_a_model_loaded_under_any_name_gets_its_published_preset(converted, name, editor_config, expected):
    if name not in converted:
        pytest.skip(f"{name}: not on this backend")
    config = editor_config.for_model(converted[name])
    assert config.preset == name
    assert {k: getattr(config, k) for k in expected} == expected


def test_without_published_settings_the_generic_rule_applies(converted):
    qwen3 = converted["Qwen3-8B"]
    config = ROMEConfig.for_model(qwen3)
    assert config.preset == "generic" and config.layer == ROMEConfig.generic(qwen3)["layer"]
    assert AlphaEditConfig.for_model(converted["Mistral-7B-v0.1"]).preset == "generic"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_published_name_on_other_shapes_gets_no_preset(backend):
    """A tiny model in a folder called gpt-j-6B (on the bridge, which lacks GPT-J on TransformerLens
    3.9: Llama-2-7b-hf) is not that model."""
    from transformers import GPTJConfig, LlamaConfig

    if backend == "hooked":
        cfg = hooked_config(GPTJConfig(n_layer=3, n_embd=64, n_head=4, vocab_size=100, rotary_dim=8),
                            architecture="GPTJForCausalLM")
        cfg.model_name = "gpt-j-6B"
        model = _fake_model(cfg)
    else:
        model = _meta_bridge(LlamaConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
                                         vocab_size=len(_tokenizer())), "LlamaForCausalLM", "Llama-2-7b-hf")
        assert model.cfg.model_name == "Llama-2-7b-hf"
    assert known_model(model) is None and preset_key(model) is None
    config = ROMEConfig.for_model(model)
    assert config.preset == "generic" and config.layer < 3


def test_every_preset_key_is_a_recognisable_model_and_fits_it(converted):
    """A preset under a key known_model never returns would never apply; its layers must exist."""
    for editor in editors().values():
        for key in editor.config_class.PRESETS:
            if key == "toyworld":
                continue
            assert key in KNOWN_MODELS, (editor.name, key)
            if key not in converted:  # NOT_ON_META_BRIDGE
                continue
            config = editor.config_class.for_model(converted[key])
            assert config.preset == key
            n_layers = converted[key].cfg.n_layers
            for field in ("layer", "layers", "mlp_layers", "attn_layers", "query_layers", "value_layers"):
                value = getattr(config, field, None)
                if isinstance(value, int):
                    assert 0 <= value < n_layers, (editor.name, key, field)
                elif isinstance(value, tuple):
                    assert all(0 <= v < n_layers for v in value), (editor.name, key, field)


def test_preset_override_and_unknown_preset(converted):
    llama2 = converted["Llama-2-7b-hf"]
    assert ROMEConfig.for_model(llama2).layer == 5 != ROMEConfig.generic(llama2)["layer"]
    assert ROMEConfig.for_model(llama2, preset="generic").layer == ROMEConfig.generic(llama2)["layer"]
    assert ROMEConfig.for_model(llama2, preset="gpt2-xl", steps=3).layer == 17
    with pytest.raises(EditConfigError, match="preset 'gpt-j'"):
        ROMEConfig.for_model(llama2, preset="gpt-j")


def test_edit_config_records_the_preset(toy_model, person_records):
    edit = rome(toy_model, [person_records[0]], steps=2)
    assert edit.config["preset"] == "toyworld"
    assert edit.config["layer"] == ROMEConfig.PRESETS["toyworld"]["layer"]
    by_hand = ROMEConfig(**{**ROMEConfig.PRESETS["toyworld"], "steps": 2})
    assert rome(toy_model, [person_records[0]], config=by_hand).config["preset"] is None


def test_rome_paper_preset_is_the_reference_settings_at_the_models_layer(toy_model):
    import dataclasses

    from interp_edit.editing import EditRequest, rome
    from interp_edit.editing.methods.memit import MEMITConfig
    from interp_edit.editing.methods.rome import ROMEConfig
    from interp_edit.errors import EditConfigError

    paper, own = ROMEConfig.for_model(toy_model, preset="paper"), ROMEConfig.for_model(toy_model)
    reference = ROMEConfig()  # the class defaults: kmeng01/rome's GPT-2 XL settings
    differ = {f.name for f in dataclasses.fields(ROMEConfig) if getattr(paper, f.name) != getattr(reference, f.name)}
    assert differ == {"layer", "stats_samples", "preset"}
    assert (paper.layer, paper.stats_samples, paper.preset) == (own.layer, own.stats_samples, "paper")
    assert (paper.variant, own.variant) == ("original", "r-rome")
    with pytest.raises(EditConfigError, match="MEMITConfig has no 'paper' preset"):
        MEMITConfig.for_model(toy_model, preset="paper")
    with pytest.raises(EditConfigError, match=r"no preset 'papers'.*or 'paper'"):
        ROMEConfig.for_model(toy_model, preset="papers")
    e = rome(toy_model, [EditRequest("{} was born in", "Talvik Corlo", "Karsa")], preset="paper", steps=2, n_prefixes=1)
    assert repr(e).startswith("Edit(method='rome', preset='paper', variant='original'")
