"""Deliverable 3 (presets) of issue 13: the published models are recognised from their
architecture and dimensions, whatever their ``model_name``, and get their published editor
settings; ``edit.config["preset"]`` says which preset applied.

The configs are built without weights: Hugging Face config objects with each hub checkpoint's
values (typed here from the checkpoints' config.json, independently of
``interp_edit.adapter.identity``) converted by the same path ``load_model(hf_model=...)`` takes,
and TransformerLens' own offline hub configs where it has them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

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
    "gpt2-xl": "GPT2LMHeadModel", "gpt-j-6B": "GPTJForCausalLM", "Llama-2-7b-hf": "LlamaForCausalLM",
    "Meta-Llama-3-8B": "LlamaForCausalLM", "Qwen2.5-7B": "Qwen2ForCausalLM", "Qwen3-8B": "Qwen3ForCausalLM",
    "Mistral-7B-v0.1": "MistralForCausalLM",
}


@pytest.fixture(scope="module")
def converted():
    """name -> the HookedTransformerConfig a hf_model= load of that checkpoint gets (a temporary
    folder's name as model_name)."""
    return {name: hooked_config(c, architecture=_ARCHITECTURES[name]) for name, c in _hf_configs().items()}


def _fake_model(cfg):
    return SimpleNamespace(cfg=cfg)


def test_every_published_model_is_recognised_from_its_converted_config(converted):
    assert set(converted) == set(KNOWN_MODELS)
    for name, cfg in converted.items():
        assert cfg.model_name != name  # a temporary folder name: the name cannot be what tells
        assert known_model(cfg) == name
        assert known_model(_fake_model(cfg)) == name


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
def test_one_different_dimension_is_not_the_published_model(converted, change):
    cfg = converted["Llama-2-7b-hf"]
    fake = SimpleNamespace(**{**{k: getattr(cfg, k) for k in ("original_architecture", "n_layers", "d_model", "n_heads",
                                                               "n_key_value_heads", "d_mlp", "d_vocab", "model_name")},
                              **change})
    assert known_model(fake) is None


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
    config = editor_config.for_model(_fake_model(converted[name]))
    assert config.preset == name
    assert {k: getattr(config, k) for k in expected} == expected


def test_without_published_settings_the_generic_rule_applies(converted):
    qwen3 = _fake_model(converted["Qwen3-8B"])
    config = ROMEConfig.for_model(qwen3)
    assert config.preset == "generic" and config.layer == ROMEConfig.generic(qwen3)["layer"]
    assert AlphaEditConfig.for_model(_fake_model(converted["Mistral-7B-v0.1"])).preset == "generic"


def test_a_published_name_on_other_shapes_gets_no_preset():
    """A tiny model in a folder called gpt-j-6B is not GPT-J-6B."""
    from transformers import GPTJConfig

    cfg = hooked_config(GPTJConfig(n_layer=3, n_embd=64, n_head=4, vocab_size=100, rotary_dim=8),
                        architecture="GPTJForCausalLM")
    cfg.model_name = "gpt-j-6B"
    assert known_model(cfg) is None and preset_key(cfg) is None
    config = ROMEConfig.for_model(_fake_model(cfg))
    assert config.preset == "generic" and config.layer < 3


def test_every_preset_key_is_a_recognisable_model_and_fits_it(converted):
    """A preset under a key known_model never returns would never apply; its layers must exist."""
    for editor in editors().values():
        for key in editor.config_class.PRESETS:
            if key == "toyworld":
                continue
            assert key in KNOWN_MODELS, (editor.name, key)
            config = editor.config_class.for_model(_fake_model(converted[key]))
            assert config.preset == key
            n_layers = converted[key].n_layers
            for field in ("layer", "layers", "mlp_layers", "attn_layers", "query_layers", "value_layers"):
                value = getattr(config, field, None)
                if isinstance(value, int):
                    assert 0 <= value < n_layers, (editor.name, key, field)
                elif isinstance(value, tuple):
                    assert all(0 <= v < n_layers for v in value), (editor.name, key, field)


def test_preset_override_and_unknown_preset(converted):
    gptj = _fake_model(converted["gpt-j-6B"])
    assert ROMEConfig.for_model(gptj, preset="generic").layer == ROMEConfig.generic(gptj)["layer"]
    assert ROMEConfig.for_model(gptj, preset="gpt2-xl", steps=3).layer == 17
    with pytest.raises(EditConfigError, match="preset 'gpt-j'"):
        ROMEConfig.for_model(gptj, preset="gpt-j")


def test_edit_config_records_the_preset(toy_model, person_records):
    edit = rome(toy_model, [person_records[0]], steps=2)
    assert edit.config["preset"] == "toyworld"
    assert edit.config["layer"] == ROMEConfig.PRESETS["toyworld"]["layer"]
    by_hand = ROMEConfig(**{**ROMEConfig.PRESETS["toyworld"], "steps": 2})
    assert rome(toy_model, [person_records[0]], config=by_hand).config["preset"] is None
