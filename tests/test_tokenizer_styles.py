"""Deliverable 4 of issue 13: subjects, verbs and targets are located and scored right with
SentencePiece / Metaspace tokenizers (Llama / Mistral style, Gemma style) and byte-level BPE
without a prefix space or BOS (Qwen style), on a tiny Llama-family model.

The references here tokenise the whole text at once and read characters back from the
tokenizer's own offsets; they share no code with ``tokenize_with_subject`` / ``encode_target``."""

from __future__ import annotations

import functools

import pytest
import torch

from interp_edit import load_model
from interp_edit.adapter.tiny import tiny_hf_model
from interp_edit.adapter.tiny_tokenizers import STYLES, tiny_tokenizer
from interp_edit.analysis.attribution import resolve_target
from interp_edit.analysis.scoring import encode_target
from interp_edit.editing.requests import EditRequest, edit_position_of, prepare_requests
from interp_edit.evaluation.logprobs import continuation_logprobs
from interp_edit.prompts import tokenize_with_subject

PROMPT, SUBJECT, VERB, TARGET = "{} was born in the city of", "Belro Astlo", "born", "Ardonia"


@functools.cache
def styled_model(style: str):
    tokenizer = tiny_tokenizer(style)
    hf = tiny_hf_model("llama", vocab_size=len(tokenizer))
    return load_model(f"tiny-llama-{style}", hf_model=hf, tokenizer=tokenizer)


def _text_of(tokenizer, text: str, ids) -> str:
    """The characters of ``text`` the tokens ``ids`` (a contiguous run of text's own tokens) cover."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    own = enc["input_ids"]
    for start in range(len(own) - len(ids) + 1):
        if own[start : start + len(ids)] == list(ids):
            offsets = enc["offset_mapping"][start : start + len(ids)]
            return text[offsets[0][0] : offsets[-1][1]]
    raise AssertionError(f"{ids} is not a run of the tokens of {text!r}")


def test_the_llama_style_tokenizer_has_the_bare_space_problem():
    """Encoding " Ardonia" on its own gives a bare "▁" first (the issue); in a prompt it never occurs."""
    tok = tiny_tokenizer("llama")
    alone = tok.convert_ids_to_tokens(tok.encode(" " + TARGET, add_special_tokens=False))
    assert alone[0] == "▁" and len(alone) > 1


@pytest.mark.parametrize("style", STYLES)
def test_subject_span(style):
    model = styled_model(style)
    tok = model.tokenizer
    text = PROMPT.format(SUBJECT)
    result = tokenize_with_subject(tok, text, SUBJECT)
    start, end = result.subject_span
    assert end - start >= 2  # a multi-token subject in every style
    shift = len(result.tokens) - len(tok.encode(text, add_special_tokens=False))
    assert shift == (1 if tok.bos_token_id is not None else 0)
    assert result.tokens[0] == tok.bos_token_id or shift == 0
    assert _text_of(tok, text, result.tokens[start:end]).strip() == SUBJECT
    # the tokens around the span hold no subject characters
    after = _text_of(tok, text, result.tokens[end:])
    assert after.strip() == text[len(SUBJECT):].strip()


@pytest.mark.parametrize("style", STYLES)
def test_subject_span_in_the_middle_of_a_prompt(style):
    tok = styled_model(style).tokenizer
    text = f"In the city of Ardonia, {SUBJECT} was born"
    start, end = tokenize_with_subject(tok, text, SUBJECT).subject_span
    shift = 1 if tok.bos_token_id is not None else 0
    ids = tokenize_with_subject(tok, text, SUBJECT).tokens
    assert _text_of(tok, text, ids[start:end]).strip() == SUBJECT
    assert SUBJECT.split()[0] not in _text_of(tok, text, ids[shift:start])


@pytest.mark.parametrize("style", STYLES)
def test_verb_position(style):
    tok = styled_model(style).tokenizer
    request = EditRequest(PROMPT, SUBJECT, TARGET, verb=VERB)
    ids, last = edit_position_of(tok, request.text, request, "verb_last")
    ids2, first = edit_position_of(tok, request.text, request, "verb_first")
    assert ids == ids2 and first <= last
    assert _text_of(tok, request.text, ids[first : last + 1]).strip() == VERB


@pytest.mark.parametrize("style", STYLES)
def test_target_is_the_continuation_of_the_prompt(style):
    model = styled_model(style)
    tok = model.tokenizer
    prompt = PROMPT.format(SUBJECT)
    ids = encode_target(tok, TARGET, prompt)
    assert "▁" not in tok.convert_ids_to_tokens(list(ids))  # no bare space token is scored
    whole = tok.encode(prompt + " " + TARGET, add_special_tokens=False)
    assert _text_of(tok, prompt + " " + TARGET, ids).strip() == TARGET
    assert tuple(whole[-len(ids):]) == ids
    assert encode_target(tok, TARGET) == ids  # without a prompt: the same tokens
    # edit requests carry the same target tokens
    (treq,) = prepare_requests(model, [EditRequest(PROMPT, SUBJECT, TARGET)], "fp")
    assert treq.target_ids == ids


@pytest.mark.parametrize("style", STYLES)
def test_metric_and_nlka_target(style):
    """The evaluation's log-probability of the target equals the model's on the whole text, and
    NLKA's target token is the target's first continuation token."""
    model = styled_model(style)
    tok = model.tokenizer
    prompt = PROMPT.format(SUBJECT)
    whole = tok.encode(prompt + " " + TARGET, add_special_tokens=False)
    n_prompt = len(tok.encode(prompt, add_special_tokens=False))
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    tokens = torch.tensor([bos + whole])
    with torch.no_grad():
        logp = model(tokens).log_softmax(-1)[0]
    offset = len(bos)
    reference = sum(logp[offset + i - 1, whole[i]].item() for i in range(n_prompt, len(whole)))
    total, count = continuation_logprobs(model, [prompt], [TARGET])
    assert count.item() == len(whole) - n_prompt
    assert total.item() == pytest.approx(reference, abs=1e-4)
    target_id, _ = resolve_target(model, TARGET, logp[-1], prompt)
    assert target_id == whole[n_prompt]
