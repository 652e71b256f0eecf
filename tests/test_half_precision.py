"""Half precision: the analyses and editors on the toy-world model loaded in bfloat16 and float16
agree with the float32 model within stated tolerances; deltas are added in float32 and rounded
once; undo is bitwise; a dtype a model cannot take is a named error before loading.

Tolerances (measured on this model, CPU, torch 2.13, then given ~4x headroom):
traces / patching / AIE: max |Δ score| 0.02 (bf16 measured 0.0045, fp16 0.0012);
attribution layer scores: 0.1 absolute on scores up to 2.7 (bf16 0.028, fp16 0.0036);
edits: both efficacious, target log-probability within 0.1 nats of float32; ΔW within 5%
(relative Frobenius) of float32's in fp16 (measured ≤ 1.8%). In bf16 the target optimisation
converges (same efficacy, target NLL within 0.01) but Adam's per-coordinate steps on bf16
gradients take another path: ΔW has cosine ≥ 0.8 with float32's (relative difference 7–54%
measured), so bf16 is compared by effect, fp16 also by delta.
"""

from __future__ import annotations

import math

import pytest
import torch

from interp_edit import activation_patch, average_indirect_effect, causal_trace, edit, load_model, neuron_attribution
from interp_edit.adapter.bridge import hooked_available
from interp_edit.errors import InvalidArgumentError
from interp_edit.evaluation.logprobs import continuation_logprobs
from interp_edit.precision import add_delta_, all_finite, check_dtype

CLEAN, CORRUPTED = "Talvik Corlo was born in", "Fenpas Astlo was born in"
EDITORS = ("rome", "memit", "alphaedit", "ft", "fine", "memit_csk", "intattn", "mega", "emmet", "grace", "pmet", "ultraedit", "wise")
#: float16 matrix products are slow on the CPU (ROME: 35 s): the default suite runs these two
FAST_FP16_EDITORS = ("ft", "fine")


@pytest.fixture(scope="module", params=["bfloat16", "fp16"])
def half(request):
    return load_model("toyworld", dtype=request.param)  # a name, as check_dtype takes it


@pytest.fixture(scope="module")
def bf16_model():
    return load_model("toyworld", dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def fp16_model():
    return load_model("toyworld", dtype=torch.float16)


def _fact(records, i=0):
    r = records[i]
    return r.prompt.format(r.subject), r.subject, r.target_true


def test_check_dtype_names_and_refusals():
    assert check_dtype("bf16") is torch.bfloat16 and check_dtype("float16") is torch.float16
    assert check_dtype(torch.float32) is torch.float32 and check_dtype("torch.float64") is torch.float64
    for bad in (torch.int8, torch.bool, "int8", "fp8", 16, None):
        with pytest.raises(InvalidArgumentError, match="dtype"):
            check_dtype(bad)
    with pytest.raises(InvalidArgumentError, match="dtype"):
        load_model("toyworld", dtype=torch.int64)


def test_a_delta_is_added_in_float32_and_rounded_once():
    torch.manual_seed(0)
    weight = torch.randn(64, 32).to(torch.bfloat16)
    delta = 1e-3 * torch.randn(64, 32)
    once = weight.clone()
    add_delta_(once, delta)
    assert torch.equal(once, (weight.float() + delta).to(torch.bfloat16))
    twice = weight + delta.to(torch.bfloat16)  # rounding the delta first loses more
    exact = weight.double() + delta.double()
    assert (once.double() - exact).abs().sum() < (twice.double() - exact).abs().sum()
    w32 = torch.randn(8, 4)
    d32 = torch.randn(8, 4)
    same = w32.clone()
    add_delta_(same, d32)
    assert torch.equal(same, w32 + d32)  # float32: exactly the plain in-place add


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_all_finite_sees_every_nan_and_infinity(dtype):
    """One sum settles a finite tensor; a NaN or an infinity anywhere is seen; finite values whose
    sum overflows (float16's 60,000 twice) are finite; integers are always finite."""
    x = torch.randn(300, 7).to(dtype)
    assert all_finite(x) and all_finite(x[:0])
    for bad in (math.nan, math.inf, -math.inf):
        for where in ((0, 0), (123, 4), (299, 6)):
            y = x.clone()
            y[where] = bad
            assert not all_finite(y), (bad, where)
    big = torch.full((4,), torch.finfo(dtype).max / 2, dtype=dtype)
    assert not torch.isfinite(big.sum()) and all_finite(big)
    mixed = torch.tensor([torch.finfo(dtype).max, -torch.finfo(dtype).max, torch.finfo(dtype).max], dtype=dtype)
    assert all_finite(mixed)
    assert all_finite(torch.arange(5))


def test_traces_patching_and_aie_match_float32(half, toy_model, person_records):
    prompt, subject, target = _fact(person_records)
    a = causal_trace(toy_model, prompt, subject, target, samples=3)
    b = causal_trace(half, prompt, subject, target, samples=3)
    assert b.scores.dtype == torch.float32
    assert (a.scores - b.scores).abs().max() < 0.02
    assert abs(a.clean_score - b.clean_score) < 0.02
    pa, pb = activation_patch(toy_model, CLEAN, CORRUPTED), activation_patch(half, CLEAN, CORRUPTED)
    for site in pa.results:
        assert (pa.results[site] - pb.results[site]).abs().max() < 0.02, site
    facts = person_records[:3]
    ea = average_indirect_effect(toy_model, facts, kinds=("mlp",), samples=2, progress=False)
    eb = average_indirect_effect(half, facts, kinds=("mlp",), samples=2, progress=False)
    assert ea.n_facts == eb.n_facts
    assert (ea.effects - eb.effects).nan_to_num().abs().max() < 0.02


def test_direct_logit_attribution_matches_float32(half, toy_model):
    """DLA on a half-precision model (it crashed mixing the float32 norm scale with half
    weights): computed in float32 from the half activations, its parts sum to the model's own
    logit difference within half rounding and match float32's DLA."""
    from interp_edit import direct_logit_attribution

    a = direct_logit_attribution(toy_model, CLEAN, "Karsa", foil="Gemmel")
    b = direct_logit_attribution(half, CLEAN, "Karsa", foil="Gemmel")
    assert b.heads.dtype == b.mlp.dtype == torch.float32
    parts = b.embed + b.pos_embed + b.heads.sum().item() + b.attn_bias.sum().item() + b.mlp.sum().item() + b.constant
    assert abs(parts - b.total) < 0.05 * abs(b.total)
    assert (a.mlp - b.mlp).abs().max() < 0.1 and (a.heads - b.heads).abs().max() < 0.1
    assert abs(a.total - b.total) < 0.1


def test_neuron_attribution_matches_float32(half, toy_model, person_records):
    prompt, _, target = _fact(person_records)
    a, b = neuron_attribution(toy_model, prompt, target), neuron_attribution(half, prompt, target)
    assert b.ffn_scores.dtype == torch.float32
    assert (a.layer_scores - b.layer_scores).abs().max() < 0.1
    assert (a.ffn_scores - b.ffn_scores).abs().max() < 0.01
    top_a = {(s.neuron.layer, s.neuron.index) for s in a.value_neurons(10, ("ffn",))}
    top_b = {(s.neuron.layer, s.neuron.index) for s in b.value_neurons(10, ("ffn",))}
    assert len(top_a & top_b) >= 8


def _target_logprob(model, records):
    return continuation_logprobs(model, [r.prompt.format(r.subject) for r in records], [r.target_new for r in records])[0]


def _check_editor(method, half, toy_model, records):
    before = {k: v.clone() for k, v in half.state_dict().items()}
    kwargs = {"layers": (0, 1)} if method == "memit_csk" else {}  # MEMIT's toy layers: no tracing of 2 requests
    if method == "ultraedit":  # its toy lr trades efficacy for neighbourhood (docs/editing.md): these 2 facts need 2x
        kwargs = {"lr": 3e-3}
    ref, got = edit(toy_model, records, method, **kwargs), edit(half, records, method, **kwargs)
    with ref.applied(toy_model):
        lp_ref = _target_logprob(toy_model, records)
    with got.applied(half):
        lp_half = _target_logprob(half, records)
        assert all(p.dtype == half.W_E.dtype for p in half.parameters())
        changed = [k for k, v in half.state_dict().items() if not torch.equal(v, before[k])]
        assert changed or not got.changes_weights, method  # the edit reached the weights (MEGA, GRACE, WISE: hooks only)
    # undo restores every tensor bit for bit
    for key, value in half.state_dict().items():
        assert torch.equal(value, before[key]), (method, key)
    assert (lp_half - lp_ref).abs().max() < 0.1, (method, lp_ref, lp_half)
    assert lp_half.min() > -0.7, method  # efficacious: the new target is likely
    for name in ref.deltas:
        da, db = ref.delta_matrix(name, toy_model).double(), got.delta_matrix(name, half).double()
        if half.W_E.dtype == torch.float16:
            assert (da - db).norm() / da.norm() < 0.05, (method, name)
        else:
            assert torch.nn.functional.cosine_similarity(da.flatten(), db.flatten(), 0) > 0.8, (method, name)


#: A known gap (docs/models.md, "Two backends"): the bridge runs Hugging Face's modules in bfloat16 end to
#: end, and the editors that spread one target over several layers land further from float32 on
#: this test's first fact: target log-prob −0.589 (MEMIT) against −0.009 in float32 and −0.005 for
#: the hooked model in bfloat16 (the deltas are applied exactly: relative error 4e-3, bfloat16
#: rounding). Over 16 facts (8 pairs, TL 3.9, both backends) MEMIT's mean target log-prob is −0.176
#: on the bfloat16 bridge, −0.112 hooked in bfloat16, −0.109 in float32: 2 of 16 facts differ by more
#: than 0.1, the other 14 agree. Strict: a fix makes these fail until this goes.
BRIDGE_BF16_GAP = ("memit", "alphaedit", "memit_csk", "intattn")


@pytest.mark.parametrize("method", [
    pytest.param(m, marks=pytest.mark.xfail(not hooked_available() and m in BRIDGE_BF16_GAP, strict=True,
                                            reason="bridge, bfloat16: multi-layer editors less efficacious (known gap)"))
    for m in EDITORS])
def test_editors_in_bfloat16_match_float32(method, toy_model, person_records, bf16_model):
    _check_editor(method, bf16_model, toy_model, person_records[:2])


@pytest.mark.parametrize("method", FAST_FP16_EDITORS)
def test_editors_in_float16_match_float32(method, toy_model, person_records, fp16_model):
    _check_editor(method, fp16_model, toy_model, person_records[:2])


@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in EDITORS if m not in FAST_FP16_EDITORS])
def test_slow_editors_in_float16_match_float32(method, toy_model, person_records, fp16_model):
    _check_editor(method, fp16_model, toy_model, person_records[:2])


def test_fine_tuning_in_float16_optimises_a_float32_delta(fp16_model, person_records):
    """Adam on a float16 ΔW produced NaN at the first step (ε = 1e-8 is 0 in float16)."""
    result = edit(fp16_model, person_records[:1], "ft")
    delta = next(iter(result.deltas.values()))
    assert delta.values.dtype == torch.float32 and torch.isfinite(delta.values).all()


def test_ace_in_bfloat16_matches_float32(toy_model, toy_world, bf16_model):
    """ACE (query and value stages, its own request type; layers chosen by qv_pathways): the bf16
    edit moves the multi-hop answer like float32's, on the same layers, and undo is bitwise."""
    from interp_edit.editing import ace
    from interp_edit.evaluation.multihop_edits import toy_multihop_edit_cases

    case = toy_multihop_edit_cases(toy_world, 1)[0]
    settings = {}  # the toy preset
    before = {k: v.clone() for k, v in bf16_model.state_dict().items()}
    ref, got = ace(toy_model, [case.ace_request()], **settings), ace(bf16_model, [case.ace_request()], **settings)
    prompts, answers = list(case.edit_questions), [case.new_answer] * len(case.edit_questions)
    with ref.applied(toy_model):
        lp_ref = continuation_logprobs(toy_model, prompts, answers)[0]
    with got.applied(bf16_model):
        lp_half = continuation_logprobs(bf16_model, prompts, answers)[0]
        assert all(p.dtype == torch.bfloat16 for p in bf16_model.parameters())
    for key, value in bf16_model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert (lp_half - lp_ref).abs().max() < 0.2, (lp_ref, lp_half)
    assert lp_half.min() > -0.7  # efficacious: the new answer is likely
    # the same layers are chosen (by pathways, in float32 scores); the deltas themselves are not
    # compared: the query stage's bf16 ΔW had cosine -0.11 with float32's at layer 0 for the same
    # effect (ACE's query objective leaves the direction underdetermined)
    assert sorted(ref.deltas) == sorted(got.deltas)
    assert ref.info["query_layers"] == got.info["query_layers"] and ref.info["value_layers"] == got.info["value_layers"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_attribution_on_a_processed_half_precision_family_model_matches_float32(dtype):
    """A Hugging Face family loaded with TransformerLens' processing has no final-norm gain
    (folded into W_U): the ones standing in for it are in the model's dtype, so the frozen
    unembedding stays in it (a float32 stand-in made every NLKA analysis raise a dtype error in
    bfloat16 and float16). Scores within 5% of their scale of float32's (measured: bfloat16 ≤ 1.6%
    hooked, ≤ 3.0% on the bridge; float16 ≤ 0.3%). The pathways' value-layer scores are compared,
    not the query-layer ones: those depend on which 10 value neurons are chosen, and a near-tie at
    the 10th flips in float16 on the bridge (query-layer sum 17.44 → 14.54)."""
    from interp_edit import layer_attribution_scores, qv_pathways
    from interp_edit.adapter import norm_weight
    from tests.family_models import family_model

    full, half = family_model("llama"), family_model("llama", dtype=dtype)
    assert norm_weight(half, "ln_final").dtype == dtype
    for score in (lambda m: neuron_attribution(m, CLEAN, "Karsa").layer_scores,
                  lambda m: layer_attribution_scores(m, CLEAN, "Karsa"),
                  lambda m: qv_pathways(m, [CLEAN, CORRUPTED], ["Karsa", "Karsa"], n_value=10,
                                        top_pathways=5).value_layer_scores):
        expected, got = score(full).float(), score(half).float()
        assert torch.isfinite(got).all()
        assert float((got - expected).abs().max()) <= 0.05 * float(expected.abs().max())
