"""The statistics corpus data layer: every source kind reads the texts it should, in order,
and bad sources get a named error naming the file / line / field."""

from __future__ import annotations

import json

import pytest

from interp_edit.errors import CorpusError, CorpusUnavailableError, EditConfigError
from interp_edit.statistics.corpus import Corpus, describe, read_texts, source_kind

TEXTS = ["Talvik Corlo was born in Karsa.", "Korwa Drarin plays the harp.", "Beldel Nordel works as a doctor."]


def test_text_file_by_line_and_by_paragraph(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("first line\nstill first\n\n  \nsecond line\nthird line\n")
    assert read_texts(path, 10) == ["first line", "still first", "second line", "third line"]
    assert read_texts(str(path), 2) == ["first line", "still first"]
    assert read_texts(Corpus(path, unit="paragraph"), 10) == ["first line\nstill first", "second line\nthird line"]
    assert source_kind(Corpus(path)) == "text" and "one text per line" in describe(path)


def test_jsonl_file_with_a_named_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"content": t, "id": i}) + "\n" for i, t in enumerate(TEXTS)) + "\n")
    assert read_texts(Corpus(path, field="content"), 10) == TEXTS
    with pytest.raises(CorpusError, match=r"c\.jsonl' line 1 has no text field 'text' \(it has: \['content', 'id'\]\)"):
        read_texts(path, 10)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n{not json\n")
    with pytest.raises(CorpusError, match=r"bad\.jsonl' line 2 is not JSON"):
        read_texts(bad, 10)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"text": 3}) + "\n")
    with pytest.raises(CorpusError, match="field 'text' is not a string: 3"):
        read_texts(wrong, 10)


def test_folder_reads_its_files_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text(TEXTS[0] + "\n")
    (tmp_path / "b" / "c.jsonl").write_text(json.dumps({"text": TEXTS[1]}) + "\n")
    (tmp_path / "b" / "d.txt").write_text(TEXTS[2] + "\n")
    (tmp_path / "notes.csv").write_text("ignored\n")
    assert read_texts(tmp_path, 10) == TEXTS
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CorpusError, match="holds no .txt"):
        read_texts(empty, 10)


def test_datasets_directory(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"body": TEXTS + [""], "n": [1, 2, 3, 4]}).save_to_disk(str(tmp_path / "ds"))
    assert source_kind(Corpus(tmp_path / "ds")) == "datasets"
    assert read_texts(Corpus(tmp_path / "ds", field="body"), 10) == TEXTS
    with pytest.raises(CorpusError, match=r"has no text field 'text' \(columns: \['body', 'n'\]\)"):
        read_texts(tmp_path / "ds", 10)
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": TEXTS})}).save_to_disk(str(tmp_path / "dd"))
    assert read_texts(tmp_path / "dd", 2) == TEXTS[:2]
    with pytest.raises(CorpusError, match="no split 'test'"):
        read_texts(Corpus(tmp_path / "dd", split="test"), 2)


def test_empty_unreadable_and_missing_corpora(tmp_path):
    (tmp_path / "blank.txt").write_text("\n   \n")
    with pytest.raises(CorpusError, match="has no text"):
        read_texts(tmp_path / "blank.txt", 10)
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(CorpusError, match="binary.txt' is not UTF-8"):
        read_texts(tmp_path / "binary.txt", 10)
    with pytest.raises(CorpusError, match="'missing.jsonl' does not exist"):
        read_texts("missing.jsonl", 10)
    with pytest.raises(CorpusError, match="corpus item 1 is not a string"):
        read_texts(["ok", 3], 10)
    with pytest.raises(CorpusError, match="has no text"):
        read_texts([], 10)
    assert issubclass(CorpusError, EditConfigError)  # callers catching the old error still do


def test_hub_names_need_the_network_and_say_so(monkeypatch):
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(CorpusUnavailableError, match=r"'wikitext' \(config 'wikitext-103-raw-v1'\).*needs the network.*offline"):
        read_texts(("wikitext", "wikitext-103-raw-v1"), 5)
    assert calls == []  # offline mode: not even tried
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(CorpusUnavailableError, match="needs the network, which cannot be reached"):
        read_texts("wikitext", 5)

    def unknown(*args, **kwargs):
        raise ValueError("BuilderConfig 'nope' not found")

    monkeypatch.setattr(datasets, "load_dataset", unknown)
    with pytest.raises(CorpusError, match="cannot be loaded") as info:
        read_texts(Corpus("wikitext", name="nope"), 5)
    assert not isinstance(info.value, CorpusUnavailableError)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: iter([{"text": "a"}, {"text": " "}, {"text": "b"}]))
    assert read_texts("some/dataset", 5) == ["a", "b"]
