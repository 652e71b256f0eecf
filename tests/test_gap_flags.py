"""A localisation of a fact the model does not know must not look like a finding: trace,
patching and AIE results carry the clean–corrupted gap, and when the clean run does not
prefer the target or the gap is below the metric's floor, their repr and figure title say so.
On the trained toy model's known facts they say nothing."""

from __future__ import annotations

import math

import pytest

from interp_edit import activation_patch, average_indirect_effect, causal_trace
from interp_edit.analysis.gap import GAP_FLOORS, ScoreGap

PROMPT, SUBJECT = "Talvik Corlo was born in", "Talvik Corlo"


def title(fig) -> str:
    return fig.layout.title.text


def test_a_trace_on_a_random_model_warns_in_repr_and_title(tiny_model):
    trace = causal_trace(tiny_model, PROMPT, SUBJECT, "Karsa", samples=2)
    assert trace.clean_prefers_target is False and not trace.gap.reliable
    assert repr(trace).startswith("CausalTraceResult(WARNING='the clean run does not prefer the target")
    assert "WARNING: the clean run does not prefer the target" in title(trace.plot())
    assert "WARNING" in title(trace.plot(layout="tl"))


def test_a_trace_of_a_known_fact_says_nothing(toy_model):
    trace = causal_trace(toy_model, PROMPT, SUBJECT, samples=2)
    assert trace.clean_prefers_target is True and trace.gap.reliable
    assert trace.gap.gap == pytest.approx(trace.clean_score - trace.corrupted_score)
    assert "WARNING" not in repr(trace) and "WARNING" not in title(trace.plot())
    # a multi-token target: the rule reads the first target token at the first scored position (as the AIE's)
    longer = causal_trace(toy_model, PROMPT, SUBJECT, trace.target.strip() + " Talvik", samples=2)
    assert len(longer.target_ids) == 2 and longer.clean_prefers_target is True
    after = toy_model(toy_model.to_tokens(PROMPT + trace.target))[0, -1].argmax().item()
    assert after != longer.target_ids[1]  # the model would not continue with it: only the first token counts


def test_patching_warns_on_a_random_model_and_not_on_a_known_fact(toy_model, tiny_model):
    kwargs = dict(sites=("resid_pre",), answer="Karsa")
    unknown = activation_patch(tiny_model, PROMPT, "Beldel Kordor was born in", **kwargs)
    assert unknown.clean_prefers_target is False and "WARNING=" in repr(unknown) and "WARNING" in title(unknown.plot())
    known = activation_patch(toy_model, PROMPT, "Beldel Kordor was born in", sites=("resid_pre",))
    assert known.clean_prefers_target is True and known.gap.reliable
    assert "WARNING" not in repr(known) and "WARNING" not in title(known.plot())


def test_aie_carries_the_mean_gap(toy_model, person_records):
    aie = average_indirect_effect(toy_model, person_records[:3], samples=2, progress=False)
    assert aie.gap.gap == pytest.approx(aie.mean_clean_score - aie.mean_corrupted_score)
    assert aie.gap.reliable and "WARNING" not in repr(aie) and "WARNING" not in title(aie.plot())


@pytest.mark.parametrize("metric", sorted(GAP_FLOORS))
def test_the_floor_per_metric(metric):
    floor = GAP_FLOORS[metric]
    assert ScoreGap(1.0 + floor, 1.0, metric, True).reliable
    below = ScoreGap(1.0 + 0.9 * floor, 1.0, metric, True)
    assert below.warnings() == [f"the clean-corrupted gap {0.9 * floor:.2g} is below {floor:g} ({metric}): effects are noise-level"]
    assert not ScoreGap(1.0, 2.0, metric, True).reliable  # corruption made it *more* likely
    assert not ScoreGap(math.nan, 0.0, metric, True).reliable
    assert ScoreGap(1.0 + floor, 1.0, metric, None).reliable  # not checked: only the gap decides
    assert len(ScoreGap(0.0, 0.0, metric, False).warnings()) == 2


def test_circuits_and_paths_warn_on_a_corruption_that_does_not_corrupt_and_an_unknown_answer(toy_model):
    """Edge scores, circuits (both figures) and path patching carry the gap too: a corruption
    that leaves the answer as likely as before, and an answer the clean run does not prefer,
    are said in the repr and the figure titles; a known fact with a real corruption says nothing.
    ``kl`` counts its gap as the corrupted run's divergence."""
    from interp_edit.analysis.circuits import edge_scores, find_circuit, path_patch

    clean, same = PROMPT, "Talvik Corlo is born in"
    noise = find_circuit(toy_model, clean, same, answer="Karsa", foil="Gemmel", method="eap", n_edges=10, curve=(10,))
    assert noise.scores.clean_prefers_target is True and "below 0.1 (logit_diff)" in repr(noise)
    assert "below 0.1 (logit_diff)" in repr(noise.scores)
    assert "WARNING" in title(noise.plot()) and "WARNING" in title(noise.plot("faithfulness"))
    assert "WARNING" in title(noise.scores.plot())
    paths = path_patch(toy_model, clean, same, [["input -> logits"]], answer="Karsa", foil="Gemmel")
    assert "WARNING=" in repr(paths) and "WARNING" in title(paths.plot())
    unknown = edge_scores(toy_model, clean, "Beldel Kordor was born in", answer="Gemmel", foil="Morvel", method="eap")
    assert unknown.clean_prefers_target is False and "does not prefer the target" in repr(unknown)
    known = find_circuit(toy_model, clean, "Beldel Kordor was born in", method="eap", n_edges=10, curve=(10,))
    assert known.gap.reliable and known.scores.gap.reliable
    assert "WARNING" not in repr(known) and "WARNING" not in title(known.plot()) + title(known.plot("faithfulness"))
    kl = edge_scores(toy_model, clean, "Beldel Kordor was born in", metric="kl", method="clean_corrupted")
    assert kl.clean_value == pytest.approx(0.0, abs=1e-5) and kl.corrupted_value > 0.1 and kl.gap.reliable
