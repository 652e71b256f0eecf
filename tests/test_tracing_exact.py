"""Causal tracing: the batched engine equals an independent plain-loop tracer
(tests/reference_tracer.py: its own tokens, noise, windows and scores), and bad input fails
cleanly without leaving hooks behind."""

from __future__ import annotations

import pytest
import torch
from reference_tracer import causal_trace_loop, reference_window

from interp_edit import causal_trace
from interp_edit.errors import (
    EmptyInputError,
    InvalidArgumentError,
    PromptTooLongError,
    SubjectNotFoundError,
)

PROMPT = "As everyone knows, Talvik Corlo was born in"
SUBJECT = "Talvik Corlo"

CASES = [
    dict(),
    dict(window=3),
    dict(window=1, kinds=("mlp",)),
    dict(severed="mlp"),
    dict(severed="attn", window=2, metric="logprob"),
    dict(corruption="replace", replacement="Fenpas Astlo"),
    dict(window=4, metric="logprob", seed=3, samples=3),
]


MERGES = ["by_layer", "layers", "all"]
_LOOPS: dict = {}  # the reference loop's scores, computed once per (model, settings) for every merge mode


@pytest.mark.parametrize("merge", MERGES)
@pytest.mark.parametrize("settings", CASES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "default")
@pytest.mark.parametrize("which", ["tiny", "toy"])
def test_batched_trace_equals_loop(which, settings, merge, tiny_model, toy_model):
    model = tiny_model if which == "tiny" else toy_model
    # by_layer: small forwards (a restoration's samples split); merged: the default size, so
    # rows of every kind, layer and position share forwards
    fast = causal_trace(model, PROMPT, SUBJECT, max_rows=64 if merge == "by_layer" else None, merge=merge, **settings)
    # the default window is ROME's 10 of 48 layers scaled to the depth (written out here, not imported)
    window = settings.get("window", max(1, round(10 * model.cfg.n_layers / 48)))
    key = (which, tuple(sorted(settings.items())))
    if key not in _LOOPS:
        _LOOPS[key] = causal_trace_loop(model, PROMPT, SUBJECT, **{**settings, "window": window})
    slow = _LOOPS[key]
    assert fast.scores.shape == slow.shape
    assert (fast.scores - slow).abs().max().item() < 1e-5
    assert not model.hook_dict["hook_embed"].fwd_hooks


def test_windows_are_centred_like_the_authors_loop():
    from interp_edit.analysis.tracing import window_layers

    assert reference_window(5, 10, 48) == list(range(0, 10))
    assert reference_window(20, 10, 48) == list(range(15, 25))
    assert reference_window(20, 3, 48) == [19, 20, 21]
    for n_layers in (1, 6, 12):
        for window in (1, 2, 3, 4, 10):
            for layer in range(n_layers):
                assert list(window_layers(layer, window, n_layers)) == reference_window(layer, window, n_layers)


def test_multi_token_target_is_teacher_forced(toy_model):
    result = causal_trace(toy_model, PROMPT, SUBJECT, "Karsa Veltra", kinds=("hidden",), samples=3)
    slow = causal_trace_loop(toy_model, PROMPT, SUBJECT, "Karsa Veltra", kinds=("hidden",), samples=3)
    assert (result.scores - slow).abs().max().item() < 1e-5
    # one restoration per forward: a run restored at the teacher-forced target token still
    # scores the prompt's last position (log-probabilities: this target's probability is ~1e-8)
    split = causal_trace(toy_model, PROMPT, SUBJECT, "Karsa Veltra", kinds=("hidden", "mlp"), samples=3, max_rows=3,
                         metric="logprob")
    slow = causal_trace_loop(toy_model, PROMPT, SUBJECT, "Karsa Veltra", kinds=("hidden", "mlp"), samples=3, metric="logprob",
                             window=split.settings.window)
    assert (split.scores - slow).abs().max().item() < 1e-4
    assert result.target_ids == tuple(toy_model.tokenizer.encode(" Karsa Veltra", add_special_tokens=False))
    # the clean score is the product of the two teacher-forced probabilities
    tokens = toy_model.to_tokens(PROMPT + " Karsa")
    with torch.no_grad():
        probs = torch.softmax(toy_model(tokens)[0], -1)
    expected = probs[-2, result.target_ids[0]] * probs[-1, result.target_ids[1]]
    assert result.clean_score == pytest.approx(expected.item(), rel=1e-4)


def test_trace_finds_the_fact_and_restoring_everything_restores_it(toy_model):
    result = causal_trace(toy_model, PROMPT, SUBJECT)
    assert result.target.strip() == "Karsa"
    assert result.clean_score > 0.9 and result.corrupted_score < 0.5
    # restoring the hidden state at the last token of the last layer restores the clean run
    last = len(result.tokens) - 1
    assert result.kind("hidden")[-1, last].item() == pytest.approx(result.clean_score, abs=1e-5)
    # positions before the subject change nothing
    assert torch.allclose(result.scores[:, :, : result.subject_span[0]], torch.tensor(result.corrupted_score))
    assert result.str_tokens[result.subject_span[0]] == " Talvik"


def test_seed_controls_the_noise(toy_model):
    a = causal_trace(toy_model, PROMPT, SUBJECT, kinds=("hidden",), samples=2, seed=1)
    b = causal_trace(toy_model, PROMPT, SUBJECT, kinds=("hidden",), samples=2, seed=1)
    c = causal_trace(toy_model, PROMPT, SUBJECT, kinds=("hidden",), samples=2, seed=2)
    assert torch.equal(a.scores, b.scores) and not torch.equal(a.scores, c.scores)


def test_subject_occurrence(toy_model):
    prompt = "Talvik Corlo met Talvik Corlo, who was born in"
    first = causal_trace(toy_model, prompt, SUBJECT, kinds=("hidden",), samples=2)
    second = causal_trace(toy_model, prompt, SUBJECT, kinds=("hidden",), samples=2, subject_occurrence=1)
    assert first.subject_span[0] < second.subject_span[0]
    with pytest.raises(SubjectNotFoundError, match="occurs 2 time"):
        causal_trace(toy_model, prompt, SUBJECT, subject_occurrence=2)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(prompt=PROMPT, subject="Nobody Here"), SubjectNotFoundError, ["Nobody Here", "tokenises as", "' Talvik'"]),
        (dict(prompt="", subject=SUBJECT), EmptyInputError, ["prompt"]),
        (dict(prompt=PROMPT, subject=" "), EmptyInputError, ["subject"]),
        (dict(prompt=PROMPT, subject=SUBJECT, target=""), EmptyInputError, ["target"]),
        (dict(prompt=PROMPT, subject=SUBJECT, noise=0.0), InvalidArgumentError, ["noise"]),
        (dict(prompt=PROMPT, subject=SUBJECT, window=0), InvalidArgumentError, ["window"]),
        (dict(prompt=PROMPT, subject=SUBJECT, kinds=("nope",)), InvalidArgumentError, ["nope"]),
        (dict(prompt=PROMPT, subject=SUBJECT, metric="acc"), InvalidArgumentError, ["acc"]),
        (dict(prompt=PROMPT, subject=SUBJECT, metric="logit_diff"), InvalidArgumentError, ["foil"]),
        (dict(prompt=PROMPT, subject=SUBJECT, corruption="replace"), InvalidArgumentError, ["replacement"]),
        (dict(prompt=PROMPT, subject=SUBJECT, corruption="replace", replacement="Tal"), InvalidArgumentError, ["2 tokens"]),
        (dict(prompt=" ".join(["Veltra"] * 70) + " " + SUBJECT + " was born in", subject=SUBJECT), PromptTooLongError, ["context"]),
    ],
)
def test_bad_input_raises_specific_errors(toy_model, kwargs, error, words):
    prompt, subject = kwargs.pop("prompt"), kwargs.pop("subject")
    with pytest.raises(error) as err:
        causal_trace(toy_model, prompt, subject, **kwargs)
    for word in words:
        assert word in str(err.value)
    assert all(not hp.fwd_hooks for hp in toy_model.hook_dict.values())


@pytest.mark.parametrize("kinds, severed", [(("mlp", "attn"), "mlp"), (("mlp",), "attn"), ("attn", "mlp")])
def test_severed_without_hidden_is_refused_before_any_forward(toy_model, kinds, severed):
    """Severing acts on hidden-state restorations only: without "hidden" in kinds it would be
    silently ignored (the scores equal the unsevered trace's) while the settings record it."""
    from model_state import refused_before_any_forward

    from interp_edit import average_indirect_effect

    with refused_before_any_forward(toy_model):
        with pytest.raises(InvalidArgumentError, match=rf"severed='{severed}' needs 'hidden' in kinds.*kinds=\("):
            causal_trace(toy_model, PROMPT, SUBJECT, kinds=kinds, severed=severed, samples=2)
        with pytest.raises(InvalidArgumentError, match=rf"severed='{severed}' needs 'hidden' in kinds.*kinds=\("):
            average_indirect_effect(toy_model, [(PROMPT, SUBJECT, "Karsa")], kinds=(kinds,) if isinstance(kinds, str) else kinds,
                                    severed=severed, samples=2, progress=False)


def test_severed_shows_in_the_repr(toy_model):
    from interp_edit import average_indirect_effect

    kw = dict(kinds=("hidden", "mlp"), samples=2)
    severed = causal_trace(toy_model, PROMPT, SUBJECT, severed="attn", **kw)
    plain = causal_trace(toy_model, PROMPT, SUBJECT, **kw)
    assert "severed=attn" in repr(severed) and "severed" not in repr(plain)
    assert not torch.equal(severed.scores[0], plain.scores[0]) and torch.equal(severed.scores[1], plain.scores[1])
    fact = [(PROMPT, SUBJECT, "Karsa")]
    aie = average_indirect_effect(toy_model, fact, kinds=("hidden",), severed="mlp", samples=2, progress=False)
    assert "severed=mlp" in repr(aie) and aie.settings["severed"] == "mlp"
    assert "severed" not in repr(average_indirect_effect(toy_model, fact, kinds=("hidden",), samples=2, progress=False))


def test_hooks_are_removed_after_an_exception_inside_a_hook(toy_model, monkeypatch):
    import interp_edit.analysis.restore as restore

    def broken(*args, **kwargs):
        def hook(act, hook):
            raise RuntimeError("boom inside a hook")
        return hook

    monkeypatch.setattr(restore, "_patch_hook", broken)
    with pytest.raises(RuntimeError, match="boom"):
        causal_trace(toy_model, PROMPT, SUBJECT, kinds=("mlp",), samples=2)
    assert all(not hp.fwd_hooks for hp in toy_model.hook_dict.values())
    monkeypatch.undo()
    assert causal_trace(toy_model, PROMPT, SUBJECT, kinds=("hidden",), samples=2).clean_score > 0.9


PATCH_CLEAN, PATCH_CORRUPTED = "Talvik Corlo was born in", "Fenpas Astlo was born in"
PATCH_SITES = ("resid_pre", "attn_out", "mlp_out", "head_out", "head_out_pos")


def _patching_by_hand(model, direction, answer, foil):
    """Every patched run by plain hooks (one ``run_with_hooks`` each), normalised so that the
    clean run scores 1 and the corrupted run 0: [site] -> tensor like activation_patch's."""
    clean, corrupted = model.to_tokens(PATCH_CLEAN), model.to_tokens(PATCH_CORRUPTED)
    base, source = (corrupted, clean) if direction == "denoise" else (clean, corrupted)
    answer = model.tokenizer.encode(" " + answer.strip(), add_special_tokens=False)[0]
    foil = model.tokenizer.encode(" " + foil.strip(), add_special_tokens=False)[0]
    with torch.no_grad():
        _, cache = model.run_with_cache(source)

        def metric(tokens, hooks=()):
            logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks))[0, -1]
            return (logits[answer] - logits[foil]).item()

        m_clean, m_corr = metric(clean), metric(corrupted)
        cfg, n_pos = model.cfg, clean.shape[1]
        out = {}
        for site in PATCH_SITES:
            hook = {"head_out": "attn.hook_z", "head_out_pos": "attn.hook_z"}.get(site, f"hook_{site}")
            shape = {"head_out": (cfg.n_layers, cfg.n_heads), "head_out_pos": (cfg.n_layers, cfg.n_heads, n_pos)}
            values = torch.zeros(shape.get(site, (cfg.n_layers, n_pos)))
            for index in torch.cartesian_prod(*[torch.arange(s) for s in values.shape]).tolist():
                layer, rest = index[0], index[1:]
                name = f"blocks.{layer}.{hook}"
                if site == "head_out":
                    where = (slice(None), slice(None), rest[0])
                elif site == "head_out_pos":
                    where = (slice(None), rest[1], rest[0])
                else:
                    where = (slice(None), rest[0])

                def patch(act, hook, name=name, where=where):
                    act[where] = cache[name][where]
                    return act

                values[tuple(index)] = metric(base, [(name, patch)])
            out[site] = (values - m_corr) / (m_clean - m_corr)
    return out


@pytest.mark.parametrize("merge", MERGES)
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_patching_equals_one_hooked_run_per_site(toy_model, direction, merge):
    from interp_edit import activation_patch

    fast = activation_patch(toy_model, PATCH_CLEAN, PATCH_CORRUPTED, sites=PATCH_SITES, direction=direction,
                            merge=merge, max_rows=16)
    slow = _patching_by_hand(toy_model, direction, fast.answer, fast.foil)
    for site in PATCH_SITES:
        assert fast.results[site].shape == slow[site].shape, site
        assert (fast.results[site] - slow[site]).abs().max().item() < 1e-4, site


def test_merge_modes_agree_and_a_bad_mode_is_named(toy_model):
    from interp_edit import activation_patch

    a = causal_trace(toy_model, PROMPT, SUBJECT, samples=3, severed="attn", merge="by_layer")
    b = causal_trace(toy_model, PROMPT, SUBJECT, samples=3, severed="attn", merge="all")
    c = causal_trace(toy_model, PROMPT, SUBJECT, samples=3, severed="attn", merge="auto")
    d = causal_trace(toy_model, PROMPT, SUBJECT, samples=3, severed="attn", merge="layers", max_rows=7)
    for other in (b, c, d):
        assert (a.scores - other.scores).abs().max().item() < 1e-5
    for call in (lambda: causal_trace(toy_model, PROMPT, SUBJECT, merge="everything"),
                 lambda: activation_patch(toy_model, PATCH_CLEAN, PATCH_CORRUPTED, merge=None)):
        with pytest.raises(InvalidArgumentError, match="merge"):
            call()
