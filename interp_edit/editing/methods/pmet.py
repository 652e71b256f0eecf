"""PMET (Li, Li, Song, Yang, Ma & Yu 2024, AAAI, "PMET: Precise Model Editing in a Transformer"):
MEMIT's multi-layer batch edit, with targets taken precisely at the FFN output instead of the
residual stream.

**Targets.** At the last edited layer L, two vectors per request are optimised *jointly*: δ_a
added to the attention output (MHSA, what ``W_O`` writes) and δ_m added to the FFN output
(what ``W_out`` writes), at the edit token of every rewriting and essence prompt, minimising

    ``ν · NLL(target) + κ · KL(edited ‖ original) + β · (‖δ_m‖ / ‖h_m‖² + ‖δ_a‖ / ‖h_a‖²)``

(ν = ``nll_loss_factor``, κ = ``kl_factor``, β = ``weight_decay``, h_m / h_a: the FFN / attention
output at the bare prompt's edit token), each δ clamped to ``clamp_norm_factor`` · ‖h‖ after
every Adam step. Optimising the attention part too lets the FFN target carry only what the FFN
should; only the FFN target z_m = h_m + δ_m is then written (the published settings), the
attention target z_a = h_a + δ_a is discarded unless ``update_attention``.

**Update.** For each layer l of ``layers`` (the i-th, lowest first), on the model with the lower
layers already updated: keys K ([d_mlp, n], the FFN hidden activations at the edit token, averaged
over the context templates as MEMIT's ``compute_ks``), the remaining residual *at the FFN output
of L*, ``R_l = (Z_m − H_m^L) / √(layers left)``, and, in TransformerLens orientation,

    ``ΔW_out^l = (λC + K Kᵀ)⁻¹ K R_l``       (C: the key second moment, λ = ``mom2_update_weight``)

With ``update_attention`` the same write goes into ``W_O`` ([n_heads·d_head, d_model]) before
the FFN of each layer, with keys = the concatenated head outputs z, statistics of z, residual
``(Z_a − H_a^L) / √(layers left)`` at the attention output of L, and λ_a =
``attn_mom2_update_weight`` (the code uses one λ for both: None).

This follows the authors' code (xpq-tech/PMET ``edit/pmet/pmet_main.py``, ``compute_zs.py``,
``compute_ks.py``; EasyEdit's ``easyeditor/models/pmet`` is the same algorithm): the joint target
optimisation with its norm-over-squared-norm decay; the step schedule (``v_num_grad_steps`` loss
evaluations, the last one without an update); its stopping rule (a request stops once its loss is
below 0.05; once the target token is the argmax at every target position of every rewriting
prompt, its NLL weight drops to 0.1·ν for the next step and, if κ·KL ≤ 0.01, it stops; named
``argmax_rule`` / ``argmax_nll_scale`` / ``argmax_kl_stop``); the √ in the residual split
(``residual_split="sqrt"``; ``"memit"`` divides by the count, as MEMIT); the residual measured at
the *module output* of L on the bare prompt; the keys re-read after each write. Which weights are
written: the code writes every module of ``rewrite_module_tmps``; both published hparams files
(GPT-J, GPT-NeoX) and EasyEdit's list only the FFN, so ``update_attention`` is False by default.
Where this differs from the code: ``(λC + KKᵀ)⁻¹K`` is solved in float64 (the code inverts
``KKᵀ + λC`` explicitly); requests are optimised together in one batch (per request the same
optimisation: the losses are summed and Adam is elementwise); the argmax test compares the
gathered log-probs with the maximum per position (the code compares two means of exponentials,
equal exactly when every row is); under ``update_attention`` on a GPT-2-style model the update
is written in ``W_O``'s orientation (the code's ``upd_matrix_match_shape`` cannot tell a square
``Conv1D`` weight's orientation and writes it transposed).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch
from jaxtyping import Float
from torch import Tensor

from interp_edit.adapter import (
    frozen_parameters,
    fused_kernels,
    model_fingerprint,
    sublayer_output_hooks,
    unembed,
)
from interp_edit.editing.closed_form import (
    add_low_rank,
    check_finite,
    check_statistics_weight,
    memit_left_factor,
    raw_values_at_edit_tokens,
    scratch_weights,
    w_o_name,
    w_out_name,
)
from interp_edit.editing.config import check_layers, resolve
from interp_edit.editing.edit import Edit, LowRankDelta
from interp_edit.editing.edit_token_choice import prepare_at_edit_tokens
from interp_edit.editing.methods.memit import MEMITConfig, memit_probe
from interp_edit.editing.optimiser import adam
from interp_edit.editing.requests import TokenizedRequest
from interp_edit.editing.spread import probe_keys
from interp_edit.editing.targets import (
    _build_rows,
    compute_keys,
    kl_rows,
    max_updates,
    prefix_reuse,
    prefixes_for,
    unedited_run,
)
from interp_edit.errors import EditConfigError, EditOptimizationError
from interp_edit.statistics.keys import editor_statistics, provenance_records

#: the two outputs whose targets are optimised jointly, in computation order
KINDS = ("attn", "mlp")
RESIDUAL_SPLITS = ("sqrt", "memit")
#: what each kind's keys and statistics are read at
KEY_SITES = {"attn": "z", "mlp": "mlp_post"}


@dataclass(frozen=True)
class PMETConfig(MEMITConfig):
    """PMET's settings; defaults are the authors' GPT-J ones (``edit/hparams/PMET/EleutherAI_gpt-j-6B.json``:
    layers 3–8, λ 6,000, clamp 0.75, 30 steps = 29 updates at lr 0.2, weight decay 0.5,
    KL(edited ‖ original) × 1, NLL × 1, FFN written only), with MEMIT's context templates and key
    average (the code's ``compute_ks``).

    >>> cfg = PMETConfig.for_model(model)
    >>> cfg.preset, cfg.layers, cfg.update_attention
    ('toyworld', (0, 1), False)
    >>> PMETConfig.for_model(model, residual_split="memit").residual_split
    'memit'
    """

    layers: tuple[int, ...] = (3, 4, 5, 6, 7, 8)
    #: λ of the FFN writes (the code's ``mom2_update_weight``)
    mom2_update_weight: float = 6_000.0
    steps: int = 30
    lr: float = 0.2
    kl_factor: float = 1.0
    #: ν, the weight of the target NLL (the code's ``nll_loss_factor``)
    nll_loss_factor: float = 1.0
    #: the code's rule: a request whose target is the argmax at every target position gets NLL
    #: weight ``argmax_nll_scale`` · ν for the next step, and stops when κ·KL ≤ ``argmax_kl_stop``
    argmax_rule: bool = True
    argmax_nll_scale: float = 0.1
    argmax_kl_stop: float = 0.01
    #: also write the attention target into ``W_O`` of every layer (the code does when
    #: ``rewrite_module_tmps`` lists the attention; no published setting does)
    update_attention: bool = False
    #: λ_a of the ``W_O`` writes, on the statistics of z; None = ``mom2_update_weight`` (the code's)
    attn_mom2_update_weight: float | None = None
    #: "sqrt": R_l = remaining / √(layers left) (the code's); "memit": / (layers left)
    residual_split: str = "sqrt"

    # ``preset="paper"``: the reference settings at this model's own layers and sample size
    PAPER_MODEL_FIELDS = ("layers", "stats_samples")
    # Published settings, keyed by interp_edit.adapter.identity.known_model (or the model name)
    PRESETS = MappingProxyType({
        # xpq-tech/PMET edit/hparams/PMET/EleutherAI_gpt-j-6B.json: the class defaults
        # (EasyEdit's gpt-j-6B.yaml has λ 15,000)
        "gpt-j-6B": {},
        # xpq-tech/PMET edit/hparams/PMET/EleutherAI_gpt-neox-20b.json
        "gpt-neox-20b": {"layers": (6, 7, 8, 9, 10), "clamp_norm_factor": 0.8, "lr": 0.5, "kl_factor": 0.8,
                         "mom2_update_weight": 15_000.0, "stats_samples": 50_000},
        # zjunlp/EasyEdit hparams/PMET/llama-7b.yaml (run on llama-2-7b)
        "Llama-2-7b-hf": {"layers": (4, 5, 6, 7, 8), "clamp_norm_factor": 1.0, "steps": 20, "lr": 0.5,
                          "kl_factor": 0.0625, "mom2_update_weight": 15_000.0},
        # measured on the toy world (tests/test_pmet.py): MEMIT's toy-world targets and layers 0-1,
        # 25 steps, clamp 8 (the toy FFN outputs are small: ‖h_m‖ ≈ 5 at layer 1, ‖h_a‖ ≈ 20)
        "toyworld": {**MEMITConfig.PRESETS["toyworld"], "kl_factor": 0.0625, "steps": 25, "clamp_norm_factor": 8.0},
    })

    @classmethod
    def generic(cls, model):
        last = round(0.3 * (model.cfg.n_layers - 1))
        return {"layers": tuple(range(max(0, last - 5), last + 1))}

    def validate(self) -> None:
        super().validate()
        if not self.nll_loss_factor > 0:
            raise EditConfigError(f"field 'nll_loss_factor' must be > 0, got {self.nll_loss_factor}")
        for name in ("argmax_nll_scale", "argmax_kl_stop"):
            if getattr(self, name) < 0:
                raise EditConfigError(f"field {name!r} must be >= 0, got {getattr(self, name)}")
        if self.attn_mom2_update_weight is not None and not self.attn_mom2_update_weight >= 0:
            raise EditConfigError(f"field 'attn_mom2_update_weight' must be >= 0 or None, got {self.attn_mom2_update_weight}")
        if self.residual_split not in RESIDUAL_SPLITS:
            raise EditConfigError(f"field 'residual_split' must be one of {RESIDUAL_SPLITS}, got {self.residual_split!r}")
        if self.update_attention and self.stats_samples == "auto":
            raise EditConfigError("field 'stats_samples': 'auto' watches the FFN keys only; with update_attention=True "
                                  "give an integer")

    def attn_weight(self) -> float:
        return self.mom2_update_weight if self.attn_mom2_update_weight is None else self.attn_mom2_update_weight


@dataclass
class PMETTargets:
    """Per request, per kind ("attn", "mlp"): the output at the bare prompt's edit token before
    the edit (h) and the optimised δ; the final NLL and the Adam updates each request took."""

    initial: dict[str, Float[Tensor, "request d_model"]]
    delta: dict[str, Float[Tensor, "request d_model"]]
    nll: Float[Tensor, " request"]
    steps: list[int]

    def target(self, kind: str) -> Float[Tensor, "request d_model"]:
        return self.initial[kind] + self.delta[kind]


def optimise_pmet_targets(model, requests: Sequence[TokenizedRequest], layer: int, prefixes: Sequence[str],
                          cfg: PMETConfig, *, reuse_prefix: bool | None = None) -> PMETTargets:
    """δ_a and δ_m at the attention and FFN outputs of ``layer``, optimised jointly (module
    docstring), in chunks of ``cfg.chunk_size`` requests. ``reuse_prefix``: as
    :func:`~interp_edit.editing.targets.optimise_targets`' (the positions before each row's
    edit token are not recomputed at every step; default: where the backend can)."""
    reuse = prefix_reuse(model, reuse_prefix)
    parts = [_optimise_chunk(model, requests[s : s + cfg.chunk_size], layer, prefixes, cfg, reuse)
             for s in range(0, len(requests), cfg.chunk_size)]
    return PMETTargets({k: torch.cat([p.initial[k] for p in parts]) for k in KINDS},
                       {k: torch.cat([p.delta[k] for p in parts]) for k in KINDS},
                       torch.cat([p.nll for p in parts]), [s for p in parts for s in p.steps])


def _optimise_chunk(model, requests, layer: int, prefixes, cfg: PMETConfig, reuse: bool) -> PMETTargets:
    device = model.cfg.device
    rows = _build_rows(model, requests, prefixes, cfg.essence_templates)
    n_req = len(requests)
    edit_pos, owner, rewrite = rows.edit_pos.to(device), rows.owner.to(device), rows.is_rewrite.to(device)
    raw: dict[str, Tensor] = {}

    def keeper(kind):
        def keep(out, hook):
            raw[kind] = out.detach()
        return keep

    with torch.no_grad():
        read = [h for kind in KINDS for h in sublayer_output_hooks(model, kind, layer, keeper(kind))]
        run = unedited_run(model, rows, layer, [], read, reuse)
        bare = rows.bare_row.to(device)
        initial = {kind: raw[kind][bare, edit_pos[bare]].float() for kind in KINDS}
    init_norm = {kind: initial[kind].norm(dim=-1).clamp(min=1e-8) for kind in KINDS}
    delta = {kind: torch.zeros(n_req, model.cfg.d_model, device=device, requires_grad=True) for kind in KINDS}
    optimiser = adam([delta["mlp"], delta["attn"]], cfg.lr, cfg.kernels)
    nll_factor = torch.full((n_req,), cfg.nll_loss_factor, device=device)
    done = torch.zeros(n_req, dtype=torch.bool, device=device)
    updates = max_updates(cfg)
    steps = [updates] * n_req
    target_ids, mask = rows.target_ids.to(device), rows.target_mask.to(device)
    n_rewrite = torch.bincount(owner[rewrite], minlength=n_req).float().clamp(min=1)
    n_essence = torch.bincount(owner[~rewrite], minlength=n_req).float().clamp(min=1)
    nll = torch.zeros(n_req, device=device)
    with frozen_parameters(model), torch.enable_grad(), fused_kernels(model, cfg.kernels == "fused"):
        for step in range(updates + 1):
            sel = (~done[owner]).nonzero().flatten()
            sel_owner, sel_pos, local = owner[sel], run.edit_col[sel], torch.arange(len(sel), device=device)

            def adder(kind, sel_owner=sel_owner, sel_pos=sel_pos, local=local):
                def add(out, hook):
                    return out.index_put((local, sel_pos), delta[kind][sel_owner].to(out.dtype), accumulate=True)
                return add

            hooks = [h for kind in KINDS for h in sublayer_output_hooks(model, kind, layer, adder(kind))]
            final = run.final_residual(model, sel, hooks)
            is_rw = rewrite[sel]
            rw = local[is_rw]
            logp = torch.log_softmax(unembed(model, model.ln_final(final[rw[:, None], run.target_pos[sel][is_rw]])).float(), -1)
            token_logp = logp.gather(-1, target_ids[sel][is_rw][..., None])[..., 0]
            row_mask = mask[sel][is_rw]
            row_nll = -(token_logp * row_mask).sum(-1) / row_mask.sum(-1).clamp(min=1)
            step_nll = torch.zeros(n_req, device=device).index_add(0, sel_owner[is_rw], row_nll) / n_rewrite
            # rows whose target is not the argmax at some target position
            missed = ((token_logp.detach() < logp.detach().max(-1).values) & (row_mask > 0)).any(-1).float()
            not_top = torch.zeros(n_req, device=device).index_add(0, sel_owner[is_rw], missed) > 0
            es = local[~is_rw]
            current = torch.log_softmax(unembed(model, model.ln_final(final[es, sel_pos[~is_rw]])).float(), -1)
            row_kl = kl_rows(run.reference[sel[~is_rw]], current, cfg.kl_direction) if len(es) else current.new_zeros(0)
            kl = cfg.kl_factor * torch.zeros(n_req, device=device).index_add(0, sel_owner[~is_rw], row_kl) / n_essence
            decay = cfg.weight_decay * sum(delta[k].norm(dim=-1) / init_norm[k] ** 2 for k in KINDS)
            step_loss = nll_factor * step_nll + kl + decay
            active = ~done
            nll = torch.where(active, step_nll.detach(), nll)
            if (active & ~torch.isfinite(step_loss.detach())).any():
                which = requests[int((active & ~torch.isfinite(step_loss.detach())).nonzero()[0])]
                raise EditOptimizationError(
                    f"request {which.index} ({which.request.text!r} -> {which.request.target_new!r}): the PMET target "
                    f"optimisation at layer {layer} produced a non-finite loss at step {step}; the model is unchanged")
            stop = (step_loss.detach() < cfg.early_stop_loss) & active
            if cfg.argmax_rule:  # the code: after the loss check, before the backward
                top = active & ~stop & ~not_top
                nll_factor = torch.where(top, cfg.argmax_nll_scale * cfg.nll_loss_factor, cfg.nll_loss_factor)
                stop |= top & (kl.detach() <= cfg.argmax_kl_stop)
            for i in stop.nonzero().flatten().tolist():
                steps[i] = step
            done |= stop
            if done.all() or step == updates:
                break
            kept = {k: delta[k].detach().clone() for k in KINDS}
            optimiser.zero_grad()
            step_loss[~done].sum().backward()
            optimiser.step()
            with torch.no_grad():
                for k in KINDS:
                    delta[k].copy_(torch.where(done[:, None], kept[k], delta[k]))
                    limit = (cfg.clamp_norm_factor * init_norm[k])[:, None]
                    norms = delta[k].norm(dim=-1, keepdim=True)
                    delta[k].mul_(torch.where(norms > limit, limit / norms.clamp(min=1e-12), torch.ones_like(norms)))
    return PMETTargets(initial, {k: delta[k].detach().clone() for k in KINDS}, nll.detach(), steps)


def pmet(model, requests, config: PMETConfig | None = None, *, corpus=None, cache_dir=None, stats=None,
         progress: bool = False, **overrides) -> Edit:
    """One PMET batch edit of all ``requests`` (EditRequests, CounterFact records or dicts):
    ``W_out`` deltas at every layer of ``layers`` (and ``W_O`` deltas with ``update_attention``).
    The model is unchanged; apply the returned :class:`Edit` with ``edit.apply(model)``.
    ``corpus`` / ``stats`` / ``cache_dir``: where the key statistics come from (see
    :mod:`interp_edit.statistics.collect`; with ``update_attention`` ``stats`` may be a
    ``{"mlp_post": ..., "z": ...}`` dict).

    >>> people = records[::4][:3]                       # three people (one key each)
    >>> e = pmet(model, people)                         # or edit(model, people, "pmet")
    >>> e.layers(), {row["rank"] for row in e.summary()}
    ([0, 1], {3})
    """
    cfg = resolve(PMETConfig, model, config, overrides)
    check_layers(model, cfg.layers, "layers")
    fingerprint = model_fingerprint(model)
    treqs, token_info = prepare_at_edit_tokens(model, requests, fingerprint, cfg, cfg.layers)
    kinds = KINDS if cfg.update_attention else ("mlp",)
    weight = {"mlp": cfg.mom2_update_weight, "attn": cfg.attn_weight()}
    for kind in kinds:
        check_statistics_weight(model, weight[kind], len(treqs), KEY_SITES[kind],
                                "attn_mom2_update_weight" if kind == "attn" and cfg.attn_mom2_update_weight is not None
                                else "mom2_update_weight", "PMET")
    start = time.perf_counter()
    covs, provenance = {}, []
    for kind in kinds:
        site = KEY_SITES[kind]
        given = stats.get(site) if isinstance(stats, dict) and set(stats) <= set(KEY_SITES.values()) else stats
        auto = dict(probe_keys=lambda: probe_keys(model, treqs, cfg, cfg.layers),
                    probe=memit_probe(cfg.mom2_update_weight)) if kind == "mlp" else {}
        full = editor_statistics(model, cfg, cfg.layers, site=site, corpus=corpus, cache_dir=cache_dir, progress=progress,
                                 stats=given, method="PMET", **auto)
        covs[kind] = {layer: s.moment for layer, s in full.items()}
        provenance += provenance_records(full)
    seconds = {"stats": time.perf_counter() - start}

    start = time.perf_counter()
    prefixes = prefixes_for(model, cfg)
    z_layer = cfg.layers[-1]
    targets = optimise_pmet_targets(model, treqs, z_layer, prefixes, cfg)
    for kind in kinds:
        check_finite(f"{kind} target", targets.target(kind), treqs)
    seconds["targets"] = time.perf_counter() - start
    seconds.update(keys=0.0, update=0.0)
    deltas: dict[str, LowRankDelta] = {}
    names = {"attn": w_o_name, "mlp": w_out_name}
    with scratch_weights(model, [names[kind](layer) for layer in cfg.layers for kind in kinds]):
        for i, layer in enumerate(cfg.layers):
            left_count = len(cfg.layers) - i
            share = math.sqrt(left_count) if cfg.residual_split == "sqrt" else float(left_count)
            for kind in kinds:  # the attention of a layer before its FFN
                start = time.perf_counter()
                keys = compute_keys(model, treqs, layer, prefixes, site=KEY_SITES[kind], average=cfg.key_average)
                keys = keys.double().T  # [key, n]
                current = raw_values_at_edit_tokens(model, treqs, z_layer, kind)  # [n, d_model], float64
                seconds["keys"] += time.perf_counter() - start
                start = time.perf_counter()
                residual = pmet_residual(targets.target(kind).double().to(current.device), current, share)
                left = memit_left_factor(model, covs[kind][layer], weight[kind], keys, f"PMET {kind} layer {layer}")
                check_finite(f"{kind} update of layer {layer}", left.T, treqs)
                delta = LowRankDelta(left.float().cpu(), residual.float().cpu())
                add_low_rank(model, names[kind](layer), delta)
                deltas[names[kind](layer)] = delta
                seconds["update"] += time.perf_counter() - start
    info = {
        "target_nll": targets.nll.tolist(), "target_steps": targets.steps,
        "target_delta_norms": {k: targets.delta[k].norm(dim=-1).tolist() for k in KINDS},
        "prefixes": list(prefixes), "seconds": seconds, "edit_token": token_info,
        "key_collisions": token_info["key_collisions"], "stats": provenance,
    }
    return Edit("pmet", deltas, fingerprint, cfg.as_dict(), [r.request.as_dict() for r in treqs], info)


def pmet_residual(target: Float[Tensor, "request d_model"], current: Float[Tensor, "request d_model"],
                  share: float) -> Float[Tensor, "request d_model"]:
    """The share of the remaining change at the target layer's module output that one layer
    writes: ``(target − current) / share`` (share = √(layers left) by default).

    >>> pmet_residual(torch.ones(1, 2), torch.zeros(1, 2), 4.0)
    tensor([[0.2500, 0.2500]])
    """
    return (target - current) / share


__all__ = ["PMETConfig", "PMETTargets", "optimise_pmet_targets", "pmet", "pmet_residual"]
