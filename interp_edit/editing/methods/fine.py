"""FiNE (Pan et al., ICLR 2025; methods.md B5): neuron-level knowledge editing.

For each request, on the prompt teacher-forced with the new target:

1. **Locate.** At every position that predicts a target token, each FFN neuron ``(l, i)`` of the
   editable layers ``0 … n_layers − 1 − n_frozen`` is scored by its direct contribution to the
   token the *unedited* model predicts there, ``t`` (its argmax):
   ``c = m_i · (W_out^l[i] · W_U[:, t])`` with ``m`` = ``mlp.hook_post`` at that position. The
   ``top_k`` neurons per target token (over all editable layers together) are kept. One cached
   forward, one matrix product per layer — no loop over neurons.
2. **Edit.** A vector ``δ_s ∈ R^{d_model}`` per slot is learned: as in the authors' code, one
   slot per (target token, rank), so a neuron in the top-k of several target tokens gets several
   δ, each its own Adam parameter and its own part of the norm (``neuron_slots="union"``: one δ per
   distinct neuron). A neuron ``n``'s output becomes ``m_n · (W_out[n] + Σ_s δ_s)`` at every
   position, which is exactly a change of row ``n`` of ``W_out`` by the sum. Loss (per step)::

       max_j NLL_j + α · KL(original ‖ edited) + β · max_j (−log(1 − p_rep,j)) + γ · ‖δ‖

   - ``NLL_j``: −log p of target token ``j``, teacher-forced, averaged over the bare prompt and
     the context prefixes (``n_prefixes``; ROME-style generated prefixes, the paper leaves their
     number open); the max over target tokens is FiNE's.
   - KL: of the next-token distributions at the *prompt positions before the target* (every
     position whose next token is still part of the prompt, context prefixes included), original
     ‖ edited, averaged over those positions.
   - repetition penalty: the largest ``−log(1 − p_rep,j)`` over the target tokens j, ``p_rep,j``
     = p(target token j) at the position right after the full target (the model should not
     repeat the target), averaged over the rows (the authors' code; ``repetition="first"``: the
     first target token only).
   - ``‖δ‖``: the Frobenius norm of all the request's δ together.

   Adam (lr ``lr``: the paper leaves it open, the authors' code uses 1e-3 on GPT-J and
   Llama-3-8B, 5e-3 on Llama-2-7B), at most ``steps`` steps, stopping once
   ``max_j NLL_j < −log(early_stop_prob)`` (FiNE: every target token at p > 0.9). Finally
   ``W_out[n] += Σ_s δ_s``. δ is float32 (the precision rule); the code learns it in bfloat16
   (``delta_dtype="bfloat16"``).

Several requests in one call are edited **one after another** (like :mod:`rome`; the code's
editor with ``keep_original_weight=False``): each request locates its neurons on the model with
the earlier requests' δ already written (inside a scratch transaction), so a later request sees
the earlier ones. ``sequential=False`` is the code's ``apply_fine_to_model`` given several
requests (its ``batch_edit``): each request located and optimised on the model as given, the δ
summed. ``benchmarks/reference_compare_fine.py`` runs the authors' code next to this one
(docs/fidelity.md). The neuron score reads ``model.W_U``: the code's ``lm_head`` on an
unprocessed model; TransformerLens' default processing of a Hugging Face model folds the final
norm's gain into it and centres it, which changes the scores: on such a model the call warns
(:func:`~interp_edit.adapter.unembedding_processing`, also in ``edit.info["unembedding_processing"]``);
load with ``fold_ln=False, center_unembed=False`` to follow the code. The returned :class:`Edit` holds one
:class:`SparseRowDelta` per touched layer (``"blocks.{l}.mlp.W_out"``) whose rows are distinct:
a neuron chosen by several requests carries the sum of their δ. The model is unchanged by the
call, also when it fails. The KL reference of a request is the model with the earlier requests
written (its own δ is what the KL measures).

On the toy world (``benchmarks/fine_vs_rome.py``, 100 independent edits, toy preset) FiNE keeps
the edited subject's other relations (relation locality 1.00; ROME 0.45) with 5 neurons per
edit, but its edits spread over the *relation*: the neurons it selects at the last prompt token
fire for every subject asked that relation, so neighbourhood prompts fall to 0.35 (ROME 0.99)
and 25% of unrelated subjects asked the same relation change their answer (ROME 0.3%).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp_edit.adapter import (
    frozen_parameters,
    get_parameter,
    hook_name,
    layer_weight,
    model_fingerprint,
    residual_from_layer,
    run_with_cache,
    sublayer_output_hooks,
    unembed,
    unembedding_processing,
)
from interp_edit.batching import pad_right
from interp_edit.editing.closed_form import w_out_name
from interp_edit.editing.config import preset_config, resolve
from interp_edit.editing.edit import Edit, SparseRowDelta
from interp_edit.editing.requests import TokenizedRequest, prepare_requests, tokenize_in_context
from interp_edit.editing.targets import check_prefix_room, context_prefixes
from interp_edit.errors import EditConfigError, EditOptimizationError
from interp_edit.precision import add_delta_

NEURON_SLOTS = ("per_token", "union")
_PROCESSED_UNEMBEDDING = (
    "FiNE scores neurons with model.W_U, which on this model is processed ({}) unlike the raw "
    "lm_head the authors' code reads, so it may select other neurons than the code does; load the "
    "model with fold_ln=False, center_unembed=False (or backend='bridge') to follow the code"
)
REPETITION = ("max", "first")
DELTA_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class FiNEConfig:
    """FiNE's settings. Defaults are the paper's and the authors' code's (top 5 neurons per target
    token, the last 3 layers frozen, α = 1, β = 10, γ = 0.1, ≤ 50 Adam steps, stop at p > 0.9 for
    every target token, lr 1e-3, one δ per (token, rank) slot, the repetition penalty's max over
    the target tokens); ``n_prefixes`` and ``prefix_length`` are choices here (the code uses
    none), and float32 δ (the code: bfloat16, ``delta_dtype``). The ``"toyworld"`` preset was chosen by measurement
    (``benchmarks/fine_vs_rome.py``).

    >>> cfg = FiNEConfig.for_model(model, top_k=3)
    >>> cfg.preset, cfg.top_k, cfg.n_frozen
    ('toyworld', 3, 1)
    """

    #: neurons kept per target token (over all editable layers together)
    top_k: int = 5
    #: the last ``n_frozen`` layers are never edited (neurons of layers 0 … n_layers−1−n_frozen)
    n_frozen: int = 3
    #: weight α of KL(original ‖ edited) on the prompt positions before the target
    kl_weight: float = 1.0
    #: weight β of the repetition penalty −log(1 − p(first target token after the target))
    repetition_weight: float = 10.0
    #: weight γ of ‖δ‖ (Frobenius norm over the request's neurons)
    norm_weight: float = 0.1
    #: Adam steps at most
    steps: int = 50
    #: Adam learning rate of δ (the paper leaves it open; the authors' code: 1e-3 for GPT-J and
    #: Llama-3-8B, 5e-3 for Llama-2-7B)
    lr: float = 1e-3
    #: stop once every target token has probability above this (max NLL < −log p)
    early_stop_prob: float = 0.9
    #: context prefixes besides the bare prompt in the NLL / KL / repetition terms [choice]
    n_prefixes: int = 0
    #: tokens per generated context prefix [choice]
    prefix_length: int = 10
    #: ``"per_token"`` (the authors' code): one δ per (target token, rank) slot, so a neuron in the
    #: top-k of several target tokens gets several δ (each in the norm term, their sum written);
    #: ``"union"``: one δ per distinct neuron
    neuron_slots: str = "per_token"
    #: ``"max"`` (the authors' code): the largest −log(1 − p(target token j)) over every target
    #: token j at the position after the full target; ``"first"``: the first target token only
    repetition: str = "max"
    #: several requests in one call: ``True`` one after another (each located and optimised with
    #: the earlier requests' δ written, as the code's editor with ``keep_original_weight=False``);
    #: ``False`` as the code's ``apply_fine_to_model`` given several requests (its ``batch_edit``):
    #: every request located and optimised on the model as given, the δ summed
    sequential: bool = True
    #: dtype of the learned δ: ``"float32"`` or ``"bfloat16"`` (the authors' code: δ, its Adam
    #: moments and the neuron activations multiplied by it in bfloat16)
    delta_dtype: str = "float32"
    seed: int = 0
    #: the preset these settings started from (see :func:`interp_edit.editing.config.preset_config`)
    preset: str | None = None

    #: model name -> field values; fields a preset leaves out keep the class defaults
    PRESETS: ClassVar[MappingProxyType] = MappingProxyType({
        "gpt2-xl": {},
        # the authors' hparams/FINE/*.yaml
        "gpt-j-6B": {"lr": 1e-3},
        "Llama-2-7b-hf": {"lr": 5e-3},
        "Meta-Llama-3-8B": {"lr": 1e-3},
        # measured with benchmarks/fine_vs_rome.py --sweep (30 edits): efficacy 1.00 for every
        # n_frozen 0-5; neighbourhood falls the more layers are frozen (lr 0.02: 0.41 / 0.38 /
        # 0.35 / 0.31 for 0-3 frozen), so 1 frozen layer — the paper's 3 of 28 (GPT-J) is ~10%
        # of the depth, 1 of 6 here. lr 0.02 rather than 0.1: the early stop is checked between
        # steps, so a large step overshoots p = 0.9 and the edit spreads further (neighbourhood
        # 0.17 at lr 0.1, 0.34 at 0.02, 2 frozen) at ~3x the steps.
        "toyworld": {"n_frozen": 1, "lr": 0.02},
    })

    @classmethod
    def generic(cls, model) -> dict[str, Any]:
        """A model without a preset: the paper's settings, with fewer frozen layers when the
        model has fewer than 6 (at least one layer stays editable)."""
        return {"n_frozen": min(3, max(0, model.cfg.n_layers // 2))}

    def __post_init__(self) -> None:
        from interp_edit.validation import check_fields

        check_fields(self, EditConfigError, in_place=True)  # types (and finite floats) of every field

    @classmethod
    def for_model(cls, model, **overrides: Any) -> FiNEConfig:
        """The preset for ``model`` (by its TransformerLens ``model_name``) with ``overrides``."""
        return preset_config(cls, model, overrides)

    def validate(self) -> None:
        for name in ("top_k", "steps", "prefix_length"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise EditConfigError(f"field {name!r} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("n_frozen", "n_prefixes"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise EditConfigError(f"field {name!r} must be an integer >= 0, got {getattr(self, name)!r}")
        for name in ("kl_weight", "repetition_weight", "norm_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise EditConfigError(f"field {name!r} must be a finite number >= 0, got {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise EditConfigError(f"field 'lr' must be a finite number > 0, got {self.lr!r}")
        for name, allowed in (("neuron_slots", NEURON_SLOTS), ("repetition", REPETITION), ("delta_dtype", DELTA_DTYPES)):
            if getattr(self, name) not in allowed:
                raise EditConfigError(f"field {name!r} must be one of {sorted(allowed)}, got {getattr(self, name)!r}")
        if not 0 < self.early_stop_prob < 1:
            raise EditConfigError(f"field 'early_stop_prob' must lie in (0, 1), got {self.early_stop_prob!r}")

    def check_model(self, model) -> None:
        """The fields that depend on the model (checked by :func:`~interp_edit.editing.config.resolve`
        before any compute): at least one editable layer, no more neurons per token than the
        editable layers hold, and context prefixes that fit the model's context."""
        check_prefix_room(model, n=self.n_prefixes, length=self.prefix_length)
        n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
        if self.n_frozen >= n_layers:
            raise EditConfigError(
                f"field 'n_frozen': {self.n_frozen} frozen layers leave no editable layer in this "
                f"{n_layers}-layer model (at most {n_layers - 1})"
            )
        pool = (n_layers - self.n_frozen) * d_mlp
        if self.top_k > pool:
            raise EditConfigError(
                f"field 'top_k': {self.top_k} neurons per target token requested, but the editable layers "
                f"0..{n_layers - 1 - self.n_frozen} hold only {pool} neurons ({n_layers - self.n_frozen} x d_mlp {d_mlp})"
            )

    def editable_layers(self, model) -> list[int]:
        return list(range(model.cfg.n_layers - self.n_frozen))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class NeuronSelection:
    """The neurons FiNE picked for one request: per target token the top-k (layer, neuron) and
    their scores, and the distinct union."""

    #: [target token, k] layer and neuron index of each token's top-k, and the score c
    layers: Int[Tensor, "token k"]
    neurons: Int[Tensor, "token k"]
    scores: Float[Tensor, "token k"]
    #: the token the unedited model predicted at each target position (t in c's formula)
    predicted: Int[Tensor, " token"]

    def union(self) -> list[tuple[int, int]]:
        """Distinct (layer, neuron) pairs, sorted."""
        return sorted(set(self.slots()))

    def slots(self) -> list[tuple[int, int]]:
        """Every (layer, neuron) of every token's top-k, token by token (a neuron chosen for
        several tokens appears once per token): the authors' code's δ slots."""
        return list(zip(self.layers.flatten().tolist(), self.neurons.flatten().tolist(), strict=True))


@torch.no_grad()
def select_neurons(model, request: TokenizedRequest, top_k: int, layers: list[int]) -> NeuronSelection:
    """FiNE's localisation for one request on the model as it is now (see the module
    docstring): c = m_i · (W_out[i] · W_U[:, t]) at each position predicting a target token, t
    the model's argmax there; the top ``top_k`` over all neurons of ``layers`` per token."""
    ids = list(request.prompt_ids) + list(request.target_ids[:-1])
    tokens = torch.tensor([ids], device=model.cfg.device)
    positions = torch.arange(len(request.target_ids), device=model.cfg.device) + len(request.prompt_ids) - 1
    names = [hook_name("mlp_post", layer) for layer in layers]
    cache: dict[str, Tensor] = {}

    def save(act, hook, name):  # by the name asked for (on the bridge hook.name is the bridge's own)
        cache[name] = act.detach()

    with model.hooks(fwd_hooks=[(n, functools.partial(save, name=n)) for n in names]):
        logits = model(tokens, return_type="logits")
    predicted = logits[0, positions].argmax(-1)  # [token]
    unembed_cols = model.W_U.detach()[:, predicted]  # [d_model, token]
    scores = torch.stack([
        cache[name][0, positions].float() * (layer_weight(model, "W_out", layer).float() @ unembed_cols.float()).T
        for name, layer in zip(names, layers, strict=True)
    ], dim=1)  # [token, layer, d_mlp]
    flat = scores.flatten(1)
    top = flat.topk(top_k, dim=-1)
    d_mlp = scores.shape[-1]
    layer_index = torch.tensor(layers, device=flat.device)[top.indices // d_mlp]
    return NeuronSelection(layer_index.cpu(), (top.indices % d_mlp).cpu(), top.values.cpu(), predicted.cpu())


@dataclass
class _Rows:
    tokens: Tensor  # [row, pos] prompt (under each context prefix) + full target
    target_pos: Tensor  # [row, token] positions predicting the target tokens
    repeat_pos: Tensor  # [row] the position after the full target
    kl_mask: Tensor  # [row, pos] prompt positions before the target


def _rows(model, request: TokenizedRequest, prefixes) -> _Rows:
    target = list(request.target_ids)
    seqs, lengths = [], []
    for ids, _ in tokenize_in_context(model, request, prefixes):
        seqs.append(list(ids) + target)
        lengths.append(len(ids))
    tokens, _ = pad_right(seqs, model.tokenizer.pad_token_id or 0)
    if tokens.shape[1] > model.cfg.n_ctx:
        raise EditConfigError(
            f"request {request.index}: with a context prefix the prompt and its target are {tokens.shape[1]} tokens, "
            f"more than the model's context {model.cfg.n_ctx}; lower 'prefix_length' or 'n_prefixes'"
        )
    lengths_t = torch.tensor(lengths)
    target_pos = lengths_t[:, None] - 1 + torch.arange(len(target))[None]
    kl_mask = torch.arange(tokens.shape[1])[None] < (lengths_t - 1)[:, None]
    return _Rows(tokens, target_pos, lengths_t - 1 + len(target), kl_mask)


@dataclass
class _Fit:
    delta: Float[Tensor, "neuron d_model"]
    max_nll: float
    loss: float
    steps: int


def _optimise(model, request: TokenizedRequest, neurons: list[tuple[int, int]], prefixes, cfg: FiNEConfig) -> _Fit:
    """Learn δ for the request's neurons (batched over rows and neurons; see the module docstring)."""
    device = model.cfg.device
    rows = _rows(model, request, prefixes)
    tokens = rows.tokens.to(device)
    n_rows = tokens.shape[0]
    row_index = torch.arange(n_rows, device=device)
    target_ids = torch.tensor(request.target_ids, device=device)
    target_pos, repeat_pos = rows.target_pos.to(device), rows.repeat_pos.to(device)
    kl_mask = rows.kl_mask.to(device)
    layers = sorted({layer for layer, _ in neurons})
    slots = {layer: torch.tensor([s for s, (lay, _) in enumerate(neurons) if lay == layer], device=device) for layer in layers}
    rows_of = {layer: torch.tensor([n for lay, n in neurons if lay == layer], device=device) for layer in layers}
    start_layer = layers[0]
    with torch.no_grad():
        # one forward gives both the unedited distribution and the residual entering start_layer
        start_name = hook_name("resid_pre", start_layer)
        logits, cache = run_with_cache(model, tokens, [start_name])
        start = cache[start_name]
        reference = torch.log_softmax(logits.float(), -1)  # [row, pos, vocab]
    delta = torch.zeros(len(neurons), model.cfg.d_model, dtype=DELTA_DTYPES[cfg.delta_dtype], device=device, requires_grad=True)
    optimiser = torch.optim.Adam([delta], lr=cfg.lr)
    stop_nll = -math.log(cfg.early_stop_prob)
    store: dict[int, Tensor] = {}

    def keep(act, hook, layer):
        store[layer] = act
        return None

    def add(out, hook, layer):
        post = store.pop(layer)
        return out + (post[..., rows_of[layer]].to(delta.dtype) @ delta[slots[layer]]).to(out.dtype)

    hooks = []
    for layer in layers:
        hooks += [(hook_name("mlp_post", layer), lambda act, hook, layer=layer: keep(act, hook, layer)),
                  *sublayer_output_hooks(model, "mlp", layer, lambda out, hook, layer=layer: add(out, hook, layer))]
    max_nll = loss_value = float("nan")
    steps = cfg.steps
    with frozen_parameters(model), torch.enable_grad():
        for step in range(cfg.steps + 1):
            final = residual_from_layer(model, start, start_layer, hooks)
            logp = torch.log_softmax(unembed(model, model.ln_final(final)).float(), -1)  # [row, pos, vocab]
            token_logp = logp[row_index[:, None], target_pos, target_ids[None].expand_as(target_pos)]  # [row, token]
            nll = -token_logp.mean(0)  # [token], mean over the context prefixes
            kl_rows = (reference.exp() * (reference - logp)).sum(-1)  # [row, pos]
            kl = (kl_rows * kl_mask).sum() / kl_mask.sum().clamp(min=1)
            p_repeat = logp[row_index[:, None], repeat_pos[:, None], target_ids[None]].exp()  # [row, token]
            penalty = -torch.log1p(-p_repeat.clamp(max=1 - 1e-6))
            repetition = penalty[:, 0].mean() if cfg.repetition == "first" else penalty.mean(0).max()
            loss = nll.max() + cfg.kl_weight * kl + cfg.repetition_weight * repetition + cfg.norm_weight * delta.norm()
            max_nll, loss_value = float(nll.max().detach()), float(loss.detach())
            if not math.isfinite(loss_value):
                raise EditOptimizationError(
                    f"request {request.index} ({request.request.text!r} -> {request.request.target_new!r}): FiNE's loss is "
                    f"not finite at step {step}; the model is unchanged"
                )
            if max_nll < stop_nll or step == cfg.steps:
                steps = step
                break
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return _Fit(delta.detach().clone(), max_nll, loss_value, steps)


def fine(model, requests, config: FiNEConfig | None = None, *, corpus=None, cache_dir=None, progress: bool = False,
         **overrides) -> Edit:
    """FiNE edit(s) of ``requests`` (EditRequests, CounterFact records or dicts), one request
    after another (see the module docstring). The model is unchanged; apply the returned
    :class:`Edit` with ``edit.apply(model)``. ``edit.info`` reports per request the neurons
    selected (``selected``: ``[layer, neuron]`` pairs) and those touched (``neurons``, their
    count ``neurons_touched``: the selected ones whose δ is not zero — all of them unless the
    target was predicted already), the final max NLL, loss and steps, and timings. (``corpus`` / ``cache_dir`` are accepted for a uniform call
    and unused: FiNE needs no key statistics.)

    >>> e = fine(model, records[:1], steps=10)
    >>> {row["kind"] for row in e.summary()}               # a few W_out rows, no low-rank ΔW
    {'sparse_rows'}
    >>> with e.applied(model):
    ...     top = last_token_logits(model, ["Talvik Corlo was born in"]).argmax(-1)
    """
    cfg = resolve(FiNEConfig, model, config, overrides)  # its fields checked against the model too
    fingerprint = model_fingerprint(model)
    treqs = prepare_requests(model, requests, fingerprint)
    processing = unembedding_processing(model)
    if processing:
        warnings.warn(_PROCESSED_UNEMBEDDING.format(", ".join(processing)), UserWarning, stacklevel=2)
    layers = cfg.editable_layers(model)
    prefixes = context_prefixes(model, cfg.n_prefixes, cfg.prefix_length, cfg.seed)
    # only the touched rows are kept (never a dense copy of every editable W_out): their sums of
    # updates, and their original values, written back at the end whatever happens
    totals: dict[tuple[int, int], Tensor] = {}
    originals: dict[tuple[int, int], Tensor] = {}
    info: dict[str, Any] = {"unembedding_processing": list(processing), "selected": [], "neurons": [], "neurons_touched": [], "max_nll": [], "loss": [], "steps": [], "seconds": []}
    iterator = treqs
    if progress:
        from interp_edit.progress import progress_bar

        iterator = progress_bar(treqs, desc="FiNE")
    try:
        for request in iterator:
            start = time.perf_counter()
            selection = select_neurons(model, request, cfg.top_k, layers)
            neurons = selection.slots() if cfg.neuron_slots == "per_token" else selection.union()
            fit = _optimise(model, request, neurons, prefixes, cfg)
            if not torch.isfinite(fit.delta).all():
                raise EditOptimizationError(f"request {request.index} ({request.request.text!r}): non-finite δ; the model is unchanged")
            # a neuron whose δ stayed zero (the target was already predicted) is not touched
            changed = (fit.delta != 0).any(-1).cpu()
            neurons = [n for n, keep in zip(neurons, changed.tolist(), strict=True) if keep]
            delta = fit.delta[changed.to(fit.delta.device)]
            with torch.no_grad():
                for (layer, row), value in zip(neurons, delta, strict=True):
                    key = (int(layer), int(row))
                    if cfg.sequential:  # the next request sees this one (undone in `finally`)
                        weight = get_parameter(model, w_out_name(key[0])).data
                        if key not in originals:
                            originals[key] = weight[key[1]].clone()
                        add_delta_(weight[key[1]], value)
                    totals[key] = totals.get(key, 0.0) + value.double().cpu()
            touched = sorted(set(neurons))
            info["selected"].append([list(n) for n in selection.union()])
            info["neurons"].append([list(n) for n in touched])
            info["neurons_touched"].append(len(touched))
            info["max_nll"].append(fit.max_nll)
            info["loss"].append(fit.loss)
            info["steps"].append(fit.steps)
            info["seconds"].append(time.perf_counter() - start)
    finally:
        with torch.no_grad():
            for (layer, row), original in originals.items():
                get_parameter(model, w_out_name(layer)).data[row] = original
    deltas = {}
    for layer in sorted({layer for layer, _ in totals}):
        rows = sorted(row for lay, row in totals if lay == layer)
        deltas[w_out_name(layer)] = SparseRowDelta(torch.tensor(rows, dtype=torch.long),
                                                   torch.stack([totals[(layer, row)] for row in rows]).float())
    info["prefixes"] = list(prefixes)
    return Edit("fine", deltas, fingerprint, cfg.as_dict(), [r.request.as_dict() for r in treqs], info)


__all__ = ["FiNEConfig", "NeuronSelection", "fine", "select_neurons"]
