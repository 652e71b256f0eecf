"""UltraEdit (lifelong closed-form editing with lifelong normalisation): the update equals the
paper's / code's formula computed here in plain torch (keys and gradients read with PyTorch
hooks on the MLP modules, the running statistics and the (KᵀK + I) solve written out here), the
statistics carry over two sequential calls as the code's ``RunningMeanStd`` does, the toy-world
facts are edited, undo is bitwise, and bad input is refused before any compute."""

from __future__ import annotations

import pytest
import torch
from model_state import assert_unchanged, refused_before_any_forward, snapshot

from interp_edit.adapter import get_parameter
from interp_edit.editing import Edit, EditRequest
from interp_edit.editing.methods.ultraedit import UltraEditConfig, UltraEditor, UltraEditState, ultraedit
from interp_edit.errors import EditConfigError, EditRequestError, InvalidArgumentError
from interp_edit.evaluation.counterfact import counterfact_scores, mean_scores

#: small models: one thread is faster than two on this 2-core machine shared with other jobs
pytestmark = pytest.mark.usefixtures("one_thread")
W_OUT = "blocks.{}.mlp.W_out"
F32_EPS = torch.finfo(torch.float32).eps


# --- a reference written from the formula, sharing no code with the module ----------------
def _sequence(model, record):
    """(ids: BOS + prompt + target[:-1], the position predicting the first target token, target ids)."""
    tok = model.tokenizer
    prompt = [tok.bos_token_id] + tok.encode(record.prompt.format(record.subject), add_special_tokens=False)
    target = tok.encode(" " + record.target_new.strip(), add_special_tokens=False)
    return prompt + target[:-1], len(prompt) - 1, target


def _rows(model, records, layers, token, tuple_size):
    """Per group (longest sequences first, groups of ``tuple_size``): per layer the keys (the
    input of ``W_out``) and ∂(mean target NLL of the group)/∂(MLP output) at the rows read."""
    seqs = [_sequence(model, r) for r in records]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]), reverse=True)
    out = []
    for g in range(0, len(order), tuple_size):
        group = [seqs[i] for i in order[g : g + tuple_size]]
        width = max(len(s[0]) for s in group)
        tokens = torch.tensor([s[0] + [0] * (width - len(s[0])) for s in group])
        answers = [(b, start + j, t) for b, (_, start, target) in enumerate(group) for j, t in enumerate(target)]
        rows = ([(b, p) for b, p, _ in answers] if token == "ans"
                else [(b, p) for b, s in enumerate(group) for p in range(len(s[0]))])
        rb, rp = torch.tensor([b for b, _ in rows]), torch.tensor([p for _, p in rows])
        post, probes, handles = {}, {}, []
        for layer in layers:
            mlp = model.blocks[layer].mlp

            def keep(m, i, o, layer=layer, post=post):
                post[layer] = o.detach()

            def add_probe(m, i, o, layer=layer, probes=probes):
                probes[layer] = torch.zeros_like(o, requires_grad=True)
                return o + probes[layer]

            handles += [mlp.hook_post.register_forward_hook(keep), mlp.register_forward_hook(add_probe)]
        try:
            with torch.enable_grad():
                logits = model(tokens)
                ab, ap = torch.tensor([a[0] for a in answers]), torch.tensor([a[1] for a in answers])
                loss = torch.nn.functional.cross_entropy(logits[ab, ap], torch.tensor([a[2] for a in answers]))
                grads = torch.autograd.grad(loss, [probes[layer] for layer in layers])
        finally:
            for h in handles:
                h.remove()
        model.zero_grad(set_to_none=True)
        out.append({layer: (post[layer][rb, rp].double(), grad[rb, rp].double()) for layer, grad in zip(layers, grads, strict=True)})
    return out


class _Running:
    """The code's RunningMeanStd (nets.py): n, mean and the accumulated sum of squares."""

    def __init__(self, size):
        self.n, self.mean, self.var = 0, torch.zeros(size, dtype=torch.float64), torch.zeros(size, dtype=torch.float64)

    def update(self, z):
        m = len(z)
        n = self.n + m
        delta = z.mean(0) - self.mean
        self.mean = self.mean + m * delta / n
        self.var = self.var + m * (z.var(0) if m > 1 else 0.0) + self.n * m * delta**2 / n  # one row: 0 (the code: NaN)
        self.n = n

    def normalise(self, z):
        std = (self.var / (self.n - 1 + F32_EPS)).sqrt()
        return (z - self.mean) / (std + F32_EPS)


def _reference_batch(model, records, layers, token, tuple_size, lr, running, ridge=1.0):
    """Update ``running`` with the batch (group by group, every layer in turn) and return each
    layer's ΔW = (KᵀK + ridge·I)⁻¹ Kᵀ V, V = −lr·‖k̂‖²·ĝ, solved as written (the code: ridge 1)."""
    groups = _rows(model, records, layers, token, tuple_size)
    for found in groups:
        for layer in layers:
            running.update(torch.cat(found[layer], -1))
    deltas = {}
    for layer in layers:
        keys = torch.cat([found[layer][0] for found in groups])
        grads = torch.cat([found[layer][1] for found in groups])
        normed = running.normalise(torch.cat([keys, grads], -1))
        k_hat, g_hat = normed[:, : keys.shape[1]], normed[:, keys.shape[1] :]
        values = -lr * (k_hat * k_hat).sum(-1, keepdim=True) * g_hat
        deltas[layer] = torch.linalg.solve(keys.T @ keys + ridge * torch.eye(keys.shape[1], dtype=torch.float64),
                                         keys.T @ values)
    return deltas


def _distinct(records, n):
    out, seen = [], set()
    for r in records:
        if (r.subject, r.prompt) not in seen:
            seen.add((r.subject, r.prompt))
            out.append(r)
        if len(out) == n:
            return out
    raise AssertionError("not enough records")


def _rel(a, b):
    return float((a - b).norm() / b.norm())


# --- the formula ---------------------------------------------------------------------------
@pytest.mark.parametrize("token", ["ans", "mask"])
def test_update_equals_the_formula_in_plain_torch(tiny_model, person_records, token):
    layers, lr = (1, 2), 0.5
    records = _distinct(person_records, 5)  # groups of 2, 2, 1: the statistics are merged group by group
    before = snapshot(tiny_model)
    e = ultraedit(tiny_model, records, layers=layers, lr=lr, token=token, tuple_size=2, ridge=2.5)
    assert_unchanged(tiny_model, before, no_edits=True)
    expected = _reference_batch(tiny_model, records, layers, token, 2, lr, _Running(64 + 32), ridge=2.5)
    for layer in layers:
        got = e.delta_matrix(W_OUT.format(layer), tiny_model).double()
        assert _rel(got, expected[layer]) < 1e-5, (layer, _rel(got, expected[layer]))
    assert e.layers() == list(layers) and e.info["groups"] == 3


def test_many_rows_take_the_dense_solve(tiny_model, person_records):
    """More rows than the key width (64): ΔW is solved in the d_in × d_in form; same formula."""
    records = _distinct(person_records, 14)
    e = ultraedit(tiny_model, records, layers=(1,), lr=0.1, token="mask", tuple_size=10, ridge=0.7)
    assert e.info["rows"] > 64
    expected = _reference_batch(tiny_model, records, (1,), "mask", 10, 0.1, _Running(96), ridge=0.7)
    assert _rel(e.delta_matrix(W_OUT.format(1), tiny_model).double(), expected[1]) < 1e-5


def test_lifelong_statistics_carry_over_two_sequential_calls(tiny_model, person_records):
    layers, lr, tuple_size = (0, 2), 0.3, 3
    records = _distinct(person_records, 8)
    first, second = records[:4], records[4:]
    state = UltraEditState()
    running = _Running(96)
    e1 = ultraedit(tiny_model, first, layers=layers, lr=lr, tuple_size=tuple_size, state=state)
    ref1 = _reference_batch(tiny_model, first, layers, "ans", tuple_size, lr, running)
    stat = state.stats[(64, 32)]
    assert state.n_batches == 1 and state.n_requests == 4 and stat.n == running.n
    # float32 gradients (the backward may sum its branches in another order): atol at their resolution
    assert torch.allclose(stat.mean, running.mean, rtol=1e-6, atol=1e-7)
    with e1.applied(tiny_model):  # the next batch is read on the edited model
        e2 = ultraedit(tiny_model, second, layers=layers, lr=lr, tuple_size=tuple_size, state=state)
        ref2 = _reference_batch(tiny_model, second, layers, "ans", tuple_size, lr, running)
        fresh = ultraedit(tiny_model, second, layers=layers, lr=lr, tuple_size=tuple_size)  # no earlier statistics
    # the code's update: n adds both batches' rows of every layer (one normaliser per W_out shape)
    stat = state.stats[(64, 32)]
    assert state.n_batches == 2 and state.n_requests == 8
    assert stat.n == running.n == 2 * (e1.info["rows"] + e2.info["rows"])
    assert torch.allclose(stat.mean, running.mean, rtol=1e-6, atol=1e-7)
    assert torch.allclose(stat.var, running.var, rtol=1e-6, atol=1e-7)
    assert e2.info["batches_before"] == 1 and e2.info["requests_before"] == 4
    for layer in layers:
        name = W_OUT.format(layer)
        assert _rel(e1.delta_matrix(name, tiny_model).double(), ref1[layer]) < 1e-5
        assert _rel(e2.delta_matrix(name, tiny_model).double(), ref2[layer]) < 1e-5
        # the carried statistics matter: without them the second batch's update differs
        assert _rel(fresh.delta_matrix(name, tiny_model).double(), ref2[layer]) > 1e-2


def test_the_state_round_trips_and_an_editor_carries_it(tiny_model, person_records):
    records = _distinct(person_records, 4)
    editor = UltraEditor(tiny_model, layers=(1,), lr=0.2)
    a = editor(tiny_model, records[:2]).apply(tiny_model)
    saved = UltraEditState.from_state_dict(editor.state.state_dict())
    b = editor(tiny_model, records[2:])
    c = ultraedit(tiny_model, records[2:], layers=(1,), lr=0.2, state=saved)
    a.undo(tiny_model)
    assert torch.equal(b.delta_matrix(W_OUT.format(1), tiny_model), c.delta_matrix(W_OUT.format(1), tiny_model))
    assert saved.rows() == editor.state.rows()


# --- behaviour -----------------------------------------------------------------------------
def test_toy_world_facts_are_edited(toy_model, person_records):
    records = person_records[100:130]
    result = ultraedit(toy_model, records)  # the toy-world preset: W_out of layers 1-4, lr 1.5e-3, token "mask"
    assert result.config["preset"] == "toyworld" and result.layers() == [1, 2, 3, 4]
    before = mean_scores(counterfact_scores(toy_model, records))
    with result.applied(toy_model):
        scores = mean_scores(counterfact_scores(toy_model, records))
    # docs/editing.md: one batch of 30 person facts, 0.967 / 0.967 / 0.796 (unedited 0 / 0 / 1); ±1 fact
    assert before["efficacy"] == 0.0
    assert scores["efficacy"] == pytest.approx(0.967, abs=0.034)
    assert scores["paraphrase"] == pytest.approx(0.967, abs=0.034)
    assert scores["neighborhood"] == pytest.approx(0.796, abs=0.034)


def test_apply_undo_is_bitwise_and_the_edit_saves(toy_model, person_records, tmp_path):
    before = snapshot(toy_model)
    e = ultraedit(toy_model, person_records[:3])
    w_out = get_parameter(toy_model, "blocks.2.mlp.W_out").detach().clone()  # TransformerLens layout, either backend
    e.apply(toy_model)
    assert not torch.equal(get_parameter(toy_model, "blocks.2.mlp.W_out").detach(), w_out)
    e.undo(toy_model)
    assert_unchanged(toy_model, before, no_edits=True)
    loaded = Edit.load(e.save(tmp_path / "ultra"), toy_model)
    assert loaded.method == "ultraedit" and loaded.content_hash() == e.content_hash()


# --- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("fields, match", [
    (dict(lr=-1.0), "lr"),
    (dict(lr=float("nan")), "lr"),
    (dict(ridge=0.0), "ridge"),
    (dict(tuple_size=0), "tuple_size"),
    (dict(token="subject"), "token"),
    (dict(layers=(9,)), "out of range"),
    (dict(layers=()), "layers"),
    (dict(layers=(1, 1)), "layers"),
    (dict(bogus=1), "bogus"),
])
def test_bad_config_is_refused_before_any_compute(toy_model, person_records, fields, match):
    with refused_before_any_forward(toy_model), pytest.raises(EditConfigError, match=match):
        ultraedit(toy_model, person_records[:2], **fields)


def test_bad_requests_and_state_are_refused_before_any_compute(toy_model, person_records):
    state = UltraEditState()
    with refused_before_any_forward(toy_model), pytest.raises(EditRequestError, match="no edit requests"):
        ultraedit(toy_model, [], state=state)
    with refused_before_any_forward(toy_model), pytest.raises(EditRequestError, match="request 1"):
        ultraedit(toy_model, [EditRequest("{} was born in", "Talvik Corlo", "Karsa"), EditRequest("{} plays the", "x", "")])
    # one request with a one-token target under token="ans": one row, nothing to normalise with
    one = EditRequest("{} was born in", "Talvik Corlo", "Gemmel")
    with refused_before_any_forward(toy_model), pytest.raises(EditRequestError, match="requests"):
        ultraedit(toy_model, [one], token="ans")
    with refused_before_any_forward(toy_model), pytest.raises(InvalidArgumentError, match="'state'"):
        ultraedit(toy_model, person_records[:2], state={"n": 0})
    other = UltraEditState()
    other.model_fingerprint = "another model"
    with refused_before_any_forward(toy_model), pytest.raises(InvalidArgumentError, match="'state'"):
        ultraedit(toy_model, person_records[:2], state=other)
    assert state.n_batches == 0 and state.stats == {}  # a refused call leaves the state as it was


def test_presets_and_registry(toy_model):
    from interp_edit.editing import get_editor

    assert get_editor("ultraedit").config_class is UltraEditConfig
    assert UltraEditConfig.for_model(toy_model).layers == (1, 2, 3, 4)
    gptj = UltraEditConfig.for_model(toy_model, preset="gpt-j-6B")
    assert gptj.layers == tuple(range(18, 27)) and gptj.lr == 1e-6 and gptj.token == "ans" and gptj.tuple_size == 10
    assert UltraEditConfig.PRESETS["Mistral-7B-v0.1"]["layers"] == (29, 30)


def test_sequential_run_experiment_carries_and_saves_the_state(toy_model, tmp_path):
    import json

    from interp_edit.evaluation.runner import run_experiment

    before = snapshot(toy_model)
    res = run_experiment(toy_model, "toyworld-counterfact", "ultraedit", n=4, batch_size=2, sequential=True,
                         unrelated=5, fluency=False, progress=False, out=tmp_path)
    assert_unchanged(toy_model, before, no_edits=True)
    assert res.settings["method"] == "ultraedit" and "efficacy_score" in res.final_metrics()
    saved = sorted((tmp_path / "edits").glob("ultraedit_state_*.pt"))
    assert [p.name for p in saved] == ["ultraedit_state_00001.pt"]  # the earlier one pruned
    state = UltraEditState.from_state_dict(torch.load(saved[0]))
    assert state.n_batches == 2 and state.n_requests == 4
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [line["type"] for line in lines] == ["settings", "baseline", "batch", "batch"]
