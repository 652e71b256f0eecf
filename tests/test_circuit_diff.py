"""The circuit an edit reroutes (issue 30, part 5) on the toy model: the before / after scores
are exactly :func:`edge_scores` on the unedited model and inside ``edit.applied`` (recomputed
here), the changed-edge ranking is the sorted |after − before|, the "edited layer on the
circuit" flags match a direct check of the circuits' edge names, the share of the old circuit
still carrying the old answer matches its definition, a null edit changes nothing, the model is
bitwise unchanged, and bad input is refused before any forward."""

from __future__ import annotations

import json
import math

import pytest
import torch
from model_state import assert_unchanged, refused_before_any_forward, snapshot

from interp_edit.adapter import model_fingerprint
from interp_edit.analysis.circuits import CircuitDiffResult, circuit_diff, edge_scores, faithfulness_curve, find_circuit
from interp_edit.analysis.circuits.engine import prepare_task
from interp_edit.editing import Edit, rome
from interp_edit.editing.edit import LowRankDelta
from interp_edit.editing.hooks import AdditiveSteering
from interp_edit.editing.requests import as_request
from interp_edit.errors import EditApplicationError, InterpEditError, InvalidArgumentError

FAST = dict(method="eap_ig_inputs", ig_steps=2)


@pytest.fixture(scope="module")
def record(person_records):
    return person_records[0]


@pytest.fixture(scope="module")
def rome_edit(toy_model, record):
    return rome(toy_model, [record])


@pytest.fixture(scope="module")
def diff(toy_model, rome_edit):
    state = snapshot(toy_model)
    result = circuit_diff(toy_model, rome_edit, n_edges=50, **FAST)
    assert_unchanged(toy_model, state, no_edits=True)
    return result


def prompts_of(record, replacement):
    """The task written out here: the prompt and the paraphrases holding the subject, and the
    same with the subject replaced."""
    clean = [record.prompt.format(record.subject)] + [p for p in record.paraphrase_prompts if record.subject in p]
    return clean, [p.replace(record.subject, replacement) for p in clean]


def null_edit(model, record) -> Edit:
    d = model.cfg.d_mlp
    zero = LowRankDelta(torch.zeros(d, 1), torch.zeros(1, model.cfg.d_model))
    return Edit("null", {"blocks.1.mlp.W_out": zero}, model_fingerprint(model), requests=[as_request(record).as_dict()])


def touches(edge: str, node: str) -> bool:
    sender, receiver = edge.split(" -> ")
    return sender == node or receiver.split("<")[0] == node or (node.startswith("a") and (
        sender.split(".")[0] == node or receiver.split(".")[0] == node))


def test_before_and_after_are_edge_scores_without_and_with_the_edit(toy_model, rome_edit, record, diff):
    clean, corrupted = prompts_of(record, diff.replacement)
    assert diff.before.clean_prompts == tuple(clean) and diff.before.corrupted_prompts == tuple(corrupted)
    assert len(clean) > 1  # the paraphrases are in
    ref_before = edge_scores(toy_model, clean, corrupted, answer=record.target_new, foil=record.target_true, **FAST)
    with rome_edit.applied(toy_model):
        ref_after = edge_scores(toy_model, clean, corrupted, answer=record.target_new, foil=record.target_true, **FAST)
    assert torch.allclose(diff.before.scores, ref_before.scores, atol=1e-5)
    assert torch.allclose(diff.after.scores, ref_after.scores, atol=1e-5)
    # the ranking of changed edges is the sorted |after − before| of the scores recomputed here
    allowed = ref_before.graph.allowed
    change = (ref_after.scores - ref_before.scores)[allowed]
    expected = change.abs().sort(descending=True).values[:15]
    got = diff.top_changes(15)
    assert torch.allclose(torch.tensor([abs(c) for *_, c in got]), expected, atol=1e-5)
    edges = ref_before.graph.edges()
    names = [ref_before.graph.edge_name(*e) for e in edges]
    for name, before, after, c in got:
        i = names.index(name)
        assert before == pytest.approx(ref_before.flat()[i].item(), abs=1e-5)
        assert after == pytest.approx(ref_after.flat()[i].item(), abs=1e-5)
        assert c == pytest.approx(after - before, abs=1e-6)
    assert abs(got[0][3]) > 1.0  # ROME reroutes visibly (measured: ~4 logits on the top edge)


def test_the_circuits_and_the_edited_layer_flags(toy_model, rome_edit, diff):
    assert diff.edited_layers == (0,) and diff.edited_nodes == ("m0",) and rome_edit.layers() == [0]
    # the flags read the circuits (greedy, the default: the first edge enters the logits)
    for circuit, on in ((diff.old_circuit, diff.on_old), (diff.new_circuit, diff.on_new)):
        assert len(circuit) == 50 and circuit[0].endswith("-> logits")
        assert on == {"m0": any(touches(e, "m0") for e in circuit)}
    # top_n circuits are the top-|score| edges of each run; one edge may miss the edited MLP
    small = circuit_diff(toy_model, rome_edit, n_edges=1, selection="top_n", paraphrases=False, **FAST)
    assert small.old_circuit == [name for name, _ in small.before.top(1)]
    assert small.new_circuit == [name for name, _ in small.after.top(1)]
    assert small.on_old == {"m0": touches(small.old_circuit[0], "m0")}
    assert small.on_new == {"m0": touches(small.new_circuit[0], "m0")}


def test_old_carried_is_its_definition(toy_model, rome_edit, record, diff):
    clean, corrupted = prompts_of(record, diff.replacement)
    old_answer = dict(answer=record.target_true, foil=record.target_new)
    unedited = find_circuit(toy_model, clean, corrupted, n_edges=50, curve=(50,), selection="greedy", **old_answer,
                            **FAST)
    assert [n for n, _ in unedited.edges] == diff.old_circuit  # the same edges: |score| is symmetric
    margin_before = unedited.faithfulness[0] * (unedited.clean_value - unedited.corrupted_value)
    assert diff.old_faithfulness == pytest.approx(unedited.faithfulness[0], abs=1e-5)
    assert diff.old_margin_before == pytest.approx(margin_before, abs=1e-4) and abs(margin_before) > 0.1
    # after: the old circuit's edges, the old answer, on the edited model
    graph = diff.graph
    names = [graph.edge_name(*e) for e in graph.edges()]
    order = [names.index(n) for n in diff.old_circuit]
    with rome_edit.applied(toy_model):
        task = prepare_task(toy_model, clean, corrupted, record.target_true, record.target_new)
        (faith,), m_clean, m_corrupt = faithfulness_curve(toy_model, task, graph, order, [len(order)])
    assert diff.old_margin_after == pytest.approx(faith * (m_clean - m_corrupt), abs=1e-4)
    assert diff.old_carried == pytest.approx(diff.old_margin_after / margin_before, rel=1e-6)
    assert diff.old_carried < 0.9  # the edit takes part of the old answer away from the old circuit


def test_a_null_edit_changes_nothing(toy_model, record):
    state = snapshot(toy_model)
    d = circuit_diff(toy_model, null_edit(toy_model, record), n_edges=10, paraphrases=False, **FAST)
    assert_unchanged(toy_model, state, no_edits=True)
    assert torch.equal(d.before.scores, d.after.scores)
    assert d.change.abs().max().item() == 0.0 and d.top_changes(1)[0][3] == 0.0
    assert d.old_circuit == d.new_circuit and d.shared_edges == 10 and d.on_old == d.on_new
    assert d.old_margin_after == d.old_margin_before  # the old circuit carries what it carried ...
    # ... which is nothing here (10 edges, margin ~ -7e-6): no share of it is reported
    assert math.isnan(d.old_carried) and "does not carry the old answer" in d.old_carried_reason


def test_a_steering_edit_marks_the_layers_attention(toy_model, record):
    vector = torch.zeros(toy_model.cfg.d_model)
    hook = AdditiveSteering("blocks.3.hook_attn_out", vector, 1.0)
    steer = Edit("steer", {}, model_fingerprint(toy_model), requests=[as_request(record).as_dict()], hooks={"s": hook})
    d = circuit_diff(toy_model, steer, n_edges=60, paraphrases=False, **FAST)
    assert d.edited_nodes == ("a3",)
    assert d.on_new == {"a3": any(touches(e, "a3") for e in d.new_circuit)}


def test_repr_plot_and_save(diff, tmp_path):
    assert isinstance(diff, CircuitDiffResult)
    text = repr(diff)
    assert "old_carried=" in text and "edited_on_new={m0:" in text and len(text) <= 480
    fig = diff.plot()
    assert any(t.name == "edited" for t in fig.data) and any(t.name == "score fell" for t in fig.data)
    assert len([t for t in fig.data if t.mode == "lines" and t.x[0] is not None]) == 30
    assert any(t.name == "edited" for t in diff.plot("old", n_edges=5).data)
    data = json.loads(diff.save(tmp_path / "diff.json").read_text())
    assert data["kind"] == "CircuitDiffResult" and data["old_circuit"] == diff.old_circuit
    assert data["top_changes"][0][0] == diff.top_changes(1)[0][0]
    with pytest.raises(InvalidArgumentError, match="view"):
        diff.plot("sideways")


def test_a_multi_request_edit_needs_request(toy_model, person_records):
    two = Edit("rome", {}, model_fingerprint(toy_model),
               requests=[as_request(r).as_dict() for r in person_records[:2]])
    with refused_before_any_forward(toy_model), pytest.raises(InvalidArgumentError, match="request=i"):
        circuit_diff(toy_model, two)
    with refused_before_any_forward(toy_model), pytest.raises(InvalidArgumentError, match="request must"):
        circuit_diff(toy_model, two, request=2)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(metric="kl"), "metric"),
    (dict(n_edges=0), "n_edges"),
    (dict(selection="best"), "selection"),
    (dict(method="exactly"), "method"),
    (dict(ig_steps=0), "ig_steps"),
    (dict(paraphrases="yes"), "paraphrases"),
    (dict(replacement="Al"), "replacement"),
    (dict(replacements=[]), "replacement"),
    (dict(task=("a", "b", "c")), "task"),
    (dict(task=("Talvik Corlo was born in", "Bel was born in")), "corrupted"),
])
def test_bad_input_refused_before_any_forward(toy_model, rome_edit, kwargs, match):
    with refused_before_any_forward(toy_model), pytest.raises(InterpEditError, match=match):
        circuit_diff(toy_model, rome_edit, **kwargs)


def test_an_applied_edit_is_refused(toy_model, rome_edit):
    with rome_edit.applied(toy_model):
        with refused_before_any_forward(toy_model), pytest.raises(EditApplicationError, match="already applied"):
            circuit_diff(toy_model, rome_edit)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "nodes", "shared", "carried", "faith_new"), [
    ("rome", ("m0",), 33, 0.43, 0.358),
    ("memit", ("m0", "m1"), 28, 0.32, 0.516),
    ("mega", ("a2", "a3", "a4"), 44, 1.00, -0.914),
])
def test_docs_numbers_of_the_notebook_fact(toy_model, method, nodes, shared, carried, faith_new):
    """docs/circuits.md: notebook 08's fact (notebook 04's pool, first record), 50 edges, EAP-IG 5 steps."""
    import random

    from interp_edit import edit
    from interp_edit.toyworld import counterfact_records, world_of
    from interp_edit.toyworld.world import stable_seed

    records = [r for r in counterfact_records(world_of(toy_model))
               if r.relation_id in ("born_in", "profession", "speaks", "instrument")]
    random.Random(stable_seed("contrast-findings")).shuffle(records)
    d = circuit_diff(toy_model, edit(toy_model, [records[0]], method), n_edges=50)
    assert d.edited_nodes == nodes and all(d.on_old.values()) and all(d.on_new.values())
    assert d.shared_edges == pytest.approx(shared, abs=2)
    assert d.old_carried == pytest.approx(carried, abs=0.02)
    assert d.old_faithfulness == pytest.approx(0.545, abs=0.01)
    assert d.new_faithfulness == pytest.approx(faith_new, abs=0.02)
