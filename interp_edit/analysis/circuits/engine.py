"""The edge engine: a task's tokens and metric, the hook points of the edge graph, and the two
kinds of forward every circuit score is built from.

- :func:`masked_forward`: a forward in which receiver ``r`` of row ``i`` reads, for every
  sender ``s`` with ``mask[i, s, r] = 1``, the source run's output of ``s`` instead of this
  run's (``input_r + Σ_s mask · (source_s − current_s)``); one row per patched edge gives exact
  edge patching, one row per circuit gives a circuit's faithfulness.
- :func:`receiver_gradients`: one forward + backward giving ∂metric/∂(every receiver input)
  and every sender's output, for a whole batch of prompts.

Both run inside :func:`edge_hook_mode`, which turns on the TransformerLens options that give
every head its own output (``use_attn_result``) and its own q / k / v input
(``use_split_qkv_input``), and the MLP its own input (``use_hook_mlp_in``), and restores the
model's settings afterwards, also on an exception. Hook names and switches come from the
adapter (:func:`~interp_edit.adapter.hooks.hook_name`,
:func:`~interp_edit.adapter.hooks.set_hook_switches`), on either backend.

**Backends.** On a HookedTransformer the switches are config fields. A TransformerBridge turns
them on through its setters, and forks the q / k / v inputs before ``ln1`` per head as
HookedTransformer does, with the block-level names (``blocks.L.hook_q_input``); a bridge whose
TransformerLens or attention cannot (no setters, an attention bridge without TransformerLens'
per-head fork, gated attention, ``use_attn_in`` on) is refused by :func:`check_edge_model`
before any forward, naming what it lacks
(:func:`~interp_edit.adapter.bridge.edge_hooks_missing`), its settings untouched.

**Post-sublayer norms** (Gemma-2, Gemma-3: ``architecture(model).post_norms``). A block adds
``N(Σ_h result_h + b_O)`` to the residual, ``N(x) = γ · x / scale(x)`` an RMSNorm, so no head's
term is separable by itself. Named choice, the *frozen-scale share*: head ``h``'s sender output
is ``γ · result_h / scale``, with ``scale`` the norm's scale on this run's whole attention
output (``ln1_post.hook_scale``) and γ the gain as it multiplies (Gemma's ``1 + w``;
:func:`~interp_edit.adapter.hooks.post_norm_scale`). The shares and the bias term
``γ · b_O / scale`` (no sender, as ``b_O`` is none without post-norms; Gemma has no ``b_O``) sum
to exactly what the block adds (``hook_attn_out``). An MLP's output is its post-normed output
(``hook_mlp_out``, what the block adds). A patch is applied at the receiver, so the norm is
not recomputed for it: exact edge patching of ``s → r`` moves ``r``'s input by the change of
``s``'s share, and EAP's first-order term ``Δ_s · ∂M/∂x_r`` is that forward's first-order term.
EAP-IG over activations moves a layer's heads along the straight path of their shares (the
block's normed attention output moves by the change of their sum). The reference
implementation (hannamw/EAP-IG) has no post-norm handling; this is interp_edit's definition.
Only RMSNorm post-norms are covered (the families that have them).

**Residual multiplier** (Granite: ``architecture(model).residual_multiplier`` r). A block adds
``r · (Σ_h result_h + b_O)`` and ``r · mlp``: a head's sender output is ``r · result_h``
(``hook_attn_out`` and ``hook_mlp_out`` are after the multiplication; TransformerLens 4.3's
bridge shows ``hook_result`` after it too, an older one before it:
:func:`~interp_edit.adapter.bridge.result_hook_scale`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp_edit.adapter import hook_name
from interp_edit.analysis.circuits.graph import EdgeGraph
from interp_edit.analysis.scoring import Target, encode_target, score_logits, score_positions
from interp_edit.errors import InvalidArgumentError, UnsupportedArchitectureError

#: the metrics a circuit is scored with; ``kl`` is KL(p_clean ‖ p_run) at the scored positions
METRICS = ("logit_diff", "prob", "logprob", "kl")

#: the adapter's sites (:func:`~interp_edit.adapter.hooks.hook_name`) of the edge-level hook
#: points, by receiver kind; they exist only under :func:`edge_hook_mode`
_EDGE_SITES = {"result": "result", "q": "q_input", "k": "k_input", "v": "v_input", "mlp": "mlp_in"}


def check_edge_model(model) -> None:
    """Raise :class:`UnsupportedArchitectureError` for a model whose edges this engine cannot
    separate (before any forward; nothing is changed)."""
    from interp_edit.adapter import bridge
    from interp_edit.adapter.architecture import architecture

    arch = architecture(model)
    if bridge.is_bridge(model):
        why = bridge.edge_hooks_missing(model)
        if why is not None:
            raise UnsupportedArchitectureError(
                f"circuits need per-head results and q/k/v inputs (use_attn_result, use_split_qkv_input) and MLP "
                f"inputs (use_hook_mlp_in): {why}")
    if arch.post_norms and arch.norm != "rmsnorm":
        raise UnsupportedArchitectureError(
            f"model {arch.family!r} has {arch.norm} post-sublayer norms: the circuits' frozen-scale shares of a "
            "post-norm are defined for RMSNorm only")
    if arch.grouped_query and getattr(model.cfg, "ungroup_grouped_query_attention", False):
        raise UnsupportedArchitectureError(
            "ungroup_grouped_query_attention=True gives every query head its own key/value input; "
            "the edge graph has one per key/value head: load the model without it")


@contextlib.contextmanager
def edge_hook_mode(model, results: bool = True):
    """The model with per-head results (``results``: not needed where no sender is read),
    split q/k/v inputs and MLP-input hooks; its settings (and hooks) are as before on leaving,
    also on an exception."""
    from interp_edit.adapter.bridge import shared_norm_mlp_inputs
    from interp_edit.adapter.hooks import hook_switches, set_hook_switches

    check_edge_model(model)
    before = hook_switches(model)
    try:
        set_hook_switches(model, {name: results or name != "use_attn_result" for name in before})
        with shared_norm_mlp_inputs(model):
            yield model
    finally:
        set_hook_switches(model, before)


@dataclass(frozen=True, eq=False)
class SenderGroup:
    """Senders written to the residual stream together: the input, a layer's heads, a layer's MLP.

    ``read``: the hook names whose activations give the senders' outputs, in forward order (the
    last completes them); ``write``: the hook whose activation holds the group's outputs (with a
    head axis: one per head) — or, where ``summed``, their sum plus the terms no sender owns
    (the heads of a post-norm block: ``hook_attn_out``); ``gain``: the post-norm's gain."""

    senders: slice
    heads: bool
    read: tuple[str, ...]
    write: str
    summed: bool = False
    gain: Tensor | None = None
    #: the residual multiplier a head's result is scaled by on its way into the residual (Granite)
    factor: float = 1.0

    def outputs(self, acts: Sequence[Tensor]) -> Tensor:
        """The senders' outputs [row, pos, sender, d_model] (float) from the activations at
        :attr:`read`: a post-norm block's heads ``γ · result_h / scale`` (the module docstring),
        times the residual multiplier where there is one."""
        if self.gain is not None:
            result, scale = acts
            out = self.gain.float() * result.float() / scale.float().unsqueeze(-1)
        else:
            act = acts[-1]
            out = (act if self.heads else act.unsqueeze(2)).float()
        return out if self.factor == 1.0 else out * self.factor


def sender_groups(model, graph: EdgeGraph) -> list[SenderGroup]:
    """Every sender group, in forward order."""
    from interp_edit.adapter.architecture import architecture
    from interp_edit.adapter.bridge import result_hook_scale
    from interp_edit.adapter.hooks import post_norm_scale

    arch = architecture(model)
    post = arch.post_norms
    out = [SenderGroup(graph.layer_senders("input", None), False, (hook_name("resid_pre", 0),), hook_name("resid_pre", 0))]
    for layer in range(graph.n_layers):
        result = hook_name(_EDGE_SITES["result"], layer)
        heads = graph.layer_senders("head", layer)
        factor = arch.residual_multiplier / result_hook_scale(model, layer)
        if post:
            scale, gain = post_norm_scale(model, "attn", layer)
            out.append(SenderGroup(heads, True, (result, scale), hook_name("attn_out", layer), True, gain, factor))
        elif factor != 1.0:  # hook_result is before the multiplier, hook_attn_out after it
            out.append(SenderGroup(heads, True, (result,), hook_name("attn_out", layer), True, None, factor))
        else:
            out.append(SenderGroup(heads, True, (result,), result))
        mlp = hook_name("mlp_out", layer)
        out.append(SenderGroup(graph.layer_senders("mlp", layer), False, (mlp,), mlp))
    return out


def sender_read_hooks(model, graph: EdgeGraph, fn: Callable[[SenderGroup, Tensor], None]) -> list[tuple[str, Callable]]:
    """Forward hooks that call ``fn(group, outputs)`` once a forward has computed each sender
    group's outputs (:meth:`SenderGroup.outputs`); they change no activation."""
    hooks = []
    for group in sender_groups(model, graph):
        store: list[Tensor] = []

        def keep(act, hook, store=store):
            store.append(act)

        def done(act, hook, group=group, store=store):
            acts = [*store, act]
            store.clear()
            fn(group, group.outputs(acts))

        hooks += [(name, keep) for name in group.read[:-1]] + [(group.read[-1], done)]
    return hooks


def receiver_hooks(graph: EdgeGraph) -> list[tuple[str, slice, bool]]:
    """(hook name, receiver slice, has a head axis) for every receiver group."""
    out = []
    for layer in range(graph.n_layers):
        for kind in ("q", "k", "v"):
            out.append((hook_name(_EDGE_SITES[kind], layer), graph.layer_receivers(kind, layer), True))
        out.append((hook_name(_EDGE_SITES["mlp"], layer), graph.layer_receivers("mlp", layer), False))
    out.append((hook_name("resid_post", graph.n_layers - 1), graph.layer_receivers("logits", None), False))
    return out


# --- the task -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """Clean and corrupted prompts (BOS first, right-padded; each pair of one length), their
    targets and the metric. Right padding is exact: a causal model's real positions never read
    the padding."""

    clean_prompts: tuple[str, ...]
    corrupted_prompts: tuple[str, ...]
    clean: Int[Tensor, "prompt pos"]
    corrupted: Int[Tensor, "prompt pos"]
    targets: tuple[Target, ...]
    positions: tuple[tuple[int, ...], ...]
    metric: str
    #: log-probabilities of the clean run at each prompt's scored positions (for ``kl``)
    clean_logprobs: tuple[Tensor, ...]
    #: per prompt: whether the clean run's top-1 token at the first scored position is the
    #: target's first token (empty: not checked)
    clean_prefers: tuple[bool, ...] = ()
    #: what the first-token rule of ``logit_diff`` cut (:func:`first_token`): one note per
    #: multi-token answer or foil
    notes: tuple[str, ...] = ()

    @property
    def prefers_target(self) -> bool | None:
        """Whether the clean run prefers the target on every prompt (None: not checked)."""
        return all(self.clean_prefers) if self.clean_prefers else None

    @property
    def n_prompts(self) -> int:
        return len(self.targets)

    def metric_rows(self, logits: Float[Tensor, "row pos vocab"], row_prompt: Int[Tensor, " row"]) -> Float[Tensor, " row"]:
        """The metric of each row (row ``i`` is a run of prompt ``row_prompt[i]``); differentiable."""
        out = torch.zeros(logits.shape[0], device=logits.device)
        for i in range(self.n_prompts):
            rows = (row_prompt == i).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            scored = logits[rows][:, list(self.positions[i])]
            if self.metric == "kl":
                ref = self.clean_logprobs[i]
                values = (ref.exp() * (ref - torch.log_softmax(scored.float(), -1))).sum((-1, -2))
            else:
                values = score_logits(scored, self.targets[i], self.metric)
            out = out.index_copy(0, rows, values.float())
        return out

    def mean_metric(self, logits: Float[Tensor, "prompt pos vocab"]) -> Tensor:
        return self.metric_rows(logits, torch.arange(self.n_prompts, device=logits.device)).mean()


def as_prompt_list(value, name: str) -> list[str]:
    from interp_edit.validation import check_sequence, check_str

    items = [value] if isinstance(value, str) else check_sequence(value, name)
    for i, item in enumerate(items):
        check_str(item, name, index=i if not isinstance(value, str) else None)
    return items


def _as_targets(value, name: str, n: int) -> list[str | None]:
    from interp_edit.validation import check_sequence, check_str

    if value is None or isinstance(value, str):
        check_str(value, name, optional=True)
        return [value] * n
    items = check_sequence(value, name)
    if len(items) != n:
        raise InvalidArgumentError(f"{name} has {len(items)} entries but there are {n} prompts")
    for i, item in enumerate(items):
        check_str(item, name, index=i)
    return items


def check_arguments(clean, corrupted, answer, foil, metric) -> tuple[list[str], list[str], list, list]:
    """Every argument of a task checked, nothing run: the lists of prompts, answers and foils."""
    from interp_edit.validation import check_choice

    check_choice(metric, "metric", METRICS)
    cleans, corrupts = as_prompt_list(clean, "clean"), as_prompt_list(corrupted, "corrupted")
    if len(cleans) != len(corrupts):
        raise InvalidArgumentError(f"clean has {len(cleans)} prompts but corrupted has {len(corrupts)}")
    answers = _as_targets(answer, "answer", len(cleans))
    foils = _as_targets(foil, "foil", len(cleans))
    return cleans, corrupts, answers, foils


def first_token(tokenizer, text: str, name: str, index: int, prompt: str) -> tuple[int, str | None]:
    """The token ``logit_diff`` scores for the answer or foil ``text`` of prompt ``index``, and
    a note when ``text`` is several tokens. The rule is :mod:`interp_edit.analysis.scoring`'s
    (``logit(t_0) − logit(foil)`` at the last prompt token, first token only), as in
    ``neuron_attribution`` / ``interp-edit attribute --target``: a multi-token answer or foil is
    scored by its first token, and the note says so (``EdgeScores.target_notes``)."""
    ids = encode_target(tokenizer, text, prompt)
    if len(ids) == 1:
        return ids[0], None
    return ids[0], (f"{name} {text!r} of prompt {index} is {len(ids)} tokens; logit_diff scores its first token "
                    f"{tokenizer.decode([ids[0]])!r}")


def notes_repr(notes: Sequence[str]) -> str | None:
    """A result's repr ``note=`` value: the first target note and how many more (None: none)."""
    if not notes:
        return None
    return repr(notes[0] + ("" if len(notes) == 1 else f" (+{len(notes) - 1} more)"))


@torch.no_grad()
def prepare_task(model, clean, corrupted, answer=None, foil=None, metric: str = "logit_diff") -> Task:
    """Tokenise and check a task; the answer defaults to the clean run's top token and the
    foil (``logit_diff``) to the corrupted run's. With ``logit_diff`` a multi-token answer or
    foil is scored by its first token (:func:`first_token`; ``Task.notes`` says so); the other
    metrics teacher-force a multi-token answer. Errors name the prompt's index."""
    from interp_edit.batching import pad_right
    from interp_edit.validation import check_prompt_batch

    cleans, corrupts, answers, foils = check_arguments(clean, corrupted, answer, foil, metric)
    clean_ids = check_prompt_batch(model, cleans, "clean")
    corrupt_ids = check_prompt_batch(model, corrupts, "corrupted")
    for i, (a, b) in enumerate(zip(clean_ids, corrupt_ids, strict=True)):
        if len(a) != len(b):
            raise InvalidArgumentError(
                f"clean[{i}] {cleans[i]!r} has {len(a)} tokens but corrupted[{i}] {corrupts[i]!r} has {len(b)}; "
                "edge patching needs the two prompts of a pair to have one length")
    tok = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    device = model.cfg.device
    c_tokens, lengths = pad_right(clean_ids, pad)
    k_tokens, _ = pad_right(corrupt_ids, pad)
    last = torch.arange(len(cleans)), lengths - 1
    top_clean = model(c_tokens.to(device), return_type="logits")[last].argmax(-1).cpu()
    top_corrupt = model(k_tokens.to(device), return_type="logits")[last].argmax(-1).cpu()
    targets, full_clean, full_corrupt, notes = [], [], [], []
    for i in range(len(cleans)):
        foil_id = None
        if metric == "logit_diff":
            answer_id, note = ((int(top_clean[i]), None) if answers[i] is None
                               else first_token(tok, answers[i], "answer", i, cleans[i]))
            foil_id, foil_note = ((int(top_corrupt[i]), None) if foils[i] is None
                                  else first_token(tok, foils[i], "foil", i, cleans[i]))
            ids = (answer_id,)
            notes += [n for n in (note, foil_note) if n is not None]
            if foil_id == ids[0]:
                raise InvalidArgumentError(
                    f"the foil {tok.decode([foil_id])!r} of prompt {i} equals its answer; pass answer= and foil= that differ")
        else:
            ids = encode_target(tok, answers[i], cleans[i]) if answers[i] is not None else (int(top_clean[i]),)
        extra = list(ids[:-1])
        if len(clean_ids[i]) + len(extra) > model.cfg.n_ctx:
            from interp_edit.errors import PromptTooLongError

            raise PromptTooLongError(f"clean[{i}] {cleans[i]!r} with its answer exceeds the model's context {model.cfg.n_ctx}")
        text = answers[i] if answers[i] is not None else tok.decode(list(ids))
        targets.append(Target(text, tuple(ids), foil_id))
        full_clean.append(clean_ids[i] + extra)
        full_corrupt.append(corrupt_ids[i] + extra)
    c_tokens, _ = pad_right(full_clean, pad)
    k_tokens, _ = pad_right(full_corrupt, pad)
    positions = tuple(tuple(score_positions(len(clean_ids[i]), targets[i])) for i in range(len(cleans)))
    c_tokens, k_tokens = c_tokens.to(device), k_tokens.to(device)
    logits = model(c_tokens, return_type="logits")
    logprobs = tuple(torch.log_softmax(logits[i, list(positions[i])].float(), -1) for i in range(len(cleans)))
    return Task(tuple(cleans), tuple(corrupts), c_tokens, k_tokens, tuple(targets), positions, metric, logprobs,
                _prefers(logits, targets, positions), tuple(notes))


def _prefers(logits: Tensor, targets: Sequence[Target], positions) -> tuple[bool, ...]:
    """Per prompt: the clean run's top-1 at its first scored position is the target's first token."""
    return tuple(int(logits[i, positions[i][0]].argmax()) == t.ids[0] for i, t in enumerate(targets))


@torch.no_grad()
def task_on_model(model, task: Task) -> Task:
    """``task`` (its tokens, targets and positions) with the clean run's log-probabilities
    (``kl``'s reference) recomputed on ``model``: a task prepared on one model, scored on
    another (e.g. the model after an edit)."""
    from dataclasses import replace

    device = model.cfg.device
    clean, corrupted = task.clean.to(device), task.corrupted.to(device)
    logits = model(clean, return_type="logits")
    logprobs = tuple(torch.log_softmax(logits[i, list(task.positions[i])].float(), -1) for i in range(task.n_prompts))
    return replace(task, clean=clean, corrupted=corrupted, clean_logprobs=logprobs,
                   clean_prefers=_prefers(logits, task.targets, task.positions))


# --- forwards -----------------------------------------------------------------------------


@torch.no_grad()
def sender_outputs(model, graph: EdgeGraph, tokens: Int[Tensor, "row pos"],
                   hooks: Sequence[tuple[str, Callable]] = ()) -> Float[Tensor, "row pos sender d_model"]:
    """Every sender's output (what it adds to the residual stream) in one forward."""
    out = torch.zeros(*tokens.shape, len(graph.senders), model.cfg.d_model, device=tokens.device)

    def keep(group, outputs):
        out[:, :, group.senders] = outputs

    with edge_hook_mode(model), model.hooks(fwd_hooks=list(hooks) + sender_read_hooks(model, graph, keep)):
        model(tokens, return_type="logits")
    return out


@torch.no_grad()
def masked_forward(model, graph: EdgeGraph, tokens: Int[Tensor, "row pos"],
                   source: Float[Tensor, "row pos sender d_model"], mask: Float[Tensor, "row sender receiver"],
                   more: Sequence[tuple[Tensor, Tensor]] = ()) -> Float[Tensor, "row pos vocab"]:
    """Logits of a forward in which receiver ``r`` of row ``i`` reads ``source[i]``'s output of
    every sender ``s`` with ``mask[i, s, r] = 1`` instead of this run's: its input becomes
    ``input + Σ_s mask[i, s, r] (source[i, s] − current[i, s])``. ``more``: further
    (source, mask) pairs read the same way (their masks must not overlap)."""
    pairs = [(source, mask.to(source.dtype))] + [(src, m.to(src.dtype)) for src, m in more]
    diffs = [torch.zeros_like(src) for src, _ in pairs]

    def on_sender(group, current):
        sl = group.senders
        for diff, (src, _) in zip(diffs, pairs, strict=True):
            diff[:, :, sl] = src[:, :, sl] - current

    def on_receiver(act, hook, sl, heads):
        add = sum(torch.einsum("bpsd,bsr->bprd", diff, m[:, :, sl]) for diff, (_, m) in zip(diffs, pairs, strict=True))
        return act + (add if heads else add[:, :, 0]).to(act.dtype)

    hooks = sender_read_hooks(model, graph, on_sender)
    hooks += [(n, functools.partial(on_receiver, sl=sl, heads=h)) for n, sl, h in receiver_hooks(graph)]
    with edge_hook_mode(model), model.hooks(fwd_hooks=hooks):
        return model(tokens, return_type="logits")


@torch.no_grad()
def edge_forward(model, graph: EdgeGraph, tokens: Int[Tensor, "row pos"], delta: Float[Tensor, "row pos d_model"],
                 receiver: Int[Tensor, " row"]) -> Float[Tensor, "row pos vocab"]:
    """Logits of a forward in which the input of receiver ``receiver[i]`` of row ``i`` gets
    ``delta[i]`` added (−1: nothing). With ``delta`` a sender's source minus base output, this
    is :func:`masked_forward` with one edge per row, without its [row, pos, sender, d_model]
    bookkeeping: nothing upstream of the receiver changes, so the sender's output in this run
    is its base output."""

    def on_receiver(act, hook, sl, heads):
        rows = ((receiver >= sl.start) & (receiver < sl.stop)).nonzero().squeeze(1)
        if rows.numel() == 0:
            return act
        act = act.clone()
        if heads:
            act[rows, :, receiver[rows] - sl.start] += delta[rows].to(act.dtype)
        else:
            act[rows] += delta[rows].to(act.dtype)
        return act

    hooks = [(n, functools.partial(on_receiver, sl=sl, heads=h)) for n, sl, h in receiver_hooks(graph)]
    with edge_hook_mode(model, results=False), model.hooks(fwd_hooks=hooks):
        return model(tokens, return_type="logits")


def receiver_gradients(model, graph: EdgeGraph, tokens: Int[Tensor, "row pos"], metric_fn: Callable[[Tensor], Tensor],
                       hooks: Sequence[tuple[str, Callable]] = ()) -> Float[Tensor, "row pos receiver d_model"]:
    """∂ metric_fn(logits) / ∂(each receiver's input) from one forward and one backward
    (``hooks`` run first, e.g. an interpolated input); parameters get no gradient."""
    probes: list[tuple[slice, bool, Tensor]] = []

    def on_receiver(act, hook, sl, heads):
        probe = torch.zeros_like(act, requires_grad=True)
        probes.append((sl, heads, probe))
        return act + probe

    fwd = list(hooks) + [(n, functools.partial(on_receiver, sl=sl, heads=h)) for n, sl, h in receiver_hooks(graph)]
    with torch.enable_grad(), edge_hook_mode(model), model.hooks(fwd_hooks=fwd):
        value = metric_fn(model(tokens, return_type="logits"))
        grads = torch.autograd.grad(value, [p for _, _, p in probes], allow_unused=True)
    out = torch.zeros(*tokens.shape, len(graph.receivers), model.cfg.d_model, device=tokens.device)
    for (sl, heads, _), grad in zip(probes, grads, strict=True):
        if grad is not None:
            out[:, :, sl] = (grad if heads else grad.unsqueeze(2)).float()
    return out
