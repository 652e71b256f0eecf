"""The batched restoration engine behind causal tracing and activation patching.

A *restoration* is one run of the model on a *base* input (the corrupted prompt, or the clean
one when noising) in which some activations are replaced by those of a *source* run (the
other prompt), optionally with other activations *frozen* at their base values (ROME's
severed traces). The engine runs many restorations at once:

- restorations that patch the same site at the same layers (differing only in position, head
  or noise sample) share one batched forward, in chunks of at most ``max_rows`` rows and of
  what fits in the memory budget (``memory_budget`` bytes; the rule is in interp_edit.batching);
- a run that first differs from the base at layer l starts from the cached base residual
  stream at layer l (``start_at_layer``): the layers below are identical and are not rerun.

Its results equal one ``run_with_hooks`` per restoration (tests/test_tracing_exact.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from interp_edit.adapter import cached_keys_values, forward_from_layer, hook_name, supports_prefix_kv
from interp_edit.batching import forward_row_bytes, resolve_memory_budget, rows_within

#: Sites whose value is the residual stream itself (patched at the run's input).
RESIDUAL_SITES = ("resid_pre", "resid_post")
#: Sites written by a hook during the run.
OUTPUT_SITES = ("attn_out", "mlp_out", "z")


@dataclass(frozen=True)
class Restoration:
    """One run: ``site`` at ``layers`` (at ``pos``, or every position if None; at ``head`` for
    ``z``) takes the source's values; ``freeze`` sites keep their base values at ``pos``."""

    site: str
    layers: tuple[int, ...]
    pos: int | None = None
    head: int | None = None
    freeze: tuple[tuple[str, tuple[int, ...]], ...] = ()

    @property
    def start_layer(self) -> int:
        if self.site == "resid_post":
            return self.layers[0] + 1
        return min(self.layers)


@dataclass
class RunCache:
    """Residual streams (input of every block, and the final residual) and output-site
    activations of one run, each with a leading sample dimension."""

    streams: list[Float[Tensor, "sample pos d_model"]]
    acts: dict[tuple[str, int], Tensor]

    @property
    def samples(self) -> int:
        return self.streams[0].shape[0]


def cache_run(model, tokens, hooks, sites: Sequence[str]) -> tuple[Tensor, RunCache]:
    """One forward (with ``hooks``, e.g. embedding noise) caching what restorations need."""
    from interp_edit.adapter import run_with_cache

    n = model.cfg.n_layers
    names = [hook_name("resid_pre", layer) for layer in range(n)] + [hook_name("resid_post", n - 1)]
    sites = list(sites) + ["k", "v"]  # attention keys/values: to reuse an unchanged prefix
    names += [hook_name(site, layer) for site in sites for layer in range(n)]
    logits, cache = run_with_cache(model, tokens, names, hooks)
    streams = [cache[hook_name("resid_pre", layer)] for layer in range(n)] + [cache[hook_name("resid_post", n - 1)]]
    acts = {(site, layer): cache[hook_name(site, layer)] for site in sites for layer in range(n)}
    for layer in range(n):  # keys and values as a key/value cache holds them (after a q/k norm)
        acts[("k", layer)], acts[("v", layer)] = cached_keys_values(model, layer, acts[("k", layer)], acts[("v", layer)])
    return logits, RunCache(streams, acts)


def _patch_hook(values: Tensor, rows: Tensor, src: Tensor, pos: Tensor | None, head: Tensor | None,
                shift: int = 0) -> Callable:
    """Set ``act[rows, pos - shift(, head)] = values[src, pos(, head)]`` (every position if
    ``pos`` is None); ``shift`` is the number of prefix positions the run does not compute."""
    at = None if pos is None else pos - shift

    def hook(act, hook):
        if pos is None:
            if head is None:
                act[rows] = values[src]
            else:
                act[rows, :, head] = values[src, :, head]
        elif head is None:
            act[rows, at] = values[src, pos]
        else:
            act[rows, at, head] = values[src, pos, head]
        return act

    return hook


def _position_chunks(jobs: list[int], restorations: Sequence[Restoration], rows_per_job: int, max_jobs: int,
                     n_pos: int, overhead_rows: float) -> list[list[int]]:
    """Split jobs (sorted by position) into chunks run as one forward each. A chunk computes
    only the positions from its smallest restored position on, so splitting saves compute;
    it is split where the saving outweighs the cost of one more forward (``overhead_rows``)."""
    ordered = sorted(jobs, key=lambda i: -1 if restorations[i].pos is None else restorations[i].pos)
    chunks: list[list[int]] = []
    for i in ordered:
        pos = restorations[i].pos
        if chunks and len(chunks[-1]) < max_jobs:
            first = restorations[chunks[-1][0]].pos
            waste = 0 if pos is None or first is None else rows_per_job * (pos - first)
            if waste <= overhead_rows:
                chunks[-1].append(i)
                continue
        chunks.append([i])
    return chunks


def run_restorations(
    model,
    restorations: Sequence[Restoration],
    base: RunCache,
    source: RunCache,
    score: Callable[[Tensor], Tensor],
    positions: list[int],
    *,
    max_rows: int = 1024,
    memory_budget: int | float | None = None,
) -> Float[Tensor, "restoration sample"]:
    """Score every restoration on every base sample. Only ``positions`` are unembedded;
    ``score`` maps their logits [rows, len(positions), vocab] to one number per row.

    A forward holds at most ``max_rows`` rows and at most what fits in ``memory_budget`` bytes
    (:func:`~interp_edit.batching.forward_row_bytes` per row; None: a share of the device's
    free memory, :func:`~interp_edit.batching.resolve_memory_budget`). When fewer rows than the
    base has samples fit, a restoration's samples are split over several forwards. Every row
    is computed independently, so the scores do not depend on the budget (up to the last bits
    of batched matrix products)."""
    samples = base.samples
    device = base.streams[0].device
    n_pos = base.streams[0].shape[1]
    budget = resolve_memory_budget(memory_budget, device)
    rows_cap = rows_within(budget, forward_row_bytes(model, n_pos, n_pos, len(positions)), max_rows)
    # the scores stay on the device until the end: no host synchronisation per forward
    out = torch.empty(len(restorations), samples, device=device)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(restorations):
        groups[(r.site, r.layers, r.freeze, r.pos is None, r.head is None)].append(i)
    # one more forward costs about as much as computing this many extra row-positions
    overhead_rows = max(32.0, 8e6 / model.cfg.d_model**2)
    per_forward = min(samples, rows_cap)
    sample_ranges = [(s, min(s + per_forward, samples)) for s in range(0, samples, per_forward)]
    for members in groups.values():
        for chunk in _position_chunks(members, restorations, samples, max(1, rows_cap // samples), n_pos, overhead_rows):
            for s0, s1 in sample_ranges:
                ids = torch.arange(s0, s1, device=device)
                values = _run_group(model, [restorations[i] for i in chunk], base, source, score, positions, ids)
                out[chunk, s0:s1] = values.reshape(len(chunk), s1 - s0).to(out.dtype)
    return out.cpu()


def _run_group(model, group: list[Restoration], base: RunCache, source: RunCache, score, positions,
               sample_ids: Tensor) -> Tensor:
    """One forward of ``group`` × ``sample_ids`` rows (job-major, sample-minor)."""
    first = group[0]
    samples = len(sample_ids)
    rows = len(group) * samples
    device = base.streams[0].device
    job = torch.arange(rows, device=device) // samples
    base_idx = sample_ids[torch.arange(rows, device=device) % samples]
    # the source's sample for each row (its only one, if it has one)
    src_idx = base_idx if source.samples > 1 else torch.zeros_like(base_idx)
    pos = None if first.pos is None else torch.tensor([r.pos for r in group], device=device)[job]
    head = None if first.head is None else torch.tensor([r.head for r in group], device=device)[job]
    all_rows = torch.arange(rows, device=device)

    start = first.start_layer
    # Positions before the first restored one are unchanged: reuse their attention keys and
    # values from the base run instead of recomputing them (never past the scored positions).
    t0 = 0 if pos is None or not supports_prefix_kv(model) else min(min(r.pos for r in group), min(positions))  # host values: no device sync
    residual = base.streams[start][base_idx][:, t0:].clone()
    hooks = []
    if first.site in RESIDUAL_SITES:
        if pos is None:
            residual = source.streams[start][src_idx].clone()
        else:
            residual[all_rows, pos - t0] = source.streams[start][src_idx, pos]
    else:
        for layer in first.layers:
            values = source.acts[(first.site, layer)]
            hooks.append((hook_name(first.site, layer), _patch_hook(values, all_rows, src_idx, pos, head, t0)))
    for site, layers in first.freeze:
        for layer in layers:
            values = base.acts[(site, layer)]
            hooks.append((hook_name(site, layer), _patch_hook(values, all_rows, base_idx, pos, None, t0)))
    prefix_kv = None
    if t0 > 0:
        n = model.cfg.n_layers
        prefix_kv = ([base.acts[("k", layer)][base_idx, :t0] for layer in range(n)],
                     [base.acts[("v", layer)][base_idx, :t0] for layer in range(n)])
    logits = forward_from_layer(model, residual, start, hooks, [p - t0 for p in positions], prefix_kv)
    return score(logits)
