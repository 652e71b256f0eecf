"""AlphaEdit (Fang et al., ICLR 2025): MEMIT's update projected onto the null space of the
preserved knowledge, so that keys like the corpus' (and the keys of earlier edits in a
sequence) are not disturbed.

P = U Uᵀ over the eigenvectors of C (the key second moment) that ``nullspace_rule`` calls
null: ``"absolute"`` (the published rule and the authors' code: eigenvalue < τ = 2e-2, which
depends on the keys' scale), ``"relative"`` (eigenvalue < τ · the largest eigenvalue) or
``"energy"`` (the smallest eigenvalues outside the fewest largest ones that hold a fraction τ of
the trace). The null-space dimension per layer is in ``edit.info["nullspace_dims"]`` (with
``key_dim``); a dimension of 0 (the update is exactly zero) or of the full key width (nothing
is protected) is warned about. Update, in TransformerLens orientation:
``ΔW_out = (P (K_p K_pᵀ + K Kᵀ) + β I)⁻¹ P K R_l``, where K_p holds the keys of every earlier
edit made by the same :class:`AlphaEditor` (kept in the editor object, never in module state),
solved in float64 (the code: float32). C is decomposed in float64 (``nullspace_precision="float64"``,
a named deviation: the code takes the singular vectors of C in float32, ``"float32"`` here, whose
rounding moves the deltas by about 1e-4 of their size on the toy model; measured next to EasyEdit
by ``benchmarks/bench_vs_easyedit.py``). Sequential editing: create one editor, then call it
batch by batch, applying each returned :class:`Edit` before the next call (a call whose
previous edit is not applied, never or undone since, is refused: its keys are preserved already).

Compared with the authors' code (jianghoucheng/AlphaEdit): the targets and keys are MEMIT's
(``compute_z`` / ``compute_ks`` are MEMIT's with BOS handling); K_p K_pᵀ is accumulated from
the keys measured during the layer loop, which equal the code's keys re-measured after the
whole batch (a layer's keys do not depend on its own or higher layers' ``W_out``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from types import MappingProxyType

import torch
from jaxtyping import Float
from torch import Tensor

from interp_edit.adapter import model_fingerprint
from interp_edit.editing.closed_form import solve, w_out_name
from interp_edit.editing.config import check_layers, resolve
from interp_edit.editing.edit import Edit, check_previous_applied
from interp_edit.editing.edit_token_choice import check_requests_first, prepare_at_edit_tokens
from interp_edit.editing.methods.memit import MEMITConfig
from interp_edit.editing.spread import spread_update
from interp_edit.errors import EditConfigError, EditRequestError
from interp_edit.statistics.keys import editor_statistics, provenance_records
from interp_edit.statistics.store import cached_factor


@dataclass(frozen=True)
class AlphaEditConfig(MEMITConfig):
    """AlphaEdit's settings; defaults are the published GPT-2 XL ones (MEMIT's layers and
    targets, β = 10, null-space threshold 2e-2).

    >>> cfg = AlphaEditConfig.for_model(model, l2=5.0)
    >>> cfg.preset, cfg.l2
    ('toyworld', 5.0)
    """

    #: β, the ridge of the projected solve (the code's "L2")
    l2: float = 10.0
    #: how τ = ``nullspace_threshold`` picks the null space of C: "absolute" (eigenvalue < τ,
    #: the published rule), "relative" (eigenvalue < τ · largest eigenvalue; scale-free) or
    #: "energy" (τ in (0, 1]: outside the fewest largest eigenvalues that hold τ of the trace)
    nullspace_rule: str = "absolute"
    #: τ (see ``nullspace_rule``)
    nullspace_threshold: float = 2e-2
    #: the decomposition of C that P comes from: "float64" (eigenvectors in float64) or "float32"
    #: (the authors' code: singular vectors of C in float32)
    nullspace_precision: str = "float64"

    # Published settings, keyed by interp_edit.adapter.identity.known_model; every one uses the
    # null-space threshold 2e-2 (the class default).
    PRESETS = MappingProxyType({
        # jianghoucheng/AlphaEdit hparams/AlphaEdit/gpt2-xl.json: the class defaults
        "gpt2-xl": {},
        # jianghoucheng/AlphaEdit hparams/AlphaEdit/EleutherAI_gpt-j-6B.json
        "gpt-j-6B": {"layers": (3, 4, 5, 6, 7, 8), "steps": 25, "mom2_update_weight": 15_000.0},
        # jianghoucheng/AlphaEdit hparams/AlphaEdit/Llama3-8B.json
        "Meta-Llama-3-8B": {"layers": (4, 5, 6, 7, 8), "steps": 25, "lr": 0.1, "mom2_update_weight": 15_000.0},
        # zjunlp/EasyEdit hparams/AlphaEdit/qwen2.5-7b.yaml (run on Qwen2.5-7B-Instruct)
        "Qwen2.5-7B": {"layers": (4, 5, 6, 7, 8), "clamp_norm_factor": 4.0, "steps": 25, "lr": 0.5,
                       "weight_decay": 1e-3, "mom2_update_weight": 15_000.0, "l2": 1.0},
        # Llama-2-7B, Mistral-7B, Qwen3-8B: no published AlphaEdit settings in the reference
        # repositories -> generic rule
        "toyworld": {**MEMITConfig.PRESETS["toyworld"], "l2": 1.0, "nullspace_rule": "absolute",
                     "nullspace_threshold": 2e-2},
    })

    def validate(self) -> None:
        super().validate()
        if self.nullspace_rule not in NULLSPACE_RULES:
            raise EditConfigError(f"field 'nullspace_rule' must be one of {NULLSPACE_RULES}, got {self.nullspace_rule!r}")
        if self.nullspace_precision not in NULLSPACE_PRECISIONS:
            raise EditConfigError(f"field 'nullspace_precision' must be one of {NULLSPACE_PRECISIONS}, "
                                  f"got {self.nullspace_precision!r}")
        if self.l2 <= 0 or self.nullspace_threshold <= 0:
            raise EditConfigError("fields 'l2' and 'nullspace_threshold' must be > 0")
        if self.nullspace_rule == "energy" and self.nullspace_threshold > 1:
            raise EditConfigError(f"field 'nullspace_threshold' must be in (0, 1] with nullspace_rule='energy', "
                                  f"got {self.nullspace_threshold}")


NULLSPACE_RULES = ("absolute", "relative", "energy")
NULLSPACE_PRECISIONS = ("float64", "float32")


def null_space_basis(cov: Float[Tensor, "key key"], rule: str, threshold: float,
                     precision: str = "float64") -> Float[Tensor, "key null"]:
    """Orthonormal eigenvectors of the symmetric ``cov`` spanning its null space under ``rule``
    (see :class:`AlphaEditConfig`), returned in float64: from ``cov``'s eigendecomposition in
    float64, or (``precision="float32"``, the authors' code) from its singular vectors in float32."""
    if precision == "float32":
        vectors, values, _ = torch.linalg.svd(cov.float(), full_matrices=False)  # descending
        values, vectors = values.flip(0).double(), vectors.flip(1).double()  # C is symmetric PSD: its eigenpairs
    else:
        values, vectors = torch.linalg.eigh(cov.double())  # ascending
    if rule == "absolute":
        null = values < threshold
    elif rule == "relative":
        null = values < threshold * values[-1].clamp(min=0)
    else:
        # descending cumulative energy: keep the fewest largest eigenvalues reaching the fraction
        energy = values.clamp(min=0).flip(0).cumsum(0)
        kept = int((energy < threshold * energy[-1]).sum()) + 1
        null = torch.zeros_like(values, dtype=torch.bool)
        null[: len(values) - min(kept, len(values))] = True
    return vectors[:, null]


def _projector(cov: Tensor, rule: str, threshold: float, precision: str, device) -> tuple[Tensor, int]:
    """(P = U Uᵀ on ``device``, the null-space dimension) of ``cov`` (decomposed on ``device``)."""
    basis = null_space_basis(cov.to(device), rule, threshold, precision)
    return basis @ basis.T, int(basis.shape[1])


class AlphaEditor:
    """An AlphaEdit session on one model: holds the null-space projections and the keys of
    the edits it has made (for sequential editing).

    >>> editor = AlphaEditor(model)
    >>> first = editor(model, records[:1]).apply(model)
    >>> second = editor(model, records[1:2]).apply(model)   # preserves the first batch's keys
    >>> second.method
    'alphaedit'
    >>> _ = second.undo(model), first.undo(model)          # undo in reverse order
    """

    def __init__(self, model, config: AlphaEditConfig | None = None, *, corpus=None, cache_dir=None, stats=None,
                 progress: bool = False, **overrides) -> None:
        self.config = resolve(AlphaEditConfig, model, config, overrides)
        check_layers(model, self.config.layers, "layers")
        self.model_fingerprint = model_fingerprint(model)
        statistics = editor_statistics(model, self.config, self.config.layers, corpus=corpus, cache_dir=cache_dir,
                                       progress=progress, stats=stats, method="AlphaEdit")
        #: the provenance of the preserved-key statistics, recorded in each edit's info
        self.stats_provenance = provenance_records(statistics)
        covs = {layer: s.moment for layer, s in statistics.items()}
        self.projections: dict[int, Tensor] = {}
        self.nullspace_dims: dict[int, int] = {}
        self.key_dim = model.cfg.d_mlp
        rule, threshold, device = self.config.nullspace_rule, self.config.nullspace_threshold, model.cfg.device
        precision = self.config.nullspace_precision
        for layer, cov in covs.items():
            # P and its dimension, kept in the model's statistics store: one eigendecomposition per statistic
            self.projections[layer], self.nullspace_dims[layer] = cached_factor(
                model, cov, ("nullspace", rule, float(threshold), precision, str(device)),
                lambda cov=cov: _projector(cov, rule, threshold, precision, device))
        rule = f"nullspace_rule={self.config.nullspace_rule!r}, nullspace_threshold={self.config.nullspace_threshold}"
        empty = [layer for layer, dim in self.nullspace_dims.items() if dim == 0]
        full = [layer for layer, dim in self.nullspace_dims.items() if dim == len(self.projections[layer])]
        if empty:
            warnings.warn(f"AlphaEdit: the null space of layer(s) {empty} is empty under {rule}: their updates are "
                          "exactly zero; a scale-free rule ('relative' or 'energy') adapts to the keys' scale", stacklevel=2)
        if full:
            warnings.warn(f"AlphaEdit: every direction of layer(s) {full} is null under {rule} (dimension "
                          f"{self.key_dim}): no preserved key is protected", stacklevel=2)
        #: K_p K_pᵀ of the edits made so far, per layer
        self.preserved = {layer: torch.zeros_like(p) for layer, p in self.projections.items()}
        self.n_edited = 0
        #: the content hash of the last edit returned: the next call needs it applied (its keys are preserved)
        self.last_edit_hash: str | None = None

    def __call__(self, model, requests) -> Edit:
        """Edit ``requests`` as one batch; remembers their keys for later batches."""
        if model_fingerprint(model) != self.model_fingerprint:
            raise EditRequestError("this AlphaEditor was created for another model; create one per model")
        check_previous_applied(model, self.last_edit_hash, f"this AlphaEditor ({self.n_edited} edits preserved)")
        treqs, token_info = prepare_at_edit_tokens(model, requests, self.model_fingerprint, self.config, self.config.layers)
        cfg = self.config

        def left_factor(layer: int, keys: Tensor) -> Tensor:
            proj = self.projections[layer]
            eye = torch.eye(len(proj), dtype=proj.dtype, device=proj.device)
            system = proj @ (keys @ keys.T + self.preserved[layer]) + cfg.l2 * eye
            return solve(system, proj @ keys, f"AlphaEdit layer {layer}")

        result = spread_update(model, treqs, cfg, cfg.layers, left_factor)
        for layer, keys in result.keys.items():
            self.preserved[layer] += keys @ keys.T
        self.n_edited += len(treqs)
        edit = Edit("alphaedit", result.deltas, self.model_fingerprint, cfg.as_dict(),
                    [r.request.as_dict() for r in treqs],
                    {"target_nll": result.target_nll, "seconds": result.timings, "nullspace_dims": dict(self.nullspace_dims),
                     "key_dim": self.key_dim,
                     "edits_before": self.n_edited - len(treqs), "edit_token": token_info, "key_collisions": token_info["key_collisions"],
                     "stats": self.stats_provenance})
        self.last_edit_hash = edit.content_hash()
        return edit


def alphaedit(model, requests, config: AlphaEditConfig | None = None, *, corpus=None, cache_dir=None, stats=None,
              progress: bool = False, **overrides) -> Edit:
    """One AlphaEdit batch with a fresh :class:`AlphaEditor` (no earlier edits to preserve).

    >>> e = alphaedit(model, records[::4][:2])             # two people; or edit(model, ..., "alphaedit")
    >>> len(e.requests), e.changes_weights
    (2, True)
    """
    cfg = resolve(AlphaEditConfig, model, config, overrides)
    check_requests_first(model, requests, cfg)  # before the null space's statistics
    return AlphaEditor(model, cfg, corpus=corpus, cache_dir=cache_dir, stats=stats, progress=progress)(model, requests)


__all__ = ["NULLSPACE_PRECISIONS", "NULLSPACE_RULES", "AlphaEditConfig", "AlphaEditor", "alphaedit", "null_space_basis", "w_out_name"]
