"""The generation protocol: edits judged from greedy decoding (exact / contains match) instead
of teacher-forced log-probs. Batched greedy decoding is checked against a plain per-prompt loop
written here (``model(tokens)`` → argmax appended); the judging rules against hand-made strings
and an independent word-based judge; the runner's ``protocol`` plumbing (columns, settings,
resume, validation before any edit, CLI); and the numbers docs/evaluation.md states."""

from __future__ import annotations

import doctest
import importlib
import inspect
import json
import re

import pytest
import torch

from interp_edit.data import load_dataset
from interp_edit.data.cases import CounterFactCase, Rewrite
from interp_edit.errors import ExperimentError, InvalidArgumentError
from interp_edit.evaluation import evaluate_cases, run_experiment
from interp_edit.evaluation import generation as gen

runner = importlib.import_module("interp_edit.evaluation.runner")
pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["Talvik Corlo was born in", "Beldel Kordor", "The", "Talvik Corlo speaks the language of", "Karsa is a city in",
           "Beldel Kordor plays the"]


@torch.no_grad()
def reference_greedy(model, prompt: str, n: int) -> list[int]:
    """One prompt, one forward per step on its own (no padding, no batching): BOS + prompt, the
    argmax of the last position appended, stopping at end-of-text or the context's end."""
    tok = model.tokenizer
    ids = [tok.bos_token_id] + tok.encode(prompt, add_special_tokens=False)
    start = len(ids)
    while len(ids) - start < n and len(ids) < model.cfg.n_ctx:
        logits = model(torch.tensor([ids], device=model.cfg.device))
        nxt = int(logits[0, -1].argmax())
        if nxt == tok.eos_token_id:
            break
        ids.append(nxt)
    return ids[start:]


def reference_words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


@pytest.mark.parametrize(("batch_size", "n"), [(64, 10), (2, 10), (64, 3), (3, 1)])
def test_batched_greedy_decoding_equals_a_per_prompt_loop(toy_model, batch_size, n):
    """n=10: every row stops at end-of-text, at different steps; n=3 / 1: some rows are cut."""
    from interp_edit.evaluation.metrics import greedy_token_ids

    got = greedy_token_ids(toy_model, PROMPTS, n, batch_size=batch_size)
    want = [reference_greedy(toy_model, p, n) for p in PROMPTS]
    assert got == want
    assert n == 10 or max(len(w) for w in want) == n
    texts = gen.greedy_continuations(toy_model, PROMPTS, gen_tokens=n, batch_size=batch_size)
    assert texts == [toy_model.tokenizer.decode(w) for w in want]
    assert len({len(w) for w in want} | {len(toy_model.tokenizer.encode(p)) for p in PROMPTS}) > 1  # ragged batch
    assert gen.greedy_continuations(toy_model, PROMPTS, gen_tokens=n, batch_size=batch_size) == texts  # deterministic


def test_greedy_generate_keeps_its_output(toy_model):
    """The fluency generations (prompt included) are the prompt followed by the same tokens."""
    from interp_edit.evaluation.metrics import greedy_generate

    tok = toy_model.tokenizer
    out = greedy_generate(toy_model, PROMPTS[:3], 6)
    assert out == [tok.decode(tok.encode(p, add_special_tokens=False) + reference_greedy(toy_model, p, 6)) for p in PROMPTS[:3]]


@pytest.mark.parametrize(("text", "answers", "exact", "contains"), [
    (" Karsa, a town", "Karsa", True, True),
    ("\n  Karsa", ["Karsa"], True, True),
    (" the town of Karsa.", "Karsa", False, True),
    (" Karsan and more", "Karsa", False, False),
    (" xKarsa", "Karsa", False, False),
    (" Veltra or Karsa", ["Karsa", "Veltra"], True, True),
    (" Veltra or Karsa", ["Osmark"], False, False),
    (" New York City", "New York", True, True),
    ("", "Karsa", False, False),
])
def test_exact_and_contains_rules(text, answers, exact, contains):
    assert gen.exact_match(text, answers) is exact
    assert gen.contains_match(text, answers) is contains


def _case(prompt: str, target_new: str, target_true: str, paraphrases=(), neighbours=()) -> CounterFactCase:
    return CounterFactCase("probe", Rewrite(prompt.replace("Talvik Corlo", "{}"), "Talvik Corlo", target_new, target_true),
                           tuple(paraphrases), tuple(neighbours))


def test_generation_rows_judge_what_the_model_generates(toy_model):
    """Targets chosen from the model's own generation (by the reference loop): the first word
    is an exact and a contained match, a later word only a contained one, a word it does not
    say neither."""
    tok = toy_model.tokenizer
    prompt = "Talvik Corlo"  # a profile card: several attributes, then end-of-text
    words = reference_words(tok.decode(reference_greedy(toy_model, prompt, 8)))
    assert len(words) >= 3, words
    first, later = words[0], next(w for w in words[1:] if w != words[0])
    neighbour = "Beldel Kordor"
    n_first = reference_words(tok.decode(reference_greedy(toy_model, neighbour, 8)))[0]
    absent = next(w for w in ("Osmark", "Veltra", "Briva", "Calden", "Dunmor") if w not in words and w != n_first)
    cases = [_case(prompt, first, absent, paraphrases=[prompt, neighbour], neighbours=[neighbour]),
             _case(prompt, later, n_first, neighbours=[neighbour, prompt]),
             _case(prompt, absent, later)]
    rows = gen.generation_rows(toy_model, cases, gen_tokens=8)
    assert rows[0]["gen_efficacy_exact"] == 1.0 and rows[0]["gen_efficacy_contains"] == 1.0
    # the paraphrase `neighbour` continues with n_first; first is contained there only if the model says it
    contained = float(first in reference_words(tok.decode(reference_greedy(toy_model, neighbour, 8))))
    assert rows[0]["gen_paraphrase_exact"] == pytest.approx((1.0 + float(n_first == first)) / 2)
    assert rows[0]["gen_paraphrase_contains"] == pytest.approx((1.0 + contained) / 2)
    assert rows[0]["gen_neighborhood_exact"] == float(absent == n_first) == 0.0
    assert rows[1]["gen_efficacy_exact"] == 0.0 and rows[1]["gen_efficacy_contains"] == 1.0
    assert rows[1]["gen_neighborhood_exact"] == pytest.approx((1.0 + float(first == n_first)) / 2)
    assert rows[2]["gen_efficacy_exact"] == 0.0 and rows[2]["gen_efficacy_contains"] == 0.0
    assert rows[2]["gen_paraphrase_exact"] != rows[2]["gen_paraphrase_exact"]  # no paraphrases: NaN


def test_generation_rows_match_an_independent_judge_on_toy_cases(toy_model, toy_world):
    data = load_dataset("toyworld-counterfact", world=toy_world)
    cases = [data[i] for i in range(0, 60, 10)]
    rows = gen.generation_rows(toy_model, cases, gen_tokens=5)
    tok = toy_model.tokenizer
    for case, row in zip(cases, rows, strict=True):
        r = case.rewrite
        for kind, prompts, answer in (("efficacy", [r.text], r.target_new), ("paraphrase", case.paraphrase_prompts, r.target_new),
                                      ("neighborhood", case.neighborhood_prompts, r.target_true)):
            words = [reference_words(tok.decode(reference_greedy(toy_model, p, 5))) for p in prompts]
            assert row[f"gen_{kind}_exact"] == pytest.approx(sum(w[:1] == [answer] for w in words) / len(words))
            assert row[f"gen_{kind}_contains"] == pytest.approx(sum(answer in w for w in words) / len(words))
    # the unedited model says the true objects
    assert all(row["gen_neighborhood_exact"] == 1.0 and row["gen_efficacy_contains"] == 0.0 for row in rows)


def test_evaluate_cases_protocols(toy_model, toy_world):
    data = load_dataset("toyworld-counterfact", world=toy_world)
    cases = [data[0], data[1]]
    tf = evaluate_cases(toy_model, cases)
    both = evaluate_cases(toy_model, cases, protocol="both", gen_tokens=4)
    only = evaluate_cases(toy_model, cases, protocol="generation", gen_tokens=4)
    assert not any(k.startswith("gen_") for k in tf[0])
    assert {k: v for k, v in both[0].items() if not k.startswith("gen_")} == tf[0]
    assert {k: v for k, v in both[0].items() if k.startswith("gen_") or k == "case_id"} == only[0]
    assert "efficacy_score" not in only[0] and "gen_neighborhood_contains" in only[0]


@pytest.mark.parametrize(("kwargs", "name"), [({"protocol": "greedy"}, "protocol"), ({"protocol": None}, "protocol"),
                                              ({"gen_tokens": 0}, "gen_tokens"), ({"gen_tokens": True}, "gen_tokens"),
                                              ({"gen_tokens": 2.0}, "gen_tokens")])
def test_bad_arguments_are_refused_before_any_edit(toy_model, monkeypatch, kwargs, name):
    """Refused up front: before the baseline is measured, let alone an edit made."""
    def no_work(*args, **kwargs):
        raise AssertionError("the experiment started")

    monkeypatch.setattr(runner._Session, "edit", no_work)
    monkeypatch.setattr(runner, "evaluate_cases", no_work)
    monkeypatch.setattr(runner, "unrelated_metrics", no_work)
    with pytest.raises(InvalidArgumentError, match=name):
        run_experiment(toy_model, "toyworld-counterfact", "ft", n=1, unrelated=1, fluency=False, progress=False, **kwargs)


FT = {"config": {"steps": 5}, "fluency": False, "progress": False, "unrelated": 3, "seed": 1}


def same_metrics(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], nan_ok=True) for k in a)


def test_run_experiment_both_puts_both_sets_in_one_table(toy_model, tmp_path):
    tf = run_experiment(toy_model, "toyworld-counterfact", "ft", n=2, **FT)
    both = run_experiment(toy_model, "toyworld-counterfact", "ft", n=2, protocol="both", gen_tokens=4, out=tmp_path / "b", **FT)
    only = run_experiment(toy_model, "toyworld-counterfact", "ft", n=2, protocol="generation", gen_tokens=4, **FT)
    assert tf.settings["protocol"] == "teacher_forced" and "gen_tokens" not in tf.settings
    assert both.settings["protocol"] == "both" and both.settings["gen_tokens"] == 4
    assert not any(k.startswith("gen_") for k in tf.final_metrics())
    for key, value in tf.final_metrics().items():  # teacher-forced numbers unchanged by the protocol
        assert both.final_metrics()[key] == pytest.approx(value, nan_ok=True), key
    assert "efficacy_score" not in only.final_metrics() and "efficacy_score" not in only.baseline
    for key in ("gen_efficacy_exact", "gen_efficacy_contains", "gen_paraphrase_exact", "gen_paraphrase_contains",
                "gen_neighborhood_exact"):
        assert key in both.summary() and key in both.baseline and key in only.final_metrics()
        assert both.final_metrics()[key] == pytest.approx(only.final_metrics()[key])
        assert key in both._repr_html_() and key in both.table()
    assert "efficacy_score" in both._repr_html_()
    assert "gen_efficacy_exact" in repr(only)
    # the protocol is part of the settings: no resuming into another protocol
    with pytest.raises(ExperimentError, match="protocol"):
        run_experiment(toy_model, "toyworld-counterfact", "ft", n=2, protocol="teacher_forced", out=tmp_path / "b", **FT)
    with pytest.raises(ExperimentError, match="gen_tokens"):
        run_experiment(toy_model, "toyworld-counterfact", "ft", n=2, protocol="both", gen_tokens=5, out=tmp_path / "b", **FT)
    again = run_experiment(toy_model, "toyworld-counterfact", "ft", n=2, protocol="both", gen_tokens=4, out=tmp_path / "b", **FT)
    assert same_metrics(again.final_metrics(), both.final_metrics())


def test_a_file_without_a_protocol_resumes_as_teacher_forced(toy_model, tmp_path):
    """Results written before protocols existed (no 'protocol' setting) were teacher forced."""
    first = run_experiment(toy_model, "toyworld-counterfact", "ft", n=2, out=tmp_path, **FT)
    path = tmp_path / runner.RESULTS_FILE
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    del lines[0]["protocol"]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    again = run_experiment(toy_model, "toyworld-counterfact", "ft", n=2, out=tmp_path, **FT)
    assert same_metrics(again.final_metrics(), first.final_metrics())
    with pytest.raises(ExperimentError, match="protocol"):
        run_experiment(toy_model, "toyworld-counterfact", "ft", n=2, out=tmp_path, protocol="generation", **FT)


def test_cli_evaluate_protocol_flag(capsys):
    from interp_edit.cli import main

    args = ["evaluate", "--method", "ft", "--n", "1", "--unrelated", "2", "--no-fluency", "--quiet", "--json",
            "--config", '{"steps": 5}', "--protocol", "generation", "--gen-tokens", "3"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "gen_efficacy_exact" in summary and "efficacy_score" not in summary


NEW_NAMES = [importlib.import_module("interp_edit.evaluation.metrics").greedy_token_ids, gen.check_protocol, gen.check_gen_tokens, gen.uses_teacher_forcing, gen.uses_generation, gen.exact_match,
             gen.contains_match, gen.greedy_continuations, gen.generation_rows]


@pytest.mark.parametrize("obj", NEW_NAMES, ids=lambda o: o.__name__)
def test_docstring_examples_run(obj, toy_model, toy_world, tmp_path, monkeypatch):
    import interp_edit

    monkeypatch.chdir(tmp_path)
    names = {n: getattr(interp_edit, n) for n in interp_edit.__all__ if n != "__version__"}
    ns = {**names, **vars(inspect.getmodule(obj)), "torch": torch, "model": toy_model, "world": toy_world}
    doc = inspect.getdoc(obj)
    assert ">>>" in doc
    test = doctest.DocTestParser().get_doctest(doc, ns, obj.__name__, None, 0)
    run = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    run.run(test, out=report.append)
    assert run.failures == 0, "".join(report)


# --- the numbers docs/evaluation.md states ("Teacher forcing vs generation") -------------------

#: independent runs; the sequential rows are asserted in tests/test_collapse_tracking.py
DOCUMENTED = {  # method: (efficacy_score, gen_efficacy_exact, gen_efficacy_contains, paraphrase_score,
                #          gen_paraphrase_exact, gen_paraphrase_contains, neighborhood_score, gen_neighborhood_exact)
    "rome": (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.970, 0.968),
    "memit": (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.976, 0.976),
}
KEYS = ("efficacy_score", "gen_efficacy_exact", "gen_efficacy_contains", "paraphrase_score", "gen_paraphrase_exact",
        "gen_paraphrase_contains", "neighborhood_score", "gen_neighborhood_exact")


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(DOCUMENTED))
def test_documented_teacher_forced_vs_generation_numbers(toy_model, method):
    res = run_experiment(toy_model, "toyworld-counterfact", method, n=50, unrelated=20, fluency=False, progress=False,
                         protocol="both")
    m = res.final_metrics()
    assert [m[k] for k in KEYS] == pytest.approx(list(DOCUMENTED[method]), abs=0.011)
