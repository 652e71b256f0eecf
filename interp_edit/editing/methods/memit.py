"""MEMIT (Meng et al. 2023): many edits at once, spread over a range of layers R.

A target residual z_i (at the last layer of R) is optimised per request; then, for each layer
l of R in increasing order, the remaining residual is measured on the model with the lower
layers already updated and the share ``R_l = (Z − H_l) / (layers left)`` is written into
``W_out`` of l by least squares, in TransformerLens orientation
``ΔW_out = (λC + K Kᵀ)⁻¹ K R_l`` (K: [d_mlp, n] averaged keys, C: the key second moment,
λ = ``mom2_update_weight``), solved in float64. One ``Edit`` of rank ≤ n per layer.

The defaults follow the authors' code (kmeng01/memit ``memit_main`` / ``compute_z`` /
``compute_ks``): 20 steps = 19 Adam updates (``step_count="reference"``), KL(edited ‖ original),
context templates from the start words "The", "Therefore", "Because", "I", "You" (one text of
10 tokens each, joined with ". "), and k* = the mean of the bare prompt's key and the prefixed
keys' mean (``key_average="by_type"``). The ``toyworld`` preset keeps the settings it was
measured with (flat key average, 3 prefixes from BOS, ``step_count="updates"``,
KL(original ‖ edited)).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import MappingProxyType

from torch import Tensor

from interp_edit.adapter import model_fingerprint
from interp_edit.editing.closed_form import check_statistics_weight, memit_left_factor
from interp_edit.editing.config import SubjectTokenConfig, check_layers, resolve
from interp_edit.editing.edit import Edit
from interp_edit.editing.edit_token_choice import prepare_at_edit_tokens
from interp_edit.editing.spread import probe_keys, spread_update
from interp_edit.errors import EditConfigError
from interp_edit.statistics.auto import solved
from interp_edit.statistics.keys import editor_statistics, provenance_records


@dataclass(frozen=True)
class MEMITConfig(SubjectTokenConfig):
    """MEMIT's settings; defaults are the published GPT-2 XL ones as the authors' code runs
    them (layers 13–17, λ 20,000, clamp 0.75, 20 steps = 19 updates, KL(edited ‖ original),
    5 context templates from start words, keys averaged by template type).

    >>> cfg = MEMITConfig.for_model(model, layers=(1, 2))
    >>> cfg.preset, cfg.layers
    ('toyworld', (1, 2))
    """

    layers: tuple[int, ...] = (13, 14, 15, 16, 17)
    #: λ, the weight of the preserved keys' second moment
    mom2_update_weight: float = 20_000.0
    clamp_norm_factor: float = 0.75
    n_prefixes: int = 5
    kl_direction: str = "edited||original"
    step_count: str = "reference"
    prefix_starts: tuple[str, ...] = ("The", "Therefore", "Because", "I", "You")
    prefix_join: str = "reference"
    key_average: str = "by_type"

    # Published settings, keyed by interp_edit.adapter.identity.known_model.
    PRESETS = MappingProxyType({
        # kmeng01/memit hparams/MEMIT/gpt2-xl.json: the class defaults
        "gpt2-xl": {},
        # kmeng01/memit hparams/MEMIT/EleutherAI_gpt-j-6B.json
        "gpt-j-6B": {"layers": (3, 4, 5, 6, 7, 8), "steps": 25, "mom2_update_weight": 15_000.0},
        # zjunlp/EasyEdit hparams/MEMIT/llama-7b.yaml (run on llama-2-7b)
        "Llama-2-7b-hf": {"layers": (4, 5, 6, 7, 8), "clamp_norm_factor": 4.0, "steps": 25, "lr": 0.5,
                          "weight_decay": 1e-3, "mom2_update_weight": 15_000.0},
        # jianghoucheng/AlphaEdit hparams/MEMIT/Llama3-8B.json (the AlphaEdit paper's MEMIT baseline)
        "Meta-Llama-3-8B": {"layers": (4, 5, 6, 7, 8), "steps": 25, "lr": 0.1, "mom2_update_weight": 15_000.0},
        # zjunlp/EasyEdit hparams/MEMIT/qwen2.5-7b.yaml
        "Qwen2.5-7B": {"layers": (4, 5, 6, 7, 8), "clamp_norm_factor": 4.0, "steps": 25, "lr": 0.5,
                       "weight_decay": 1e-3, "mom2_update_weight": 15_000.0},
        # zjunlp/EasyEdit hparams/MEMIT/mistral-7b.yaml (Mistral-7B-v0.1)
        "Mistral-7B-v0.1": {"layers": (4, 5, 6, 7, 8), "clamp_norm_factor": 4.0, "steps": 25, "lr": 0.5,
                            "weight_decay": 1e-3, "mom2_update_weight": 15_000.0},
        # Qwen3-8B: no published MEMIT settings in the reference repositories -> generic rule
        "toyworld": {"layers": (0, 1), "stats_samples": 4000, "mom2_update_weight": 100.0, "n_prefixes": 3,
                     "prefix_length": 8, "prefix_starts": (), "prefix_join": "punctuate", "key_average": "flat",
                     "steps": 15, "step_count": "updates", "lr": 1.0, "clamp_norm_factor": 4.0,
                     "kl_direction": "original||edited"},
    })

    @classmethod
    def generic(cls, model):
        last = round(0.35 * (model.cfg.n_layers - 1))
        return {"layers": tuple(range(max(0, last - 4), last + 1))}

    def validate(self) -> None:
        super().validate()
        if not self.layers or list(self.layers) != sorted(set(self.layers)):
            raise EditConfigError(f"field 'layers' must be increasing and non-empty, got {self.layers}")
        if self.mom2_update_weight < 0:
            raise EditConfigError(f"field 'mom2_update_weight' must be >= 0, got {self.mom2_update_weight}")


def memit_probe(weight: float):
    """What ``stats_samples="auto"`` watches for MEMIT: (λC + KKᵀ)⁻¹K."""
    def probe(layer, cov, keys):
        return solved(weight * cov + keys @ keys.T, keys)

    probe.label = f"({weight}·C + KKᵀ)⁻¹K"
    return probe


def memit(model, requests, config: MEMITConfig | None = None, *, corpus=None, cache_dir=None, stats=None,
          progress: bool = False, **overrides) -> Edit:
    """One MEMIT batch edit of all ``requests``. The model is unchanged; apply the returned
    :class:`Edit` with ``edit.apply(model)``.

    >>> people = records[::4][:3]                       # three people (one key each)
    >>> e = memit(model, people)                        # their facts in one batch
    >>> e.layers() == list(MEMITConfig.for_model(model).layers)
    True
    >>> {row["rank"] for row in e.summary()}            # rank <= number of requests
    {3}
    >>> with e.applied(model):
    ...     top = last_token_logits(model, [r.prompt.format(r.subject) for r in people]).argmax(-1)
    """
    cfg = resolve(MEMITConfig, model, config, overrides)
    check_layers(model, cfg.layers, "layers")
    fingerprint = model_fingerprint(model)
    treqs, token_info = prepare_at_edit_tokens(model, requests, fingerprint, cfg, cfg.layers)
    check_statistics_weight(model, cfg.mom2_update_weight, len(treqs), "mlp_post", "mom2_update_weight", "MEMIT")
    start = time.perf_counter()
    statistics = editor_statistics(model, cfg, cfg.layers, corpus=corpus, cache_dir=cache_dir, progress=progress, stats=stats,
                                   probe_keys=lambda: probe_keys(model, treqs, cfg, cfg.layers),
                                   probe=memit_probe(cfg.mom2_update_weight))
    covs = {layer: s.moment for layer, s in statistics.items()}
    stats_seconds = time.perf_counter() - start

    def left_factor(layer: int, keys: Tensor) -> Tensor:
        return memit_left_factor(model, covs[layer], cfg.mom2_update_weight, keys, f"MEMIT layer {layer}")

    result = spread_update(model, treqs, cfg, cfg.layers, left_factor)
    return Edit("memit", result.deltas, fingerprint, cfg.as_dict(), [r.request.as_dict() for r in treqs],
                {"target_nll": result.target_nll, "seconds": {"stats": stats_seconds, **result.timings},
                 "edit_token": token_info, "key_collisions": token_info["key_collisions"], "stats": provenance_records(statistics)})
