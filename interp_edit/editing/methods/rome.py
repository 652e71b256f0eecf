"""ROME (Meng et al. 2022): a rank-one update of one layer's ``W_out`` that maps the
subject's key to the optimised MLP output v*, moving keys distributed like the corpus
statistics C as little as possible.

TransformerLens orientation (``W_out``: [d_mlp, d_model]), k̄ the key averaged over the bare
prompt and the context prefixes, k the key used in the residual:
``ΔW_out = (C⁻¹k̄) ⊗ (v* − kᵀW_out − b_out) / (kᵀC⁻¹k̄)``, so that
``kᵀ(W_out + ΔW_out) + b_out = v*`` exactly.

``variant`` (a named choice of the config):

- ``"original"`` — the authors' code (kmeng01/rome ``compute_u`` / ``compute_v``): k is the
  key of the *bare* edit prompt, so the bare prompt maps to v*, and the default target
  settings are the code's (``step_count="reference"``: 20 steps = 19 Adam updates,
  ``kl_direction="edited||original"``, 21 context templates = the bare prompt plus
  10 × 5 and 10 × 10 tokens sampled from BOS, always joined with ". ").
- ``"r-rome"`` — Gupta et al. 2024's fix of "disabling edits": k = k̄, the same averaged key in
  both places, so k̄ maps to v*.

The ``gpt2-xl`` / ``gpt-j-6B`` presets are the original; the ``toyworld`` preset is r-ROME with
the settings it was measured with (``step_count="updates"``, ``kl_direction="original||edited"``,
``prefix_join="punctuate"``). A model's own preset is the default (on the toy world its
r-ROME settings edit every tested fact; the reference settings were written for GPT-2 XL);
``preset="paper"`` runs the reference code's settings on any model, at the layer (and
statistics sample size) of the model's own preset. C⁻¹ is solved in float64 (the code inverts C in float32).
Several requests are edited one after another (each on the model with the earlier ones
applied), giving one ``Edit`` of rank = number of requests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import MappingProxyType

import torch

from interp_edit.adapter import get_parameter, model_fingerprint
from interp_edit.editing.closed_form import (
    add_low_rank,
    check_finite,
    moment_solve,
    scratch_weights,
    w_out_name,
)
from interp_edit.editing.config import SubjectTokenConfig, check_layers, resolve
from interp_edit.editing.edit import Edit, LowRankDelta
from interp_edit.editing.edit_token_choice import prepare_at_edit_tokens
from interp_edit.editing.targets import compute_keys, optimise_targets, prefixes_for
from interp_edit.statistics.auto import solved
from interp_edit.statistics.keys import editor_statistics, provenance_records


@dataclass(frozen=True)
class ROMEConfig(SubjectTokenConfig):
    """ROME's settings; defaults are the published GPT-2 XL ones as the authors' code runs them
    (``variant="original"``, layer 17, 20 steps = 19 updates, lr 0.5, weight decay 0.5,
    KL(edited ‖ original) × 0.0625, clamp 4, 21 context templates).

    >>> ROMEConfig.for_model(model).preset             # recognised: the tuned toy-world preset
    'toyworld'
    >>> paper = ROMEConfig.for_model(model, preset="paper")   # the reference settings, at this model's layer
    >>> paper.variant, paper.layer, paper.kl_direction
    ('original', 0, 'edited||original')
    >>> cfg = ROMEConfig.for_model(model, layer=1, steps=10)
    >>> cfg.layer, cfg.steps
    (1, 10)
    >>> e = rome(model, records[:1], cfg)
    """

    #: "original" (the bare prompt's key in v − Wk, the authors' code) or "r-rome" (the
    #: averaged key everywhere)
    variant: str = "original"
    #: the edited layer (its MLP's W_out)
    layer: int = 17
    #: added to C's diagonal, relative to its mean diagonal (0 = plain C⁻¹)
    cov_ridge: float = 0.0
    n_prefixes: int = 20
    kl_direction: str = "edited||original"
    step_count: str = "reference"
    prefix_lengths: tuple[tuple[int, int], ...] | None = ((5, 10), (10, 10))
    prefix_join: str = "reference"

    # Published settings, keyed by interp_edit.adapter.identity.known_model. EasyEdit's and
    # AlphaEdit's Llama / Qwen / Mistral runs set mom2_adjustment: false (no C⁻¹); this ROME
    # always whitens by C (cov_ridge is the only knob), so those presets differ from the
    # reference in that one respect.
    PAPER_MODEL_FIELDS = ("layer", "stats_samples")
    PRESETS = MappingProxyType({
        # kmeng01/rome hparams/ROME/gpt2-xl.json: the class defaults
        "gpt2-xl": {},
        # kmeng01/rome hparams/ROME/EleutherAI_gpt-j-6B.json
        "gpt-j-6B": {"layer": 5},
        # zjunlp/EasyEdit hparams/ROME/llama-7b.yaml (run on llama-2-7b-chat)
        "Llama-2-7b-hf": {"layer": 5, "steps": 25, "lr": 0.5, "weight_decay": 1e-3},
        # jianghoucheng/AlphaEdit hparams/ROME/Llama3-8B.json (= EasyEdit hparams/ROME/llama3-8b.yaml)
        "Meta-Llama-3-8B": {"layer": 5, "steps": 25, "lr": 0.5, "weight_decay": 1e-3},
        # zjunlp/EasyEdit hparams/ROME/qwen2.5-7b.yaml
        "Qwen2.5-7B": {"layer": 5, "steps": 25, "lr": 0.5, "weight_decay": 1e-3},
        # zjunlp/EasyEdit hparams/ROME/mistral-7b.yaml (Mistral-7B-v0.1)
        "Mistral-7B-v0.1": {"layer": 5, "steps": 25, "lr": 0.5, "weight_decay": 1e-3},
        # Qwen3-8B: no published ROME settings in the reference repositories -> generic rule
        "toyworld": {"variant": "r-rome", "layer": 0, "stats_samples": 4000, "n_prefixes": 5, "prefix_length": 8,
                     "prefix_lengths": None, "prefix_join": "punctuate", "steps": 15, "step_count": "updates",
                     "lr": 1.0, "clamp_norm_factor": 4.0, "kl_factor": 0.0625, "kl_direction": "original||edited"},
    })

    @classmethod
    def generic(cls, model):
        return {"layer": round(0.35 * (model.cfg.n_layers - 1))}

    def validate(self) -> None:
        super().validate()
        if self.variant not in ("original", "r-rome"):
            from interp_edit.errors import EditConfigError

            raise EditConfigError(f"field 'variant' must be 'original' or 'r-rome', got {self.variant!r}")
        if self.cov_ridge < 0:
            from interp_edit.errors import EditConfigError

            raise EditConfigError(f"field 'cov_ridge' must be >= 0, got {self.cov_ridge}")


def rome(model, requests, config: ROMEConfig | None = None, *, corpus=None, cache_dir=None, stats=None,
         progress: bool = False, **overrides) -> Edit:
    """ROME edit(s) of ``requests`` (EditRequests, CounterFact records or dicts). The model is
    unchanged; apply the returned :class:`Edit` with ``edit.apply(model)``. ``corpus`` /
    ``stats`` / ``cache_dir``: where the key statistics come from (see
    :mod:`interp_edit.statistics.collect`); ``edit.info["stats"]`` records their provenance.

    >>> e = rome(model, [EditRequest("{} was born in", "Talvik Corlo", "Gemmel")])
    >>> e
    Edit(method='rome', preset='toyworld', variant='r-rome', requests=1, deltas=[blocks.0.mlp.W_out (low_rank, rank 1, ‖Δ‖=...)])
    >>> with e.applied(model):
    ...     print(model.tokenizer.decode(last_token_logits(model, ["Talvik Corlo was born in"]).argmax(-1)))
     Gemmel
    """
    cfg = resolve(ROMEConfig, model, config, overrides)
    check_layers(model, [cfg.layer], "layer")
    fingerprint = model_fingerprint(model)
    treqs, token_info = prepare_at_edit_tokens(model, requests, fingerprint, cfg, [cfg.layer])
    timings = {}
    start = time.perf_counter()

    def ridged(cov):
        if cfg.cov_ridge:
            cov = cov + cfg.cov_ridge * cov.diagonal().mean() * torch.eye(len(cov), dtype=cov.dtype, device=cov.device)
        return cov

    def probe(layer, cov, keys):  # what "auto" watches: C⁻¹k̄ of every request
        return solved(ridged(cov), keys)

    probe.label = "C⁻¹k̄" + (f" (ridge {cfg.cov_ridge})" if cfg.cov_ridge else "")

    statistics = editor_statistics(
        model, cfg, [cfg.layer], corpus=corpus, cache_dir=cache_dir, progress=progress, stats=stats, probe=probe,
        probe_keys=lambda: {cfg.layer: compute_keys(model, treqs, cfg.layer, prefixes_for(model, cfg))})
    moment = statistics[cfg.layer].moment
    timings["stats"] = time.perf_counter() - start
    name = w_out_name(cfg.layer)
    prefixes = prefixes_for(model, cfg)
    lefts, rights, losses, steps = [], [], [], []
    timings.update(keys=0.0, targets=0.0, update=0.0)
    with scratch_weights(model, [name]):
        for request in treqs:
            start = time.perf_counter()
            key = compute_keys(model, [request], cfg.layer, prefixes)[0].double()
            timings["keys"] += time.perf_counter() - start
            start = time.perf_counter()
            target = optimise_targets(model, [request], cfg.layer, prefixes, cfg.target_config(), initial_site="mlp_out")
            timings["targets"] += time.perf_counter() - start
            start = time.perf_counter()
            check_finite("v*", target.target, [request])
            weight = get_parameter(model, name).data.double()
            bias = get_parameter(model, f"blocks.{cfg.layer}.mlp.b_out").data.double()
            # r-ROME: the averaged key everywhere; original: the bare prompt's key in v − Wk and kᵀC⁻¹k̄
            used = key if cfg.variant == "r-rome" else compute_keys(model, [request], cfg.layer, ("",))[0].double()
            right = target.target[0].double() - (used @ weight + bias)
            # through the LU factor of C the statistics store keeps across edits
            cinv_key = moment_solve(model, moment, key, f"ROME C⁻¹k (layer {cfg.layer})", ridge=cfg.cov_ridge)
            left = cinv_key / (used @ cinv_key)
            check_finite("update", left[None], [request])
            delta = LowRankDelta(left[:, None].float(), right[None].float())
            add_low_rank(model, name, delta)  # later requests see this one
            lefts.append(delta.left)
            rights.append(delta.right)
            losses.append(float(target.nll[0]))
            steps.append(target.steps[0])
            timings["update"] += time.perf_counter() - start
    delta = LowRankDelta(torch.cat(lefts, 1).cpu(), torch.cat(rights, 0).cpu())
    return Edit("rome", {name: delta}, fingerprint, cfg.as_dict(), [r.request.as_dict() for r in treqs],
                {"target_nll": losses, "steps": steps, "prefixes": list(prefixes), "seconds": timings, "edit_token": token_info, "key_collisions": token_info["key_collisions"],
                 "stats": provenance_records(statistics)})
