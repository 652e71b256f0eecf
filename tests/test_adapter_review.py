"""The adapter used slightly wrong, as a notebook user would: each case is refused with an
:class:`~interp_edit.errors.InterpEditError` naming what is wrong (never a raw ``RuntimeError`` /
``KeyError`` / ``AttributeError`` from inside TransformerLens), or gives the right model — never a
silently different one. Grouped-query / head-size configs the hooked converters misread, encoder
models given as ``hf_model``, exports and checkpoints of models GPT-2 / the checkpoint config
cannot describe (GPT-Neo's local, unscaled attention; gated MLPs; the bridge), the name a hooked
load keeps, and devices torch cannot use."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from family_models import toy_tokenizer

from interp_edit import load_model
from interp_edit.adapter import save_checkpoint, to_hf
from interp_edit.adapter.bridge import hooked_available
from interp_edit.adapter.tiny import _SIZES, _llama_like, tiny_hf_model
from interp_edit.errors import CheckpointError, ExportError, InvalidArgumentError, UnsupportedArchitectureError

needs_hooked = pytest.mark.skipif(not hooked_available(), reason="the hooked backend needs TransformerLens 3.x")


def _vocab() -> int:
    return len(toy_tokenizer())


def _wide_heads(family: str):
    """A tiny model of ``family`` whose head_dim (32) is not hidden_size / num_attention_heads (16)."""
    spec = dict(_SIZES["tiny"], vocab_size=_vocab(), init=0.2)
    cls, config, extra = {
        "llama": (T.LlamaForCausalLM, T.LlamaConfig, {}),
        "qwen2": (T.Qwen2ForCausalLM, T.Qwen2Config, {"num_key_value_heads": 2}),
        "phi3": (T.Phi3ForCausalLM, T.Phi3Config, {"pad_token_id": None, "bos_token_id": None, "eos_token_id": None}),
    }[family]
    torch.manual_seed(0)
    return cls(_llama_like(config, spec, head_dim=32, **extra)).eval()


@needs_hooked
@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3"])
def test_a_head_dim_the_hooked_converter_ignores_is_refused_naming_it(family):
    # the converter takes d_head = hidden_size / num_attention_heads: it crashed with a shape error
    with pytest.raises(UnsupportedArchitectureError, match=r"head_dim other than hidden_size / num_attention_heads \(head_dim=32\)"):
        load_model("wide", hf_model=_wide_heads(family), tokenizer=toy_tokenizer(), backend="hooked")


@needs_hooked
def test_a_head_dim_the_hooked_converter_ignores_loads_on_the_bridge_by_default():
    hf = _wide_heads("llama")
    tokens = torch.tensor([[3, 17, 5, 9, 2, 40]])
    with torch.no_grad():
        expected = hf(tokens).logits.log_softmax(-1)
    model = load_model("wide", hf_model=hf, tokenizer=toy_tokenizer())
    assert type(model).__name__ == "TransformerBridge" and model.cfg.d_head == 32
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).log_softmax(-1), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("build", [
    lambda v: T.BertForMaskedLM(T.BertConfig(vocab_size=v, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=128)),
    lambda v: T.T5ForConditionalGeneration(T.T5Config(vocab_size=v, d_model=64, d_ff=128, num_layers=2, num_heads=4,
                                                      d_kv=16)),
], ids=["bert", "t5"])
@pytest.mark.parametrize("backend", [None, "hooked"])
def test_an_encoder_model_object_is_refused_naming_its_architecture(build, backend):
    # TransformerLens converts these to encoders: its HookedTransformer config conversion raised KeyError / AttributeError
    if backend == "hooked" and not hooked_available():
        pytest.skip("the hooked backend needs TransformerLens 3.x")
    hf = build(_vocab())
    with pytest.raises(UnsupportedArchitectureError, match=type(hf).__name__):
        load_model("encoder", hf_model=hf, tokenizer=toy_tokenizer(), backend=backend)


@needs_hooked
def test_to_hf_refuses_gpt_neo_local_unscaled_attention():
    # GPT-2 has neither: the export used to predict something else (log-prob differences of ~6)
    model = load_model("neo", hf_model=tiny_hf_model("gptneo", vocab_size=_vocab()), tokenizer=toy_tokenizer())
    with pytest.raises(ExportError, match=r"local \(sliding-window\) attention.*attention scores divided by 1 "):
        to_hf(model)


def test_to_hf_refuses_a_bridge_naming_its_hugging_face_model():
    """TransformerLens 3.9's bridge exposes no W_pos (a raw AttributeError): refused, naming
    model.original_model. TransformerLens 4's exports (test_model_adapter's export tests)."""
    from interp_edit.adapter.bridge import hooked_available

    if not hooked_available():
        pytest.skip("TransformerLens 4's bridge exposes the weights: the export works there")
    model = load_model("toyworld", backend="bridge")
    with pytest.raises(ExportError, match="TransformerBridge.*does not expose.*model.original_model"):
        to_hf(model)


@needs_hooked
@pytest.mark.parametrize("family, field", [("gptneo", "use_local_attn=True"), ("llama", "gated_mlp=True")])
def test_save_checkpoint_refuses_a_model_its_config_cannot_describe(family, field, tmp_path):
    # the checkpoint's config.json records the toy world's fields only: a GPT-Neo loaded back unscaled and global
    # (another model, silently), a Llama did not load at all
    model = load_model(family, hf_model=tiny_hf_model(family, vocab_size=_vocab()), tokenizer=toy_tokenizer())
    with pytest.raises(CheckpointError, match=field):
        save_checkpoint(model, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_save_checkpoint_refuses_a_bridge(tmp_path):
    with pytest.raises(CheckpointError, match="TransformerBridge.*save_pretrained"):
        save_checkpoint(load_model("toyworld", backend="bridge"), tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


@needs_hooked
def test_save_checkpoint_still_saves_what_it_can_describe(tmp_path):
    # hook switches, dtype and processing are no reason to refuse; the copy predicts what the model does
    model = load_model("toyworld", fold_ln=True, center_writing_weights=True, center_unembed=True)
    model.set_use_attn_result(True)
    save_checkpoint(model, tmp_path / "ckpt")
    gpt2 = load_model("g", hf_model=tiny_hf_model("gpt2", vocab_size=_vocab()), tokenizer=toy_tokenizer())
    save_checkpoint(gpt2, tmp_path / "gpt2")
    tokens = torch.tensor([[3, 17, 5, 9]])
    with torch.no_grad():
        torch.testing.assert_close(load_model(str(tmp_path / "gpt2"))(tokens), gpt2(tokens), atol=1e-4, rtol=0)


@needs_hooked
def test_a_hooked_load_from_hugging_face_keeps_the_name_it_was_loaded_by(tmp_path):
    # it was TransformerLens' temporary config folder's name ("tmpk3j..."), so a sweep could not load it again by name
    hf = tiny_hf_model("gpt2", vocab_size=_vocab())
    assert load_model("tiny-gpt2", hf_model=hf, tokenizer=toy_tokenizer(), backend="hooked").cfg.model_name == "tiny-gpt2"
    hf.save_pretrained(tmp_path)
    toy_tokenizer().save_pretrained(tmp_path)
    assert load_model(str(tmp_path), backend="hooked").cfg.model_name == str(tmp_path)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has an MPS device")
def test_a_device_torch_cannot_use_is_refused_naming_it():
    with pytest.raises(InvalidArgumentError, match="device= 'mps': torch cannot use it"):
        load_model("toyworld", device="mps")


def _gpt2_folder(path):
    tiny_hf_model("gpt2", vocab_size=_vocab()).save_pretrained(path)
    toy_tokenizer().save_pretrained(path)
    return path


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_a_folder_whose_weights_file_is_corrupt_is_refused_naming_the_file(backend, tmp_path):
    # safetensors' bare "Error while deserializing header" named no file
    if backend == "hooked" and not hooked_available():
        pytest.skip("the hooked backend needs TransformerLens 3.x")
    folder = _gpt2_folder(tmp_path)
    with open(folder / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(CheckpointError, match="cannot read checkpoint file .*model.safetensors"):
        load_model(str(folder), backend=backend)


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_a_folder_whose_config_does_not_describe_its_weights_is_refused_naming_the_tensors(backend, tmp_path):
    # transformers' RuntimeError pointed at "the above report", which it did not show
    import json

    if backend == "hooked" and not hooked_available():
        pytest.skip("the hooked backend needs TransformerLens 3.x")
    folder = _gpt2_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_embd": 128}))
    with pytest.raises(CheckpointError, match=r"do not match .*config.json: transformer\..*\(64, 192\) in model.safetensors, "
                                              r"\(128, 384\) by config.json"):
        load_model(str(folder), backend=backend)


def _untied_llama_folder(path, n_layers_in_config: int | None = None):
    """A tiny untied Llama saved with save_pretrained (its config may claim more layers)."""
    import json

    spec = dict(_SIZES["tiny"], vocab_size=_vocab(), init=0.2)
    torch.manual_seed(0)
    hf = T.LlamaForCausalLM(_llama_like(T.LlamaConfig, spec, tie_word_embeddings=False)).eval()
    hf.save_pretrained(path)
    toy_tokenizer().save_pretrained(path)
    if n_layers_in_config is not None:
        config = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": n_layers_in_config}))
    return path


def _drop_tensor(folder, key: str) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    del state[key]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
@pytest.mark.parametrize("key", ["model.layers.1.mlp.down_proj.weight", "lm_head.weight"])
def test_a_folder_missing_a_weight_is_refused_naming_it(backend, key, tmp_path):
    # transformers filled the missing tensor with random values, and its report of it was not shown
    if backend == "hooked" and not hooked_available():
        pytest.skip("the hooked backend needs TransformerLens 3.x")
    folder = _untied_llama_folder(tmp_path)
    _drop_tensor(folder, key)
    with pytest.raises(CheckpointError, match=rf"do not match .*config.json: no tensor for {key.replace('.', '[.]')}"):
        load_model(str(folder), backend=backend)


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_a_config_with_more_layers_than_the_weights_is_refused(backend, tmp_path):
    if backend == "hooked" and not hooked_available():
        pytest.skip("the hooked backend needs TransformerLens 3.x")
    n_layers = _SIZES["tiny"]["n_layers"]
    folder = _untied_llama_folder(tmp_path, n_layers_in_config=n_layers + 1)
    with pytest.raises(CheckpointError, match=rf"no tensor for model[.]layers[.]{n_layers}[.]"):
        load_model(str(folder), backend=backend)


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
def test_a_folder_without_a_weights_file_or_no_folder_at_all_is_named(backend, tmp_path):
    from interp_edit.errors import ModelNotFoundError

    if backend == "hooked" and not hooked_available():
        pytest.skip("the hooked backend needs TransformerLens 3.x")
    folder = _gpt2_folder(tmp_path / "model")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing weights file in .*model: none of model.safetensors"):
        load_model(str(folder), backend=backend)
    for typo in (str(tmp_path / "modle"), "./checkpoints/modle", "runs/2026/modle"):
        with pytest.raises(ModelNotFoundError, match=rf"no such folder '{typo}'"):
            load_model(typo, backend=backend)


def test_a_repository_id_the_hub_cannot_serve_is_named_as_neither_folder_nor_hub_model(monkeypatch):
    # on TransformerLens 4 an owner/name id goes to the hub; a mistyped relative folder looks like one
    from interp_edit.adapter import loading
    from interp_edit.errors import ModelNotFoundError

    monkeypatch.setattr(loading, "hub_name_loadable", lambda name: True)

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(T.AutoModelForCausalLM, "from_pretrained", offline)
    with pytest.raises(ModelNotFoundError, match=r"'checkpoints/modle' is no folder here .* could not be loaded from the "
                                                 r"Hugging Face hub: We couldn't connect"):
        load_model("checkpoints/modle", backend="bridge")
