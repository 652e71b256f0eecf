"""How results read at a glance: every result type has a short one-line repr with what was
computed and its headline numbers (tables as HTML where they help)."""

from __future__ import annotations

import pytest
from result_zoo import build_zoo

from interp_edit.reprs import REPR_LIMIT

RESULTS = ("trace", "aie", "patching", "lens", "dla", "attribution", "ablation", "pathways", "diff", "edit_token_aie",
           "contrast", "experiment")


@pytest.fixture(scope="module")
def zoo(toy_model, person_records, one_thread):
    return build_zoo(toy_model, person_records)


@pytest.mark.parametrize("name", RESULTS)
def test_every_result_repr_is_one_short_line_named_after_its_type(zoo, name):
    result = zoo[name]
    text = repr(result)
    assert text.startswith(type(result).__name__ + "(")
    assert len(text) <= REPR_LIMIT and "\n" not in text
    assert "tensor(" not in text


def test_repr_contents_say_what_was_computed_and_the_headline_numbers(zoo):
    r, text = zoo["record"], zoo["text"]
    trace = zoo["trace"]
    top = trace.top_sites(1)[0]
    t = repr(trace)
    assert repr(text) in t and repr(r.target_true) in t and f"clean={trace.clean_score:.4g}" in t
    assert f"{top['kind']} L{top['layer']} @{top['pos']}" in t and f"window={trace.settings.window}" in t
    aie = repr(zoo["aie"])
    peak = zoo["aie"].peak("mlp")
    assert f"n_facts={zoo['aie'].n_facts}" in aie and f"mlp {peak['role']} L{peak['layer']} {peak['effect']:.3g}" in aie
    attribution = zoo["attribution"]
    a = repr(attribution)
    best = attribution.value_neurons(1)[0]
    assert f"{best.label} {best.score:+.3g}" in a and repr(attribution.target_token) in a
    assert best.label in attribution._repr_html_() and "<table" in attribution._repr_html_()
    dla = zoo["dla"]
    assert f"total={dla.total:.4g}" in repr(dla) and repr(dla.foil) in repr(dla)
    lens = zoo["lens"]
    assert repr(lens.top_tokens[-1][-1][0]) in repr(lens)
    ablation = zoo["ablation"]
    assert f"mean_drop={ablation.mean_drop:.4g}" in repr(ablation)
    pathways = zoo["pathways"]
    assert f"value_layers={pathways.value_layers[:3]}" in repr(pathways) and pathways.pathways[0].label in repr(pathways)
    experiment = zoo["experiment"]
    s = experiment.summary()
    e = repr(experiment)
    assert "'ft'" in e and "'toyworld-counterfact'" in e and f"efficacy_score={s['efficacy_score']:.4g}" in e
    assert "<table" in experiment._repr_html_() and "efficacy_score" in experiment._repr_html_()
    contrast = zoo["contrast"]
    c = repr(contrast)
    assert f"successes={contrast.n_success}" in c and f"failures={contrast.n_failure}" in c
    patching = zoo["patching"]
    p = repr(patching)
    assert all(site in p for site in patching.results) and repr(patching.answer) in p
    eta = zoo["edit_token_aie"]
    assert f"n_facts={eta.n_facts}" in repr(eta)
    diff = zoo["diff"]
    assert "'ft'" in repr(diff) and "largest_change=edit:" in repr(diff)


def test_long_prompts_are_cut_inside_their_quotes():
    from interp_edit.reprs import short_repr, text

    assert text("x" * 200).endswith("…'") and len(text("x" * 200)) <= 70
    assert len(short_repr("R", a=text("y" * 1000), b="z" * 1000)) <= REPR_LIMIT
