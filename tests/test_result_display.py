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


# --- figure layout: no colourbar or legend over a plot area, a subplot title or each other -----

#: room a colourbar's tick labels take right of its bar, and a legend row's height (pixels)
LABELS_PX, LEGEND_ROW_PX, TITLE_PX, CHAR_PX = 40, 19, 16, 6.5
MAX_FIGURE_WIDTH = 1000


def _figures(zoo) -> dict:
    from interp_edit.viz.experiments import comparison_figure

    figs = {"trace_rome": zoo["trace"].plot(), "trace_tl": zoo["trace"].plot(layout="tl"), "aie": zoo["aie"].plot(),
            "patching": zoo["patching"].plot(), "lens": zoo["lens"].plot(), "dla": zoo["dla"].plot(),
            "ablation": zoo["ablation"].plot(), "edit_token_aie": zoo["edit_token_aie"].plot(window=(1, 2)),
            "experiment": zoo["experiment"].plot(), "comparison": comparison_figure([zoo["experiment"]])}
    for view in ("overview", "neurons", "heads", "layers", "query"):
        figs[f"attribution_{view}"] = zoo["attribution"].plot(view)
    for view in ("sankey", "layers"):
        figs[f"pathways_{view}"] = zoo["pathways"].plot(view)
    for view in ("heatmap", "groups", "logprobs"):
        figs[f"diff_{view}"] = zoo["diff"].plot(view)
    for view in ("panels", "leverage", "margins") if zoo["contrast"].defined else ("panels", "margins"):
        figs[f"contrast_{view}"] = zoo["contrast"].plot(view)
    return figs


def _span(position: float, size: float, anchor: str, low: str, high: str) -> tuple[float, float]:
    if anchor == high:
        return position - size, position
    if anchor in ("center", "middle"):
        return position - size / 2, position + size / 2
    return position, position + size


def _overlap(a, b, tol: float = 1e-3) -> bool:
    (ax, ay), (bx, by) = a, b
    return min(ax[1], bx[1]) - max(ax[0], bx[0]) > tol and min(ay[1], by[1]) - max(ay[0], by[0]) > tol


def _boxes(full) -> tuple[list, list, list, list]:
    """Plot areas, colourbars, subplot titles and legend as ((x0, x1), (y0, y1)) in paper units,
    from the figure as plotly lays it out (``full_figure_for_development``)."""
    lay = full.layout
    plot_w = lay.width - lay.margin.l - lay.margin.r
    plot_h = lay.height - lay.margin.t - lay.margin.b
    areas, bars = set(), []
    for trace in full.data:
        if trace.type in ("sankey", "table"):
            continue
        x = lay["xaxis" + (trace.xaxis or "x")[1:]].domain
        y = lay["yaxis" + (trace.yaxis or "y")[1:]].domain
        areas.add((tuple(x), tuple(y)))
        if trace.type in ("heatmap", "contour") and trace.showscale:
            cb = trace.colorbar
            w = ((cb.thickness if cb.thicknessmode == "pixels" else cb.thickness * plot_w) + LABELS_PX) / plot_w
            h = cb.len if cb.lenmode == "fraction" else cb.len / plot_h
            bars.append((_span(cb.x, w, cb.xanchor, "left", "right"), _span(cb.y, h, cb.yanchor, "bottom", "top")))
    titles = [((a.x - len(a.text) * CHAR_PX / 2 / plot_w, a.x + len(a.text) * CHAR_PX / 2 / plot_w), (a.y, a.y + TITLE_PX / plot_h))
              for a in lay.annotations if a.yref == "paper" and a.xref == "paper" and a.yanchor == "bottom"]
    legend = []
    names = [t.name or "" for t in full.data if getattr(t, "showlegend", False)]
    if lay.showlegend and names:
        lg = lay.legend
        if lg.orientation == "h":
            w, h = sum(len(n) * CHAR_PX + 40 for n in names) / plot_w, LEGEND_ROW_PX / plot_h
        else:
            w, h = (max(len(n) for n in names) * CHAR_PX + 40) / plot_w, LEGEND_ROW_PX * len(names) / plot_h
        yanchor = lg.yanchor if lg.yanchor != "auto" else ("top" if lg.y >= 2 / 3 else "bottom" if lg.y <= 1 / 3 else "middle")
        xanchor = lg.xanchor if lg.xanchor != "auto" else ("right" if lg.x >= 2 / 3 else "left")
        legend.append((_span(lg.x, w, xanchor, "left", "right"), _span(lg.y, h, yanchor, "bottom", "top")))
    return sorted(areas), bars, titles, legend


@pytest.fixture(scope="module")
def laid_out(zoo):
    return {name: fig.full_figure_for_development(warn=False) for name, fig in _figures(zoo).items()}


def test_figures_fit_a_notebook_column(laid_out):
    too_wide = {name: full.layout.width for name, full in laid_out.items() if full.layout.width > MAX_FIGURE_WIDTH}
    assert not too_wide


def test_no_colourbar_or_legend_covers_a_plot_a_title_or_each_other(laid_out):
    problems = []
    for name, full in laid_out.items():
        areas, bars, titles, legend = _boxes(full)
        for i, bar in enumerate(bars):
            problems += [f"{name}: colourbar {i} over plot area {a}" for a in areas if _overlap(bar, a)]
            problems += [f"{name}: colourbar {i} over a subplot title" for t in titles if _overlap(bar, t)]
            problems += [f"{name}: colourbars {i} and {j} overlap" for j, other in enumerate(bars) if j > i and _overlap(bar, other)]
        for box in legend:
            problems += [f"{name}: legend over plot area {a}" for a in areas if _overlap(box, a)]
            problems += [f"{name}: legend over a colourbar" for bar in bars if _overlap(box, bar)]
    assert not problems, "\n".join(problems)


def test_the_layout_check_sees_the_old_overlaps(zoo):
    """The check above fails on a colourbar placed on its subplot, as the trace figure had it."""
    fig = zoo["trace"].plot()
    fig.data[0].colorbar.update(x=0.1, xanchor="left")  # on its own subplot
    _, bars, _, _ = _boxes(fig.full_figure_for_development(warn=False))
    areas, _, _, _ = _boxes(fig.full_figure_for_development(warn=False))
    assert any(_overlap(bar, a) for bar in bars for a in areas)


def test_sankey_title_names_only_drawn_layers_and_hover_has_one_line_per_pathway(zoo):
    pathways = zoo["pathways"]
    fig = pathways.plot("sankey")
    flow = pathways.layer_flow()
    drawn = {v for v in range(flow.shape[0]) if flow[:, v].sum() > 0}
    title = fig.layout.title.text
    listed = [int(x) for x in title.split("value layers [")[1].split("]")[0].split(",") if x.strip()]
    assert listed and set(listed) <= drawn
    assert all("<br>" in h or "," not in h for h in fig.data[0].link.customdata)


def test_aie_and_lens_figures_have_hover_and_colourbars(zoo):
    assert all(t.hovertemplate for t in zoo["aie"].plot().data)
    lens = zoo["lens"].plot()
    assert all(t.showscale is not False for t in lens.data) and len(lens.data) == 2
