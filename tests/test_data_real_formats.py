"""Data files as they come: multiple-choice labels judged as the model scores them (the token
after the question's prompt) with a SentencePiece / Metaspace tokenizer (Llama-2 / Mistral
style, whose ``encode(" A")`` is ``["▁", "▁A"]``) and unchanged for GPT-2-style BPE; and the
record a message names is the record's place in the file (and its line in a JSONL file), also
after records were skipped.

The label references read the token covering the label's characters from the tokenizer's own
offsets of the whole text; they share no code with ``encode_target``."""

from __future__ import annotations

import copy
import functools
import json

import pytest
import torch

from interp_edit.adapter.tiny_tokenizers import tiny_tokenizer
from interp_edit.data import check_tokens, load_dataset, parse_records
from interp_edit.errors import DatasetError, TokenizationError
from interp_edit.evaluation.metrics import label_token_ids, option_probabilities

PROMPT = "Talvik Corlo was born in"
LETTERS = ["A", "B", "C", "D", "E"]


def mcq_record(case_id, labels, prompt=PROMPT, **rewrite):
    return {"case_id": case_id,
            "requested_rewrite": {"prompt": "{} was born in", "subject": "Talvik Corlo", "target_new": "Gemmel",
                                  "target_true": "Karsa", **rewrite},
            "labels": list(labels),
            "questions": [{"kind": "reliability", "prompt": prompt, "options": list(labels), "answer": 0}]}


def token_of(tokenizer, prompt: str, label: str) -> list[int]:
    """The tokens of ``prompt + " " + label`` (encoded whole) that overlap the label's characters."""
    text = f"{prompt} {label}"
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    start = len(prompt) + 1
    return [i for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True) if b > start and a < len(text)]


@functools.cache
def llama_tokenizer():
    return tiny_tokenizer("llama")


def test_the_llama_style_tokenizer_splits_a_label_alone():
    tok = llama_tokenizer()
    assert tok.convert_ids_to_tokens(tok.encode(" A", add_special_tokens=False)) == ["▁", "▁A"]


def test_one_token_labels_are_accepted_with_a_sentencepiece_tokenizer(tmp_path):
    tok = llama_tokenizer()
    assert all(len(token_of(tok, PROMPT, label)) == 1 for label in LETTERS)  # the premise, from the offsets
    path = tmp_path / "mcq.json"
    path.write_text(json.dumps([mcq_record(7, LETTERS)]))
    assert len(load_dataset(path, tokenizer=tok)) == 1
    assert label_token_ids(tok, LETTERS, PROMPT).tolist() == [token_of(tok, PROMPT, label)[0] for label in LETTERS]
    assert label_token_ids(tok, [" " + label for label in LETTERS], PROMPT).tolist() == \
        label_token_ids(tok, LETTERS, PROMPT).tolist()  # the CaseEdit layout's " A" reads the same


def test_a_label_of_several_pieces_is_still_refused_with_a_sentencepiece_tokenizer():
    tok = llama_tokenizer()
    label = "Zqxvrk"
    assert len(token_of(tok, PROMPT, label)) > 1
    records = [mcq_record(1, ["A", label, "C"])]
    with pytest.raises(DatasetError, match=r"record 0 \(case 1\): field 'questions\[0\].labels\[1\]'.*not one"):
        check_tokens(parse_records(records, "mcq", "m.json"), tok)
    with pytest.raises(TokenizationError, match="Zqxvrk"):
        label_token_ids(tok, ["A", label], PROMPT)


def test_gpt2_style_labels_are_read_as_before(toy_model):
    tok = toy_model.tokenizer
    dataset = load_dataset("toyworld-mcq", tokenizer=tok)
    for question in [q for case in list(dataset)[:5] for q in case.questions]:
        old = [tok.encode(" " + label.lstrip(" "), add_special_tokens=False) for label in question.labels]
        assert label_token_ids(tok, question.labels, question.prompt).tolist() == [ids[0] for ids in old]
        assert [token_of(tok, question.prompt, label) for label in question.labels] == old


def test_option_probabilities_read_the_label_after_the_prompt_on_a_llama_style_model():
    from interp_edit import load_model
    from interp_edit.adapter.tiny import tiny_hf_model

    tok = llama_tokenizer()
    model = load_model("tiny-llama-labels", hf_model=tiny_hf_model("llama", vocab_size=len(tok)), tokenizer=tok)
    probs = option_probabilities(model, [PROMPT], [LETTERS])[0]
    ids = [token_of(tok, PROMPT, label)[0] for label in LETTERS]
    tokens = torch.tensor([[tok.bos_token_id, *tok.encode(PROMPT, add_special_tokens=False)]])
    with torch.no_grad():
        logits = model(tokens.to(model.cfg.device))[0, -1].float().cpu()
    assert torch.allclose(probs, torch.softmax(logits[ids], -1), atol=1e-5)


# --- which record a message names --------------------------------------------------------------

def test_skipped_records_are_named_by_their_place_in_the_file(toy_model, tmp_path):
    bad_parse = mcq_record("p", LETTERS)
    del bad_parse["requested_rewrite"]["target_true"]
    records = [bad_parse, mcq_record("ok1", LETTERS), mcq_record("two", ["A", "Talvik Corlo"]), mcq_record("ok2", LETTERS)]
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(records))
    lenient = load_dataset(path, tokenizer=toy_model.tokenizer, strict=False)
    assert [c.case_id for c in lenient] == ["ok1", "ok2"]
    assert "record 0: field 'requested_rewrite.target_true'" in lenient.skipped[0]
    assert "record 2 (case two): field 'questions[0].labels[1]'" in lenient.skipped[1]
    # strict, after a record the parser dropped: the check names the file's record 2, not the kept list's 1
    dataset = parse_records(records, "mcq", str(path), strict=False)
    with pytest.raises(DatasetError, match=r"record 2 \(case two\)"):
        check_tokens(dataset, toy_model.tokenizer)


def test_jsonl_records_are_named_with_their_line(toy_model, tmp_path):
    bad = mcq_record("bad", LETTERS)
    del bad["requested_rewrite"]["target_true"]
    lines = ["", json.dumps(mcq_record("a", LETTERS)), "", json.dumps(bad), "  ", json.dumps(mcq_record("two", ["A", "Talvik Corlo"]))]
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"record 1 \(line 4\): field 'requested_rewrite.target_true'"):
        load_dataset(path)
    lenient = load_dataset(path, tokenizer=toy_model.tokenizer, strict=False)
    assert [c.case_id for c in lenient] == ["a"]
    assert "record 2 (line 6) (case two)" in lenient.skipped[1]


def test_a_dataset_built_by_hand_names_positions():
    records = [mcq_record(1, LETTERS), copy.deepcopy(mcq_record(2, ["A", "Zqxvrk"]))]
    with pytest.raises(DatasetError, match=r"mem: record 1 \(case 2\)"):
        check_tokens(parse_records(records, "mcq", "mem"), llama_tokenizer())
