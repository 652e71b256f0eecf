"""KN: knowledge neurons (Dai et al., ACL 2022), as EasyEdit runs it (``easyeditor/models/kn``,
built on EleutherAI's ``knowledge-neurons``).

For each request, with ``a = m^l`` the MLP neuron activations (``mlp.hook_post``) of layer ``l``
at the last token of a prompt, and ``P(α)`` the model's probability of the fact's **true**
target (``target_true``) when that position's activations of layer ``l`` are replaced by ``α·a``
(every other layer and position untouched):

1. **Attribute** (integrated gradients, a Riemann sum over ``steps`` points)::

       Attr(l, i) = a_i / steps · Σ_{k=0}^{steps−1} ∂P(α_k)/∂(α_k a_i),      α_k = k / (steps − 1)

   (EasyEdit's grid: ``linspace(0, 1, steps)``, both ends included, divided by ``steps``). One
   batched forward of the ``steps`` scaled copies per layer (in chunks of ``batch_size``), from
   that layer's cached residual stream on. A target of several tokens is teacher-forced: token
   ``j`` is attributed on ``prompt + true[:j]`` at its last position, and the attributions are
   averaged over the tokens.
2. **Select.** Per prompt the *coarse* neurons are those with ``Attr > adaptive_threshold ·
   max Attr`` (the max over every attributed layer). With ``refine`` the prompts are the
   request's prompt and its paraphrases and a neuron is kept when it is coarse in **more than**
   ``p · n_prompts`` of them; without (EasyEdit's setting) the prompt alone, every coarse neuron.
3. **Edit.** Each kept neuron's output row moves from the old answer to the new one::

       W_out^l[i] += new_scale · Σ_j V[new_j] − old_scale · Σ_j V[old_j]

   ``V``: the input embedding rows ``W_E[t]`` (``vectors="embedding"``, EasyEdit's ``wte``) or
   the unembedding columns ``W_U[:, t]`` (``"unembedding"``); ``new``: the tokens of
   ``target_new``; ``old``: the model's greedy continuation of the prompt, as many tokens as
   ``target_new`` has (``old="argmax"``, EasyEdit's), or the tokens of ``target_true``.

Several requests in one call are edited one after another (EasyEdit edits one request per
call): each is attributed on the model with the earlier requests' rows already written (inside
a scratch transaction); a row chosen by several requests carries the sum. The returned
:class:`Edit` holds one :class:`SparseRowDelta` per touched layer (``"blocks.{l}.mlp.W_out"``).
The model is unchanged by the call, also when it fails.

Not :func:`interp_edit.analysis.attribution.neuron_attribution`: that scores a neuron by its
*direct* effect (``m_i · W_out[i]`` read through the frozen final norm, one forward, a log-prob
difference); KN integrates the gradient of the target *probability* through every later layer,
one forward per layer and step. They coincide only for a neuron of the last layer with a linear
readout, and not in general.

**Deviations from EasyEdit** (all but the first are differences in cases EasyEdit handles
oddly): (a) the activation attributed is the neuron's *output* ``mlp.hook_post``, the paper's
(EasyEdit patches GPT-2's ``c_fc`` output, the *pre*-GELU value, and Llama's ``gate_proj``
output); ``activation="pre"`` attributes ``mlp.hook_pre`` as EasyEdit does on GPT-2.
(b) a multi-token true target is teacher-forced (EasyEdit on GPT-2 scores every target token at
the same last prompt position). (c) ``old_scale`` multiplies the old direction whatever its
length (EasyEdit: 2 for a one-token greedy continuation, 1 per token for several; its target is
always added once, ``new_scale = 1``). (d) several requests per call (above). EasyEdit's
``lr_scale`` and ``n_toks`` hyper-parameters are read by nothing in its KN code and are not
fields here.

KN is weak as an editor: the neurons are located for the *old* answer and the edit only swaps
an embedding direction in their output rows (see ``docs/editing.md`` for the toy-world numbers).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from interp_edit.adapter import (
    forward_to_layer,
    frozen_parameters,
    get_parameter,
    hook_name,
    model_fingerprint,
    residual_from_layer,
    unembed,
)
from interp_edit.editing.closed_form import w_out_name
from interp_edit.editing.config import preset_config, resolve
from interp_edit.editing.edit import Edit, SparseRowDelta
from interp_edit.editing.requests import prepare_requests
from interp_edit.errors import EditConfigError, EditRequestError, InterpEditError
from interp_edit.precision import add_delta_

ACTIVATIONS = {"post": "mlp_post", "pre": "mlp_pre"}
VECTORS = ("embedding", "unembedding")
OLD_TOKENS = ("argmax", "target_true")


@dataclass(frozen=True)
class KNConfig:
    """KN's settings. Defaults are EasyEdit's GPT-2 XL hyper-parameters (``hparams/KN/gpt2-xl.yaml``:
    ``steps`` 20, ``batch_size`` 20, ``adaptive_threshold`` 0.2, ``p`` 0.4, ``refine`` false) and
    its edit rule (subtract 2 × the greedy answer's embedding, add the new target's once).
    GPT-J's preset differs only by ``adaptive_threshold`` 0.1. Not an ``EditorConfig``: KN
    optimises no target vector and reads no key statistics (as FiNE and GRACE).

    >>> cfg = KNConfig.for_model(model, steps=10)
    >>> cfg.preset, cfg.steps, cfg.adaptive_threshold
    ('toyworld', 10, 0.2)
    """

    #: Riemann-sum points of the integrated gradient (α = linspace(0, 1, steps))
    steps: int = 20
    #: scaled copies per forward (EasyEdit: ``batch_size``, it must divide ``steps`` there)
    batch_size: int = 20
    #: a neuron is coarse when its attribution exceeds this share of the prompt's largest
    adaptive_threshold: float = 0.2
    #: ``refine``: kept when coarse in more than ``p`` · (number of prompts) prompts
    p: float = 0.4
    #: attribute the prompt and its paraphrases and keep the neurons shared (the paper's
    #: refinement); False (EasyEdit): the prompt alone, every coarse neuron
    refine: bool = False
    #: layers attributed and edited; None: every layer (EasyEdit)
    layers: tuple[int, ...] | None = None
    #: the activation scaled: ``"post"`` (``mlp.hook_post``, the paper's) or ``"pre"``
    #: (``mlp.hook_pre``, what EasyEdit patches on GPT-2)
    activation: str = "post"
    #: the directions written: ``"embedding"`` (``W_E`` rows, EasyEdit) or ``"unembedding"`` (``W_U`` columns)
    vectors: str = "embedding"
    #: the answer erased: ``"argmax"`` (the greedy continuation, EasyEdit) or ``"target_true"``
    old: str = "argmax"
    #: factor of the old answer's direction subtracted (EasyEdit: 2 for a one-token answer)
    old_scale: float = 2.0
    #: factor of the new target's direction added (EasyEdit: 1)
    new_scale: float = 1.0
    #: the preset these settings started from (see :func:`interp_edit.editing.config.preset_config`)
    preset: str | None = None

    PRESETS: ClassVar[MappingProxyType] = MappingProxyType({
        "gpt2-xl": {},
        "gpt-j-6B": {"adaptive_threshold": 0.1},
        # EasyEdit's settings, unchanged. 20 person facts, single edits: efficacy / paraphrase /
        # neighbourhood 0.15 / 0.12 / 0.94 (unedited 0 / 0 / 1). No setting tried is good at
        # both ends: W_U columns (the toy model's embeddings are untied) at scales new/old
        # 0.1/0.2, 0.25/0.5, 0.5/1, 1/2: 0.05/0.09/0.93, 0.75/0.80/0.24, 1.00/1.00/0.01,
        # 1.00/1.00/0.00; refine over the paraphrases (p 0.4): 0.05/0.08/0.97
        "toyworld": {},
    })

    @classmethod
    def generic(cls, model) -> dict[str, Any]:
        return {}

    def __post_init__(self) -> None:
        from interp_edit.validation import check_fields

        check_fields(self, EditConfigError, in_place=True)

    @classmethod
    def for_model(cls, model, **overrides: Any) -> KNConfig:
        """The preset for ``model`` with ``overrides``."""
        return preset_config(cls, model, overrides)

    def validate(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise EditConfigError(f"field {name!r} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.steps < 2:
            raise EditConfigError(f"field 'steps' must be >= 2 (the grid runs from 0 to 1), got {self.steps!r}")
        if not 0 < self.adaptive_threshold <= 1:
            raise EditConfigError(f"field 'adaptive_threshold' must lie in (0, 1], got {self.adaptive_threshold!r}")
        if not 0 <= self.p < 1:
            raise EditConfigError(f"field 'p' must lie in [0, 1), got {self.p!r}")
        if self.activation not in ACTIVATIONS:
            raise EditConfigError(f"field 'activation' must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.vectors not in VECTORS:
            raise EditConfigError(f"field 'vectors' must be one of {list(VECTORS)}, got {self.vectors!r}")
        if self.old not in OLD_TOKENS:
            raise EditConfigError(f"field 'old' must be one of {list(OLD_TOKENS)}, got {self.old!r}")
        for name in ("old_scale", "new_scale"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise EditConfigError(f"field {name!r} must be a finite number >= 0, got {getattr(self, name)!r}")
        if self.layers is not None and (not self.layers or len(set(self.layers)) != len(self.layers)):
            raise EditConfigError(f"field 'layers' must be None or distinct layers, got {self.layers!r}")

    def check_model(self, model) -> None:
        n = model.cfg.n_layers
        if self.layers is not None and any(not 0 <= layer < n for layer in self.layers):
            raise EditConfigError(f"field 'layers': {list(self.layers)} outside this {n}-layer model's 0..{n - 1}")

    def edit_layers(self, model) -> list[int]:
        return sorted(self.layers) if self.layers is not None else list(range(model.cfg.n_layers))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def kn_attribution(model, prompt_ids, target_ids, layers, *, steps: int = 20, batch_size: int = 20,
                   activation: str = "post") -> Float[Tensor, "layer d_mlp"]:
    """KN's integrated-gradient attribution of every MLP neuron of ``layers`` to the probability
    of ``target_ids`` after ``prompt_ids`` (BOS first), on the model as it is now (see the
    module docstring). Rows follow ``layers``."""
    device = model.cfg.device
    site = ACTIVATIONS[activation]
    alphas = torch.linspace(0, 1, steps, device=device)
    total = None
    for j, target in enumerate(target_ids):
        tokens = torch.tensor([list(prompt_ids) + list(target_ids[:j])], device=device)
        pos = tokens.shape[1] - 1
        names = [(hook_name("resid_pre", layer), hook_name(site, layer)) for layer in layers]
        with torch.no_grad():
            cache = forward_to_layer(model, tokens, max(layers) + 1, [n for pair in names for n in pair])
        rows = []
        for layer, (resid_name, act_name) in zip(layers, names, strict=True):
            base = cache[act_name][0, pos].float()  # [d_mlp]
            grad_sum = torch.zeros_like(base)
            for chunk in alphas.split(batch_size):
                scaled = (chunk[:, None] * base[None]).requires_grad_(True)

                def patch(act, hook, scaled=scaled, pos=pos):
                    act = act.clone()
                    act[:, pos] = scaled.to(act.dtype)
                    return act

                start = cache[resid_name].expand(len(chunk), -1, -1)
                with frozen_parameters(model), torch.enable_grad():
                    final = residual_from_layer(model, start, layer, [(act_name, patch)])
                    logits = unembed(model, model.ln_final(final[:, pos:pos + 1]))[:, 0].float()
                    prob = torch.softmax(logits, -1)[:, target]
                    (grad,) = torch.autograd.grad(prob.sum(), scaled)
                grad_sum += grad.sum(0)
            rows.append(grad_sum * base / steps)
        scores = torch.stack(rows)
        total = scores if total is None else total + scores
    return total / len(target_ids)


def coarse_neurons(scores: Float[Tensor, "layer d_mlp"], adaptive_threshold: float) -> list[tuple[int, int]]:
    """(row, neuron) of ``scores`` above ``adaptive_threshold`` × its max (EasyEdit's coarse
    neurons of one prompt)."""
    threshold = scores.max().item() * adaptive_threshold
    return [tuple(x) for x in torch.nonzero(scores > threshold).tolist()]


def refine_neurons(coarse: list[list[tuple[int, int]]], p: float, refine: bool) -> list[tuple[int, int]]:
    """The neurons kept from each prompt's coarse ones: with ``refine`` those coarse in more
    than ``p · len(coarse)`` prompts, else all of them (sorted)."""
    counts = Counter(n for neurons in coarse for n in set(neurons))
    keep = [n for n, c in counts.items() if c > p * len(coarse)] if refine else list(counts)
    return sorted(keep)


def _prompt_ids(model, text: str, subject: str, index: int) -> tuple[int, ...]:
    from interp_edit.prompts import tokenize_with_subject

    try:
        return tuple(tokenize_with_subject(model.tokenizer, text, subject).tokens)
    except InterpEditError as err:
        raise EditRequestError(f"request {index}: paraphrase {text!r}: {err}") from None


def _direction(model, ids, vectors: str) -> Tensor:
    ids = torch.tensor(list(ids), device=model.cfg.device)
    rows = model.W_E.detach()[ids] if vectors == "embedding" else model.W_U.detach()[:, ids].T
    return rows.double().sum(0)


@torch.no_grad()
def _greedy(model, prompt_ids, n: int) -> tuple[int, ...]:
    ids = list(prompt_ids)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids], device=model.cfg.device), return_type="logits")[0, -1].argmax()))
    return tuple(ids[len(prompt_ids):])


def kn(model, requests, config: KNConfig | None = None, *, corpus=None, cache_dir=None, progress: bool = False,
       **overrides) -> Edit:
    """KN edit(s) of ``requests`` (EditRequests, CounterFact records or dicts, each with a
    ``target_true``), one after another (see the module docstring). The model is unchanged;
    apply the returned :class:`Edit` with ``edit.apply(model)``. ``edit.info`` holds per request
    the neurons kept (``neurons``: ``[layer, neuron]``), their attribution on the request's prompt
    (``attributions``), the coarse count per prompt, the largest attribution, the old and new
    tokens, and the seconds. (``corpus`` / ``cache_dir`` are accepted for a uniform call and
    unused: KN needs no statistics.)

    >>> e = kn(model, records[:1], steps=4, batch_size=4)
    >>> {row["kind"] for row in e.summary()}               # a few W_out rows
    {'sparse_rows'}
    >>> len(e.info["neurons"][0]) == len(e.info["attributions"][0]) > 0
    True
    """
    cfg = resolve(KNConfig, model, config, overrides)  # its fields checked against the model too
    fingerprint = model_fingerprint(model)
    treqs = prepare_requests(model, requests, fingerprint)
    for r in treqs:
        if r.request.target_true is None:
            raise EditRequestError(f"request {r.index}: KN needs 'target_true' (the answer whose neurons it locates)")
    from interp_edit.prompts import encode_target

    plans = []
    for r in treqs:  # tokenise everything first: a bad paraphrase is refused before any forward
        prompts = [r.prompt_ids]
        if cfg.refine:
            prompts += [_prompt_ids(model, text, r.request.subject, r.index) for text in r.request.paraphrases]
        true_ids = encode_target(model.tokenizer, r.request.target_true, r.request.text)
        plans.append((r, prompts, true_ids))
    layers = cfg.edit_layers(model)
    totals: dict[tuple[int, int], Tensor] = {}
    originals: dict[tuple[int, int], Tensor] = {}
    info: dict[str, list] = {"neurons": [], "attributions": [], "coarse": [], "max_attribution": [],
                             "old_tokens": [], "new_tokens": [], "seconds": []}
    iterator = plans
    if progress:
        from interp_edit.progress import progress_bar

        iterator = progress_bar(plans, desc="KN")
    try:
        for r, prompts, true_ids in iterator:
            start = time.perf_counter()
            scores = [kn_attribution(model, ids, true_ids, layers, steps=cfg.steps, batch_size=cfg.batch_size,
                                     activation=cfg.activation) for ids in prompts]
            coarse = [coarse_neurons(s, cfg.adaptive_threshold) for s in scores]
            kept = refine_neurons(coarse, cfg.p, cfg.refine)
            old_ids = _greedy(model, r.prompt_ids, len(r.target_ids)) if cfg.old == "argmax" else true_ids
            delta = cfg.new_scale * _direction(model, r.target_ids, cfg.vectors) - cfg.old_scale * _direction(model, old_ids, cfg.vectors)
            neurons = [(layers[row], neuron) for row, neuron in kept]
            with torch.no_grad():
                for layer, neuron in neurons:
                    weight = get_parameter(model, w_out_name(layer)).data
                    if (layer, neuron) not in originals:
                        originals[(layer, neuron)] = weight[neuron].clone()
                    add_delta_(weight[neuron], delta.to(weight.device))
                    totals[(layer, neuron)] = totals.get((layer, neuron), 0.0) + delta.cpu()
            info["neurons"].append([list(n) for n in neurons])
            info["attributions"].append([float(scores[0][row, neuron]) for row, neuron in kept])
            info["coarse"].append([len(c) for c in coarse])
            info["max_attribution"].append(float(scores[0].max()))
            info["old_tokens"].append(list(old_ids))
            info["new_tokens"].append(list(r.target_ids))
            info["seconds"].append(time.perf_counter() - start)
    finally:
        with torch.no_grad():
            for (layer, neuron), original in originals.items():
                get_parameter(model, w_out_name(layer)).data[neuron] = original
    deltas = {}
    for layer in sorted({layer for layer, _ in totals}):
        rows = sorted(n for lay, n in totals if lay == layer)
        deltas[w_out_name(layer)] = SparseRowDelta(torch.tensor(rows, dtype=torch.long),
                                                   torch.stack([totals[(layer, n)] for n in rows]).float())
    return Edit("kn", deltas, fingerprint, cfg.as_dict(), [r.request.as_dict() for r in treqs], info)


__all__ = ["KNConfig", "coarse_neurons", "kn", "kn_attribution", "refine_neurons"]
