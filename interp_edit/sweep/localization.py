"""Does localization inform editing? (Hase et al. 2023) on the user's own model, in one call.

``localization_vs_editing(model, method, requests, layers=...)``:

1. **Localization**: for every request the model gets right, the causal-tracing indirect
   effect at its edit token (the last subject token, where ROME / MEMIT read their key) per
   layer — :func:`~interp_edit.analysis.edit_token_aie` on that fact alone, curve ``hidden``
   (restoring the residual stream, as in Hase et al.'s tracing effect) or ``mlp_mediated`` /
   ``severed``. The noise scale is 3 × the std of all the requests' subject-token embeddings.
2. **Editing**: a sweep (:func:`~interp_edit.sweep.run_sweep`, so it runs in-process, in local
   processes or on Ray, and resumes) with one cell per layer, editing each traced request
   independently with ``method`` at that layer alone (``layer=L`` for ROME-like editors,
   ``layers=(L,)`` for MEMIT-like ones) and measuring per request efficacy, generalisation
   (paraphrases) and specificity (neighbourhood prompts): the ``*_score`` (fraction of prompts
   where the right answer wins) and ``*_magnitude`` (probability margin) of
   :func:`~interp_edit.evaluation.evaluate_cases`.
3. **Correlation**: Spearman's rho between the tracing effect and each editing metric over
   all (request, layer) pairs (``pairs``: does a fact's tracing effect at a layer predict how
   well editing that layer works for that fact?), over the per-layer means (``layers``: does
   the AIE curve rank the layers as the edit-success curve does?) and within layers
   (``within``: the mean over layers of rho across facts at one layer — Hase et al.'s point
   that the layer, not the fact's tracing effect, carries the signal). Intervals: percentile
   bootstrap over requests (requests resampled with replacement, each keeping all its
   layers; ``n_boot`` times, seeded).

A constant series (e.g. efficacy 1.0 at every layer) has no rank correlation: its rho is NaN.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from interp_edit.analysis.edit_token_aie import CURVES, TokenFact, edit_token_aie
from interp_edit.errors import ExperimentError, InvalidArgumentError
from interp_edit.evaluation.correlation import spearman

#: editing metrics per (request, layer): what each measures -> the evaluate_cases key
METRICS = {"efficacy": "efficacy_score", "generalisation": "paraphrase_score", "specificity": "neighborhood_score",
           "efficacy_magnitude": "efficacy_magnitude", "generalisation_magnitude": "paraphrase_magnitude",
           "specificity_magnitude": "neighborhood_magnitude"}


@dataclass
class LocalizationEditingResult:
    """Per traced request and layer: the tracing effect at the edit token (``effects``) and the
    editing metrics of a single-layer edit there (``metrics[name]``, names of :data:`METRICS`);
    rank correlations with bootstrap intervals (``correlations[name]``: ``pairs``,
    ``pairs_ci``, ``layers``, ``layers_ci``, ``within``, ``within_ci``).

    >>> cases = load_dataset("toyworld-counterfact")[:2]
    >>> res = localization_vs_editing(model, "rome", cases, layers=(0, 1), samples=2, n_boot=20,
    ...                               config={"steps": 5}, out="loc")
    >>> res.effects.shape, res.metrics["efficacy"].shape        # [fact, layer]
    (torch.Size([2, 2]), torch.Size([2, 2]))
    >>> sorted(res.correlations["efficacy"])[:2]
    ['layers', 'layers_ci']
    >>> fig = res.plot()
    """

    method: str
    layers: tuple[int, ...]
    case_ids: list[str]
    effects: Float[Tensor, "fact layer"]
    metrics: dict[str, Float[Tensor, "fact layer"]]
    correlations: dict[str, dict]
    curve: str
    n_boot: int
    ci: float
    skipped: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    @property
    def mean_effect(self) -> Float[Tensor, " layer"]:
        return self.effects.mean(0)

    def mean_metric(self, name: str = "efficacy") -> Float[Tensor, " layer"]:
        return self.metrics[name].nanmean(0)

    def best_layers(self) -> dict[str, int]:
        """The layer with the largest mean tracing effect and the one with the best mean of
        each editing metric."""
        out = {"tracing": self.layers[int(self.mean_effect.argmax())]}
        for name in self.metrics:
            values = self.mean_metric(name).nan_to_num(-math.inf)
            out[name] = self.layers[int(values.argmax())]
        return out

    def table(self) -> str:
        """Per layer: mean tracing effect and mean editing metrics (Markdown)."""
        names = [n for n in ("efficacy", "generalisation", "specificity", "efficacy_magnitude") if n in self.metrics]
        lines = ["| layer | AIE (" + self.curve + ") | " + " | ".join(names) + " |", "|" + "---|" * (2 + len(names))]
        for j, layer in enumerate(self.layers):
            cells = [f"{self.mean_metric(n)[j].item():.3f}" for n in names]
            lines.append(f"| {layer} | {self.mean_effect[j].item():.3f} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def summary(self) -> str:
        lines = [f"{self.method}: tracing effect ({self.curve}, edit token) vs single-layer edit success, "
                 f"{len(self.case_ids)} facts x {len(self.layers)} layers; Spearman rho [{self.ci:.0%} bootstrap CI]"]
        for name, c in self.correlations.items():
            lines.append(f"  {name:<26} pairs {c['pairs']:+.3f} [{c['pairs_ci'][0]:+.3f}, {c['pairs_ci'][1]:+.3f}]   "
                         f"layer means {c['layers']:+.3f} [{c['layers_ci'][0]:+.3f}, {c['layers_ci'][1]:+.3f}]   "
                         f"within layers {c['within']:+.3f} [{c['within_ci'][0]:+.3f}, {c['within_ci'][1]:+.3f}]")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def plot(self, metric: str = "efficacy"):
        """A Plotly figure, Hase et al. style: left, the mean tracing effect and the mean edit
        success per layer; right, every (fact, layer) point: tracing effect vs edit success,
        coloured by layer.

        >>> res = localization_vs_editing(model, "ft", load_dataset("toyworld-counterfact")[:2], layers=(0, 1),
        ...                               samples=2, n_boot=10, config={"steps": 5}, out="loc_ft")
        >>> fig = res.plot("specificity")
        """
        from interp_edit.viz.localization import localization_figure

        if metric not in self.metrics:
            raise InvalidArgumentError(f"unknown metric {metric!r}; metrics: {sorted(self.metrics)}")
        return localization_figure(self, metric)

    def save(self, path: str | Path, metric: str = "efficacy") -> tuple[Path, Path]:
        from interp_edit.viz.export import save_figure

        return save_figure(self.plot(metric), path)

    def as_dict(self) -> dict:
        return {"method": self.method, "layers": list(self.layers), "case_ids": self.case_ids,
                "effects": self.effects.tolist(), "metrics": {k: v.tolist() for k, v in self.metrics.items()},
                "correlations": self.correlations, "curve": self.curve, "n_boot": self.n_boot, "ci": self.ci,
                "skipped": self.skipped, "settings": self.settings}


def _correlations(effects: Tensor, metric: Tensor, n_boot: int, ci: float, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    n = effects.shape[0]
    pairs, layers, within = [], [], []
    for _ in range(n_boot):
        pick = torch.randint(0, n, (n,), generator=generator)
        pairs.append(spearman(effects[pick], metric[pick]))
        layers.append(spearman(effects[pick].mean(0), metric[pick].nanmean(0)))
        within.append(_within_layer(effects[pick], metric[pick]))
    q = ((1 - ci) / 2, (1 + ci) / 2)

    def interval(samples: list[float]) -> list[float]:
        values = torch.tensor(samples, dtype=torch.float64)
        values = values[~values.isnan()]
        return [math.nan, math.nan] if len(values) == 0 else torch.quantile(values, torch.tensor(q, dtype=torch.float64)).tolist()

    return {"pairs": spearman(effects, metric), "pairs_ci": interval(pairs),
            "layers": spearman(effects.mean(0), metric.nanmean(0)), "layers_ci": interval(layers),
            "within": _within_layer(effects, metric), "within_ci": interval(within)}


def _within_layer(effects: Tensor, metric: Tensor) -> float:
    """Mean over layers of rho across facts at that layer (NaN layers, e.g. constant success,
    left out): does the tracing effect predict success beyond what the layer alone does?"""
    values = [spearman(effects[:, j], metric[:, j]) for j in range(effects.shape[1])]
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def _layer_field(method: str) -> str:
    from interp_edit.editing.registry import get_editor

    names = {f.name for f in dataclasses.fields(get_editor(method).config_class)}
    if "layer" in names:
        return "layer"
    if "layers" in names:
        return "layers"
    raise InvalidArgumentError(f"method {method!r} has no 'layer' or 'layers' config field to edit one layer at a time")


def localization_vs_editing(model, method: str, requests, *, layers: Sequence[int] | None = None, curve: str = "hidden",
                            config: dict | None = None, noise: float = 3.0, samples: int = 10, seed: int = 0,
                            n_boot: int = 1000, ci: float = 0.95, executor="inprocess", workers: int = 2,
                            address: str | None = None, out: str | Path | None = None,
                            progress: bool = False) -> LocalizationEditingResult:
    """See the module docstring. ``model``: a loaded model (``model.cfg.model_name`` names it
    for other executors, which load it by that name); ``requests``: CounterFact cases (a
    :class:`~interp_edit.data.Dataset` or a sequence of
    :class:`~interp_edit.data.CounterFactCase`); ``layers``: default all; ``config``: the
    editor's other config fields; ``out``: folder of the (resumable) editing sweep.

    >>> cases = load_dataset("toyworld-counterfact")[:2]
    >>> res = localization_vs_editing(model, "rome", cases, layers=(0, 1), samples=2, n_boot=20,
    ...                               config={"steps": 5}, out="loc")
    >>> res.layers, len(res.case_ids) + len(res.skipped)
    ((0, 1), 2)
    >>> sorted(res.best_layers())[:1]
    [...]
    """
    from interp_edit.analysis.tracing import subject_embedding_std
    from interp_edit.data import CounterFactCase, Dataset
    from interp_edit.prompts import tokenize_with_subject
    from interp_edit.sweep.runner import run_sweep
    from interp_edit.sweep.spec import DatasetSlice, EditorGrid, SweepSpec

    cases = list(requests.cases if isinstance(requests, Dataset) else requests)
    if not cases:
        raise InvalidArgumentError("no requests to trace and edit")
    for i, case in enumerate(cases):
        if not isinstance(case, CounterFactCase):
            raise InvalidArgumentError(f"request {i}: expected a CounterFactCase, got {type(case).__name__}")
    layers = tuple(range(model.cfg.n_layers)) if layers is None else tuple(layers)
    bad = [x for x in layers if not isinstance(x, int) or not 0 <= x < model.cfg.n_layers]
    if not layers or bad or len(set(layers)) != len(layers):
        raise InvalidArgumentError(f"layers {list(layers)}: need distinct layers in 0..{model.cfg.n_layers - 1}")
    if curve not in CURVES:
        raise InvalidArgumentError(f"unknown curve {curve!r}; curves: {CURVES}")
    if n_boot < 1 or not 0 < ci < 1:
        raise InvalidArgumentError(f"n_boot must be >= 1 and ci in (0, 1), got n_boot={n_boot}, ci={ci}")
    layer_field = _layer_field(method)
    config = dict(config or {})
    if layer_field in config:
        raise InvalidArgumentError(f"config field {layer_field!r} is what this analysis sweeps; leave it out")
    name = model.cfg.model_name
    facts = [TokenFact(c.rewrite.text, c.rewrite.subject, c.rewrite.target_true,
                       tokenize_with_subject(model.tokenizer, c.rewrite.text, c.rewrite.subject).subject_span[1] - 1)
             for c in cases]
    grid = EditorGrid(method, ((layer_field, tuple(x if layer_field == "layer" else (x,) for x in layers)),),
                      tuple(config.items()))
    # check the editing grid (config fields, layers) before tracing anything
    from interp_edit.sweep.cells import expand, validate_cells

    probe = SweepSpec((name,), (grid,), (DatasetSlice("requests", None, Dataset("requests", "counterfact", tuple(cases), "requests")),),
                      (seed,), ("independent",), unrelated=0, fluency=False)
    validate_cells(expand(probe), {name: model})

    std = subject_embedding_std(model, [f.subject for f in facts])
    effects, kept, skipped = [], [], []
    for i, fact in enumerate(facts):
        try:
            traced = edit_token_aie(model, [fact], noise=noise, samples=samples, seed=seed, embedding_std=std)
        except InvalidArgumentError:
            skipped.append({"case_id": cases[i].case_id, "reason": "the model does not predict the true target"})
            continue
        effects.append(traced.curve(curve)[list(layers)])
        kept.append(cases[i])
    if len(kept) < 2:
        raise InvalidArgumentError(f"only {len(kept)} of {len(cases)} requests are known to the model; need >= 2")
    data = Dataset("requests", "counterfact", tuple(kept), "requests")
    spec = dataclasses.replace(probe, datasets=(DatasetSlice("requests", None, data),))
    with tempfile.TemporaryDirectory() as scratch:
        sweep = run_sweep(spec, Path(out) if out is not None else Path(scratch), executor=executor, workers=workers,
                          address=address, models={name: model}, progress=progress)
    if sweep.failed:
        raise ExperimentError(f"single-layer edits failed for {len(sweep.failed)} layer(s): "
                              + "; ".join(f"{k}: {v[-1].splitlines()[-1]}" for k, v in sweep.failed.items()))
    index = {c.case_id: i for i, c in enumerate(kept)}
    metrics = {k: torch.full((len(kept), len(layers)), math.nan) for k in METRICS}
    for j, cell in enumerate(sweep.cells):
        for row in sweep.experiment(cell).rows:
            for key, source in METRICS.items():
                metrics[key][index[row["case_id"]], j] = float(row.get(source, math.nan))
    effects_t = torch.stack(effects).float()
    correlations = {k: _correlations(effects_t, v, n_boot, ci, seed) for k, v in metrics.items()}
    return LocalizationEditingResult(method, layers, [c.case_id for c in kept], effects_t, metrics, correlations, curve,
                                     n_boot, ci, skipped, dict(noise=noise, samples=samples, seed=seed,
                                                               embedding_std=std, config=config))
