"""The toy world's own byte-level BPE tokenizer (GPT-2 style), built offline.

The merges are constructed, not learned from frequencies, so that the properties the
analyses rely on hold by design and are checked: every object (city, country, language,
profession, instrument) is one token, every template word is one token, and every person's
name is two or three tokens (first name, then a one-token last name or an initial syllable
and a continuation syllable). Merges are grown the way BPE grows them: each new word is
first split with the merges made so far and its pieces are then merged left to right.

Like GPT-2, words carry their leading space (``" Veltra"``); the pre-tokenizer adds a space
before the first word too, so a word tokenises the same anywhere in a prompt.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from interp_edit.errors import TokenizationError
from interp_edit.toyworld.templates import (
    FILLER_SUBJECTS,
    FILLER_TAILS,
    FILLER_VERBS,
    all_template_texts,
)
from interp_edit.toyworld.world import ToyWorld

SPECIAL_TOKEN = "<|endoftext|>"
_PRE = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
_SPACE = "\u0120"  # byte-level rendering of " "


def _pieces(text: str) -> list[str]:
    return [p for p, _ in _PRE.pre_tokenize_str(text)]


class _MergeBuilder:
    """Grows a BPE vocabulary and merge list word by word."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {SPECIAL_TOKEN: 0}
        for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
            self.vocab[ch] = len(self.vocab)
        self.merges: list[tuple[str, str]] = []
        self._rank: dict[tuple[str, str], int] = {}

    def split(self, word: str) -> list[str]:
        """Apply the current merges to a byte-level word, lowest rank first."""
        symbols = list(word)
        while len(symbols) > 1:
            ranked = [(self._rank.get(pair, 1 << 60), i) for i, pair in enumerate(zip(symbols, symbols[1:], strict=False))]
            best, i = min(ranked)
            if best == 1 << 60:
                break
            symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
        return symbols

    def add_word(self, word: str) -> None:
        pieces = self.split(word)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            merged = pieces[0] + pieces[1]
            if pair not in self._rank:
                self._rank[pair] = len(self.merges)
                self.merges.append(pair)
            if merged not in self.vocab:
                self.vocab[merged] = len(self.vocab)
            pieces = [merged] + pieces[2:]


def build_tokenizer(world: ToyWorld) -> PreTrainedTokenizerFast:
    """Build the tokenizer for ``world`` and check its guarantees."""
    words = world.vocabulary_words()
    builder = _MergeBuilder()
    # Order matters: syllables first, then names built from them, then whole words.
    for syllable in words["last_name_continuations"]:
        builder.add_word(syllable)
    for initial in words["last_name_initials"]:
        builder.add_word(_SPACE + initial)
    for name in words["first_names"] + words["short_last_names"]:
        builder.add_word(_SPACE + name)
    texts = list(all_template_texts()) + list(FILLER_SUBJECTS + FILLER_VERBS + FILLER_TAILS)
    texts += [",", ".", ":", " and", " the", " a", "'s"]
    common = sorted({p for t in texts for p in _pieces(t.replace("{}", " "))})
    for word in [_SPACE + o for o in words["objects"]] + common:
        builder.add_word(word)

    model = models.BPE(vocab=builder.vocab, merges=builder.merges)
    backend = Tokenizer(model)
    backend.pre_tokenizer = _PRE
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([SPECIAL_TOKEN])
    # Every sequence starts with BOS, as in training (TransformerLens then adds no second one).
    bos = (SPECIAL_TOKEN, builder.vocab[SPECIAL_TOKEN])
    backend.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL_TOKEN} $A", pair=f"{SPECIAL_TOKEN} $A {SPECIAL_TOKEN} $B", special_tokens=[bos]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        pad_token=SPECIAL_TOKEN,
        unk_token=None,
        add_bos_token=True,
        name_or_path="",
    )
    tokenizer.padding_side = "right"
    check_tokenizer(tokenizer, world)
    return tokenizer


def check_tokenizer(tokenizer: PreTrainedTokenizerFast, world: ToyWorld) -> None:
    """Raise TokenizationError unless objects are single tokens and names have 2-3 tokens."""
    words = world.vocabulary_words()
    for obj in words["objects"]:
        ids = tokenizer.encode(" " + obj, add_special_tokens=False)
        if len(ids) != 1:
            pieces = tokenizer.convert_ids_to_tokens(ids)
            raise TokenizationError(f"toy-world object {obj!r} is not one token: {pieces}")
    for person in world.people:
        ids = tokenizer.encode(" " + person.name, add_special_tokens=False)
        if not 2 <= len(ids) <= 3:
            pieces = tokenizer.convert_ids_to_tokens(ids)
            raise TokenizationError(f"toy-world name {person.name!r} has {len(ids)} tokens {pieces}; expected 2-3")

