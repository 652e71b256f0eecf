"""Activation / attribution patching, logit lens, DLA, AIE, layer selection and figures."""

from __future__ import annotations

import pytest
import torch

from interp_edit import (
    activation_patch,
    attention_mlp_balance,
    attribution_patch,
    attribution_patch_error,
    average_indirect_effect,
    causal_trace,
    direct_logit_attribution,
    logit_lens,
    select_layer_window,
)
from interp_edit.adapter import hook_name
from interp_edit.errors import InvalidArgumentError

CLEAN, CORRUPTED = "Talvik Corlo was born in", "Fenpas Astlo was born in"


@pytest.fixture(scope="module")
def exact(toy_model):
    return activation_patch(toy_model, CLEAN, CORRUPTED, sites=("resid_pre", "attn_out", "mlp_out", "head_out", "head_out_pos"))


def _patched_metric_by_hand(model, site, layer, pos, head, exact):
    """One patched forward by plain hooks, normalised like activation_patch."""
    clean, corrupted = model.to_tokens(CLEAN), model.to_tokens(CORRUPTED)
    name = hook_name({"head_out": "z", "head_out_pos": "z"}.get(site, site), layer)
    _, cache = model.run_with_cache(clean)

    def patch(act, hook):
        if head is None:
            act[:, pos] = cache[name][:, pos]
        elif pos is None:
            act[:, :, head] = cache[name][:, :, head]
        else:
            act[:, pos, head] = cache[name][:, pos, head]
        return act

    answer = model.tokenizer.encode(" " + exact.answer.strip(), add_special_tokens=False)[0]
    foil = model.tokenizer.encode(" " + exact.foil.strip(), add_special_tokens=False)[0]
    with torch.no_grad():
        logits = model.run_with_hooks(corrupted, fwd_hooks=[(name, patch)])[0, -1]
    value = (logits[answer] - logits[foil]).item()
    return (value - exact.corrupted_value) / (exact.clean_value - exact.corrupted_value)


@pytest.mark.parametrize("site, layer, pos, head", [
    ("resid_pre", 2, 2, None), ("attn_out", 4, 5, None), ("mlp_out", 0, 2, None),
    ("head_out", 3, None, 1), ("head_out_pos", 5, 5, 2),
])
def test_activation_patch_matches_single_hooked_runs(toy_model, exact, site, layer, pos, head):
    value = exact.results[site]
    got = value[layer, pos] if head is None else (value[layer, head] if pos is None else value[layer, head, pos])
    assert got.item() == pytest.approx(_patched_metric_by_hand(toy_model, site, layer, pos, head, exact), abs=1e-4)


def test_patching_normalisation_and_shapes(toy_model, exact):
    n_layers, n_heads, n_pos = toy_model.cfg.n_layers, toy_model.cfg.n_heads, 6
    assert exact.results["resid_pre"].shape == (n_layers, n_pos)
    assert exact.results["head_out"].shape == (n_layers, n_heads)
    assert exact.results["head_out_pos"].shape == (n_layers, n_heads, n_pos)
    # patching the whole residual stream at the subject's last token in layer 0 restores most of it
    assert exact.results["resid_pre"][0, 2].item() > 0.2
    # the BOS position is identical in both prompts: no effect
    assert exact.results["resid_pre"][:, 0].abs().max().item() < 1e-6
    noised = activation_patch(toy_model, CLEAN, CORRUPTED, sites=("resid_pre",), direction="noise")
    # noising where both prompts agree leaves the clean run (1); noising the subject lowers it
    assert noised.results["resid_pre"][:, 0].tolist() == pytest.approx([1.0] * n_layers, abs=1e-5)
    assert noised.results["resid_pre"][0, 2].item() < 0.9


def test_attribution_patching_is_first_order_exact_for_the_last_residual(toy_model):
    atp = attribution_patch(toy_model, CLEAN, CORRUPTED, sites=("resid_pre", "head_out"))
    assert atp.method == "attribution" and atp.results["head_out"].shape == (6, 4)
    report = attribution_patch_error(toy_model, CLEAN, CORRUPTED, sites=("resid_pre", "mlp_out", "head_out"))
    assert set(report) == {"resid_pre", "mlp_out", "head_out"}
    for row in report.values():
        assert row["max_abs_error"] >= row["mean_abs_error"] >= 0


def test_patching_bad_input(toy_model):
    with pytest.raises(InvalidArgumentError, match="equal token length"):
        activation_patch(toy_model, CLEAN, "Fenpas was born in")
    with pytest.raises(InvalidArgumentError, match="sites"):
        activation_patch(toy_model, CLEAN, CORRUPTED, sites=("nowhere",))
    with pytest.raises(InvalidArgumentError, match="direction"):
        activation_patch(toy_model, CLEAN, CORRUPTED, direction="sideways")


def test_logit_lens_ends_at_the_model_output(toy_model):
    prompt = "As everyone knows, Talvik Corlo was born in"
    lens = logit_lens(toy_model, prompt, target="Karsa")
    assert lens.top_probs.shape == (toy_model.cfg.n_layers + 1, len(lens.str_tokens), 5)
    with torch.no_grad():
        probs = torch.softmax(toy_model(prompt)[0, -1], -1)
    assert lens.target_probs[-1, -1].item() == pytest.approx(probs[lens.top_ids[-1, -1, 0]].item(), rel=1e-4)
    assert lens.top_tokens[-1][-1][0] == " Karsa" and lens.target_ranks[-1, -1].item() == 0


def test_direct_logit_attribution_sums_to_the_logit_difference(toy_model):
    dla = direct_logit_attribution(toy_model, "Talvik Corlo was born in", "Karsa", foil="Veltra")
    parts = dla.embed + dla.pos_embed + dla.heads.sum().item() + dla.attn_bias.sum().item() + dla.mlp.sum().item() + dla.constant
    assert parts == pytest.approx(dla.total, abs=1e-3)
    assert dla.total > 0


def test_aie_layer_window_and_balance(toy_model, toy_world):
    from interp_edit.toyworld import counterfact_records

    records = [r for r in counterfact_records(toy_world) if r.relation_id == "born_in"][:6]
    wrong = (records[0].prompt.format(records[0].subject), records[0].subject, records[1].target_true
             if records[1].target_true != records[0].target_true else "Zorin")
    aie = average_indirect_effect(toy_model, records + [wrong], window=1, samples=3, progress=False)
    assert aie.n_facts == 6 and aie.n_skipped == 1 and aie.skipped[0]["index"] == 6
    assert aie.effects.shape == (3, 6, toy_model.cfg.n_layers)
    # roles absent from a fact (middle tokens of a two-token name) are left out of its mean
    middle = aie.roles.index("middle_subject")
    assert (aie.counts[:, middle] < aie.n_facts).all() and (aie.counts[:, aie.roles.index("last")] == 6).all()
    curve = aie.curve("mlp", "last_subject")
    window = select_layer_window(aie, width=2, kind="mlp", role="last_subject")
    best = max(range(len(curve) - 1), key=lambda i: (curve[i] + curve[i + 1]).item())
    assert window == (best, best + 1)
    assert select_layer_window(torch.tensor([0.0, 1.0, 5.0, 1.0]), width=2) in ((1, 2), (2, 3))
    assert select_layer_window(torch.tensor([1.0, 2.0]), width=5) == (0, 1)
    trace = causal_trace(toy_model, "Talvik Corlo was born in", "Talvik Corlo", metric="logit_diff", foil="Veltra", samples=3)
    alpha = attention_mlp_balance(trace)
    assert 0.0 <= alpha <= 1.0


def test_figures_plot_and_save(toy_model, tmp_path, exact):
    trace = causal_trace(toy_model, "Talvik Corlo was born in", "Talvik Corlo", samples=2, window=1)
    fig = trace.plot()
    assert len(fig.data) == 3 and [d.colorscale[0][1] for d in fig.data]  # three heatmaps
    assert fig.data[0].y[1].endswith("*") and not fig.data[0].y[-1].endswith("*")  # subject marked
    assert fig.layout.yaxis.autorange == "reversed"  # first token on top
    assert fig.data[0].zmin == pytest.approx(trace.corrupted_score)
    tl = trace.plot("tl")
    assert tl.data[0].zmid == 0
    html, png = trace.save(tmp_path / "trace")
    assert html.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    for result in (exact, logit_lens(toy_model, CLEAN), direct_logit_attribution(toy_model, CLEAN, "Karsa")):
        html, png = result.save(tmp_path / type(result).__name__)
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_lenses_refuse_a_prompt_longer_than_the_context(toy_model):
    from interp_edit import direct_logit_attribution, logit_lens
    from interp_edit.errors import PromptTooLongError

    long_prompt = "Talvik Corlo was born in Karsa. " * 20
    with pytest.raises(PromptTooLongError, match="tokens; the model's context is 64"):
        logit_lens(toy_model, long_prompt)
    with pytest.raises(PromptTooLongError, match="Talvik Corlo"):
        direct_logit_attribution(toy_model, long_prompt, "Karsa")


def test_noising_reports_the_sites_that_take_the_most_away(toy_model):
    """Noising scores 1 where a corrupted activation changes nothing: the repr names the lowest
    site of each grid (it named the highest, a site with no effect) and the colour bar says
    what is kept, not restored."""
    res = activation_patch(toy_model, CLEAN, CORRUPTED, answer="Karsa", sites=("resid_pre", "mlp_out"), direction="noise")
    for site, values in res.results.items():
        lowest = values.flatten().argmin().item()
        layer, pos = divmod(lowest, values.shape[1])
        assert f"{site}[{layer}, {pos}] " in repr(res)
    assert "lowest=" in repr(res) and "peaks=" not in repr(res)
    assert res.plot().layout.coloraxis.colorbar.title.text == "kept fraction"
    denoise = activation_patch(toy_model, CLEAN, CORRUPTED, answer="Karsa", sites=("mlp_out",))
    values = denoise.results["mlp_out"]
    layer, pos = divmod(values.flatten().argmax().item(), values.shape[1])
    assert f"peaks=[mlp_out[{layer}, {pos}] " in repr(denoise)
    assert denoise.plot().layout.coloraxis.colorbar.title.text == "restored fraction"


def test_plotting_one_site_by_name_and_an_absent_site(toy_model):
    res = activation_patch(toy_model, CLEAN, CORRUPTED, sites=("mlp_out",))
    assert len(res.plot("mlp_out").data) == 1
    with pytest.raises(InvalidArgumentError, match="attn_out"):
        res.plot(["attn_out"])
