"""Issue 26, part 2: the architecture description read from the Hugging Face config, field by
field (interp_edit.adapter.config_fields). Every field of every config class of the family
matrix is either a rule of the table (flipping it flips the description), a size, a field that
makes the load refuse, or listed once as changing nothing the description says, with the reason.
Then, on the test backend, each flip is loaded: the model is described as its config says, or
the load is refused."""

from __future__ import annotations

import pytest
import torch
from family_models import BACKEND, FAMILY_NAMES, toy_tokenizer

from interp_edit import load_model
from interp_edit.adapter import architecture, config_fields
from interp_edit.adapter.architecture import check_supported
from interp_edit.adapter.bridge import hooked_available, is_bridge
from interp_edit.adapter.config_fields import (
    FIELD_RULES,
    NOT_DESCRIBED,
    REFUSED_FIELDS,
    SIZE_FIELDS,
    describe_hf_config,
)
from interp_edit.adapter.tiny import BRIDGE_ONLY_FAMILIES, FAMILIES, _configs
from interp_edit.errors import UnsupportedArchitectureError

ALL_FAMILIES = tuple(FAMILIES) + tuple(BRIDGE_ONLY_FAMILIES)
SMALL = dict(d_model=32, n_layers=2, n_heads=4, d_mlp=64, n_ctx=32, init=0.2)

#: config field -> (value A, value B, extra fields both need): flipping A -> B must flip the
#: property the field's rule sets (Qwen2 / Qwen3 slide only with use_sliding_window, and only
#: the layers from max_window_layers on).
FLIPS: dict[str, tuple] = {
    "use_parallel_residual": (False, True, {}),
    "qk_layernorm": (False, True, {}),
    "attention_bias": (False, True, {}),
    "use_qkv_bias": (False, True, {}),
    "use_bias": (False, True, {}),
    "enable_bias": (True, False, {}),
    "mlp_bias": (False, True, {}),
    # n_ctx: no window; SmolLM3 slides on its NoPE layers only
    "sliding_window": (SMALL["n_ctx"], 4, dict(use_sliding_window=True, max_window_layers=0, no_rope_layers=[0, 0])),
    "use_sliding_window": (False, True, dict(sliding_window=4, max_window_layers=0, no_rope_layers=[0, 0])),
    "rotary_dim": (4, 8, {}),
    "rope_parameters.partial_rotary_factor": (0.5, 1.0, {}),
    "num_key_value_heads": (4, 1, {}),
    "scale_attn_weights": (True, False, {}),
    "query_pre_attn_scalar": (8, 32, {}),
    "attn_logit_softcapping": (None, 50.0, {}),
    "final_logit_softcapping": (None, 30.0, {}),
    "window_size": (SMALL["n_ctx"], 4, {}),  # n_ctx: no window
    "parallel_attn": (False, True, dict(new_decoder_architecture=False, num_ln_in_parallel_attn=None)),
    "new_decoder_architecture": (False, True, dict(parallel_attn=False)),
    "bias": (False, True, {}),
    "multi_query": (False, True, dict(new_decoder_architecture=False, num_ln_in_parallel_attn=None)),
    "attention_multiplier": (0.125, 1.0, {}),
    "embedding_multiplier": (1.0, 2.0, {}),
    "logits_scaling": (1.0, 2.0, {}),
    "residual_multiplier": (1.0, 0.5, {}),
    "logit_scale": (1.0, 0.5, {}),
    "use_qk_norm": (False, True, {}),
}
RULE_FIELDS = {rule.field for rule in FIELD_RULES}
#: what every PretrainedConfig has (serialisation, generation, heads): not the family's
_BASE = {"transformers_version", "architectures", "model_type", "dtype", "torch_dtype", "id2label", "label2id",
         "problem_type", "chunk_size_feed_forward", "_name_or_path", "tokenizer_class", "return_dict",
         "output_attentions", "output_hidden_states", "_attn_implementation_autoset", "attn_implementation"}


def _fields(config) -> set[str]:
    data = config.to_dict()
    names = {k for k in data if k not in _BASE and k != "rope_parameters"}
    names |= {f"rope_parameters.{k}" for k in (data.get("rope_parameters") or {})}
    return names


def _hf(family: str, seed: int = 0, **overrides):
    """A tiny (2 layers, d_model 32) random model of ``family`` with config fields ``overrides``
    (``rope_parameters.x`` sets x inside rope_parameters); norm gains and every bias drawn so that
    a field a conversion drops changes the log-probabilities."""
    torch.manual_seed(seed)
    base = _configs(dict(SMALL, vocab_size=len(toy_tokenizer())))[family]()
    data = {k: v for k, v in base.config.to_dict().items() if k not in _BASE and k != "layer_types"}
    for key, value in overrides.items():
        if key.startswith("rope_parameters."):
            data["rope_parameters"] = {**data["rope_parameters"], key.split(".", 1)[1]: value}
        else:
            data[key] = value
    torch.manual_seed(seed)
    hf = type(base)(type(base.config)(**data)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if p.ndim == 1 and leaf == "weight":
                p.uniform_(-0.5, 0.5) if family.startswith("gemma") else p.uniform_(0.5, 1.5)
            elif p.ndim == 1 and leaf == "bias":
                p.normal_(0.0, 0.2)
    return hf


@pytest.fixture(scope="module")
def configs():
    return {f: _hf(f).config for f in ALL_FAMILIES}


# --- the table: every field accounted for, once ----------------------------------------------
def test_each_field_is_listed_once():
    lists = {"rules": RULE_FIELDS, "sizes": set(SIZE_FIELDS), "not described": set(NOT_DESCRIBED),
             "refused": set(REFUSED_FIELDS)}
    for a in lists:
        for b in lists:
            if a < b:
                assert not lists[a] & lists[b], (a, b, lists[a] & lists[b])
    assert all(reason.strip() for reason in NOT_DESCRIBED.values())


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_every_field_of_the_config_class_is_described_sized_refused_or_listed(family, configs):
    config = configs[family]
    unaccounted = sorted(_fields(config) - RULE_FIELDS - SIZE_FIELDS - set(NOT_DESCRIBED) - set(REFUSED_FIELDS))
    assert not unaccounted, f"{type(config).__name__}: fields neither described, a size, refused nor listed: {unaccounted}"


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_flipping_a_described_field_flips_the_description(family, configs):
    """For each rule field the class has: the description (from the config alone) differs
    between the two values, in the property the rule names."""
    fields = sorted(_fields(configs[family]) & {rule.field for rule in config_fields.rules_for(configs[family])})
    assert fields or family in ("gpt2",), family
    missing = [f for f in fields if f not in FLIPS]
    assert not missing, f"no flip values for {missing}"
    for field in fields:
        a, b, extra = FLIPS[field]
        extra = {k: v for k, v in extra.items() if k in _fields(configs[family])}
        da = describe_hf_config(_hf(family, **extra, **{field: a}).config)
        db = describe_hf_config(_hf(family, **extra, **{field: b}).config)
        props = {rule.property for rule in config_fields.rules_for(configs[family]) if rule.field == field}
        for prop in props:
            assert da[prop] != db[prop], (family, field, prop, da[prop])
        assert {p for p in da if da[p] != db[p]} <= props | {"attn_scale"}, (family, field)  # nothing else moves


def test_the_stablelm_fields_of_the_issue_are_described():
    from transformers import StableLmConfig

    assert describe_hf_config(StableLmConfig(use_parallel_residual=True))["parallel_blocks"] is True
    assert describe_hf_config(StableLmConfig(qk_layernorm=True))["qk_norm"] is True
    assert describe_hf_config(StableLmConfig())["parallel_blocks"] is False
    assert describe_hf_config(StableLmConfig(use_qkv_bias=True))["attn_bias"] is True


# --- loaded: described as the config says, or refused ----------------------------------------
def _load(hf):
    """``load_model`` on the test backend: it refuses what the tables name before converting, and
    on the hooked backend reads the description from the Hugging Face config and checks it
    against the HookedTransformer's."""
    model = load_model("tiny-fields", hf_model=hf, tokenizer=toy_tokenizer(),
                       **({} if BACKEND == "bridge" else dict(backend="hooked")))
    assert is_bridge(model) or model._interp_edit_hf_config is hf.config
    return model


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_matrix_models_loaded_as_usual_are_described_as_their_configs_say(family):
    """The matrix's shared models (load_model as every other test loads them: on the hooked
    backend without handing it the Hugging Face config) load, and are described as the config
    says, property by property."""
    from family_models import family_hf, family_model

    arch = architecture(family_model(family))
    expected = describe_hf_config(family_hf(family).config)
    for prop in config_fields.PROPERTIES:
        got, want = getattr(arch, prop), expected[prop]
        assert (got == pytest.approx(want)) if isinstance(want, float) else got == want, (prop, got, want)


def _cases():
    for family in FAMILY_NAMES:
        config = _hf(family).config
        for field in sorted(_fields(config) & {rule.field for rule in config_fields.rules_for(config)}):
            for value in FLIPS[field][:2]:
                yield pytest.param(family, field, value, id=f"{family}-{field}={value}")


@pytest.mark.parametrize("family, field, value", list(_cases()))
def test_a_loaded_flip_is_described_as_its_config_says_or_refused(family, field, value):
    _, _, extra = FLIPS[field]
    fields = _fields(_hf(family).config)
    hf = _hf(family, **{k: v for k, v in extra.items() if k in fields}, **{field: value})
    try:
        with torch.no_grad():
            hf(input_ids=torch.tensor([[1, 2, 3]]))
    except Exception as err:  # noqa: BLE001 - a combination transformers itself cannot run
        pytest.skip(f"transformers cannot run {family} with {field}={value!r}: {type(err).__name__}")
    expected = describe_hf_config(hf.config)
    try:
        model = _load(hf)
    except UnsupportedArchitectureError:
        return  # refused: never described wrongly
    arch = architecture(model)
    for prop in config_fields.PROPERTIES:
        got = getattr(arch, prop)
        want = expected[prop]
        assert got == pytest.approx(want) if isinstance(want, float) else got == want, (prop, got, want)


@pytest.mark.parametrize("fields", [dict(use_parallel_residual=True), dict(qk_layernorm=True),
                                    dict(use_parallel_residual=True, qk_layernorm=True)],
                         ids=["parallel", "qk_layernorm", "both"])
def test_stablelm_parallel_residual_and_qk_layernorm_load_described(fields):
    """The issue's two wrong descriptions: StableLM (the bridge loads it, on either
    TransformerLens) with use_parallel_residual / qk_layernorm is described so, and predicts
    what Hugging Face predicts (the load-time check)."""
    hf = _hf("stablelm", **fields)
    model = load_model("tiny-stablelm-fields", hf_model=hf, tokenizer=toy_tokenizer(), backend="bridge")
    arch = architecture(model)
    assert arch.parallel_blocks is bool(fields.get("use_parallel_residual", False))
    assert arch.ffn_input_site == ("resid_pre" if arch.parallel_blocks else "resid_mid")
    assert arch.qk_norm is bool(fields.get("qk_layernorm", False))
    assert arch.rotary_dim == 4 and arch.n_kv_heads == 2  # partial rotary 0.5 of d_head 8; GQA
    from interp_edit.adapter.equivalence import load_check

    assert load_check(model).checked and load_check(model).max_abs_diff < 1e-4


def _refused_cases():
    values = {"do_layer_norm_before": False, "word_embed_proj_dim": 16, "layer_norm_elementwise_affine": False,
              "_remove_final_layer_norm": True, "use_bidirectional_attention": True, "clip_qkv": 8.0,
              "alibi": True, "layer_types": ["linear_attention", "full_attention"],
              "hidden_size_per_layer_input": 8, "per_layer_config": {"1": {"head_dim": 16}}, "num_kv_shared_layers": 1}
    assert set(values) == set(REFUSED_FIELDS)
    for family in FAMILY_NAMES:
        for field in sorted(_fields(_hf(family).config) & set(REFUSED_FIELDS)):
            yield pytest.param(family, field, values[field], id=f"{family}-{field}")


@pytest.mark.parametrize("family, field, value", list(_refused_cases()))
def test_a_refused_field_refuses_the_load(family, field, value):
    try:
        hf = _hf(family, **{field: value})
    except Exception as err:  # noqa: BLE001 - transformers itself cannot build this combination
        pytest.skip(f"transformers cannot build {family} with {field}={value!r}: {type(err).__name__}")
    with pytest.raises(UnsupportedArchitectureError):
        _load(hf)


@pytest.mark.skipif(not hooked_available(), reason="checks the HookedTransformer conversion (TransformerLens 3.x)")
def test_hooked_conversion_disagreeing_with_the_config_is_refused_naming_both():
    """Where the HookedTransformer's config and the Hugging Face config differ on a property, the
    model is refused naming the property and both sides."""
    hf = _hf("neox")
    model = load_model("tiny-neox-fields", hf_model=hf, tokenizer=toy_tokenizer(), backend="hooked")
    assert architecture(model).parallel_blocks
    wrong = type(hf.config)(**{**hf.config.to_dict(), "use_parallel_residual": False})
    with pytest.raises(UnsupportedArchitectureError,
                       match=r"parallel_blocks: the Hugging Face config says False, HookedTransformerConfig.parallel_attn_mlp says True"):
        check_supported(model, hf_config=wrong)


@pytest.mark.parametrize("model_type, fields, match", [
    ("qwen3_5_text", dict(layer_types=["linear_attention", "full_attention"]), r"Gated DeltaNet"),
    ("gemma4_text", dict(), r"per-layer input embeddings"),
], ids=["qwen3.5", "gemma4"])
def test_the_newest_dense_text_models_are_refused_naming_the_property(model_type, fields, match):
    """Qwen3.5 (hybrid Gated DeltaNet + attention) and Gemma-4 text (per-layer input
    embeddings) are refused at load, on the test backend, naming what is not covered."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, vocab_size=len(toy_tokenizer()), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8, **fields)
    try:
        hf = AutoModelForCausalLM.from_config(config).eval()
    except Exception as err:  # noqa: BLE001 - a config the installed transformers cannot build small
        pytest.skip(f"transformers cannot build a tiny {model_type}: {type(err).__name__}: {err}")
    with pytest.raises(UnsupportedArchitectureError, match=match):
        load_model(f"tiny-{model_type}", hf_model=hf, tokenizer=toy_tokenizer())


def test_unscaled_gpt2_attention_is_refused_on_the_bridge_naming_the_field():
    """The bridge's GPT-2 attention divides scores by √d_head whatever scale_attn_weights says
    (a 2.35 log-prob gap on a tiny model): refused before converting, naming the field, where
    the hooked backend converts it."""
    import transformers

    tok = toy_tokenizer()
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=len(tok), n_positions=64, n_embd=64, n_layer=2, n_head=4, scale_attn_weights=False)).eval()
    with pytest.raises(UnsupportedArchitectureError, match=r"cannot run on backend='bridge'.*scale_attn_weights=False"):
        load_model("unscaled-gpt2", hf_model=hf, tokenizer=tok, backend="bridge")
    if hooked_available():
        model = load_model("unscaled-gpt2", hf_model=hf, tokenizer=tok, backend="hooked")
        assert architecture(model).attn_scale == pytest.approx(1.0)
