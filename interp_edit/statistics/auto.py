"""``stats_samples="auto"``: as many corpus texts as the edit needs, no more.

The sample grows geometrically (``start``, ``2·start``, ``4·start`` … texts, up to
``max_samples`` or the end of the corpus); after each step the statistics' effect on the edit
is measured on the request keys K (per layer, [key, request]): by default the quantity
``C⁻¹K`` ROME and MEMIT whiten by (an editor may pass the exact quantity it solves, e.g.
MEMIT's ``(λC + KKᵀ)⁻¹K``). The sample stops growing once, for every layer and every request
key, ``‖q_n − q_prev‖ / ‖q_n‖ ≤ tolerance`` between two consecutive steps. While C has fewer
keys than its width it is singular and no step counts; nor does a last step shorter than the
growth factor (where the corpus or ``max_samples`` ends: the change between overlapping samples
shrinks with the overlap, so it would pass too early). Unsettled at the end, it warns and uses
every text read. The texts are read before any forward;
the sums carry over from step to step (each text is run once). The result records the
schedule, each step's texts, tokens and relative change, and whether it converged
(``provenance.auto``); it is cached like a fixed-size statistic of that many texts (the last
two steps are cached, so that a rerun with the same requests reads both and stops at once).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from interp_edit.batching import encode_prompts
from interp_edit.errors import EditConfigError
from interp_edit.statistics.collect import (
    AUTO_GROWTH,
    AUTO_START,
    _cached,
    _require_base,
    _stem,
    _store,
    accumulate,
    cache_folder,
    corpus_label,
    corpus_texts,
    default_corpus,
    token_ids,
)
from interp_edit.statistics.corpus import corpus_hash
from interp_edit.statistics.provenance import KeyStatistics, site_dim


def schedule(total: int, start: int = AUTO_START, growth: int = AUTO_GROWTH) -> list[int]:
    """The sample sizes tried: ``start · growthⁱ`` below ``total``, then ``total``."""
    sizes, n = [], max(1, min(start, total))
    while n < total:
        sizes.append(n)
        n *= growth
    return sizes + [total]


def solved(C: Tensor, K: Tensor) -> Tensor | None:
    """``C⁻¹K`` in float64, or None where C is singular."""
    x, info = torch.linalg.solve_ex(C.double(), K.double())
    return x if int(info) == 0 and torch.isfinite(x).all() else None


def relative_change(new: Tensor, old: Tensor) -> float:
    """The largest over columns (request keys) of ‖new − old‖ / ‖new‖."""
    return float(((new - old).norm(dim=0) / new.norm(dim=0).clamp_min(1e-300)).max())


def auto_statistics(model, layers: Sequence[int], site: str, corpus,
                    keys: Mapping[int, Tensor] | Callable[[], Mapping[int, Tensor]], *,
                    probe: Callable[[int, Tensor, Tensor], Tensor] | None = None, tolerance: float = 0.01,
                    max_samples: int = 100_000, batch_size: int = 32, cache_dir=None, progress: bool = False,
                    start: int = AUTO_START, growth: int = AUTO_GROWTH) -> dict[int, KeyStatistics]:
    """:class:`KeyStatistics` of ``layers`` from the smallest sample (of the schedule above) at
    which the watched quantity stops changing by more than ``tolerance``. ``keys``: the
    request keys per layer, [request, key] (or a function giving them, called after the corpus
    is read); ``probe(layer, C, K)``: the quantity watched
    (default ``C⁻¹K``)."""
    if not (isinstance(tolerance, (int, float)) and 0 < tolerance < 1):
        raise EditConfigError(f"field 'stats_tolerance' must be in (0, 1), got {tolerance!r}")
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise EditConfigError(f"field 'stats_max_samples' must be an integer >= 1, got {max_samples!r}")
    dim = site_dim(model, site)
    named_toy = corpus is None and model.cfg.model_name == "toyworld"
    texts = None if named_toy else corpus_texts(model, corpus, max_samples)  # read (and checked) before any forward
    keys = keys() if callable(keys) else keys
    K = {}
    if not isinstance(keys, Mapping) or any(layer not in keys for layer in layers):
        given = sorted(keys) if isinstance(keys, Mapping) else type(keys).__name__
        raise EditConfigError(f"n_samples='auto' needs the request keys of layers {list(layers)}; the probe keys given "
                              f"are of {given}")
    for layer in layers:
        k = torch.as_tensor(keys[layer]).detach().to("cpu", torch.float64)
        if k.ndim != 2 or k.shape[-1] != dim:
            raise EditConfigError(f"request keys of layer {layer} have shape {tuple(k.shape)}; expected [request, {dim}]")
        K[layer] = k.T
    watch = probe or (lambda layer, C, k: solved(C, k))
    total = max_samples if named_toy else len(texts)
    sizes = schedule(total, start, growth)
    folder = cache_folder(cache_dir)
    label = corpus_label(model, corpus)

    def stem(n: int) -> str:
        return _stem(model, site, f"toyworld-default-{n}" if named_toy else f"{corpus_hash(texts[:n])}_{n}")

    def quantities(moments) -> dict[int, Tensor | None]:
        return {layer: watch(layer, moments[layer].double(), K[layer]) for layer in layers}

    def change(new, old, n_tokens) -> float:
        if old is None or n_tokens < dim or any(v is None for v in (*new.values(), *old.values())):
            return float("inf")
        return max(relative_change(new[layer], old[layer]) for layer in layers)

    # a rerun with the same requests: two consecutive cached steps that already agree
    for a, b in zip(sizes, sizes[1:], strict=False):
        if b < growth * a:
            continue
        first, second = _cached(model, folder, stem(a), site, layers), _cached(model, folder, stem(b), site, layers)
        if len(first) == len(second) == len(layers):
            tokens = second[layers[0]].provenance.n_tokens
            delta = change(quantities({k: s.moment for k, s in second.items()}),
                           quantities({k: s.moment for k, s in first.items()}), tokens)
            if delta <= tolerance:
                auto = {"tolerance": tolerance, "converged": True, "from_cache": True, "probe": _probe_name(probe),
                        "steps": [{"n_texts": a, "n_tokens": first[layers[0]].provenance.n_tokens},
                                  {"n_texts": b, "n_tokens": tokens, "relative_change": delta}]}
                return {k: KeyStatistics(s.moment, s.provenance.replace(auto=auto)) for k, s in second.items()}

    sums, count, done, previous, steps, converged = None, 0, 0, None, [], False
    moments = {}
    for n in sizes:
        cached = _cached(model, folder, stem(n), site, layers)
        if len(cached) == len(layers):
            count = cached[layers[0]].provenance.n_tokens
            sums = {k: s.moment.to(model.cfg.device, torch.float64) * count for k, s in cached.items()}
        else:
            _require_base(model, layers)
            chunk = (default_corpus(model, n) if named_toy else texts)[done:n]
            ids = token_ids(model, chunk, corpus) if done == 0 else \
                [seq[: model.cfg.n_ctx] for seq in encode_prompts(model.tokenizer, chunk)]
            sums, added = accumulate(model, layers, site, ids, batch_size=batch_size, progress=progress, sums=sums)
            count += added
        done = n
        moments = {k: (sums[k] / count).cpu() for k in layers}
        current = quantities(moments)
        delta = change(current, previous, count)
        full = bool(steps) and n >= growth * steps[-1]["n_texts"]  # a shorter last step (the corpus ended) does not count
        steps.append({"n_texts": n, "n_tokens": count, "relative_change": None if delta == float("inf") else delta,
                      "counts": full})
        if full and delta <= tolerance:
            converged = True
            break
        previous, previous_moments = current, moments
    if not converged:
        last = steps[-1]["relative_change"]
        warnings.warn(f"stats_samples='auto': the statistics of layers {list(layers)} ({site}) did not settle within "
                      f"{done} texts ({count} tokens): last relative change {last} > tolerance {tolerance}; raise "
                      "stats_max_samples or the tolerance", stacklevel=3)
    auto = {"tolerance": tolerance, "converged": converged, "from_cache": False, "probe": _probe_name(probe), "steps": steps}
    full_texts = default_corpus(model, done) if named_toy else texts[:done]
    out = {}
    for layer in layers:
        out[layer] = _store(model, folder / f"{stem(done)}_L{layer}.safetensors", site, layer, moments[layer], label,
                            corpus_hash(full_texts), done, count, auto)
    if converged and len(steps) > 1:  # the step before, so that a rerun can check the pair without a forward
        before = steps[-2]
        for layer in layers:
            _store(model, folder / f"{stem(before['n_texts'])}_L{layer}.safetensors", site, layer, previous_moments[layer],
                   label, corpus_hash(full_texts[: before["n_texts"]]), before["n_texts"], before["n_tokens"])
    return out


def _probe_name(probe) -> str:
    return "C⁻¹K" if probe is None else getattr(probe, "label", getattr(probe, "__name__", "editor quantity"))


__all__ = ["auto_statistics", "relative_change", "schedule", "solved"]
