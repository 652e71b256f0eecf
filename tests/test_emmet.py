"""EMMET (batched ROME with equality constraints): the update equals the paper's formula
computed here in plain torch (keys read with run_with_cache, C₀ and D inverted as the authors'
code does), the equality constraints hold when the regulariser is 0, a batch of one is ROME's
closed form, the toy-world facts are edited, and bad input is refused before any compute."""

from __future__ import annotations

import pytest
import torch
from model_state import assert_unchanged, refused_before_any_forward, snapshot

from interp_edit.editing import EditRequest, rome
from interp_edit.editing.methods.emmet import EMMETConfig, emmet
from interp_edit.errors import EditConfigError, EditRequestError
from interp_edit.evaluation.counterfact import counterfact_scores, mean_scores
from interp_edit.statistics.keys import key_statistics

#: small models: one thread is faster than two on this 2-core machine shared with other jobs
pytestmark = pytest.mark.usefixtures("one_thread")
W_OUT = "blocks.{}.mlp.W_out"
#: short settings for the structural checks (quality is checked on the toy preset)
FAST = dict(steps=6, n_prefixes=0, stats_samples=120, stats_batch_size=16)


def _corpus(n: int = 120) -> list[str]:
    from interp_edit.toyworld import load_world
    from interp_edit.toyworld.corpus import CorpusSampler

    sampler = CorpusSampler(load_world(), seed=11)
    return [sampler.sample() for _ in range(n)]


@pytest.fixture(scope="module")
def corpus():
    return _corpus()


def _distinct_subjects(records, n):
    out, seen = [], set()
    for r in records:
        if r.subject not in seen:
            seen.add(r.subject)
            out.append(r)
        if len(out) == n:
            return out
    raise AssertionError("not enough subjects")


def _bare_key_and_resid(model, record, layer):
    """The MLP key (``hook_post``) and the residual after ``layer`` at the subject's last token
    of the bare prompt, read with run_with_cache and the tokenizer's offsets (no toolkit code)."""
    text = record.prompt.format(record.subject)
    lo = record.prompt.index("{}")
    enc = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    last = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < lo + len(record.subject) and b > lo][-1] + 1
    names = [f"blocks.{layer}.mlp.hook_post", f"blocks.{layer}.hook_resid_post"]
    with torch.no_grad():
        _, cache = model.run_with_cache(model.to_tokens(text), names_filter=lambda n: n in names)
    return cache[names[0]][0, last].double(), cache[names[1]][0, last].double()


def _stats(model, layer, corpus):
    return key_statistics(model, [layer], corpus=corpus, n_samples=120, batch_size=16, progress=False)


def test_update_equals_the_formula_in_plain_torch(tiny_model, person_records, corpus):
    layer, lam, mu, nu = 1, 3.0, 0.1, 0.5
    records = _distinct_subjects(person_records, 4)
    stats = _stats(tiny_model, layer, corpus)
    before = snapshot(tiny_model)
    e = emmet(tiny_model, records, layers=(layer,), mom2_update_weight=lam, emmet_lambda=mu, update_norm_lambda=nu,
              stats=stats, **FAST)
    assert_unchanged(tiny_model, before, no_edits=True)
    keys = torch.stack([_bare_key_and_resid(tiny_model, r, layer)[0] for r in records], 1)  # [d_mlp, B]
    residuals = e.deltas[W_OUT.format(layer)].right.double()  # R: targets minus current outputs [B, d_model]
    c0 = lam * stats[layer].moment.double() + nu * torch.eye(keys.shape[0], dtype=torch.float64)
    c0_inv = torch.inverse(c0)
    d = keys.T @ c0_inv @ keys + mu * torch.eye(keys.shape[1], dtype=torch.float64)
    expected = c0_inv @ keys @ torch.inverse(d) @ residuals
    got = e.delta_matrix(W_OUT.format(layer), tiny_model).double()
    assert (got - expected).norm() / expected.norm() < 1e-5
    assert e.layers() == [layer] and e.summary()[0]["rank"] == len(records)


def test_equality_constraints_hold_without_the_regulariser(tiny_model, person_records, corpus):
    layer = 1
    records = _distinct_subjects(person_records, 5)
    stats = _stats(tiny_model, layer, corpus)
    exact = emmet(tiny_model, records, layers=(layer,), emmet_lambda=0.0, stats=stats, **FAST)
    soft = emmet(tiny_model, records, layers=(layer,), emmet_lambda=1.0, stats=stats, **FAST)
    plain = [_bare_key_and_resid(tiny_model, r, layer)[1] for r in records]
    residuals = exact.deltas[W_OUT.format(layer)].right.double()
    with exact.applied(tiny_model):  # W' k_i = W k_i + r_i: the residual after the layer reaches z_i
        reached = [_bare_key_and_resid(tiny_model, r, layer)[1] for r in records]
    errors = [float((now - old - r).norm() / r.norm()) for now, old, r in zip(reached, plain, residuals, strict=True)]
    assert max(errors) < 1e-4, errors
    with soft.applied(tiny_model):  # μ > 0 trades the constraints for a smaller update
        reached = [_bare_key_and_resid(tiny_model, r, layer)[1] for r in records]
    errors = [float((now - old - r).norm() / r.norm()) for now, old, r in zip(reached, plain, residuals, strict=True)]
    assert max(errors) > 1e-2


def test_a_batch_of_one_is_romes_closed_form(tiny_model, person_records, corpus):
    """One request: EMMET's ΔW is ROME's (r-ROME, no context prefixes, the same target
    optimisation: no weight decay and no norm clamp, which ROME scales by the MLP output and
    EMMET by the residual), whatever μ and λ."""
    layer = 1
    stats = _stats(tiny_model, layer, corpus)
    same = dict(steps=8, lr=0.5, weight_decay=0.0, clamp_norm_factor=1000.0, kl_factor=0.0625, n_prefixes=0,
                kl_direction="original||edited", step_count="updates", stats_samples=120, stats_batch_size=16)
    one = person_records[:1]
    ours = emmet(tiny_model, one, layers=(layer,), emmet_lambda=5.0, mom2_update_weight=7.0, stats=stats, **same)
    theirs = rome(tiny_model, one, layer=layer, variant="r-rome", prefix_lengths=None, stats=stats, **same)
    name = W_OUT.format(layer)
    a, b = ours.delta_matrix(name, tiny_model).double(), theirs.delta_matrix(name, tiny_model).double()
    assert (a - b).norm() / b.norm() < 1e-4


@pytest.mark.slow  # a quality number on the toy world (the README says which tests are slow)
def test_toy_world_facts_are_edited(toy_model, person_records):
    records = person_records[100:150]
    result = emmet(toy_model, records)  # the toy-world preset: layer 0, λ 100, μ 0.1
    assert result.config["preset"] == "toyworld" and result.layers() == [0]
    with result.applied(toy_model):
        scores = mean_scores(counterfact_scores(toy_model, records))
    # docs/editing.md: efficacy 0.980, paraphrase 0.976, neighbourhood 0.877 (one batch of 50)
    assert scores["efficacy"] == pytest.approx(0.980, abs=0.021)
    assert scores["paraphrase"] == pytest.approx(0.976, abs=0.021)
    assert scores["neighborhood"] == pytest.approx(0.877, abs=0.021)


@pytest.mark.parametrize("fields, match", [
    (dict(emmet_lambda=-0.1), "emmet_lambda"),
    (dict(update_norm_lambda=-1.0), "update_norm_lambda"),
    (dict(mom2_update_weight=0.0, update_norm_lambda=0.0), "both 0"),
    (dict(layers=(9,)), "out of range"),
    (dict(layers=()), "layers"),
    (dict(emmet_lambda=float("nan")), "emmet_lambda"),
    (dict(bogus=1), "bogus"),
])
def test_bad_config_is_refused_before_any_compute(toy_model, person_records, fields, match):
    with refused_before_any_forward(toy_model), pytest.raises(EditConfigError, match=match):
        emmet(toy_model, person_records[:2], **fields)


def test_contradicting_equality_constraints_are_refused_before_any_compute(toy_model):
    # one subject, two relations: one key, two targets; with μ = 0, D is singular
    same_key = [EditRequest("{} was born in", "Talvik Corlo", "Gemmel"), EditRequest("{} plays the", "Talvik Corlo", "harp")]
    with refused_before_any_forward(toy_model), pytest.raises(EditRequestError, match=r"emmet_lambda"):
        emmet(toy_model, same_key, emmet_lambda=0.0)
    with refused_before_any_forward(toy_model), pytest.raises(EditRequestError, match="request 1"):
        emmet(toy_model, [same_key[0], EditRequest("{} plays the", "Nobody Known", "")])


def test_presets_and_registry(toy_model):
    from interp_edit.editing import get_editor

    assert get_editor("emmet").config_class is EMMETConfig
    paper = EMMETConfig.for_model(toy_model, preset="paper")
    assert paper.layers == (0,) and paper.mom2_update_weight == 1000.0 and paper.emmet_lambda == 0.1
    assert EMMETConfig.PRESETS["gpt-j-6B"]["layers"] == (5,)


def test_runs_through_run_experiment(toy_model):
    from interp_edit.evaluation.runner import run_experiment

    res = run_experiment(toy_model, "toyworld-counterfact", "emmet", n=2, batch_size=2, unrelated=5, fluency=False,
                         progress=False, config={"steps": 5})
    assert res.settings["method"] == "emmet" and "efficacy_score" in res.final_metrics()
