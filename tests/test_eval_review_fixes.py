"""Review defects in the evaluation metrics, each pinned against a reference computed here
without the toolkit's scoring code: every prompt scored (or decoded) in its own unbatched
forward pass of the toy-world model.

- ``counterfact_scores`` keyed its per-prompt results by the prompt text, so a prompt listed
  twice in a record counted once (paraphrases [A, A, B]: 1/2 instead of 2/3);
- ``greedy_token_ids`` capped every row of a batch by its longest prompt, so a prompt's
  generation depended on its batch-mates;
- ``mcq_accuracy`` / ``multihop_*`` / ``efficacy_score`` accepted answers and targets of the
  wrong count or range (broadcast, NaN counted wrong, or a plain ValueError with doubled counts).
"""

from __future__ import annotations

import pytest
import torch
from model_state import refused_before_any_forward

from interp_edit.errors import InvalidArgumentError

SUBJECT = "Talvik Corlo"
A = "Talvik Corlo is a native of"   # Karsa beats Gemmel
B = "Beldel Kordor was born in"     # Gemmel beats Karsa
SAME = "Talvik Corlo works as a"    # chemist beats Karsa, Karsa beats painter


@torch.no_grad()
def _mean_logprob(model, prompt: str, target: str) -> float:
    """The target's mean teacher-forced log-probability after BOS + prompt, one unbatched forward."""
    tok = model.tokenizer
    p = tok.encode(prompt, add_special_tokens=False)
    w = tok.encode(prompt + " " + target, add_special_tokens=False)
    assert w[: len(p)] == p
    logprobs = model(torch.tensor([[tok.bos_token_id] + w], device=model.cfg.device)).float().log_softmax(-1)[0]
    t = w[len(p):]
    return sum(float(logprobs[len(p) + i, t[i]]) for i in range(len(t))) / len(t)


@torch.no_grad()
def _greedy_alone(model, prompt: str, max_new_tokens: int) -> list[int]:
    """Greedy decoding of one prompt, one unbatched forward per step: at most max_new_tokens,
    never past n_ctx, stopping at end-of-text."""
    tok = model.tokenizer
    ids = [tok.bos_token_id] + tok.encode(prompt, add_special_tokens=False)
    start = len(ids)
    while len(ids) < min(start + max_new_tokens, model.cfg.n_ctx):
        nxt = int(model(torch.tensor([ids], device=model.cfg.device))[0, -1].argmax())
        if nxt == tok.eos_token_id:
            break
        ids.append(nxt)
    return ids[start:]


def _each_refused(model, bad) -> None:
    """Every ``(message, call)`` of ``bad`` raises an InvalidArgumentError matching ``message``,
    with no forward run and the model left as it was."""
    with refused_before_any_forward(model):
        for message, call in bad:
            with pytest.raises(InvalidArgumentError, match=message):
                call()


# --- 1. counterfact_scores: a repeated prompt counts once per position -----------------------

def test_counterfact_scores_counts_a_repeated_prompt_once_per_position(toy_model):
    from interp_edit.data.formats import Where, parse_counterfact
    from interp_edit.evaluation import evaluate_cases
    from interp_edit.evaluation.counterfact import counterfact_scores

    lp = {(p, t): _mean_logprob(toy_model, p, t) for p in (A, B, SAME) for t in ("Karsa", "Gemmel", "chemist", "painter")}
    # the premises the reference relies on (else the test would not tell the keys apart)
    assert lp[A, "Karsa"] > lp[A, "Gemmel"] and lp[B, "Gemmel"] > lp[B, "Karsa"]
    assert lp[SAME, "chemist"] > lp[SAME, "Karsa"] > lp[SAME, "painter"]
    record = {"requested_rewrite": {"prompt": "{} was born in", "subject": SUBJECT, "target_new": {"str": "Karsa"},
                                    "target_true": {"str": "Gemmel"}},
              "paraphrase_prompts": [A, A, B], "neighborhood_prompts": [B, B, A],
              "same_subject_prompts": [[SAME, "chemist"], [SAME, "painter"]]}
    want = {"paraphrase": sum(lp[p, "Karsa"] > lp[p, "Gemmel"] for p in (A, A, B)) / 3,
            "neighborhood": sum(lp[p, "Gemmel"] > lp[p, "Karsa"] for p in (B, B, A)) / 3,
            "same_subject": sum(lp[SAME, a] > lp[SAME, "Karsa"] for a in ("chemist", "painter")) / 2}
    assert want == pytest.approx({"paraphrase": 2 / 3, "neighborhood": 2 / 3, "same_subject": 0.5})
    [row] = counterfact_scores(toy_model, [record])
    assert {k: row[k] for k in want} == pytest.approx(want)
    # a second record sharing the prompts does not merge with the first
    rows = counterfact_scores(toy_model, [record, record])
    assert all({k: r[k] for k in want} == pytest.approx(want) for r in rows)
    # the same definition as the case rows
    case_row = evaluate_cases(toy_model, [parse_counterfact({"case_id": 0, **record}, Where("test", 0))])[0]
    assert case_row["paraphrase_score"] == pytest.approx(row["paraphrase"])
    assert case_row["neighborhood_score"] == pytest.approx(row["neighborhood"])


# --- 2. greedy_token_ids: each row's own limit --------------------------------------------------

def test_greedy_generation_of_a_prompt_does_not_depend_on_its_batch_mates(toy_model):
    from interp_edit.evaluation.metrics import greedy_generate, greedy_token_ids

    tok = toy_model.tokenizer
    n_ctx = toy_model.cfg.n_ctx
    short = "The old market shone all wee"
    sentence = "Talvik Corlo was born in Karsa. Beldel Kordor was born in Gemmel. "
    long_ids = tok.encode(sentence * n_ctx, add_special_tokens=False)[: n_ctx - 14]
    long = tok.decode(long_ids)
    assert len(tok.encode(long, add_special_tokens=False)) + 1 == n_ctx - 13  # BOS + prompt: 13 tokens of room
    want_short = _greedy_alone(toy_model, short, 50)
    want_long = _greedy_alone(toy_model, long, 50)
    # the premise: the short prompt alone decodes more tokens than the long prompt's room
    assert len(want_short) > 13 and len(want_long) <= 13
    assert greedy_token_ids(toy_model, [short], 50) == [want_short]
    assert greedy_token_ids(toy_model, [short, long], 50) == [want_short, want_long]
    assert greedy_token_ids(toy_model, [long, short, "The"], 50, batch_size=2)[:2] == [want_long, want_short]
    # a smaller budget is each row's own too
    assert greedy_token_ids(toy_model, [short, long], 5) == [want_short[:5], want_long[:5]]
    assert greedy_generate(toy_model, [short, long], 50)[0] == greedy_generate(toy_model, [short], 50)[0]


# --- 3. mcq_accuracy: answers checked before any forward ----------------------------------------

def test_mcq_accuracy_refuses_answers_of_the_wrong_count_or_range(toy_model):
    from interp_edit.evaluation.metrics import mcq_accuracy

    prompts = ["Talvik Corlo was born in", B]
    labels = [["Karsa", "Gemmel"], ["Karsa", "Gemmel"]]
    bad = [
        (r"answers has 2 entries for 1 prompts", lambda: mcq_accuracy(toy_model, prompts[:1], labels[:1], [0, 1])),
        (r"answers has 1 entries for 2 prompts", lambda: mcq_accuracy(toy_model, prompts, labels, [0])),
        (r"answers\[0\] = 5\b", lambda: mcq_accuracy(toy_model, prompts[:1], labels[:1], [5])),
        (r"answers\[1\] = 2\b", lambda: mcq_accuracy(toy_model, prompts, labels, [0, 2])),
        (r"answers\[1\] = -1\b", lambda: mcq_accuracy(toy_model, prompts, labels, [0, -1])),
        (r"answers\[0\].*'0'", lambda: mcq_accuracy(toy_model, prompts, labels, ["0", 1])),
        (r"answers\[1\].*True", lambda: mcq_accuracy(toy_model, prompts, labels, [0, True])),
        (r"answers\[0\].*1\.0", lambda: mcq_accuracy(toy_model, prompts, labels, [1.0, 0])),
        (r"labels has 1 lists of options for 2 prompts", lambda: mcq_accuracy(toy_model, prompts, labels[:1], [0, 0])),
    ]
    _each_refused(toy_model, bad)
    # good answers: against each prompt's own argmax over the two labels
    want = []
    for p in prompts:
        scores = [_mean_logprob(toy_model, p, label) for label in labels[0]]
        want.append(max(range(2), key=scores.__getitem__))
    assert want == [0, 1]  # Karsa after "Talvik Corlo was born in", Gemmel after B
    assert mcq_accuracy(toy_model, prompts, labels, want) == 1.0
    assert mcq_accuracy(toy_model, prompts, labels, [want[0], 1 - want[1]]) == 0.5
    assert mcq_accuracy(toy_model, prompts, labels, torch.tensor(want)) == 1.0


# --- 4. multihop: a question with no phrasings or no answers ------------------------------------

def test_multihop_refuses_a_question_without_phrasings_or_answers(toy_model):
    from interp_edit.evaluation.metrics import multihop_accuracy, multihop_correct

    right = "Talvik Corlo was born in"
    _each_refused(toy_model, [
        (pattern, lambda fn=fn, q=q, a=a: fn(toy_model, q, a))
        for fn in (multihop_accuracy, multihop_correct)
        for pattern, q, a in ((r"questions\[0\]", [[], [right]], [["Karsa"], ["Karsa"]]),
                              (r"questions\[1\]", [[right], ()], [["Karsa"], ["Karsa"]]),
                              (r"answers\[1\]", [[right], [right]], [["Karsa"], []]))])
    # the reference: greedy decoding of the prompt alone emits " Karsa" first
    assert toy_model.tokenizer.decode(_greedy_alone(toy_model, right, 1)) == " Karsa"
    assert multihop_accuracy(toy_model, [[right], [right, B]], [["Karsa"], ["Nowhere", "Karsa"]]) == 1.0


# --- 5. efficacy_score & co: one target per prompt, named ---------------------------------------

def test_efficacy_targets_of_the_wrong_count_are_named_with_the_callers_counts(toy_model):
    from interp_edit.evaluation.metrics import (
        efficacy_magnitude,
        efficacy_score,
        neighborhood_magnitude,
        neighborhood_score,
        paraphrase_score,
        token_accuracy,
    )

    prompts = ["Talvik Corlo was born in", B]
    bad = [
        (r"target_new has 1 entries for 2 prompts", lambda: efficacy_score(toy_model, prompts, ["Gemmel"], ["Karsa", "Karsa"])),
        (r"target_true has 3 entries for 2 prompts", lambda: efficacy_score(toy_model, prompts, "Gemmel", ["Karsa"] * 3)),
        (r"target_new has 1 entries for 2 prompts", lambda: efficacy_magnitude(toy_model, prompts, ["Gemmel"], "Karsa")),
        (r"target_true has 0 entries for 2 prompts", lambda: neighborhood_score(toy_model, prompts, "Gemmel", [])),
        (r"target_new has 3 entries for 2 prompts", lambda: neighborhood_magnitude(toy_model, prompts, ["G"] * 3, "Karsa")),
        (r"target_new has 1 entries for 2 prompts", lambda: paraphrase_score(toy_model, prompts, ["Gemmel"], "Karsa")),
        (r"targets has 1 entries for 2 prompts", lambda: token_accuracy(toy_model, prompts, ["Karsa"])),
    ]
    _each_refused(toy_model, bad)
    # one target per prompt: against each prompt scored alone
    new, true = ["Gemmel", "Karsa"], ["Karsa", "Gemmel"]
    want = sum(_mean_logprob(toy_model, p, n) > _mean_logprob(toy_model, p, t) for p, n, t in zip(prompts, new, true, strict=True)) / 2
    assert want == 0.0
    assert efficacy_score(toy_model, prompts, new, true) == want
    assert efficacy_score(toy_model, prompts, true, new) == 1.0 - want
