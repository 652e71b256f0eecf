"""The family matrix's models: one tiny random Hugging Face model per family
(:data:`interp_edit.adapter.tiny.FAMILIES`), loaded through ``load_model(hf_model=...)`` with
the toy world's tokenizer, built once per test session and shared by every family test.

Tests that change a model restore it bit for bit (``model_state.assert_model_unchanged``)."""

from __future__ import annotations

import functools

from interp_edit.adapter.tiny import FAMILIES, tiny_hf_model

FAMILY_NAMES = tuple(FAMILIES)


@functools.cache
def toy_tokenizer():
    from interp_edit import load_model

    return load_model("toyworld").tokenizer


@functools.cache
def family_hf(family: str):
    return tiny_hf_model(family, vocab_size=len(toy_tokenizer()))


@functools.cache
def family_model(family: str, processed: bool = True):
    """The family's tiny model as a HookedTransformer (TransformerLens' default processing, or none)."""
    from interp_edit import load_model

    flags = {} if processed else dict(fold_ln=False, center_writing_weights=False, center_unembed=False,
                                      fold_value_biases=False)
    return load_model(f"tiny-{family}", hf_model=family_hf(family), tokenizer=toy_tokenizer(), **flags)
