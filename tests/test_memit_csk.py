"""MEMIT-CSK on the toy world: keys are read at the chosen token, a verb-token edit changes the
statement while the subject's other facts stay, the automatic window is the moving-average
window of the measured AIE, MEMIT-CSK at the subject equals MEMIT, the statement task and its
metrics, and bad input naming the request and span with the model unchanged."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from model_state import assert_unchanged, refused_before_any_forward, snapshot

from interp_edit.adapter import hook_name, model_fingerprint, run_with_cache
from interp_edit.analysis.edit_token_aie import EditTokenAIE, TokenFact, edit_token_aie
from interp_edit.analysis.layers import select_layer_window
from interp_edit.data import load_dataset, parse_records
from interp_edit.editing import Edit, EditRequest, MEMITCSKConfig, edit, memit, memit_csk, prepare_requests
from interp_edit.editing.requests import fill_prefix
from interp_edit.editing.targets import context_prefixes
from interp_edit.errors import DatasetError, EditConfigError, EditRequestError
from interp_edit.evaluation.commonsense import commonsense_efficacy, commonsense_scores, relapse_rate
from interp_edit.statistics.keys import second_moments


@pytest.fixture(scope="module")
def statements(toy_world, one_thread):
    dataset = load_dataset("toyworld-csk", world=toy_world)
    simple = [c for c in dataset if c.kind == "simple"]
    compound = [c for c in dataset if c.kind == "compound"]
    random.Random(0).shuffle(simple)
    random.Random(0).shuffle(compound)
    return simple, compound


def requests_of(cases):
    return [c.rewrite.as_dict() for c in cases]


def key_at_span(model, text: str, span: str | None, which: str, layer: int, before: str = "") -> torch.Tensor:
    """The MLP key of ``layer`` at the first/last token of ``span`` (its first occurrence after
    ``before``), located from the tokenizer's character offsets."""
    tok = model.tokenizer
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    lo = text.index(span, len(before))
    hi = lo + len(span)
    inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < hi and b > lo]
    position = 1 + (inside[0] if which == "first" else inside[-1])  # BOS first
    ids = torch.tensor([[tok.bos_token_id, *enc["input_ids"]]], device=model.cfg.device)
    name = hook_name("mlp_post", layer)
    _, cache = run_with_cache(model, ids, [name])
    return cache[name][0, position].double()


@pytest.mark.parametrize(("kind", "edit_token", "span_field", "wrong_field"), [
    ("simple", "verb_first", "verb", "subject"),
    ("compound", "object_last", "object", "verb"),
])
def test_the_update_is_solved_for_the_keys_at_the_chosen_token(toy_model, statements, kind, edit_token, span_field,
                                                               wrong_field):
    cases = (statements[0] if kind == "simple" else statements[1])[:3]
    cfg = MEMITCSKConfig.for_model(toy_model, edit_token=edit_token, layers=(2, 3))
    result = memit_csk(toy_model, requests_of(cases), cfg)
    layer = cfg.layers[0]  # keys of the first layer are measured on the unedited model
    left = result.deltas[f"blocks.{layer}.mlp.W_out"].left.double()  # [d_mlp, n] = (λC + KKᵀ)⁻¹ K
    cov = second_moments(toy_model, [layer], n_samples=cfg.stats_samples, batch_size=cfg.stats_batch_size)[layer].double()
    prefixes = context_prefixes(toy_model, cfg.n_prefixes, cfg.prefix_length, cfg.seed)

    def keys(field: str, which: str) -> torch.Tensor:
        out = []
        for case in cases:
            span = getattr(case.rewrite, field)
            out.append(torch.stack([key_at_span(toy_model, fill_prefix(p, case.rewrite.text), span, which, layer,
                                                before=fill_prefix(p, "")) for p in prefixes]).mean(0))
        return torch.stack(out, dim=1)  # [d_mlp, n]

    def residual(k: torch.Tensor) -> float:
        lhs = (cfg.mom2_update_weight * cov + k @ k.T) @ left
        return ((lhs - k).norm() / k.norm()).item()

    chosen = keys(span_field, edit_token.rsplit("_", 1)[1])
    assert residual(chosen) < 1e-4
    # the same check with the keys of another token fails: the test can tell the tokens apart
    assert residual(keys(wrong_field, "last")) > 0.1
    assert result.info["edit_token"] == edit_token and result.info["layers"] == [2, 3]


@pytest.fixture(scope="module")
def verb_edit(toy_model, statements):
    cases = statements[0][:10]
    return cases, memit_csk(toy_model, requests_of(cases), edit_token="verb_last", trace_samples=6)


def test_a_verb_token_edit_changes_the_statement_and_spares_the_subjects_other_facts(toy_model, statements, verb_edit):
    cases, result = verb_edit
    scores = commonsense_scores(toy_model, result, cases)
    # measured: efficacy 1.0, paraphrase 1.0, relapse 0.0 on these 10 statements (58 others);
    # editing the same statements at the subject's last token (layers 0-1): efficacy 0.9, relapse 0.29
    assert scores.n_previously_wrong == 10 and scores.n_relapse_statements >= 50
    assert scores.efficacy >= 0.9 and scores.paraphrase_efficacy >= 0.8
    assert scores.relapse <= 0.05
    at_subject = commonsense_scores(toy_model, memit_csk(toy_model, requests_of(cases), edit_token="subject_last",
                                                         layers=(0, 1)), cases)
    assert at_subject.efficacy >= 0.8
    assert at_subject.relapse >= scores.relapse + 0.1


def test_the_auto_window_is_the_moving_average_window_of_the_measured_aie(toy_model, statements, verb_edit, tmp_path):
    cases, result = verb_edit
    cfg = MEMITCSKConfig.for_model(toy_model)
    treqs = prepare_requests(toy_model, requests_of(cases), model_fingerprint(toy_model), edit_token="verb_last")
    facts = [TokenFact(r.request.text, r.request.subject, r.request.target_true, r.edit_position) for r in treqs[:6]]
    aie = edit_token_aie(toy_model, facts, noise=cfg.trace_noise, samples=cfg.trace_noise_samples, seed=cfg.seed)
    info = result.info["aie"]
    assert torch.allclose(torch.tensor(info["mlp_mediated"]), aie.mlp_mediated.float(), atol=1e-6)
    assert info["n_facts"] == 6 and info["window"] == cfg.window == 2
    assert tuple(result.info["layers"]) == select_layer_window(aie.mlp_mediated, cfg.window)
    # at the statement's last token the MLP-mediated effect peaks in the middle layers (measured
    # 0.008 / 0.089 / 0.21 / 0.17 / 0.017 / 0 on ten statements: window 2-3)
    assert result.info["layers"][0] >= 1 and aie.mlp_mediated.max() > 0.1
    # the record survives save / load, and the curve plots with the window shaded
    path = result.save(tmp_path / "edit.safetensors")
    loaded = Edit.load(path)
    assert loaded.info["layers"] == result.info["layers"] and loaded.info["aie"]["mlp_mediated"] == info["mlp_mediated"]
    fig = EditTokenAIE.from_dict(loaded.info["aie"]).plot(loaded.info["layers"])
    assert [t.name for t in fig.data] == ["hidden", "severed", "mlp_mediated"]


def test_memit_csk_at_the_subject_with_memits_layers_is_memit_and_registered(toy_model, person_records):
    records = person_records[:3]
    plain = memit(toy_model, records)
    csk = edit(toy_model, records, "memit_csk", edit_token="subject_last", layers=(0, 1))
    assert csk.method == "memit_csk" and set(csk.deltas) == set(plain.deltas)
    for name, delta in plain.deltas.items():
        assert torch.allclose(delta.dense(), csk.deltas[name].dense(), atol=1e-6)
    assert "aie" not in csk.info


def test_statement_task_and_metrics(toy_model, toy_world, statements):
    simple, compound = statements
    assert len(simple) == 4 * len(toy_world.people) and len(compound) == len(toy_world.people)
    case = compound[0]
    text = case.rewrite.text
    assert case.rewrite.verb in text and text.index(case.rewrite.object) > len(case.rewrite.subject)
    assert all(s.fact != case.fact for s in case.relapse)
    # the relapse set leaves out facts the batch rewrites
    from interp_edit.evaluation.commonsense import _relapse_statements

    other = next(c for c in simple if c.fact == case.relapse[0].fact)
    assert case.relapse[0] not in _relapse_statements([case, other])
    before, after = torch.tensor([False, False, True, False]), torch.tensor([True, False, True, True])
    assert commonsense_efficacy(before, after) == pytest.approx(2 / 3)
    assert relapse_rate(torch.tensor([True, True, False, True]), torch.tensor([True, False, False, True])) == pytest.approx(1 / 3)
    assert torch.isnan(torch.tensor(commonsense_efficacy(torch.tensor([True]), torch.tensor([True]))))
    record = {"case_id": 1, "kind": "simple", "fact": "a|b",
              "requested_rewrite": {"prompt": "{} was born in", "subject": "Talvik Corlo", "verb": "works as",
                                    "target_new": "Karsa", "target_true": "Veltra"},
              "paraphrase_prompts": ["x"], "relapse": [{"prompt": "p", "answer": "a", "fact": "f"}]}
    with pytest.raises(DatasetError, match=r"record 0: field 'requested_rewrite.verb'.*'works as'"):
        parse_records([record], "commonsense", "mem")


def test_bad_spans_and_settings_name_the_request_and_leave_the_model_unchanged(toy_model):
    state = snapshot(toy_model)
    good = EditRequest("{} was born in", "Talvik Corlo", "Karsa", verb="was born in")
    bad_verb = EditRequest("{} was born in", "Talvik Corlo", "Karsa", verb="works as a")
    with pytest.raises(EditRequestError, match=r"request 1: field 'verb': span 'works as a' does not occur"):
        memit_csk(toy_model, [good, bad_verb], edit_token="verb_last", layers=(0, 1))
    with pytest.raises(EditRequestError, match=r"request 0: edit token 'object_last' needs the request's field 'object'"):
        memit_csk(toy_model, [good], edit_token="object_last", layers=(0, 1))
    with pytest.raises(EditRequestError, match=r"request 0: field 'object': span 'Veltra' does not occur"):
        memit_csk(toy_model, [dataclasses.replace(good, object="Veltra")], edit_token="verb_last", layers=(0, 1))
    with pytest.raises(EditConfigError, match="field 'edit_token'.*'verb_middle'"):
        memit_csk(toy_model, [good], edit_token="verb_middle")
    for field, value in (("layers", "best"), ("layers", (3, 1)), ("window", 0), ("trace_curve", "mlp"), ("trace_samples", 0)):
        with pytest.raises(EditConfigError, match=f"field '{field}'"):
            memit_csk(toy_model, [good], **{field: value})
    with pytest.raises(EditConfigError, match="field 'layers'.*out of range"):
        memit_csk(toy_model, [good], layers=(5, 6))
    assert_unchanged(toy_model, state)


def test_auto_layers_refuse_a_flat_aie_curve(toy_model, statements):
    # the subject's corruption does not reach the stated object's token in "X was born in Karsa
    # and works as a" (measured: effect 0.000 at every layer), so no window can be chosen
    state = snapshot(toy_model)
    cases = statements[1][:3]
    with pytest.raises(EditConfigError, match=r"'object_last' is flat.*min_window_effect 0.01"):
        memit_csk(toy_model, requests_of(cases), edit_token="object_last", trace_samples=3)
    assert_unchanged(toy_model, state)


def test_auto_layers_leave_out_requests_whose_edit_token_is_before_the_subject(toy_model):
    """An edit token before the subject cannot be traced (the noise starts at the subject): the
    window is traced over the other requests, and refused by name when none is left."""
    from interp_edit.editing.methods.memit_csk import trace_layer_window

    cfg = MEMITCSKConfig.for_model(toy_model, trace_samples=2)
    after = EditRequest("{} was born in", "Talvik Corlo", "Gemmel", verb="was born in")
    before = EditRequest("As for being born in, {} was born in", "Korwa Drarin", "Gemmel", verb="being born in")
    fp = model_fingerprint(toy_model)
    mixed = prepare_requests(toy_model, [before, after], fp, edit_token="verb_last")
    assert mixed[0].edit_position < mixed[0].subject_span[0] and mixed[1].edit_position >= mixed[1].subject_span[1]
    layers, info = trace_layer_window(toy_model, mixed, cfg)
    alone = trace_layer_window(toy_model, mixed[1:], cfg)
    assert info["n_facts"] == 1 and layers == alone[0] and info["mlp_mediated"] == alone[1]["mlp_mediated"]
    only_before = prepare_requests(toy_model, [before], fp, edit_token="verb_last")
    with refused_before_any_forward(toy_model), pytest.raises(EditConfigError, match="comes before the subject in every traced"):
        trace_layer_window(toy_model, only_before, cfg)
