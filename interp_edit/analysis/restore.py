"""The batched restoration engine behind causal tracing and activation patching.

A *restoration* is one run of the model on a *base* input (the corrupted prompt, or the clean
one when noising) in which some activations are replaced by those of a *source* run (the
other prompt), optionally with other activations *frozen* at their base values (ROME's
severed traces). The engine runs many restorations at once:

- every row of a forward carries its own restoration: its patched site, layer(s), position
  and head, and its frozen sites. The hooks of a forward are built once, from index tensors
  (which rows, which source sample, which position / head), so the hot loop runs a fixed
  number of indexing operations per hook point, never Python per restoration;
- a forward starts at the smallest start layer of its rows (``start_at_layer``: the layers
  below are identical to the base run and are not rerun), and the positions before the
  smallest restored one reuse the base run's attention keys and values (``prefix_kv``);
- ``merge`` chooses which restorations share a forward: ``"by_layer"`` groups those that patch
  the same site at the same layers (differing only in position, head or sample), so a forward
  skips every layer below its restoration; ``"layers"`` merges restorations of every site,
  kind and layer, sorted by start layer and cut where one more forward costs less than the
  lower layers it saves (:func:`interp_edit.batching.forward_overhead_row_layers`): few large
  forwards that fill a GPU; ``"all"`` merges the same way but cuts only at the size limits
  (the largest forwards; tests use it to mix every kind of row); ``"auto"`` (default) is
  ``"layers"`` on CUDA and ``"by_layer"`` elsewhere (on the CPU the skipped layers are real
  compute: by_layer measures faster);
- a forward holds at most ``max_rows`` rows (None: :func:`interp_edit.batching.default_max_rows`
  of the device) and what fits in the memory budget (``memory_budget`` bytes; the rule is in
  interp_edit.batching).

Its results equal one ``run_with_hooks`` per restoration in every merge mode
(tests/test_tracing_exact.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from interp_edit.adapter import cached_keys_values, forward_from_layer, hook_name, shared_first_norm, supports_prefix_kv
from interp_edit.batching import (
    default_max_rows,
    forward_overhead_row_layers,
    forward_row_bytes,
    resolve_memory_budget,
    rows_within,
)

#: Sites whose value is the residual stream itself (patched at the run's input).
RESIDUAL_SITES = ("resid_pre", "resid_post")
#: Sites written by a hook during the run.
OUTPUT_SITES = ("attn_out", "mlp_out", "z")
#: Which restorations share a forward (see the module docstring).
MERGE_MODES = ("auto", "by_layer", "layers", "all")


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


def resolve_merge(merge, device) -> str:
    """The merge mode a run uses: ``merge`` checked (one of :data:`MERGE_MODES`, else an
    :class:`~interp_edit.errors.InvalidArgumentError` naming it); ``"auto"`` is ``"layers"``
    on CUDA and ``"by_layer"`` elsewhere."""
    from interp_edit.errors import InvalidArgumentError

    if not isinstance(merge, str) or merge not in MERGE_MODES:
        raise InvalidArgumentError(f"merge must be one of {MERGE_MODES}, got {merge!r}")
    if merge == "auto":
        return "layers" if torch.device(device).type == "cuda" else "by_layer"
    return merge


@dataclass
class _Patch:
    """``act[rows, at(, head)] = values[src, pos(, head)]`` (every position if ``at`` is None)."""

    values: Tensor
    rows: Tensor
    src: Tensor
    at: Tensor | None
    pos: Tensor | None
    head: Tensor | None


def _patch_hook(patches: list[_Patch]) -> Callable:
    """One hook applying ``patches`` in order: a fixed number of indexing operations, whatever
    the number of restorations in the forward."""

    def hook(act, hook):
        for p in patches:
            if p.at is None:
                if p.head is None:
                    act[p.rows] = p.values[p.src]
                else:
                    act[p.rows, :, p.head] = p.values[p.src, :, p.head]
            elif p.head is None:
                act[p.rows, p.at] = p.values[p.src, p.pos]
            else:
                act[p.rows, p.at, p.head] = p.values[p.src, p.pos, p.head]
        return act

    return hook


def _position_chunks(jobs: list[int], restorations: Sequence[Restoration], rows_per_job: int, max_jobs: int,
                     overhead_rows: float) -> list[list[int]]:
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


def _layer_chunks(restorations: Sequence[Restoration], rows_per_job: int, max_jobs: int, n_layers: int,
                  overhead: float) -> list[list[int]]:
    """Merge every restoration into forwards of at most ``max_jobs`` jobs: sorted by start
    layer (then position), cut where the cost of one more forward (``overhead``, in
    row-layers) is less than the layers it saves. The cuts are chosen by dynamic programming
    over the runs of equal start layer (a forward costs ``overhead`` + rows × layers run);
    ``overhead=0`` cuts only at ``max_jobs`` (greedily: the fullest forwards)."""
    order = sorted(range(len(restorations)),
                   key=lambda i: (restorations[i].start_layer, -1 if restorations[i].pos is None else restorations[i].pos))
    if overhead <= 0:
        return [order[i:i + max_jobs] for i in range(0, len(order), max_jobs)]
    units: list[list[int]] = []  # runs of one start layer, at most max_jobs each
    for i in order:
        if units and len(units[-1]) < max_jobs and restorations[units[-1][0]].start_layer == restorations[i].start_layer:
            units[-1].append(i)
        else:
            units.append([i])
    k = len(units)
    best = [0.0] + [float("inf")] * k  # best[j]: the cost of units[:j]
    cut = [0] * (k + 1)
    for j in range(1, k + 1):
        jobs = 0
        for i in range(j - 1, -1, -1):  # the last forward holds units[i:j]
            jobs += len(units[i])
            if jobs > max_jobs:
                break
            cost = best[i] + overhead + jobs * rows_per_job * (n_layers - restorations[units[i][0]].start_layer + 1)
            if cost < best[j]:
                best[j], cut[j] = cost, i
    chunks = []
    j = k
    while j > 0:
        chunks.append([i for unit in units[cut[j]:j] for i in unit])
        j = cut[j]
    return chunks[::-1]


def run_restorations(
    model,
    restorations: Sequence[Restoration],
    base: RunCache,
    source: RunCache,
    score: Callable[[Tensor], Tensor],
    positions: list[int],
    *,
    max_rows: int | None = None,
    memory_budget: int | float | None = None,
    merge: str = "auto",
) -> Float[Tensor, "restoration sample"]:
    """Score every restoration on every base sample. Only ``positions`` are unembedded;
    ``score`` maps their logits [rows, len(positions), vocab] to one number per row.

    A forward holds at most ``max_rows`` rows (None: :func:`~interp_edit.batching.default_max_rows`
    of the device) and at most what fits in ``memory_budget`` bytes
    (:func:`~interp_edit.batching.forward_row_bytes` per row, plus the reused key/value prefix
    when merging; None: a share of the device's free memory,
    :func:`~interp_edit.batching.resolve_memory_budget`). When fewer rows than the base has
    samples fit, a restoration's samples are split over several forwards. ``merge``
    (:data:`MERGE_MODES`, see the module docstring) chooses which restorations share a
    forward. Every row is computed independently, so the scores depend neither on the budget
    nor on the merge mode (up to the last bits of batched matrix products)."""
    samples = base.samples
    device = base.streams[0].device
    mode = resolve_merge(merge, device)
    n_pos = base.streams[0].shape[1]
    n_layers = model.cfg.n_layers
    budget = resolve_memory_budget(memory_budget, device)
    max_rows = default_max_rows(device) if max_rows is None else max_rows
    row_bytes = forward_row_bytes(model, n_pos, n_pos, len(positions))
    if mode != "by_layer" and supports_prefix_kv(model):  # the gathered key/value prefix of every layer
        key = base.acts[("k", 0)]
        row_bytes += 2 * n_layers * min(positions) * key[0, 0].numel() * key.element_size()
    rows_cap = rows_within(budget, row_bytes, max_rows)
    # the scores stay on the device until the end: no host synchronisation per forward
    out = torch.empty(len(restorations), samples, device=device)
    per_forward = min(samples, rows_cap)
    max_jobs = max(1, rows_cap // samples)
    sample_ranges = [(s, min(s + per_forward, samples)) for s in range(0, samples, per_forward)]
    if mode != "by_layer":
        overhead = forward_overhead_row_layers(model, n_pos, device) if mode == "layers" else 0.0
        chunks = _layer_chunks(restorations, samples, max_jobs, n_layers, overhead)
    else:
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, r in enumerate(restorations):
            groups[(r.site, r.layers, r.freeze, r.pos is None, r.head is None)].append(i)
        # one more forward costs about as much as computing this many extra row-positions
        overhead_rows = max(32.0, 8e6 / model.cfg.d_model**2)
        chunks = [chunk for members in groups.values()
                  for chunk in _position_chunks(members, restorations, samples, max_jobs, overhead_rows)]
    with shared_first_norm(model):  # entered once for all the forwards
        for chunk in chunks:
            index = torch.tensor(chunk, device=device)
            for s0, s1 in sample_ranges:
                ids = torch.arange(s0, s1, device=device)
                values = _run_rows(model, [restorations[i] for i in chunk], base, source, score, positions, ids)
                out[index, s0:s1] = values.reshape(len(chunk), s1 - s0).to(out.dtype)
    return out.cpu()


def _run_rows(model, group: list[Restoration], base: RunCache, source: RunCache, score, positions,
              sample_ids: Tensor) -> Tensor:
    """One forward of ``group`` × ``sample_ids`` rows (job-major, sample-minor); each row
    carries its own restoration. Host values only (no device synchronisation): the hooks'
    index tensors are built from one host-to-device copy."""
    samples = len(sample_ids)
    jobs = len(group)
    rows = jobs * samples
    device = base.streams[0].device
    n = model.cfg.n_layers
    base_idx = sample_ids.repeat(jobs)
    # the source's sample for each row (its only one, if it has one)
    src_idx = base_idx if source.samples > 1 else torch.zeros_like(base_idx)
    start = min(r.start_layer for r in group)
    # Positions before the first restored one are unchanged in every row: reuse their
    # attention keys and values from the base run instead of recomputing them (never past the
    # scored positions).
    any_all = any(r.pos is None for r in group)
    t0 = 0 if any_all or not supports_prefix_kv(model) else min(min(r.pos for r in group), min(positions))

    # (hook name, "source" | "base", by position, by head) -> the values and the jobs patched
    entries: dict[tuple, tuple[Tensor, list[int]]] = {}
    initial: dict[bool, list[int]] = {True: [], False: []}  # residual patches at the start layer

    def add(name, which, values, j, r, head=False):
        key = (name, which, r.pos is not None, head and r.head is not None)
        entries.setdefault(key, (values, []))[1].append(j)

    for j, r in enumerate(group):
        if r.site in RESIDUAL_SITES:
            s = r.start_layer
            if s == start:
                initial[r.pos is not None].append(j)
            else:  # the input of block s (after the last block: the final residual)
                name = hook_name("resid_pre", s) if s < n else hook_name("resid_post", n - 1)
                add(name, "source", source.streams[s], j, r)
        else:
            for layer in r.layers:
                add(hook_name(r.site, layer), "source", source.acts[(r.site, layer)], j, r, head=True)
        for site, layers in r.freeze:
            for layer in layers:
                add(hook_name(site, layer), "base", base.acts[(site, layer)], j, r)

    # every job list, positions and heads in one host-to-device copy
    lists = [initial[True], initial[False]] + [js for _, js in entries.values()]
    flat = [j for js in lists for j in js]
    pos_h = [0 if r.pos is None else r.pos for r in group]
    head_h = [0 if r.head is None else r.head for r in group]
    packed = torch.tensor(flat + pos_h + head_h, device=device)
    pos_job, head_job = packed[len(flat):len(flat) + jobs], packed[len(flat) + jobs:]
    offsets = [0]
    for js in lists:
        offsets.append(offsets[-1] + len(js))
    sample_ar = torch.arange(samples, device=device)

    def job_rows(k: int) -> Tensor:
        job = packed[offsets[k]:offsets[k + 1]]
        return (job[:, None] * samples + sample_ar).flatten(), job.repeat_interleave(samples)

    residual = base.streams[start][base_idx][:, t0:].clone()
    if initial[True]:
        r_rows, job = job_rows(0)
        pos = pos_job[job]
        residual[r_rows, pos - t0] = source.streams[start][src_idx[r_rows], pos]
    if initial[False]:
        r_rows, _ = job_rows(1)
        residual[r_rows] = source.streams[start][src_idx[r_rows]][:, t0:]
    by_hook: dict[str, list[_Patch]] = {}
    for k, ((name, which, by_pos, by_head), (values, _)) in enumerate(entries.items(), start=2):
        r_rows, job = job_rows(k)
        src = (src_idx if which == "source" else base_idx)[r_rows]
        pos = pos_job[job] if by_pos else None
        head = head_job[job] if by_head else None
        by_hook.setdefault(name, []).append(_Patch(values, r_rows, src, None if pos is None else pos - t0, pos, head))
    hooks = [(name, _patch_hook(patches)) for name, patches in by_hook.items()]
    prefix_kv = None
    if t0 > 0:
        keys, vals = [], []
        for layer in range(n):
            k, v = base.acts[("k", layer)], base.acts[("v", layer)]
            if layer < start or base.samples == 1:  # never read (below the start), or one sample: a view
                keys.append(k[:1, :t0].expand(rows, -1, -1, -1))
                vals.append(v[:1, :t0].expand(rows, -1, -1, -1))
            else:
                keys.append(k[base_idx, :t0])
                vals.append(v[base_idx, :t0])
        prefix_kv = (keys, vals)
    logits = forward_from_layer(model, residual, start, hooks, [p - t0 for p in positions], prefix_kv)
    return score(logits)
