"""Zero / mean ablation of FFN and attention neurons, to check what attribution finds.

- FFN neuron (l, i): ``mlp.hook_post[..., i]`` at every position is set to 0 or to its mean.
- Attention neuron (l, h, j) without ``pos``: ``attn.hook_z[..., h, j]`` (the head's output
  dimension j at every position); with ``pos = p``: that source position's contribution through
  dimension j of head h to every later position, ``α_h(q→p) · v_{g(h),p,j}``, is removed from
  ``hook_z[:, q, h, j]`` (mean: replaced by ``α_h(q→p) · mean v_{g(h),·,j}``), with the pattern
  and values of the same forward. g(h) is the key/value head query head h reads: under
  grouped / multi-query attention the shared value ``hook_v[:, p, g(h), j]`` is left alone, so
  only head h loses it (for multi-head attention this equals setting ``hook_v[:, p, h, j]``).

``mode="mean"``: the mean over every real (non-padding) position of every given prompt in the
unablated run. Prompts run in right-padded batches; hooks are removed even on an exception.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp_edit.adapter import hook_name, run_with_cache, run_with_hooks
from interp_edit.adapter.architecture import architecture
from interp_edit.analysis.attribution import Neuron, ScoredNeuron, resolve_target
from interp_edit.batching import pad_right
from interp_edit.errors import InvalidArgumentError
from interp_edit.validation import check_choice, check_int, check_prompt_batch, check_sequence, check_str

MODES = ("zero", "mean")


@dataclass
class AblationResult:
    """Target probability and top-1 token of each prompt before and after the ablation.

    ``probs_before`` / ``probs_after`` and ``top1_before`` / ``top1_after``: [prompt] tensors;
    ``drop``: the probability each prompt lost; ``accuracy_before`` / ``accuracy_after``: the
    share of prompts whose top-1 is the target.

    >>> res = ablate_neurons(model, [Neuron("ffn", 2, 7)], ["Talvik Corlo was born in"], ["Karsa"])
    >>> res.drop.shape, res.accuracy_before
    (torch.Size([1]), 1.0)
    >>> fig = res.plot()
    """

    prompts: tuple[str, ...]
    targets: tuple[str | int | None, ...]
    target_ids: Int[Tensor, " prompt"]
    neurons: tuple[Neuron, ...]
    mode: str
    probs_before: Float[Tensor, " prompt"]
    probs_after: Float[Tensor, " prompt"]
    top1_before: Int[Tensor, " prompt"]
    top1_after: Int[Tensor, " prompt"]

    @property
    def drop(self) -> Float[Tensor, " prompt"]:
        """Probability lost by the ablation, per prompt."""
        return self.probs_before - self.probs_after

    @property
    def mean_drop(self) -> float:
        return self.drop.mean().item()

    @property
    def accuracy_before(self) -> float:
        return (self.top1_before == self.target_ids).float().mean().item()

    @property
    def accuracy_after(self) -> float:
        return (self.top1_after == self.target_ids).float().mean().item()

    def __repr__(self) -> str:
        from interp_edit.reprs import number, short_repr

        return short_repr("AblationResult", mode=repr(self.mode), prompts=str(len(self.prompts)), neurons=str(len(self.neurons)),
                          mean_drop=number(self.mean_drop),
                          accuracy=f"{number(self.accuracy_before, 3)}→{number(self.accuracy_after, 3)}")

    def plot(self):
        """A Plotly figure: the target probability before and after the ablation, per prompt."""
        from interp_edit.viz.attribution import ablation_figure

        return ablation_figure(self)

    def save(self, path: str | Path) -> tuple[Path, Path]:
        from interp_edit.viz.export import save_figure

        return save_figure(self.plot(), path)


def _as_neuron(model, item, index: int) -> Neuron:
    """``neurons[index]`` as a Neuron whose fields are ints in range for the model (kind,
    layer, index; an attention neuron's head; a position, if given, >= 0); the error names
    ``neurons[index]``, its label and the field."""
    if isinstance(item, ScoredNeuron):
        item = item.neuron
    if not isinstance(item, Neuron):
        raise InvalidArgumentError(f"neurons[{index}] must be a Neuron or ScoredNeuron, got {item!r} ({type(item).__name__})")
    cfg, where = model.cfg, f"neurons[{index}] ({item.label})"
    check_choice(item.kind, f"{where} kind", ("ffn", "attn"))
    check_int(item.layer, f"{where} layer", minimum=0, maximum=cfg.n_layers - 1)
    if item.kind == "ffn":
        check_int(item.index, f"{where} index", minimum=0, maximum=cfg.d_mlp - 1)
    else:
        check_int(item.head, f"{where} head", minimum=0, maximum=cfg.n_heads - 1)
        check_int(item.index, f"{where} index (head dimension)", minimum=0, maximum=cfg.d_head - 1)
    if item.pos is not None:
        check_int(item.pos, f"{where} position", minimum=0)
    return item


def check_target(model, target, index: int) -> None:
    """A target is None (the top-1), a token id in the vocabulary, or a non-blank string."""
    if target is None:
        return
    if isinstance(target, int) and not isinstance(target, bool):
        check_int(target, "targets", minimum=0, maximum=model.cfg.d_vocab - 1, index=index)
    else:
        check_str(target, "targets", index=index)


def _sites(model, neurons: Sequence[Neuron]) -> tuple[dict[str, list[tuple[int, ...]]], dict[int, list[tuple[int, int, int]]]]:
    """Hook name -> index tuples (into the activation after the batch and position axes), and
    layer -> (source position, head, dimension) of the per-position attention neurons (each
    checked by :func:`_as_neuron`)."""
    sites: dict[str, list[tuple]] = {}
    positional: dict[int, list[tuple[int, int, int]]] = {}
    for nrn in neurons:
        if nrn.kind == "ffn":
            sites.setdefault(hook_name("mlp_post", nrn.layer), []).append((nrn.index,))
            continue
        if nrn.pos is None:
            sites.setdefault(hook_name("z", nrn.layer), []).append((nrn.head, nrn.index))
        else:
            entries = positional.setdefault(nrn.layer, [])
            if (nrn.pos, nrn.head, nrn.index) not in entries:  # a contribution is removed once
                entries.append((nrn.pos, nrn.head, nrn.index))
    return sites, positional


@torch.no_grad()
def ablate_neurons(
    model,
    neurons: Sequence[Neuron | ScoredNeuron],
    prompts: str | Sequence[str],
    targets: str | int | Sequence[str | int | None] | None = None,
    *,
    mode: str = "zero",
    batch_size: int = 64,
) -> AblationResult:
    """Ablate ``neurons`` together on every prompt; the target (default: each prompt's
    unablated top-1 token; a multi-token string: its first token) probability at the last
    position before and after.

    >>> top = neuron_attribution(model, "Talvik Corlo was born in", "Karsa", top_k=10).top_ffn
    >>> res = ablate_neurons(model, top, ["Talvik Corlo was born in"], ["Karsa"], mode="zero")
    >>> bool(res.mean_drop > 0)                  # the top value neurons carry the answer
    True
    """
    check_choice(mode, "mode", MODES)
    check_int(batch_size, "batch_size", minimum=1)
    prompts = [prompts] if isinstance(prompts, str) else prompts
    ids = check_prompt_batch(model, prompts, "prompts")  # every prompt a non-blank str that fits; errors name the index
    prompts = list(prompts)
    if targets is None or isinstance(targets, (str, int)):
        targets = [targets] * len(prompts)
    targets = check_sequence(targets, "targets")
    if len(targets) != len(prompts):
        raise InvalidArgumentError(f"{len(prompts)} prompts but {len(targets)} targets")
    for i, target in enumerate(targets):
        check_target(model, target, i)
    nrns = tuple(_as_neuron(model, n, i) for i, n in enumerate(check_sequence(neurons, "neurons")))
    sites, positional = _sites(model, nrns)
    mean_names = list(sites) + [hook_name("v", layer) for layer in positional]
    for i, (prompt, row) in enumerate(zip(prompts, ids, strict=True)):
        for nrn in nrns:
            if nrn.pos is not None and nrn.pos >= len(row):
                raise InvalidArgumentError(f"neuron {nrn.label}: position {nrn.pos} is beyond prompts[{i}] {prompt!r} "
                                           f"({len(row)} tokens)")

    batches = [pad_right(ids[i : i + batch_size], model.tokenizer.pad_token_id) for i in range(0, len(ids), batch_size)]
    device = model.cfg.device
    before, means = [], {name: 0.0 for name in mean_names}
    count = 0
    for tokens, lengths in batches:
        logits, cache = run_with_cache(model, tokens.to(device), mean_names)
        before.append(logits[torch.arange(len(lengths)), lengths.to(logits.device) - 1].float())
        real = (torch.arange(tokens.shape[1])[None, :] < lengths[:, None]).to(device)  # [batch, pos]
        for name in mean_names:
            means[name] = means[name] + cache[name][real].sum(0)
        count += int(lengths.sum())
    means = {name: total / count for name, total in means.items()}

    hooks = []  # per-position corrections of hook_z run before any whole-dimension ablation of it
    for layer, entries in positional.items():
        hooks += _positional_hooks(model, layer, entries, means[hook_name("v", layer)] if mode == "mean" else None)
    hooks += [(name, _ablation_hook(idx, means[name] if mode == "mean" else None)) for name, idx in sites.items()]
    after = []
    for tokens, lengths in batches:
        logits = run_with_hooks(model, tokens.to(device), hooks)
        after.append(logits[torch.arange(len(lengths)), lengths.to(logits.device) - 1].float())
    before_t, after_t = torch.cat(before), torch.cat(after)
    target_ids = torch.tensor([resolve_target(model, t, row, p)[0] for t, row, p in zip(targets, before_t, prompts, strict=True)])
    p_before = torch.softmax(before_t, -1).cpu()
    p_after = torch.softmax(after_t, -1).cpu()
    rows = torch.arange(len(prompts))
    return AblationResult(
        prompts=tuple(prompts),
        targets=tuple(targets),
        target_ids=target_ids,
        neurons=nrns,
        mode=mode,
        probs_before=p_before[rows, target_ids],
        probs_after=p_after[rows, target_ids],
        top1_before=p_before.argmax(-1),
        top1_after=p_after.argmax(-1),
    )


def _ablation_hook(index: list[tuple[int, ...]], mean: Tensor | None):
    """Set the indexed entries (after the batch and position axes) to zero or to ``mean``."""
    cols = [torch.tensor(c) for c in zip(*index, strict=True)]

    def hook(act: Tensor, hook) -> Tensor:
        act[(slice(None), slice(None), *cols)] = 0.0 if mean is None else mean[tuple(cols)].to(act.dtype)
        return act

    return hook


def _positional_hooks(model, layer: int, entries: list[tuple[int, int, int]], mean_v: Tensor | None) -> list[tuple[str, object]]:
    """Hooks that remove (zero) or replace by ``mean_v[g(h), j]`` (mean) the contribution of
    source position p through dimension j of query head h to ``hook_z[:, q, h, j]`` for every
    ``(p, h, j)`` of ``entries``: ``α_h(q→p) · (v_{g(h),p,j} − replacement)`` is subtracted,
    with the pattern and values of this forward (kept only for its duration)."""
    arch = architecture(model)
    seen: dict[str, Tensor] = {}

    def keep(act: Tensor, hook, name: str) -> Tensor:  # by the name asked for (bridge: hook.name is its own)
        seen[name] = act
        return act

    v_name, pattern_name = hook_name("v", layer), hook_name("pattern", layer)

    def correct(z: Tensor, hook) -> Tensor:
        v, pattern = seen.pop(v_name), seen.pop(pattern_name)  # [b, pos, kv, d], [b, head, q, k]
        grouped = v.shape[2] != arch.n_heads
        for p, h, j in entries:
            g = arch.kv_head(h) if grouped else h
            removed = v[:, p, g, j] if mean_v is None else v[:, p, g, j] - mean_v[g, j].to(v.dtype)  # [b]
            z[:, :, h, j] = z[:, :, h, j] - pattern[:, h, :, p] * removed[:, None]
        return z

    return [(v_name, functools.partial(keep, name=v_name)), (pattern_name, functools.partial(keep, name=pattern_name)),
            (hook_name("z", layer), correct)]
