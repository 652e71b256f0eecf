"""Deliverable 3 (loading) of issue 13: every family of :data:`interp_edit.adapter.tiny.FAMILIES`
loads offline from a model object (``hf_model=``) and from a ``save_pretrained`` folder, and the
HookedTransformer predicts what the Hugging Face model predicts, processed or not."""

from __future__ import annotations

import pytest
import torch

from family_models import FAMILY_NAMES, family_hf, family_model, toy_tokenizer
from interp_edit import load_model
from interp_edit.errors import InvalidArgumentError

TOL = 1e-4  # log-probabilities, float32
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
    model = family_model(family, processed)
    assert model.cfg.original_architecture == type(hf).__name__
    assert _max_gap(model, hf, _tokens(hf.config.vocab_size)) < TOL


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_save_pretrained_folder_matches_hugging_face(family, tmp_path):
    hf = family_hf(family)
    hf.save_pretrained(tmp_path / family)
    tokens = _tokens(hf.config.vocab_size, seed=1)
    for flags in ({}, RAW):
        model = load_model(str(tmp_path / family), tokenizer=toy_tokenizer(), **flags)
        assert _max_gap(model, hf, tokens) < TOL, flags


def test_gemma2_sliding_window_layers_are_local():
    """A window shorter than the prompt: the even layers attend to the last ``window`` tokens only."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
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


def test_phi_rotary_dim_from_rope_parameters():
    hf = family_hf("phi")
    factor = hf.config.rope_parameters["partial_rotary_factor"]
    d_head = hf.config.hidden_size // hf.config.num_attention_heads
    assert family_model("phi").cfg.rotary_dim == round(factor * d_head) < d_head
