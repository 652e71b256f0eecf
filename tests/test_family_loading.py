"""Deliverable 3 (loading) of issue 13: every family of :data:`interp_edit.adapter.tiny.FAMILIES`
loads offline from a model object (``hf_model=``) and from a ``save_pretrained`` folder, and the
HookedTransformer predicts what the Hugging Face model predicts, processed or not."""

from __future__ import annotations

import pytest
import torch
from family_models import BACKEND, FAMILY_NAMES, family_hf, family_model, toy_tokenizer

from interp_edit import load_model
from interp_edit.adapter import architecture
from interp_edit.adapter.bridge import hooked_available
from interp_edit.errors import InvalidArgumentError

TOL = 1e-4  # log-probabilities, float32
#: tests of the HookedTransformer conversion itself (its config fields, its converters' messages)
needs_hooked = pytest.mark.skipif(not hooked_available(), reason="checks the HookedTransformer conversion (TransformerLens 3.x)")
RAW = dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False)


def _tokens(vocab: int, n: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (2, n), generator=g)


def _hf_logprobs(hf, tokens):
    with torch.no_grad():
        return hf(tokens, use_cache=False).logits.log_softmax(-1)


def _max_gap(model, hf, tokens) -> float:
    with torch.no_grad():
        ours = model(tokens).log_softmax(-1)
    return (ours - _hf_logprobs(hf, tokens)).abs().max().item()


@pytest.mark.parametrize("processed", [True, False], ids=["processed", "unprocessed"])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_hf_model_object_matches_hugging_face(family, processed):
    hf = family_hf(family)
    model = family_model(family, processed)  # on the bridge: unprocessed either way
    assert architecture(model).family == type(hf).__name__
    assert _max_gap(model, hf, _tokens(hf.config.vocab_size)) < TOL


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_save_pretrained_folder_matches_hugging_face(family, tmp_path):
    hf = family_hf(family)
    hf.save_pretrained(tmp_path / family)
    tokens = _tokens(hf.config.vocab_size, seed=1)
    for flags in ({}, RAW) if BACKEND == "hooked" else ({},):  # the bridge takes no processing flags
        model = load_model(str(tmp_path / family), tokenizer=toy_tokenizer(), **flags)
        assert _max_gap(model, hf, tokens) < TOL, flags


@needs_hooked
def test_gemma2_sliding_window_layers_are_local():
    """A window shorter than the prompt: the even layers attend to the last ``window`` tokens only."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=len(toy_tokenizer()), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=32, sliding_window=3,
        query_pre_attn_scalar=12, initializer_range=0.3, attn_logit_softcapping=20.0, final_logit_softcapping=10.0,
    )
    hf = Gemma2ForCausalLM(config).eval()
    model = load_model("tiny-gemma2-window", hf_model=hf, tokenizer=toy_tokenizer(), **RAW)
    assert model.cfg.attn_types == ["local", "global"] and model.cfg.window_size == 3
    assert model.cfg.attn_scale == pytest.approx(12**0.5)
    assert _max_gap(model, hf, _tokens(40, n=10)) < TOL


def test_soft_capped_logits_are_not_centred():
    """Centring the unembedding shifts each position's logits, which a soft-cap does not forgive."""
    model = family_model("gemma2")
    assert model.cfg.output_logits_soft_cap > 0
    assert model.W_U.mean(-1).abs().max() > 1e-3  # left uncentred by default
    with pytest.raises(InvalidArgumentError, match="center_unembed"):
        load_model("tiny-gemma2", hf_model=family_hf("gemma2"), tokenizer=toy_tokenizer(), center_unembed=True)


@needs_hooked
def test_phi_rotary_dim_from_rope_parameters():
    hf = family_hf("phi")
    factor = hf.config.rope_parameters["partial_rotary_factor"]
    d_head = hf.config.hidden_size // hf.config.num_attention_heads
    assert family_model("phi", backend="hooked").cfg.rotary_dim == round(factor * d_head) < d_head


# --- bad input: an architecture the toolkit does not cover is named at load time -------------

def _tiny(cls_name: str, config_name: str, **kwargs):
    import transformers

    config = getattr(transformers, config_name)(vocab_size=len(toy_tokenizer()), hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=4, max_position_embeddings=64, **kwargs)
    return getattr(transformers, cls_name)(config).eval()


@pytest.mark.parametrize("build, match", [
    (lambda: _tiny("MixtralForCausalLM", "MixtralConfig", intermediate_size=64, num_key_value_heads=2,
                   num_local_experts=4, num_experts_per_tok=2), r"MixtralForCausalLM.*mixture-of-experts MLPs \(num_experts=4\)"),
    (lambda: _tiny("PersimmonForCausalLM", "PersimmonConfig", intermediate_size=64),
     r"PersimmonForCausalLM.*does not cover this architecture.*no config converter"),
], ids=["moe", "unknown-architecture"])
def test_an_uncovered_hf_model_is_refused_at_load_naming_it(build, match):
    from interp_edit.errors import UnsupportedArchitectureError

    if not hooked_available():  # TransformerLens 4: the bridge refuses it, naming the backend that may load it
        match = r"(Mixtral|Persimmon)ForCausalLM' cannot run on backend='bridge'.*backend='hooked'"
    with pytest.raises(UnsupportedArchitectureError, match=match):
        load_model("tiny-uncovered", hf_model=build(), tokenizer=toy_tokenizer())


@pytest.mark.parametrize("family, backend", [(f, b) for f in ("cohere", "granite", "olmo2", "olmo3") for b in (None, "bridge")]
                         + [("gptj", "bridge"), ("gptneo", "bridge")])  # HookedTransformer 3.9 loads GPT-J / GPT-Neo by default
def test_a_family_the_installed_bridge_cannot_run_is_refused_naming_why(family, backend):
    """Cohere, Granite, OLMo-2, OLMo-3, GPT-J and GPT-Neo need TransformerLens 4's bridge
    (``bridge.BRIDGE_MIN_VERSIONS``): under 3.9 the load is refused before anything is wrapped,
    naming what the old bridge gets wrong and the version to install; from 4 on the family matrix
    loads them."""
    from interp_edit.adapter.bridge import version_gap
    from interp_edit.adapter.tiny import tiny_hf_model
    from interp_edit.errors import UnsupportedArchitectureError

    hf = tiny_hf_model(family, vocab_size=len(toy_tokenizer()))
    if version_gap(type(hf).__name__) is None:
        pytest.skip("the installed TransformerLens' bridge runs it (the family matrix checks it)")
    why = {"cohere": r"applies logit_scale only by folding it into W_U", "granite": r"fires hook_embed before the embedding_multiplier",
           "olmo2": r"names OLMo-2's post-sublayer norms ln1 / ln2", "olmo3": r"names OLMo-2's post-sublayer norms ln1 / ln2",
           "gptj": r"GPT-J's attention whole .*fires no attn\.hook_pattern",
           "gptneo": r"GPT-Neo's attention whole .*fires attn\.hook_pattern only after it has run"}
    match = rf"{type(hf).__name__}' cannot run on backend='bridge' here: TransformerLens 3\.9's .*{why[family]}.*" \
            r"install transformer-lens>=4 \(installed: 3\."
    if backend is None and family == "olmo3":  # HookedTransformer 3.9 converts OLMo-3's config: the hooked backend refuses
        match = rf"{match}|post-norm-only blocks of Olmo3ForCausalLM .*backend='bridge' covers OLMo-2 / OLMo-3 from " \
                r"TransformerLens 4 on"
    with pytest.raises(UnsupportedArchitectureError, match=match):
        load_model(f"tiny-{family}", hf_model=hf, tokenizer=toy_tokenizer(), backend=backend)
    assert not getattr(hf, "_interp_edit_bridged", False)  # refused before the bridge wrapped it


@pytest.mark.parametrize("family", ["olmo2", "olmo3"])
def test_a_bridge_that_names_the_post_norms_ln1_ln2_is_refused_at_boot(family, monkeypatch):
    """Behind the version gate, the boot checks the layout of blocks without input norms: no
    ln1 / ln2, the post-norms as ln1_post / ln2_post. TransformerLens 3.9's bridge, let past the
    gate, names them ln1 / ln2 and is refused naming that."""
    from interp_edit.adapter import bridge
    from interp_edit.adapter.tiny import tiny_hf_model
    from interp_edit.errors import UnsupportedArchitectureError

    hf = tiny_hf_model(family, vocab_size=len(toy_tokenizer()))
    if bridge.version_gap(type(hf).__name__) is None:
        pytest.skip("the installed TransformerLens' bridge has the layout (the family matrix checks it)")
    monkeypatch.setattr(bridge, "BRIDGE_MIN_VERSIONS", {})
    with pytest.raises(UnsupportedArchitectureError, match=r"blocks without input norms.*gives block 0 ln1, ln2, "
                                                           r"no ln1_post, no ln2_post"):
        load_model(f"tiny-{family}", hf_model=hf, tokenizer=toy_tokenizer(), backend="bridge")


@needs_hooked
@pytest.mark.parametrize("fields, match", [
    (dict(attn_only=True), "attention-only blocks"),
    (dict(normalization_type=None), "no normalisation layers"),
    (dict(positional_embedding_type="shortformer"), "positional_embedding_type='shortformer'"),
    (dict(original_architecture="Olmo2ForCausalLM"), "post-norm-only blocks of Olmo2ForCausalLM"),
    (dict(attn_only=True, normalization_type=None), "attention-only blocks.*; no normalisation layers"),
])
def test_check_supported_names_every_missing_property(fields, match):
    from types import SimpleNamespace

    from transformer_lens import HookedTransformerConfig

    from interp_edit.adapter.architecture import check_supported
    from interp_edit.errors import UnsupportedArchitectureError

    base = dict(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=16, d_vocab=20, act_fn="gelu",
                normalization_type="LN", original_architecture="GPT2LMHeadModel")
    with pytest.raises(UnsupportedArchitectureError, match=match):
        check_supported(SimpleNamespace(cfg=HookedTransformerConfig(**{**base, **fields})))
    model = SimpleNamespace(cfg=HookedTransformerConfig(**base))
    assert check_supported(model) is model  # the same config without the property is covered
