"""Implementations checked against references that share no code with them: attribution
patching computed by hand with autograd, ROME's key k* read with ``run_with_cache``, the one
"any phrasing" multi-hop rule, and the one tie rule of the probability comparisons."""

from __future__ import annotations

import pytest
import torch

from interp_edit import attribution_patch, attribution_patch_error
from interp_edit.editing import EditRequest, rome

CLEAN, CORRUPTED = "Talvik Corlo was born in", "Fenpas Astlo was born in"


def _first_token(model, text: str) -> int:
    return model.tokenizer(" " + text.strip(), add_special_tokens=False)["input_ids"][0]


def _hand_attribution(model, name: str, pos: int, head: int | None, answer: int, foil: int) -> float:
    """(a_clean − a_corrupted) · ∂(logit diff)/∂a at the corrupted run, at one site, normalised
    by the clean − corrupted logit difference — by plain hooks and autograd."""
    clean, corrupted = model.to_tokens(CLEAN), model.to_tokens(CORRUPTED)
    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(clean)
    held = {}

    def grab(act, hook):
        leaf = act.detach().clone().requires_grad_(True)
        held["act"] = leaf
        return leaf

    with torch.enable_grad():
        logits = model.run_with_hooks(corrupted, fwd_hooks=[(name, grab)])
        diff = logits[0, -1, answer] - logits[0, -1, foil]
        (grad,) = torch.autograd.grad(diff, held["act"])
    delta = clean_cache[name] - held["act"].detach()
    if head is None:
        contribution = (delta[0, pos] * grad[0, pos]).sum()
    else:
        contribution = (delta[0, :, head] * grad[0, :, head]).sum()  # every position of one head
    m_clean = (clean_logits[0, -1, answer] - clean_logits[0, -1, foil]).item()
    return contribution.item() / (m_clean - diff.item())


@pytest.mark.parametrize("site, layer, pos, head", [
    ("mlp_out", 2, 2, None), ("resid_pre", 1, 1, None), ("attn_out", 4, 5, None), ("head_out", 3, None, 1),
])
def test_attribution_patching_equals_a_hand_computed_first_order_term(toy_model, site, layer, pos, head):
    atp = attribution_patch(toy_model, CLEAN, CORRUPTED, answer="Karsa", foil="Veltra", sites=(site,))
    hook = {"head_out": "attn.hook_z", "mlp_out": "hook_mlp_out", "attn_out": "hook_attn_out",
            "resid_pre": "hook_resid_pre"}[site]
    expected = _hand_attribution(toy_model, f"blocks.{layer}.{hook}", pos, head, _first_token(toy_model, "Karsa"),
                                 _first_token(toy_model, "Veltra"))
    got = atp.results[site][layer, head if head is not None else pos].item()
    assert abs(expected) > 1e-3  # a site that matters, so that a sign error shows
    assert got == pytest.approx(expected, rel=1e-3, abs=1e-5)


def test_attribution_patching_correlates_with_exact_patching(toy_model):
    # measured (toy model, these prompts, logit difference): resid_pre 0.80, mlp_out 0.86,
    # attn_out 0.58, head_out 0.69; a sign error makes them negative
    floors = {"resid_pre": 0.7, "mlp_out": 0.75, "attn_out": 0.45, "head_out": 0.55}
    report = attribution_patch_error(toy_model, CLEAN, CORRUPTED, sites=tuple(floors))
    for site, floor in floors.items():
        assert report[site]["correlation"] >= floor, (site, report[site])


def _subject_last_position(model, text: str, subject: str, slot: int) -> int:
    """The position (BOS first) of the subject's last token, its occurrence starting at char
    ``slot`` — by the tokenizer's offsets."""
    enc = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    hi = slot + len(subject)
    inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < hi and b > slot]
    return inside[-1] + 1


def _reference_key(model, layer: int, prompt: str, subject: str, prefixes) -> torch.Tensor:
    """k*: the MLP's hidden activation at the subject's last token, averaged over the prompt
    under each context prefix, read with ``run_with_cache``."""
    keys = []
    for prefix in prefixes:
        head = f"{prefix} " if prefix else ""
        text = head + prompt.format(subject)
        pos = _subject_last_position(model, text, subject, len(head) + prompt.index("{}"))
        _, cache = model.run_with_cache(model.to_tokens(text), names_filter=f"blocks.{layer}.mlp.hook_post")
        keys.append(cache[f"blocks.{layer}.mlp.hook_post"][0, pos].double())
    return torch.stack(keys).mean(0)


def test_rome_reads_k_star_at_the_subjects_last_token_of_every_prefixed_prompt(toy_model, person_records):
    records = person_records[:2]
    result = rome(toy_model, records)
    layer = result.config["layer"]
    delta = result.deltas[f"blocks.{layer}.mlp.W_out"]
    prefixes = result.info["prefixes"]
    assert len(prefixes) > 1 and prefixes[0] == ""
    for i, record in enumerate(records):
        key = _reference_key(toy_model, layer, record.prompt, record.subject, prefixes)
        # ROME's left factor is C⁻¹k* / (k*ᵀC⁻¹k*): exactly 1 against the key it was built from
        assert (key @ delta.left[:, i].double()).item() == pytest.approx(1.0, abs=1e-3)
        # the key of the bare prompt alone is another vector: the check tells them apart
        bare = _reference_key(toy_model, layer, record.prompt, record.subject, [""])
        assert abs((bare @ delta.left[:, i].double()).item() - 1.0) > 1e-2


def test_keys_are_read_at_the_slot_when_the_subject_also_occurs_before_it(toy_model, person_records):
    record = person_records[0]
    prompt = f"{record.subject} said that {{}} {record.prompt.replace('{}', '').strip()}"
    result = rome(toy_model, [EditRequest(prompt, record.subject, record.target_new)])
    layer = result.config["layer"]
    left = result.deltas[f"blocks.{layer}.mlp.W_out"].left[:, 0].double()
    at_slot = _reference_key(toy_model, layer, prompt, record.subject, result.info["prefixes"])
    assert (at_slot @ left).item() == pytest.approx(1.0, abs=1e-3)


def test_any_phrasing_counts_also_when_only_the_first_is_right(toy_model, toy_world):
    from interp_edit.evaluation.metrics import any_phrasing_right, multihop_accuracy, multihop_correct

    assert any_phrasing_right([True, False, False], [[0, 1, 2]]) == [1.0]
    assert any_phrasing_right([False, False, True], [[0, 1], [2]]) == [0.0, 1.0]
    assert any_phrasing_right(torch.tensor([False]), [[0], []])[0] == 0.0
    # the model knows this fact; the other two phrasings ask for something else
    right = "As everyone knows, Talvik Corlo was born in"
    wrong = ["Talvik Corlo works as a", "Talvik Corlo plays the"]
    assert multihop_correct(toy_model, [[right, *wrong]], [["Karsa"]]).tolist() == [True]
    assert multihop_correct(toy_model, [[*wrong, right]], [["Karsa"]]).tolist() == [True]
    assert multihop_correct(toy_model, [wrong], [["Karsa"]]).tolist() == [False]
    # an alias counts too, whichever position it has
    assert multihop_accuracy(toy_model, [[right, *wrong], wrong], [["Karsa", "Nowhere"], ["Karsa"]]) == 0.5


def test_a_tie_counts_for_neither_side_everywhere(toy_model):
    from interp_edit.evaluation.counterfact import counterfact_scores
    from interp_edit.prompts import CounterFactRecord

    # target_new == target_true in score: a tie on every prompt
    record = CounterFactRecord(0, "{} was born in", "Talvik Corlo", "born_in", "Karsa", " Karsa",
                               ("Talvik Corlo is from",), ("Fenpas Astlo was born in",), (), ())
    row = counterfact_scores(toy_model, [record])[0]
    assert row["efficacy"] == 0.0 and row["paraphrase"] == 0.0 and row["neighborhood"] == 0.0
