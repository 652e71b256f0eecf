"""Family matrix, tracing and patching: the batched engine equals an independent plain loop on
every family (tests/family_models.py).

The reference below shares no code with interp_edit.analysis: it tokenises the prompts itself,
builds the corrupted input itself (token replacement: no noise rule to share), restores one
TransformerLens hook per run with ``run_with_hooks`` and scores the softmax itself."""

from __future__ import annotations

import pytest
import torch
from family_models import FAMILY_NAMES, family_model

from interp_edit import activation_patch, causal_trace

PROMPT = "As everyone knows, Talvik Corlo was born in"
SUBJECT = "Talvik Corlo"
OTHER = "Zellen Hul"  # another two-token name: the corrupted subject
TARGET = " Karsa"

_SITE = {"hidden": "blocks.{}.hook_resid_post", "mlp": "blocks.{}.hook_mlp_out", "attn": "blocks.{}.hook_attn_out"}


def _ids(model, text):
    return [model.tokenizer.bos_token_id] + model.tokenizer.encode(text, add_special_tokens=False)


def _prob(logits, target):
    """log p(target) at the last position (random tiny models give p ~ 1/vocab: log-probs
    make the comparison sensitive)."""
    return torch.log_softmax(logits[0, -1].double(), -1)[target].item()


def _set(value, pos):
    def hook(act, hook):
        act[:, pos] = value[:, pos]
        return act

    return hook


def _plain_trace(model, window):
    clean = torch.tensor([_ids(model, PROMPT)])
    corrupted = torch.tensor([_ids(model, PROMPT.replace(SUBJECT, OTHER))])
    assert clean.shape == corrupted.shape
    target = model.tokenizer.encode(TARGET, add_special_tokens=False)[0]
    n_layers, n_pos = model.cfg.n_layers, clean.shape[1]
    names = [_SITE[k].format(layer) for k in _SITE for layer in range(n_layers)]
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(clean, names_filter=lambda n: n in names)
        scores = torch.zeros(3, n_layers, n_pos)
        for k, kind in enumerate(_SITE):
            for layer in range(n_layers):
                lo, hi = max(0, layer - window // 2), min(n_layers, layer + (window + 1) // 2)
                layers = [layer] if kind == "hidden" else range(lo, hi)
                for pos in range(n_pos):
                    hooks = [(_SITE[kind].format(la), _set(cache[_SITE[kind].format(la)], pos)) for la in layers]
                    scores[k, layer, pos] = _prob(model.run_with_hooks(corrupted, fwd_hooks=hooks), target)
        corrupted_score = _prob(model(corrupted), target)
    return scores, _prob(clean_logits, target), corrupted_score


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("window", [1, 2])
def test_batched_trace_equals_a_plain_loop(family, window):
    model = family_model(family)
    result = causal_trace(model, PROMPT, SUBJECT, TARGET, corruption="replace", replacement=OTHER,
                          window=window, samples=1, metric="logprob")
    scores, clean, corrupted = _plain_trace(model, window)
    assert abs(result.clean_score - clean) < 1e-6 and abs(result.corrupted_score - corrupted) < 1e-6
    assert (result.scores.double() - scores.double()).abs().max().item() < 1e-5
    # the comparison is not trivial: restorations move the score
    assert scores.max() - scores.min() > 0.05


def _plain_patch(model, answer, foil):
    clean = torch.tensor([_ids(model, PROMPT)])
    corrupted = torch.tensor([_ids(model, PROMPT.replace(SUBJECT, OTHER))])
    a = model.tokenizer.encode(answer, add_special_tokens=False)[0]
    f = model.tokenizer.encode(foil, add_special_tokens=False)[0]

    def diff(logits):
        return (logits[0, -1, a] - logits[0, -1, f]).double().item()

    sites = {"resid_pre": "blocks.{}.hook_resid_pre", "attn_out": "blocks.{}.hook_attn_out",
             "mlp_out": "blocks.{}.hook_mlp_out"}
    names = [s.format(layer) for s in sites.values() for layer in range(model.cfg.n_layers)]
    names += [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(clean, names_filter=lambda n: n in names)
        lo, hi = diff(model(corrupted)), diff(clean_logits)
        out = {}
        for site, template in sites.items():
            grid = torch.zeros(model.cfg.n_layers, clean.shape[1])
            for layer in range(model.cfg.n_layers):
                for pos in range(clean.shape[1]):
                    name = template.format(layer)
                    grid[layer, pos] = (diff(model.run_with_hooks(corrupted, fwd_hooks=[(name, _set(cache[name], pos))])) - lo) / (hi - lo)
            out[site] = grid
        heads = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
        for layer in range(model.cfg.n_layers):
            name = f"blocks.{layer}.attn.hook_z"
            for head in range(model.cfg.n_heads):
                def patch(act, hook, head=head, name=name):
                    act[:, :, head] = cache[name][:, :, head]
                    return act
                heads[layer, head] = (diff(model.run_with_hooks(corrupted, fwd_hooks=[(name, patch)])) - lo) / (hi - lo)
        out["head_out"] = heads
    return out


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_activation_patching_equals_a_plain_loop(family):
    model = family_model(family)
    answer, foil = TARGET, " Veltra"
    result = activation_patch(model, PROMPT, PROMPT.replace(SUBJECT, OTHER), answer=answer, foil=foil,
                              metric="logit_diff", sites=("resid_pre", "attn_out", "mlp_out", "head_out"))
    expected = _plain_patch(model, answer, foil)
    for site, grid in expected.items():
        assert (result.results[site].double() - grid.double()).abs().max().item() < 1e-4, site
