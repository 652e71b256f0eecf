"""MEMIT-CSK (Gupta et al. 2023, "Editing Common Sense in Transformers"): MEMIT with a
configurable edit token and a layer window chosen by causal tracing. Spec: methods.md B4, A6.

- ``edit_token`` (one of :data:`~interp_edit.editing.requests.EDIT_TOKENS`): the keys k* are
  read, and the target residual z is written, at the first or last token of the request's
  subject, verb or object span (the spans are given in the request: ``EditRequest.verb`` /
  ``.object``), or at the prompt's last token. Everything else is MEMIT's
  :func:`~interp_edit.editing.methods.memit.spread_update` (same least-squares update per layer).
  The KL ("essence") term follows the authors' code (anshitag/memit_csk ``compute_z``): its
  prompt ``"{} is a:"`` holds the *edited word* alone — the subject, verb or object span —
  and δ is added, and the KL read, at the edit token's first / last token of it
  (``essence_word="edit_span"``). ``essence_word="subject"`` (ours before, kept by the
  ``toyworld`` preset, whose published numbers were measured with it) fills it with the subject
  only, so that a verb- or object-token edit has no KL term. ``prompt_last`` has no span and
  no KL term (the code's ``"last"`` fact token is unsupported: it raises). Against the code on
  the exported toy model: ``benchmarks/reference_compare_memit_csk.py``, docs/fidelity.md.
- ``layers="auto"``: per-layer AIE at the edit token of the first ``trace_samples`` requests
  (:func:`~interp_edit.analysis.edit_token_aie.edit_token_aie`, hidden-state traces with and
  without the later MLPs severed, scored on each request's ``target_true`` or, without one, its
  clean top-1), then the ``window`` consecutive layers with the highest moving average
  (:func:`~interp_edit.analysis.layers.select_layer_window`). The paper traces the severed MLP
  path but leaves open which curve of it decides; ``trace_curve`` picks it, by default
  ``"mlp_mediated"`` (hidden − severed: the effect that needs the MLPs). Traced requests the
  model gets wrong are skipped (recorded in ``edit.info["aie"]["skipped"]``). A window whose
  mean effect is below ``min_window_effect`` is refused with an error (a flat curve, e.g. at a
  token the subject's corruption cannot reach, would make any window arbitrary).

``edit.info`` records the edit token, the layers edited and, for ``"auto"``, the AIE curves.
Requests that share one key at the edit token (the same tokens up to it, different new
targets: e.g. one subject's two relations edited at ``subject_last``) are warned about with
:class:`~interp_edit.errors.KeyCollisionWarning` — refused with ``strict=True`` — before any
tracing or statistics, and recorded in ``edit.info["key_collisions"]``, as for MEMIT.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import MappingProxyType

from torch import Tensor

from interp_edit.adapter import model_fingerprint
from interp_edit.analysis.edit_token_aie import CURVES, TokenFact, edit_token_aie
from interp_edit.analysis.layers import select_layer_window
from interp_edit.editing.closed_form import check_statistics_weight, memit_left_factor
from interp_edit.editing.config import check_layers, resolve
from interp_edit.editing.edit import Edit
from interp_edit.editing.edit_token_choice import check_key_collisions
from interp_edit.editing.methods.memit import MEMITConfig, memit_probe
from interp_edit.editing.requests import EDIT_TOKENS, TokenizedRequest, prepare_requests
from interp_edit.editing.spread import probe_keys, spread_update
from interp_edit.errors import EditConfigError, InvalidArgumentError
from interp_edit.statistics.keys import editor_statistics, provenance_records

AUTO = "auto"


@dataclass(frozen=True)
class MEMITCSKConfig(MEMITConfig):
    """MEMIT-CSK's settings: MEMIT's fields plus the edit token and the layer choice.

    Defaults: ``layers="auto"`` with ``window`` 5 (the paper's W); the GPT-2 XL preset is the
    paper's fixed layers 1–5 (MEMIT's λ, clamp and prefixes; the code's hparams/MEMIT_CSK/gpt2-xl.json),
    the KL prompt the code's ``"{} is a:"`` filled with the edited span. The paper gives no GPT-J window,
    so that preset traces (``"auto"``) with MEMIT's GPT-J λ. The toy-world preset uses a window
    of 2 on its 6 layers: on 100 statements edited at the verb's last token, W = 1 / 2 / 3 gave
    efficacy 0.97 / 1.00 / 1.00 and relapse 0.26 / 0.13 / 0.15 (``benchmarks/memit_csk_tokens.py``),
    with the essence semantics it was measured with (``essence_word="subject"``, MEMIT's ``"{} is a"``).

    >>> cfg = MEMITCSKConfig.for_model(model, edit_token="verb_last")
    >>> cfg.preset, cfg.layers, cfg.window        # layers traced per batch, 2 wide
    ('toyworld', 'auto', 2)
    """

    #: fixed increasing layers, or ``"auto"`` (``None`` means the same): choose by tracing
    layers: tuple[int, ...] | str | None = AUTO
    #: where keys are read and targets written; see :data:`~interp_edit.editing.requests.EDIT_TOKENS`
    edit_token: str = "subject_last"
    #: W, the width of the moving-average window over the AIE curve (``layers="auto"``)
    window: int = 5
    #: requests (the first ones) whose traces are averaged; the paper traces its dataset, this
    #: number is a choice the paper leaves open
    trace_samples: int = 20
    #: which AIE curve decides: one of ``mlp_mediated`` (default), ``severed``, ``hidden``
    trace_curve: str = "mlp_mediated"
    #: the subject-embedding noise, in multiples of the subject embeddings' std (ROME: 3)
    trace_noise: float = 3.0
    #: noise draws per trace (ROME: 10)
    trace_noise_samples: int = 10
    #: ``layers="auto"`` refuses a window whose mean effect is below this (the curve is flat
    #: where the subject's corruption does not reach the edit token, and any window is then
    #: arbitrary); a choice the paper leaves open
    min_window_effect: float = 0.01
    #: the code's KL prompt (``compute_z``'s ``kl_prompts``; MEMIT's is ``"{} is a"``: the same
    #: KL, which is read at the edited word, before the colon)
    essence_templates: tuple[str, ...] = ("{} is a:",)
    #: ``"edit_span"`` (the code's): the essence prompts hold the edited subject / verb / object
    #: span; ``"subject"``: the subject only (no KL term at a verb or object token)
    essence_word: str = "edit_span"

    PRESETS = MappingProxyType({
        "gpt2-xl": {"layers": (1, 2, 3, 4, 5)},
        "gpt-j-6B": {"mom2_update_weight": 15_000.0},
        # the essence semantics its published numbers were measured with
        "toyworld": {**MEMITConfig.PRESETS["toyworld"], "layers": AUTO, "window": 2,
                     "essence_templates": ("{} is a",), "essence_word": "subject"},
    })

    @classmethod
    def generic(cls, model):
        return {"layers": AUTO, "window": min(5, model.cfg.n_layers)}

    @property
    def auto_layers(self) -> bool:
        return self.layers is None or self.layers == AUTO

    def check_edit_token(self) -> None:
        if self.edit_token not in EDIT_TOKENS:
            raise EditConfigError(f"field 'edit_token': unknown edit token {self.edit_token!r}; known: {list(EDIT_TOKENS)}")

    def validate(self) -> None:
        if isinstance(self.layers, str) and self.layers != AUTO:
            raise EditConfigError(f"field 'layers' must be increasing layer indices or 'auto', got {self.layers!r}")
        if self.auto_layers:
            super(MEMITConfig, self).validate()  # MEMIT's own check is of explicit layers
            if self.mom2_update_weight < 0:
                raise EditConfigError(f"field 'mom2_update_weight' must be >= 0, got {self.mom2_update_weight}")
        else:
            super().validate()
        if self.trace_curve not in CURVES:
            raise EditConfigError(f"field 'trace_curve' must be one of {CURVES}, got {self.trace_curve!r}")
        for name in ("window", "trace_samples", "trace_noise_samples"):
            if getattr(self, name) < 1:
                raise EditConfigError(f"field {name!r} must be >= 1, got {getattr(self, name)}")
        if not self.trace_noise > 0:
            raise EditConfigError(f"field 'trace_noise' must be > 0, got {self.trace_noise}")


def trace_layer_window(model, treqs: list[TokenizedRequest], cfg: MEMITCSKConfig) -> tuple[tuple[int, ...], dict]:
    """The layer window from the AIE at the edit token of the first ``trace_samples`` requests,
    and the AIE curves (for ``edit.info``)."""
    sampled = treqs[: cfg.trace_samples]
    # an edit token before the subject cannot be traced (the noise starts at the subject): those requests are left out
    facts = [TokenFact(r.request.text, r.request.subject, r.request.target_true, r.edit_position)
             for r in sampled if r.edit_position >= r.subject_span[0]]
    if not facts:
        raise EditConfigError(f"field 'layers' is 'auto' but the edit token {cfg.edit_token!r} comes before the subject in "
                              f"every traced request {[r.index for r in sampled]}: nothing to trace; give the layers "
                              "explicitly")
    try:
        aie = edit_token_aie(model, facts, noise=cfg.trace_noise, samples=cfg.trace_noise_samples, seed=cfg.seed)
    except InvalidArgumentError as err:
        raise EditConfigError(f"field 'layers' is 'auto' but the edit token {cfg.edit_token!r} cannot be traced: {err}; "
                              "give the layers explicitly") from None
    curve = aie.curve(cfg.trace_curve)
    layers = select_layer_window(curve, cfg.window)
    effect = curve[list(layers)].mean().item()
    if not effect >= cfg.min_window_effect:
        raise EditConfigError(
            f"field 'layers' is 'auto' but the {cfg.trace_curve} AIE at the edit token {cfg.edit_token!r} is flat: the best "
            f"window {list(layers)} has mean effect {effect:.4f} < min_window_effect {cfg.min_window_effect} over "
            f"{aie.n_facts} traced requests; give the layers explicitly or trace more requests (trace_samples)")
    return layers, {**aie.as_dict(), "curve": cfg.trace_curve, "window": cfg.window, "window_effect": effect}


def fix_auto_layers(model, requests, config: dict) -> dict:
    """Experiment-level layer choice (the runner calls it once, before any edit): with
    ``layers="auto"``, trace the first ``trace_samples`` requests of the whole experiment and
    fix the window for every batch, as the paper traces its data set once. Tracing each batch
    alone would trace a single fact in batches of one, and one fact's curve may be flat; a flat
    curve over the experiment's requests is refused here, before any edit."""
    cfg = resolve(MEMITCSKConfig, model, None, dict(config))
    if not cfg.auto_layers:
        return dict(config)
    treqs = prepare_requests(model, requests, model_fingerprint(model), edit_token=cfg.edit_token)
    layers, _ = trace_layer_window(model, treqs, cfg)
    return {**config, "layers": tuple(layers)}


def memit_csk(model, requests, config: MEMITCSKConfig | None = None, *, corpus=None, cache_dir=None, stats=None,
              progress: bool = False, **overrides) -> Edit:
    """One MEMIT-CSK batch edit of all ``requests`` at ``edit_token`` (see the module
    docstring). The model is unchanged; apply the returned :class:`Edit` with ``edit.apply``.

    >>> req = EditRequest("{} was born in", "Talvik Corlo", "Gemmel", verb="was born in")
    >>> e = memit_csk(model, [req], edit_token="verb_last", layers=(1, 2))    # fixed layers
    >>> e.layers()
    [1, 2]
    """
    cfg = resolve(MEMITCSKConfig, model, config, overrides)
    if not cfg.auto_layers:
        check_layers(model, cfg.layers, "layers")
    fingerprint = model_fingerprint(model)
    treqs = prepare_requests(model, requests, fingerprint, edit_token=cfg.edit_token)
    check_statistics_weight(model, cfg.mom2_update_weight, len(treqs), "mlp_post", "mom2_update_weight", "MEMIT-CSK")
    collisions = check_key_collisions(model, treqs, cfg)  # before tracing and statistics
    start = time.perf_counter()
    aie_info = None
    layers = tuple(cfg.layers) if not cfg.auto_layers else None
    if layers is None:
        layers, aie_info = trace_layer_window(model, treqs, cfg)
    trace_seconds = time.perf_counter() - start
    start = time.perf_counter()
    statistics = editor_statistics(model, cfg, layers, corpus=corpus, cache_dir=cache_dir, progress=progress, stats=stats,
                                   probe_keys=lambda: probe_keys(model, treqs, cfg, layers),
                                   probe=memit_probe(cfg.mom2_update_weight))
    covs = {layer: s.moment for layer, s in statistics.items()}
    stats_seconds = time.perf_counter() - start

    def left_factor(layer: int, keys: Tensor) -> Tensor:
        return memit_left_factor(model, covs[layer], cfg.mom2_update_weight, keys, f"MEMIT-CSK layer {layer}")

    result = spread_update(model, treqs, cfg, layers, left_factor)
    info = {"edit_token": cfg.edit_token, "layers": list(layers), "edit_positions": [r.edit_position for r in treqs],
            "target_nll": result.target_nll,
            "seconds": {"trace": trace_seconds, "stats": stats_seconds, **result.timings},
            "stats": provenance_records(statistics), "key_collisions": collisions}
    if aie_info is not None:
        info["aie"] = aie_info
    return Edit("memit_csk", result.deltas, fingerprint, cfg.as_dict(), [r.request.as_dict() for r in treqs], info)
