"""The toy world's tokenizer: guarantees by construction, checked."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interp_edit.errors import TokenizationError
from interp_edit.toyworld import build_tokenizer, build_world
from interp_edit.toyworld.tokenizer import check_tokenizer
from interp_edit.toyworld.world import OBJECTS_BY_TYPE


@pytest.fixture(scope="module")
def world_and_tokenizer():
    world = build_world(0)
    return world, build_tokenizer(world)


def test_objects_are_single_tokens(world_and_tokenizer):
    _, tok = world_and_tokenizer
    for objects in OBJECTS_BY_TYPE.values():
        for obj in objects:
            assert len(tok.encode(" " + obj, add_special_tokens=False)) == 1, obj


def test_names_have_two_or_three_tokens_and_both_occur(world_and_tokenizer):
    world, tok = world_and_tokenizer
    lengths = [len(tok.encode(" " + p.name, add_special_tokens=False)) for p in world.people]
    assert set(lengths) == {2, 3}


def test_bos_is_prepended_once(world_and_tokenizer):
    _, tok = world_and_tokenizer
    ids = tok.encode("Veltra")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_a_word_tokenises_the_same_at_the_start_and_inside(world_and_tokenizer):
    world, tok = world_and_tokenizer
    name = world.people[0].name
    alone = tok.encode(name, add_special_tokens=False)
    inside = tok.encode("People say that " + name, add_special_tokens=False)
    assert inside[-len(alone):] == alone


def test_tokenizer_is_deterministic(world_and_tokenizer):
    world, tok = world_and_tokenizer
    again = build_tokenizer(build_world(0))
    assert tok.get_vocab() == again.get_vocab()


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40))
def test_any_text_round_trips(world_and_tokenizer, text):
    _, tok = world_and_tokenizer
    decoded = tok.decode(tok.encode(text, add_special_tokens=False))
    # the pre-tokenizer adds one space before the first word, like GPT-2 with add_prefix_space
    assert decoded in (text, " " + text)


def test_check_tokenizer_rejects_a_world_it_was_not_built_for(world_and_tokenizer):
    _, tok = world_and_tokenizer
    other = build_world(5)
    with pytest.raises(TokenizationError, match="name"):
        check_tokenizer(tok, other)
