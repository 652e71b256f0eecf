"""to_hf (interp_edit.adapter.export) on either backend (``INTERP_EDIT_TEST_BACKEND``): edits applied
through hooks are refused by name while weight edits export; GPT-Neo's local attention and
unscaled scores are refused from the architecture description on both backends; the export keeps
the model's dtype. References: the exported model's own Hugging Face forward against the
TransformerLens forward, and the Hugging Face config of the source model."""

from __future__ import annotations

import pytest
import torch

from interp_edit.adapter.bridge import hooked_available, version_gap
from interp_edit.adapter.tiny import tiny_hf_model
from tests.family_models import BACKEND, toy_tokenizer

pytestmark = pytest.mark.skipif(BACKEND == "bridge" and hooked_available(),
                                reason="TransformerLens 3.9's bridge does not expose the weights to_hf reads")

TOKENS = torch.tensor([[1, 5, 9, 2, 7, 3, 11, 4]])


def _load(family="gpt2", dtype=torch.float32):
    from interp_edit import load_model

    hf = tiny_hf_model(family, vocab_size=len(toy_tokenizer()))
    return load_model(family, hf_model=hf, tokenizer=toy_tokenizer(), dtype=dtype, backend=BACKEND), hf


def _log_probs(logits):
    return logits.double().log_softmax(-1)


def _tl(model):
    with torch.no_grad():
        return _log_probs(model(TOKENS))


def _hf(hf):
    with torch.no_grad():
        return _log_probs(hf(TOKENS).logits)


def _weight_edit(model):
    from interp_edit.adapter import model_fingerprint
    from interp_edit.editing import Edit, LowRankDelta

    g = torch.Generator().manual_seed(0)
    delta = LowRankDelta(torch.randn(model.cfg.d_mlp, 1, generator=g), torch.randn(1, model.cfg.d_model, generator=g))
    return Edit("rome", {"blocks.1.mlp.W_out": delta}, model_fingerprint(model))


def _steering(model, method):
    from interp_edit.adapter import model_fingerprint
    from interp_edit.editing import Edit
    from interp_edit.editing.hooks import AdditiveSteering

    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    return Edit(method, {}, model_fingerprint(model), hooks={"s": AdditiveSteering("blocks.1.hook_resid_post", vector, 4.0)})


def test_hook_edits_are_refused_by_name_and_weight_edits_export():
    from interp_edit import to_hf
    from interp_edit.errors import ExportError

    model, _ = _load()
    plain = _tl(model)
    weights, steer = _weight_edit(model), _steering(model, "steering")
    with weights.applied(model):
        edited = _tl(model)
        assert (edited - plain).abs().max() > 1e-2  # the weight edit changes the forward
        with steer.applied(model):
            assert (_tl(model) - edited).abs().max() > 1e-2  # and so does the hook edit
            with pytest.raises(ExportError, match=r"hooks.*steering \(hooks at \['blocks\.1\.hook_resid_post'\]\)") as err:
                to_hf(model)
            assert "rome (" not in str(err.value)  # the weight edit is not named
        hf, _ = to_hf(model)  # the hook edit undone: the weight edit is in the export
        torch.testing.assert_close(_hf(hf), edited, atol=1e-4, rtol=0)


def test_gpt_neo_is_refused_from_the_architecture_description():
    from interp_edit import to_hf
    from interp_edit.errors import ExportError

    if BACKEND == "bridge" and version_gap("GPTNeoForCausalLM"):
        pytest.skip("this TransformerLens' bridge cannot run GPT-Neo")
    model, hf = _load("gptneo")
    config = hf.config
    assert "local" in [kind for kinds, n in config.attention_types for kind in kinds]  # what the reference model says
    # the same message on both backends: the bridge's TransformerLens config states neither property
    d_head = config.hidden_size // config.num_heads
    expected = (f"local (sliding-window) attention layers (window {config.window_size}); "
                f"attention scores divided by 1 (GPT-2 divides by sqrt(d_head) = {d_head ** 0.5:g})")
    with pytest.raises(ExportError) as err:
        to_hf(model)
    assert expected in str(err.value)


def test_float64_export_is_exact():
    from interp_edit import to_hf

    model, _ = _load(dtype=torch.float64)
    hf, _ = to_hf(model)
    assert {p.dtype for p in hf.parameters()} == {torch.float64} and hf.config.dtype == torch.float64
    sd = hf.state_dict()
    assert torch.equal(sd["transformer.wte.weight"], model.W_E.detach().cpu())
    assert torch.equal(sd["transformer.wpe.weight"], model.W_pos.detach().cpu())
    for i, block in enumerate(model.blocks):
        assert torch.equal(sd[f"transformer.h.{i}.mlp.c_fc.weight"], block.mlp.W_in.detach().cpu())
        assert torch.equal(sd[f"transformer.h.{i}.mlp.c_proj.weight"], block.mlp.W_out.detach().cpu())
        assert torch.equal(sd[f"transformer.h.{i}.attn.c_attn.weight"][:, :model.cfg.d_model],
                           block.attn.W_Q.detach().cpu().permute(1, 0, 2).reshape(model.cfg.d_model, -1))
    torch.testing.assert_close(_hf(hf), _tl(model), atol=1e-10, rtol=0)  # float32 weights would differ by ~1e-6


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_half_precision_export_keeps_the_dtype(dtype):
    from interp_edit import to_hf

    model, _ = _load(dtype=dtype)
    hf, _ = to_hf(model)
    assert {p.dtype for p in hf.parameters()} == {dtype} and hf.config.dtype == dtype
    assert torch.equal(hf.state_dict()["transformer.wte.weight"], model.W_E.detach().cpu())
    assert (_hf(hf) - _tl(model)).abs().max() < 0.5  # the same model to half-precision rounding
