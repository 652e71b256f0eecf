"""MEGA on the toy world: no weight change, the gate leaves unrelated prompts untouched and
flips the edit prompt's answer, the fitted map itself, save / load / undo, layers from a
contrast study, and bad config naming the field with the model unchanged."""

from __future__ import annotations

import pytest
import torch

from interp_edit.adapter import hook_counts
from interp_edit.analysis.scoring import encode_target
from interp_edit.batching import last_token_logits
from interp_edit.editing import Edit, GatedLinearMap, MEGAConfig, get_editor, mega
from interp_edit.editing.methods.mega import fit_map, last_token_attn_out, source_prompts
from interp_edit.errors import EditConfigError


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(model, state):
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


def text(record):
    return record.prompt.format(record.subject)


def new_id(model, record):
    return encode_target(model.tokenizer, record.target_new)[0]


def test_mega_flips_answers_without_weight_change_and_leaves_unrelated_prompts(toy_model, person_records):
    records = person_records[:10]
    subjects = {r.subject for r in records}
    # other subjects' facts (a prompt about an edited subject is not unrelated)
    unrelated = [text(r) for r in person_records[40:60] if r.subject not in subjects][:10]
    assert len(unrelated) == 10
    before, base = snapshot(toy_model), last_token_logits(toy_model, unrelated)
    flips = 0
    for record in records:
        result = mega(toy_model, [record])
        assert not result.changes_weights and result.deltas == {}
        assert result.layers() == [2, 3, 4]
        assert hook_counts(toy_model) == {}  # computing the edit leaves no hook
        with result.applied(toy_model):
            assert_same(toy_model, before)  # bitwise: no weight change
            logits = last_token_logits(toy_model, [text(record), *unrelated])
        flips += int(logits[0].argmax() == new_id(toy_model, record))
        assert (logits[1:] - base).abs().max() <= 1e-6
        assert hook_counts(toy_model) == {}
    # measured: 10 of 10 (toy preset); the unrelated prompts bitwise unchanged
    assert flips >= 8
    assert torch.equal(last_token_logits(toy_model, unrelated), base)


def test_the_gate_and_the_affine_map_act_only_on_passing_positions():
    torch.manual_seed(0)
    d, k, n = 6, 6, 30
    sources = torch.randn(n, d) + 3.0
    transform, shift = torch.randn(d, d) * 0.3 + torch.eye(d), torch.randn(d)
    targets = sources @ transform.T + shift
    mu_s, mu_t, basis, mapping = fit_map(sources, targets, k, ridge=0.0)
    keys = torch.nn.functional.normalize(sources, dim=-1)
    hook = GatedLinearMap("blocks.0.hook_attn_out", mu_s[None], mu_t[None], basis[None], mapping[None], keys[None],
                          torch.ones(1, n, dtype=torch.bool), gate_threshold=0.999)
    # with k = d and exactly affine pairs, the map reproduces the targets
    assert (hook(sources[None]) - targets[None]).abs().max() < 1e-3
    # a far-away activation fails the gate and comes back bit for bit, next to mapped ones
    other = -sources[:2]
    mixed = torch.stack([torch.cat([sources[:3], other]), torch.cat([other, sources[3:6]])])
    out = hook(mixed)
    assert torch.equal(out[0, 3:], other) and torch.equal(out[1, :2], other)
    assert (out[0, :3] - targets[:3]).abs().max() < 1e-3 and (out[1, 2:] - targets[3:6]).abs().max() < 1e-3
    # k < d: the map acts in the subspace, the mean shift in full
    mu_s2, mu_t2, basis2, mapping2 = fit_map(sources, targets, 2, ridge=1.0)
    assert basis2.shape == (d, 2) and torch.allclose(basis2.T @ basis2, torch.eye(2), atol=1e-5)
    small = GatedLinearMap("h", mu_s2[None], mu_t2[None], basis2[None], mapping2[None], keys[None],
                           torch.ones(1, n, dtype=torch.bool), gate_threshold=-1.0)
    assert torch.allclose(small(mu_s2[None, None])[0, 0], mu_t2, atol=1e-5)


def test_several_requests_share_one_hook_per_layer_each_behind_its_own_gate(toy_model, person_records):
    records = person_records[10:13]
    result = mega(toy_model, records, n_prefixes=3)
    assert sorted(result.hooks) == ["layer2", "layer3", "layer4"]
    assert all(h.mu_source.shape[0] == 3 for h in result.hooks.values())
    with result.applied(toy_model):
        logits = last_token_logits(toy_model, [text(r) for r in records])
    wins = [int(logits[i].argmax() == new_id(toy_model, r)) for i, r in enumerate(records)]
    assert sum(wins) >= 2  # measured 3 of 3


def test_save_load_round_trip_and_undo(toy_model, person_records, tmp_path):
    records = person_records[13:15]
    prompts = [text(r) for r in records] + [text(person_records[60])]
    base = last_token_logits(toy_model, prompts)
    result = get_editor("mega").fn(toy_model, records, n_prefixes=2)
    with result.applied(toy_model):
        edited = last_token_logits(toy_model, prompts)
    assert hook_counts(toy_model) == {} and torch.equal(last_token_logits(toy_model, prompts), base)
    loaded = Edit.load(result.save(tmp_path / "mega"))
    assert loaded.method == "mega" and loaded.config["layers"] == [2, 3, 4] and not loaded.changes_weights
    for label, hook in result.hooks.items():
        assert isinstance(loaded.hooks[label], GatedLinearMap)
        for key, tensor in hook.tensors().items():
            assert torch.equal(loaded.hooks[label].tensors()[key], tensor), (label, key)
    loaded.apply(toy_model)
    try:
        toy_model.reset_hooks()  # permanent hooks survive the analyses' own hook handling
        assert torch.equal(last_token_logits(toy_model, prompts), edited)
    finally:  # the toy model is shared: undone also when the assertion fails
        loaded.undo(toy_model)
    assert hook_counts(toy_model) == {} and torch.equal(last_token_logits(toy_model, prompts), base)
    with loaded.hooked(toy_model):
        assert torch.equal(last_token_logits(toy_model, prompts), edited)
    assert hook_counts(toy_model) == {}
    assert (edited[:2] - base[:2]).abs().max() > 1.0 and torch.equal(edited[2], base[2])


class StubContrast:
    """Duck-typed contrast study result: records the call, returns fixed layers."""

    def __init__(self, layers):
        self.layers, self.calls = layers, []

    def top_layers(self, module="attn", direction="promote_new", k=2, min_layer=None):
        self.calls.append({"module": module, "direction": direction, "k": k, "min_layer": min_layer})
        return list(self.layers)


def test_layers_come_from_a_contrast_study_or_the_upper_half(toy_model, person_records):
    record = person_records[15]
    stub = StubContrast([5, 3])
    result = mega(toy_model, [record], contrast=stub, layers=None, n_prefixes=2, n_contrast_layers=2)
    assert stub.calls == [{"module": "attn", "direction": "promote_new", "k": 2, "min_layer": 3}]
    assert result.layers() == [3, 5] and result.info["layers_chosen_by"] == "contrast"
    assert sorted(result.hooks) == ["layer3", "layer5"]
    plain = mega(toy_model, [record], layers=None, n_prefixes=2, steps=1)
    assert plain.layers() == [3, 4, 5] and plain.info["layers_chosen_by"] == "upper_half"
    given = mega(toy_model, [record], contrast=stub, layers=(1,), n_prefixes=2, steps=1)
    assert given.layers() == [1] and len(stub.calls) == 1  # given layers win over the contrast
    with pytest.raises(EditConfigError, match="contrast.top_layers"):
        mega(toy_model, [record], contrast=StubContrast([9]), layers=None, n_prefixes=2)
    with pytest.raises(EditConfigError, match="top_layers"):
        mega(toy_model, [record], contrast=object(), layers=None, n_prefixes=2)


def test_forced_targets_are_the_forced_prompts_attention_outputs(toy_model, person_records):
    record = person_records[16]
    result = mega(toy_model, [record], target_mode="forced", layers=(2, 4), n_prefixes=2, k=2)
    cfg = MEGAConfig.for_model(toy_model, n_prefixes=2)
    from interp_edit.adapter import model_fingerprint
    from interp_edit.editing.requests import prepare_requests
    from interp_edit.editing.targets import context_prefixes

    treq = prepare_requests(toy_model, [record], model_fingerprint(toy_model))[0]
    texts = source_prompts(treq, context_prefixes(toy_model, 2, cfg.prefix_length, cfg.seed), True)
    forced = [cfg.forcing_template.format(prompt=t, new=record.target_new) for t in texts]
    assert forced[0] == f"{text(record)} {record.target_new} . {text(record)}"
    acts = last_token_attn_out(toy_model, forced, [2, 4])
    for i, layer in enumerate((2, 4)):
        assert torch.allclose(result.hooks[f"layer{layer}"].mu_target[0], acts[i].mean(0), atol=1e-5)
    # the lowest layer's sources are the unedited activations of the source prompts
    sources = last_token_attn_out(toy_model, texts, [2])[0]
    assert torch.allclose(result.hooks["layer2"].mu_source[0], sources.mean(0), atol=1e-5)


@pytest.mark.parametrize(("overrides", "field"), [
    ({"k": 40}, "'k'"),
    ({"k": 0}, "'k'"),
    ({"gate_threshold": 1.5}, "'gate_threshold'"),
    ({"gate_threshold": -1.01}, "'gate_threshold'"),
    ({"layers": (2, 6)}, "'layers'"),
    ({"layers": (-1,)}, "'layers'"),
    ({"layers": ()}, "'layers'"),
    ({"target_mode": "ot"}, "'target_mode'"),
    ({"strength": 0.0}, "'strength'"),
    ({"forcing_template": "{prompt} only"}, "'forcing_template'"),
    ({"no_such_field": 1}, "no_such_field"),
])
def test_bad_config_names_the_field_and_leaves_the_model(toy_model, person_records, overrides, field):
    before = snapshot(toy_model)
    with pytest.raises(EditConfigError, match=field):
        mega(toy_model, [person_records[17]], **overrides)
    assert_same(toy_model, before)
    assert hook_counts(toy_model) == {}


def test_a_bad_request_names_its_index_and_leaves_the_model(toy_model, person_records):
    from interp_edit.editing import EditRequest
    from interp_edit.errors import EditRequestError

    before = snapshot(toy_model)
    bad = EditRequest("{} works as a", person_records[1].subject, "")
    with pytest.raises(EditRequestError, match="request 1.*target_new"):
        mega(toy_model, [person_records[0], bad])
    with pytest.raises(EditRequestError, match="request 0.*too|request 0.*context"):
        mega(toy_model, [person_records[0]], target_mode="forced", forcing_template="{prompt} {new} " * 12 + "{prompt}")
    assert_same(toy_model, before)
    assert hook_counts(toy_model) == {}


def test_a_calibrated_gate_uses_each_request_s_threshold_and_the_most_similar_passing_request():
    d = 4
    keys = torch.eye(d)[:2, None]  # request 0's source e0, request 1's e1
    zero = torch.zeros(2, d)
    shift = torch.stack([torch.full((d,), 1.0), torch.full((d,), 2.0)])
    hook = GatedLinearMap("h", zero, shift, torch.zeros(2, d, 1), torch.ones(2, 1, 1), keys, torch.ones(2, 1, dtype=torch.bool),
                          gate_threshold=0.5, gate_thresholds=torch.tensor([0.5, 0.99]))
    near0 = 0.6 * keys[0, 0] + 0.8 * keys[1, 0]  # similarity 0.6 to request 0, 0.8 to request 1
    sims = hook.similarities(torch.stack([keys[0, 0], keys[1, 0], near0]))
    assert torch.allclose(sims.diagonal()[:2], torch.ones(2), atol=1e-6)
    out = hook(torch.stack([keys[0, 0], keys[1, 0], near0, -keys[0, 0]])[None])[0]
    assert torch.allclose(out[0], keys[0, 0] + 1.0) and torch.allclose(out[1], keys[1, 0] + 2.0)
    assert torch.allclose(out[2], near0 + 1.0)  # the more similar request 1 fails its own (higher) threshold
    assert torch.equal(out[3], -keys[0, 0])
    # a position passing both gates goes to the more similar request
    both = GatedLinearMap("h", zero, shift, torch.zeros(2, d, 1), torch.ones(2, 1, 1), keys,
                          torch.ones(2, 1, dtype=torch.bool), gate_threshold=-1.0, gate_thresholds=torch.tensor([-1.0, -1.0]))
    assert torch.allclose(both(keys[1, 0][None, None])[0, 0], keys[1, 0] + 2.0)
    assert torch.allclose(both(keys[0, 0][None, None])[0, 0], keys[0, 0] + 1.0)


def test_a_calibrated_edit_leaves_every_calibration_position_and_saves_its_thresholds(toy_model, person_records, tmp_path):
    from interp_edit.batching import encode_prompts, pad_right
    from interp_edit.statistics.collect import default_corpus

    record = person_records[20]
    texts = [t for t in default_corpus(toy_model, 60) if record.subject not in t]
    tokens, lengths = pad_right(encode_prompts(toy_model.tokenizer, texts), toy_model.tokenizer.pad_token_id)
    real = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
    base = toy_model(tokens)[real]
    loose = mega(toy_model, [record], gate_threshold=0.5)
    with loose.applied(toy_model):
        assert not torch.equal(toy_model(tokens)[real], base)  # a loose fixed gate lets calibration text through
    calibrated = mega(toy_model, [record], gate_threshold=0.5, gate_calibration_texts=60, gate_margin=0.02)
    info = calibrated.info["gate_calibration"]
    assert info["texts"] == len(texts) and sorted(info["layers"]) == [2, 3, 4]
    for row in info["layers"].values():
        assert row["thresholds"][0] == pytest.approx(max(0.5, row["calibration_max"][0] + 0.02))
    with calibrated.applied(toy_model):
        assert torch.equal(toy_model(tokens)[real], base)  # no calibration position passes any layer's gate
        edited = last_token_logits(toy_model, [text(record)])
    assert edited[0].argmax() == new_id(toy_model, record)
    loaded = Edit.load(calibrated.save(tmp_path / "calibrated"))
    for label, hook in calibrated.hooks.items():
        assert torch.equal(loaded.hooks[label].gate_thresholds, hook.gate_thresholds)


@pytest.fixture(scope="module")
def saved_map(toy_model, person_records, tmp_path_factory):
    return mega(toy_model, person_records[:1], layers=(2,), n_prefixes=2).save(tmp_path_factory.mktemp("mega") / "ok")


@pytest.mark.parametrize("tensor, shape", [("map", lambda s: (s[0], s[1], s[2] + 3)), ("basis", lambda s: (s[0], s[1] - 1, s[2])),
                                           ("gate_mask", lambda s: (s[0], s[1] + 1)),
                                           ("mu_target", lambda s: (s[0] + 1, s[1]))])
def test_a_saved_map_whose_tensors_do_not_fit_together_is_refused_at_load(toy_model, saved_map, tmp_path, tensor, shape):
    """It loaded, and the first forward failed inside torch.einsum."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from interp_edit.errors import CheckpointError

    with safe_open(str(saved_map), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    key = next(k for k in tensors if k.endswith(f"::{tensor}"))
    tensors[key] = torch.zeros(shape(tuple(tensors[key].shape)), dtype=tensors[key].dtype)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="do not fit together"):
        Edit.load(tmp_path / "bad.safetensors", toy_model)
