"""The runner's checks of the data before any work: a results folder is resumed only with the
same content (a file of the same name and case ids but other targets is refused, naming the
content hash; an older file that records no hash still resumes); MQuAKE cases sharing one
rewrite in a batch are edited once, while two targets for one prompt are refused before any
evaluation or file, naming the cases; a prompt longer than the context is refused naming the
case and the field, before any forward; and a slice of a dataset runs as the dataset does."""

from __future__ import annotations

import copy
import importlib
import json

import pytest

from interp_edit.data import load_dataset
from interp_edit.editing import Edit
from interp_edit.errors import DatasetError, EditRequestError, ExperimentError, PromptTooLongError
from interp_edit.evaluation import run_experiment
from interp_edit.evaluation.cases import evaluate_cases

runner = importlib.import_module("interp_edit.evaluation.runner")
FAST = {"unrelated": 0, "fluency": False, "progress": False, "config": {"steps": 3}}

pytestmark = pytest.mark.usefixtures("one_thread")


def cf_record(case_id, subject="Talvik Corlo", new="Gemmel", true="Karsa", paraphrases=None, prompt="{} was born in"):
    return {"case_id": case_id,
            "requested_rewrite": {"prompt": prompt, "subject": subject, "target_new": {"str": new},
                                  "target_true": {"str": true}},
            "paraphrase_prompts": paraphrases or [f"As everyone knows, {subject} is a native of"],
            "neighborhood_prompts": ["Sevko Sevdel was born in"]}


V1 = [cf_record(0), cf_record(1, "Zellen Hulra", "Ulmora", "Tivel")]


def write(folder, records):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "counterfact.json").write_text(json.dumps(records))
    return folder / "counterfact.json"


class Stop(Exception):
    pass


def stop_after_first(batch):
    if batch == 0:
        raise Stop


def run_cut(model, path, out, monkeypatch):
    monkeypatch.setattr(runner, "_after_batch", stop_after_first)
    with pytest.raises(Stop):
        run_experiment(model, path, "ft", n=2, batch_size=1, out=out, **FAST)
    monkeypatch.setattr(runner, "_after_batch", lambda batch: None)


def test_resuming_with_other_content_of_the_same_name_and_ids_is_refused(toy_model, tmp_path, monkeypatch):
    v1 = write(tmp_path / "v1", V1)
    v2_records = copy.deepcopy(V1)
    for r in v2_records:  # a corrected release: the same file name and ids, other new targets
        r["requested_rewrite"]["target_new"] = {"str": "Briva"}
    v2 = write(tmp_path / "v2", v2_records)
    out = tmp_path / "out"
    run_cut(toy_model, v1, out, monkeypatch)
    before = (out / "results.jsonl").read_text()
    with pytest.raises(ExperimentError, match=r"other settings \(differing: \['cases_sha256'\]\)"):
        run_experiment(toy_model, v2, "ft", n=2, batch_size=1, out=out, **FAST)
    assert (out / "results.jsonl").read_text() == before  # nothing mixed into the file
    # the same content under another folder resumes (the hash is of the content, not the path)
    copy_ = write(tmp_path / "v1copy", V1)
    result = run_experiment(toy_model, copy_, "ft", n=2, batch_size=1, out=out, **FAST)
    assert sorted(i for e in result.batches for i in e["case_ids"]) == ["0", "1"]


def test_an_older_results_file_without_a_hash_still_resumes(toy_model, tmp_path, monkeypatch):
    v1 = write(tmp_path / "v1", V1)
    out = tmp_path / "out"
    run_cut(toy_model, v1, out, monkeypatch)
    lines = (out / "results.jsonl").read_text().splitlines()
    settings = json.loads(lines[0])
    assert "cases_sha256" in settings
    del settings["cases_sha256"]  # as a file of an earlier version
    (out / "results.jsonl").write_text("\n".join([json.dumps(settings), *lines[1:]]) + "\n")
    result = run_experiment(toy_model, v1, "ft", n=2, batch_size=1, out=out, **FAST)
    assert len(result.batches) == 2
    assert json.loads(lines[2])["rows"] == result.batches[0]["rows"]  # the first batch was not redone


MQUAKE_SHARED = [
    {"case_id": 0, "requested_rewrite": [{"prompt": "{} was born in", "subject": "Talvik Corlo", "target_new": {"str": "Pellin"},
                                          "target_true": {"str": "Karsa"}}],
     "questions": ["The capital of the homeland of Talvik Corlo is"], "answer": "Elvast", "new_answer": "Briva"},
    {"case_id": 1, "requested_rewrite": [{"prompt": "{} was born in", "subject": "Talvik Corlo", "target_new": {"str": "Pellin"},
                                          "target_true": {"str": "Karsa"}},
                                         {"prompt": "{} was born in", "subject": "Zellen Hulra", "target_new": {"str": "Ulmora"},
                                          "target_true": {"str": "Tivel"}}],
     "questions": ["The official language of the homeland of Zellen Hulra is"], "answer": "Dalvish", "new_answer": "Estrish"},
]


def test_mquake_cases_sharing_a_rewrite_in_a_batch_are_edited_once(toy_model, tmp_path):
    path = tmp_path / "mquake.json"
    path.write_text(json.dumps(MQUAKE_SHARED))
    out = tmp_path / "out"
    result = run_experiment(toy_model, load_dataset(path), "ft", n=2, batch_size=2, sequential=True, out=out, **FAST)
    assert len(result.batches) == 1 and sorted(result.batches[0]["case_ids"]) == ["0", "1"]
    saved = Edit.load(out / result.batches[0]["edit_file"])
    # the distinct rewrites of the two records, written out by hand
    assert sorted((r["subject"], r["target_new"]) for r in saved.requests) == [("Talvik Corlo", "Pellin"),
                                                                               ("Zellen Hulra", "Ulmora")]


def test_two_targets_for_one_prompt_in_a_batch_are_refused_before_any_work(toy_model, tmp_path, monkeypatch):
    records = copy.deepcopy(MQUAKE_SHARED)
    records[1]["requested_rewrite"][0]["target_new"] = {"str": "Gemmel"}  # Talvik Corlo -> Pellin and -> Gemmel
    path = tmp_path / "mquake.json"
    path.write_text(json.dumps(records))

    def no_forward(*args, **kwargs):
        raise AssertionError("computed before the check")

    monkeypatch.setattr(runner, "unrelated_metrics", no_forward)
    monkeypatch.setattr(runner, "evaluate_cases", no_forward)
    out = tmp_path / "out"
    with pytest.raises(EditRequestError, match=r"cases 0 and 1 \(batch 0\) conflict.*'Pellin' vs 'Gemmel'"):
        run_experiment(toy_model, load_dataset(path), "ft", n=2, batch_size=2, out=out, **FAST)
    assert not out.exists()
    # in batches of one the two rewrites are separate edits: accepted
    monkeypatch.undo()
    run_experiment(toy_model, load_dataset(path), "ft", n=2, batch_size=1, **FAST)


def long_prompt(tokenizer, n_tokens: int) -> str:
    """A prompt of exactly ``n_tokens`` tokens (without BOS), from whole words of the toy world."""
    words = ["and", "the", "city", "of"]
    text, i = "Talvik Corlo was born in", 0
    while len(tokenizer.encode(text, add_special_tokens=False)) < n_tokens:
        text = f"{words[i % len(words)]} {text}"
        i += 1
    assert len(tokenizer.encode(text, add_special_tokens=False)) == n_tokens
    return text


def test_a_prompt_beyond_the_context_is_named_before_any_forward(toy_model, tmp_path, monkeypatch):
    tok, n_ctx = toy_model.tokenizer, toy_model.cfg.n_ctx
    # the reference: BOS + prompt + the target's tokens but its last, counted here from the whole text
    fits = long_prompt(tok, n_ctx - 1)   # BOS + n_ctx-1 = n_ctx; the one-token targets add nothing
    over = long_prompt(tok, n_ctx)
    assert len(tok.encode(f"{fits} Gemmel", add_special_tokens=False)) == n_ctx  # " Gemmel" is one token
    cases = list(load_dataset(write(tmp_path / "ok", [cf_record(0, paraphrases=[fits])])))
    assert len(evaluate_cases(toy_model, cases)) == 1
    bad = list(load_dataset(write(tmp_path / "bad", [cf_record(5, paraphrases=["As everyone knows, Talvik Corlo is a native of", over])])))
    calls = []
    handle = toy_model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(PromptTooLongError, match=rf"case 5: field 'paraphrase_prompts\[1\]'.*{n_ctx + 1} tokens"):
            evaluate_cases(toy_model, bad)
        with pytest.raises(PromptTooLongError, match=r"case 5: field 'paraphrase_prompts\[1\]'"):
            run_experiment(toy_model, tmp_path / "bad" / "counterfact.json", "ft", out=tmp_path / "out", **FAST)
        # one case edited, the other the drift probe: whichever holds the long rewrite prompt is named first
        records = [cf_record(0, "Zellen Hulra", "Ulmora", "Tivel"),
                   cf_record(1, prompt=over.replace("Talvik Corlo", "{}"))]
        path = write(tmp_path / "probe", records)
        roles = {runner.select_cases(load_dataset(path), 1, 1, seed)[0][0].case_id: seed for seed in range(8)}
        assert set(roles) == {"0", "1"}  # seeds where the long case is edited, and where it is the drift probe
        for seed in roles.values():
            with pytest.raises(PromptTooLongError, match=r"case 1: field 'requested_rewrite.prompt'"):
                run_experiment(toy_model, path, "ft", n=1, seed=seed, out=tmp_path / "out", **(FAST | {"unrelated": 1}))
    finally:
        handle.remove()
    assert calls == [] and not (tmp_path / "out").exists()


def test_a_slice_of_a_dataset_runs_as_the_dataset(toy_model, tmp_path):
    dataset = load_dataset(write(tmp_path / "d", V1 + [cf_record(2, "Sevko Sevdel", "Briva", "Pellin")]))
    part = dataset[:2]
    assert isinstance(part, tuple)
    sliced = run_experiment(toy_model, part, "ft", batch_size=2, **FAST)
    whole = run_experiment(toy_model, type(dataset)("d", "counterfact", part), "ft", batch_size=2, **FAST)
    assert sliced.rows == whole.rows and sliced.settings["cases_sha256"] == whole.settings["cases_sha256"]
    assert [r["case_id"] for r in run_experiment(toy_model, list(part), "ft", **FAST).rows] != []
    with pytest.raises(DatasetError, match=r"dataset\[1\]"):
        run_experiment(toy_model, [part[0], "not a case"], "ft", **FAST)
