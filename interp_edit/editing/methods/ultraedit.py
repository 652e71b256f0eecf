"""UltraEdit (Gu et al. 2025, "UltraEdit: Training-, Subject-, and Memory-Free Lifelong Editing
in Large Language Models"): a closed-form, training-free lifelong editor. Each batch of edits is
one least-squares update of MLP output weights from the edit prompts' keys and the loss
gradients at the weights' outputs, the gradients scaled by *lifelong normalisation*: running
statistics of (key, gradient) rows kept over every batch edited so far.

For one edited weight (``W_out`` of a layer in ``layers``; TransformerLens orientation
[d_mlp, d_model], the layer writes ``k @ W_out``) and one batch:

1. **Cache.** The requests (``prompt + target_new``) are sorted by token length, longest first,
   and cut into groups of ``tuple_size``. For each group, one forward and backward of
   ``L = mean NLL of the target tokens of the group`` gives, at the chosen positions
   (``token="ans"``: the positions that predict a target token; ``"mask"``: every position),
   the keys ``k`` (the weight's input, ``mlp.hook_post``) and ``g = ∂L/∂(k @ W_out)`` (the
   gradient at the weight's output). All groups are cached on the model as it is; then
2. **Lifelong normalisation.** After each group, the running statistics of ``z = [k, g]``
   (one :class:`RunningMeanStd` per weight *shape*, shared by every edited weight of that shape,
   as the code's ``lifelong_normalizer``) take the group's rows::

       n' = n + m,  δ = mean(Z) − μ,  μ' = μ + m·δ / n',
       S' = S + m·var(Z) + n·m·δ² / n',  σ = sqrt(S' / (n' − 1 + ε))

   (``m`` rows ``Z``, ``var`` unbiased per column, ε = float32's machine epsilon: the code's
   formulas exactly). Then every row is normalised with the statistics after the whole batch:
   ``[k̂, ĝ] = (z − μ) / (σ + ε)``.
3. **Update.** ``v = −lr · ‖k̂‖² · ĝ`` per row; with K ([N, d_mlp], the *raw* keys) and V
   ([N, d_model]) of every cached row::

       ΔW_out = (KᵀK + ridge·I)⁻¹ Kᵀ V        (ridge = 1: the code's identity)

   computed in float64, as ``Kᵀ (K Kᵀ + ridge·I)⁻¹ V`` when N < d_mlp (the same matrix by the
   push-through identity, an N×N solve). Returned as low-rank factors.

**Sequential (lifelong) editing.** The statistics carry over between batches, never in module
state: pass one :class:`UltraEditState` as ``state=`` to every call of a sequence (it is updated
in place once the batch's edit has been computed; an error leaves it as it was) and apply each
returned :class:`Edit` before the next call — the next batch's keys and gradients are read on
the edited model, as in the code's ``sequential_valid`` (a call whose state's previous edit is not
applied, never or undone since, is refused). Without ``state`` the call starts from
empty statistics (the code's first batch). :class:`UltraEditor` holds a state for you, and
``run_experiment(..., sequential=True)`` passes one state through its batches (saved with each
batch for resuming). Undoing an edit does not take its rows out of the statistics (the code
never does either).

Follows the authors' code (XiaojieGu/UltraEdit ``editor/ultraedit.py``, ``nets.py``
``RunningMeanStd``, ``util.py`` ``TracerDict``; the same in zjunlp/EasyEdit
``easyeditor/models/ultraedit``). Where this differs, all named:

- ``ridge`` is a field (the code's fixed identity, ``ridge=1``), and the solve is in float64
  (the code: float32; the push-through form is the same matrix).
- A group of one row (one request with a one-token target under ``token="ans"``) has no
  unbiased variance: the code adds NaN and every later edit is NaN; here it adds 0. A first
  batch of one row only would normalise every row to 0 (a zero edit): it is refused.
- Only ``W_out`` (the code's ``c_proj`` / ``fc_out`` / ``down_proj``) is edited; the authors'
  Llama-3 and Qwen2.5 settings edit ``gate_proj`` / ``up_proj`` and have no preset here.
- The code reads ⌈n / tuple_size⌉ key files but ⌊n / tuple_size⌋ gradient files, so a batch
  that is not a multiple of ``tuple_size`` gives its last group's keys zero gradients; here every
  group has its own (the published settings, 100 edits in groups of 10, never differ).
- The requests are this project's :class:`EditRequest` (the subject is tokenised and checked,
  not used: UltraEdit is subject-free); the code's zsRE tuples are the same token sequences.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from interp_edit.adapter import (
    frozen_parameters,
    hook_name,
    model_fingerprint,
    run_with_hooks,
    sublayer_output_hooks,
)
from interp_edit.batching import pad_right
from interp_edit.editing.closed_form import w_out_name
from interp_edit.editing.config import check_layers, preset_config, resolve
from interp_edit.editing.edit import Edit, LowRankDelta, check_previous_applied
from interp_edit.editing.requests import TokenizedRequest, prepare_requests
from interp_edit.errors import EditConfigError, EditOptimizationError, EditRequestError, InvalidArgumentError

#: where keys and gradients are read: "ans" (the positions predicting a target token, the
#: authors' repository) or "mask" (every position of the sequence, EasyEdit's hparams)
TOKENS = ("ans", "mask")
#: the code's ε: ``torch.finfo(torch.float32).eps`` (its statistics are float32)
EPS = float(torch.finfo(torch.float32).eps)


@dataclass(frozen=True)
class UltraEditConfig:
    """UltraEdit's settings. Defaults are the authors' code (``config/editor/ultraedit.yaml``:
    lr 1e-6, ``token`` "ans"; ``config/dataset/*.yaml``: groups of 10 requests) at their GPT-J
    layers (``config/model/gpt-j.yaml``, zsRE / UltraEditBench: ``fc_out`` of layers 18–26).
    Not an ``EditorConfig``: UltraEdit optimises no target vector and reads no corpus statistics.

    >>> cfg = UltraEditConfig.for_model(model, lr=0.5)     # the toy-world preset, one override
    >>> cfg.preset, cfg.layers, cfg.lr
    ('toyworld', (1, 2, 3, 4), 0.5)
    """

    #: layers whose ``W_out`` is edited
    layers: tuple[int, ...] = (18, 19, 20, 21, 22, 23, 24, 25, 26)
    #: the step size in ``v = −lr · ‖k̂‖² · ĝ`` (the code's ``editor.lr``)
    lr: float = 1e-6
    #: requests per forward / backward; the loss is the mean NLL over the target tokens of
    #: one such group (the code's ``dataset.batch_size``)
    tuple_size: int = 10
    #: positions whose keys and gradients are cached: "ans" or "mask" (see :data:`TOKENS`)
    token: str = "ans"
    #: the ridge of ``(KᵀK + ridge·I)`` (the code: the identity, 1)
    ridge: float = 1.0
    #: the preset these settings started from (see :func:`interp_edit.editing.config.preset_config`)
    preset: str | None = None

    PRESETS: ClassVar[MappingProxyType] = MappingProxyType({
        # XiaojieGu/UltraEdit config/model/gpt-j.yaml (zsRE, UltraEditBench): fc_out 18-26
        "gpt-j-6B": {},
        # XiaojieGu/UltraEdit config/model/mistral-7b.yaml (v0.3; every data set): down_proj 29, 30
        "Mistral-7B-v0.1": {"layers": (29, 30)},
        # Llama-3-8B-Instruct, Qwen2.5-7B-Instruct: the authors edit gate_proj / up_proj, which
        # this implementation does not (W_out only) -> the generic rule. Phi-4 (down_proj 30-38)
        # and Gemma-3-27B are not models this toolkit recognises.
        # The toy world (6 layers, d_mlp 512): the code's lr 1e-6 moves nothing in a model this
        # small; see docs/editing.md for the sweep behind these
        "toyworld": {"layers": (1, 2, 3, 4), "lr": 1.5e-3, "token": "mask"},
    })

    @classmethod
    def generic(cls, model) -> dict[str, Any]:
        """GPT-J's proportions: the layers from 18/28 of the depth to the last but one."""
        n = model.cfg.n_layers
        first = min(round(n * 18 / 28), n - 1)
        return {"layers": tuple(range(first, max(first + 1, n - 1)))}

    def __post_init__(self) -> None:
        from interp_edit.validation import check_fields

        check_fields(self, EditConfigError, in_place=True)

    @classmethod
    def for_model(cls, model, **overrides: Any) -> UltraEditConfig:
        """The preset for ``model`` with ``overrides``."""
        return preset_config(cls, model, overrides)

    def validate(self) -> None:
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise EditConfigError(f"field 'layers' must be distinct layers, at least one, got {self.layers!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise EditConfigError(f"field 'lr' must be a finite number > 0, got {self.lr!r}")
        if not (math.isfinite(self.ridge) and self.ridge > 0):
            raise EditConfigError(f"field 'ridge' must be a finite number > 0, got {self.ridge!r}")
        if self.tuple_size < 1:
            raise EditConfigError(f"field 'tuple_size' must be an integer >= 1, got {self.tuple_size!r}")
        if self.token not in TOKENS:
            raise EditConfigError(f"field 'token' must be one of {list(TOKENS)}, got {self.token!r}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class RunningMeanStd:
    """The code's ``RunningMeanStd`` (``nets.py``) in float64: count ``n``, mean ``mean`` and
    the accumulated ``var`` (a sum of squares, as the code names it) of ``z = [k, g]`` rows."""

    def __init__(self, size: int) -> None:
        self.n = 0
        self.mean = torch.zeros(size, dtype=torch.float64)
        self.var = torch.zeros(size, dtype=torch.float64)

    def update(self, rows: Float[Tensor, "m size"]) -> None:
        rows = rows.detach().to("cpu", torch.float64)
        m = rows.shape[0]
        n = self.n + m
        delta = rows.mean(0) - self.mean
        self.mean = self.mean + m * delta / n
        # the code: m · x.var(0) (unbiased); one row has none (the code: NaN), here 0
        spread = rows.var(0) if m > 1 else torch.zeros_like(self.mean)
        self.var = self.var + m * spread + self.n * m * delta.pow(2) / n
        self.n = n

    @property
    def std(self) -> Float[Tensor, " size"]:
        return (self.var / (self.n - 1 + EPS)).sqrt()

    def normalise(self, rows: Float[Tensor, "m size"]) -> Float[Tensor, "m size"]:
        return (rows.double() - self.mean.to(rows.device)) / (self.std.to(rows.device) + EPS)


class UltraEditState:
    """UltraEdit's lifelong normalisation statistics: one :class:`RunningMeanStd` per edited
    weight shape ``(d_in, d_out)``, over every (key, gradient) row of every batch edited with
    this state. Pass the same state to each call of a sequence (see the module docstring).

    >>> state = UltraEditState()
    >>> first = ultraedit(model, records[:2], state=state).apply(model)
    >>> state.n_batches, state.rows()[(512, 128)] > 0
    (1, True)
    >>> second = ultraedit(model, records[2:4], state=state).apply(model)   # normalised with both
    >>> state.n_batches
    2
    >>> _ = second.undo(model), first.undo(model)
    """

    def __init__(self) -> None:
        self.stats: dict[tuple[int, int], RunningMeanStd] = {}
        #: the model the statistics were gathered on (set by the first batch)
        self.model_fingerprint: str | None = None
        self.n_batches = 0
        self.n_requests = 0
        #: the content hash of the last batch's edit: the next call needs it applied
        self.last_edit_hash: str | None = None

    def rows(self) -> dict[tuple[int, int], int]:
        """Rows seen so far, per weight shape."""
        return {shape: s.n for shape, s in self.stats.items()}

    def copy(self) -> UltraEditState:
        return copy.deepcopy(self)

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers (for ``torch.save``); :meth:`from_state_dict` reads it back."""
        return {"model_fingerprint": self.model_fingerprint, "n_batches": self.n_batches, "n_requests": self.n_requests,
                "last_edit_hash": self.last_edit_hash,
                "stats": {f"{a}x{b}": {"n": s.n, "mean": s.mean.clone(), "var": s.var.clone()}
                          for (a, b), s in self.stats.items()}}

    @classmethod
    def from_state_dict(cls, saved: dict[str, Any]) -> UltraEditState:
        state = cls()
        state.model_fingerprint, state.n_batches, state.n_requests = (
            saved["model_fingerprint"], int(saved["n_batches"]), int(saved["n_requests"]))
        state.last_edit_hash = saved.get("last_edit_hash")  # (files written before it was kept: None)
        for key, value in saved["stats"].items():
            a, b = (int(x) for x in key.split("x"))
            stat = RunningMeanStd(a + b)
            stat.n, stat.mean, stat.var = int(value["n"]), value["mean"].double().cpu(), value["var"].double().cpu()
            state.stats[(a, b)] = stat
        return state

    def _take(self, other: UltraEditState) -> None:
        self.__dict__.update(other.__dict__)

    def __repr__(self) -> str:
        return f"UltraEditState(batches={self.n_batches}, requests={self.n_requests}, rows={self.rows()})"


@dataclass(frozen=True)
class _Sequence:
    """One request as the code's tuple: ``prompt + target[:-1]``, the positions read."""

    ids: tuple[int, ...]
    #: (position, label) of every target token: the position that predicts it
    answers: tuple[tuple[int, int], ...]


def _sequences(treqs: list[TokenizedRequest]) -> list[_Sequence]:
    out = []
    for r in treqs:
        ids = tuple(r.prompt_ids) + tuple(r.target_ids[:-1])
        start = len(r.prompt_ids) - 1
        out.append(_Sequence(ids, tuple((start + i, t) for i, t in enumerate(r.target_ids))))
    return out


def _groups(seqs: list[_Sequence], size: int) -> list[list[_Sequence]]:
    """The code's collate: longest first (a stable sort), then groups of ``size``."""
    ordered = sorted(seqs, key=lambda s: len(s.ids), reverse=True)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def _rows_of(group: list[_Sequence], token: str) -> list[tuple[int, int]]:
    """(sequence, position) of the rows read, in the code's order (row-major)."""
    if token == "ans":
        return [(b, p) for b, s in enumerate(group) for p, _ in s.answers]
    return [(b, p) for b, s in enumerate(group) for p in range(len(s.ids))]


def keys_and_gradients(model, group: list[_Sequence], layers: list[int], token: str
                       ) -> dict[int, tuple[Float[Tensor, "n d_mlp"], Float[Tensor, "n d_model"]]]:
    """For each layer: the keys (``mlp.hook_post``) and ``∂L/∂(MLP output)`` at the group's rows,
    ``L`` the mean NLL of every target token of the group, on the model as it is (float32)."""
    device = model.cfg.device
    tokens, _ = pad_right([list(s.ids) for s in group], model.tokenizer.pad_token_id or 0)
    tokens = tokens.to(device)
    rows = _rows_of(group, token)
    r_b = torch.tensor([b for b, _ in rows], device=device)
    r_p = torch.tensor([p for _, p in rows], device=device)
    answers = [(b, p, t) for b, s in enumerate(group) for p, t in s.answers]
    a_b = torch.tensor([b for b, _, _ in answers], device=device)
    a_p = torch.tensor([p for _, p, _ in answers], device=device)
    labels = torch.tensor([t for _, _, t in answers], device=device)
    keys: dict[int, Tensor] = {}
    probes: dict[int, Tensor] = {}
    hooks = []
    for layer in layers:
        def keep(act, hook, layer=layer):
            keys[layer] = act[r_b, r_p].detach().float()

        def add(out, hook, layer=layer):
            probes[layer] = torch.zeros(out.shape, dtype=out.dtype, device=out.device, requires_grad=True)
            return out + probes[layer]

        hooks += [(hook_name("mlp_post", layer), keep), *sublayer_output_hooks(model, "mlp", layer, add)]
    with frozen_parameters(model), torch.enable_grad():
        logits = run_with_hooks(model, tokens, hooks)
        loss = torch.nn.functional.cross_entropy(logits[a_b, a_p].float(), labels)
        grads = torch.autograd.grad(loss, [probes[layer] for layer in layers])
    if not math.isfinite(loss.item()):
        raise EditOptimizationError("UltraEdit: the target loss is not finite; the model is unchanged")
    return {layer: (keys[layer], grad[r_b, r_p].float()) for layer, grad in zip(layers, grads, strict=True)}


def ultraedit_update(keys: Float[Tensor, "n d_in"], values: Float[Tensor, "n d_out"], ridge: float
                     ) -> tuple[Float[Tensor, "d_in rank"], Float[Tensor, "rank d_out"]]:
    """Factors of ``ΔW = (KᵀK + ridge·I)⁻¹ Kᵀ V`` in float64 (``K``: raw keys, ``V``: the rows'
    values ``−lr·‖k̂‖²·ĝ``): ``((KᵀK + ridge·I)⁻¹ Kᵀ, V)`` when N < d_in, else ΔW and an identity."""
    k, v = keys.double(), values.double()
    n, d_in = k.shape
    try:
        if n < d_in:  # push-through: (KᵀK + rI)⁻¹Kᵀ = Kᵀ(KKᵀ + rI)⁻¹
            left = k.T @ torch.linalg.solve(k @ k.T + ridge * torch.eye(n, dtype=k.dtype, device=k.device),
                                            torch.eye(n, dtype=k.dtype, device=k.device))
            right = v
        else:  # the dense ΔW, with an identity on its narrower side
            dense = torch.linalg.solve(k.T @ k + ridge * torch.eye(d_in, dtype=k.dtype, device=k.device), k.T @ v)
            d_out = dense.shape[1]
            left, right = ((dense, torch.eye(d_out, dtype=k.dtype, device=k.device)) if d_out <= d_in
                           else (torch.eye(d_in, dtype=k.dtype, device=k.device), dense))
    except torch.linalg.LinAlgError as err:
        raise EditOptimizationError(f"UltraEdit: the (KᵀK + ridge·I) solve failed ({err}); the model is unchanged") from None
    if not (torch.isfinite(left).all() and torch.isfinite(right).all()):
        raise EditOptimizationError("UltraEdit: the update is not finite; the model is unchanged")
    return left, right


class UltraEditor:
    """An UltraEdit session: a config and the :class:`UltraEditState` its calls share.

    >>> editor = UltraEditor(model)
    >>> first = editor(model, records[:2]).apply(model)
    >>> second = editor(model, records[2:4]).apply(model)   # normalised with both batches' rows
    >>> editor.state.n_batches
    2
    >>> _ = second.undo(model), first.undo(model)
    """

    def __init__(self, model, config: UltraEditConfig | None = None, *, state: UltraEditState | None = None,
                 **overrides) -> None:
        self.config = resolve(UltraEditConfig, model, config, overrides)
        check_layers(model, self.config.layers, "layers")
        self.state = state if state is not None else UltraEditState()

    def __call__(self, model, requests) -> Edit:
        return ultraedit(model, requests, self.config, state=self.state)


def ultraedit(model, requests, config: UltraEditConfig | None = None, *, state: UltraEditState | None = None,
              corpus=None, cache_dir=None, stats=None, progress: bool = False, **overrides) -> Edit:
    """One UltraEdit batch (see the module docstring). ``state``: the lifelong statistics of a
    sequence, updated in place once the edit is computed; None starts from empty statistics.
    The model is unchanged; apply the returned :class:`Edit`. (``corpus``, ``cache_dir``,
    ``stats`` and ``progress`` are accepted for a uniform call and unused: UltraEdit reads no
    corpus statistics.)

    >>> e = ultraedit(model, records[:2])                  # or edit(model, ..., "ultraedit")
    >>> e.layers(), e.info["rows"]                         # W_out of layers 1-4; every position of 2 prompts
    ([1, 2, 3, 4], 12)
    """
    cfg = resolve(UltraEditConfig, model, config, overrides)
    check_layers(model, cfg.layers, "layers")
    if state is not None and not isinstance(state, UltraEditState):
        raise InvalidArgumentError(f"argument 'state' must be an UltraEditState or None, got {type(state).__name__}")
    fingerprint = model_fingerprint(model)
    if state is not None and state.model_fingerprint not in (None, fingerprint):
        raise InvalidArgumentError(f"argument 'state' holds statistics of another model (fingerprint "
                                   f"{state.model_fingerprint}, this model {fingerprint}); use one state per model")
    if state is not None:
        check_previous_applied(model, state.last_edit_hash, f"argument 'state' ({state.n_batches} batch(es) so far)")
    treqs = prepare_requests(model, requests, fingerprint)
    groups = _groups(_sequences(treqs), cfg.tuple_size)
    n_rows = sum(len(_rows_of(g, cfg.token)) for g in groups)
    fresh = state is None or not state.stats
    if fresh and n_rows < 2:
        raise EditRequestError(f"requests: one row to normalise (token={cfg.token!r}, one request with a one-token "
                               "target) and no earlier statistics: the lifelong normaliser would map it to 0 (a zero "
                               "edit; the authors' code gives NaN). Edit at least two target tokens, or use token='mask'")
    layers = list(cfg.layers)
    names = {layer: w_out_name(layer) for layer in layers}
    shape = (model.cfg.d_mlp, model.cfg.d_model)  # every W_out: one normaliser, as the code's per-shape dict
    new_state = state.copy() if state is not None else UltraEditState()
    start = time.perf_counter()
    cached: dict[int, list[tuple[Tensor, Tensor]]] = {layer: [] for layer in layers}
    stat = new_state.stats.setdefault(shape, RunningMeanStd(sum(shape)))
    for group in groups:
        found = keys_and_gradients(model, group, layers, cfg.token)
        for layer in layers:  # the code: every module in turn, after each group
            k, g = found[layer]
            stat.update(torch.cat([k, g], -1))
            cached[layer].append((k, g))
    cache_seconds = time.perf_counter() - start
    deltas = {}
    for layer in layers:
        keys = torch.cat([k for k, _ in cached[layer]]).double()
        grads = torch.cat([g for _, g in cached[layer]]).double()
        normed = stat.normalise(torch.cat([keys, grads], -1).cpu())
        k_hat, g_hat = normed.split([shape[0], shape[1]], -1)
        values = -cfg.lr * k_hat.pow(2).sum(-1, keepdim=True) * g_hat
        left, right = ultraedit_update(keys.cpu(), values, cfg.ridge)
        deltas[names[layer]] = LowRankDelta(left.float(), right.float())
    new_state.model_fingerprint = fingerprint
    new_state.n_batches += 1
    new_state.n_requests += len(treqs)
    info = {"rows": n_rows, "groups": len(groups), "normaliser_rows": stat.n,
            "batches_before": new_state.n_batches - 1, "requests_before": new_state.n_requests - len(treqs),
            "seconds": {"cache": cache_seconds, "total": time.perf_counter() - start}}
    edit = Edit("ultraedit", deltas, fingerprint, cfg.as_dict(), [r.request.as_dict() for r in treqs], info)
    if state is not None:
        new_state.last_edit_hash = edit.content_hash()
        state._take(new_state)
    return edit


__all__ = ["TOKENS", "RunningMeanStd", "UltraEditConfig", "UltraEditState", "UltraEditor", "keys_and_gradients",
           "ultraedit", "ultraedit_update"]
