"""Subject-token edit positions (``subject_<k>``) and ``edit_token="traced"``: the editors write
at the subject token chosen by measurement (issue 20)."""

from __future__ import annotations

import importlib

import pytest
import torch

from interp_edit.adapter import model_fingerprint
from interp_edit.analysis.edit_token_aie import EditTokenAIE
from interp_edit.editing import EditRequest, MEMITConfig, ROMEConfig, memit, prepare_requests, rome
from interp_edit.editing.requests import tokenize_in_context
from interp_edit.editing.targets import compute_keys, optimise_targets
from interp_edit.errors import EditConfigError, EditRequestError

choice_module = importlib.import_module("interp_edit.editing.edit_token_choice")
targets_module = importlib.import_module("interp_edit.editing.targets")


def n_tokens(treq) -> int:
    return treq.subject_span[1] - treq.subject_span[0]


@pytest.fixture(scope="module")
def by_length(toy_model, person_records):
    """Person records with 2- and 3-token subjects (distinct subjects)."""
    fp = model_fingerprint(toy_model)
    out: dict[int, list] = {2: [], 3: []}
    seen = set()
    for record in person_records:
        if record.subject in seen:
            continue
        (treq,) = prepare_requests(toy_model, [record], fp)
        if n_tokens(treq) in out and len(out[n_tokens(treq)]) < 6:
            out[n_tokens(treq)].append(record)
            seen.add(record.subject)
    assert all(len(v) == 6 for v in out.values())
    return out


def test_subject_offset_tokens_name_each_subject_token_in_every_context(toy_model, by_length):
    record = by_length[3][0]
    fp = model_fingerprint(toy_model)
    (plain,) = prepare_requests(toy_model, [record], fp)
    pieces = toy_model.to_str_tokens(" " + record.subject, prepend_bos=False)
    for k in range(3):
        (treq,) = prepare_requests(toy_model, [record], fp, edit_token=f"subject_{k}")
        assert treq.edit_position == plain.subject_span[0] + k
        assert toy_model.tokenizer.decode([treq.prompt_ids[treq.edit_position]]) == pieces[k]
        for ids, pos in tokenize_in_context(toy_model, treq, ["Some text .", "x"]):
            assert ids[pos] == treq.prompt_ids[treq.edit_position]
            assert len(ids) - pos == len(treq.prompt_ids) - treq.edit_position
    with pytest.raises(EditRequestError, match=r"request 0: edit token 'subject_3': the subject .* has only 3 tokens"):
        prepare_requests(toy_model, [record], fp, edit_token="subject_3")
    with pytest.raises(EditRequestError, match="2 edit tokens for 1 requests"):
        prepare_requests(toy_model, [record], fp, edit_token=["subject_0", "subject_1"])


def test_edit_token_config_is_validated_by_field(toy_model):
    with pytest.raises(EditConfigError, match="field 'edit_token': 'verb_last' is not a subject token"):
        ROMEConfig.for_model(toy_model, edit_token="verb_last")
    with pytest.raises(EditConfigError, match="token_trace_facts"):
        MEMITConfig.for_model(toy_model, edit_token="traced", token_trace_facts=0)
    from interp_edit.editing import MEMITCSKConfig

    assert MEMITCSKConfig.for_model(toy_model, edit_token="verb_last").edit_token == "verb_last"


def test_rome_at_a_middle_token_maps_that_token_s_key_and_keeps_its_essence_there(toy_model, by_length):
    record = by_length[3][1]
    cfg = ROMEConfig.for_model(toy_model, edit_token="subject_1")
    result = rome(toy_model, [record], cfg)
    assert result.info["edit_token"]["mode"] == "subject_1"
    (treq,) = prepare_requests(toy_model, [record], model_fingerprint(toy_model), edit_token="subject_1")
    (last,) = prepare_requests(toy_model, [record], model_fingerprint(toy_model))
    assert result.info["edit_token"]["positions"] == [treq.edit_position] == [last.subject_last - 1]
    prefixes = tuple(result.info["prefixes"])
    key = compute_keys(toy_model, [treq], cfg.layer, prefixes)[0]
    v_star = optimise_targets(toy_model, [treq], cfg.layer, prefixes, cfg.target_config()).target[0]
    with result.applied(toy_model):
        mlp = toy_model.blocks[cfg.layer].mlp
        assert (key @ mlp.W_out + mlp.b_out - v_star).abs().max() < 1e-4
        last_key = compute_keys(toy_model, [last], cfg.layer, prefixes)[0]
        assert (last_key - key).norm() > 0.1 * key.norm()  # another key: the edit is at the middle token
    rows = targets_module._build_rows(toy_model, [treq], ("",), ("{} is a",))
    essence = rows.edit_pos[~rows.is_rewrite]
    tok = prepare_requests(toy_model, [EditRequest("{} is a", record.subject, "x")], "fp")[0]
    assert essence.tolist() == [tok.subject_span[0] + 1]


def _fake_aie(peaks: dict[int, int]):
    """An edit_token_aie stand-in whose MLP-mediated curve is 1 at layer 0 where the subject
    offset equals ``peaks[subject length]`` and 0.2 elsewhere."""
    def fake(model, facts, **kwargs):
        from interp_edit.prompts import tokenize_with_subject

        values = []
        for f in facts:
            tok = tokenize_with_subject(model.tokenizer, f.prompt, f.subject)
            length, offset = tok.subject_span[1] - tok.subject_span[0], f.position - tok.subject_span[0]
            values.append(1.0 if peaks[length] == offset else 0.2)
        curve = torch.zeros(model.cfg.n_layers)
        curve[0] = sum(values) / len(values)
        return EditTokenAIE(curve, torch.zeros_like(curve), len(facts))
    return fake


def test_traced_picks_per_subject_length_the_token_with_the_largest_effect(toy_model, by_length, monkeypatch):
    monkeypatch.setattr(choice_module, "edit_token_aie", _fake_aie({2: 0, 3: 1}))
    records = by_length[3][:3] + by_length[2][:3]
    result = memit(toy_model, records, edit_token="traced", token_trace_curve="mlp_mediated", layers=(0, 1))
    info = result.info["edit_token"]
    assert info["offsets"] == [1, 1, 1, 0, 0, 0]
    # the curve is read at the edited layers (0 and 1): the mean of 1 and 0 at the peak
    assert info["scores"]["3"] == pytest.approx([0.1, 0.5, 0.1]) and info["scores"]["2"] == pytest.approx([0.5, 0.1])
    plain = prepare_requests(toy_model, records, model_fingerprint(toy_model))
    assert info["positions"] == [p.subject_span[0] + k for p, k in zip(plain, info["offsets"], strict=True)]


def test_traced_per_request_and_ties_keep_the_last_token(toy_model, by_length, monkeypatch):
    monkeypatch.setattr(choice_module, "edit_token_aie", _fake_aie({3: 5, 2: 5}))  # flat: no offset peaks
    records = [by_length[3][0], by_length[2][0]]
    treqs, info = choice_module.prepare_at_edit_tokens(
        toy_model, records, model_fingerprint(toy_model), ROMEConfig.for_model(toy_model, edit_token="traced_per_request", token_trace_curve="mlp_mediated"), [0])
    assert set(info["scores"]) == {"#0", "#1"}
    assert info["offsets"] == [2, 1] and [t.edit_position for t in treqs] == [t.subject_last for t in treqs]


def test_traced_on_the_shipped_model_follows_its_own_trace(toy_model, by_length):
    """The real trace: the chosen offset is the argmax of the recorded scores, and those are the
    MLP-output restoration effect (default) or edit_token_aie's MLP-mediated AIE at the edited layer."""
    from interp_edit.analysis import causal_trace
    from interp_edit.analysis.edit_token_aie import TokenFact, edit_token_aie
    from interp_edit.analysis.tracing import subject_embedding_std

    records = by_length[3][:2]
    plain = prepare_requests(toy_model, records, model_fingerprint(toy_model))
    std = subject_embedding_std(toy_model, [r.subject for r in records])
    for curve in ("mlp", "mlp_mediated"):
        cfg = ROMEConfig.for_model(toy_model, edit_token="traced", token_trace_noise_samples=3, token_trace_curve=curve)
        treqs, info = choice_module.prepare_at_edit_tokens(toy_model, records, model_fingerprint(toy_model), cfg, [cfg.layer])
        row = info["scores"]["3"]
        assert info["offsets"] == [max(range(3), key=lambda k: (row[k], k))] * 2
        assert [t.edit_position for t in treqs] == [p.subject_span[0] + info["offsets"][0] for p in plain]
        if curve == "mlp":
            effects = [causal_trace(toy_model, p.request.text, p.request.subject, None, kinds=("mlp",), window=1, samples=3,
                                    seed=cfg.seed, embedding_std=std).indirect_effects[0, cfg.layer, p.subject_span[0] + 1]
                       for p in plain]  # every request's trace draws its noise from the one seed
            assert row[1] == pytest.approx(sum(effects).item() / 2)
        else:
            facts = [TokenFact(p.request.text, p.request.subject, None, p.subject_span[0] + 1) for p in plain]
            aie = edit_token_aie(toy_model, facts, samples=3, seed=cfg.seed, embedding_std=std)
            assert row[1] == pytest.approx(aie.mlp_mediated[cfg.layer].item())
    with pytest.raises(EditConfigError, match="field 'token_trace_curve'"):
        ROMEConfig.for_model(toy_model, edit_token="traced", token_trace_curve="hidden")
