"""A processed checkpoint (``fold_ln``: ``LNPre`` norms, no gain or bias in the file) loads on the
bridge backend (interp_edit.adapter.loading._checkpoint_on_bridge): its norms become LayerNorms of
gain 1 and bias 0, and its logits are the unprocessed checkpoint's. The processed checkpoint is
folded here by hand from the shipped toy-world checkpoint (no TransformerLens or interp_edit code),
so the test runs on TransformerLens 3 and 4; on 3 the hooked load of a ``save_checkpoint`` of a
``fold_ln`` model is a second reference."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from interp_edit.adapter.bridge import hooked_available
from interp_edit.adapter.loading import BUILTIN_MODELS

PROMPT = "As everyone knows, Talvik Corlo was born in"


def _folded_by_hand(source, folder):
    """The checkpoint at ``source`` with every LayerNorm's gain and bias folded into the weights
    that read it (x̂·w + b then W: x̂ · (w ⊙ W) + b·W), written as an ``LNPre`` checkpoint."""
    state = {k: v.double() for k, v in load_file(str(source / "model.safetensors")).items()}
    meta = json.loads((source / "config.json").read_text())
    n_layers = meta["model"]["n_layers"]

    def fold(weight, bias_of, w, b, pattern):  # weight [.., d_model, ..]: the d_model axis is named m
        return torch.einsum(f"m,{pattern}->{pattern}", w, weight), bias_of + torch.einsum(f"m,{pattern}->{pattern.replace('m', '')}", b, weight)

    for i in range(n_layers):
        p = f"blocks.{i}."
        w1, b1, w2, b2 = (state.pop(p + k) for k in ("ln1.w", "ln1.b", "ln2.w", "ln2.b"))
        for x in "QKV":
            state[p + f"attn.W_{x}"], state[p + f"attn.b_{x}"] = fold(state[p + f"attn.W_{x}"], state[p + f"attn.b_{x}"], w1, b1, "hmd")
        state[p + "mlp.W_in"], state[p + "mlp.b_in"] = fold(state[p + "mlp.W_in"], state[p + "mlp.b_in"], w2, b2, "mf")
    wf, bf = state.pop("ln_final.w"), state.pop("ln_final.b")
    state["unembed.W_U"], state["unembed.b_U"] = fold(state["unembed.W_U"], state["unembed.b_U"], wf, bf, "mv")
    out = {k: v.float().contiguous() for k, v in state.items()}
    folder.mkdir()
    save_file(out, str(folder / "model.safetensors"))
    meta["model"]["normalization_type"] = "LNPre"
    (folder / "config.json").write_text(json.dumps(meta))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, folder / name)


def _last_logits(model):
    tokens = model.to_tokens(PROMPT)
    with torch.no_grad():
        return model(tokens)[0, -1].double()


def test_a_folded_checkpoint_loads_on_the_bridge_with_the_unfolded_logits(tmp_path):
    from interp_edit import load_model

    source = BUILTIN_MODELS["toyworld"]
    _folded_by_hand(source, tmp_path / "folded")
    reference = _last_logits(load_model(str(source), backend="bridge"))
    model = load_model(str(tmp_path / "folded"), backend="bridge")
    got = _last_logits(model)
    assert model.checkpoint_config["model"]["normalization_type"] == "LNPre"
    torch.testing.assert_close(got.log_softmax(-1), reference.log_softmax(-1), atol=1e-4, rtol=0)
    assert got.argmax() == reference.argmax()


@pytest.mark.skipif(not hooked_available(), reason="save_checkpoint of a fold_ln HookedTransformer needs TransformerLens 3.x")
def test_a_saved_processed_checkpoint_loads_on_the_bridge_as_on_the_hooked_backend(tmp_path):
    from interp_edit import load_model
    from interp_edit.adapter.loading import save_checkpoint

    processed = load_model("toyworld", fold_ln=True)
    assert processed.cfg.normalization_type == "LNPre"
    save_checkpoint(processed, tmp_path / "ckpt")
    hooked = _last_logits(load_model(str(tmp_path / "ckpt"), backend="hooked"))
    bridge = _last_logits(load_model(str(tmp_path / "ckpt"), backend="bridge"))
    torch.testing.assert_close(bridge, hooked, atol=1e-4, rtol=0)
