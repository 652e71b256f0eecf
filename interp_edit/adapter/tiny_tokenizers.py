"""Tokenizers in the styles of the model families, trained offline on the toy world's texts.

The toy world's own tokenizer is GPT-2 style (byte-level BPE, a space before every word). The
families tokenise differently, and prompts, subjects and targets must be located and scored
right with each:

- ``"llama"``: SentencePiece-style BPE with a Metaspace pre-tokenizer (``▁`` for a space, one
  prepended to the text; Llama-2/3-SentencePiece, Mistral), BOS ``<s>``. ``" Paris"`` alone
  encodes as ``["▁", "▁Paris"]``: a bare ``▁`` that never follows a prompt.
- ``"gemma"``: SentencePiece-style with no prefix space (Gemma): ``"Paris"`` and ``" Paris"``
  are different tokens; BOS ``<bos>``.
- ``"qwen"``: byte-level BPE without a prefix space and without a BOS token (Qwen2 / Qwen3).

>>> tok = tiny_tokenizer("llama")
>>> hf = tiny_hf_model("llama", vocab_size=len(tok))

Each is a BPE model trained by ``tokenizers``' ``BpeTrainer`` on the world's template texts,
names and objects (so names split into several pieces and objects mostly into one).
"""

from __future__ import annotations

STYLES = ("llama", "gemma", "qwen")

_SPECIALS = {
    "llama": dict(bos="<s>", eos="</s>", pad="<pad>", unk="<unk>"),
    "gemma": dict(bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>"),
    "qwen": dict(bos=None, eos="<|endoftext|>", pad="<|endoftext|>", unk=None),
}


def training_texts(world=None) -> list[str]:
    """Sentences of the toy world: every template filled with names and objects, and the words."""
    from interp_edit.toyworld import counterfact_records, load_world
    from interp_edit.toyworld.templates import all_template_texts

    world = world or load_world()
    words = world.vocabulary_words()
    texts = [t.replace("{}", " ").strip() for t in all_template_texts()]
    for record in counterfact_records(world, n_neighbours=2):
        prompt = record.prompt.format(record.subject)
        texts += [f"{prompt} {record.target_true}", f"{prompt} {record.target_new}"]
    texts += [" ".join(v) for v in words.values()]
    return texts


def tiny_tokenizer(style: str, *, vocab_size: int | None = None, world=None):
    """A ``PreTrainedTokenizerFast`` of ``style`` (one of :data:`STYLES`) trained on the toy
    world's texts, offline and deterministic. ``vocab_size`` defaults to 320 pieces for the
    SentencePiece styles and 600 for byte-level (whose alphabet alone is 256): names then split
    into two to four pieces."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if style not in STYLES:
        raise KeyError(f"unknown tokenizer style {style!r}; known: {STYLES}")
    vocab_size = vocab_size or (600 if style == "qwen" else 320)
    special = _SPECIALS[style]
    special_tokens = list(dict.fromkeys(t for t in special.values() if t is not None))
    if style == "qwen":
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        backend.train_from_iterator(training_texts(world), trainer)
    else:
        backend = Tokenizer(models.BPE(unk_token=special["unk"]))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False)
        if style == "llama":
            # SentencePiece learns pieces within words: train on words split at every "▁", then
            # encode the whole text as one piece sequence
            backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
            backend.train_from_iterator(training_texts(world), trainer)
            # Llama-2's tokenizer.json: "▁" prepended to the text and for every space, no
            # pre-tokenizer; the decoder drops the prepended one
            backend.pre_tokenizer = None
            backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
            backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
        else:  # gemma: spaces become "▁", nothing is prepended
            backend.normalizer = normalizers.Replace(" ", "▁")
            backend.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
            backend.train_from_iterator(training_texts(world), trainer)
            backend.pre_tokenizer = None
            backend.decoder = decoders.Replace("▁", " ")
        bos = special["bos"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=special["bos"], eos_token=special["eos"], pad_token=special["pad"], unk_token=special["unk"],
        add_bos_token=special["bos"] is not None,  # its post-processor adds BOS (TransformerLens asks)
        name_or_path="",
    )
    tokenizer.padding_side = "right"
    return tokenizer
