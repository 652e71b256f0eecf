"""The fine-tuning baseline (FT-L in the ROME paper): Adam on one layer's ``W_out`` to
maximise the new target's teacher-forced log-likelihood on the edit prompts, with every
entry of the change clamped to ±``norm_constraint`` (an L∞ constraint) after each step.

The change is optimised as a separate tensor added through a hook (the weights are never
touched while optimising), and returned as sparse rows of ``W_out`` (the rows that changed).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch

from interp_edit.adapter import (
    KERNELS,
    frozen_parameters,
    fused_kernels,
    get_parameter,
    hook_name,
    model_fingerprint,
    residual_at_layer,
    residual_from_layer,
    shared_first_norm,
    sublayer_output_hooks,
    unembed,
)
from interp_edit.batching import pad_right
from interp_edit.editing.closed_form import w_out_name
from interp_edit.editing.config import check_layers, preset_config, resolve
from interp_edit.editing.edit import Edit, SparseRowDelta
from interp_edit.editing.optimiser import adam
from interp_edit.editing.requests import prepare_requests
from interp_edit.errors import EditConfigError, EditOptimizationError
from interp_edit.precision import OPTIMISE_DTYPE
from interp_edit.validation import check_fields


@dataclass(frozen=True)
class FTConfig:
    """FT-L's settings; defaults are the ROME authors' GPT-2 XL ones (``hparams/FT/gpt2-xl_constr.json``:
    layer 0, 25 steps, lr 5e-4, L∞ 5e-4; ``ft_main`` stops once the loss is below 1e-2). Not
    an ``EditorConfig``: FT-L optimises no target vector, samples no context prefixes and reads
    no key statistics, so it has none of their fields (as KN, FiNE and GRACE).

    >>> cfg = FTConfig.for_model(model, steps=5)        # the toy-world preset, one override
    >>> cfg.preset, cfg.steps, cfg.lr
    ('toyworld', 5, 0.01)
    >>> e = finetune(model, records[:1], cfg)
    """

    layer: int = 0
    steps: int = 25
    lr: float = 5e-4
    #: every entry of ΔW_out stays within ±norm_constraint
    norm_constraint: float = 5e-4
    #: stop before a step once the loss is below this (the authors' ``ft_main``: 1e-2)
    early_stop_loss: float = 1e-2
    #: ``"fused"``: PyTorch's fused norm, attention and GELU kernels in the loop
    #: (:func:`~interp_edit.adapter.fused_kernels`); ``"tl"``: TransformerLens' modules
    kernels: str = "fused"
    #: the preset these settings started from (see :func:`interp_edit.editing.config.preset_config`)
    preset: str | None = None

    PRESETS: ClassVar[MappingProxyType] = MappingProxyType({
        "gpt2-xl": {},
        # the toy world's settings; its figures in docs/editing.md were measured with early_stop_loss 0.05
        "toyworld": {"layer": 0, "steps": 25, "lr": 1e-2, "norm_constraint": 2e-2, "early_stop_loss": 0.05},
    })

    @classmethod
    def generic(cls, model) -> dict[str, Any]:
        return {}

    def __post_init__(self) -> None:
        check_fields(self, EditConfigError, in_place=True)

    @classmethod
    def for_model(cls, model, **overrides: Any) -> FTConfig:
        """The preset for ``model`` with ``overrides``."""
        return preset_config(cls, model, overrides)

    def check_model(self, model) -> None:
        """Nothing beyond the layer (checked by every editor's rule): FT-L samples no context prefixes."""

    def validate(self) -> None:
        if self.kernels not in KERNELS:
            raise EditConfigError(f"field 'kernels' must be one of {KERNELS}, got {self.kernels!r}")
        if self.steps < 1:
            raise EditConfigError(f"field 'steps' must be >= 1, got {self.steps}")
        for name in ("lr", "norm_constraint"):
            if not getattr(self, name) > 0:
                raise EditConfigError(f"field {name!r} must be > 0, got {getattr(self, name)}")
        if self.early_stop_loss < 0:
            raise EditConfigError(f"field 'early_stop_loss' must be >= 0, got {self.early_stop_loss}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def finetune(model, requests, config: FTConfig | None = None, *, corpus=None, cache_dir=None, progress: bool = False,
             **overrides) -> Edit:
    """Fine-tune ``W_out`` of one layer on the requests (all at once). The model is unchanged;
    apply the returned :class:`Edit`. (``corpus`` and ``cache_dir`` are accepted for a uniform
    call and unused: fine-tuning needs no key statistics.)

    >>> e = finetune(model, records[:2], steps=5)           # or edit(model, ..., "ft")
    >>> row = e.summary(model)[0]
    >>> row["parameter"], row["kind"]
    ('blocks.0.mlp.W_out', 'sparse_rows')
    """
    cfg = resolve(FTConfig, model, config, overrides)
    check_layers(model, [cfg.layer], "layer")
    fingerprint = model_fingerprint(model)
    treqs = prepare_requests(model, requests, fingerprint)
    device = model.cfg.device
    seqs = [list(r.prompt_ids) + list(r.target_ids[:-1]) for r in treqs]
    tokens, _ = pad_right(seqs, model.tokenizer.pad_token_id or 0)
    tokens = tokens.to(device)
    width = max(len(r.target_ids) for r in treqs)
    pos = torch.tensor([[len(r.prompt_ids) - 1 + min(i, len(r.target_ids) - 1) for i in range(width)] for r in treqs], device=device)
    ids = torch.tensor([[r.target_ids[min(i, len(r.target_ids) - 1)] for i in range(width)] for r in treqs], device=device)
    mask = torch.tensor([[float(i < len(r.target_ids)) for i in range(width)] for r in treqs], device=device)
    rows = torch.arange(len(treqs), device=device)[:, None]
    start = residual_at_layer(model, tokens, cfg.layer)
    weight = get_parameter(model, w_out_name(cfg.layer))
    # optimised in float32 (Adam on a half-precision tensor underflows): see interp_edit.precision
    change = torch.zeros(weight.shape, dtype=OPTIMISE_DTYPE, device=weight.device, requires_grad=True)
    optimiser = adam([change], cfg.lr, cfg.kernels)
    store = {}

    def keep(act, hook):
        store["post"] = act

    def add(out, hook):
        return out + store.pop("post") @ change.to(out.dtype)

    hooks = [(hook_name("mlp_post", cfg.layer), keep), *sublayer_output_hooks(model, "mlp", cfg.layer, add)]
    losses = []
    with frozen_parameters(model), torch.enable_grad(), fused_kernels(model, cfg.kernels == "fused"), shared_first_norm(model):
        for step in range(cfg.steps):
            final = residual_from_layer(model, start, cfg.layer, hooks)
            logp = torch.log_softmax(unembed(model, model.ln_final(final[rows, pos])).float(), -1)
            nll = -(logp.gather(-1, ids[..., None])[..., 0] * mask).sum(-1) / mask.sum(-1)
            loss = nll.mean()
            value = loss.item()  # the step's one host synchronisation
            if not math.isfinite(value):
                raise EditOptimizationError(f"fine-tuning loss became non-finite at step {step}; the model is unchanged")
            losses.append(value)
            if value < cfg.early_stop_loss:
                break
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                change.clamp_(-cfg.norm_constraint, cfg.norm_constraint)
    change = change.detach().cpu()
    changed = (change != 0).any(-1).nonzero().flatten()
    # every row changed (the rule when a step was taken): the optimised tensor itself, no copy
    delta = SparseRowDelta(changed, change if len(changed) == len(change) else change[changed].clone())
    return Edit("ft", {w_out_name(cfg.layer): delta}, fingerprint, cfg.as_dict(), [r.request.as_dict() for r in treqs],
                {"loss": losses})
