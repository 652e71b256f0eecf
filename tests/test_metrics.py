"""Each metric pinned on hand-made cases with a stub model of known next-token probabilities."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from interp_edit.data import CounterFactCase, MCQCase, MCQQuestion, MultiHopProbe, Rewrite
from interp_edit.evaluation import (
    aggregate,
    counterfact_score,
    efficacy_magnitude,
    efficacy_score,
    evaluate_cases,
    multihop_accuracy,
    neighborhood_score,
    ngram_entropy,
    option_entropy,
    option_probabilities,
    score_continuations,
    token_accuracy,
)
from interp_edit.evaluation.metrics import mcq_accuracy

WORDS = ["<bos>", "a", "b", "c", "d", "e", "is", "in", "new", "york", "old", "paris", "rome", "x", "y", "q1", "q2", "q3", "q4",
         "A", "B", "C", "D", "E"]


class StubTokenizer:
    """Word-level: one token per known word; unknown words tokenise to nothing."""

    bos_token_id = pad_token_id = eos_token_id = 0

    def __init__(self) -> None:
        self.ids = {w: i for i, w in enumerate(WORDS)}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [self.ids[w] for w in text.split() if w in self.ids]

    def decode(self, ids) -> str:
        return " " + " ".join(WORDS[i] for i in ids)


class StubModel:
    """Next-token probabilities from a table keyed by the context's words (BOS excluded);
    contexts not in the table get a uniform distribution."""

    def __init__(self, table: dict[str, dict[str, float]]) -> None:
        self.tokenizer = StubTokenizer()
        self.cfg = SimpleNamespace(device="cpu", n_ctx=32, d_vocab_out=len(WORDS))
        self.table = table

    def distribution(self, words: list[str]) -> torch.Tensor:
        probs = self.table.get(" ".join(words))
        if probs is None:
            return torch.full((len(WORDS),), 1 / len(WORDS))
        out = torch.full((len(WORDS),), (1 - sum(probs.values())) / (len(WORDS) - len(probs)))
        for word, p in probs.items():
            out[WORDS.index(word)] = p
        return out

    def __call__(self, tokens, **kwargs):
        batch, pos = tokens.shape
        logits = torch.empty(batch, pos, len(WORDS))
        for b in range(batch):
            for p in range(pos):
                words = [WORDS[i] for i in tokens[b, 1 : p + 1].tolist()]
                logits[b, p] = self.distribution(words).log()
        return logits


@pytest.fixture
def stub():
    return StubModel({
        "q1": {"new": 0.6, "old": 0.3},  # new wins
        "q2": {"new": 0.2, "old": 0.5},  # true wins
        "q3": {"new": 0.45, "old": 0.45},  # a tie is not a win
        "q4": {"new": 0.5, "old": 0.1},  # new wins
        "x in": {"new": 0.5, "rome": 0.3},
        "x in new": {"york": 0.4, "paris": 0.5},
        "y is": {"a": 0.7, "b": 0.1},
        "y is a": {"b": 0.9},
    })


def test_efficacy_counts_exactly_the_prompts_where_new_beats_true(stub):
    prompts = ["q1", "q2", "q3", "q4"]
    assert efficacy_score(stub, prompts, "new", "old") == pytest.approx(0.5)
    assert efficacy_magnitude(stub, prompts, "new", "old") == pytest.approx((0.3 - 0.3 + 0.0 + 0.4) / 4, abs=1e-6)
    # neighbourhood: p(true) > p(new), ties again not counted
    assert neighborhood_score(stub, prompts, "new", "old") == pytest.approx(0.25)


def test_multi_token_target_probability_is_the_product_of_token_probabilities(stub):
    scores = score_continuations(stub, ["x in", "x in"], ["new york", "rome"])
    assert scores.prob.tolist() == pytest.approx([0.5 * 0.4, 0.3], abs=1e-6)
    assert scores.n_tokens.tolist() == [2.0, 1.0]
    # compared by mean log-prob (ROME): sqrt(0.2) ≈ 0.447 > 0.3; by product 0.2 < 0.3
    assert efficacy_score(stub, ["x in"], "new york", "rome") == 1.0
    assert efficacy_score(stub, ["x in"], "new york", "rome", compare="prob") == 0.0


def test_token_accuracy_is_the_fraction_of_top1_target_tokens(stub):
    # "new" is top-1 after "x in" (0.5), "york" is not after "x in new" (paris 0.5 > 0.4)
    assert token_accuracy(stub, ["x in"], "new york").tolist() == [0.5]
    assert token_accuracy(stub, ["y is"], "a b").tolist() == [1.0]


def test_multihop_accuracy_counts_a_question_if_any_phrasing_is_right(stub):
    questions = [["x in", "y is"], ["x in", "q2"]]
    answers = [["a"], ["rome", "a"]]  # q1: "y is" -> a; q2: neither phrasing emits rome / a first
    assert multihop_accuracy(stub, questions, answers) == pytest.approx(0.5)


def test_entropy_of_a_uniform_five_way_choice_is_log2_5():
    assert float(option_entropy(torch.full((5,), 0.2))) == pytest.approx(math.log2(5))
    assert float(option_entropy(torch.tensor([1.0, 0, 0, 0, 0]))) == 0.0


def test_mcq_choice_is_the_argmax_over_the_option_letters(stub):
    stub.table["e"] = {"C": 0.4, "A": 0.1}
    probs = option_probabilities(stub, ["d", "e"], [list("ABCDE")] * 2)
    assert float(option_entropy(probs[0])) == pytest.approx(math.log2(5), abs=1e-6)  # "d": uniform
    assert int(probs[1].argmax()) == 2
    assert mcq_accuracy(stub, ["e", "e"], [list("ABCDE")] * 2, [2, 0]) == 0.5


def test_counterfact_score_is_the_harmonic_mean():
    assert counterfact_score(1.0, 0.5, 0.5) == pytest.approx(0.6)
    assert counterfact_score(1.0, 0.0, 1.0) == 0.0
    assert math.isnan(counterfact_score(1.0, math.nan, 1.0))


def test_ngram_entropy_weights_bigrams_and_trigrams():
    assert ngram_entropy("a a a a a a") == 0.0
    words = "a b c d e f g h"  # 8 distinct words: 7 distinct bigrams, 6 distinct trigrams
    assert ngram_entropy(words) == pytest.approx((2 / 3 * math.log2(7) + 4 / 3 * math.log2(6)) / 2)


def test_case_rows_use_the_same_definitions(stub):
    stub.table["e"] = {"C": 0.4, "A": 0.1}
    case = CounterFactCase("c1", Rewrite("{}", "q1", "new", "old"), ("q4", "q2"), ("q2", "q3"),
                           multihop=MultiHopProbe(("x in", "q3"), "rome", "new"))
    mcq = MCQCase("m1", Rewrite("{}", "q1", "new", "old"),
                  (MCQQuestion("reliability", "e", tuple("abcde"), tuple("ABCDE"), 2),
                   MCQQuestion("locality", "d", tuple("abcde"), tuple("ABCDE"), 0)))
    row, mrow = evaluate_cases(stub, [case, mcq])
    assert row["efficacy_score"] == 1.0 and row["paraphrase_score"] == 0.5 and row["neighborhood_score"] == 0.5
    assert row["multihop_accuracy"] == 1.0
    assert mrow["mcq_reliability"] == 1.0 and math.isnan(mrow["mcq_portability"])
    assert mrow["option_entropy_locality"] == pytest.approx(math.log2(5), abs=1e-6)
    summary = aggregate([row])
    assert summary["counterfact_score"] == pytest.approx(counterfact_score(1.0, 0.5, 0.5))


def test_counterfact_scores_magnitude_is_the_product_as_in_case_rows(stub):
    """Review defect: ``counterfact_scores`` exponentiated the mean per-token log-prob while
    ``evaluate_cases`` / ``efficacy_magnitude`` use the product; one name, one definition."""
    from interp_edit.evaluation.counterfact import counterfact_scores
    from interp_edit.prompts import CounterFactRecord

    record = CounterFactRecord(0, "{} in", "x", "r", "rome", "new york", (), (), (), ())
    [row] = counterfact_scores(stub, [record])
    want = 0.5 * 0.4 - 0.3  # p(new york) = 0.5 · 0.4 (product), p(rome) = 0.3
    assert row["efficacy_magnitude"] == pytest.approx(want, abs=1e-6)
    assert efficacy_magnitude(stub, ["x in"], "new york", "rome") == pytest.approx(want, abs=1e-6)
    case = CounterFactCase("c", Rewrite("{} in", "x", "new york", "rome"), (), ())
    assert evaluate_cases(stub, [case])[0]["efficacy_magnitude"] == pytest.approx(want, abs=1e-6)
    assert row["efficacy"] == 1.0  # compared by mean log-prob: sqrt(0.2) > 0.3


def test_bad_arguments_are_named_before_any_forward(stub):
    """Review defects: a bad ``compare`` was refused only after the forward, a single prompt
    string was scored character by character, and ``max_new_tokens`` < 1 was silently empty."""
    from interp_edit.errors import InvalidArgumentError
    from interp_edit.evaluation.metrics import corpus_perplexity, greedy_generate, greedy_token_ids

    calls = []
    forward = stub.__call__
    stub.__class__ = type("Counting", (StubModel,), {"__call__": lambda self, *a, **k: calls.append(1) or forward(*a, **k)})
    case = CounterFactCase("c", Rewrite("{}", "q1", "new", "old"), ("q4",), ("q2",))
    bad = [
        ("compare", lambda: evaluate_cases(stub, [case], compare="sum")),
        ("compare", lambda: efficacy_score(stub, ["q1"], "new", "old", compare="sum")),
        ("compare", lambda: neighborhood_score(stub, ["q1"], "new", "old", compare="sum")),
        ("max_new_tokens", lambda: evaluate_cases(stub, [case], fluency=True, max_new_tokens=0)),
        ("max_new_tokens", lambda: greedy_token_ids(stub, ["q1"], max_new_tokens=-1)),
        ("cases", lambda: evaluate_cases(stub, case)),
        ("prompts", lambda: efficacy_score(stub, "q1", "new", "old")),
        ("prompts", lambda: token_accuracy(stub, "q1", "new")),
        ("prompts", lambda: greedy_generate(stub, "q1", 2)),
        ("texts", lambda: corpus_perplexity(stub, "q1 new")),
        ("target_new", lambda: efficacy_score(stub, ["q1"], None, "old")),
        ("answers", lambda: multihop_accuracy(stub, [["x in"]], [])),
        ("weights", lambda: ngram_entropy("a b c d", ns=(2, 3), weights=(1.0,))),
    ]
    for name, call in bad:
        with pytest.raises(InvalidArgumentError, match=name):
            call()
    assert calls == []
    assert evaluate_cases(stub, []) == [] and aggregate([]) == {}
