"""Trace noise as ROME draws it: the dataset-level scale (collect_embedding_std), and draws that
can be reproduced exactly (an explicit standard-normal tensor or generator)."""

from __future__ import annotations

import numpy
import pytest
import torch
from reference_tracer import causal_trace_loop

from interp_edit.analysis.tracing import causal_trace, subject_embedding_std
from interp_edit.errors import InterpEditError, InvalidArgumentError

PROMPT, SUBJECT, TARGET = "Talvik Corlo was born in", "Talvik Corlo", "Gemmel"
SUBJECTS = ["Talvik Corlo", "Zellen Hulra", "Kortin Garlen", "Talvik Corlo"]


def corrupted_by_hand(model, draw, sigma, noise=3.0):
    """p(target) at the last position with noise · σ · draw added to the subject's embeddings, per draw, by a plain hook."""
    tokens = model.to_tokens(PROMPT)  # BOS, " Talvik", " Corlo", ...
    target = model.tokenizer.encode(" " + TARGET, add_special_tokens=False)[0]

    def add(embed, hook):
        embed = embed.clone()
        embed[:, 1:3] += (draw * noise * sigma).to(embed.dtype)
        return embed

    with torch.no_grad():
        logits = model.run_with_hooks(tokens.repeat(len(draw), 1), fwd_hooks=[("hook_embed", add)])
    return logits[:, -1].float().softmax(-1)[:, target].mean().item()


def test_dataset_level_std_pools_every_subject_token(tiny_model):
    ids = [t for s in SUBJECTS for t in tiny_model.tokenizer.encode(" " + s, add_special_tokens=False)]
    by_hand = torch.stack([tiny_model.W_E[i] for i in ids]).std().item()  # repeats kept, as collect_embedding_std
    assert subject_embedding_std(tiny_model, SUBJECTS) == pytest.approx(by_hand, rel=1e-6)
    pooled = causal_trace(tiny_model, PROMPT, SUBJECT, TARGET, kinds=("hidden",), samples=3, noise_subjects=SUBJECTS)
    given = causal_trace(tiny_model, PROMPT, SUBJECT, TARGET, kinds=("hidden",), samples=3, embedding_std=by_hand)
    own = causal_trace(tiny_model, PROMPT, SUBJECT, TARGET, kinds=("hidden",), samples=3)
    assert torch.equal(pooled.scores, given.scores)
    assert pooled.corrupted_score != own.corrupted_score  # the prompt's own subject is another scale


def test_an_explicit_draw_is_reproduced_exactly(tiny_model):
    draw = torch.from_numpy(numpy.random.RandomState(1).randn(4, 2, tiny_model.cfg.d_model))  # ROME's pseudorandom draw
    sigma = subject_embedding_std(tiny_model, SUBJECTS)
    result = causal_trace(tiny_model, PROMPT, SUBJECT, TARGET, kinds=("hidden", "mlp"), samples=4, window=1,
                          noise_draw=draw, embedding_std=sigma)
    assert result.corrupted_score == pytest.approx(corrupted_by_hand(tiny_model, draw.float(), sigma), abs=1e-6)
    loop = causal_trace_loop(tiny_model, PROMPT, SUBJECT, TARGET, kinds=("hidden", "mlp"), samples=4, window=1,
                             noise_draw=draw, noise_subjects=SUBJECTS)
    assert (loop - result.scores).abs().max() < 1e-5


def test_a_generator_replaces_the_seed(tiny_model):
    kwargs = dict(kinds=("hidden",), samples=3)
    seeded = causal_trace(tiny_model, PROMPT, SUBJECT, TARGET, seed=7, **kwargs)
    gen = causal_trace(tiny_model, PROMPT, SUBJECT, TARGET, generator=torch.Generator().manual_seed(7), **kwargs)
    other = causal_trace(tiny_model, PROMPT, SUBJECT, TARGET, generator=torch.Generator().manual_seed(8), **kwargs)
    assert torch.equal(seeded.scores, gen.scores)
    assert not torch.equal(seeded.scores, other.scores)
    draw = torch.randn(3, 2, tiny_model.cfg.d_model, generator=torch.Generator().manual_seed(7))
    assert torch.equal(causal_trace(tiny_model, PROMPT, SUBJECT, TARGET, noise_draw=draw, **kwargs).scores, seeded.scores)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(noise_draw=torch.zeros(3, 5, 32)), "noise_draw has shape"),
    (dict(noise_draw=torch.full((3, 2, 32), float("nan"))), "noise_draw"),
    (dict(generator=1234), "generator"),
    (dict(noise_subjects="Talvik Corlo"), "noise_subjects"),
])
def test_bad_noise_arguments_are_named(tiny_model, kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        causal_trace(tiny_model, PROMPT, SUBJECT, TARGET, kinds=("hidden",), samples=3, **kwargs)


@pytest.mark.parametrize("family, style", [("llama3", "llama"), ("qwen2", "qwen")])
def test_the_noise_scale_pools_the_tokens_a_prompt_gives_the_subject(family, style):
    """With a SentencePiece tokenizer, encoding " " + subject adds a bare "▁" token that no
    prompt gives the subject: it was pooled into σ. σ is now the std of the embedding rows of
    the tokens the prompt's subject span holds, for both tokenizer kinds."""
    from interp_edit import load_model
    from interp_edit.adapter.tiny import tiny_hf_model
    from interp_edit.adapter.tiny_tokenizers import tiny_tokenizer
    from interp_edit.prompts import tokenize_with_subject

    tok = tiny_tokenizer(style)
    model = load_model(f"tiny-{family}", hf_model=tiny_hf_model(family, vocab_size=len(tok)), tokenizer=tok)
    # (a byte-level BPE gives a prompt's first word other tokens than the same word after a space)
    for prompt in ("We know that Talvik Corlo was born in", *([PROMPT] if style == "llama" else [])):
        span = tokenize_with_subject(tok, prompt, SUBJECT)
        rows = model.W_E[list(span.tokens[span.subject_span[0]:span.subject_span[1]])]
        assert subject_embedding_std(model, [SUBJECT]) == pytest.approx(rows.float().std().item(), rel=1e-6)


def test_the_subject_lists_items_are_named(toy_model):
    calls = []
    with toy_model.hooks(fwd_hooks=[("hook_embed", lambda act, hook: calls.append(1))]):
        for kwargs, match in ((dict(noise_subjects=[SUBJECT, 1]), r"noise_subjects\[1\] must be a string"),
                              (dict(noise_subjects=[""]), r"noise_subjects\[0\]"),
                              (dict(noise_subjects=[]), "noise_subjects is empty"),
                              (dict(corruption="replace", replacements=["Zellen Hulra", 2]), r"replacements\[1\]"),
                              (dict(corruption="replace", replacements=None), "replacements must be a list")):
            with pytest.raises(InterpEditError, match=match):
                causal_trace(toy_model, PROMPT, SUBJECT, **kwargs)
    assert not calls
