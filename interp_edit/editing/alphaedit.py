"""AlphaEdit (Fang et al., ICLR 2025): MEMIT's update projected onto the null space of the
preserved knowledge, so that keys like the corpus' (and the keys of earlier edits in a
sequence) are not disturbed.

P = U Uᵀ over the eigenvectors of C (the key second moment) with eigenvalue < τ. Update, in
TransformerLens orientation: ``ΔW_out = (P (K_p K_pᵀ + K Kᵀ) + β I)⁻¹ P K R_l``, where K_p
holds the keys of every earlier edit made by the same :class:`AlphaEditor` (kept in the editor
object, never in module state). Sequential editing: create one editor, then call it batch by
batch, applying each returned :class:`Edit` before the next call.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch import Tensor

from interp_edit.editing.closed_form import check_layers, solve, w_out_name
from interp_edit.editing.config import resolve
from interp_edit.editing.edit import Edit
from interp_edit.editing.edit_token_choice import prepare_at_edit_tokens
from interp_edit.editing.memit import MEMITConfig, spread_update
from interp_edit.editing.stats import second_moments
from interp_edit.errors import EditConfigError, EditRequestError
from interp_edit.model import model_fingerprint


@dataclass(frozen=True)
class AlphaEditConfig(MEMITConfig):
    """AlphaEdit's settings; defaults are the published GPT-2 XL ones (MEMIT's layers and
    targets, β = 10, null-space threshold 2e-2)."""

    #: β, the ridge of the projected solve (the code's "L2")
    l2: float = 10.0
    #: eigenvalues of C below this span the null space
    nullspace_threshold: float = 2e-2

    PRESETS = MappingProxyType({
        "gpt2-xl": {},
        "gpt-j-6B": {"layers": (3, 4, 5, 6, 7, 8)},
        "toyworld": {**MEMITConfig.PRESETS["toyworld"], "l2": 1.0, "nullspace_threshold": 2e-2},
    })

    def validate(self) -> None:
        super().validate()
        if self.l2 <= 0 or self.nullspace_threshold <= 0:
            raise EditConfigError("fields 'l2' and 'nullspace_threshold' must be > 0")


class AlphaEditor:
    """An AlphaEdit session on one model: holds the null-space projections and the keys of
    the edits it has made (for sequential editing)."""

    def __init__(self, model, config: AlphaEditConfig | None = None, *, corpus=None, cache_dir=None,
                 progress: bool = False, **overrides) -> None:
        self.config = resolve(AlphaEditConfig, model, config, overrides)
        check_layers(model, self.config.layers, "layers")
        self.model_fingerprint = model_fingerprint(model)
        covs = second_moments(model, self.config.layers, corpus=corpus, n_samples=self.config.stats_samples,
                              batch_size=self.config.stats_batch_size, cache_dir=cache_dir, progress=progress)
        self.projections: dict[int, Tensor] = {}
        self.nullspace_dims: dict[int, int] = {}
        for layer, cov in covs.items():
            values, vectors = torch.linalg.eigh(cov.double())
            basis = vectors[:, values < self.config.nullspace_threshold]
            self.projections[layer] = (basis @ basis.T).to(model.cfg.device)
            self.nullspace_dims[layer] = int(basis.shape[1])
        #: K_p K_pᵀ of the edits made so far, per layer
        self.preserved = {layer: torch.zeros_like(p) for layer, p in self.projections.items()}
        self.n_edited = 0

    def __call__(self, model, requests) -> Edit:
        """Edit ``requests`` as one batch; remembers their keys for later batches."""
        if model_fingerprint(model) != self.model_fingerprint:
            raise EditRequestError("this AlphaEditor was created for another model; create one per model")
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
        return Edit("alphaedit", result.deltas, self.model_fingerprint, cfg.as_dict(),
                    [r.request.as_dict() for r in treqs],
                    {"target_nll": result.target_nll, "seconds": result.timings, "nullspace_dims": self.nullspace_dims,
                     "edits_before": self.n_edited - len(treqs), "edit_token": token_info})


def alphaedit(model, requests, config: AlphaEditConfig | None = None, *, corpus=None, cache_dir=None,
              progress: bool = False, **overrides) -> Edit:
    """One AlphaEdit batch with a fresh :class:`AlphaEditor` (no earlier edits to preserve)."""
    return AlphaEditor(model, config, corpus=corpus, cache_dir=cache_dir, progress=progress, **overrides)(model, requests)


__all__ = ["AlphaEditConfig", "AlphaEditor", "alphaedit", "w_out_name"]
