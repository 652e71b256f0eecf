"""A checkpoint carries its toy world: every consumer uses the loaded model's world, or refuses
data of another world naming both (issue 20)."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from model_state import assert_unchanged, snapshot

from interp_edit.adapter import build_hooked_transformer, load_model
from interp_edit.adapter.bridge import hooked_available
from interp_edit.cli import main
from interp_edit.data import load_dataset
from interp_edit.errors import CheckpointError, DatasetError
from interp_edit.toyworld import WorldSpec, attach_world, build_tokenizer, build_world, world_of, world_spec_of

OTHER = WorldSpec(seed=3, n_people=30)


@pytest.fixture(scope="module")
def other_world_model():
    """A tiny untrained model of another world (its own tokenizer), as a loaded checkpoint of
    that world would be."""
    world = OTHER.build()
    tokenizer = build_tokenizer(world)
    torch.manual_seed(0)
    if hooked_available():
        cfg = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=64, d_vocab=len(tokenizer),
                   act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard",
                   default_prepend_bos=True, model_name="toyworld")
        model = build_hooked_transformer(cfg, tokenizer)
    else:  # TransformerLens 4: the same shape as a Hugging Face GPT-2 on the bridge
        import transformers

        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_inner=64, n_positions=64,
                                                                  vocab_size=len(tokenizer)))
        model = load_model("toyworld", hf_model=hf, tokenizer=tokenizer, backend="bridge")
    model.eval()
    attach_world(model, OTHER)
    return model


def _people(world) -> set[str]:
    return {p.name for p in world.people}


def test_the_shipped_model_carries_its_world(toy_model, toy_world):
    assert world_spec_of(toy_model) == WorldSpec(0, 400)
    assert world_of(toy_model) == toy_world


def test_a_model_without_a_world_says_so(tiny_model):
    assert world_spec_of(tiny_model) is None
    with pytest.raises(CheckpointError, match="carries no toy world"):
        world_of(tiny_model)


def test_builtin_datasets_are_built_from_the_model_s_world(other_world_model, toy_world):
    people = _people(OTHER.build())
    assert people.isdisjoint(_people(toy_world)) or len(people & _people(toy_world)) < 3
    for name in ("toyworld-counterfact", "toyworld-zsre", "toyworld-mquake", "toyworld-mcq"):
        data = load_dataset(name, model=other_world_model)
        assert data.world == OTHER
        subjects = {r.subject for case in data for r in case.rewrites()}
        assert {s for s in subjects if " " in s} <= people, name
    assert load_dataset("toyworld-counterfact").world == WorldSpec(0, 400)


def test_a_dataset_of_another_world_is_refused_naming_both(other_world_model, toy_world):
    with pytest.raises(DatasetError, match=r"seed 0, 400 people.*seed 3, 30 people"):
        load_dataset("toyworld-counterfact", model=other_world_model, world=toy_world)
    from interp_edit.evaluation import run_experiment

    shipped = load_dataset("toyworld-counterfact")
    before = snapshot(other_world_model)
    with pytest.raises(DatasetError, match=r"'toyworld-counterfact' was built from the toy world \(seed 0, 400 people\).*"
                                           r"trained on the toy world \(seed 3, 30 people\)"):
        run_experiment(other_world_model, shipped, "rome", n=1, fluency=False, progress=False)
    assert_unchanged(other_world_model, before)


def test_default_statistics_corpus_is_the_model_s_world(other_world_model, toy_model):
    from interp_edit.statistics.collect import default_corpus

    other, shipped = _people(OTHER.build()), _people(world_of(toy_model))
    texts = default_corpus(other_world_model, 200)
    named_other = sum(any(p in t for p in other) for t in texts)
    named_shipped_only = sum(any(p in t for p in shipped - other) for t in texts)
    assert named_other > 20 and named_shipped_only == 0
    assert default_corpus(toy_model, 200) != texts


def test_toy_train_refuses_a_bad_mlp_width_before_training(tmp_path, capsys):
    assert main(["toy", "train", "--out", str(tmp_path / "ckpt"), "--steps", "2", "--d-mlp", "0", "--quiet"]) == 2
    assert "argument --d-mlp: expected an integer >= 1, got '0'" in capsys.readouterr().err
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.skipif(not hooked_available(), reason="the trainer builds a HookedTransformer (TransformerLens 3.x)")
def test_toy_train_flags_write_the_world_and_ordinary_permissions(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        out = tmp_path / "ckpt"
        assert main(["toy", "train", "--out", str(out), "--steps", "2", "--seed", "5", "--world-seed", "7",
                     "--n-people", "40", "--threads", "1", "--d-mlp", "96", "--quiet"]) == 0
    finally:
        os.umask(old)
    meta = json.loads((out / "config.json").read_text())
    assert meta["world"] == {"seed": 7, "n_people": 40}
    assert meta["model"]["d_mlp"] == 96 and meta["training"]["model"]["d_mlp"] == 96
    assert meta["training"]["seed"] == 5 and meta["training"]["steps"] == 2 and meta["training"]["threads"] == 1
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name
    model = load_model(str(out))
    assert world_of(model) == build_world(7, 40)
    assert model.cfg.d_mlp == 96 and model.blocks[0].mlp.W_out.shape == (96, model.cfg.d_model)
    capsys.readouterr()
    assert main(["toy", "eval", "--checkpoint", str(out)]) == 0
    assert "fact_acc=" in capsys.readouterr().out
