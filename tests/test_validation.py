"""Every input is checked where it enters: wrong types, non-finite numbers, malformed items in
batches, requests that conflict, corrupt saved edits and bad CLI flags all raise a named error
from interp_edit.errors (or exit 2 with one line) before any compute, leaving the model as it
was. Property-based (hypothesis) over the entry points, with few examples on the toy model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model_state import assert_unchanged, snapshot

from interp_edit import average_indirect_effect, causal_trace, logit_lens
from interp_edit.batching import last_token_logits
from interp_edit.editing import Edit, EditRequest, edit, get_editor
from interp_edit.errors import (
    CheckpointError,
    EditApplicationError,
    EditConfigError,
    EditRequestError,
    InterpEditError,
    InvalidArgumentError,
    PromptTooLongError,
)
from interp_edit.validation import check_fields, check_int, check_real

PROMPT, SUBJECT = "Talvik Corlo was born in", "Talvik Corlo"
FEW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

#: values of the wrong type for an integer / a real / a text argument
NOT_INT = st.one_of(st.floats(allow_nan=True), st.text(max_size=3), st.booleans(), st.none(), st.lists(st.integers(), max_size=2))
NOT_REAL = st.one_of(st.sampled_from([math.inf, -math.inf, math.nan]), st.text(max_size=3), st.booleans(), st.none())
NOT_TEXT = st.one_of(st.integers(), st.floats(), st.lists(st.text(max_size=3), max_size=2), st.booleans())


def test_check_helpers():
    assert check_int(3, "n", minimum=1) == 3
    for bad in (True, 3.0, "3", None):
        with pytest.raises(InterpEditError, match="n must be an integer"):
            check_int(bad, "n")
    assert check_real(2, "x") == 2.0
    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(InterpEditError, match="x must be finite"):
            check_real(bad, "x")
    with pytest.raises(InterpEditError, match=r"x\[2\] must be > 0"):
        check_real(0.0, "x", positive=True, index=2)


@FEW
@given(field=st.sampled_from(["noise", "samples", "window", "seed", "subject_occurrence", "embedding_std"]), data=st.data())
def test_trace_arguments_of_the_wrong_type_or_infinite_raise_named_errors(toy_model, field, data):
    value = data.draw(NOT_REAL if field in ("noise", "embedding_std") else NOT_INT)
    if field in ("embedding_std", "window") and value is None:
        return  # None means "measure it" / "the depth-scaled default window"
    with pytest.raises(InterpEditError, match=field):
        causal_trace(toy_model, PROMPT, SUBJECT, **{"samples": 1, field: value})
    assert all(not hp.fwd_hooks for hp in toy_model.hook_dict.values())


@FEW
@given(which=st.sampled_from(["prompt", "subject", "target"]), value=NOT_TEXT)
def test_trace_texts_of_the_wrong_type_raise_named_errors(toy_model, which, value):
    args = {"prompt": PROMPT, "subject": SUBJECT, "target": None, which: value}
    with pytest.raises(InterpEditError, match=which):
        causal_trace(toy_model, args["prompt"], args["subject"], args["target"], samples=1)


def test_infinite_noise_no_longer_gives_nan_traces(toy_model):
    with pytest.raises(InterpEditError, match="noise .* must be finite"):
        causal_trace(toy_model, PROMPT, SUBJECT, noise=math.inf)


@FEW
@given(position=st.integers(0, 2), bad=st.sampled_from(["", "   ", 7, None, "long"]))
def test_one_bad_prompt_in_a_batch_is_named_before_any_forward(toy_model, position, bad):
    prompts = [PROMPT, "Lisvo Pimlo speaks", "Fenpas Astlo works as a"]
    prompts[position] = " ".join(["Veltra"] * 70) if bad == "long" else bad
    calls = []
    with toy_model.hooks(fwd_hooks=[("hook_embed", lambda act, hook: calls.append(1))]):
        with pytest.raises(InterpEditError, match=rf"prompts\[{position}\]"):
            last_token_logits(toy_model, prompts)
    assert not calls


@FEW
@given(position=st.integers(0, 2), bad=st.sampled_from(["empty", "long", "subject", "type", "shape"]))
def test_one_bad_fact_among_good_ones_is_named_before_any_trace(toy_model, person_records, position, bad):
    facts = [(r.prompt.format(r.subject), r.subject, r.target_true) for r in person_records[:3]]
    prompt, subject, target = facts[position]
    facts[position] = {"empty": ("", subject, target), "long": (" ".join(["Veltra"] * 70) + " " + prompt, subject, target),
                       "subject": (prompt, "Nobody Here", target), "type": (prompt, [subject], target),
                       "shape": (prompt, subject)}[bad]
    with pytest.raises(InterpEditError, match=rf"facts\[{position}\]"):
        average_indirect_effect(toy_model, facts, samples=1, progress=False)


@FEW
@given(position=st.integers(0, 2), bad=st.sampled_from(["subject", "past", "negative", "type", "target", "record"]))
def test_one_bad_token_fact_among_good_ones_is_named_before_any_trace(toy_model, person_records, position, bad):
    """``edit_token_aie`` checks every fact before its first forward, as the AIE does."""
    from interp_edit.analysis.edit_token_aie import TokenFact, edit_token_aie

    facts = [TokenFact(r.prompt.format(r.subject), r.subject, r.target_true, 1) for r in person_records[:3]]
    f = facts[position]
    facts[position] = {"subject": TokenFact(f.prompt, "Nobody Here", f.target, 1),
                       "past": TokenFact(f.prompt, f.subject, f.target, 40),
                       "negative": TokenFact(f.prompt, f.subject, f.target, -1),
                       "type": TokenFact(f.prompt, f.subject, f.target, 1.5),
                       "target": TokenFact(f.prompt, f.subject, 3, 1),
                       "record": (f.prompt, f.subject, f.target, 1)}[bad]
    calls = []
    with toy_model.hooks(fwd_hooks=[("hook_embed", lambda act, hook: calls.append(1))]):
        with pytest.raises(InterpEditError, match=rf"facts\[{position}\]"):
            edit_token_aie(toy_model, facts, samples=1)
    assert not calls


@pytest.mark.parametrize("entry", ["activation_patch", "attribution_patch", "attribution_patch_error"])
def test_patching_a_prompt_longer_than_the_context_is_named_before_any_forward(toy_model, entry):
    """It crashed inside TransformerLens (a positional-embedding size mismatch) after a forward."""
    import interp_edit

    run = getattr(interp_edit, entry)
    clean = "born in " * 40 + "Talvik Corlo was born in"
    corrupted = "born in " * 40 + "Beldel Kordor was born in"
    calls = []
    with toy_model.hooks(fwd_hooks=[("hook_embed", lambda act, hook: calls.append(1))]):
        with pytest.raises(PromptTooLongError, match=f"context is {toy_model.cfg.n_ctx}"):
            run(toy_model, clean, corrupted)
        with pytest.raises(PromptTooLongError, match="with its answer"):  # the answer's tokens count
            run(toy_model, " ".join(["born"] * 60), " ".join(["in"] * 60), answer=" ".join(["Karsa"] * 10))
        with pytest.raises(InvalidArgumentError, match="sites must be a list"):
            run(toy_model, PROMPT, PROMPT, sites=None)
    assert not calls


def test_attribution_patch_error_takes_the_exact_engines_options(toy_model):
    """``merge`` and ``kernels`` go to the exact patching only (they raised a TypeError in
    attribution patching, after the exact run)."""
    from interp_edit import attribution_patch_error

    clean, corrupted = "Talvik Corlo was born in", "Beldel Kordor was born in"
    plain = attribution_patch_error(toy_model, clean, corrupted, sites=("mlp_out",))
    for option in (dict(merge="all"), dict(kernels="fused"), dict(max_rows=3)):
        other = attribution_patch_error(toy_model, clean, corrupted, sites=("mlp_out",), **option)
        assert other["mlp_out"]["max_abs_error"] == pytest.approx(plain["mlp_out"]["max_abs_error"], abs=1e-5)


def test_the_aie_refuses_logit_diff_and_takes_dataset_cases(toy_model):
    """``metric="logit_diff"`` needs a foil the AIE cannot take: refused by name before any
    forward (it failed after one). ``load_dataset``'s cases are facts (by their rewrite)."""
    from interp_edit import load_dataset

    cases = load_dataset("toyworld-counterfact")[:2]
    calls = []
    with toy_model.hooks(fwd_hooks=[("hook_embed", lambda act, hook: calls.append(1))]):
        with pytest.raises(InvalidArgumentError, match="logit_diff.*foil"):
            average_indirect_effect(toy_model, cases, samples=1, progress=False, metric="logit_diff")
    assert not calls
    from_cases = average_indirect_effect(toy_model, cases, kinds=("mlp",), samples=1, progress=False)
    tuples = [(c.rewrite.text, c.rewrite.subject, c.rewrite.target_true) for c in cases]
    from_tuples = average_indirect_effect(toy_model, tuples, kinds=("mlp",), samples=1, progress=False)
    assert torch.equal(from_cases.effects.nan_to_num(), from_tuples.effects.nan_to_num())


def test_result_lookups_name_what_they_lack(toy_model, person_records):
    trace = causal_trace(toy_model, PROMPT, SUBJECT, samples=1, kinds=("hidden",))
    with pytest.raises(InvalidArgumentError, match="kind must be one of \\['hidden'\\]"):
        trace.kind("mlp")
    with pytest.raises(InvalidArgumentError, match="k must be >= 0"):
        trace.top_sites(-1)
    assert trace.top_sites(0) == []
    aie = average_indirect_effect(toy_model, person_records[:1], kinds=("mlp",), samples=1, progress=False)
    with pytest.raises(InvalidArgumentError, match="kind must be one of"):
        aie.peak("attn")
    with pytest.raises(InvalidArgumentError, match="role must be one of"):
        aie.curve("mlp", "middle")


def test_an_empty_fact_list_and_a_too_large_k_are_named(toy_model):
    with pytest.raises(InterpEditError, match="no facts"):
        average_indirect_effect(toy_model, [], progress=False)
    with pytest.raises(InterpEditError, match="k must be <="):
        logit_lens(toy_model, PROMPT, k=toy_model.cfg.d_vocab_out + 1)


EDITORS = ["rome", "memit", "alphaedit", "ft", "memit_csk", "fine", "intattn", "mega", "ace"]


@pytest.mark.parametrize("method", EDITORS)
def test_every_editor_config_checks_field_types(toy_model, method):
    state = snapshot(toy_model)
    request = EditRequest("{} was born in", SUBJECT, "Veltra")
    for field, value in (("steps", "10"), ("steps", 10.0), ("seed", True)):
        with pytest.raises(EditConfigError, match=field):
            edit(toy_model, [request], method, **{field: value})
    assert_unchanged(toy_model, state, no_edits=True)


def test_a_preset_with_a_config_object_is_refused_not_relabelled(toy_model):
    """``edit(..., config=cfg, preset=X)`` replaced only the label: the edit said preset X while
    running cfg's settings. Refused before any forward, naming the field."""
    from interp_edit.editing.methods.rome import ROMEConfig

    state = snapshot(toy_model)
    cfg = ROMEConfig.for_model(toy_model)
    calls = []
    with toy_model.hooks(fwd_hooks=[("hook_embed", lambda act, hook: calls.append(1))]):
        for preset in ("gpt2-xl", "paper", "toyworld"):
            with pytest.raises(EditConfigError, match=f"field 'preset' \\('{preset}'\\).*ROMEConfig was given"):
                edit(toy_model, [EditRequest("{} was born in", SUBJECT, "Veltra")], "rome", config=cfg, preset=preset)
    assert not calls
    assert_unchanged(toy_model, state, no_edits=True)


def test_a_cache_dir_a_method_and_apply_that_cannot_be_are_named_before_any_forward(toy_model, tmp_path):
    """A cache_dir that is a file failed after computing the statistics (FileExistsError); one
    that is not a path raised pathlib's TypeError; an unhashable method, a TypeError."""
    state = snapshot(toy_model)
    a_file = tmp_path / "not_a_folder"
    a_file.write_text("x")
    request = EditRequest("{} was born in", SUBJECT, "Veltra")
    calls = []
    with toy_model.hooks(fwd_hooks=[("hook_embed", lambda act, hook: calls.append(1))]):
        for kwargs, match in ((dict(cache_dir=str(a_file)), "cache_dir .* is a file, not a folder"),
                              (dict(cache_dir=5), "cache_dir must be a folder path"),
                              (dict(method=["rome"]), "unknown editing method"),
                              (dict(apply="yes"), "apply must be True or False")):
            with pytest.raises(EditConfigError, match=match):
                edit(toy_model, [request], **{"method": "rome", "stats_samples": 50, **kwargs})
    assert not calls
    assert_unchanged(toy_model, state, no_edits=True)


@pytest.mark.parametrize("method, field, value", [
    ("rome", "layer", 6), ("memit", "layers", (0, 9)), ("intattn", "attn_layers", (-1,)), ("ace", "query_layers", (7,)),
    ("mega", "min_layer", 99), ("grace", "layer", 6), ("wise", "layer", 60), ("ultraedit", "layers", (1, 6)),
    ("ft", "layer", 6), ("kn", "layers", (8,)),
])
def test_every_layer_field_is_checked_against_the_model_when_the_config_is_resolved(toy_model, method, field, value):
    """One rule (``editing.config.check_layer_fields``) for every editor's layer fields, run when
    the config is resolved for an edit: before any forward (MEGA's ``min_layer=99`` used to be
    accepted and ignored). ``for_model`` alone still shows a preset without checking it."""
    from interp_edit.editing.config import resolve

    cls = get_editor(method).config_class
    calls = []
    with toy_model.hooks(fwd_hooks=[("hook_embed", lambda act, hook: calls.append(1))]):
        with pytest.raises(EditConfigError, match=f"field '{field}'.*(out of range|outside)"):
            edit(toy_model, [EditRequest("{} was born in", SUBJECT, "Veltra")], method, **{field: value})
        with pytest.raises(EditConfigError, match=f"field '{field}'"):
            resolve(cls, toy_model, cls.for_model(toy_model, **{field: value}), {})
    assert not calls


PREFIXED = ["rome", "memit", "alphaedit", "memit_csk", "fine", "intattn", "mega", "ace", "emmet", "pmet"]


@pytest.mark.parametrize("method", PREFIXED)
def test_context_prefixes_longer_than_the_context_are_refused_before_any_forward(toy_model, method):
    """A prefix that leaves no room for the prompt in the model's context names its field
    before any forward (it used to crash inside TransformerLens while sampling); one that
    leaves a token is allowed past the check."""
    state = snapshot(toy_model)
    request = EditRequest("{} was born in", SUBJECT, "Veltra")
    n_ctx = toy_model.cfg.n_ctx
    calls = []
    with toy_model.hooks(fwd_hooks=[("hook_embed", lambda act, hook: calls.append(1))]):
        for overrides, field in ((dict(prefix_length=n_ctx - 1, n_prefixes=2), "prefix_length"),
                                 (dict(prefix_length=3 * n_ctx, n_prefixes=2), "prefix_length"),
                                 (dict(prefix_lengths=((5, 1), (n_ctx, 2))), "prefix_lengths")):
            if field == "prefix_lengths" and method == "fine":
                continue
            with pytest.raises(EditConfigError, match=f"field '{field}'.*context of {n_ctx}"):
                edit(toy_model, [request], method, **overrides)
    assert not calls
    assert_unchanged(toy_model, state, no_edits=True)


@pytest.mark.parametrize("field", ["kl_factor", "stats_samples", "n_prefixes", "clamp_norm_factor", "edit_token"])
def test_ft_refuses_the_fields_it_would_ignore(toy_model, field):
    """FT-L's config inherited the target optimisation's and the statistics' fields and accepted
    them unread: ``edit(model, reqs, "ft", kl_factor=10)`` ran as if it were not given."""
    from interp_edit.editing import edit
    from interp_edit.editing.methods.finetune import FTConfig

    state = snapshot(toy_model)
    with pytest.raises(EditConfigError, match=f"{field}"):
        edit(toy_model, [EditRequest("{} was born in", SUBJECT, "Veltra")], "ft", **{field: 1})
    assert_unchanged(toy_model, state, no_edits=True)
    assert FTConfig().early_stop_loss == 1e-2  # the authors' ft_main threshold


def test_the_prefix_room_rule_at_its_edge(toy_model):
    """One token of room is enough for the check (the prompt's own fit is checked after
    sampling); FT-L, which samples no prefixes, has no such fields; given prefixes are not sampled."""
    from interp_edit.editing.config import resolve
    from interp_edit.editing.methods.finetune import FTConfig
    from interp_edit.editing.methods.rome import ROMEConfig

    n_ctx = toy_model.cfg.n_ctx
    resolve(ROMEConfig, toy_model, None, dict(prefix_length=n_ctx - 2))
    resolve(ROMEConfig, toy_model, None, dict(prefix_lengths=((n_ctx - 1, 3),)))
    resolve(ROMEConfig, toy_model, None, dict(prefix_lengths=((n_ctx, 0),)))  # none of that length sampled
    resolve(ROMEConfig, toy_model, None, dict(prefix_length=n_ctx, prefixes=("Given.",)))
    resolve(ROMEConfig, toy_model, None, dict(prefix_length=n_ctx, n_prefixes=0))
    with pytest.raises(EditConfigError, match="prefix_length"):
        resolve(FTConfig, toy_model, None, dict(prefix_length=10 * n_ctx))
    with pytest.raises(EditConfigError, match="prefix_lengths"):
        resolve(ROMEConfig, toy_model, None, dict(prefix_lengths=((n_ctx, 1),)))


@FEW
@given(data=st.data())
def test_config_fields_accept_their_type_and_refuse_others(data):
    import dataclasses
    import typing

    cls = get_editor(data.draw(st.sampled_from(EDITORS))).config_class
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if hints[f.name] in (int, float)]
    f = data.draw(st.sampled_from(fields))
    bad = data.draw(st.one_of(st.text(max_size=2), st.none(), st.booleans(), st.sampled_from([math.inf, math.nan])))
    if hints[f.name] is int and isinstance(bad, float):
        bad = 1.5
    with pytest.raises(EditConfigError, match=f.name):
        cls(**{f.name: bad})
    assert check_fields(cls(), EditConfigError) == cls()  # the defaults are of their types


def test_list_values_of_tuple_fields_become_tuples():
    cls = get_editor("memit").config_class
    assert cls(layers=[0, 1]).layers == (0, 1)


@pytest.mark.parametrize("requests, match", [
    ([EditRequest("{} was born in", SUBJECT, "Veltra"), EditRequest("{} was born in", SUBJECT, "Karsa")],
     "requests 0 and 1 conflict"),
    ([EditRequest("{} was born in", SUBJECT, "Veltra"), EditRequest("{} was born in", SUBJECT, "Veltra")],
     "request 1 duplicates request 0"),
    # one text split into another subject: no model can continue it two ways
    ([EditRequest("{} was born in", SUBJECT, "Veltra"), EditRequest("Talvik {} was born in", "Corlo", "Karsa")],
     "requests 0 and 1 conflict: the same prompt"),
    ([EditRequest("{} was born in {city}", SUBJECT, "Veltra")], "stray template field"),
    ([EditRequest(5, SUBJECT, "Veltra")], "field 'prompt'"),
    ([EditRequest("{} was born in", [SUBJECT], "Veltra")], "field 'subject'"),
    ([EditRequest("{} was born in", SUBJECT, "Veltra", paraphrases="x {}")], "paraphrases"),
    ("not a list", "expected a list of edit requests"),
])
@pytest.mark.parametrize("method", ["rome", "memit", "ft", "grace", "wise"])
def test_requests_are_checked_against_each_other_and_their_template(toy_model, requests, match, method):
    state = snapshot(toy_model)
    with pytest.raises(EditRequestError, match=match):
        edit(toy_model, requests, method)
    assert_unchanged(toy_model, state, no_edits=True)


@pytest.mark.parametrize("method", ["rome", "memit"])
def test_a_prompt_near_the_limit_gets_the_same_clean_error_in_rome_and_memit(toy_model, method, monkeypatch):
    import interp_edit.editing.targets as targets

    prompt = " ".join(["Veltra"] * 56) + " {} was born in"  # 62 tokens with its target: fits bare, not prefixed
    keys = []
    monkeypatch.setattr(targets, "forward_to_layer", lambda *a, **k: keys.append(1))
    with pytest.raises(EditConfigError, match="with the context prefix .* lower prefix_length"):
        edit(toy_model, [EditRequest(prompt, SUBJECT, "Veltra")], method)
    assert not keys  # refused before any key or target was computed


# --- saved edits ----------------------------------------------------------------------------

def _rewrite(path, out, meta=None, tensors=None):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        raw = handle.metadata()["interp_edit"]
        data = {k: handle.get_tensor(k) for k in handle.keys()}
    raw = meta(raw) if meta else raw
    if tensors:
        tensors(data)
    save_file(data, str(out), metadata={"interp_edit": raw})
    return out


@pytest.fixture(scope="module")
def saved_edit(toy_model, tmp_path_factory):
    result = edit(toy_model, [EditRequest("{} was born in", SUBJECT, "Veltra")], "rome")
    return result.save(tmp_path_factory.mktemp("edits") / "rome"), result


def _nan(data):
    key = next(k for k in data if k.endswith("::left"))
    data[key] = data[key].clone()
    data[key][0, 0] = math.nan


def _rename(data):
    for key in list(data):
        data[key.replace("blocks.0.", "blocks.9.")] = data.pop(key)


def _reshape(data):
    key = next(k for k in data if k.endswith("::right"))
    data[key] = torch.zeros(data[key].shape[0], 5)


@pytest.mark.parametrize("meta, tensors, match", [
    (lambda s: s[:-2], None, "not valid JSON"),
    (lambda s: json.dumps([1, 2]), None, "must be a JSON object"),
    (lambda s: json.dumps({k: v for k, v in json.loads(s).items() if k != "method"}), None, "lacks the key 'method'"),
    (lambda s: json.dumps({**json.loads(s), "requests": "x"}), None, "'requests' must be a list"),
    (lambda s: json.dumps({**json.loads(s), "kinds": {"blocks.0.mlp.W_out": "dense"}}), None, "unknown kind 'dense'"),
    (None, _nan, "non-finite"),
    (None, lambda d: d.pop(next(iter(d))), "which the file lacks"),
    (lambda s: s.replace("blocks.0.", "blocks.9."), _rename, "does not have"),
    (None, _reshape, "does not fit"),
    (lambda s: s.replace(json.loads(s)["model_fingerprint"], "0" * 16), None, "fingerprint"),
])
def test_a_corrupt_saved_edit_is_refused_on_load_naming_the_file(toy_model, saved_edit, tmp_path, meta, tensors, match):
    path, _ = saved_edit
    bad = _rewrite(path, tmp_path / "bad.safetensors", meta, tensors)
    state = snapshot(toy_model)
    with pytest.raises(CheckpointError, match=match) as err:
        Edit.load(bad, toy_model)
    assert "bad.safetensors" in str(err.value)
    assert_unchanged(toy_model, state, no_edits=True)


def test_file_checks_hold_without_a_model_too(saved_edit, tmp_path):
    path, _ = saved_edit
    for name, meta, tensors, match in (("nan", None, _nan, "non-finite"), ("json", lambda s: s[:-2], None, "not valid JSON"),
                                       ("shape", None, _reshape, None)):
        bad = _rewrite(path, tmp_path / f"{name}.safetensors", meta, tensors)
        if match is None:
            Edit.load(bad)  # factor shapes that multiply: only a model can tell they do not fit
        else:
            with pytest.raises(CheckpointError, match=match):
                Edit.load(bad)


def test_the_same_file_loaded_twice_is_applied_once(toy_model, saved_edit):
    path, original = saved_edit
    state = snapshot(toy_model)
    first, second = Edit.load(path, toy_model), Edit.load(path, toy_model)
    assert first.content_hash() == second.content_hash() == original.content_hash()
    with first.applied(toy_model):
        with pytest.raises(EditApplicationError, match="same content"):
            second.apply(toy_model)
        with pytest.raises(EditApplicationError, match="same content"):
            original.apply(toy_model)
    assert_unchanged(toy_model, state, no_edits=True)


def test_a_non_finite_delta_is_never_applied(toy_model, saved_edit):
    _, original = saved_edit
    broken = Edit(original.method, {k: type(d)(d.left * math.nan, d.right) for k, d in original.deltas.items()},
                  original.model_fingerprint)
    state = snapshot(toy_model)
    with pytest.raises(EditApplicationError, match="non-finite"):
        broken.apply(toy_model)
    assert_unchanged(toy_model, state, no_edits=True)


# --- the command line -------------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["evaluate", "--config", "{bad", "--n", "1"], ["--config", "not valid JSON"]),
    (["evaluate", "--config", "[1]", "--n", "1"], ["--config", "JSON object"]),
    (["contrast", "--config", "nope", "--n", "1"], ["--config"]),
    (["edit", "--prompt", "{} was born in", "--subject", SUBJECT, "--target-new", "Veltra", "--method", "memit",
      "--layers", "0,x"], ["--layers"]),
    (["edit", "--prompt", "{} was born in", "--subject", SUBJECT, "--target-new", "Veltra", "--top-k", "100000"], ["--top-k"]),
    (["trace", "--prompt", PROMPT, "--subject", SUBJECT, "--noise", "inf"], ["noise", "finite"]),
    (["evaluate", "--data", "{missing}", "--n", "1"], ["missing.json"]),
    (["evaluate", "--data", "{latin1}", "--n", "1"], ["latin1.json", "UTF-8"]),
    (["trace", "--prompt", PROMPT, "--subject", SUBJECT, "--out", "{file}/sub"], ["--out"]),
    (["edit", "--prompt", "{} was born in", "--subject", SUBJECT, "--target-new", "Veltra", "--out", "{file}/e"], ["--out"]),
])
def test_cli_user_errors_exit_2_with_one_line_naming_the_flag_or_file(args, words, tmp_path, capsys):
    from interp_edit.cli import main

    (tmp_path / "file").write_text("x")
    (tmp_path / "latin1.json").write_bytes('[{"prompt": "caf\xe9"}]'.encode("latin-1"))
    args = [a.replace("{missing}", str(tmp_path / "missing.json")).replace("{latin1}", str(tmp_path / "latin1.json"))
            .replace("{file}", str(tmp_path / "file")) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("interp-edit: error:") and "\n" not in err and "Traceback" not in err
    for word in words:
        assert word in err
