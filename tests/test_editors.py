"""The editors on the toy world: ROME's closed form, quality floors of ROME / MEMIT /
AlphaEdit / fine-tuning, transactional failure, and bad input naming the request and field."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch

from interp_edit.adapter import get_parameter, model_fingerprint
from interp_edit.editing import (
    AlphaEditor,
    EditRequest,
    FTConfig,
    ROMEConfig,
    edit,
    finetune,
    get_editor,
    memit,
    prepare_requests,
    rome,
)
from interp_edit.editing.targets import compute_keys, optimise_targets
from interp_edit.errors import EditConfigError, EditOptimizationError, EditRequestError
from interp_edit.evaluation.counterfact import counterfact_scores, mean_scores

# the modules themselves (the package re-exports functions of the same names)
memit_module = importlib.import_module("interp_edit.editing.spread")  # the layer-spreading loop MEMIT runs
targets_module = importlib.import_module("interp_edit.editing.targets")


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(model, state):
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


def test_rome_maps_the_averaged_key_exactly_to_v_star(toy_model, person_records):
    record = person_records[0]
    cfg = ROMEConfig.for_model(toy_model)
    result = rome(toy_model, [record])
    treq = prepare_requests(toy_model, [record], model_fingerprint(toy_model))
    prefixes = tuple(result.info["prefixes"])
    key = compute_keys(toy_model, treq, cfg.layer, prefixes)[0]  # on the unedited model
    v_star = optimise_targets(toy_model, treq, cfg.layer, prefixes, cfg.target_config()).target[0]
    with result.applied(toy_model):
        mlp = toy_model.blocks[cfg.layer].mlp
        mapped = key @ mlp.W_out + mlp.b_out
    assert (mapped - v_star).abs().max() < 1e-4
    assert (key @ toy_model.blocks[cfg.layer].mlp.W_out + toy_model.blocks[cfg.layer].mlp.b_out - v_star).abs().max() > 1e-2


@pytest.mark.slow  # a quality number on the toy world (the README says which tests are slow)
def test_rome_single_edits_meet_the_quality_floors_and_undo_bitwise(toy_model, person_records):
    records = person_records[:50]
    before = snapshot(toy_model)
    unedited = mean_scores(counterfact_scores(toy_model, records))
    rows = []
    for record in records:
        with rome(toy_model, [record]).applied(toy_model):
            rows += counterfact_scores(toy_model, [record])
    scores = mean_scores(rows)
    assert scores["efficacy"] >= 0.95
    assert scores["paraphrase"] >= 0.80
    assert scores["neighborhood"] >= 0.90 * unedited["neighborhood"]
    assert_same(toy_model, before)


@pytest.mark.slow  # a quality number on the toy world (the README says which tests are slow)
def test_memit_batch_of_100_edits(toy_model, person_records):
    records = person_records[100:200]
    result = memit(toy_model, records)
    assert {r["rank"] for r in result.summary()} == {100}
    with result.applied(toy_model):
        scores = mean_scores(counterfact_scores(toy_model, records))
    # measured with the toy preset: 0.91 / 0.89 / 0.91 (one batch on a 6-layer, d_mlp 512 model)
    assert scores["efficacy"] >= 0.85
    assert scores["paraphrase"] >= 0.80
    assert scores["neighborhood"] >= 0.85


def _bare_keys(model, records, layer: int) -> torch.Tensor:
    """The MLP hidden activation at each record's subject's last token (bare prompt), read
    with run_with_cache and the tokenizer's offsets (no toolkit code)."""
    keys = []
    for r in records:
        text = r.prompt.format(r.subject)
        lo = r.prompt.index("{}")
        enc = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        last = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < lo + len(r.subject) and b > lo][-1] + 1
        _, cache = model.run_with_cache(model.to_tokens(text), names_filter=f"blocks.{layer}.mlp.hook_post")
        keys.append(cache[f"blocks.{layer}.mlp.hook_post"][0, last].double())
    return torch.stack(keys)


def test_alphaedit_sequential_batches_keep_earlier_edits(toy_model, person_records):
    records = person_records[200:260]
    batches = [records[start : start + 20] for start in range(0, len(records), 20)]
    editor = AlphaEditor(toy_model)
    applied = []
    try:
        for batch in batches:
            applied.append(editor(toy_model, batch).apply(toy_model))
        assert editor.n_edited == 60 and applied[-1].info["edits_before"] == 40
        scores = mean_scores(counterfact_scores(toy_model, records))
        first = mean_scores(counterfact_scores(toy_model, batches[0]))  # the first batch, after the later ones
    finally:
        for e in reversed(applied):
            e.undo(toy_model)
    # measured with the toy preset: efficacy 0.92, paraphrase 0.90, neighbourhood 0.86
    assert scores["efficacy"] >= 0.85
    assert scores["paraphrase"] >= 0.80
    assert scores["neighborhood"] >= 0.80
    # measured: the first batch alone 0.90 after two later batches (0.80 when each batch is
    # made by a fresh editor that forgets the earlier keys)
    assert first["efficacy"] >= 0.85
    layer = editor.config.layers[0]  # its keys do not depend on any edit
    name = f"blocks.{layer}.mlp.W_out"
    later = sum(e.delta_matrix(name, toy_model).double() for e in applied[1:])
    own = _bare_keys(toy_model, batches[1], layer) @ applied[1].delta_matrix(name, toy_model).double()
    # how much the later batches move the first batch's keys, relative to what batch 2 writes
    # for its own: measured 0.44 (0.70 by editors that forget the earlier keys)
    assert (_bare_keys(toy_model, batches[0], layer) @ later).norm() / own.norm() < 0.55
    # every update lies in the projected space: P ΔW = ΔW (P: the null space of C)
    for e in applied:
        for name, delta in e.deltas.items():
            proj = editor.projections[int(name.split(".")[1])].double().cpu()
            left = delta.left.double()
            assert ((proj @ left - left).norm() / left.norm()).item() < 1e-5
            assert torch.allclose(proj @ proj, proj, atol=1e-8)  # a projection


def test_finetune_respects_its_linf_constraint_and_edits(toy_model, person_records):
    records = person_records[300:305]
    cfg = FTConfig.for_model(toy_model, steps=40)
    result = finetune(toy_model, records, cfg)
    delta = result.deltas[f"blocks.{cfg.layer}.mlp.W_out"]
    assert delta.values.abs().max() <= cfg.norm_constraint + 1e-7
    with result.applied(toy_model):
        scores = mean_scores(counterfact_scores(toy_model, records))
    assert scores["efficacy"] >= 0.6


def test_multi_token_targets_are_teacher_forced(toy_model, person_records):
    from interp_edit.evaluation.logprobs import continuation_logprobs

    record = person_records[1]
    target = person_records[7].subject  # a person's name: several tokens
    request = EditRequest(record.prompt, record.subject, target)
    n_tokens = len(prepare_requests(toy_model, [request], model_fingerprint(toy_model))[0].target_ids)
    assert n_tokens >= 2
    prompt = record.prompt.format(record.subject)
    first = toy_model.tokenizer.decode(toy_model.tokenizer.encode(" " + target, add_special_tokens=False)[:1])
    rest = target[len(first.strip()):]  # the target's later tokens, scored after its first token

    def scores():
        whole, _ = continuation_logprobs(toy_model, [prompt], [target])
        later, _ = continuation_logprobs(toy_model, [prompt + first], [rest])
        return whole.item(), later.item()

    before = scores()
    with rome(toy_model, [request]).applied(toy_model):
        after = scores()
    assert after[0] > before[0] + 5  # the whole target, teacher-forced
    assert after[1] > before[1]  # its later tokens too, not only the first


def test_registry_and_one_call_api(toy_model, person_records):
    record = person_records[2]
    assert get_editor("rome").config_class is ROMEConfig
    with pytest.raises(EditConfigError, match="unknown editing method 'nope'.*alphaedit"):
        get_editor("nope")
    before = snapshot(toy_model)
    direct = rome(toy_model, [record], steps=3)
    via = edit(toy_model, [record], "rome", steps=3)
    assert torch.equal(direct.deltas[next(iter(direct.deltas))].right, via.deltas[next(iter(via.deltas))].right)
    assert_same(toy_model, before)
    w_out = get_parameter(toy_model, "blocks.0.mlp.W_out").detach().clone()
    applied = edit(toy_model, [record], "rome", steps=3, apply=True)
    try:
        assert not torch.equal(get_parameter(toy_model, "blocks.0.mlp.W_out"), w_out)
    finally:
        applied.undo(toy_model)
    assert_same(toy_model, before)


def test_a_failure_inside_memit_leaves_the_model_unchanged(toy_model, person_records, monkeypatch):
    before = snapshot(toy_model)
    calls = {"n": 0}
    real = memit_module.values_at_edit_tokens

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # after layer 0's update was written into the weights
            raise RuntimeError("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(memit_module, "values_at_edit_tokens", failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        memit(toy_model, person_records[:4], steps=2)
    assert calls["n"] == 2
    assert_same(toy_model, before)


def test_nan_in_the_optimisation_stops_and_names_the_request(toy_model, person_records, monkeypatch):
    before = snapshot(toy_model)
    real = targets_module.unembed
    monkeypatch.setattr(targets_module, "unembed", lambda model, x: real(model, x) * float("nan"))
    with pytest.raises(EditOptimizationError, match="request 0 .*non-finite"):
        rome(toy_model, [person_records[3]])
    assert_same(toy_model, before)


@pytest.mark.parametrize(
    ("request_fields", "match"),
    [
        (dict(prompt="Talvik Corlo was born in", subject="Nobody Here"), r"request 1: field 'subject'.*Nobody Here"),
        (dict(prompt="{} was born in {}"), r"request 1: field 'prompt'.*exactly one '\{\}'"),
        (dict(target_new=" "), r"request 1: field 'target_new' is empty"),
        (dict(target_new="SAME", target_true="SAME"), r"request 1: field 'target_new' equals target_true"),
    ],
)
def test_bad_requests_name_the_index_and_field(toy_model, person_records, request_fields, match):
    good = person_records[0]
    bad = dataclasses.replace(EditRequest(good.prompt, good.subject, good.target_new, good.target_true), **request_fields)
    before = snapshot(toy_model)
    with pytest.raises(EditRequestError, match=match):
        rome(toy_model, [good, bad])
    assert_same(toy_model, before)


def test_bad_configs_and_mixed_models(toy_model, tiny_model, person_records):
    with pytest.raises(EditConfigError, match="field 'layer'.*out of range"):
        rome(toy_model, [person_records[0]], layer=6)
    with pytest.raises(EditConfigError, match="field 'layers'"):
        memit(toy_model, [person_records[0]], layers=(1, 9))
    with pytest.raises(EditConfigError, match="no field"):
        rome(toy_model, [person_records[0]], layr=1)
    with pytest.raises(EditRequestError, match="no edit requests"):
        rome(toy_model, [])
    other = tiny_model  # another model with the same tokenizer
    foreign = prepare_requests(other, [person_records[0]], model_fingerprint(other))
    with pytest.raises(EditRequestError, match="request 1: tokenised for another model"):
        rome(toy_model, [person_records[1], *foreign])
    editor = AlphaEditor(toy_model)
    with pytest.raises(EditRequestError, match="another model"):
        editor(other, [person_records[0]])


def test_edit_tokens_locate_the_chosen_span_in_every_context(toy_model):
    from interp_edit.editing.requests import EditRequest, prepare_requests, tokenize_in_context
    from interp_edit.errors import EditRequestError

    fp = toy_model.cfg.model_name
    request = EditRequest("{} was born in", "Talvik Corlo", "Rudna", verb="was born")
    words = {}
    for token in ("subject_first", "subject_last", "verb_first", "verb_last", "prompt_last"):
        (treq,) = prepare_requests(toy_model, [request], fp, edit_token=token)
        words[token] = toy_model.tokenizer.decode([treq.prompt_ids[treq.edit_position]]).strip()
        for ids, pos in tokenize_in_context(toy_model, treq, ["Talvik Corlo was born .", "x"]):
            assert ids[pos] == treq.prompt_ids[treq.edit_position]
            assert len(ids) - pos == len(treq.prompt_ids) - treq.edit_position
    assert words["verb_first"] == "was" and words["verb_last"] == "born" and words["prompt_last"] == "in"
    assert words["subject_last"] != words["subject_first"]
    with pytest.raises(EditRequestError, match="request 0: edit token 'object_last' needs the request's field 'object'"):
        prepare_requests(toy_model, [request], fp, edit_token="object_last")
    with pytest.raises(EditRequestError, match="field 'verb': span 'flew to'"):
        prepare_requests(toy_model, [EditRequest("{} was born in", "Talvik Corlo", "Rudna", verb="flew to")], fp)
    with pytest.raises(EditRequestError, match="unknown edit token"):
        prepare_requests(toy_model, [request], fp, edit_token="verb_middle")


def test_a_span_inside_the_subject_is_not_the_edit_token(toy_model):
    from interp_edit.editing.requests import EditRequest, prepare_requests, tokenize_in_context
    from interp_edit.errors import EditRequestError

    fp = toy_model.cfg.model_name
    # "in" occurs inside "Halsin" first; the verb's "in" is the prompt's last word
    request = EditRequest("{} was born in", "Halsin Corlo", "Rudna", verb="in")
    (treq,) = prepare_requests(toy_model, [request], fp, edit_token="verb_last")
    assert treq.edit_position == len(treq.prompt_ids) - 1
    for ids, pos in tokenize_in_context(toy_model, treq, ["in the morning .", ""]):
        assert pos == len(ids) - 1
    with pytest.raises(EditRequestError, match="request 0: field 'verb': span 'alsi' occurs .* only inside the subject"):
        prepare_requests(toy_model, [EditRequest("{} was born in", "Halsin Corlo", "Rudna", verb="alsi")], fp,
                         edit_token="verb_last")


def test_a_singular_solve_is_a_named_error():
    from interp_edit.editing.closed_form import solve
    from interp_edit.errors import EditOptimizationError

    with pytest.raises(EditOptimizationError, match="the MEMIT layer 0 solve is singular.*mom2_update_weight"):
        solve(torch.zeros(3, 3), torch.ones(3, 1), "MEMIT layer 0")
    assert torch.allclose(solve(2 * torch.eye(3), torch.ones(3, 1), "x"), torch.full((3, 1), 0.5, dtype=torch.float64))
