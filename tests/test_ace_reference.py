"""ACE's ``variant="reference"`` (the authors' code's editing step, yjywdzh/ACE ``execute_ace``)
against a hand re-statement of the code's formulas that shares no code with the editor: the
layer groups' residual shares, every module's keys read before the layer's first write
(``compute_ks_parallel``), W_O then W_out at every layer of both groups, the residual at the
last layer's module outputs re-read after each write, ``ΔW = (λC + KKᵀ)⁻¹ K R``; the facts at
the subject's last token, not the multi-hop prompts."""

from __future__ import annotations

import math

import pytest
import torch

from interp_edit.adapter import get_parameter
from interp_edit.editing import ACERequest, EditRequest, ace
from interp_edit.editing.methods import pmet as pmet_module
from interp_edit.editing.methods.ace import reference_shares
from interp_edit.errors import EditConfigError
from interp_edit.statistics.keys import key_statistics

pytestmark = pytest.mark.usefixtures("one_thread")

FACTS = [EditRequest("{} was born in", "Talvik Corlo", "Pellin", target_true="Karsa")]
QUERY, VALUE, LAMBDA = (0, 1), (3, 4), 50.0


def test_shares_are_the_codes_diffusion_factors():
    # execute_ace: diffusion_factor = sqrt(len(group) - group.index(layer)) for a grouped hparams.layers,
    # sqrt(len(layers) - i) for a flat one (GPT-J's groups [[3..8], [23, 24, 25]])
    groups = [[3, 4, 5, 6, 7, 8], [23, 24, 25]]
    grouped = [(layer, g, share) for layer, g, share in reference_shares(groups, "group")]
    assert [x[0] for x in grouped] == [3, 4, 5, 6, 7, 8, 23, 24, 25]
    assert [x[1] for x in grouped] == [0] * 6 + [1] * 3
    assert [x[2] ** 2 for x in grouped] == pytest.approx([6, 5, 4, 3, 2, 1, 3, 2, 1])
    assert [x[2] ** 2 for x in reference_shares(groups, "flat")] == pytest.approx([9, 8, 7, 6, 5, 4, 3, 2, 1])


def _requests():
    return [ACERequest(tuple(FACTS), ("The capital of the homeland of Talvik Corlo is",), ("Briva",))]


@pytest.fixture(scope="module")
def given_stats(toy_model):
    layers = sorted(QUERY + VALUE)
    return {site: key_statistics(toy_model, layers, site=site, n_samples=300, progress=False)
            for site in ("mlp_post", "z")}


def _subject_last(model, fact: EditRequest) -> tuple[torch.Tensor, int]:
    text = fact.prompt.format(fact.subject)
    head = fact.prompt[: fact.prompt.index("{}")] + fact.subject
    return model.to_tokens(text), model.to_tokens(head).shape[1] - 1


def _read(model, tokens, pos, names):
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return {n: cache[n][0, pos].double() for n in names}


@pytest.mark.parametrize("split", ["group", "flat"])
def test_reference_update_is_the_codes_formula(toy_model, given_stats, monkeypatch, split):
    model = toy_model
    fact = FACTS[0]
    tokens, pos = _subject_last(model, fact)
    z_layer = VALUE[-1]
    outs = [f"blocks.{z_layer}.hook_attn_out", f"blocks.{z_layer}.hook_mlp_out"]
    h0 = _read(model, tokens, pos, outs)
    gen = torch.Generator().manual_seed(0)
    target = {"attn": h0[outs[0]] + 3.0 * torch.randn(model.cfg.d_model, generator=gen, dtype=torch.float64),
              "mlp": h0[outs[1]] + 3.0 * torch.randn(model.cfg.d_model, generator=gen, dtype=torch.float64)}

    def fixed_targets(model_, requests, layer, prefixes, cfg, **kw):  # the z's, given (PMET's optimisation is tested elsewhere)
        assert layer == z_layer and len(requests) == 1
        zero = {k: torch.zeros(1, model.cfg.d_model) for k in target}
        return pmet_module.PMETTargets({k: v.float()[None] for k, v in target.items()}, zero, torch.zeros(1), [0])

    monkeypatch.setattr(pmet_module, "optimise_pmet_targets", fixed_targets)
    edit = ace(model, _requests(), variant="reference", query_layers=QUERY, value_layers=VALUE, group_split=split,
               prefixes=(), query_mom2_update_weight=LAMBDA, value_mom2_update_weight=LAMBDA, stats=given_stats,
               stats_samples=300)

    # the code, restated: flat order, share per group (or over all), keys of both modules first
    flat = [*QUERY, *VALUE]
    expected = {}
    originals = {}
    try:
        for i, layer in enumerate(flat):
            group = QUERY if layer in QUERY else VALUE
            left = len(group) - group.index(layer) if split == "group" else len(flat) - i
            share = math.sqrt(left)
            keys = _read(model, tokens, pos, [f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.mlp.hook_post"])
            for kind, key_name, weight_name in (("attn", f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.attn.W_O"),
                                                ("mlp", f"blocks.{layer}.mlp.hook_post", f"blocks.{layer}.mlp.W_out")):
                k = keys[key_name].reshape(-1, 1)  # [key, 1]
                current = _read(model, tokens, pos, outs)[outs[0] if kind == "attn" else outs[1]]
                r = ((target[kind] - current) / share).reshape(1, -1)  # [1, d_model]
                site = "z" if kind == "attn" else "mlp_post"
                c = given_stats[site][layer].moment.double()
                dw = torch.linalg.solve(LAMBDA * c + k @ k.T, k @ r)  # [key, d_model]
                param = get_parameter(model, weight_name)  # TransformerLens layout on either backend
                originals.setdefault(weight_name, param.detach().clone())
                with torch.no_grad():
                    param += dw.reshape(param.shape).to(param.dtype)
                expected[weight_name] = dw
    finally:
        with torch.no_grad():
            for name, value in originals.items():
                get_parameter(model, name).copy_(value)

    assert sorted(expected) == sorted(edit.deltas)
    for name, dw in expected.items():
        ours = edit.delta_matrix(name, model).double().reshape(dw.shape)
        err = float((ours - dw).norm() / dw.norm())
        assert err < 1e-4, (name, err)


def test_reference_edits_the_facts_not_the_multihop_prompts(toy_model, given_stats):
    kwargs = dict(variant="reference", query_layers=QUERY, value_layers=VALUE, prefixes=(), steps=3, lr=0.5,
                  stats=given_stats, stats_samples=300, update_attention=False)
    one = ace(toy_model, _requests(), **kwargs)
    other = ace(toy_model, [ACERequest(tuple(FACTS), ("Talvik Corlo's home country has its capital in",),
                                       ("Somewhere",))], **kwargs)
    assert sorted(one.deltas) == [f"blocks.{layer}.mlp.W_out" for layer in (*QUERY, *VALUE)]
    for name in one.deltas:
        assert torch.equal(one.delta_matrix(name, toy_model), other.delta_matrix(name, toy_model)), name
    assert one.info["z_layer"] == VALUE[-1]


def test_reference_refuses_what_the_code_cannot_do(toy_model, given_stats):
    with pytest.raises(EditConfigError, match="share"):
        ace(toy_model, _requests(), variant="reference", query_layers=(0, 1), value_layers=(1, 2), stats=given_stats,
            stats_samples=300)
    preserved = [ACERequest(tuple(FACTS), ("The capital of the homeland of Talvik Corlo is",), ("Briva",),
                            preserve_prompts=("The capital of the homeland of Mira Dune is",))]
    with pytest.raises(EditConfigError, match="preserve"):
        ace(toy_model, preserved, variant="reference", query_layers=QUERY, value_layers=VALUE, stats=given_stats,
            stats_samples=300)
    with pytest.raises(EditConfigError, match="variant"):
        ace(toy_model, _requests(), variant="paper")
    with pytest.raises(EditConfigError, match="group_split"):
        ace(toy_model, _requests(), variant="reference", group_split="halves")
