"""PMET (joint attention + FFN targets, the FFN target spread over MLP layers with a √ split):
the update equals the paper's / code's formula computed here in plain torch (keys and module
outputs read with run_with_cache, the solves written out), the joint targets are what they
claim (both outputs moved, the reported NLL recomputed with hooks), the toy-world facts are
edited, the edit undoes bit for bit, and bad input is refused before any compute."""

from __future__ import annotations

import math

import pytest
import torch
from model_state import assert_unchanged, refused_before_any_forward, snapshot

from interp_edit.adapter import get_parameter
from interp_edit.editing import EditRequest
from interp_edit.editing.methods.pmet import PMETConfig, optimise_pmet_targets, pmet
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


def _subject_last(model, text, record):
    """The subject's last token in ``model.to_tokens(text)`` (BOS first), from the tokenizer's offsets."""
    lo = record.prompt.index("{}")
    enc = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < lo + len(record.subject) and b > lo][-1] + 1


def _read(model, record, names):
    """Activations ``names`` at the subject's last token of the bare prompt (run_with_cache, no toolkit code)."""
    text = record.prompt.format(record.subject)
    with torch.no_grad():
        _, cache = model.run_with_cache(model.to_tokens(text), names_filter=lambda n: n in names)
    pos = _subject_last(model, text, record)
    return [cache[n][0, pos].reshape(-1).double() for n in names]


def _stats(model, layers, corpus, site="mlp_post"):
    return key_statistics(model, layers, site=site, corpus=corpus, n_samples=120, batch_size=16, progress=False)


@torch.no_grad()
def _add(model, name, matrix):
    param = get_parameter(model, name)  # TransformerLens layout on either backend (the bridge: a view)
    param.data += matrix.reshape(param.shape).to(param.dtype)


def test_update_equals_the_formula_in_plain_torch(tiny_model, person_records, corpus):
    """ΔW_out^l = (λC_l + K_l K_lᵀ)⁻¹ K_l (Z − H^L)/√(layers left), H^L the FFN output of the
    last layer L on the model with the lower layers updated, keys re-read after each write."""
    layers, lam = (0, 1), 3.0
    records = _distinct_subjects(person_records, 4)
    stats = _stats(tiny_model, layers, corpus)
    before = snapshot(tiny_model)
    e = pmet(tiny_model, records, layers=layers, mom2_update_weight=lam, stats=stats, **FAST)
    assert_unchanged(tiny_model, before, no_edits=True)
    key_names = [f"blocks.{layer}.mlp.hook_post" for layer in layers]
    out_name = "blocks.1.hook_mlp_out"  # the FFN output of L = 1

    def keys_and_out(layer):
        reads = [_read(tiny_model, r, [key_names[layer], out_name]) for r in records]
        return torch.stack([k for k, _ in reads], 1), torch.stack([h for _, h in reads])  # [d_mlp, B], [B, d_model]

    def solve(layer, keys, residual):
        c = stats[layer].moment.double()
        return torch.linalg.solve(lam * c + keys @ keys.T, keys) @ residual

    ours = [e.delta_matrix(W_OUT.format(layer), tiny_model).double() for layer in layers]
    keys0, h_base = keys_and_out(0)
    try:
        _add(tiny_model, W_OUT.format(0), ours[0])
        keys1, h_after = keys_and_out(1)
    finally:
        tiny_model.load_state_dict(before)
    # the FFN target z_m: what the last write aims at (its residual is z_m − H^L, divided by √1)
    z = h_after + e.deltas[W_OUT.format(1)].right.double()
    expected0 = solve(0, keys0, (z - h_base) / math.sqrt(2))
    expected1 = solve(1, keys1, z - h_after)
    assert (ours[0] - expected0).norm() / expected0.norm() < 1e-5
    assert (ours[1] - expected1).norm() / expected1.norm() < 1e-5
    assert e.layers() == list(layers) and {row["rank"] for row in e.summary()} == {len(records)}


def test_memit_split_divides_by_the_count(tiny_model, person_records, corpus):
    """The same targets (deterministic), the lowest write's residual (Z − H^L)/√2 vs (Z − H^L)/2."""
    records = _distinct_subjects(person_records, 3)
    stats = _stats(tiny_model, (0, 1), corpus)
    sqrt = pmet(tiny_model, records, layers=(0, 1), stats=stats, **FAST)
    count = pmet(tiny_model, records, layers=(0, 1), stats=stats, residual_split="memit", **FAST)
    a, b = sqrt.deltas[W_OUT.format(0)].right.double(), count.deltas[W_OUT.format(0)].right.double()
    assert torch.allclose(a * math.sqrt(2), b * 2, rtol=1e-5, atol=1e-6)


def test_targets_are_optimised_jointly_at_both_outputs(tiny_model, person_records):
    """δ_a and δ_m move the attention and FFN outputs of L; h is read at the bare prompt; the
    reported NLL is the target's mean NLL with both δ added (recomputed with hooks); each δ
    is clamped to clamp · its own ‖h‖."""
    from interp_edit.editing.requests import prepare_requests

    layer, records = 1, _distinct_subjects(person_records, 2)
    cfg = PMETConfig.for_model(tiny_model, layers=(layer,), steps=8, lr=2.0, clamp_norm_factor=0.3, kl_factor=0.0625)
    treqs = prepare_requests(tiny_model, records, "test")
    t = optimise_pmet_targets(tiny_model, treqs, layer, ("",), cfg)
    names = {"attn": f"blocks.{layer}.hook_attn_out", "mlp": f"blocks.{layer}.hook_mlp_out"}
    for i, record in enumerate(records):
        h_attn, h_mlp = _read(tiny_model, record, [names["attn"], names["mlp"]])
        assert torch.allclose(t.initial["attn"][i].double(), h_attn, atol=1e-5)
        assert torch.allclose(t.initial["mlp"][i].double(), h_mlp, atol=1e-5)
        for kind, h in (("attn", h_attn), ("mlp", h_mlp)):  # each δ reaches its own clamp, 0.3 · ‖h‖
            assert float(t.delta[kind][i].norm()) == pytest.approx(0.3 * float(h.norm()), rel=1e-4)
        text = record.prompt.format(record.subject)
        prompt_ids = tiny_model.tokenizer.encode(text, add_special_tokens=False)
        target = tiny_model.tokenizer.encode(text + " " + record.target_new, add_special_tokens=False)[len(prompt_ids):]
        tokens = torch.tensor([[tiny_model.tokenizer.bos_token_id, *prompt_ids, *target[:-1]]])
        pos = _subject_last(tiny_model, text, record)

        def add(kind, pos=pos, i=i):
            vector = t.delta[kind][i]

            def hook(out, hook):
                out = out.clone()
                out[0, pos] += vector.to(out.dtype)
                return out
            return (names[kind], hook)

        with torch.no_grad():
            logp = tiny_model.run_with_hooks(tokens, fwd_hooks=[add("attn"), add("mlp")]).log_softmax(-1)[0]
        first = 1 + len(prompt_ids) - 1
        nll = -torch.stack([logp[first + j, tok] for j, tok in enumerate(target)]).mean()
        assert float(nll) == pytest.approx(float(t.nll[i]), abs=1e-4)


@pytest.mark.slow  # a quality number on the toy world (the README says which tests are slow)
@pytest.mark.parametrize("fields, expected", [
    ({}, (0.86, 0.844, 0.96)),
    (dict(update_attention=True), (0.92, 0.892, 0.559)),  # W_O writes: the neighbourhood pays
])
def test_toy_world_facts_are_edited(toy_model, person_records, fields, expected):
    records = person_records[100:150]
    result = pmet(toy_model, records, **fields)  # the toy-world preset: layers 0-1, λ 100, 25 steps, clamp 8
    assert result.config["preset"] == "toyworld" and result.layers() == [0, 1]
    with result.applied(toy_model):
        scores = mean_scores(counterfact_scores(toy_model, records))
    # docs/editing.md: efficacy / paraphrase / neighbourhood of one batch of 50 (unedited 0 / 0 / 1)
    for name, value in zip(("efficacy", "paraphrase", "neighborhood"), expected, strict=True):
        assert scores[name] == pytest.approx(value, abs=0.021), name


def test_update_attention_writes_w_o_undoes_bitwise_save_load(toy_model, person_records, tmp_path):
    from interp_edit.editing import Edit

    before = snapshot(toy_model)
    e = pmet(toy_model, person_records[:3], update_attention=True, steps=5, stats_samples=500)
    assert_unchanged(toy_model, before, no_edits=True)
    assert sorted(e.deltas) == ["blocks.0.attn.W_O", "blocks.0.mlp.W_out", "blocks.1.attn.W_O", "blocks.1.mlp.W_out"]
    w_o = get_parameter(toy_model, "blocks.0.attn.W_O").detach().clone()  # TransformerLens layout, either backend
    e.apply(toy_model)
    assert not torch.equal(get_parameter(toy_model, "blocks.0.attn.W_O").detach(), w_o)
    e.undo(toy_model)
    assert_unchanged(toy_model, before, no_edits=True)
    loaded = Edit.load(e.save(tmp_path / "pmet"), toy_model)
    assert loaded.method == "pmet" and set(loaded.deltas) == set(e.deltas)
    for name, delta in e.deltas.items():
        assert torch.equal(loaded.deltas[name].dense(), delta.dense())


@pytest.mark.parametrize("fields, match", [
    (dict(residual_split="cube"), "residual_split"),
    (dict(nll_loss_factor=0.0), "nll_loss_factor"),
    (dict(argmax_nll_scale=-0.1), "argmax_nll_scale"),
    (dict(argmax_kl_stop=-1.0), "argmax_kl_stop"),
    (dict(attn_mom2_update_weight=-1.0), "attn_mom2_update_weight"),
    (dict(update_attention=True, stats_samples="auto"), "stats_samples"),
    (dict(layers=(9,)), "out of range"),
    (dict(layers=(1, 0)), "layers"),
    (dict(layers=()), "layers"),
    (dict(nll_loss_factor=float("nan")), "nll_loss_factor"),
    (dict(bogus=1), "bogus"),
])
def test_bad_config_is_refused_before_any_compute(toy_model, person_records, fields, match):
    with refused_before_any_forward(toy_model), pytest.raises(EditConfigError, match=match):
        pmet(toy_model, person_records[:2], **fields)


def test_bad_requests_are_refused_before_any_compute(toy_model):
    good = EditRequest("{} was born in", "Talvik Corlo", "Gemmel")
    with refused_before_any_forward(toy_model), pytest.raises(EditRequestError, match="request 1"):
        pmet(toy_model, [good, EditRequest("{} plays the", "Nobody Known", "")])


def test_presets_and_registry(toy_model):
    from interp_edit.editing import get_editor

    assert get_editor("pmet").config_class is PMETConfig
    paper = PMETConfig.for_model(toy_model, preset="paper")
    assert paper.layers == (0, 1) and paper.mom2_update_weight == 6000.0 and paper.kl_factor == 1.0
    assert not paper.update_attention and paper.residual_split == "sqrt"
    assert PMETConfig.PRESETS["gpt-neox-20b"]["layers"] == (6, 7, 8, 9, 10)


def test_runs_through_run_experiment(toy_model):
    from interp_edit.evaluation.runner import run_experiment

    res = run_experiment(toy_model, "toyworld-counterfact", "pmet", n=2, batch_size=2, unrelated=5, fluency=False,
                         progress=False, config={"steps": 5})
    assert res.settings["method"] == "pmet" and "efficacy_score" in res.final_metrics()
