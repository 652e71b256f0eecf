"""FiNE on the toy world: neuron selection, efficacy, few neurons touched, only the editable
layers changed, relation locality (next to ROME's), transactional failure and bad input; and
the relation-locality metric itself."""

from __future__ import annotations

import importlib

import pytest
import torch
from model_state import assert_unchanged, snapshot

from interp_edit.adapter import hook_name, model_fingerprint, parameter_layer
from interp_edit.editing import Edit, EditRequest, FiNEConfig, SparseRowDelta, fine, get_editor, prepare_requests, rome
from interp_edit.editing.methods.fine import select_neurons
from interp_edit.errors import EditConfigError, EditOptimizationError, EditRequestError, InvalidArgumentError
from interp_edit.evaluation.counterfact import counterfact_scores, mean_scores
from interp_edit.evaluation.locality import relation_locality, same_subject_prompts, unedited_answers

fine_module = importlib.import_module("interp_edit.editing.methods.fine")


@pytest.fixture(scope="module")
def records(person_records):
    return person_records[:20]


@pytest.fixture(scope="module")
def single_edits(toy_model, records):
    """One FiNE edit per record (independent), made on the unedited model."""
    return [fine(toy_model, [r]) for r in records]


def test_select_neurons_are_the_top_contributions_to_the_unedited_prediction(toy_model, records):
    request = prepare_requests(toy_model, [records[0]], model_fingerprint(toy_model))[0]
    layers = [0, 1, 2, 3]
    selection = select_neurons(toy_model, request, 5, layers)
    # recompute c = m_i (W_out[i] . W_U[:, t]) for every neuron from a plain cached forward
    tokens = torch.tensor([list(request.prompt_ids) + list(request.target_ids[:-1])])
    logits, cache = toy_model.run_with_cache(tokens)
    pos = len(request.prompt_ids) - 1
    t = int(logits[0, pos].argmax())
    assert t == int(selection.predicted[0])
    full = torch.stack([cache[hook_name("mlp_post", layer)][0, pos] * (toy_model.blocks[layer].mlp.W_out @ toy_model.W_U[:, t])
                        for layer in layers])
    for layer, neuron, score in zip(selection.layers[0].tolist(), selection.neurons[0].tolist(), selection.scores[0].tolist(),
                                    strict=True):
        assert abs(full[layer, neuron].item() - score) < 1e-4 * max(1.0, abs(score))
    assert selection.scores[0].min() >= full.flatten().topk(5).values.min() - 1e-5
    assert len(selection.union()) == 5


def test_fine_single_edits_succeed_touching_few_neurons_in_the_editable_layers(toy_model, records, single_edits):
    cfg = FiNEConfig.for_model(toy_model)
    editable = set(range(toy_model.cfg.n_layers - cfg.n_frozen))
    before = snapshot(toy_model)
    rows = []
    for record, result in zip(records, single_edits, strict=True):
        n_targets = len(prepare_requests(toy_model, [record], model_fingerprint(toy_model))[0].target_ids)
        touched = sum(len(d.rows) for d in result.deltas.values())
        assert touched == result.info["neurons_touched"][0] <= cfg.top_k * n_targets
        for name, delta in result.deltas.items():
            assert name.endswith(".mlp.W_out") and parameter_layer(name) in editable
            assert isinstance(delta, SparseRowDelta) and len(torch.unique(delta.rows)) == len(delta.rows)
        with result.applied(toy_model):
            rows += counterfact_scores(toy_model, [record])
    assert_unchanged(toy_model, before)
    scores = mean_scores(rows)
    # measured on these 20 edits with the toy preset: efficacy 1.00, paraphrase 1.00 (at most 20 steps)
    assert scores["efficacy"] >= 0.95
    assert scores["paraphrase"] >= 0.85
    assert max(r.info["steps"][0] for r in single_edits) <= cfg.steps


@pytest.mark.slow  # a quality number on the toy world (the README says which tests are slow)
def test_fine_keeps_the_subjects_other_relations_better_than_rome(toy_model, records, single_edits):
    before = snapshot(toy_model)
    reference = unedited_answers(toy_model, records)
    fine_loc = [relation_locality(toy_model, e, [r], reference=[ref]).fraction
                for e, r, ref in zip(single_edits, records, reference, strict=True)]
    rome_loc = [relation_locality(toy_model, rome(toy_model, [r]), [r], reference=[ref]).fraction
                for r, ref in zip(records[:10], reference[:10], strict=True)]
    assert_unchanged(toy_model, before)
    # measured (toy preset): FiNE 1.00 over these 20 edits, ROME 0.35 over 20 (0.37 over the first 10)
    assert sum(fine_loc) / len(fine_loc) >= 0.9
    assert sum(fine_loc[:10]) / 10 >= sum(rome_loc) / 10 + 0.3


def test_the_edit_is_exactly_the_sum_of_row_deltas_applied_or_hooked(toy_model, records, single_edits):
    result = single_edits[0]
    tokens = torch.tensor([prepare_requests(toy_model, [records[0]], model_fingerprint(toy_model))[0].prompt_ids])
    with result.hooked(toy_model):
        hooked = toy_model(tokens)
    with result.applied(toy_model):
        applied = toy_model(tokens)
    assert (hooked - applied).abs().max() < 1e-4
    assert (applied - toy_model(tokens)).abs().max() > 1e-2


def test_several_requests_are_edited_in_sequence_with_distinct_merged_rows(toy_model, person_records, tmp_path):
    same_relation = [r for r in person_records if r.relation_id == "profession"][:3]
    before = snapshot(toy_model)
    result = get_editor("fine").fn(toy_model, same_relation)
    assert_unchanged(toy_model, before)
    per_request = [set(map(tuple, n)) for n in result.info["neurons"]]
    union = set().union(*per_request)
    assert sum(len(d.rows) for d in result.deltas.values()) == len(union)
    for delta in result.deltas.values():
        assert len(torch.unique(delta.rows)) == len(delta.rows)
    loaded = Edit.load(result.save(tmp_path / "fine"))
    with loaded.applied(toy_model):
        scores = mean_scores(counterfact_scores(toy_model, same_relation))
    assert_unchanged(toy_model, before)
    assert scores["efficacy"] == 1.0


def test_a_failure_on_a_later_request_leaves_the_model_unchanged(toy_model, person_records, monkeypatch):
    real = fine_module._optimise
    calls = []

    def failing(model, request, *args, **kwargs):
        calls.append(request.index)
        if len(calls) == 2:
            raise EditOptimizationError("injected failure")
        return real(model, request, *args, **kwargs)

    monkeypatch.setattr(fine_module, "_optimise", failing)
    before = snapshot(toy_model)
    with pytest.raises(EditOptimizationError, match="injected"):
        fine(toy_model, person_records[:3])
    assert calls == [0, 1]
    assert_unchanged(toy_model, before)


@pytest.mark.parametrize(("overrides", "field"), [
    ({"top_k": "pool + 1"}, "top_k"),  # more neurons than the editable layers hold
    ({"top_k": "pool + 1", "n_frozen": 4}, "top_k"),
    ({"n_frozen": 6}, "n_frozen"),
    ({"n_frozen": -1}, "n_frozen"),
    ({"top_k": 0}, "top_k"),
    ({"lr": 0.0}, "lr"),
    ({"early_stop_prob": 1.0}, "early_stop_prob"),
    ({"kl_weight": float("nan")}, "kl_weight"),
    ({"steps": 0}, "steps"),
    ({"alpha": 1.0}, "alpha"),
])
def test_bad_config_names_the_field_and_leaves_the_model_unchanged(toy_model, records, overrides, field):
    if overrides.get("top_k") == "pool + 1":
        n_frozen = overrides.get("n_frozen", FiNEConfig.for_model(toy_model).n_frozen)
        overrides = {**overrides, "top_k": (toy_model.cfg.n_layers - n_frozen) * toy_model.cfg.d_mlp + 1}
        field = f"'top_k'.* hold only {overrides['top_k'] - 1} neurons"
    before = snapshot(toy_model)
    with pytest.raises(EditConfigError, match=field):
        fine(toy_model, [records[0]], **overrides)
    assert_unchanged(toy_model, before)


def test_bad_request_names_its_index_and_field(toy_model, records):
    before = snapshot(toy_model)
    bad = EditRequest("{} works as a", records[1].subject, "  ")
    with pytest.raises(EditRequestError, match=r"request 1: field 'target_new'"):
        fine(toy_model, [records[0], bad])
    assert_unchanged(toy_model, before)


def test_relation_locality_prompts_from_a_world_match_the_records(toy_model, toy_world, records):
    plain = [EditRequest(r.prompt, r.subject, r.target_new, r.target_true) for r in records[:5]]
    from_world = same_subject_prompts(plain, toy_world)
    assert from_world == [[text for text, _ in r.same_subject_prompts] for r in records[:5]]
    assert all(len(p) == 3 for p in from_world)  # four person relations, one edited
    assert same_subject_prompts([r.to_counterfact() for r in records[:5]]) == from_world  # public-format dicts
    with pytest.raises(EditRequestError, match="request 0"):
        same_subject_prompts(plain)
    with pytest.raises(EditRequestError, match="field 'prompt'"):
        same_subject_prompts([EditRequest("{} likes the", records[0].subject, "x")], toy_world)


def test_relation_locality_of_an_applied_edit_needs_the_unedited_answers(toy_model, records, single_edits):
    reference = unedited_answers(toy_model, records[:3])
    with pytest.raises(InvalidArgumentError, match="reference"):
        relation_locality(toy_model, None, records[:3])
    result = single_edits[0]
    with result.applied(toy_model):
        applied = relation_locality(toy_model, None, records[:1], reference=reference[:1])
        with pytest.raises(InvalidArgumentError, match="answers per request"):
            relation_locality(toy_model, None, records[:2], reference=reference[:1] + [[]])
    assert applied.kept == relation_locality(toy_model, result, records[:1]).kept
    unchanged = relation_locality(toy_model, None, records[:3], reference=reference)
    assert unchanged.fraction == unchanged.prompt_fraction == 1.0


def test_a_request_already_predicted_touches_no_neuron(toy_model, records):
    record = records[0]
    already = EditRequest(record.prompt, record.subject, record.target_true)  # the model predicts it already
    result = fine(toy_model, [already])
    assert result.info["steps"] == [0] and result.info["neurons_touched"] == [0]
    assert len(result.info["selected"][0]) == 5 and result.deltas == {}


def test_a_model_without_preset_gets_the_generic_settings(tiny_model, records):
    cfg = FiNEConfig.for_model(tiny_model)
    assert (cfg.n_frozen, cfg.top_k, cfg.steps) == (1, 5, 50)  # 3 layers: one frozen, the paper's k and steps
    before = snapshot(tiny_model)
    result = fine(tiny_model, [records[0]], steps=3)
    assert_unchanged(tiny_model, before)
    assert result.deltas and {parameter_layer(n) for n in result.deltas} <= {0, 1}
    assert result.info["steps"] == [3]
