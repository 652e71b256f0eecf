"""Collapse tracking in sequential experiments: the held-out perplexity (batched) against a
per-text computation written here; the runner records it on the unedited model and at every
checkpoint (checked by re-applying the saved edits and measuring again); held-out texts are
validated before any edit; the figure draws the perplexity and unedited-fact accuracy curves;
and the sequential numbers docs/evaluation.md states."""

from __future__ import annotations

import doctest
import importlib
import inspect
import math

import pytest
import torch

from interp_edit.data import load_dataset
from interp_edit.errors import InvalidArgumentError
from interp_edit.evaluation import run_experiment
from interp_edit.evaluation.metrics import corpus_perplexity

runner = importlib.import_module("interp_edit.evaluation.runner")
viz = importlib.import_module("interp_edit.viz.experiments")
pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def reference_perplexity(model, texts) -> float:
    """Text by text, no padding: BOS + tokens, every token after BOS scored by the log-softmax
    of the position before it; exp of the mean negative log-likelihood over all tokens."""
    tok = model.tokenizer
    total, count = 0.0, 0
    for text in texts:
        ids = [tok.bos_token_id] + tok.encode(text, add_special_tokens=False)
        logits = model(torch.tensor([ids], device=model.cfg.device))[0].double()
        logprobs = torch.log_softmax(logits, dim=-1)
        for pos in range(1, len(ids)):
            total -= float(logprobs[pos - 1, ids[pos]])
            count += 1
    return math.exp(total / count)


TEXTS = ["Talvik Corlo was born in Karsa.", "The", "Beldel Kordor piano Belmaric Karsa", "Karsa is a city in Dalvia. "
         "Talvik Corlo speaks Belmaric.", "Karsa Karsa Karsa harp harp"]


@pytest.mark.parametrize("batch_size", [32, 2])
def test_perplexity_equals_a_per_text_computation(toy_model, batch_size):
    assert corpus_perplexity(toy_model, TEXTS, batch_size=batch_size) == pytest.approx(reference_perplexity(toy_model, TEXTS),
                                                                                        rel=1e-5)
    assert corpus_perplexity(toy_model, TEXTS[:1]) == pytest.approx(reference_perplexity(toy_model, TEXTS[:1]), rel=1e-5)


def test_the_heldout_corpus_is_fixed_and_not_the_training_stream(toy_world):
    from interp_edit.toyworld.corpus import CorpusSampler

    texts = runner.heldout_corpus(toy_world)
    assert len(texts) == runner.HELDOUT_TEXTS == 32 and texts == runner.heldout_corpus(toy_world)
    for seed in (0, 7919):  # training's default seed, the statistics' seed
        sampler = CorpusSampler(toy_world, seed=seed)
        assert texts != [sampler.sample() for _ in range(32)]


def _apply_saved_edits(model, folder, n_batches):
    from interp_edit.editing import Edit

    return [Edit.load(folder / "edits" / f"batch_{b:05d}.safetensors").apply(model) for b in range(n_batches)]


def test_sequential_runs_record_heldout_perplexity(toy_model, toy_world, tmp_path):
    data = load_dataset("toyworld-counterfact", world=toy_world)
    texts = runner.heldout_corpus(toy_world)
    res = run_experiment(toy_model, data, "memit", n=4, batch_size=1, sequential=True, eval_every=2, unrelated=5,
                         fluency=False, progress=False, out=tmp_path)
    assert res.settings["heldout"]["n_texts"] == 32
    assert res.baseline["heldout_perplexity"] == pytest.approx(reference_perplexity(toy_model, texts), rel=1e-5)
    points = res.checkpoints
    assert [p["n_edited"] for p in points] == [2, 4]
    for point in points:  # the model with that many edits applied, measured again here
        applied = _apply_saved_edits(toy_model, tmp_path, point["n_edited"])
        try:
            assert point["heldout_perplexity"] == pytest.approx(reference_perplexity(toy_model, texts), rel=1e-5)
        finally:
            for edit in reversed(applied):
                edit.undo(toy_model)
    assert points[-1]["heldout_perplexity"] != pytest.approx(res.baseline["heldout_perplexity"], rel=1e-4)
    assert "unrelated_accuracy" in points[-1] and "heldout_perplexity" in res.summary()
    # the figure: perplexity and unedited-fact accuracy vs number of edits, next to the metrics
    fig = res.plot()
    curves = {t.name: t for t in fig.data}
    assert list(curves["heldout_perplexity"].x) == [0, 2, 4]
    assert list(curves["heldout_perplexity"].y) == [res.baseline["heldout_perplexity"], *(p["heldout_perplexity"] for p in points)]
    assert list(curves["unrelated_accuracy"].y)[-1] == points[-1]["unrelated_accuracy"]
    assert "efficacy_score" in curves
    titles = [a.text for a in fig.layout.annotations]
    assert "held-out perplexity" in titles and "unedited-fact accuracy" in titles
    # one checkpoint: bars of the metrics, and the two collapse curves beside them
    one = run_experiment(toy_model, data, "memit", n=2, batch_size=2, sequential=True, unrelated=5, fluency=False,
                         progress=False)
    fig = one.plot()
    assert any(t.type == "bar" for t in fig.data)
    assert [list(t.x) for t in fig.data if t.name == "heldout_perplexity"] == [[0, 2]]


def test_independent_runs_and_foreign_datasets_have_no_heldout_perplexity(toy_model, toy_world):
    data = load_dataset("toyworld-counterfact", world=toy_world)
    common = {"unrelated": 3, "fluency": False, "progress": False, "config": {"steps": 5}}
    independent = run_experiment(toy_model, data, "ft", n=2, **common)
    assert "heldout_perplexity" not in independent.final_metrics() and "heldout" not in independent.settings
    assert viz.collapse_panels(independent) == []
    foreign = type(data)(data.name, data.format, data.cases, data.source)  # no world: like a file
    assert foreign.world is None
    seq = run_experiment(toy_model, foreign, "ft", n=2, sequential=True, **common)
    assert "heldout_perplexity" not in seq.final_metrics() and "heldout_perplexity" not in seq.baseline
    given = ["Talvik Corlo was born in Karsa.", "Karsa is a city in Dalvia."]
    seq = run_experiment(toy_model, foreign, "ft", n=2, sequential=True, heldout_texts=given, **common)
    assert seq.settings["heldout"]["n_texts"] == 2
    assert seq.baseline["heldout_perplexity"] == pytest.approx(reference_perplexity(toy_model, given), rel=1e-5)
    assert "heldout_perplexity" in seq.final_metrics()


@pytest.mark.parametrize("texts", ["one string", [], ["ok", ""], ["ok", 3], ["word " * 5000], 7])
def test_bad_heldout_texts_are_refused_before_any_edit(toy_model, monkeypatch, texts):
    """Refused up front: before the baseline is measured, let alone an edit made."""
    def no_work(*args, **kwargs):
        raise AssertionError("the experiment started")

    monkeypatch.setattr(runner._Session, "edit", no_work)
    monkeypatch.setattr(runner, "evaluate_cases", no_work)
    monkeypatch.setattr(runner, "unrelated_metrics", no_work)
    with pytest.raises(InvalidArgumentError, match="heldout_texts"):
        run_experiment(toy_model, "toyworld-counterfact", "ft", n=1, unrelated=1, fluency=False, progress=False,
                       sequential=True, heldout_texts=texts)


@pytest.mark.parametrize("obj", [corpus_perplexity, runner.heldout_corpus, viz.collapse_panels], ids=lambda o: o.__name__)
def test_docstring_examples_run(obj, toy_model, toy_world, tmp_path, monkeypatch):
    import interp_edit

    monkeypatch.chdir(tmp_path)
    names = {n: getattr(interp_edit, n) for n in interp_edit.__all__ if n != "__version__"}
    ns = {**names, **vars(inspect.getmodule(obj)), "torch": torch, "model": toy_model, "world": toy_world}
    test = doctest.DocTestParser().get_doctest(inspect.getdoc(obj), ns, obj.__name__, None, 0)
    run = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    run.run(test, out=report.append)
    assert run.failures == 0, "".join(report)


# --- the sequential numbers docs/evaluation.md states -----------------------------------------

#: method: gen / teacher-forced finals (as in test_generation_protocol.KEYS), then held-out
#: perplexity and unedited-fact accuracy at 0, 10, …, 50 edits
SEQUENTIAL = {
    "rome": ((0.98, 0.96, 0.96, 0.992, 0.96, 0.96, 0.876, 0.577),
             (2.775, 3.021, 3.148, 3.221, 3.427, 3.548), (1.0, 0.95, 0.8, 0.65, 0.7, 0.55)),
    "memit": ((1.0, 0.98, 0.98, 1.0, 0.98, 0.98, 0.926, 0.691),
              (2.775, 2.998, 3.097, 3.139, 3.180, 3.349), (1.0, 0.9, 0.9, 0.9, 0.85, 0.6)),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(SEQUENTIAL))
def test_documented_sequential_numbers(toy_model, method):
    from test_generation_protocol import KEYS

    finals, perplexity, accuracy = SEQUENTIAL[method]
    res = run_experiment(toy_model, "toyworld-counterfact", method, n=50, sequential=True, eval_every=10, unrelated=20,
                         fluency=False, progress=False, protocol="both")
    m = res.final_metrics()
    assert [m[k] for k in KEYS] == pytest.approx(list(finals), abs=0.011)
    curve = [res.baseline["heldout_perplexity"]] + [p["heldout_perplexity"] for p in res.checkpoints]
    assert curve == pytest.approx(list(perplexity), abs=0.002)
    acc = [res.baseline["unrelated_accuracy"]] + [p["unrelated_accuracy"] for p in res.checkpoints]
    assert acc == pytest.approx(list(accuracy), abs=0.051)
