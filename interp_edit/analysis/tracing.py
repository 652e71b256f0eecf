"""Causal tracing (ROME, Meng et al. 2022): where does restoring a clean activation bring the
fact back into a run whose subject was corrupted? Spec: shared/reference/methods.md A1."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from interp_edit.adapter import KERNELS, fused_kernels, hook_name, token_embeddings
from interp_edit.analysis.gap import ScoreGap
from interp_edit.analysis.restore import Restoration, cache_run, resolve_merge, run_restorations
from interp_edit.analysis.scoring import Target, check_metric, encode_target, score_logits, score_positions
from interp_edit.batching import check_memory_budget, resolve_memory_budget
from interp_edit.errors import InvalidArgumentError, PromptTooLongError
from interp_edit.prompts import TokenizedPrompt, tokenize_with_subject
from interp_edit.validation import check_choice, check_int, check_positive_finite, check_sequence, check_str

KINDS = ("hidden", "mlp", "attn")
_KIND_SITE = {"hidden": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}
_SEVER_SITE = {"mlp": "mlp_out", "attn": "attn_out"}


@dataclass(frozen=True)
class TraceSettings:
    kinds: tuple[str, ...] = KINDS
    corruption: str = "gaussian"
    noise: float = 3.0
    samples: int = 10
    window: int = 10
    metric: str = "prob"
    severed: str | None = None
    seed: int = 0
    embedding_std: float | None = None
    replacement: str | None = None
    subject_occurrence: int = 0
    #: a standard-normal draw [samples, subject tokens, d_model] used instead of sampling (scaled by noise · σ)
    noise_draw: Tensor | None = field(default=None, compare=False, repr=False)
    #: the generator the noise is drawn from instead of ``torch.Generator().manual_seed(seed)``
    generator: torch.Generator | None = field(default=None, compare=False, repr=False)
    #: "transformer_lens" (TransformerLens' modules, bit for bit) or "fused" (PyTorch's fused norm
    #: and attention kernels: :mod:`interp_edit.adapter.fused`)
    kernels: str = "transformer_lens"

    def validate(self) -> None:
        if isinstance(self.kinds, str) or not all(isinstance(k, str) for k in self.kinds):
            raise InvalidArgumentError(f"kinds must be a list of trace kinds from {KINDS}, got {self.kinds!r}")
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            raise InvalidArgumentError(f"unknown trace kinds {unknown or self.kinds}; choose from {KINDS}")
        check_choice(self.corruption, "corruption", ("gaussian", "replace"))
        check_positive_finite(self.noise, "noise (a multiple of the embedding std)")
        check_int(self.samples, "samples", minimum=1)
        check_int(self.window, "window", minimum=1)
        check_int(self.seed, "seed")
        check_int(self.subject_occurrence, "subject_occurrence", minimum=0)
        if self.severed is not None:
            check_choice(self.severed, "severed (None or)", ("mlp", "attn"))
            if "hidden" not in self.kinds:  # severing only acts on hidden-state restorations
                raise InvalidArgumentError(
                    f"severed={self.severed!r} needs 'hidden' in kinds, got kinds={tuple(self.kinds)!r}: severing "
                    "freezes the later MLP / attention outputs while the hidden state is restored, and changes "
                    "nothing for 'mlp' / 'attn' restorations")
        if self.embedding_std is not None:
            check_positive_finite(self.embedding_std, "embedding_std")
        check_str(self.replacement, "replacement", optional=True)
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            raise InvalidArgumentError(f"generator must be a torch.Generator, got {type(self.generator).__name__}")
        if self.noise_draw is not None and (not isinstance(self.noise_draw, Tensor) or self.noise_draw.ndim != 3
                                            or not torch.isfinite(self.noise_draw).all()):
            raise InvalidArgumentError("noise_draw must be a finite tensor [samples, subject tokens, d_model]")
        check_metric(self.metric)
        check_choice(self.kernels, "kernels", KERNELS)


@dataclass
class CausalTraceResult:
    """Scores of restored runs: ``scores[kind, layer, pos]`` is the metric when the clean
    activation of ``kind`` is restored at (layer, pos) into the corrupted run.

    ``clean_score`` / ``corrupted_score``: the metric without corruption and with it, nothing
    restored; ``indirect_effects`` = ``scores − corrupted_score``; ``subject_span``: the
    subject's token positions ``[start, end)``; ``settings``: the trace's options.

    >>> trace = causal_trace(model, "Talvik Corlo was born in", "Talvik Corlo", samples=2)
    >>> trace.kinds, trace.scores.shape              # [kind, layer, pos]
    (('hidden', 'mlp', 'attn'), torch.Size([3, 6, 6]))
    >>> trace.clean_score > trace.corrupted_score, trace.subject_span
    (True, (1, 3))
    >>> sorted(trace.top_sites(1)[0])
    ['indirect_effect', 'kind', 'layer', 'pos', 'token']
    >>> fig = trace.plot()
    """

    scores: Float[Tensor, "kind layer pos"]
    kinds: tuple[str, ...]
    clean_score: float
    corrupted_score: float
    prompt: str
    subject: str
    tokens: tuple[int, ...]
    str_tokens: tuple[str, ...]
    subject_span: tuple[int, int]
    target: str
    target_ids: tuple[int, ...]
    settings: TraceSettings
    replacement: str | None = None
    metadata: dict = field(default_factory=dict)
    #: whether the clean run's top-1 token is the target's first token (None: not recorded)
    clean_prefers_target: bool | None = None

    @property
    def gap(self) -> ScoreGap:
        """The clean − corrupted gap and whether it is worth localising (see
        :mod:`~interp_edit.analysis.gap`); its warnings show in the repr and the figure title."""
        return ScoreGap(self.clean_score, self.corrupted_score, self.settings.metric, self.clean_prefers_target)

    @property
    def indirect_effects(self) -> Float[Tensor, "kind layer pos"]:
        """Restored score minus corrupted score."""
        return self.scores - self.corrupted_score

    def kind(self, kind: str) -> Float[Tensor, "layer pos"]:
        check_choice(kind, "kind", self.kinds)
        return self.scores[self.kinds.index(kind)]

    def top_sites(self, k: int = 5) -> list[dict]:
        """The ``k`` restorations with the largest indirect effect, over all kinds."""
        check_int(k, "k", minimum=0)
        ie = self.indirect_effects
        order = torch.argsort(ie.flatten(), descending=True)[:k]
        sites = []
        for flat in order.tolist():
            kind_i, rest = divmod(flat, ie.shape[1] * ie.shape[2])
            layer, pos = divmod(rest, ie.shape[2])
            sites.append(dict(kind=self.kinds[kind_i], layer=layer, pos=pos, token=self.str_tokens[pos],
                              indirect_effect=ie[kind_i, layer, pos].item()))
        return sites

    def __repr__(self) -> str:
        from interp_edit.reprs import number, short_repr, text

        top = self.top_sites(1)[0] if self.scores.numel() else None
        site = (f"{top['kind']} L{top['layer']} @{top['pos']} {text(top['token'])} (+{number(top['indirect_effect'], 3)})"
                if top else None)
        return short_repr("CausalTraceResult", WARNING=self.gap.repr_note(),
                          prompt=text(self.prompt), subject=text(self.subject), target=text(self.target),
                          metric=self.settings.metric, window=str(self.settings.window), severed=self.settings.severed,
                          clean=number(self.clean_score),
                          corrupted=number(self.corrupted_score), top_site=site)

    def plot(self, layout: str = "rome"):
        """A Plotly figure of the scores, one panel per kind. ``layout="rome"``: ROME's
        (layers on x, tokens on y, the subject marked ``*``); ``"tl"``: layers on y, positions
        on x, the indirect effect on a diverging scale centred at 0.

        >>> trace = causal_trace(model, "Talvik Corlo was born in", "Talvik Corlo", samples=2)
        >>> fig = trace.plot(layout="tl")
        """
        from interp_edit.viz.traces import causal_trace_figure

        return causal_trace_figure(self, layout=layout)

    def save(self, path: str | Path, layout: str = "rome") -> tuple[Path, Path]:
        from interp_edit.viz.export import save_figure

        return save_figure(self.plot(layout), path)


def subject_embedding_std(model, subjects: Sequence[str], name: str = "subjects") -> float:
    """Standard deviation of the token embeddings of the subjects' tokens, every token of every
    subject pooled (repeats kept): ROME's ``collect_embedding_std`` over a dataset's subjects
    (its "s3" noise is 3 × this), or a single prompt's subject. Each subject is tokenised as it
    follows a word in a prompt (:func:`~interp_edit.prompts.encode_target`: no bare ``"▁"`` token
    of SentencePiece tokenizers); ``name`` is what an error calls the subjects."""
    from interp_edit.errors import TokenizationError

    ids = []
    for i, subject in enumerate(check_sequence(subjects, name)):
        subject = check_str(subject, name, index=i)
        try:
            ids += encode_target(model.tokenizer, subject.strip())
        except TokenizationError:  # a merge with the word before it: the subject's own tokens
            ids += model.tokenizer.encode(" " + subject.strip(), add_special_tokens=False)
    w_e = token_embeddings(model)
    return w_e[torch.tensor(ids, device=w_e.device)].float().std().item()


#: ROME restores windows of 10 layers on GPT-2 XL's 48: the default window keeps that fraction
ROME_WINDOW, ROME_LAYERS = 10, 48


def default_window(n_layers: int) -> int:
    """The trace window when none is given: ROME's 10 of 48 layers scaled to the depth,
    ``max(1, round(10 * n_layers / 48))`` (48 layers: 10, GPT-J's 28: 6, GPT-2's 12: 2, the toy
    model's 6: 1). A fixed 10 on a shallow model restores every layer at once, so every row of
    the MLP / attention traces would be the same."""
    return max(1, round(ROME_WINDOW * n_layers / ROME_LAYERS))


def window_layers(layer: int, window: int, n_layers: int) -> tuple[int, ...]:
    """ROME's window of ``window`` layers centred on ``layer``, clipped at the ends."""
    return tuple(range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2))))


def restorations_for(kind: str, n_layers: int, positions: range, window: int, severed: str | None) -> list[Restoration]:
    """The (layer, pos) restorations of one kind at ``positions``, layer-major."""
    out = []
    for layer in range(n_layers):
        for pos in positions:
            if kind == "hidden":
                freeze = ()
                if severed is not None and layer + 1 < n_layers:
                    freeze = ((_SEVER_SITE[severed], tuple(range(layer + 1, n_layers))),)
                out.append(Restoration("resid_post", (layer,), pos, freeze=freeze))
            else:
                out.append(Restoration(_KIND_SITE[kind], window_layers(layer, window, n_layers), pos))
    return out


@dataclass(frozen=True)
class TraceInputs:
    """Everything a trace runs on, prepared and validated once."""

    tokenized: TokenizedPrompt
    clean_tokens: Tensor
    base_tokens: Tensor
    base_hooks: list
    target: Target
    replacement: str | None


def prepare_trace(model, prompt: str, subject: str, target: str | None, settings: TraceSettings,
                  replacements: Sequence[str] = (), foil: str | None = None) -> TraceInputs:
    """Tokenise, locate the subject, resolve the target and build the corrupted input."""
    settings.validate()
    check_str(prompt, "prompt")
    check_str(subject, "subject")
    check_str(target, "target", optional=True)
    check_str(foil, "foil", optional=True)
    tok = tokenize_with_subject(model.tokenizer, prompt, subject, settings.subject_occurrence)
    device = model.cfg.device
    prompt_ids = list(tok.tokens)
    if len(prompt_ids) > model.cfg.n_ctx:
        raise PromptTooLongError(f"prompt {prompt!r} is {len(prompt_ids)} tokens; the model's context is {model.cfg.n_ctx}")
    if target is None:
        with torch.no_grad():
            top = model(torch.tensor([prompt_ids], device=device), return_type="logits")[0, -1].argmax().item()
        target_ids = (top,)
        target_text = model.tokenizer.decode([top])
    else:
        target_ids = encode_target(model.tokenizer, target)
        target_text = target
    foil_id = None
    if settings.metric == "logit_diff":
        if foil is None:
            raise InvalidArgumentError("metric 'logit_diff' needs a foil (the competing answer)")
        foil_id = encode_target(model.tokenizer, foil)[0]
    ids = prompt_ids + list(target_ids[:-1])
    if len(ids) > model.cfg.n_ctx:
        raise PromptTooLongError(
            f"prompt {prompt!r} with its target is {len(ids)} tokens; the model's context is {model.cfg.n_ctx}"
        )
    clean = torch.tensor([ids], device=device)
    s0, s1 = tok.subject_span
    replacement = None
    if settings.corruption == "replace":
        replacement, repl_ids = _pick_replacement(model, tok, settings, replacements)
        base_ids = ids[:s0] + repl_ids + ids[s1:]
        return TraceInputs(tok, clean, torch.tensor([base_ids], device=device), [], Target(target_text, target_ids, foil_id), replacement)
    std = settings.embedding_std or subject_embedding_std(model, [subject])
    shape = (settings.samples, s1 - s0, model.cfg.d_model)
    if settings.noise_draw is not None:
        if tuple(settings.noise_draw.shape) != shape:
            raise InvalidArgumentError(f"noise_draw has shape {tuple(settings.noise_draw.shape)}; this trace needs {shape} "
                                       f"(samples, the subject's {s1 - s0} tokens, d_model)")
        draw = settings.noise_draw.detach().float().cpu()
    else:
        gen = settings.generator if settings.generator is not None else torch.Generator().manual_seed(settings.seed)
        draw = torch.randn(*shape, generator=gen)
    noise = (draw * settings.noise * std).to(device)

    def add_noise(embed, hook):
        embed[:, s0:s1] = embed[:, s0:s1] + noise.to(embed.dtype)
        return embed

    base = clean.repeat(settings.samples, 1)
    return TraceInputs(tok, clean, base, [(hook_name("embed"), add_noise)], Target(target_text, target_ids, foil_id), None)


def _pick_replacement(model, tok: TokenizedPrompt, settings: TraceSettings, replacements: Sequence[str]):
    s0, s1 = tok.subject_span
    n = s1 - s0
    candidates = [settings.replacement] if settings.replacement else list(replacements)
    if not candidates:
        raise InvalidArgumentError("corruption='replace' needs replacement='<subject>' or a list of replacements")
    # match how the prompt tokenises the subject: with or without the space before it
    spaced = tok.str_tokens[s0].startswith(" ")
    fitting = []
    for cand in candidates:
        text = (" " if spaced else "") + cand.strip()
        ids = list(model.tokenizer.encode(text, add_special_tokens=False))
        if len(ids) == n and cand.strip() != tok.subject.strip():
            fitting.append((cand, ids))
    if not fitting:
        raise InvalidArgumentError(
            f"no replacement subject of {n} tokens (like {tok.subject!r}) among {candidates[:10]}"
            + (" ..." if len(candidates) > 10 else "")
        )
    return random.Random(settings.seed).choice(fitting)


@torch.no_grad()
def causal_trace(
    model,
    prompt: str,
    subject: str,
    target: str | None = None,
    *,
    kinds: Sequence[str] = KINDS,
    corruption: str = "gaussian",
    noise: float = 3.0,
    samples: int = 10,
    window: int | None = None,
    metric: str = "prob",
    severed: str | None = None,
    seed: int = 0,
    embedding_std: float | None = None,
    replacement: str | None = None,
    replacements: Sequence[str] = (),
    foil: str | None = None,
    subject_occurrence: int = 0,
    noise_subjects: Sequence[str] | None = None,
    noise_draw: Tensor | None = None,
    generator: torch.Generator | None = None,
    max_rows: int | None = None,
    memory_budget: int | float | None = None,
    merge: str = "auto",
    kernels: str = "transformer_lens",
) -> CausalTraceResult:
    """ROME's causal trace of one fact.

    Corruption: ``"gaussian"`` adds N(0, (noise·σ)²) to the subject's token embeddings only
    (σ = ``embedding_std``, by default the std of the subject tokens' embeddings; ``samples``
    draws, fixed ``seed``; scores are averaged over the draws), or ``"replace"`` swaps the
    subject's tokens for another subject of the same token length (``replacement``, or one
    drawn from ``replacements``).

    Noise scale σ: ``embedding_std`` if given; else, with ``noise_subjects``, the dataset-level
    rule of ROME's code (``collect_embedding_std``: the std of the token embeddings of all
    those subjects, e.g. every subject of the facts traced; ROME's "s3" is ``noise=3`` with it);
    else the prompt's own subject. The draw: ``noise_draw`` (a standard-normal tensor
    [samples, subject tokens, d_model], multiplied by noise · σ — e.g.
    ``torch.from_numpy(numpy.random.RandomState(1).randn(10, n, d))`` is ROME's draw), else
    ``generator`` (consumed), else a generator seeded with ``seed``.

    For each layer and position the clean value is restored into the corrupted run:
    ``hidden`` = the residual stream after the layer (``severed="mlp"|"attn"`` freezes the MLP
    or attention outputs of all later layers at that position to their corrupted values; it
    acts on ``hidden`` restorations only, so it is refused when ``kinds`` has no ``"hidden"``);
    ``mlp`` / ``attn`` = the MLP / attention outputs of ``window`` layers centred on the layer
    (clipped at the ends); ``window=None`` (default) is :func:`default_window` of the model's
    depth (ROME's code uses 10 at any depth: pass ``window=10`` for that). The target defaults
    to the clean top-1 token; see :mod:`interp_edit.analysis.scoring` for metrics and multi-token targets. The subject's
    first occurrence is used unless ``subject_occurrence`` says otherwise.

    Memory: the restored runs are batched, at most ``max_rows`` rows and ``memory_budget``
    bytes per forward (None: a share of the device's free memory; the rule is
    :func:`interp_edit.batching.resolve_memory_budget`; ``max_rows=None``:
    :func:`interp_edit.batching.default_max_rows` of the device); the scores do not depend on
    either. ``merge`` (``"auto"`` | ``"by_layer"`` | ``"layers"`` | ``"all"``) chooses which
    restorations share a forward (:mod:`interp_edit.analysis.restore`): ``"layers"`` merges
    every kind and layer into few large forwards (the default on CUDA), ``"by_layer"`` runs
    one group per site and layers (the default elsewhere), ``"all"`` merges up to the size
    limits only; the scores do not depend on it. ``kernels="fused"`` runs every forward of the
    trace with PyTorch's fused norm and attention kernels (:func:`interp_edit.adapter.fused_kernels`:
    fewer operations, so fewer GPU kernel launches; scores within float rounding of the default,
    TransformerLens' modules bit for bit).

    >>> trace = causal_trace(model, "Talvik Corlo was born in", "Talvik Corlo", samples=2)
    >>> trace.scores.shape[0]                        # kinds: hidden, mlp, attn
    3
    >>> trace.target
    ' Karsa'
    >>> severed = causal_trace(model, "Talvik Corlo was born in", "Talvik Corlo", samples=2,
    ...                        kinds=("hidden",), severed="mlp", metric="logit_diff", foil="Gemmel")
    """
    window = default_window(model.cfg.n_layers) if window is None else window
    if noise_subjects is not None and embedding_std is None:
        embedding_std = subject_embedding_std(model, noise_subjects, "noise_subjects")
    replacements = [check_str(r, "replacements", index=i)
                    for i, r in enumerate(check_sequence(replacements, "replacements", nonempty=False))]
    if max_rows is not None:
        check_int(max_rows, "max_rows", minimum=1)
    check_memory_budget(memory_budget)
    resolve_merge(merge, model.cfg.device)
    kinds = (kinds,) if isinstance(kinds, str) else tuple(check_sequence(kinds, "kinds"))
    settings = TraceSettings(kinds, corruption, noise, samples, window, metric, severed, seed,
                             embedding_std, replacement, subject_occurrence, noise_draw, generator, kernels)
    inputs = prepare_trace(model, prompt, subject, target, settings, replacements, foil)
    with fused_kernels(model, kernels == "fused"):
        return _trace(model, prompt, subject, settings, inputs, max_rows, memory_budget, merge)


def _trace(model, prompt, subject, settings: TraceSettings, inputs, max_rows, memory_budget, merge) -> CausalTraceResult:
    """The runs of :func:`causal_trace`, its arguments checked and its inputs prepared."""
    metric, window, severed = settings.metric, settings.window, settings.severed
    positions = score_positions(len(inputs.tokenized.tokens), inputs.target)

    def score(logits):
        return score_logits(logits, inputs.target, metric)

    budget = resolve_memory_budget(memory_budget, model.cfg.device)
    sites = ["mlp_out", "attn_out"]
    clean_logits, clean_cache = cache_run(model, inputs.clean_tokens, [], sites)
    base_logits, base_cache = cache_run(model, inputs.base_tokens, inputs.base_hooks, sites)
    corrupted_score = score(base_logits[:, positions]).mean().item()
    n_layers, n_pos = model.cfg.n_layers, inputs.clean_tokens.shape[1]
    # Positions before the subject are the same in the clean and corrupted runs (the model is
    # causal): restoring there changes nothing, so only later positions are run.
    first = inputs.tokenized.subject_span[0]
    scores = torch.full((len(settings.kinds), n_layers, n_pos), corrupted_score)
    # every kind in one call: the merged engine may share forwards between kinds
    jobs = [job for kind in settings.kinds for job in restorations_for(kind, n_layers, range(first, n_pos), window, severed)]
    values = run_restorations(model, jobs, base_cache, clean_cache, score, positions, max_rows=max_rows,
                              memory_budget=budget, merge=merge)
    scores[:, :, first:] = values.mean(1).reshape(len(settings.kinds), n_layers, n_pos - first)
    tok = inputs.tokenized
    return CausalTraceResult(
        scores=scores,
        kinds=settings.kinds,
        clean_score=score(clean_logits[:, positions]).mean().item(),
        corrupted_score=corrupted_score,
        prompt=prompt,
        subject=subject,
        tokens=tuple(inputs.clean_tokens[0].tolist()),
        str_tokens=tuple(model.tokenizer.decode([t]) for t in inputs.clean_tokens[0].tolist()),
        subject_span=tok.subject_span,
        target=inputs.target.text,
        target_ids=inputs.target.ids,
        settings=settings,
        replacement=inputs.replacement,
        clean_prefers_target=int(clean_logits[0, positions[0]].argmax()) == inputs.target.ids[0],
    )
