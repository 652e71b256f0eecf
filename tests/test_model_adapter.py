"""The TransformerLens adapter: built-in model, local Hugging Face models, export, errors."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from interp_edit import load_model, to_hf
from interp_edit.adapter import BUILTIN_MODELS
from interp_edit.adapter.bridge import hooked_available, is_bridge
from interp_edit.errors import CheckpointError, ExportError, InvalidArgumentError, ModelNotFoundError

#: the bridge needs a tokenizer with hf_model= (it would look one up on the hub): the toy world's
#: (its vocabulary covers the random GPT-2's 301 token ids); the hooked backend needs none
needs_hooked = pytest.mark.skipif(not hooked_available(), reason="HookedTransformer (TransformerLens 3.x)")


def _tokenizer_kwargs():
    """A model converted from Hugging Face needs a tokenizer on either backend."""
    return {"tokenizer": load_model("toyworld").tokenizer}


def _hf_logprobs(hf, tokens):
    with torch.no_grad():
        return torch.log_softmax(hf(tokens).logits.float(), -1)


def _tl_logprobs(model, tokens):
    with torch.no_grad():
        return torch.log_softmax(model(tokens, return_type="logits").float(), -1)


def _fresh(hf):
    """A copy of ``hf`` (a bridge takes the Hugging Face object it wraps over)."""
    import copy

    return copy.deepcopy(hf)


@pytest.fixture(scope="module")
def random_gpt2():
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(load_model("toyworld").tokenizer), n_positions=32, n_embd=64, n_layer=3, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    hf = GPT2LMHeadModel(config).eval()
    # make LayerNorms and biases non-trivial so folding/centring is really exercised
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias") and p.ndim == 1:
                p.normal_(0, 0.05)
    return hf


def test_toyworld_is_a_hooked_transformer_with_a_working_tokenizer(toy_model):
    """(a TransformerBridge under TransformerLens 4, which has no HookedTransformer)"""
    if hooked_available():
        from transformer_lens import HookedTransformer

        assert isinstance(toy_model, HookedTransformer)
    else:
        from transformer_lens.model_bridge import TransformerBridge

        assert isinstance(toy_model, TransformerBridge) and is_bridge(toy_model)
    assert toy_model.cfg.n_layers >= 6
    tokens = toy_model.to_tokens("As everyone knows, Veltra is a city in")
    assert tokens[0, 0].item() == toy_model.tokenizer.bos_token_id
    assert (tokens[0] == toy_model.tokenizer.bos_token_id).sum() == 1
    str_tokens = toy_model.to_str_tokens("Veltra is a city in")
    assert str_tokens[0] == "<|endoftext|>" and str_tokens[1] == " Veltra"
    assert toy_model.to_string(tokens[0, 1:]) == " As everyone knows, Veltra is a city in"


def test_toyworld_weights_are_unprocessed_by_default(toy_model):
    # LayerNorm weights are present (not folded) so W_out etc. are the trained weights
    from interp_edit.adapter.architecture import architecture
    from interp_edit.adapter.params import norm_weight

    assert architecture(toy_model).norm == "layernorm" and not architecture(toy_model).norm_folded
    gain = norm_weight(toy_model, "ln1", 0)
    assert not torch.allclose(gain, torch.ones_like(gain))


@pytest.mark.parametrize("processed", [False, True])
def test_local_hf_model_object_matches_hugging_face(random_gpt2, processed):
    flags = {} if processed else dict(fold_ln=False, center_writing_weights=False, center_unembed=False,
                                      fold_value_biases=False)
    if processed and not hooked_available():
        pytest.skip("the bridge keeps the Hugging Face weights unprocessed")
    model = load_model("my-local-gpt2", hf_model=_fresh(random_gpt2), **flags, **_tokenizer_kwargs())
    tokens = torch.randint(0, 301, (3, 20), generator=torch.Generator().manual_seed(1))
    tl, hf = _tl_logprobs(model, tokens), _hf_logprobs(random_gpt2, tokens)
    assert (tl - hf).abs().max().item() < 1e-4


def test_local_hf_folder_matches_hugging_face(random_gpt2, tmp_path):
    random_gpt2.save_pretrained(tmp_path)
    model = load_model(str(tmp_path), **_tokenizer_kwargs())
    tokens = torch.randint(0, 301, (2, 16), generator=torch.Generator().manual_seed(2))
    assert (_tl_logprobs(model, tokens) - _hf_logprobs(random_gpt2, tokens)).abs().max().item() < 1e-4


def test_export_toyworld_to_hf_matches(toy_model):
    hf, tokenizer = to_hf(toy_model)
    assert isinstance(hf, GPT2LMHeadModel)
    tokens = tokenizer(["Veltra is a city in", "As everyone knows, Ardonia has its capital in"],
                       return_tensors="pt", padding=True)["input_ids"]
    assert (_tl_logprobs(toy_model, tokens) - _hf_logprobs(hf, tokens)).abs().max().item() < 1e-4


def test_export_of_processed_model_matches(random_gpt2):
    # folded LayerNorm, centred weights (on the bridge: unprocessed, its only kind)
    model = load_model("x", hf_model=_fresh(random_gpt2), **_tokenizer_kwargs())
    hf, _ = to_hf(model)
    tokens = torch.randint(0, 301, (2, 12), generator=torch.Generator().manual_seed(3))
    assert (_hf_logprobs(hf, tokens) - _hf_logprobs(random_gpt2, tokens)).abs().max().item() < 1e-4


@needs_hooked  # the bridge's GPT-2 has no unembedding bias to set
def test_export_refuses_an_unembedding_bias(random_gpt2):
    model = load_model("x", hf_model=random_gpt2, fold_ln=False, center_unembed=False, **_tokenizer_kwargs())
    with torch.no_grad():
        model.b_U[0] = 1.0
    with pytest.raises(ExportError, match="b_U"):
        to_hf(model)


def test_the_bridge_without_a_tokenizer_is_refused_before_the_hub(random_gpt2):
    hf = _fresh(random_gpt2)
    with pytest.raises(InvalidArgumentError, match="tokenizer: backend='bridge' needs a tokenizer for model 'my-gpt2'"):
        load_model("my-gpt2", hf_model=hf, backend="bridge")
    assert not getattr(hf, "_interp_edit_bridged", False)  # nothing wrapped: it can still be bridged
    assert is_bridge(load_model("my-gpt2", hf_model=hf, backend="bridge", tokenizer=load_model("toyworld").tokenizer))


def test_unknown_name_lists_builtins_and_resolution():
    with pytest.raises(ModelNotFoundError) as err:
        load_model("no-such-model-xyz")
    message = str(err.value)
    assert "no-such-model-xyz" in message and "toyworld" in message and "from_pretrained" in message


@pytest.fixture
def checkpoint_copy(tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(BUILTIN_MODELS["toyworld"], folder)
    return folder


def test_copied_checkpoint_folder_loads(checkpoint_copy, toy_model):
    model = load_model(str(checkpoint_copy))
    assert model.state_dict().keys() == toy_model.state_dict().keys()
    for (name, a), (_, b) in zip(model.state_dict().items(), toy_model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("filename", ["model.safetensors", "config.json", "tokenizer.json"])
def test_missing_checkpoint_file_is_named(checkpoint_copy, filename):
    (checkpoint_copy / filename).unlink()
    with pytest.raises(CheckpointError) as err:
        load_model(str(checkpoint_copy))
    assert filename in str(err.value)


@pytest.mark.parametrize("filename", ["model.safetensors", "config.json", "tokenizer.json"])
def test_corrupt_checkpoint_file_is_named(checkpoint_copy, filename):
    path = checkpoint_copy / filename
    path.write_bytes(path.read_bytes()[:100] + b"\x00garbage")
    with pytest.raises(CheckpointError) as err:
        load_model(str(checkpoint_copy))
    assert filename in str(err.value)


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("d_model", "128", "must be an integer >= 1"), ("n_layers", 2.0, "must be an integer >= 1"),
    ("n_heads", True, "must be an integer >= 1"), ("eps", "1e-5", "must be a positive number"),
    ("act_fn", 3, "must be a string"), ("normalization_type", ["LN"], "must be a string or null"),
    ("default_prepend_bos", "yes", "must be true or false"), ("n_ctx", None, "must be an integer >= 1"),
    ("widht", 4, "is not a checkpoint config field"), ("d_head", "<missing>", "is missing"),
])
@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_a_mistyped_checkpoint_config_field_is_named(checkpoint_copy, field, value, problem, backend):
    """A hand-edited config.json raised a bare TypeError / ValueError while the model was built."""
    import json

    from interp_edit.adapter.bridge import hooked_available

    if backend == "hooked" and not hooked_available():
        pytest.skip("TransformerLens 4.x has no HookedTransformer")
    meta = json.loads((checkpoint_copy / "config.json").read_text())
    if value == "<missing>":
        del meta["model"][field]
    else:
        meta["model"][field] = value
    (checkpoint_copy / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"config.json: field 'model.{field}' {problem}"):
        load_model(str(checkpoint_copy), backend=backend)


def test_weights_not_matching_the_config_are_reported(checkpoint_copy):
    import json

    meta = json.loads((checkpoint_copy / "config.json").read_text())
    meta["model"]["d_mlp"] = 64
    (checkpoint_copy / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match"):
        load_model(str(checkpoint_copy))
