"""Activation patching and attribution patching between a clean and a corrupted prompt.
Spec: shared/reference/methods.md A2."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from interp_edit.adapter import KERNELS, fused_kernels, hook_name
from interp_edit.analysis.gap import ScoreGap
from interp_edit.analysis.restore import Restoration, cache_run, resolve_merge, run_restorations
from interp_edit.analysis.scoring import Target, check_metric, encode_target, score_logits, score_positions
from interp_edit.errors import EmptyInputError, InvalidArgumentError, PromptTooLongError

#: site name -> (engine site, what the scores are indexed by)
SITES = {
    "resid_pre": ("resid_pre", "layer pos"),
    "attn_out": ("attn_out", "layer pos"),
    "mlp_out": ("mlp_out", "layer pos"),
    "head_out": ("z", "layer head"),
    "head_out_pos": ("z", "layer head pos"),
}
DEFAULT_SITES = ("resid_pre", "attn_out", "mlp_out", "head_out")


@dataclass
class PatchingResult:
    """Normalised metric per site: 1 = the clean run's value, 0 = the corrupted run's.

    ``results[site]`` is [layer, pos], [layer, head] or [layer, head, pos] (see ``SITES``).
    ``method`` is ``"exact"`` (one patched run per site) or ``"attribution"`` (first-order
    estimate from 2 forwards + 1 backward).

    >>> res = activation_patch(model, "Talvik Corlo was born in", "Beldel Kordor was born in",
    ...                        sites=("resid_pre", "head_out"))
    >>> res.results["resid_pre"].shape, res.results["head_out"].shape   # [layer, pos], [layer, head]
    (torch.Size([6, 6]), torch.Size([6, 4]))
    >>> abs(round(res.results["resid_pre"][0, -1].item(), 3))   # " in" is the same in both: no effect
    0.0
    >>> fig = res.plot()
    """

    results: dict[str, Tensor]
    method: str
    direction: str
    metric: str
    clean_value: float
    corrupted_value: float
    clean_prompt: str
    corrupted_prompt: str
    str_tokens: tuple[str, ...]
    answer: str
    foil: str | None
    settings: dict = field(default_factory=dict)
    #: whether the clean prompt's top-1 token is the answer's first token (None: not recorded)
    clean_prefers_target: bool | None = None

    @property
    def gap(self) -> ScoreGap:
        """The clean − corrupted gap of the metric and whether it is worth localising (see
        :mod:`~interp_edit.analysis.gap`); its warnings show in the repr and the figure title."""
        return ScoreGap(self.clean_value, self.corrupted_value, self.metric, self.clean_prefers_target)

    def __repr__(self) -> str:
        from interp_edit.reprs import number, short_repr, text

        # denoising: the sites that restore the most (highest); noising: those whose corruption
        # takes the most away (lowest: 1 is the clean run, unchanged)
        noising = self.direction == "noise"
        peaks = []
        for site, values in self.results.items():
            key = values.nan_to_num(float("inf")) if noising else values.nan_to_num(-float("inf"))
            flat = (key.flatten().argmin() if noising else key.flatten().argmax()).item()
            index = [int(i) for i in torch.unravel_index(torch.tensor(flat), values.shape)]
            peaks.append(f"{site}{index} {number(values.flatten()[flat].item(), 3)}")
        return short_repr("PatchingResult", WARNING=self.gap.repr_note(), method=repr(self.method), direction=repr(self.direction),
                          clean=text(self.clean_prompt, 40), corrupted=text(self.corrupted_prompt, 40),
                          answer=text(self.answer), foil=text(self.foil) if self.foil is not None else None,
                          metric=repr(self.metric), **{"lowest" if noising else "peaks": "[" + "; ".join(peaks) + "]"})

    def plot(self, sites: Sequence[str] | None = None):
        """A Plotly figure: one heatmap per site (``sites``: a site name or a subset, default all).

        >>> fig = attribution_patch(model, "Talvik Corlo was born in", "Beldel Kordor was born in").plot(["mlp_out"])
        """
        from interp_edit.viz.patching import patching_figure

        if isinstance(sites, str):
            sites = [sites]
        if sites is not None:
            unknown = [s for s in sites if s not in self.results]
            if unknown or not sites:
                raise InvalidArgumentError(f"sites {unknown or list(sites)} are not in this result; it has {list(self.results)}")
        return patching_figure(self, sites)

    def save(self, path: str | Path) -> tuple[Path, Path]:
        from interp_edit.viz.export import save_figure

        return save_figure(self.plot(), path)


@dataclass(frozen=True)
class _Pair:
    clean: Tensor
    corrupted: Tensor
    prompt_len: int
    target: Target
    str_tokens: tuple[str, ...]
    foil_text: str | None
    #: the first position where the prompts differ (activations before it are identical)
    first_diff: int
    #: the clean prompt's top-1 next token is the answer's first token
    clean_prefers: bool = True

    @property
    def positions(self) -> list[int]:
        return score_positions(self.prompt_len, self.target)


def _prepare(model, clean: str, corrupted: str, answer: str | None, foil: str | None, metric: str, sites) -> _Pair:
    from interp_edit.validation import check_str

    check_metric(metric)
    for name, text in (("clean", clean), ("corrupted", corrupted)):
        check_str(text, f"{name} prompt", nonempty=False)
    check_str(answer, "answer", optional=True)
    check_str(foil, "foil", optional=True)
    if isinstance(sites, str) or not isinstance(sites, (list, tuple)):
        raise InvalidArgumentError(f"sites must be a list of site names from {sorted(SITES)}, got {sites!r}")
    unknown = [s for s in sites if not isinstance(s, str) or s not in SITES]
    if unknown or not sites:
        raise InvalidArgumentError(f"unknown patching sites {unknown or sites}; choose from {sorted(SITES)}")
    for name, text in (("clean", clean), ("corrupted", corrupted)):
        if not text or not text.strip():
            raise EmptyInputError(f"empty {name} prompt {text!r}")
    tok = model.tokenizer
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    clean_ids = bos + tok.encode(clean, add_special_tokens=False)
    corrupted_ids = bos + tok.encode(corrupted, add_special_tokens=False)
    if len(clean_ids) != len(corrupted_ids):
        raise InvalidArgumentError(
            f"clean prompt {clean!r} has {len(clean_ids)} tokens but corrupted prompt {corrupted!r} has "
            f"{len(corrupted_ids)}; patching needs prompts of equal token length"
        )
    # the prompts with the teacher-forced answer fit the context: checked before the forward
    given = encode_target(tok, answer) if answer is not None else None
    length = len(clean_ids) + (len(given) - 1 if given else 0)
    if length > model.cfg.n_ctx:
        raise PromptTooLongError(f"prompt {clean!r}{' with its answer' if given else ''} is {length} tokens; the "
                                 f"model's context is {model.cfg.n_ctx}")
    given_foil = encode_target(tok, foil)[0] if foil is not None and metric == "logit_diff" else None
    device = model.cfg.device
    with torch.no_grad():
        both = model(torch.tensor([clean_ids, corrupted_ids], device=device), return_type="logits")[:, -1]
    answer_ids = given if given is not None else (both[0].argmax().item(),)
    foil_id = None
    if metric == "logit_diff":
        foil_id = given_foil if given_foil is not None else both[1].argmax().item()
        if foil_id == answer_ids[0]:
            raise InvalidArgumentError(
                f"the foil {tok.decode([foil_id])!r} equals the answer; pass answer= and foil= that differ"
            )
    extra = list(answer_ids[:-1])
    target = Target(answer if answer is not None else tok.decode(list(answer_ids)), answer_ids, foil_id)
    ids = clean_ids + extra
    return _Pair(
        torch.tensor([ids], device=device),
        torch.tensor([corrupted_ids + extra], device=device),
        len(clean_ids),
        target,
        tuple(tok.decode([t]) for t in ids),
        None if foil_id is None else tok.decode([foil_id]),
        next((i for i, (a, b) in enumerate(zip(clean_ids, corrupted_ids, strict=True)) if a != b), len(clean_ids)),
        int(both[0].argmax()) == answer_ids[0],
    )


def _restorations(site: str, n_layers: int, n_heads: int, positions: range) -> list[Restoration]:
    engine_site, index = SITES[site]
    if index == "layer pos":
        return [Restoration(engine_site, (layer,), pos) for layer in range(n_layers) for pos in positions]
    if index == "layer head":
        return [Restoration(engine_site, (layer,), None, head) for layer in range(n_layers) for head in range(n_heads)]
    return [Restoration(engine_site, (layer,), pos, head) for layer in range(n_layers) for head in range(n_heads)
            for pos in positions]


def _shape(site: str, cfg, n_pos: int) -> tuple[int, ...]:
    index = SITES[site][1]
    return {"layer pos": (cfg.n_layers, n_pos), "layer head": (cfg.n_layers, cfg.n_heads),
            "layer head pos": (cfg.n_layers, cfg.n_heads, n_pos)}[index]


def _check_direction(direction: str) -> None:
    if not isinstance(direction, str) or direction not in ("denoise", "noise"):
        raise InvalidArgumentError(f"direction must be 'denoise' or 'noise', got {direction!r}")


@torch.no_grad()
def activation_patch(
    model,
    clean: str,
    corrupted: str,
    *,
    answer: str | None = None,
    foil: str | None = None,
    metric: str = "logit_diff",
    sites: Sequence[str] = DEFAULT_SITES,
    direction: str = "denoise",
    max_rows: int | None = None,
    memory_budget: int | float | None = None,
    merge: str = "auto",
    kernels: str = "transformer_lens",
) -> PatchingResult:
    """Exact activation patching at every (layer, pos) / (layer, head[, pos]) of each site.

    ``denoise`` runs the corrupted prompt with one clean activation patched in (is the site
    sufficient?); ``noise`` runs the clean prompt with one corrupted activation (is it
    necessary?). The metric (default: logit difference between ``answer`` — the clean top-1
    by default — and ``foil`` — the corrupted top-1 by default) is normalised so that the clean
    run scores 1 and the corrupted run 0. Restorations share batched forwards that start at
    the patched layer, at most ``max_rows`` rows and ``memory_budget`` bytes each (None: a
    share of the device's free memory, see :func:`interp_edit.batching.resolve_memory_budget`);
    the result does not depend on either, nor on ``merge`` (``"auto"`` | ``"by_layer"`` |
    ``"layers"`` | ``"all"``: which restorations share a forward, as in :func:`causal_trace`).
    ``kernels="fused"`` runs every forward with PyTorch's fused kernels, as in
    :func:`causal_trace` (the result changes by float rounding only).

    >>> res = activation_patch(model, "Talvik Corlo was born in", "Beldel Kordor was born in",
    ...                        answer="Karsa", sites=("mlp_out",))
    >>> res.method, res.direction, res.metric
    ('exact', 'denoise', 'logit_diff')
    >>> res.results["mlp_out"].shape                       # [layer, pos]
    torch.Size([6, 6])
    """
    from interp_edit.batching import check_memory_budget
    from interp_edit.validation import check_choice, check_int

    if max_rows is not None:
        check_int(max_rows, "max_rows", minimum=1)
    check_memory_budget(memory_budget)
    resolve_merge(merge, model.cfg.device)
    check_choice(kernels, "kernels", KERNELS)
    _check_direction(direction)
    pair = _prepare(model, clean, corrupted, answer, foil, metric, sites)
    with fused_kernels(model, kernels == "fused"):
        result = _patch_exact(model, pair, metric, sites, direction, max_rows, memory_budget, merge, clean, corrupted)
    result.settings["kernels"] = kernels
    return result


def _patch_exact(model, pair: _Pair, metric, sites, direction, max_rows, memory_budget, merge, clean,
                 corrupted) -> PatchingResult:
    """:func:`activation_patch`'s runs, its arguments checked."""
    from interp_edit.batching import resolve_memory_budget

    def score(logits):
        return score_logits(logits, pair.target, metric)

    budget = resolve_memory_budget(memory_budget, model.cfg.device)
    cache_sites = sorted({SITES[s][0] for s in sites} - {"resid_pre"})
    clean_logits, clean_cache = cache_run(model, pair.clean, [], cache_sites)
    corr_logits, corr_cache = cache_run(model, pair.corrupted, [], cache_sites)
    m_clean, m_corr = score(clean_logits[:, pair.positions]).item(), score(corr_logits[:, pair.positions]).item()
    base, source = (corr_cache, clean_cache) if direction == "denoise" else (clean_cache, corr_cache)
    m_base = m_corr if direction == "denoise" else m_clean
    n_pos = pair.clean.shape[1]
    # Before the first differing token both runs are identical: patching there changes nothing.
    first = pair.first_diff
    results = {}
    # every site in one call: the merged engine may share forwards between sites
    jobs = {site: _restorations(site, model.cfg.n_layers, model.cfg.n_heads,
                                range(first if SITES[site][1] != "layer head" else 0, n_pos)) for site in sites}
    every = run_restorations(model, [j for site in sites for j in jobs[site]], base, source, score, pair.positions,
                             max_rows=max_rows, memory_budget=budget, merge=merge)[:, 0]
    offset = 0
    for site in sites:
        by_pos = SITES[site][1] != "layer head"
        values = every[offset:offset + len(jobs[site])]
        offset += len(jobs[site])
        full = torch.full(_shape(site, model.cfg, n_pos), m_base)
        if by_pos:
            full[..., first:] = values.reshape(full[..., first:].shape)
        else:
            full = values.reshape(full.shape)
        results[site] = _normalise(full, m_clean, m_corr)
    return _result(results, "exact", direction, metric, m_clean, m_corr, clean, corrupted, pair)


def _normalise(values: Tensor, m_clean: float, m_corr: float) -> Tensor:
    denom = m_clean - m_corr
    if abs(denom) < 1e-12:
        raise InvalidArgumentError("the clean and corrupted prompts score the same; the normalised metric is undefined")
    return (values - m_corr) / denom


def _result(results, method, direction, metric, m_clean, m_corr, clean, corrupted, pair: _Pair) -> PatchingResult:
    foil = None if pair.target.foil_id is None else pair.foil_text
    return PatchingResult(results, method, direction, metric, m_clean, m_corr, clean, corrupted, pair.str_tokens,
                          pair.target.text, foil, clean_prefers_target=pair.clean_prefers)


def attribution_patch(
    model,
    clean: str,
    corrupted: str,
    *,
    answer: str | None = None,
    foil: str | None = None,
    metric: str = "logit_diff",
    sites: Sequence[str] = DEFAULT_SITES,
    direction: str = "denoise",
) -> PatchingResult:
    """Attribution patching (Nanda 2023; Syed et al. 2023): the first-order estimate
    (a_source − a_base) · ∂M/∂a at the base run, for every site at once, from 2 forwards and 1
    backward. Normalised like :func:`activation_patch`.

    >>> res = attribution_patch(model, "Talvik Corlo was born in", "Beldel Kordor was born in")
    >>> res.method, sorted(res.results)
    ('attribution', ['attn_out', 'head_out', 'mlp_out', 'resid_pre'])
    """
    _check_direction(direction)
    pair = _prepare(model, clean, corrupted, answer, foil, metric, sites)
    names = _grad_names(model, sites)
    with torch.no_grad():
        from interp_edit.adapter import run_with_cache

        clean_logits, clean_acts = run_with_cache(model, pair.clean, names)
        corr_logits, corr_acts = run_with_cache(model, pair.corrupted, names)
    m_clean = score_logits(clean_logits[:, pair.positions], pair.target, metric).item()
    m_corr = score_logits(corr_logits[:, pair.positions], pair.target, metric).item()
    base_tokens, source_acts = (pair.corrupted, clean_acts) if direction == "denoise" else (pair.clean, corr_acts)
    grads, base_acts = _gradients(model, base_tokens, names, lambda lg: score_logits(lg[:, pair.positions], pair.target, metric).sum())
    n_pos = pair.clean.shape[1]
    results = {}
    m_base = m_corr if direction == "denoise" else m_clean
    for site in sites:
        per_layer = []
        for layer in range(model.cfg.n_layers):
            name = hook_name(SITES[site][0], layer)
            contrib = ((source_acts[name] - base_acts[name]) * grads[name])[0]  # [pos, d] or [pos, head, d_head]
            if SITES[site][1] == "layer pos":
                per_layer.append(contrib.sum(-1))
            elif SITES[site][1] == "layer head":
                per_layer.append(contrib.sum((0, -1)))
            else:
                per_layer.append(contrib.sum(-1).T)
        estimate = m_base + torch.stack(per_layer).cpu()
        results[site] = _normalise(estimate, m_clean, m_corr).reshape(_shape(site, model.cfg, n_pos))
    return _result(results, "attribution", direction, metric, m_clean, m_corr, clean, corrupted, pair)


def _grad_names(model, sites) -> list[str]:
    return sorted({hook_name(SITES[s][0], layer) for s in sites for layer in range(model.cfg.n_layers)})


def _gradients(model, tokens, names, metric_fn) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Gradients of the metric w.r.t. the activations at ``names`` (parameters get none)."""
    acts: dict[str, Tensor] = {}

    def keep(act, hook, name):  # by the name asked for (on the bridge hook.name is the bridge's own)
        acts[name] = act
        return act

    def ensure_graph(embed, hook):  # also when the parameters are frozen
        return embed if embed.requires_grad else embed.detach().requires_grad_(True)

    hooks = [(hook_name("embed"), ensure_graph)] + [(n, functools.partial(keep, name=n)) for n in names]
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        value = metric_fn(model(tokens, return_type="logits"))
        ordered = [acts[n] for n in names]
        grads = torch.autograd.grad(value, ordered, allow_unused=True)
    out = {n: (g if g is not None else torch.zeros_like(a)).detach() for n, a, g in zip(names, ordered, grads, strict=True)}
    return out, {n: a.detach() for n, a in acts.items()}


def attribution_patch_error(model, clean: str, corrupted: str, **kwargs) -> dict[str, dict[str, float]]:
    """How far attribution patching is from exact patching on the same sites: per site the
    max and mean absolute error of the normalised metric and their Pearson correlation.

    >>> err = attribution_patch_error(model, "Talvik Corlo was born in", "Beldel Kordor was born in",
    ...                               sites=("mlp_out",))
    >>> sorted(err["mlp_out"])
    ['correlation', 'max_abs_error', 'mean_abs_error']
    """
    exact = activation_patch(model, clean, corrupted, **kwargs)
    # the options of the exact engine's forwards, which attribution patching (two forwards, one backward) has not
    approx = attribution_patch(model, clean, corrupted, **{k: v for k, v in kwargs.items()
                                                          if k not in ("max_rows", "memory_budget", "merge", "kernels")})
    report = {}
    for site, value in exact.results.items():
        a, b = value.flatten(), approx.results[site].flatten()
        diff = (a - b).abs()
        corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item() if a.std() > 0 and b.std() > 0 else float("nan")
        report[site] = dict(max_abs_error=diff.max().item(), mean_abs_error=diff.mean().item(), correlation=corr)
    return report
