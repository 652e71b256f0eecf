"""Query → value pathways of multi-hop prompts (ACE, ICLR 2026; spec A4).

For a dataset of prompts with their answers, at the last token of each prompt:

- **value score** of FFN neuron (l, i): the exact NLKA log-probability increase of the answer's
  first token (spec A3), summed over the dataset. Value layers: FFN layers ranked by the sum
  of their neurons' value scores. The ``n_value`` best neurons of layers ≥ ``min_value_layer``
  (default 1: a pathway needs an FFN layer below its value neuron) are the *value neurons*.
- **query contribution** of FFN neuron k in layer l' < l to value neuron (l, i): its output
  ``m_k · W_out^{l'}[k]`` dotted with the value neuron's input weights,
  ``c = (m_k W_out^{l'}[k]) · κ / σ_ln2``, κ = centre(γ_ln2^l ⊙ W_in^l[:, i]). **[choice]** The
  spec's ``v · W_in[:, i]`` with the block's input norm applied (gain γ, centring, this prompt's
  ln2 scale σ frozen): then ``c`` is exactly the amount the query neuron adds to the value
  neuron's pre-activation (for a model with folded norms it is the spec's dot product divided
  by σ, after centring; without input norms — OLMo-2 — γ is 1, σ is 1 and nothing is centred:
  the spec's dot product itself).
- **pathway weight** (k → v): ``c`` summed over the dataset; **query score** of k: the sum of
  its pathway weights over the value neurons. Query layers: FFN layers ranked by the sum of
  their neurons' query scores.

Rankings are best first by the signed sum (largest first): a weight or score can be negative (a
query neuron that lowers the value neuron's pre-activation, a value neuron that lowers the
answer's log-probability), and a negative sum ranks below a positive one, however large in
magnitude. Only layers with evidence are ranked: ``query_layers`` lists the layers holding at
least one nonzero pathway weight (never a layer at or above the highest value neuron's, whose
query score is 0 by construction); ``value_layers`` the layers with a nonzero value score
(every FFN layer, those below ``min_value_layer`` included: their neurons promote the answer
directly, they are only never chosen as value neurons). With no pathway at all (e.g. every value
neuron in layer 0) ``query_layers`` is empty and the repr and figure title say so (``WARNING``).

Every family (:mod:`interp_edit.adapter.readout`): for a **gated MLP** the value neuron's
pre-activation is its gate's, ``x W_gate[:, i]`` (κ from ``W_gate``: the nonlinearity acts there,
``mlp.hook_pre``); with **post-sublayer norms** (Gemma-2) the query neuron's output joins the
residual through ``ln2_post`` frozen at the prompt's scale, ``m_k W_out[k] ⊙ γ_post / σ_post``;
with a **residual multiplier** r (Granite) it joins as ``r · m_k W_out[k]``;
**parallel blocks** read ``resid_pre``, which holds exactly the FFN outputs of earlier layers,
as a sequential block's ``resid_mid`` does (plus its own attention). ``c`` stays the exact
amount the query neuron adds to the value neuron's pre-activation on every family.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp_edit.adapter import hook_name, norm_weight, run_with_cache
from interp_edit.adapter.readout import (
    ffn_base,
    ffn_gate_weight,
    input_scale,
    input_scale_names,
    write_gain,
    write_gain_names,
    write_weight,
    written,
)
from interp_edit.analysis.ablation import check_target
from interp_edit.analysis.attribution import (
    CHUNK_ELEMENTS,
    METHODS,
    Neuron,
    _base_logits,
    _centre,
    _layer_names,
    check_keep_bias,
    ffn_value_scores,
    frozen_unembed,
    resolve_target,
    shifted_by_directions,
)
from interp_edit.analysis.attribution_bounds import (
    certified_top_k,
    ranked,
    readout_gradients,
    score_upper_bounds,
    slack,
)
from interp_edit.batching import prompt_tokens
from interp_edit.errors import EmptyInputError, InvalidArgumentError
from interp_edit.validation import check_int, check_prompt_batch, check_sequence


@dataclass(frozen=True)
class Pathway:
    """A query → value pathway: an earlier FFN ``query`` neuron whose output the ``value``
    neuron reads, with the pathway's ``weight``: the amount the query neuron adds to the value
    neuron's pre-activation, summed over the prompts (see the module doc; it can be negative).

    >>> res = qv_pathways(model, ["Talvik Corlo was born in", "Sevko Sevdel was born in"], n_value=5, top_pathways=3)
    >>> p = res.pathways[0]
    >>> p.query.layer < p.value.layer, p.label == f"{p.query.label}→{p.value.label}"
    (True, True)
    """

    query: Neuron
    value: Neuron
    weight: float

    @property
    def label(self) -> str:
        return f"{self.query.label}→{self.value.label}"


@dataclass
class PathwayResult:
    """Dataset-level value / query scores of every FFN neuron, layer rankings (best first) and
    the ``top_pathways`` strongest query → value pathways (see the module doc).

    >>> res = qv_pathways(model, ["Talvik Corlo was born in", "Sevko Sevdel was born in"], n_value=5, top_pathways=3)
    >>> res.value_scores.shape, len(res.value_neurons), len(res.pathways)   # [layer, d_mlp]
    (torch.Size([6, 512]), 5, 3)
    >>> fig = res.plot()                         # or res.plot("layers")
    """

    prompts: tuple[str, ...]
    targets: tuple[str | int | None, ...]
    target_ids: Int[Tensor, " prompt"]
    value_scores: Float[Tensor, "layer d_mlp"]
    query_scores: Float[Tensor, "layer d_mlp"]
    value_layer_scores: Float[Tensor, " layer"]
    query_layer_scores: Float[Tensor, " layer"]
    value_neurons: tuple[Neuron, ...]
    pathway_weights: Float[Tensor, "layer d_mlp value"]
    pathways: list[Pathway]
    settings: dict = field(default_factory=dict)
    value_bounds: Float[Tensor, "layer d_mlp"] | None = None

    @property
    def value_layers(self) -> list[int]:
        """FFN layers with a nonzero value score, best value layer (largest signed sum) first."""
        return _ranked_layers(self.value_layer_scores, self.value_layer_scores != 0)

    @property
    def query_layers(self) -> list[int]:
        """FFN layers that hold a pathway (a nonzero pathway weight), best query layer (largest
        signed sum of query scores) first; empty when there is no pathway."""
        return _ranked_layers(self.query_layer_scores, self.pathway_weights.flatten(1).ne(0).any(1))

    def warnings(self) -> list[str]:
        """What makes the result misleading (shown in the repr and the figure title): no pathway."""
        if self.pathway_weights.ne(0).any():
            return []
        layers = sorted({v.layer for v in self.value_neurons})
        return [f"no query → value pathway: no FFN neuron below the value neurons (layers {layers}) adds to "
                "their pre-activations; query_layers is empty (raise min_value_layer or n_value)"]

    def layer_flow(self) -> Float[Tensor, "query_layer value_layer"]:
        """Summed positive weights of the top pathways by (query layer, value layer)."""
        n = self.value_scores.shape[0]
        flow = torch.zeros(n, n)
        for p in self.pathways:
            flow[p.query.layer, p.value.layer] += max(p.weight, 0.0)
        return flow

    def pathway_neurons(self, n: int | None = None) -> list[Neuron]:
        """The distinct query and value neurons of the best ``n`` pathways (for ablation)."""
        seen: dict[Neuron, None] = {}
        for p in self.pathways[:n]:
            seen.setdefault(p.query)
            seen.setdefault(p.value)
        return list(seen)

    def __repr__(self) -> str:
        from interp_edit.reprs import number, short_repr

        top = self.pathways[0] if self.pathways else None
        warnings = self.warnings()
        return short_repr("PathwayResult", WARNING=repr("; ".join(warnings)) if warnings else None,
                          prompts=str(len(self.prompts)), value_layers=str(self.value_layers[:3]),
                          query_layers=str(self.query_layers[:3]), pathways=str(len(self.pathways)),
                          top=f"{top.label} {number(top.weight, 3)}" if top else None)

    def plot(self, view: str = "sankey"):
        """A Plotly figure: ``sankey`` (layer → layer flow of the top pathways) or ``layers``
        (value / query layer scores). The title ends with the result's warnings, if any.

        >>> fig = qv_pathways(model, ["Talvik Corlo was born in"], n_value=5).plot("layers")
        """
        from interp_edit.viz.pathways import pathway_figure

        fig = pathway_figure(self, view)
        warnings = self.warnings()
        if warnings:
            fig.update_layout(title_text=f"{fig.layout.title.text}<br><b>WARNING: {'; '.join(warnings)}</b>")
        return fig

    def save(self, path: str | Path, view: str = "sankey") -> tuple[Path, Path]:
        from interp_edit.viz.export import save_figure

        return save_figure(self.plot(view), path)


@torch.no_grad()
def qv_pathways(
    model,
    prompts: Sequence[str],
    targets: Sequence[str | int | None] | None = None,
    *,
    n_value: int = 50,
    top_pathways: int = 50,
    min_value_layer: int = 1,
    keep_bias: bool = False,
    method: str = "exact",
    chunk_elements: int = CHUNK_ELEMENTS,
) -> PathwayResult:
    """Q-V pathways of a dataset (see the module doc). ``prompts``: a list of prompts (a lone
    string is refused, not split into characters). ``targets``: the answers (first token
    of a multi-token string; a token id; ``None``: the model's top-1). ``n_value`` and ``top_pathways`` are
    clipped to what exists. Every argument, prompt and target is checked before the first forward. One cached forward per prompt. ``method="first_order"``: value
    scores by their gradient approximation (see :func:`neuron_attribution`).
    ``method="exact_top_k"``: the value neurons, pathways and pathway weights of ``"exact"``
    (certified: only the neurons whose dataset-summed first-order upper bound could beat the
    ``n_value``-th exact summed score are scored exactly, each projected onto the vocabulary
    once for all prompts); ``value_scores`` are exact where scored and NaN elsewhere,
    ``value_bounds`` the upper bounds, and ``value_layer_scores`` (sums over *every* neuron of
    a layer, which only scoring every neuron gives exactly) are **upper bounds**: the exact
    score where scored, the bound elsewhere (``settings["value_layer_scores"]`` says so).

    >>> prompts = [r.prompt.format(r.subject) for r in records[:4]]
    >>> res = qv_pathways(model, prompts, [r.target_true for r in records[:4]], n_value=10, top_pathways=5)
    >>> res.value_layer_scores.shape, res.query_layer_scores.shape
    (torch.Size([6]), torch.Size([6]))
    >>> [p.label for p in res.pathways][:1]
    ['L...N...→L...N...']
    """
    # every argument and every prompt / target is checked before the first forward; errors name
    # the argument or the item (prompts[i], targets[i])
    prompts = check_sequence(prompts, "prompts", nonempty=False)  # a str is refused, not split into characters
    if not prompts:
        raise EmptyInputError("qv_pathways needs at least one prompt")
    check_prompt_batch(model, prompts, "prompts")  # each a non-blank str that fits the context
    targets = [None] * len(prompts) if targets is None else check_sequence(targets, "targets", nonempty=False)
    if len(targets) != len(prompts):
        raise InvalidArgumentError(f"{len(prompts)} prompts but {len(targets)} targets")
    for i, target in enumerate(targets):
        check_target(model, target, i)
    if not isinstance(method, str) or method not in METHODS:
        raise InvalidArgumentError(f"unknown method {method!r}; choose one of {METHODS}")
    check_int(n_value, "n_value", minimum=1)
    check_int(top_pathways, "top_pathways", minimum=1)
    check_int(chunk_elements, "chunk_elements", minimum=1)
    check_keep_bias(keep_bias)
    cfg = model.cfg
    n, d_mlp = cfg.n_layers, cfg.d_mlp
    check_int(min_value_layer, "min_value_layer", minimum=0, maximum=n - 1)
    names = _layer_names(model) + [hook_name("ln_final_scale")]
    names += [hook_name("mlp_post", layer) for layer in range(n)] + input_scale_names(model, "ln2")
    pruned = method == "exact_top_k"
    value_scores = torch.zeros(n, d_mlp, device=cfg.device)
    acts, inv_scales, target_ids, gains, readouts, bases, logit_scale = [], [], [], [], [], [], []
    for prompt, target in zip(prompts, targets, strict=True):
        logits, cache = run_with_cache(model, prompt_tokens(model, prompt), names)
        target_id, _ = resolve_target(model, target, logits[0, -1], prompt)
        readout = frozen_unembed(model, cache[hook_name("ln_final_scale")][0, -1].item(), keep_bias=keep_bias)
        acts.append(torch.stack([cache[hook_name("mlp_post", layer)][0, -1] for layer in range(n)]))
        if write_gain_names(model):
            gains.append(torch.stack([write_gain(model, cache, layer, "mlp")[0, -1] for layer in range(n)]))
        if pruned:  # the bounds now, exact scores of the candidates later (needs each prompt's base and readout)
            bases.append(torch.stack([ffn_base(model, cache, layer)[0, -1] for layer in range(n)]))
            readouts.append(readout)
            raw = _base_logits(readout, bases[-1])  # [layer, vocab]
            grads = readout_gradients(readout, raw, [target_id] * n) if readout.softcap is None else [None] * n
            value_scores += torch.stack([
                score_upper_bounds(readout, bases[-1][layer], written(write_weight(model, "W_out", layer), gains[-1][layer] if gains else None),
                                   acts[-1][layer][:, None], target_id, base_logits=raw[layer], gradient=grads[layer])[:, 0]
                for layer in range(n)])
            logit_scale.append(raw.abs().max().item())
        else:
            value_scores += ffn_value_scores(model, cache, readout, target_id, method=method, chunk_elements=chunk_elements)
        inv_scales.append(torch.stack([1.0 / input_scale(model, cache, "ln2", layer)[0, -1, 0] for layer in range(n)]))
        target_ids.append(target_id)
    acts_t, inv_t = torch.stack(acts), torch.stack(inv_scales)  # [prompt, layer, d_mlp], [prompt, layer]
    gains_t = torch.stack(gains) if gains else None  # [prompt, layer, d_model]

    n_value = min(n_value, (n - min_value_layer) * d_mlp)
    value_bounds, extra = None, {}
    if pruned:
        value_bounds = value_scores
        cert = certified_top_k(value_bounds[min_value_layer:].reshape(-1, 1),
                               lambda rows: _dataset_value_scores(model, readouts, bases, acts_t, gains_t, target_ids,
                                                                  rows + min_value_layer * d_mlp, chunk_elements),
                               n_value, name="n_value",
                               slack=sum(slack(scale) for scale in logit_scale))
        value_scores = torch.full_like(value_bounds, float("nan"))
        value_scores[min_value_layer:] = cert.scores.view(n - min_value_layer, d_mlp)
        order = cert.indices
        extra = dict(scored=cert.rows_scored, neurons=(n - min_value_layer) * d_mlp, rounds=cert.rounds,
                     value_layer_scores="upper bound: exact where scored, the bound elsewhere")
    else:
        order = ranked(value_scores[min_value_layer:].flatten(), n_value)[1]
    v_layer, v_unit = order // d_mlp + min_value_layer, order % d_mlp
    value_neurons = tuple(Neuron("ffn", int(lay), int(u)) for lay, u in zip(v_layer.tolist(), v_unit.tolist(), strict=True))
    weights = pathway_weights(model, acts_t, inv_t, v_layer, v_unit, gains_t)  # [layer, d_mlp, value]

    k = min(top_pathways, int((weights != 0).sum()))
    top = weights.flatten().topk(k) if k else None
    pathways = []
    if top is not None:
        per_layer = d_mlp * n_value
        for w, idx in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            q_layer, rest = divmod(idx, per_layer)
            unit, v = divmod(rest, n_value)
            pathways.append(Pathway(Neuron("ffn", q_layer, unit), value_neurons[v], w))
    query_scores = weights.sum(-1)
    return PathwayResult(
        prompts=tuple(prompts),
        targets=tuple(targets),
        target_ids=torch.tensor(target_ids),
        value_scores=value_scores.cpu(),
        query_scores=query_scores.cpu(),
        value_layer_scores=(value_scores if value_bounds is None else torch.where(value_scores.isnan(), value_bounds, value_scores)).sum(-1).cpu(),
        query_layer_scores=query_scores.sum(-1).cpu(),
        value_neurons=value_neurons,
        pathway_weights=weights.cpu(),
        pathways=pathways,
        settings=dict(n_value=n_value, top_pathways=top_pathways, min_value_layer=min_value_layer, keep_bias=keep_bias,
                      method=method, **extra),
        value_bounds=None if value_bounds is None else value_bounds.cpu(),
    )


def _ranked_layers(scores: Tensor, keep: Tensor) -> list[int]:
    """The layers where ``keep`` holds, largest signed ``scores`` first (ties by layer)."""
    order = scores.argsort(descending=True, stable=True).tolist()
    return [layer for layer in order if keep[layer]]


def _dataset_value_scores(model, readouts, bases, acts, gains, target_ids, rows: Tensor, chunk_elements: int) -> Tensor:
    """Exact value scores of FFN neurons ``rows`` (flat layer · d_mlp + unit) summed over the
    prompts. Without post-sublayer gains a neuron's direction differs between prompts only by
    1/σ*, so it is projected onto the vocabulary once per block of prompts, not once per prompt
    (a block's base logits stay below ``chunk_elements``)."""
    d_mlp, vocab = model.cfg.d_mlp, readouts[0].w_u.shape[1]
    out = torch.zeros(len(rows), 1, device=acts.device)
    layer_of = rows // d_mlp
    layers = layer_of.unique().tolist()
    step = max(1, chunk_elements // vocab)
    per_block = max(1, chunk_elements // (vocab * len(layers)))
    for first in range(0, len(readouts), per_block):
        block = range(first, min(first + per_block, len(readouts)))
        # [prompt, layer, vocab], as ffn_value_scores computes them (the same bits)
        raws = {p: dict(zip(layers, _base_logits(readouts[p], [bases[p][lay] for lay in layers]), strict=True)) for p in block}
        for layer in layers:
            sel = (layer_of == layer).nonzero().flatten()
            w_out = write_weight(model, "W_out", layer)
            for start in range(0, len(sel), step):
                part = sel[start : start + step]
                units = rows[part] % d_mlp
                unit_dirs = None if gains is not None else replace(readouts[0], scale=1.0).directions(w_out[units])
                for p in block:
                    readout = readouts[p]
                    dirs = unit_dirs / readout.scale if gains is None else readout.directions(written(w_out[units], gains[p, layer]))
                    out[part] += shifted_by_directions(raws[p][layer], dirs, acts[p, layer, units][:, None], target_ids[p],
                                                       readout.softcap)
    return out


def pathway_weights(
    model,
    acts: Float[Tensor, "prompt layer d_mlp"],
    inv_scales: Float[Tensor, "prompt layer"],
    v_layer: Int[Tensor, " value"],
    v_unit: Int[Tensor, " value"],
    gains: Float[Tensor, "prompt layer d_model"] | None = None,
) -> Float[Tensor, "layer d_mlp value"]:
    """Σ over prompts of ``m_k (W_out^{l'}[k] ⊙ g^{l'} · κ_v) / σ_ln2^{l_v}`` for every FFN
    neuron (l', k) and value neuron v = (l_v, i) with l' < l_v (zero otherwise); κ_v from
    ``W_gate`` for a gated MLP, ``W_in`` otherwise; g: the frozen post-norm gains at the last
    position (``gains``; none without post-sublayer norms)."""
    n = model.cfg.n_layers
    # scores are float32 whatever the model's dtype (interp_edit.precision)
    acts, inv_scales = acts.float(), inv_scales.float()
    gains = None if gains is None else gains.float()
    kappa = torch.stack([
        _centre(model, ffn_gate_weight(model, lay)[:, u].float() * norm_weight(model, "ln2", lay).float())
        for lay, u in zip(v_layer.tolist(), v_unit.tolist(), strict=True)
    ])  # [value, d_model]
    v_layer = v_layer.to(acts.device)
    out = torch.zeros(n, model.cfg.d_mlp, len(kappa), device=acts.device)
    for source in range(n - 1):
        later = v_layer > source
        if not later.any():
            continue
        w_out = write_weight(model, "W_out", source).float()
        if gains is None:
            proj = w_out @ kappa[later].T  # [d_mlp, value']
            # Σ_prompts m_k / σ_{l_v}: [d_mlp, value']
            summed = acts[:, source].T @ inv_scales[:, v_layer[later]]
            out[source][:, later] = proj * summed
        else:  # the gain differs per prompt: one projection per prompt
            total = torch.zeros(w_out.shape[0], int(later.sum()), device=acts.device)
            for p in range(acts.shape[0]):
                k_p = kappa[later] * gains[p, source] * inv_scales[p, v_layer[later], None]  # [value', d_model]
                total += acts[p, source][:, None] * (w_out @ k_p.T)
            out[source][:, later] = total
    return out
