"""How results read at a glance: every result type has a short one-line repr with what was
computed and its headline numbers (tables as HTML where they help)."""

from __future__ import annotations

import pytest
from result_zoo import build_zoo

from interp_edit.reprs import REPR_LIMIT

RESULTS = ("trace", "aie", "patching", "lens", "dla", "attribution", "ablation", "pathways", "diff", "edit_token_aie",
           "contrast", "experiment", "edge_scores", "circuit", "path_patching", "circuit_diff")


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
    circuit = zoo["circuit"]
    assert "edges=10/" in repr(circuit) and "curve=[0: " in repr(circuit) and "5: " in repr(circuit)
    scores = zoo["edge_scores"]
    assert "method='eap'" in repr(scores) and scores.top(1)[0][0] in repr(scores)
    paths = zoo["path_patching"]
    assert "a0.h0 -> logits" in repr(paths)
    assert "method='ft'" in repr(zoo["circuit_diff"]) and "edges=10/" in repr(zoo["circuit_diff"])


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
    from interp_edit.viz.sweeps import sweep_figure

    figs = {"trace_rome": zoo["trace"].plot(), "trace_tl": zoo["trace"].plot(layout="tl"), "aie": zoo["aie"].plot(),
            "patching": zoo["patching"].plot(), "lens": zoo["lens"].plot(), "dla": zoo["dla"].plot(),
            "ablation": zoo["ablation"].plot(), "edit_token_aie": zoo["edit_token_aie"].plot(window=(1, 2)),
            "experiment": zoo["experiment"].plot(), "comparison": comparison_figure([zoo["experiment"]]),
            "aie_lines": zoo["aie"].plot("lines"), "edge_scores": zoo["edge_scores"].plot(),
            "circuit": zoo["circuit"].plot(), "circuit_faithfulness": zoo["circuit"].plot("faithfulness"),
            "path_patching": zoo["path_patching"].plot(), "circuit_diff": zoo["circuit_diff"].plot(), "sweep": sweep_figure(zoo["sweep"], ("efficacy_score", "paraphrase_score",
                                                                                          "neighborhood_score"))}
    for view in ("overview", "neurons", "heads", "layers", "query"):
        figs[f"attribution_{view}"] = zoo["attribution"].plot(view)
    for view in ("sankey", "layers"):
        figs[f"pathways_{view}"] = zoo["pathways"].plot(view)
    for view in ("heatmap", "groups", "neurons", "logprobs") if zoo["diff"].neuron_before else ("heatmap", "groups", "logprobs"):
        figs[f"diff_{view}"] = zoo["diff"].plot(view)
    for view in ("panels", "leverage", "margins") if zoo["contrast"].defined else ("panels", "margins"):
        figs[f"contrast_{view}"] = zoo["contrast"].plot(view)
    if not zoo["contrast"].defined:  # the zoo's 3 edits all succeed: the panels with failures come from a copy
        figs["contrast_panels_defined"] = _defined_contrast(zoo["contrast"]).plot("panels")
        figs["contrast_leverage"] = _defined_contrast(zoo["contrast"]).plot("leverage")
    return figs


def _defined_contrast(result):
    """A defined contrast for the figures: ``result`` with made-up failures (half the
    successes' diffs minus 0.2) and ±0.1 intervals."""
    from dataclasses import replace

    import torch

    failure = result.success_mean * 0.5 - 0.2
    leverage = result.success_mean - failure
    success = result.success.clone()
    success[0] = False
    return replace(result, failure_mean=failure, leverage=leverage, leverage_ci=torch.stack([leverage - 0.1, leverage + 0.1], -1),
                   success=success, n_failure=1, n_success=int(success.sum()), undefined_reason=None)


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
    for cb in _colourbars(full):  # a trace's own and the shared ones (layout coloraxis)
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
    title = fig.layout.title.text.replace("<br>", " ")  # wrapped to the width
    listed = [int(x) for x in title.split("value layers [")[1].split("]")[0].split(",") if x.strip()]
    assert listed and set(listed) <= drawn
    assert all("<br>" in h or "," not in h for h in fig.data[0].link.customdata)


def test_aie_and_lens_figures_have_hover_and_colourbars(zoo):
    assert all(t.hovertemplate for t in zoo["aie"].plot().data)
    lens = zoo["lens"].plot()
    assert all(t.showscale is not False for t in lens.data) and len(lens.data) == 2


# --- everything inside the canvas; explained colourbars; the pathway title; one-batch bars ---------

#: an estimate independent of interp_edit.viz.layout: Open Sans averages ~0.55 em a character
EM = 0.58


def _px(text: str, size: float) -> float:
    import html
    import re

    return len(html.unescape(re.sub(r"<[^>]+>", "", text))) * EM * size


def _lines(text: str | None) -> list[str]:
    import re

    return [line for line in re.split(r"<br\s*/?>", text or "")]


def _colourbars(full) -> list:
    """(colorbar, tick-label font size) of every shown colour scale."""
    bars = [t.colorbar for t in full.data if t.type in ("heatmap", "contour") and not getattr(t, "coloraxis", None)
            and t.showscale]
    used = {t.coloraxis for t in full.data if getattr(t, "coloraxis", None)}
    return bars + [full.layout[name].colorbar for name in sorted(used) if full.layout[name].showscale is not False]


def _outside_canvas(name: str, full) -> list[str]:
    lay = full.layout
    W, H = lay.width, lay.height
    ml, mr, mt, mb = lay.margin.l, lay.margin.r, lay.margin.t, lay.margin.b
    pw, ph = W - ml - mr, H - mt - mb
    out = []
    title = lay.title
    if title.text:
        size = title.font.size
        lines = _lines(title.text)
        left = title.x * W if title.xref == "container" else ml + title.x * pw
        widest = max(_px(line, size) for line in lines)
        if title.xanchor in ("center", "auto") and title.x == 0.5:
            left -= widest / 2
        block = 1.25 * size * len(lines)
        centre = (1 - title.y) * H
        top = {"middle": centre - block / 2, "top": centre, "bottom": centre - block}.get(title.yanchor, centre - block / 2)
        if left < 0 or left + widest > W:
            out.append(f"{name}: title {lines[0][:30]!r}… spans x {left:.0f}..{left + widest:.0f} of {W}")
        if top < 0 or top + block > mt:
            out.append(f"{name}: title spans y {top:.0f}..{top + block:.0f}, the plots start at {mt}")
    for a in lay.annotations:
        if a.xref != "paper" or a.yref != "paper" or not a.text or a.yanchor != "bottom":
            continue
        size = a.font.size
        half = max(_px(line, size) for line in _lines(a.text)) / 2
        x = ml + a.x * pw
        top = mt + (1 - a.y) * ph - 1.25 * size * len(_lines(a.text))
        if x - half < 0 or x + half > W or top < 0:
            out.append(f"{name}: subplot title {a.text[:30]!r} spans x {x - half:.0f}..{x + half:.0f} of {W}, top {top:.0f}")
    for key in lay:
        axis = lay[key]
        if not (key.startswith("xaxis") or key.startswith("yaxis")) or not axis.title.text:
            continue
        d = axis.domain
        length = _px(axis.title.text, axis.title.font.size)
        if key.startswith("x"):
            centre = ml + (d[0] + d[1]) / 2 * pw
            bad = centre - length / 2 < 0 or centre + length / 2 > W
        else:
            centre = mt + (1 - (d[0] + d[1]) / 2) * ph
            bad = centre - length / 2 < 0 or centre + length / 2 > H
        if bad:
            out.append(f"{name}: {key} title {axis.title.text!r} ({length:.0f} px) leaves the canvas")
    for i, cb in enumerate(_colourbars(full)):
        x = ml + cb.x * pw if cb.xanchor == "left" else ml + cb.x * pw - cb.thickness
        right = x + cb.thickness + 34  # tick labels
        length = cb.len * ph if cb.lenmode == "fraction" else cb.len
        if cb.title.text and cb.title.side == "right":
            right += 1.25 * cb.title.font.size
            if _px(cb.title.text, cb.title.font.size) > length:
                out.append(f"{name}: colourbar {i} title {cb.title.text!r} longer than its bar ({length:.0f} px)")
        elif cb.title.text:
            right = max(right, x + _px(cb.title.text, cb.title.font.size))
        if right > W:
            out.append(f"{name}: colourbar {i} ({cb.title.text!r}) reaches x {right:.0f} of {W}")
    return out


def _subplot_titles_over_plots(name: str, full) -> list[str]:
    areas, _, _, _ = _boxes(full)
    lay = full.layout
    ph = lay.height - lay.margin.t - lay.margin.b
    pw = lay.width - lay.margin.l - lay.margin.r
    out = []
    for a in lay.annotations:
        if a.xref != "paper" or a.yref != "paper" or not a.text or a.yanchor != "bottom":
            continue
        half = max(_px(line, a.font.size) for line in _lines(a.text)) / 2 / pw
        box = ((a.x - half, a.x + half), (a.y + 2 / ph, a.y + 1.25 * a.font.size * len(_lines(a.text)) / ph))
        out += [f"{name}: subplot title {a.text[:30]!r} over plot area {area}" for area in areas if _overlap(box, area)]
    return out


def _labels_collide(name: str, full) -> list[str]:
    """Categorical x tick labels: side by side they must fit their category; turned (auto or
    angled) they must fit the bottom margin."""
    import math

    lay = full.layout
    pw = lay.width - lay.margin.l - lay.margin.r
    out = []
    for trace in full.data:
        if trace.type != "bar" or trace.orientation == "h" or trace.x is None or not any(isinstance(v, str) for v in trace.x):
            continue
        axis = lay["xaxis" + (trace.xaxis or "x")[1:]]
        categories = len({v for t in full.data if t.type == "bar" and (t.xaxis or "x") == (trace.xaxis or "x") for v in (t.x or ())})
        per = (axis.domain[1] - axis.domain[0]) * pw / max(categories, 1)
        longest = max(_px(str(v), axis.tickfont.size or 12) for v in trace.x)
        if longest <= per:
            continue
        angle = 90 if axis.tickangle in (None, "auto") else abs(float(axis.tickangle))
        if angle == 0 or longest * math.sin(math.radians(angle)) > lay.margin.b + 10:
            out.append(f"{name}: x labels of {longest:.0f} px in {per:.0f} px categories, turned {angle}°, "
                       f"bottom margin {lay.margin.b}")
    return out


def _rows_misaligned(name: str, full) -> list[str]:
    """In a grid (every row the same number of subplots) each column has one x domain."""
    rows: dict[tuple, list] = {}
    for key in full.layout:
        if key.startswith("xaxis") and full.layout[key].anchor not in (None, "free"):
            y = full.layout["yaxis" + full.layout[key].anchor[1:]].domain
            rows.setdefault(tuple(y), []).append(tuple(round(v, 6) for v in full.layout[key].domain))
    columns = [sorted(r) for r in rows.values()]
    if len(columns) > 1 and len({len(c) for c in columns}) == 1 and any(c != columns[0] for c in columns):
        return [f"{name}: the rows' columns differ: {columns}"]
    return []


def test_titles_labels_and_colourbars_lie_within_the_canvas(laid_out):
    problems = []
    for name, full in laid_out.items():
        problems += _outside_canvas(name, full) + _subplot_titles_over_plots(name, full) + _labels_collide(name, full)
        problems += _rows_misaligned(name, full)
    assert not problems, "\n".join(problems)


def test_every_heatmap_has_a_colourbar_with_an_explained_label(laid_out):
    from interp_edit.viz.labels import COLORBAR_LABELS

    problems = []
    for name, full in laid_out.items():
        # a heatmap with no number in it (an undefined contrast's failure panels) colours nothing
        heatmaps = [t for t in full.data if t.type == "heatmap" and any(v == v for row in t.z for v in row if v is not None)]
        for t in heatmaps:
            axis = getattr(t, "coloraxis", None)
            if not (t.showscale if not axis else full.layout[axis].showscale is not False):
                problems.append(f"{name}: a heatmap without a colourbar")
        for cb in _colourbars(full):
            if cb.title.text not in COLORBAR_LABELS:
                problems.append(f"{name}: colourbar label {cb.title.text!r} is not one of the explained labels")
    assert not problems, "\n".join(problems)


class _Flow:
    """A pathway result whose flow reaches value layers 1 (most), 3 and 2 from query layers 0 and 2."""

    prompts = ["a", "b"]
    pathways = []

    def layer_flow(self):
        import torch

        flow = torch.zeros(5, 5)
        flow[0, 1], flow[0, 3], flow[2, 2], flow[2, 1] = 0.5, 0.3, 0.1, 0.2
        return flow


def test_the_pathway_title_lists_exactly_the_drawn_layers_in_flow_order(zoo):
    from interp_edit.viz.pathways import pathway_sankey

    for result in (_Flow(), zoo["pathways"]):
        fig = pathway_sankey(result)
        title = fig.layout.title.text.replace("<br>", " ")
        listed = [int(x) for x in title.split("value layers [")[1].split("]")[0].split(",") if x.strip()]
        queries = [int(x) for x in title.split("query layers [")[1].split("]")[0].split(",") if x.strip()]
        link = fig.data[0].link
        n = len(fig.data[0].node.label) // 2
        into, out_of = {}, {}
        for s, t, v in zip(link.source, link.target, link.value, strict=True):
            into[t - n] = into.get(t - n, 0) + v
            out_of[s] = out_of.get(s, 0) + v
        assert listed == sorted(into, key=lambda v: -into[v])
        assert queries == sorted(out_of, key=lambda q: -out_of[q])
    assert listed  # the zoo draws at least one
    assert "value layers [1, 3, 2]" in pathway_sankey(_Flow()).layout.title.text.replace("<br>", " ")


def test_a_one_batch_experiment_is_drawn_as_bars_not_lines(zoo):
    fig = zoo["experiment"].plot()
    assert len(zoo["experiment"].checkpoints) == 1
    assert fig.data and all(t.type == "bar" for t in fig.data)
    after = next(t for t in fig.data if t.name.startswith("after"))
    assert after.name == "after 1 edits" and "efficacy_score" in after.x


def test_the_aie_figure_is_romes_heatmap_of_token_roles_by_layer(zoo):
    aie = zoo["aie"]
    fig = aie.plot()
    assert [t.type for t in fig.data] == ["heatmap"] * len(aie.kinds)
    for kind, t in zip(aie.kinds, fig.data, strict=True):
        assert t.y[0] == "first subject token" and t.y[-1] == "last token"
        rows = [r for r in aie.roles if not all(aie.curve(k, r).isnan().all() for k in aie.kinds)]
        for label, role, row in zip(t.y, rows, t.z, strict=True):
            assert row == aie.curve(kind, role).tolist(), (kind, role, label)
    # the two post-subject roles are different numbers (ROME: both small), not one curve twice
    assert not torch_equal(aie.curve("mlp", "first_subsequent"), aie.curve("mlp", "further"))


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))
