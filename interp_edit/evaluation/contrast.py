"""Success-versus-failure contrast studies of an editing method (MEGA, 2026; spec A5).

``contrast_study`` edits each request of a pool *independently* (the model is restored between
requests), splits the edits into successes and failures by efficacy — p(new) > p(true) on the
rewrite prompt after the edit, compared by mean per-token log-probability as in
:mod:`~interp_edit.evaluation.counterfact` — and records each edit's pre/post attribution diff
(:func:`~interp_edit.analysis.contrast.attribution_diff`, layer level, averaged over the
request's prompts of each group). It then aggregates per group:

- ``success_mean`` / ``failure_mean``: the mean diff ``[layer, module, direction]`` of each
  group (module 0 attention, 1 FFN; direction 0 ``promote_new``, 1 ``suppress_old``);
- ``leverage`` = success_mean − failure_mean: where successful edits change the computation
  more than failed ones (the profile MEGA's steering uses to pick layers);
- ``leverage_ci``: percentile bootstrap interval (successes and failures resampled
  independently, ``n_boot`` times, seeded).

If every edit succeeds or every edit fails the contrast is undefined: ``leverage`` and
``leverage_ci`` are NaN and ``undefined_reason`` says why (nothing is divided by zero).

With ``out``, each finished request is a line of ``out/contrast.jsonl`` (after one line of
settings); running again with the same settings resumes after the finished requests, and
other settings in the same folder are an :class:`~interp_edit.errors.ExperimentError`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from interp_edit.analysis.contrast import DIRECTIONS, GROUPS, MODULES, attribution_diff, axis_index
from interp_edit.atomic_files import write_text_atomic
from interp_edit.errors import EditRequestError, ExperimentError, InvalidArgumentError
from interp_edit.evaluation.logprobs import continuation_logprobs
from interp_edit.progress import progress_bar
from interp_edit.validation import check_int, check_real, check_sequence

__all__ = ["DIRECTIONS", "MODULES", "ContrastResult", "contrast_study", "contrast_from_records"]

RESULTS_FILE = "contrast.jsonl"
#: below this many edits in the smaller group a defined contrast warns
#: (:attr:`ContrastResult.small_group_warning`: its repr, summary and every figure title)
SMALL_GROUP = 5


def _after_request(index: int) -> None:
    """Called after each request is recorded (tests replace it to simulate an interruption)."""


@dataclass
class ContrastResult:
    """Mean pre/post attribution diffs of successful and failed edits and their difference
    (see the module docstring). ``diffs[r]`` is request ``r``'s mean diff over the prompts of
    ``group``; ``success[r]`` its efficacy; ``margins[r]`` its mean log p(new) − log p(true)
    on the rewrite prompt after the edit.

    >>> study = contrast_study(model, "rome", records[:2], n_boot=20, progress=False)
    >>> study.diffs.shape                    # [request, layer, module (attn | FFN), direction]
    torch.Size([2, 6, 2, ...])
    >>> study.success.tolist()               # efficacy of each edit
    [...]
    >>> fig = study.plot()                   # or plot("leverage"), plot("margins")
    """

    method: str
    group: str
    diffs: Float[Tensor, "request layer module direction"]
    success: Bool[Tensor, " request"]
    margins: Float[Tensor, " request"]
    success_mean: Float[Tensor, "layer module direction"]
    failure_mean: Float[Tensor, "layer module direction"]
    leverage: Float[Tensor, "layer module direction"]
    leverage_ci: Float[Tensor, "layer module direction 2"]
    n_success: int
    n_failure: int
    undefined_reason: str | None
    n_boot: int
    ci: float
    settings: dict = field(default_factory=dict)
    #: every request's JSON record (all groups), to re-aggregate with :meth:`for_group`
    records: list[dict] = field(default_factory=list, repr=False)

    @property
    def defined(self) -> bool:
        return self.undefined_reason is None

    @property
    def small_group_warning(self) -> str | None:
        """The warning of a defined contrast whose smaller group has fewer than
        :data:`SMALL_GROUP` edits (``None`` otherwise); the repr, :meth:`summary` and every
        figure title carry it."""
        smaller = min(self.n_success, self.n_failure)
        if not self.defined or smaller >= SMALL_GROUP:
            return None
        return (f"only {smaller} in the smaller group: its mean is that of a few edits and the bootstrap "
                "intervals hardly reflect its spread")

    @property
    def label(self) -> str:
        """The method with the config fields it was given, e.g. ``rome(steps=4)``."""
        config = self.settings.get("config") or {}
        return self.method + (f"({', '.join(f'{k}={v}' for k, v in config.items())})" if config else "")

    @property
    def n_layers(self) -> int:
        return int(self.leverage.shape[0])

    def for_group(self, group: str) -> ContrastResult:
        """The same study aggregated over another prompt group it recorded."""
        return contrast_from_records(self.method, self.records, group=group, n_boot=self.n_boot, ci=self.ci,
                                     seed=self.settings.get("seed", 0), settings=self.settings)

    def top_layers(self, module: str = "attn", direction: str = "promote_new", k: int = 2,
                   min_layer: int | None = None) -> list[int]:
        """The ``k`` layers (from ``min_layer`` on) with the highest leverage of ``module`` in
        ``direction``, best first. An undefined contrast raises InvalidArgumentError (with the
        reason) rather than choosing layers from nothing."""
        if not self.defined:
            raise InvalidArgumentError(f"the {self.method} contrast is undefined, no layers to choose: {self.undefined_reason}")
        m = axis_index(module, MODULES, "module")
        d = axis_index(direction, DIRECTIONS, "direction")
        if k < 1:
            raise InvalidArgumentError(f"k must be >= 1, got {k}")
        start = 0 if min_layer is None else min_layer
        if not 0 <= start < self.n_layers:
            raise InvalidArgumentError(f"min_layer={min_layer} is outside the model's layers 0..{self.n_layers - 1}")
        values = self.leverage[start:, m, d]
        order = values.argsort(descending=True)[:k]
        return [start + int(i) for i in order]

    def table(self) -> list[dict]:
        """One row per (layer, module, direction): the group means, leverage and its interval."""
        rows = []
        for layer in range(self.n_layers):
            for m, module in enumerate(MODULES):
                for d, direction in enumerate(DIRECTIONS):
                    rows.append({"layer": layer, "module": module, "direction": direction,
                                 "success_mean": float(self.success_mean[layer, m, d]),
                                 "failure_mean": float(self.failure_mean[layer, m, d]),
                                 "leverage": float(self.leverage[layer, m, d]),
                                 "ci_low": float(self.leverage_ci[layer, m, d, 0]),
                                 "ci_high": float(self.leverage_ci[layer, m, d, 1])})
        return rows

    def pattern(self) -> dict[str, float]:
        """The numbers behind MEGA's finding, on this study: mean leverage of attention's
        promotion of o* in the later half of the layers and in the earlier half, and the mean
        leverage in suppression of o of attention and of the FFN (over all layers). NaN when the
        contrast is undefined."""
        late = self.n_layers // 2
        lev = self.leverage
        return {"attn_promote_late": float(lev[late:, 0, 0].mean()), "attn_promote_early": float(lev[:late, 0, 0].mean()),
                "ffn_promote_late": float(lev[late:, 1, 0].mean()), "attn_suppress": float(lev[:, 0, 1].mean()),
                "ffn_suppress": float(lev[:, 1, 1].mean())}

    def summary(self) -> str:
        head = (f"{self.label}: {self.n_success + self.n_failure} edits, {self.n_success} successes, "
                f"{self.n_failure} failures (group {self.group!r})")
        if not self.defined:
            return f"{head}; contrast undefined: {self.undefined_reason}"
        p = self.pattern()
        if self.small_group_warning is not None:
            head += f" [{self.small_group_warning}]"
        return (f"{head}; leverage attn promote_new late {p['attn_promote_late']:+.3f} / early {p['attn_promote_early']:+.3f}, "
                f"suppress_old attn {p['attn_suppress']:+.3f} ffn {p['ffn_suppress']:+.3f}; "
                f"top attn promote layers {self.top_layers(k=2)}")

    def __repr__(self) -> str:
        from interp_edit.reprs import number, short_repr

        fields = dict(method=repr(self.label), group=repr(self.group), successes=str(self.n_success),
                      failures=str(self.n_failure))
        if not self.defined:
            return short_repr("ContrastResult", **fields, undefined=repr(self.undefined_reason))
        p = self.pattern()
        warning = self.small_group_warning
        return short_repr("ContrastResult", WARNING=None if warning is None else repr(warning), **fields,
                          attn_promote_late=number(p["attn_promote_late"], 3),
                          attn_promote_early=number(p["attn_promote_early"], 3), attn_suppress=number(p["attn_suppress"], 3),
                          ffn_suppress=number(p["ffn_suppress"], 3))

    def plot(self, view: str = "panels"):
        """A Plotly figure: ``panels`` (success / failure / leverage maps side by side),
        ``leverage`` (profile with bootstrap error bars), ``margins`` (the efficacy margins on the
        rewrite prompt, successes and failures: the same whatever ``group``). Every title says
        when the contrast is undefined and carries :attr:`small_group_warning`.

        >>> fig = contrast_study(model, "rome", records[:2], n_boot=10, progress=False).plot("margins")
        """
        from interp_edit.viz.contrast import contrast_figure

        return contrast_figure(self, view)

    def save(self, path: str | Path, view: str = "panels") -> tuple[Path, Path]:
        from interp_edit.viz.export import save_figure

        return save_figure(self.plot(view), path)


def bootstrap_difference(a: Float[Tensor, "n ..."], b: Float[Tensor, "m ..."], n_boot: int, ci: float,
                         generator: torch.Generator) -> Float[Tensor, "... 2"]:
    """Percentile bootstrap interval of ``mean(a) − mean(b)`` (each resampled with replacement)."""
    ia = torch.randint(len(a), (n_boot, len(a)), generator=generator)
    ib = torch.randint(len(b), (n_boot, len(b)), generator=generator)
    samples = a.double()[ia].mean(1) - b.double()[ib].mean(1)  # [n_boot, ...]
    alpha = (1.0 - ci) / 2
    q = torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)
    return torch.quantile(samples, q, dim=0).movedim(0, -1).float()


def _check_bootstrap(n_boot, ci, seed) -> None:
    """``n_boot`` an int >= 1, ``ci`` a real in (0, 1), ``seed`` an int; errors name the argument."""
    check_int(n_boot, "n_boot", minimum=1)
    if not 0.0 < check_real(ci, "ci") < 1.0:
        raise InvalidArgumentError(f"ci must be in (0, 1), got {ci!r}")
    check_int(seed, "seed")


def contrast_from_records(method: str, records: Sequence[dict], *, group: str = "edit", n_boot: int = 1000,
                          ci: float = 0.95, seed: int = 0, settings: dict | None = None) -> ContrastResult:
    """Aggregate per-request records (as :func:`contrast_study` writes them) into a result."""
    _check_bootstrap(n_boot, ci, seed)
    if not records:
        raise EditRequestError("the contrast has no edits (an empty request pool)")
    if any(group not in r["diffs"] for r in records):
        raise InvalidArgumentError(f"group {group!r} was not recorded; recorded: {sorted(records[0]['diffs'])}")
    diffs = torch.tensor([r["diffs"][group] for r in records], dtype=torch.float32)
    success = torch.tensor([bool(r["success"]) for r in records])
    margins = torch.tensor([float(r["margin"]) for r in records])
    n_success, n_failure = int(success.sum()), int((~success).sum())
    shape = diffs.shape[1:]
    nan = torch.full(shape, float("nan"))
    success_mean = diffs[success].mean(0) if n_success else nan.clone()
    failure_mean = diffs[~success].mean(0) if n_failure else nan.clone()
    reason = None
    if n_failure == 0:
        reason = f"all {n_success} edits succeeded (p(new) > p(true) after the edit): no failures to contrast with"
    elif n_success == 0:
        reason = f"all {n_failure} edits failed (p(new) <= p(true) after the edit): no successes to contrast with"
    if reason is None:
        leverage = success_mean - failure_mean
        generator = torch.Generator().manual_seed(seed)
        leverage_ci = bootstrap_difference(diffs[success], diffs[~success], n_boot, ci, generator)
    else:
        leverage, leverage_ci = nan.clone(), torch.full((*shape, 2), float("nan"))
    return ContrastResult(method, group, diffs, success, margins, success_mean, failure_mean, leverage, leverage_ci,
                          n_success, n_failure, reason, n_boot, ci, dict(settings or {}), list(records))


def _prompt_groups(record, request, index: int, groups: Sequence[str]) -> dict[str, list[str]]:
    available = {"edit": [request.text]}
    def value(name: str):
        return record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)

    paraphrases = list(value("paraphrase_prompts") or request.paraphrases)
    if paraphrases:
        available["paraphrase"] = paraphrases
    neighbours = list(value("neighborhood_prompts") or ())
    if neighbours:
        available["neighborhood"] = neighbours
    missing = [g for g in groups if g not in available]
    if missing:
        raise EditRequestError(f"request {index}: no prompts for group(s) {missing} (it has {sorted(available)}); "
                               "paraphrase / neighbourhood prompts come from CounterFact records or EditRequest.paraphrases")
    return {g: available[g] for g in groups}


def _margin(model, text: str, new: str, true: str) -> float:
    totals, counts = continuation_logprobs(model, [text, text], [new, true])
    means = totals / counts
    return float(means[0] - means[1])


def _read(path: Path) -> list[dict]:
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by an interruption: it and everything after it are redone
    return lines


def _resume(path: Path | None, settings: dict) -> list[dict]:
    if path is None or not path.exists():
        return []
    lines = _read(path)
    if not lines or lines[0].get("type") != "settings":
        return []
    found = {k: v for k, v in lines[0].items() if k != "type"}
    wanted = json.loads(json.dumps(settings))
    if found != wanted:
        differ = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
        raise ExperimentError(f"{path} holds a contrast study with other settings (differing: {differ}); use another folder")
    done = [line for line in lines[1:] if line.get("type") == "request"]
    prefix = []  # the contiguous prefix only
    for i, record in enumerate(done):
        if record["index"] != i:
            break
        prefix.append(record)
    return prefix


def _write(path: Path, settings: dict, records: Sequence[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(entry) + "\n" for entry in [{"type": "settings", **settings}, *records]))


def _append(path: Path, entry: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
        handle.flush()


def contrast_study(
    model,
    method: str | Callable,
    requests: Sequence,
    *,
    config: dict | None = None,
    groups: Sequence[str] = ("edit",),
    group: str = "edit",
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = True,
) -> ContrastResult:
    """Edit each request independently with ``method`` (a registered editor's name, with
    ``config`` as its config fields; or a callable ``fn(model, [request], **config) -> Edit``),
    record each edit's efficacy and layer-level attribution diff averaged over the request's
    prompts of each of ``groups`` (``"edit"``, ``"paraphrase"``, ``"neighborhood"``: the last
    two need CounterFact records), and contrast successes with failures on ``group`` (see the
    module docstring). Requests need ``target_true`` (efficacy compares against it). The model is
    bitwise unchanged afterwards, also on an exception.

    >>> study = contrast_study(model, "memit", records[:3], config={"layers": (1, 2)},
    ...                        groups=("edit", "paraphrase"), n_boot=20, progress=False)
    >>> study.method, study.group, study.margins.shape
    ('memit', 'edit', torch.Size([3]))
    >>> rows = study.table()                 # one dict per (layer, module, direction)
    """
    from interp_edit.adapter import model_fingerprint
    from interp_edit.editing.registry import get_editor
    from interp_edit.editing.requests import as_request, prepare_requests

    requests = list(requests)
    if not requests:
        raise EditRequestError(f"contrast_study got an empty request pool for {method!r}; it needs at least one request")
    groups = tuple(check_sequence(groups, "groups", nonempty=False))  # a str such as "edit" is refused
    unknown = sorted((g for g in set(groups) - set(GROUPS)), key=repr)
    if unknown or not groups:
        raise InvalidArgumentError(f"groups must be a non-empty subset of {GROUPS}, got {groups}")
    if group not in groups:
        raise InvalidArgumentError(f"group {group!r} must be one of the recorded groups {groups}")
    _check_bootstrap(n_boot, ci, seed)  # before any edit: the bootstrap runs after all of them
    config = dict(config or {})
    if callable(method):
        name, edit_fn = getattr(method, "__name__", "custom"), method
    else:
        name, edit_fn = method, get_editor(method).fn
    fingerprint = model_fingerprint(model)
    parsed = [as_request(r, i) for i, r in enumerate(requests)]
    prepare_requests(model, parsed, fingerprint)  # validates every request (index and field in the message)
    for i, req in enumerate(parsed):
        if not req.target_true:
            raise EditRequestError(f"request {i}: field 'target_true' is missing; efficacy (p(new) > p(true)) needs it")
    prompt_groups = [_prompt_groups(r, req, i, groups) for i, (r, req) in enumerate(zip(requests, parsed, strict=True))]
    settings = {"method": name, "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
                "groups": list(groups), "model_fingerprint": fingerprint, "seed": seed,
                "requests": [req.as_dict() for req in parsed], "prompts": prompt_groups}
    path = Path(out) / RESULTS_FILE if out is not None else None
    records = _resume(path, settings)
    if path is not None:
        _write(path, settings, records)  # drops a line cut by an interruption
    bar = progress_bar(total=len(parsed), initial=len(records), desc=f"contrast {name}", disable=not progress)
    for i in range(len(records), len(parsed)):
        start = time.perf_counter()
        req = parsed[i]
        edit = edit_fn(model, [requests[i]], **config)
        diff = attribution_diff(model, edit, prompt_groups[i], targets=(req.target_new, req.target_true), neurons=False)
        text = req.text
        before = _margin(model, text, req.target_new, req.target_true)
        with edit.applied(model):
            after = _margin(model, text, req.target_new, req.target_true)
        record = {"type": "request", "index": i, "success": after > 0, "margin": after, "margin_before": before,
                  "diffs": {g: diff.layer_diff(g).tolist() for g in groups}, "seconds": time.perf_counter() - start}
        records.append(record)
        if path is not None:
            _append(path, record)
        bar.update(1)
        _after_request(i)
    bar.close()
    return contrast_from_records(name, records, group=group, n_boot=n_boot, ci=ci, seed=seed, settings=settings)
