"""Pre/post-edit attribution diffs and success-versus-failure contrast studies on the toy world:
the diff is exactly (scores with the edit) − (scores without), the model is bitwise unchanged
(also after an exception), steering edits work, undefined contrasts are reported, bad input
names what is wrong, and an interrupted study resumes to the same result."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch
from model_state import assert_unchanged, snapshot

from interp_edit.adapter import hook_counts, model_fingerprint
from interp_edit.analysis import attribution_diff, layer_attribution_scores, neuron_attribution
from interp_edit.analysis.scoring import encode_target
from interp_edit.editing import Edit, EditRequest, applied_edits, rome
from interp_edit.editing.hooks import AdditiveSteering
from interp_edit.editing.requests import as_request
from interp_edit.errors import EditApplicationError, EditRequestError, ExperimentError, InvalidArgumentError
from interp_edit.evaluation import contrast_study

analysis_contrast = importlib.import_module("interp_edit.analysis.contrast")
evaluation_contrast = importlib.import_module("interp_edit.evaluation.contrast")

STEER_LAYER = 4


def steer(model, requests, scale: float = 20.0, layer: int = STEER_LAYER) -> Edit:
    """A steering edit: add ``scale`` × the unit direction W_U[:, new] − W_U[:, old] to the
    attention output of ``layer`` (no weight change)."""
    req = as_request(requests[0])
    new = encode_target(model.tokenizer, req.target_new)[0]
    old = encode_target(model.tokenizer, req.target_true)[0]
    vector = (model.W_U[:, new] - model.W_U[:, old]).detach().clone()
    hook = AdditiveSteering(f"blocks.{layer}.hook_attn_out", vector / vector.norm(), scale)
    return Edit("steer", {}, model_fingerprint(model), requests=[req.as_dict()], hooks={"steer": hook})


@pytest.fixture(scope="module")
def rome_edit(toy_model, person_records):
    return rome(toy_model, [person_records[0]])


def test_diff_is_scores_with_the_edit_minus_scores_without(toy_model, person_records, rome_edit):
    record = person_records[0]
    text = record.prompt.format(record.subject)
    state = snapshot(toy_model)
    result = attribution_diff(toy_model, rome_edit, [text], neurons=True, neuron_method="first_order")
    assert_unchanged(toy_model, state, no_edits=True)
    before_new = layer_attribution_scores(toy_model, text, record.target_new)
    before_old = layer_attribution_scores(toy_model, text, record.target_true)
    ffn_before = neuron_attribution(toy_model, text, record.target_new, top_k=1, method="first_order").ffn_scores
    with rome_edit.applied(toy_model):
        after_new = layer_attribution_scores(toy_model, text, record.target_new)
        after_old = layer_attribution_scores(toy_model, text, record.target_true)
        ffn_after = neuron_attribution(toy_model, text, record.target_new, top_k=1, method="first_order").ffn_scores
    diff = result.prompt_diffs("edit")[0]
    assert torch.allclose(diff[..., 0], after_new - before_new, atol=1e-4)
    assert torch.allclose(diff[..., 1], -(after_old - before_old), atol=1e-4)
    assert diff.abs().max() > 0.5  # ROME changes the computation visibly (measured: up to ~3 nats per layer)
    # the neuron-level diff of the FFN neurons is the same difference, neuron by neuron
    n_ffn = ffn_before.numel()
    assert torch.allclose(result.neuron_diffs("edit")[:n_ffn, 0], (ffn_after - ffn_before).flatten(), atol=1e-4)
    top = result.top_neurons("edit", "promote_new", k=3)
    changes = result.neuron_diffs("edit")[:, 0].abs()
    assert abs(top[0]["change"]) == pytest.approx(float(changes.max()), abs=1e-6)
    # the edit makes o* more likely and o less likely on its prompt
    assert result.logprob_after["edit"][0, 0] > result.logprob_before["edit"][0, 0]
    assert result.logprob_after["edit"][0, 1] < result.logprob_before["edit"][0, 1]


def test_batched_scores_match_one_prompt_at_a_time(toy_model, person_records):
    record = person_records[1]
    prompts = [record.prompt.format(record.subject), *record.paraphrase_prompts[:2], *record.neighborhood_prompts[:2]]
    new = encode_target(toy_model.tokenizer, record.target_new)[0]
    old = encode_target(toy_model.tokenizer, record.target_true)[0]
    batched, _ = analysis_contrast.batched_layer_scores(toy_model, prompts, (new, old), batch_size=3)
    for i, prompt in enumerate(prompts):
        assert torch.allclose(batched[i, :, :, 0], layer_attribution_scores(toy_model, prompt, new), atol=1e-4)
        assert torch.allclose(batched[i, :, :, 1], layer_attribution_scores(toy_model, prompt, old), atol=1e-4)


def test_record_prompts_give_three_groups_and_neighbours_change_less(toy_model, person_records, rome_edit):
    result = attribution_diff(toy_model, rome_edit, person_records[0], neurons=False)
    assert result.groups == ("edit", "paraphrase", "neighborhood")
    edit_size = result.layer_diff("edit").abs().sum()
    # measured: the neighbourhood prompts' diffs are ~10x smaller than the edit prompt's
    assert result.layer_diff("neighborhood").abs().sum() < 0.5 * edit_size
    assert result.layer_diff("paraphrase").abs().sum() > 0.5 * edit_size
    with pytest.raises(InvalidArgumentError, match="neuron scores"):
        result.top_neurons("edit")


def test_model_unchanged_after_an_exception_inside(toy_model, person_records, rome_edit, monkeypatch):
    state = snapshot(toy_model)
    real = analysis_contrast.batched_layer_scores
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # while the edit is applied
            assert applied_edits(toy_model) == [rome_edit]
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(analysis_contrast, "batched_layer_scores", failing)
    with pytest.raises(RuntimeError, match="boom"):
        attribution_diff(toy_model, rome_edit, neurons=False)
    assert_unchanged(toy_model, state, no_edits=True)


def test_steering_edit_acts_from_its_layer_on(toy_model, person_records):
    record = person_records[0]
    state = snapshot(toy_model)
    result = attribution_diff(toy_model, steer(toy_model, [record]), record, neurons=("edit",), neuron_method="first_order")
    assert_unchanged(toy_model, state, no_edits=True)
    diff = result.layer_diff("edit")
    # earlier layers change only through the final norm's scale, which the frozen readout takes
    # from the run
    assert diff[STEER_LAYER, 0, 0] > 1.0
    assert diff[STEER_LAYER, 0, 1] > 0.1
    assert diff[:STEER_LAYER].abs().max() < 0.2 * diff[STEER_LAYER, 0, 0]


def test_fingerprint_mismatch_and_bad_targets(toy_model, rome_edit):
    state = snapshot(toy_model)
    other = dataclasses.replace(rome_edit, model_fingerprint="0" * 16)
    with pytest.raises(EditApplicationError, match="fingerprint"):
        attribution_diff(toy_model, other)
    with pytest.raises(InvalidArgumentError, match="request=3"):
        attribution_diff(toy_model, rome_edit, request=3)
    with pytest.raises(InvalidArgumentError, match="share"):
        attribution_diff(toy_model, rome_edit, targets=("new", "new"))
    with pytest.raises(InvalidArgumentError, match="unknown prompt group"):
        attribution_diff(toy_model, rome_edit, {"edits": ["x"]})
    assert_unchanged(toy_model, state, no_edits=True)


@pytest.fixture(scope="module")
def mixed(toy_model, person_records):
    """A steering study with both groups (measured: 7 successes, 5 failures of 12)."""
    state = snapshot(toy_model)
    result = contrast_study(toy_model, steer, person_records[:12], progress=False, n_boot=500)
    assert_unchanged(toy_model, state, no_edits=True)
    return result


def test_contrast_splits_by_efficacy_and_aggregates(mixed):
    assert mixed.defined and mixed.n_success >= 2 and mixed.n_failure >= 2
    assert mixed.n_success + mixed.n_failure == 12
    assert torch.equal(mixed.success, mixed.margins > 0)
    assert torch.allclose(mixed.success_mean, mixed.diffs[mixed.success].mean(0))
    assert torch.allclose(mixed.failure_mean, mixed.diffs[~mixed.success].mean(0))
    assert torch.allclose(mixed.leverage, mixed.success_mean - mixed.failure_mean)
    low, high = mixed.leverage_ci[..., 0], mixed.leverage_ci[..., 1]
    assert (low <= mixed.leverage + 1e-6).all() and (mixed.leverage <= high + 1e-6).all()
    assert (high - low).max() > 0
    # the same kind of steering vector for every edit: in both groups the steered attention layer
    # gains most promotion of o*
    assert int(mixed.success_mean[:, 0, 0].argmax()) == STEER_LAYER
    assert int(mixed.failure_mean[:, 0, 0].argmax()) == STEER_LAYER
    order = mixed.leverage[:, 0, 0].argsort(descending=True).tolist()
    assert mixed.top_layers("attn", "promote_new", k=2) == order[:2]
    assert mixed.top_layers(k=2, min_layer=5) == [5]
    with pytest.raises(InvalidArgumentError, match="module"):
        mixed.top_layers(module="mlp")
    assert len(mixed.table()) == mixed.n_layers * 4
    fig = mixed.plot("leverage")
    assert len(fig.data) == 4


def test_all_success_and_all_failure_pools_are_undefined(toy_model, person_records):
    state = snapshot(toy_model)
    strong = contrast_study(toy_model, lambda m, r: steer(m, r, 100.0), person_records[:4], progress=False)
    weak = contrast_study(toy_model, lambda m, r: steer(m, r, 0.0), person_records[:4], progress=False)
    assert_unchanged(toy_model, state, no_edits=True)
    assert (strong.n_success, strong.n_failure) == (4, 0) and "all 4 edits succeeded" in strong.undefined_reason
    assert (weak.n_success, weak.n_failure) == (0, 4) and "all 4 edits failed" in weak.undefined_reason
    for result in (strong, weak):
        assert not result.defined
        assert torch.isnan(result.leverage).all() and torch.isnan(result.leverage_ci).all()
        with pytest.raises(InvalidArgumentError, match="undefined"):
            result.top_layers()
        assert "undefined" in result.summary()
        result.plot("panels")
    assert not torch.isnan(strong.success_mean).any()


def test_contrast_bad_input(toy_model, person_records):
    state = snapshot(toy_model)
    with pytest.raises(EditRequestError, match="empty request pool"):
        contrast_study(toy_model, "rome", [], progress=False)
    no_true = [person_records[0], EditRequest("{} was born in", "Zorvik Amlo", "Karsa")]
    with pytest.raises(EditRequestError, match="request 1: field 'target_true'"):
        contrast_study(toy_model, "rome", no_true, progress=False)
    with pytest.raises(EditRequestError, match="request 0: no prompts for group"):
        contrast_study(toy_model, steer, [EditRequest("{} was born in", "Zorvik Amlo", "Karsa", "Gemmel")],
                       groups=("edit", "neighborhood"), progress=False)
    with pytest.raises(InvalidArgumentError, match="groups"):
        contrast_study(toy_model, "rome", person_records[:2], groups=("edits",), progress=False)
    assert_unchanged(toy_model, state, no_edits=True)


def test_interrupted_study_resumes_to_the_same_result(toy_model, person_records, mixed, tmp_path, monkeypatch):
    def interrupt(index):
        if index == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(evaluation_contrast, "_after_request", interrupt)
    with pytest.raises(KeyboardInterrupt):
        contrast_study(toy_model, steer, person_records[:12], progress=False, n_boot=500, out=tmp_path)
    lines = (tmp_path / evaluation_contrast.RESULTS_FILE).read_text().splitlines()
    assert len(lines) == 1 + 5
    with (tmp_path / evaluation_contrast.RESULTS_FILE).open("a") as handle:
        handle.write('{"type": "request", "ind')  # a line cut by the interruption
    monkeypatch.setattr(evaluation_contrast, "_after_request", lambda index: None)
    resumed = contrast_study(toy_model, steer, person_records[:12], progress=False, n_boot=500, out=tmp_path)
    assert torch.equal(resumed.diffs, mixed.diffs)
    assert torch.equal(resumed.success, mixed.success)
    assert torch.equal(resumed.leverage, mixed.leverage)
    assert torch.equal(resumed.leverage_ci, mixed.leverage_ci)
    assert len((tmp_path / evaluation_contrast.RESULTS_FILE).read_text().splitlines()) == 1 + 12
    with pytest.raises(ExperimentError, match="other settings"):
        contrast_study(toy_model, steer, person_records[:12], progress=False, seed=1, out=tmp_path)


def test_rome_successes_suppress_the_old_object_more_than_failures(toy_model, person_records):
    """A real editor with a weakened target optimisation (4 steps) so that both groups exist
    (measured on these 12: 9 successes, 3 failures)."""
    state = snapshot(toy_model)
    result = contrast_study(toy_model, "rome", person_records[20:32], config={"steps": 4}, progress=False, n_boot=200)
    assert_unchanged(toy_model, state, no_edits=True)
    assert result.n_success >= 2 and result.n_failure >= 2, (result.n_success, result.n_failure)
    # summed over layers and modules the scores telescope to the change of log p(o) through the
    # frozen norm; measured: successes suppress o by 5.34 nats, failures by 0.88 (benchmark over
    # 100 edits: the same gap at every layer, see notebook 04)
    success, failure = result.success_mean[..., 1].sum(), result.failure_mean[..., 1].sum()
    assert success > failure + 2.0
    assert result.leverage[..., 1].sum() == pytest.approx(float(success - failure), abs=1e-4)


def test_every_registered_editor_works(toy_model, person_records):
    """Weight-delta and steering editors alike (ACE is left out: it needs multi-hop requests)."""
    from interp_edit.editing import editors

    state = snapshot(toy_model)
    record = person_records[2]
    for name, editor in editors().items():
        if name == "ace":
            continue
        result = attribution_diff(toy_model, editor.fn(toy_model, [record]), record, neurons=False)
        # every editor makes o* more likely on the edit prompt, and the layer scores show it
        assert result.logprob_after["edit"][0, 0] > result.logprob_before["edit"][0, 0] + 1.0, name
        assert result.layer_diff("edit")[..., 0].sum() > 1.0, name
    assert_unchanged(toy_model, state, no_edits=True)


def test_a_request_without_prompt_fields_asks_for_prompts(toy_model):
    """A multi-hop (ACE) request has no single prompt: the error says to pass prompts=."""
    multi_hop = Edit("ace", {}, model_fingerprint(toy_model),
                     requests=[{"facts": [], "multihop_prompts": ["x"], "multihop_answers": ["y"]}])
    with pytest.raises(InvalidArgumentError, match="request 0 of the ace edit has no 'prompt' / 'subject'.*prompts="):
        attribution_diff(toy_model, multi_hop)
    assert hook_counts(toy_model) == {}


def test_a_multi_request_diff_names_its_request_and_marks_the_edited_layers(toy_model, person_records):
    from interp_edit.editing import memit

    records = [r for r in person_records if r.relation_id == "born_in"][:2]
    e = memit(toy_model, records, layers=(1, 2), steps=2, n_prefixes=1, prefix_length=3, prefix_lengths=None)
    with pytest.raises(InvalidArgumentError, match=r"holds 2 requests and attribution_diff analyses one: pass request=i \(0..1\)"):
        attribution_diff(toy_model, e, neurons=False)
    diff = attribution_diff(toy_model, e, request=1, neurons=False)
    assert diff.prompts["edit"] == (records[1].prompt.format(records[1].subject),)
    assert diff.settings["request"] == 1 and diff.settings["n_requests"] == 2 and diff.settings["edited_layers"] == [1, 2]
    fig = diff.plot()
    assert "(request 1 of 2)" in fig.layout.title.text and "edited layers [1, 2]" in fig.layout.title.text
    assert list(fig.data[0].y[:4]) == ["L0", "L1 (edited)", "L2 (edited)", "L3"]
    # explicit prompts and targets read no request: no request= needed
    explicit = attribution_diff(toy_model, e, ["Talvik Corlo was born in"], targets=("Karsa", "Veltra"), neurons=False)
    assert explicit.settings["request"] is None
