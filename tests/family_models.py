"""The family matrix's models: one tiny random Hugging Face model per family
(:data:`interp_edit.adapter.tiny.FAMILIES`), loaded through ``load_model(hf_model=...)`` with
the toy world's tokenizer, built once per test session and shared by every family test.

Tests that change a model restore it bit for bit (``model_state.assert_model_unchanged``).

The backend: ``INTERP_EDIT_TEST_BACKEND`` (``hooked`` / ``bridge``; default: hooked where
TransformerLens has HookedTransformer, else bridge). On the bridge the matrix is the families
the bridge backend covers (those it shares with the hooked backend, and the bridge-only ones)
and every model is unprocessed (the bridge keeps the Hugging Face weights)."""

from __future__ import annotations

import functools
import os

import torch

from interp_edit.adapter.bridge import hooked_available, version_gap
from interp_edit.adapter.tiny import BRIDGE_ONLY_FAMILIES, FAMILIES, tiny_hf_model

BACKEND = os.environ.get("INTERP_EDIT_TEST_BACKEND") or ("hooked" if hooked_available() else "bridge")


#: The tiny families the bridge backend covers (test_bridge_backend checks this against
#: interp_edit.adapter.bridge.BRIDGE_ARCHITECTURES): all but OPT (bridge.BRIDGE_GAPS: the bridge hands its
#: attention whole to Hugging Face: attn.hook_pattern fires, if at all, after it and edits of it are
#: discarded, on 3.9 and 4.3; and its ln2 hooks drop the batch axis), plus the bridge-only ones.
#: Less those the installed TransformerLens' bridge cannot run yet (bridge.BRIDGE_MIN_VERSIONS: Cohere, Granite,
#: OLMo-2, OLMo-3, and GPT-J / GPT-Neo, whose attention interp_edit computes through the bridge's hook points, need 4.x).
_NEEDS_NEWER = tuple(f for f, cls in {"cohere": "CohereForCausalLM", "granite": "GraniteForCausalLM",
                                      "olmo2": "Olmo2ForCausalLM", "olmo3": "Olmo3ForCausalLM",
                                      "gptj": "GPTJForCausalLM", "gptneo": "GPTNeoForCausalLM"}.items() if version_gap(cls))
BRIDGE_FAMILY_NAMES = tuple(f for f in tuple(FAMILIES) + tuple(BRIDGE_ONLY_FAMILIES)
                            if f not in ("opt",) + _NEEDS_NEWER)

FAMILY_NAMES = tuple(FAMILIES) if BACKEND == "hooked" else BRIDGE_FAMILY_NAMES


@functools.cache
def toy_tokenizer():
    from interp_edit import load_model

    return load_model("toyworld").tokenizer


@functools.cache
def family_hf(family: str):
    return tiny_hf_model(family, vocab_size=len(toy_tokenizer()))


@functools.cache
def bridge_hf(family: str, dtype=None):
    """The same tiny model as :func:`family_hf`, as its own instance: a TransformerBridge wraps
    the Hugging Face modules it is given in place (and casts them to its dtype), so it must not
    get the shared one (which other tests save and convert). One instance per dtype."""
    return tiny_hf_model(family, vocab_size=len(toy_tokenizer()))


@functools.cache
def family_model(family: str, processed: bool = True, backend: str | None = None, dtype=None):
    """The family's tiny model on ``backend`` (default :data:`BACKEND`): a HookedTransformer with
    TransformerLens' default processing (or none), or a TransformerBridge (never processed).
    ``dtype`` (default float32): another one gets Hugging Face instances of its own."""
    from interp_edit import load_model

    backend = backend or BACKEND
    if backend == "bridge":  # one bridge per Hugging Face instance (``processed`` means nothing here)
        return _bridge_model(family, dtype)
    flags = {} if processed else dict(fold_ln=False, center_writing_weights=False, center_unembed=False,
                                      fold_value_biases=False)
    hf = family_hf(family) if dtype is None else tiny_hf_model(family, vocab_size=len(toy_tokenizer()))
    return load_model(f"tiny-{family}", hf_model=hf, tokenizer=toy_tokenizer(), backend="hooked", dtype=dtype or torch.float32,
                      **flags)


@functools.cache
def _bridge_model(family: str, dtype=None):
    from interp_edit import load_model

    return load_model(f"tiny-{family}", hf_model=bridge_hf(family, dtype), tokenizer=toy_tokenizer(), backend="bridge",
                      dtype=dtype or torch.float32)
