"""Loading a Hugging Face folder or object one layer at a time (interp_edit.adapter.streaming)
gives the model TransformerLens' whole-model conversion gives: the reference here is
TransformerLens' own ``get_pretrained_state_dict`` + ``load_and_process_state_dict``, run in the
test. Also: the folder path keeps no Hugging Face tensor alive, a user's ``hf_model`` is left
bit for bit as it was, and the bridge loads a folder in the target dtype."""

from __future__ import annotations

import gc
import tempfile
import weakref

import pytest
import torch

from interp_edit.adapter.bridge import hooked_available
from interp_edit.adapter.tiny import FAMILIES, tiny_hf_model
from tests.family_models import toy_tokenizer

pytestmark = pytest.mark.skipif(not hooked_available(), reason="the hooked backend needs TransformerLens 3.x")

BF16_FAMILIES = ("gpt2", "llama3", "qwen3", "gemma", "neox")


def _flags(family):
    # TransformerLens' hub defaults; no unembedding centring under Gemma-2's final-logit soft-cap
    return dict(fold_ln=True, center_writing_weights=True, center_unembed=family != "gemma2", fold_value_biases=True)


def _config(hf, dtype):
    from interp_edit.adapter.loading import hooked_config  # the config conversion, not the weights'

    return hooked_config(hf.config, architecture=type(hf).__name__, dtype=dtype)


def _reference(hf, family, dtype):
    """TransformerLens' whole-model conversion of ``hf`` (the path streaming replaces)."""
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    cfg = _config(hf, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        state = loading.get_pretrained_state_dict(tmp, cfg, hf, dtype=dtype)
    model = HookedTransformer(cfg, toy_tokenizer(), move_to_device=False, default_padding_side="right")
    model.load_and_process_state_dict(state, **_flags(family))
    return model.eval()


def _assert_same_model(got, ref):
    from interp_edit.adapter import attention_layout_is_read_order

    # the attention weights written in the order the forward reads them, with no second pass
    assert attention_layout_is_read_order(got)
    a, b = got.state_dict(), ref.state_dict()
    assert sorted(a) == sorted(b)
    for key in b:
        assert a[key].dtype == b[key].dtype and a[key].device == b[key].device, key
        assert torch.equal(a[key], b[key]), key
    assert got.cfg.normalization_type == ref.cfg.normalization_type
    assert {k: p.requires_grad for k, p in got.named_parameters()} == {k: p.requires_grad for k, p in ref.named_parameters()}
    tokens = torch.tensor([[1, 5, 9, 2, 7, 3]])
    with torch.no_grad():
        torch.testing.assert_close(got(tokens).float(), ref(tokens).float(), atol=1e-5, rtol=0)


def _stream(hf, family, dtype, folder=None):
    from interp_edit.adapter import streaming

    return streaming.stream_hooked(hf, _config(hf, dtype), toy_tokenizer(), _flags(family), "cpu", dtype, folder=folder)


def _hf(family):
    return tiny_hf_model(family, vocab_size=len(toy_tokenizer()))


def _snapshot(hf):
    return {k: (v.detach().clone(), v.dtype, v.device, v.requires_grad) for k, v in hf.state_dict(keep_vars=True).items()}


def _assert_untouched(hf, before):
    after = hf.state_dict(keep_vars=True)
    assert sorted(after) == sorted(before)
    for key, (value, dtype, device, grad) in before.items():
        now = after[key]
        assert now.dtype == dtype and now.device == device and now.requires_grad == grad, key
        assert torch.equal(now.detach(), value), key


@pytest.mark.parametrize("family", tuple(FAMILIES))
def test_object_streams_to_the_whole_conversion(family):
    hf = _hf(family)
    before = _snapshot(hf)
    model = _stream(hf, family, torch.float32)
    _assert_same_model(model, _reference(hf, family, torch.float32))
    _assert_untouched(hf, before)
    sources = {p.untyped_storage().data_ptr() for p in hf.parameters()}
    assert not sources & {p.untyped_storage().data_ptr() for p in model.parameters()}  # shares no memory


@pytest.mark.parametrize("family", BF16_FAMILIES)
def test_object_streams_in_bfloat16(family):
    hf = _hf(family)
    before = _snapshot(hf)
    model = _stream(hf, family, torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    _assert_same_model(model, _reference(hf, family, torch.bfloat16))
    _assert_untouched(hf, before)


@pytest.mark.parametrize("family", tuple(FAMILIES))
def test_folder_streams_to_the_whole_conversion(family, tmp_path):
    from interp_edit.adapter import streaming

    hf = _hf(family)
    hf.save_pretrained(tmp_path)
    skeleton = streaming.folder_skeleton(tmp_path, torch.float32)
    model = _stream(skeleton, family, torch.float32, folder=tmp_path)
    assert all(p.device.type == "meta" for p in skeleton.parameters())  # every layer dropped again
    _assert_same_model(model, _reference(hf, family, torch.float32))


@pytest.mark.parametrize("family", ("gpt2", "llama3"))
def test_folder_through_load_model_reads_no_whole_model(family, tmp_path, monkeypatch):
    import transformers

    from interp_edit import load_model

    hf = _hf(family)
    hf.save_pretrained(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("the hooked folder path read the whole Hugging Face model")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    for dtype in (torch.float32, torch.bfloat16):
        model = load_model(str(tmp_path), tokenizer=toy_tokenizer(), backend="hooked", dtype=dtype)
        # the float32 folder converted and processed in float32, rounded to bfloat16 once (as hf_model=hf gives)
        _assert_same_model(model, _reference(hf, family, dtype))


def _rounded_once(model, dtype):
    return {k: v.to(dtype) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("stored", (torch.float32, torch.bfloat16))
@pytest.mark.parametrize("family", ("gpt2", "gemma2", "phi"))
def test_half_precision_folder_load_is_the_float32_load_rounded_once(family, stored, tmp_path):
    """A bfloat16 / float16 load of a folder equals, bit for bit, the float32 load of the same
    folder cast to that dtype (the weights folded and centred in float32, rounded once), and so
    has its fingerprint: an edit computed on one applies to the other."""
    from interp_edit import load_model
    from interp_edit.adapter import model_fingerprint

    _hf(family).to(stored).save_pretrained(tmp_path)
    full = load_model(str(tmp_path), tokenizer=toy_tokenizer(), backend="hooked")
    for dtype in (torch.bfloat16, torch.float16):
        half = load_model(str(tmp_path), tokenizer=toy_tokenizer(), backend="hooked", dtype=dtype)
        expected, got = _rounded_once(full, dtype), half.state_dict()
        assert sorted(got) == sorted(expected)
        assert [k for k in expected if not torch.equal(got[k], expected[k])] == [], dtype
        if dtype == torch.bfloat16:  # the fingerprint hashes bfloat16 numbers (float16's are rounded twice)
            assert model_fingerprint(half) == model_fingerprint(full)


def test_half_precision_folder_load_without_streaming_is_the_float32_load_rounded_once(tmp_path, monkeypatch):
    """The same where the folder cannot be streamed (TransformerLens' whole-model conversion)."""
    from interp_edit import load_model
    from interp_edit.adapter import streaming

    def cannot(*args, **kwargs):
        raise streaming.CannotStream("forced by the test")

    _hf("llama3").save_pretrained(tmp_path)
    full = load_model(str(tmp_path), tokenizer=toy_tokenizer(), backend="hooked")
    monkeypatch.setattr(streaming, "stream_hooked", cannot)
    half = load_model(str(tmp_path), tokenizer=toy_tokenizer(), backend="hooked", dtype=torch.bfloat16)
    expected, got = _rounded_once(full, torch.bfloat16), half.state_dict()
    assert [k for k in expected if not torch.equal(got[k], expected[k])] == []


def test_folder_keeps_no_hugging_face_tensor_alive(tmp_path, monkeypatch):
    from interp_edit.adapter import streaming

    _hf("llama3").save_pretrained(tmp_path)
    read: list[weakref.ref] = []
    keys: list[str] = []
    original = streaming.safe_open

    class Recording:
        def __init__(self, *args, **kwargs):
            self.inner = original(*args, **kwargs)

        def __enter__(self):
            self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def keys(self):
            return self.inner.keys()

        def get_slice(self, key):  # the header's shapes (checked against config.json before any tensor is read)
            return self.inner.get_slice(key)

        def get_tensor(self, key):
            tensor = self.inner.get_tensor(key)
            read.append(weakref.ref(tensor.untyped_storage()))  # the memory, whatever tensor wraps it
            keys.append(key)
            return tensor

    monkeypatch.setattr(streaming, "safe_open", Recording)
    from interp_edit import load_model

    model = load_model(str(tmp_path), tokenizer=toy_tokenizer(), backend="hooked")
    gc.collect()
    matrices = [k for k in keys if k.endswith(("proj.weight", "embed_tokens.weight", "lm_head.weight"))]
    assert len(set(keys)) == len(list(_hf("llama3").parameters())) and len(matrices) == len(set(matrices))
    assert all(ref() is None for ref in read)
    assert model.cfg.n_layers == 3


def test_user_object_untouched_through_load_model():
    from interp_edit import load_model

    hf = _hf("qwen2")
    before = _snapshot(hf)
    for dtype in (torch.float32, torch.bfloat16):
        model = load_model("mine", hf_model=hf, tokenizer=toy_tokenizer(), backend="hooked", dtype=dtype)
        _assert_untouched(hf, before)
        _assert_same_model(model, _reference(hf, "qwen2", dtype))


def test_pytorch_bin_folder_falls_back_to_the_whole_conversion(tmp_path):
    from interp_edit import load_model

    hf = _hf("llama")
    hf.save_pretrained(tmp_path, safe_serialization=False)
    if not list(tmp_path.glob("*.bin")):
        pytest.skip("this transformers writes safetensors only")
    model = load_model(str(tmp_path), tokenizer=toy_tokenizer(), backend="hooked")
    _assert_same_model(model, _reference(hf, "llama", torch.float32))


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_bridge_loads_a_folder_in_the_target_dtype(dtype, tmp_path):
    from interp_edit import load_model

    hf = _hf("llama3")
    hf.save_pretrained(tmp_path)
    model = load_model(str(tmp_path), tokenizer=toy_tokenizer(), backend="bridge", dtype=dtype)
    assert {p.dtype for p in model.original_model.parameters()} == {dtype}
    from transformers import AutoModelForCausalLM

    # today's path: the whole model read by transformers, then booted
    whole = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=dtype)
    reference = load_model("whole", hf_model=whole, tokenizer=toy_tokenizer(), backend="bridge", dtype=dtype)
    tokens = torch.tensor([[1, 5, 9, 2, 7, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).float(), reference(tokens).float(), atol=1e-5, rtol=0)
        if dtype == torch.float32:
            torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=1e-5, rtol=0)


def test_unprocessed_load_shares_no_memory_with_the_user_object():
    from interp_edit import load_model

    hf = _hf("llama3")
    before = _snapshot(hf)
    off = dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False)
    model = load_model("mine", hf_model=hf, tokenizer=toy_tokenizer(), backend="hooked", **off)
    with torch.no_grad():
        for param in model.parameters():  # an edit of the loaded model must not reach hf
            param.add_(1.0)
    _assert_untouched(hf, before)


def _layer_state():
    """A converted layer's tensors as the streaming loop holds them (other tensors on meta)."""
    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    return {"blocks.0.ln1.w": r(4), "blocks.0.attn.W_O": r(2, 3, 4), "blocks.0.attn.b_O": r(4),
            "blocks.0.ln2.w": r(4), "blocks.0.mlp.W_in": r(4, 6), "blocks.0.mlp.W_out": r(6, 4),
            "blocks.0.mlp.b_out": r(4), "blocks.0.shared_buffer": torch.tensor(-1e5),
            "unembed.W_U": torch.empty(4, 9, device="meta")}


def _fake_processing(mix: bool):
    def process(state, cfg, processing):
        out = dict(state)
        out["blocks.0.attn.W_O"] = state["blocks.0.attn.W_O"] * state["blocks.0.ln1.w"]
        out["blocks.0.attn.b_O"] = state["blocks.0.attn.b_O"] + state["blocks.0.attn.W_O"].sum((0, 1))
        if mix:  # reads the MLP's output matrix: only the whole layer can compute it
            out["blocks.0.attn.b_O"] = out["blocks.0.attn.b_O"] + state["blocks.0.mlp.W_out"].sum(0)
        out["blocks.0.mlp.W_in"] = state["blocks.0.mlp.W_in"] * state["blocks.0.ln2.w"][:, None]
        out["blocks.0.mlp.W_out"] = state["blocks.0.mlp.W_out"] - state["blocks.0.mlp.W_out"].mean(-1, keepdim=True)
        return out
    return process


@pytest.mark.parametrize("mix", [False, True])
def test_a_layer_is_processed_one_part_at_a_time_or_whole(monkeypatch, mix):
    from interp_edit.adapter import streaming

    passes = []
    fake = _fake_processing(mix)

    def recording(state, cfg, processing):
        passes.append(sorted(k for k, v in state.items() if v.device.type != "meta"))
        return fake(state, cfg, processing)

    monkeypatch.setattr(streaming, "_process", recording)
    state = _layer_state()
    expected = {k: v for k, v in fake(state, None, {}).items() if k.startswith("blocks.0.")}
    got = {k: v for k, v in streaming._process_layer(state, None, {}).items() if k.startswith("blocks.0.")}
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert got[key].device.type != "meta" and torch.equal(got[key], value), key
    if not mix:  # three parts, each pass holding one part's tensors (and the shared buffer) real
        assert len(passes) == 3
        assert "blocks.0.mlp.W_out" not in passes[0] and "blocks.0.attn.W_O" not in passes[2]
        assert all("blocks.0.shared_buffer" in p for p in passes)
    else:  # the attention pass raises (a meta tensor meets a real one): the whole layer once more
        assert passes[-1] == sorted(k for k in state if k.startswith("blocks."))
