"""The toy world's entry points, as a newcomer meets them: bad sizes and training settings are
named errors before anything is built or trained, ``evaluate_toyworld`` refuses another world's
facts, the demo's edit runs on a small world, and the docs and notebooks state what the code has."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from interp_edit.cli import main
from interp_edit.errors import DatasetError, InterpEditError, InvalidArgumentError
from interp_edit.toyworld import build_world, counterfact_records
from interp_edit.toyworld.templates import RELATIONS
from interp_edit.toyworld.training import ToyModelConfig, ToyTrainConfig
from interp_edit.toyworld.world import MAX_PEOPLE

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("n_people", [1, 0, -3, MAX_PEOPLE + 1, 2.5, True, "40"])
def test_build_world_names_a_bad_size(n_people):
    with pytest.raises(InvalidArgumentError, match=rf"n_people must be an integer from 2 to {MAX_PEOPLE}, got"):
        build_world(0, n_people=n_people)


@pytest.mark.parametrize(("field", "value"), [
    ("n_people", 1), ("n_people", MAX_PEOPLE + 1), ("steps", 0), ("batch_size", 0), ("threads", 0),
    ("warmup_steps", -1), ("lr", 0.0), ("lr", float("nan")), ("grad_clip", 0), ("weight_decay", -0.1),
    ("min_lr_ratio", float("inf")),
])
def test_a_bad_training_setting_is_named_when_the_config_is_made(field, value):
    """Before: steps=0 trained nothing and saved an untrained model; batch_size=0 and threads=0
    failed with range() / torch errors; n_people out of range only once training started."""
    with pytest.raises(InvalidArgumentError, match=rf"{field} must be"):
        ToyTrainConfig(**{field: value})


@pytest.mark.parametrize("field", ["n_layers", "d_model", "n_heads", "d_mlp", "n_ctx"])
def test_a_bad_model_size_is_named(field):
    with pytest.raises(InvalidArgumentError, match=rf"ToyModelConfig.{field} must be an integer >= 1, got 0"):
        ToyModelConfig(**{field: 0})


@pytest.mark.parametrize("n_people", ["1", str(MAX_PEOPLE + 1)])
def test_toy_train_refuses_a_world_size_before_making_the_folder(tmp_path, capsys, n_people):
    out = tmp_path / "ckpt"
    assert main(["toy", "train", "--out", str(out), "--steps", "2", "--n-people", n_people, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("interp-edit: error: argument --n-people:") and n_people in err and "Traceback" not in err
    assert not out.exists()


def test_evaluate_toyworld_refuses_another_world_before_any_forward(toy_model, monkeypatch):
    """Before: the shipped model scored on world 1's facts gave accuracies near chance, silently."""
    import interp_edit.toyworld.evaluation as evaluation

    def no_forward(*args, **kwargs):
        raise AssertionError("a forward ran")

    monkeypatch.setattr(evaluation, "last_token_logits", no_forward)
    with pytest.raises(DatasetError, match=r"given the toy world \(seed 1, 200 people\).*trained on the toy world "
                                           r"\(seed 0, 400 people\).*world_of\(model\)") as caught:
        evaluation.evaluate_toyworld(toy_model, build_world(1, 200))
    assert isinstance(caught.value, InterpEditError)


def test_the_demo_edit_runs_on_a_world_where_no_birth_city_is_shared(toy_model, toy_world, capsys):
    """A small world may have no two people born in one city: the demo's edit then shows no
    neighbour (before: IndexError on ``neighborhood_prompts[0]``)."""
    from interp_edit.demo import edit_one_fact

    records = [dataclasses.replace(r, neighborhood_prompts=()) if r.relation_id == "born_in" else r
               for r in counterfact_records(toy_world) if r.relation_id in ("born_in", "profession")][:40]
    edit_one_fact(toy_model, records, seed=0)
    out = capsys.readouterr().out
    assert "ROME edit" in out and "edit prompt" in out and "other fact" in out and "neighbour" not in out


def test_docs_count_the_templates_and_facts_the_world_has(toy_world):
    text = (ROOT / "docs" / "toyworld.md").read_text()
    n_train = {len(spec.train_templates) for spec in RELATIONS}
    n_held = {len(spec.paraphrase_templates) for spec in RELATIONS}
    assert n_train == {19} and n_held == {5}
    assert f"all {len(toy_world.facts):,} facts × {n_train.pop()} training templates" in text
    assert f"{n_held.pop()} (frame, phrasing) combinations per" in text


def test_what_the_notebooks_point_to_is_there():
    """The notebooks named README sections and numbers the README no longer has ("Threads", the
    gate-threshold sweep, the 16-fact localization numbers)."""
    readme = (ROOT / "README.md").read_text()
    headings = {line.lstrip("#").strip() for line in readme.splitlines() if line.startswith("#")}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        text = "\n".join("".join(cell["source"]) for cell in json.loads(path.read_text())["cells"])
        for section in re.findall(r'README "([^"]+)"', text):
            assert section in headings, f'{path.name}: README has no section "{section}"'
        assert not re.search(r"(the README for|README's numbers|\(README\))", text), path.name
        for page in re.findall(r"docs/[\w/-]+\.md", text):
            assert (ROOT / page).exists(), f"{path.name}: {page}"
    assert "**Threads**" in (ROOT / "docs" / "jupyter.md").read_text()
    assert "--thresholds" in (ROOT / "docs" / "edit-analysis.md").read_text()
    assert "16 CounterFact cases" in (ROOT / "docs" / "tracing.md").read_text()


def test_mcq_cases_of_a_two_person_world_leave_out_only_the_locality_question(toy_world):
    """In a two-person world no one is born outside a rewrite's two cities: the locality question
    has no neighbour (the builder raised an IndexError); the other three questions are there,
    and a full world's cases are unchanged (every one has a neighbour)."""
    from interp_edit.data.formats import Where, parse_mcq
    from interp_edit.data.toyworld import toy_mcq

    tiny = build_world(n_people=2)
    cases = toy_mcq(tiny)
    lacking = 0
    for case in cases:
        rewrite = case["requested_rewrite"]
        other = next(p.name for p in tiny.people if p.name != rewrite["subject"])
        has_neighbour = tiny.lookup(other, "born_in") not in (rewrite["target_new"]["str"], rewrite["target_true"]["str"])
        kinds = ["reliability", "generalisation", *(["locality"] if has_neighbour else []), "portability"]
        assert [q["kind"] for q in case["questions"]] == kinds
        lacking += not has_neighbour
    assert lacking  # the world size where it arises
    full = toy_mcq(toy_world)
    assert all(len(c["questions"]) == 4 for c in full)
    parse_mcq(cases[0], Where("toyworld-mcq", 0))  # a well-formed case
