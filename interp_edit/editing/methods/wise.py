"""WISE (Wang et al. 2024, "WISE: Rethinking the Knowledge Memory for Lifelong Model Editing"):
a side memory for one layer's MLP output weight and a router between it and the main memory;
no weight of the model changes.

The side memory starts as a copy ``W_side = W_out`` of layer ``layer``'s MLP output weight
[d_mlp, d_model] and only it is trained, edit after edit (one request per edit, as the authors'
sequential editing runs). With ``A`` the MLP's hidden activation, ``out = A·W + b_out`` and
``φ`` the model's activation function, the distance at a position is

    ``d = ‖φ(A·W_side + b_out) − φ(A·W_out + b_out)‖₂``

(the authors' ``euc``, which applies the activation to both outputs), and ``D(row)`` its mean
over a row's positions. Per request, the rows are the prompt under each context template
(``'{}'`` and ``'<text> {}'``, the templates' texts generated greedily by the model from the
code's start words, 5 and 10 new tokens) followed by the new target, plus one out-of-scope row
(``loc_prompts``: the code's ``loc_prompt``). The loss, minimised by SGD (``lr``,
``weight_decay``) for at most ``n_iter`` steps with the side memory acting on every row, is

    ``L = mean_t NLL_t / (|target| + 1) + m⁺(D_out − D_in,t + γ) + m⁺(D_out − α) + m⁺(β − D_in,t)``

(``m⁺``: the mean of the positive entries, 0 if none; ``D_in,t`` over the template rows,
``D_out`` the out-of-scope row; the ``+ 1`` is the code's label mask, which also spans the
position before the target). After each backward pass the gradient is multiplied by the
shard's random mask (each entry kept with probability ``mask_ratio``: the code's
``np.random.choice([1, 0], p=[mask_ratio, 1 − mask_ratio])``, drawn from ``seed`` when a shard
starts: knowledge sharding), the SGD step is taken and ``W_side`` is clamped to
``W_out ± norm_constraint``. A request stops early once its loss is ≤ 0.02 and moved by
≤ 1e-4 (the code's ``EarlyStopMeter``). The mean in-scope distance of the last loss evaluation
(before the last step, as the code records it) enters ``activation_floor`` = the least over the
memory's edits; the router sends a sequence to the side memory when its mean distance (the
largest when it has more than 100 positions) is ≥ ``activation_floor · act_ratio``, and returns
the main memory's output bit for bit otherwise (:class:`~interp_edit.editing.wise_memory.WiseSideMemory`).

Follows zjunlp/EasyEdit ``easyeditor/models/wise/`` (``WISE.py``, ``utils.py``, ``merge/``) with
``retrieve``. Named deviations:

- ``routing``: the code decides once per forward, by the batch's mean score; ``"sequence"``
  (default) decides per sequence (the code's rule at batch size 1, how its evaluation runs),
  ``"batch"`` is the code's, ``"prefix"`` decides per position by the mean up to it (causal).
- The side memory is always ``W_out``: the authors' hparams wrap ``down_proj`` / ``fc_out``
  (W_out) for every model but GPT-2 XL, where they wrap ``c_fc`` (W_in); the ``gpt2-xl``
  preset keeps their layer (8) but on ``W_out``.
- Padding: our rows are right-padded and exact per row, and distances average a row's own
  positions; the code left-pads (GPT-2 then shifts a padded row's positions) and averages pad
  positions in, and when the out-of-scope row is the longest its label mask (read off the padded
  batch) leaves prompt tokens in the NLL. Without padding (rows of one length) the two agree.
- ``loc_prompts`` fewer than the requests are cycled in order (the code cycles and shuffles
  with Python's global ``random``); by default they are the generated template texts. Context
  texts are generated from BOS + the start word (TransformerLens's convention).
- Shards and merging (the code's ``save_freq`` / ``merge_freq``, ``retrieve``): after every
  ``save_freq`` edits (counted from the memory's first edit: the code's ``editing_total_cnt``)
  the current side memory is saved with its floor (``memory_weight`` / ``memory_mean_act``),
  and the next shard trains from W_out again (the code's ``new_weight = original weight``)
  under a new mask (:func:`shard_mask`: the next draw of the seeded generator, as the code's
  next draw of numpy's global one; independent and possibly overlapping, as the code's
  ``generate_activation_mask`` — its ``generate_non_overlapping_mask`` is never called). After
  every ``merge_freq`` edits the last ``merge_freq // save_freq`` saved memories are replaced by
  their merge (:func:`merge_deltas`, ``merge_alg`` "ties" with ``densities`` and ``weights``:
  the code's ``GTA('magnitude', 'sum', normalize=True)``), whose floor is the merged shards'
  least. Retrieval among the memories is the code's (see
  :class:`~interp_edit.editing.wise_memory.WiseSideMemory`). Deviations: a memory's output adds
  b_out (the code's ``F.linear(x, W_mem)`` drops the layer's bias; no bias in Llama-style
  MLPs); ``merge_freq`` must be a multiple of ``save_freq`` (else the code merges without
  saving and drops the current shard); ``retrieve=False`` (the code merges into the main
  memory's weight instead) and the random / slerp / linear merges are refused.
- The chat template (Llama-3 / Qwen hparams' ``use_chat_template``) and the ``replay`` option
  are not implemented.

Lifelong editing: ``wise(model, more, memory=edit)`` continues the side memory of an earlier
WISE ``edit`` (not applied at the time: undo it first) — its ``W_side``, ``activation_floor``,
mask, edit count and saved memories with their floors — and returns a new :class:`~interp_edit.editing.edit.Edit` holding the
extended memory (and every request it holds), which replaces the old one. Nothing is kept
between calls anywhere else.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp_edit.adapter import frozen_parameters, get_parameter, hook_name, model_fingerprint
from interp_edit.editing.config import check_layers, preset_config, resolve
from interp_edit.editing.edit import Edit
from interp_edit.editing.requests import prepare_requests, tokenize_in_context
from interp_edit.editing.wise_memory import WISE_ROUTINGS, WiseSideMemory, activation_function
from interp_edit.errors import EditConfigError, EditOptimizationError

#: the code's context-template start words and (new tokens, count per start word) groups
TEMPLATE_STARTS = ("I", "You", "Because", "Yes", "Q: ")
TEMPLATE_LENGTHS = (5, 10)
#: the code's EarlyStopMeter: stop when the loss is <= this and moved by <= EARLY_STOP_DELTA
EARLY_STOP_LOSS, EARLY_STOP_DELTA = 0.02, 1e-4
#: the code's deterministic GTA merges (``merge_dict``): (sparsify, sign consensus, normalise)
MERGE_ALGORITHMS = MappingProxyType({"ties": ("magnitude", "sum", True), "magnitude_norm": ("magnitude", None, True),
                                     "magnitude": ("magnitude", None, False), "sign": (None, "sum", True)})
#: the code's other merges (random DARE, slerp, linear): refused by name
UNIMPLEMENTED_MERGES = ("dare_ties", "dare_linear", "slerp", "linear")


@dataclass(frozen=True)
class WISEConfig:
    """WISE's settings. Defaults are the authors' GPT-2 XL ones (EasyEdit
    ``hparams/WISE/gpt2-xl.yaml``: layer 8, 40 SGD steps at lr 1, mask ratio 0.2, margins
    α, β, γ = 5, 20, 10, act_ratio 0.8, norm constraint 1, shards of 500 edits).

    >>> cfg = WISEConfig.for_model(model, n_iter=5)
    >>> cfg.preset, cfg.layer, cfg.n_iter
    ('toyworld', 4, 5)
    """

    #: the layer whose MLP output weight W_out the side memory copies (the code's ``inner_params``)
    layer: int = 8
    #: SGD learning rate (the code's ``edit_lr``)
    lr: float = 1.0
    #: SGD steps per edit at most (the code's ``n_iter``; the early stop may end sooner)
    n_iter: int = 40
    #: SGD weight decay (the code's, fixed there at 1e-5)
    weight_decay: float = 1e-5
    #: the share of W_side's entries a shard trains (the code's ``mask_ratio``)
    mask_ratio: float = 0.2
    #: margins (the code's ``act_margin``): out-of-scope distance below α, in-scope above β,
    #: in-scope above out-of-scope by γ
    alpha: float = 5.0
    beta: float = 20.0
    gamma: float = 10.0
    #: the router's threshold is act_ratio × the least in-scope distance of the memory's edits
    act_ratio: float = 0.8
    #: |W_side − W_out| <= norm_constraint entrywise (the code's clamp)
    norm_constraint: float = 1.0
    #: edits per shard (the code's ``save_freq``): after each ``save_freq`` edits the current side
    #: memory is saved with its floor, and the next shard starts from W_out with a new mask
    save_freq: int = 500
    #: after each ``merge_freq`` edits the last ``merge_freq // save_freq`` saved memories are merged
    #: into one (the code's ``merge_freq``; a multiple of ``save_freq``)
    merge_freq: int = 1000
    #: how memories are merged (the code's ``merge_alg``): "ties" (trim each task vector to its
    #: ``densities`` largest magnitudes, elect each entry's sign by the summed weighted mass, mean
    #: of the agreeing entries), or the code's other deterministic GTA variants "magnitude_norm",
    #: "magnitude", "sign"
    merge_alg: str = "ties"
    #: the share of each memory's entries TIES keeps (the code's ``densities``)
    densities: float = 0.53
    #: the merge weight, split evenly over the merged memories (the code's ``weights``)
    weights: float = 1.0
    #: retrieval among the saved memories (the code's ``retrieve``; only True is implemented)
    retrieve: bool = True
    #: the context texts before the prompt ('<text> {}'), besides the bare prompt; None =
    #: generated greedily by the model from the code's start words (5 and 10 new tokens)
    prefixes: tuple[str, ...] | None = None
    #: out-of-scope texts, one per request (cycled); None = the generated context texts
    loc_prompts: tuple[str, ...] | None = None
    #: "sequence" (per sequence), "batch" (the code's: one decision per forward) or "prefix"
    routing: str = "sequence"
    #: seed of the shard's gradient mask (numpy's legacy generator, as the code's global one)
    seed: int = 0
    #: the preset these settings started from (see :func:`interp_edit.editing.config.preset_config`)
    preset: str | None = None

    PRESETS: ClassVar[MappingProxyType] = MappingProxyType({
        # EasyEdit hparams/WISE/gpt2-xl.yaml (transformer.h[8].mlp.c_fc there; W_out here, see the module docstring)
        "gpt2-xl": {},
        # hparams/WISE/gpt-j-6B.yaml (transformer.h[21].mlp.fc_out)
        "gpt-j-6B": {"layer": 21, "n_iter": 70, "alpha": 15.0, "beta": 40.0, "gamma": 20.0, "act_ratio": 0.88},
        # hparams/WISE/llama-7b.yaml (model.layers[27].mlp.down_proj); mistral-7b.yaml is the same
        "Llama-2-7b-hf": {"layer": 27, "n_iter": 70, "act_ratio": 0.88},
        "Mistral-7B-v0.1": {"layer": 27, "n_iter": 70, "act_ratio": 0.88},
        # hparams/WISE/llama3-8b.yaml (layers[29].down_proj; its chat template is not applied here)
        "Meta-Llama-3-8B": {"layer": 29, "lr": 0.9, "n_iter": 30, "alpha": 2.0, "act_ratio": 0.5},
        # hparams/WISE/qwen2.5-7b.yaml (layers[23].down_proj; its chat template is not applied here)
        "Qwen2.5-7B": {"layer": 23, "n_iter": 70, "act_ratio": 0.88},
        # measured on the toy world (tests/test_wise.py; 5 sequential person facts): the authors'
        # margins are for LLM-sized activations; at the toy's scale margins 1 / 6 / 4 with lr 2 and
        # |ΔW| <= 2 at layer 4 give efficacy / paraphrase / neighbourhood 1.0 / 1.0 / 0.76 (layer 5,
        # |ΔW| <= 0.5: 0.2 / 0.6 / 0.9): short prompts share most positions, so the router also
        # takes many neighbours
        "toyworld": {"layer": 4, "lr": 2.0, "norm_constraint": 2.0, "alpha": 1.0, "beta": 6.0, "gamma": 4.0},
    })

    @classmethod
    def generic(cls, model) -> dict[str, Any]:
        """A model without a preset: the layer at the depth of Llama-2-7B's 27 of 32."""
        return {"layer": round(27 / 31 * (model.cfg.n_layers - 1))}

    @classmethod
    def for_model(cls, model, **overrides: Any) -> WISEConfig:
        return preset_config(cls, model, overrides)

    def __post_init__(self) -> None:
        from interp_edit.validation import check_fields

        check_fields(self, EditConfigError, in_place=True)  # types (and finite floats) of every field

    def validate(self) -> None:
        for name in ("n_iter", "save_freq"):
            if getattr(self, name) < 1:
                raise EditConfigError(f"field {name!r} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "norm_constraint", "act_ratio"):
            if not getattr(self, name) > 0:
                raise EditConfigError(f"field {name!r} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "alpha", "beta", "gamma"):
            if getattr(self, name) < 0:
                raise EditConfigError(f"field {name!r} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.mask_ratio <= 1:
            raise EditConfigError(f"field 'mask_ratio' must be in (0, 1], got {self.mask_ratio}")
        if self.merge_freq < 1 or self.merge_freq % self.save_freq:
            raise EditConfigError(f"field 'merge_freq' must be a positive multiple of field 'save_freq' ({self.save_freq}), "
                                  f"got {self.merge_freq} (the code would merge without saving the current shard)")
        if self.merge_alg not in MERGE_ALGORITHMS:
            raise EditConfigError(f"field 'merge_alg' must be one of {tuple(MERGE_ALGORITHMS)}, got {self.merge_alg!r}"
                                  + (" (the code has it; not implemented here)" if self.merge_alg in UNIMPLEMENTED_MERGES else ""))
        if not 0 < self.densities <= 1:
            raise EditConfigError(f"field 'densities' must be in (0, 1], got {self.densities}")
        if not self.weights > 0:
            raise EditConfigError(f"field 'weights' must be > 0, got {self.weights}")
        if not self.retrieve:
            raise EditConfigError("field 'retrieve': only True is implemented (the code's retrieve=False merges the memories "
                                  "into the main memory's weight)")
        if self.routing not in WISE_ROUTINGS:
            raise EditConfigError(f"field 'routing' must be one of {WISE_ROUTINGS}, got {self.routing!r}")
        if self.seed < 0:
            raise EditConfigError(f"field 'seed' must be >= 0, got {self.seed}")
        for name in ("prefixes", "loc_prompts"):
            texts = getattr(self, name)
            if texts is None:
                continue
            if name == "loc_prompts" and not texts:
                raise EditConfigError("field 'loc_prompts' must hold at least one text (or be None)")
            if any(not isinstance(t, str) or not t.strip() for t in texts):
                raise EditConfigError(f"field {name!r} must hold non-empty strings, got {texts!r}")

    def as_dict(self) -> dict[str, Any]:
        import dataclasses

        return dataclasses.asdict(self)


@torch.no_grad()
def context_texts(model, starts=TEMPLATE_STARTS, lengths=TEMPLATE_LENGTHS) -> tuple[str, ...]:
    """The code's context-template texts: for each number of new tokens in ``lengths`` and each
    start word, the greedy continuation of BOS + the start word, decoded with the start word
    (special tokens skipped)."""
    texts = []
    tok = model.tokenizer
    for new in lengths:
        for start in starts:
            tokens = torch.tensor([[tok.bos_token_id, *tok.encode(start, add_special_tokens=False)]], device=model.cfg.device)
            for _ in range(new):
                tokens = torch.cat([tokens, model(tokens)[:, -1:].argmax(-1)], dim=1)
            texts.append(tok.decode(tokens[0, 1:].tolist(), skip_special_tokens=True))
    return tuple(texts)


def gradient_mask(shape: tuple[int, ...], ratio: float, seed: int) -> Bool[Tensor, "d_mlp d_model"]:
    """A shard's mask: each entry kept with probability ``ratio``, drawn as the code draws it
    (``np.random.choice([1, 0], size, p=[ratio, 1 − ratio])``, here from ``seed``), over W_out
    in [d_mlp, d_model] layout.

    >>> gradient_mask((2, 3), 0.5, seed=0).int()
    tensor([[0, 0, 0],
            [0, 1, 0]], dtype=torch.int32)
    """
    drawn = np.random.RandomState(seed).choice([1, 0], size=math.prod(shape), p=[ratio, 1 - ratio])
    return torch.from_numpy(drawn.reshape(shape) == 1)


def shard_mask(shape: tuple[int, ...], ratio: float, seed: int, shard: int) -> Bool[Tensor, "d_mlp d_model"]:
    """Shard ``shard``'s mask: the ``shard + 1``-th draw of :func:`gradient_mask`'s rule from one
    generator seeded with ``seed`` (the code draws each shard's mask from numpy's global generator
    as the shard starts; shard 0's is :func:`gradient_mask`). Masks of shards may overlap, as the
    code's (``generate_activation_mask``; its ``generate_non_overlapping_mask`` is never called)."""
    state = np.random.RandomState(seed)
    for _ in range(shard + 1):
        drawn = state.choice([1, 0], size=math.prod(shape), p=[ratio, 1 - ratio])
    return torch.from_numpy(drawn.reshape(shape) == 1)


def merge_deltas(deltas: list[Tensor], alg: str = "ties", density: float = 0.53, weight: float = 1.0) -> Tensor:
    """The code's merge of memories (``GTA.execute``, its base W_out subtracted: task vectors in,
    task vector out): each task vector with weight ``weight / len(deltas)``; "ties" keeps each
    vector's ``int(density · numel)`` largest magnitudes (chosen on float32 magnitudes, as the code
    on CPU), elects each entry's sign by the sign of the weighted sum (≥ 0: positive), and takes the
    weighted mean of the entries of that sign (0 where none).

    >>> merge_deltas([torch.tensor([1.0, -2.0, 3.0]), torch.tensor([3.0, 1.0, -1.0])], density=1.0)
    tensor([ 2., -2.,  3.])
    """
    sparsify, consensus, normalize = MERGE_ALGORITHMS[alg]
    if sparsify == "magnitude" and density < 1:
        trimmed = []
        for delta in deltas:
            keep = torch.zeros_like(delta)
            keep.view(-1)[torch.topk(delta.abs().reshape(-1).float(), k=int(density * delta.numel()), largest=True).indices] = 1
            trimmed.append(delta * keep)
        deltas = trimmed
    stacked = torch.stack(deltas)
    w = torch.full((len(deltas),), weight / len(deltas), dtype=stacked.dtype, device=stacked.device)
    w = w.view(-1, *[1] * (stacked.dim() - 1))
    weighted = stacked * w
    if consensus == "sum":
        agree = (weighted.sign() == (weighted.sum(0) >= 0).to(stacked.dtype) * 2 - 1).to(stacked.dtype)
        mixed = (weighted * agree).sum(0)
        divisor = (w * agree).sum(0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(0)
        divisor = w.sum(0)
        divisor[divisor.abs() < 1e-8] = 1
    return mixed / divisor if normalize else mixed


def margin_loss(in_scope: Float[Tensor, " template"], out_scope: Float[Tensor, " loc"], alpha: float, beta: float,
                gamma: float) -> Tensor:
    """The code's activation loss: ``m⁺(D_out − D_in + γ) + m⁺(D_out − α) + m⁺(β − D_in)``,
    ``m⁺`` the mean of the positive entries (0 if none).

    >>> float(margin_loss(torch.tensor([3.0, 30.0]), torch.tensor([6.0]), alpha=5.0, beta=20.0, gamma=10.0))
    31.0
    """
    def positive_mean(x: Tensor) -> Tensor:
        keep = x[x > 0]
        return keep.mean() if keep.numel() else x.new_zeros(())

    return (positive_mean(out_scope[:, None] - in_scope[None, :] + gamma) + positive_mean(out_scope - alpha)
            + positive_mean(beta - in_scope))


def _rows(model, treq, prefixes: tuple[str, ...], loc: str
          ) -> tuple[Int[Tensor, "row pos"], Int[Tensor, " row"], Int[Tensor, "template tpos"], Int[Tensor, " tpos"]]:
    """One request's rows: the prompt under each template followed by the whole target, then the
    out-of-scope row; right-padded. Also each row's length and, per template row, the positions
    whose logits predict the target tokens."""
    from interp_edit.batching import pad_right

    target = list(treq.target_ids)
    seqs, positions = [], []
    for ids, _ in tokenize_in_context(model, treq, ("", *prefixes)):
        positions.append([len(ids) - 1 + t for t in range(len(target))])
        seqs.append([*ids, *target])
    tok = model.tokenizer
    seqs.append([tok.bos_token_id, *tok.encode(loc, add_special_tokens=False)])
    if max(map(len, seqs)) > model.cfg.n_ctx:
        raise EditConfigError(f"request {treq.index}: a row of {max(map(len, seqs))} tokens (context prefix or "
                              f"loc prompt) is longer than the model's context {model.cfg.n_ctx}")
    tokens, lengths = pad_right(seqs, tok.pad_token_id or 0)
    device = model.cfg.device
    return tokens.to(device), lengths.to(device), torch.tensor(positions, device=device), torch.tensor(target, device=device)


def _edit_one(model, side: Tensor, main: Tensor, mask: Tensor, rows, cfg: WISEConfig, phi) -> dict[str, Any]:
    """The code's ``WISE.edit`` for one request: SGD on ``side`` (in place). Returns the
    recorded in-scope distance and the run's diagnostics."""
    from interp_edit.adapter.hooks import sublayer_output_hooks

    tokens, lengths, positions, target = rows
    n_templates = positions.shape[0]
    real = (torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]).float()
    slot: dict[str, Tensor] = {}

    def keep(act, hook):
        slot["input"] = act

    def write(out, hook):  # the side memory acts on every row while editing (the code's ``editing``)
        slot["main"] = out.detach().to(side.dtype)
        slot["side"] = out.to(side.dtype) + slot.pop("input").to(side.dtype) @ (side - main)
        return slot["side"].to(out.dtype)

    hooks = [(hook_name("mlp_post", cfg.layer), keep), *sublayer_output_hooks(model, "mlp", cfg.layer, write)]
    optimiser = torch.optim.SGD([side], lr=cfg.lr, weight_decay=cfg.weight_decay)
    rows_t = torch.arange(n_templates, device=tokens.device)
    value, previous = 1e9, 0.0
    recorded = None
    for step in range(cfg.n_iter):
        with model.hooks(fwd_hooks=hooks):
            logits = model(tokens)
        logp = torch.log_softmax(logits[rows_t[:, None], positions].to(side.dtype), -1).gather(-1, target.expand(n_templates, -1)[..., None])
        ft = (-logp[..., 0].sum(-1) / (target.numel() + 1)).mean()
        dist = (phi(slot["side"]) - phi(slot["main"])).norm(dim=-1)
        per_row = (dist * real).sum(-1) / real.sum(-1)
        in_scope, out_scope = per_row[:n_templates], per_row[n_templates:]
        loss = ft + margin_loss(in_scope, out_scope, cfg.alpha, cfg.beta, cfg.gamma)
        if not torch.isfinite(loss):
            raise EditOptimizationError(f"the WISE loss became non-finite at step {step}; the model is unchanged")
        stop = abs(value - previous) <= EARLY_STOP_DELTA and value <= EARLY_STOP_LOSS
        if stop or step == cfg.n_iter - 1:
            recorded = float(in_scope.detach().mean())
        if stop:
            break
        optimiser.zero_grad()
        loss.backward()
        side.grad *= mask
        optimiser.step()
        previous, value = value, float(loss.detach())
        with torch.no_grad():
            side.copy_(torch.clamp(side, min=main - cfg.norm_constraint, max=main + cfg.norm_constraint))
    return {"in_scope": recorded, "steps": step + (0 if stop else 1), "loss": float(loss.detach()), "nll": float(ft.detach()),
            "in_scope_last": in_scope.detach().tolist(), "out_scope_last": out_scope.detach().tolist()}


def _previous(memory, model, cfg: WISEConfig, fingerprint: str) -> WiseSideMemory | None:
    """The side memory a call continues (``memory``), checked before any compute."""
    if memory is None:
        return None
    from interp_edit.editing.edit import check_memory_not_active, continued_memory

    held = continued_memory(memory, "wise", WiseSideMemory, model)
    if held.layer != cfg.layer:
        raise EditConfigError(f"argument 'memory': its side memory is at layer {held.layer}, field 'layer' is {cfg.layer}")
    for name in ("save_freq", "merge_freq"):  # shard and merge boundaries count from the memory's first edit
        old = (memory.config or {}).get(name)
        if old is not None and old != getattr(cfg, name):
            raise EditConfigError(f"field {name!r} is {getattr(cfg, name)}, the memory's is {old}: a continued memory "
                                  "keeps its shard and merge boundaries")
    if held.mask is None and held.n_edits % cfg.save_freq:
        raise EditConfigError("argument 'memory': its current shard holds edits but no gradient mask")
    check_memory_not_active(memory, model)
    return held


def wise(model, requests, config: WISEConfig | None = None, *, memory: Edit | None = None, corpus=None, cache_dir=None,
         stats=None, progress: bool = False, **overrides) -> Edit:
    """A WISE edit of ``requests`` (EditRequests, CounterFact records or dicts), edited one after
    another into side memories of layer ``layer``'s W_out (a shard per ``save_freq`` edits,
    merged per ``merge_freq``): a
    :class:`~interp_edit.editing.wise_memory.WiseSideMemory` hook, no weight delta. ``memory``:
    an earlier WISE edit whose side memory this call continues (see the module docstring).
    ``corpus`` / ``cache_dir`` / ``stats`` / ``progress`` are accepted for a uniform call and
    unused. The model is unchanged; apply the returned :class:`Edit`.

    >>> e = wise(model, records[:1], n_iter=5)
    >>> e.changes_weights, list(e.hooks)
    (False, ['layer4'])
    """
    cfg = resolve(WISEConfig, model, config, overrides)
    check_layers(model, [cfg.layer], "layer")
    fingerprint = model_fingerprint(model)
    treqs = prepare_requests(model, requests, fingerprint)
    held = _previous(memory, model, cfg, fingerprint)
    before = held.n_edits if held is not None else 0
    if cfg.densities < 1 and MERGE_ALGORITHMS[cfg.merge_alg][0] and int(cfg.densities * model.cfg.d_mlp * model.cfg.d_model) < 1:
        raise EditConfigError(f"field 'densities' ({cfg.densities}) keeps no entry of a {model.cfg.d_mlp}×{model.cfg.d_model} memory")
    act_fn = getattr(model.cfg, "act_fn", None)
    try:
        phi = activation_function(act_fn)
    except ValueError as err:
        raise EditConfigError(f"WISE measures distances with the model's activation function: {err}") from None
    start = time.perf_counter()
    generated = context_texts(model) if cfg.prefixes is None or cfg.loc_prompts is None else ()
    prefixes = cfg.prefixes if cfg.prefixes is not None else generated
    locs = cfg.loc_prompts if cfg.loc_prompts is not None else generated
    all_rows = [_rows(model, r, prefixes, locs[(before + i) % len(locs)]) for i, r in enumerate(treqs)]
    timings = {"rows": time.perf_counter() - start}
    start = time.perf_counter()
    w_out = get_parameter(model, f"blocks.{cfg.layer}.mlp.W_out").detach()
    main = w_out.to(torch.promote_types(w_out.dtype, torch.float32))  # float32 (float64 for a float64 model)
    side = (main + held.delta.to(main.device, main.dtype) if held is not None else main.clone()).requires_grad_(True)
    mask = held.mask.to(main.device, main.dtype) if held is not None and before % cfg.save_freq else None
    floor = held.activation_floor if held is not None else math.inf
    memories = list(held.memories.to(main.device, main.dtype).unbind(0)) if held is not None and held.n_memories else []
    floors = list(held.memory_floors) if held is not None else []
    runs, saved_at, merged_at = [], [], []
    n = before

    def boundary():  # after the n-th edit: the code's save_weight and merge_weight (retrieve) where they fall
        nonlocal side, floor, mask
        if n % cfg.save_freq == 0:  # keep the shard (and its floor); the next starts from W_out
            memories.append(side.detach() - main)
            floors.append(floor)
            side, floor, mask = main.clone().requires_grad_(True), math.inf, None
            saved_at.append(n)
        if n % cfg.merge_freq == 0:  # the last merge_freq // save_freq memories into one
            count = cfg.merge_freq // cfg.save_freq
            merged = merge_deltas(memories[-count:], cfg.merge_alg, cfg.densities, cfg.weights)
            merged_floor = min(floors[-count:])
            del memories[-count:], floors[-count:]
            memories.append(merged)
            floors.append(merged_floor)
            merged_at.append(n)

    if before and before % cfg.save_freq == 0 and math.isfinite(floor):  # a full shard held as the current one
        boundary()
    with frozen_parameters(model), torch.enable_grad():
        for rows in all_rows:
            if n % cfg.save_freq == 0:  # a shard starts: a new mask (the code's generate_activation_mask)
                mask = shard_mask(tuple(main.shape), cfg.mask_ratio, cfg.seed, n // cfg.save_freq).to(main.device, main.dtype)
            run = _edit_one(model, side, main, mask, rows, cfg, phi)
            floor = min(floor, run["in_scope"])
            runs.append(run)
            n += 1
            boundary()
    timings["train"] = time.perf_counter() - start
    delta = (side.detach() - main).cpu()
    hook = WiseSideMemory(hook_name("mlp_out", cfg.layer), delta, floor, cfg.act_ratio, act_fn, cfg.routing,
                          None if mask is None else mask.bool().cpu(), n,
                          torch.stack(memories).cpu() if memories else None, tuple(floors))
    info = {"layer": cfg.layer, "hook": hook.hook_name, "n_edits": hook.n_edits, "activation_floor": floor,
            "threshold": hook.threshold, "in_scope": [r["in_scope"] for r in runs], "steps": [r["steps"] for r in runs],
            "loss": [r["loss"] for r in runs], "nll": [r["nll"] for r in runs],
            "out_scope_last": [r["out_scope_last"] for r in runs], "prefixes": list(prefixes),
            "loc_prompts": [locs[(before + i) % len(locs)] for i in range(len(treqs))],
            "continues": memory.content_hash() if memory is not None else None, "seconds": timings}
    if memories or saved_at:
        info.update(memories=len(memories), memory_floors=list(floors), saved_at=saved_at, merged_at=merged_at)
    held_requests = list(memory.requests) if memory is not None else []
    return Edit("wise", {}, fingerprint, cfg.as_dict(), held_requests + [r.request.as_dict() for r in treqs], info,
                hooks={f"layer{cfg.layer}": hook})


__all__ = ["MERGE_ALGORITHMS", "WISEConfig", "WiseSideMemory", "context_texts", "gradient_mask", "margin_loss", "merge_deltas",
           "shard_mask", "wise"]
