"""Dataset loaders: the four formats, record-by-record validation, the toy-world builders."""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

import pytest

from interp_edit.data import builtin_datasets, check_tokens, load_dataset, parse_records
from interp_edit.data.toyworld import toy_counterfact, toy_mcq, toy_mquake, toy_zsre
from interp_edit.errors import DatasetError


@pytest.fixture(scope="module")
def toy_records(toy_world):
    return {"counterfact": toy_counterfact(toy_world)[:20], "zsre": toy_zsre(toy_world)[:20],
            "mquake": toy_mquake(toy_world)[:20], "mcq": toy_mcq(toy_world)[:20]}


def write(tmp_path: Path, records, name: str = "data.json") -> Path:
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return path


def test_builtin_datasets_load_and_pass_the_token_check(toy_model, toy_world):
    sizes = {}
    for name, spec in builtin_datasets().items():
        dataset = load_dataset(name, world=toy_world, tokenizer=toy_model.tokenizer)
        assert dataset.format == spec.format and dataset.n_skipped == 0
        sizes[name] = len(dataset)
    assert sizes["toyworld-mquake"] == len(toy_world.people) == sizes["toyworld-mcq"]
    assert sizes["toyworld-zsre"] == 4 * len(toy_world.people)


@pytest.mark.parametrize("fmt", ["counterfact", "zsre", "mquake", "mcq"])
def test_files_in_each_format_round_trip_with_the_format_sniffed(tmp_path, toy_records, fmt):
    path = write(tmp_path, toy_records[fmt], "data.jsonl" if fmt == "zsre" else "data.json")
    dataset = load_dataset(path)
    assert dataset.format == fmt and len(dataset) == 20
    assert dataset[0].rewrites()[0].target_new


@pytest.mark.parametrize("name", sorted(builtin_datasets()))
def test_a_file_of_every_builtin_format_is_sniffed_as_that_format(tmp_path, toy_world, name):
    """Every format the loader parses is told from its first record (a commonsense file was
    sniffed as CounterFact and refused for fields it does not have)."""
    spec = builtin_datasets()[name]
    dataset = load_dataset(write(tmp_path, spec.build(toy_world, 0)[:5]))
    assert dataset.format == spec.format and len(dataset) == 5


@pytest.mark.parametrize("spec", ["hf:", "hf: ", "hf::train"])
def test_a_hub_spec_without_a_repository_is_named(spec):
    with pytest.raises(DatasetError, match="no repository named; give hf:owner/name"):
        load_dataset(spec)


def test_zsre_written_as_rome_does_takes_the_first_answer_as_the_new_target(tmp_path, toy_records):
    """ROME / MEMIT / AlphaEdit (dsets/zsre.py) write answers[0] and name no replaced answer;
    EasyEdit writes alt over answers[0]. The file's alt is not read the first way."""
    records = copy.deepcopy(toy_records["zsre"])
    path = write(tmp_path, records)
    easyedit, rome_like = load_dataset(path), load_dataset(path, zsre_target="answer")
    for record, a, b in zip(records, easyedit, rome_like, strict=True):
        assert (a.rewrite.target_new, a.rewrite.target_true) == (record["alt"], record["answers"][0])
        assert (b.rewrite.target_new, b.rewrite.target_true) == (record["answers"][0], None)
        assert b.rewrite.text == record["src"] and b.case_id == a.case_id
    assert easyedit.zsre_target == "alt" and rome_like.zsre_target == "answer" and "zsre_target='answer'" in repr(rome_like)
    for record in records:
        record.pop("alt")
        record["answers"] = [record["answers"][0]]
    assert len(load_dataset(write(tmp_path, records, "no_alt.json"), zsre_target="answer")) == len(records)
    assert load_dataset(path, zsre_target="answer", tokenizer=None).zsre_target == "answer"


@pytest.mark.parametrize("value", ["answers", None, 1, "ALT"])
def test_a_bad_zsre_target_is_named_before_anything_is_read(value):
    with pytest.raises(DatasetError, match="zsre_target must be one of"):
        load_dataset("no-such-file.json", zsre_target=value)


def test_the_token_check_keeps_the_zsre_convention(toy_model):
    data = load_dataset("toyworld-zsre", zsre_target="answer", tokenizer=toy_model.tokenizer)
    assert data.zsre_target == "answer" and data[0].rewrite.target_true is None


def test_mquake_toy_edits_change_an_intermediate_hop(toy_world):
    dataset = load_dataset("toyworld-mquake", world=toy_world)
    for case in dataset:
        assert case.rewrite.prompt == "{} was born in"
        assert case.probe.new_answer != case.probe.answer
        assert 2 <= len(case.probe.questions) <= 3


def test_unknown_name_lists_the_available_datasets():
    with pytest.raises(DatasetError, match="toyworld-counterfact.*toyworld-zsre|toyworld-mcq"):
        load_dataset("counterfact-typo")


BAD = [
    ("counterfact", lambda r: r["requested_rewrite"].pop("subject"), "requested_rewrite.subject", "missing"),
    ("counterfact", lambda r: r.update(paraphrase_prompts=[]), "paraphrase_prompts", "empty list"),
    ("counterfact", lambda r: r.update(paraphrase_prompts="one string"), "paraphrase_prompts", "list of strings"),
    ("counterfact", lambda r: r["requested_rewrite"].update(target_new={"str": 5}), "requested_rewrite.target_new", "expected a string"),
    ("counterfact", lambda r: r["requested_rewrite"].update(prompt="no slot"), "requested_rewrite.prompt", "exactly one"),
    # a stray template field failed at .text (KeyError), after the model loaded and the baseline ran
    ("counterfact", lambda r: r["requested_rewrite"].update(prompt="{} lives in {city}"), "requested_rewrite.prompt",
     "a brace besides"),
    ("zsre", lambda r: r.update(src=r["src"] + " {}"), "src", "exactly one"),
    ("zsre", lambda r: r.update(src=r["src"] + " {x}"), "src", "a brace besides"),
    ("zsre", lambda r: r.update(rephrase=""), "rephrase", "empty string"),
    ("zsre", lambda r: r.update(answers=[]), "answers", "empty list"),
    ("zsre", lambda r: r.update(subject="Nobody"), "subject", "does not occur"),
    # refused only when the edit was built, after the model loaded and the baseline ran
    ("zsre", lambda r: r.update(alt=" " + r["answers"][0].strip()), "alt", "equals answers[0]"),
    ("mquake", lambda r: r.update(requested_rewrite=[]), "requested_rewrite", "non-empty list"),
    ("mquake", lambda r: r.update(questions=[]), "questions", "empty list"),
    ("mcq", lambda r: r["questions"][1].update(kind="recall"), "questions[1].kind", "not one of"),
    ("mcq", lambda r: r["questions"][0].update(answer=7), "questions[0].answer", "option index"),
]


@pytest.mark.parametrize(("fmt", "corrupt", "field", "problem"), BAD, ids=[f"{b[0]}-{b[2]}-{b[3]}" for b in BAD])
def test_a_bad_record_names_file_index_and_field(tmp_path, toy_records, fmt, corrupt, field, problem):
    records = copy.deepcopy(toy_records[fmt][:5])
    corrupt(records[3])
    path = write(tmp_path, records)
    with pytest.raises(DatasetError) as err:
        load_dataset(path, format=fmt)
    message = str(err.value)
    assert str(path) in message and "record 3" in message and repr(field) in message and problem in message
    lenient = load_dataset(path, format=fmt, strict=False)
    assert len(lenient) == 4 and lenient.n_skipped == 1 and "record 3" in lenient.skipped[0]


def test_duplicate_case_ids(tmp_path, toy_records):
    records = copy.deepcopy(toy_records["counterfact"][:4])
    records[2]["case_id"] = records[0]["case_id"]
    path = write(tmp_path, records)
    with pytest.raises(DatasetError, match=r"record 2: field 'case_id': duplicate case id .*first at record 0"):
        load_dataset(path)
    assert len(load_dataset(path, strict=False)) == 3


def test_not_a_list_and_not_json(tmp_path):
    (tmp_path / "obj.json").write_text('{"a": 1}')
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(DatasetError, match="expected a JSON list"):
        load_dataset(tmp_path / "obj.json")
    with pytest.raises(DatasetError, match="not JSON"):
        load_dataset(tmp_path / "bad.json")


def test_targets_that_tokenise_to_nothing(toy_records):
    class DropsUnknownWords:
        def encode(self, text, add_special_tokens=False):
            return [1 for w in text.split() if w != "Zzyzx"]

    records = copy.deepcopy(toy_records["counterfact"][:3])
    records[1]["requested_rewrite"]["target_new"]["str"] = "Zzyzx"
    dataset = parse_records(records, "counterfact", "mem.json")
    with pytest.raises(DatasetError, match=r"mem.json: record 1 .*'requested_rewrite.target_new': 'Zzyzx' tokenises to nothing"):
        check_tokens(dataset, DropsUnknownWords())
    kept = check_tokens(dataset, DropsUnknownWords(), strict=False)
    assert len(kept) == 2 and kept.n_skipped == 1


def test_mcq_labels_must_be_one_token(toy_model, toy_records):
    records = copy.deepcopy(toy_records["mcq"][:2])
    records[0]["questions"][0]["labels"] = ["Answer", *records[0]["questions"][0]["labels"][1:]]
    with pytest.raises(DatasetError, match="questions\\[0\\].labels\\[0\\]'.*not one"):
        check_tokens(parse_records(records, "mcq", "m.json"), toy_model.tokenizer)


def test_the_data_layer_does_not_import_the_editing_or_evaluation_layers():
    folder = Path(__file__).parents[1] / "interp_edit" / "data"
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n and n.startswith(("interp_edit.editing", "interp_edit.evaluation")) for n in names), path
