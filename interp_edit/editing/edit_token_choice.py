"""``edit_token="traced"``: the subject token an editor writes at, chosen by measurement.

Where a model stores a subject's facts is a property of the trained model: the papers (ROME,
MEMIT, AlphaEdit, IntAttn) write at the subject's *last* token, which is where GPT-2 XL's MLP
effect peaks, but a retrained toy model can keep 3-token names' facts at the middle token.
Every request is traced with Gaussian noise on its subject (3 × the subjects' embedding std,
ROME's), scoring the model's own top-1 answer; the score of subject offset ``k`` is, averaged
over the traced requests and the edited layers (``token_trace_curve``):

- ``"mlp"`` (default): the indirect effect of restoring the layer's MLP output at the
  subject's ``k``-th token (:func:`~interp_edit.analysis.tracing.causal_trace`, kind ``mlp``,
  window 1) — the output these editors rewrite;
- ``"mlp_mediated"``: :func:`~interp_edit.analysis.edit_token_aie.edit_token_aie`'s
  MLP-mediated curve (hidden-state restoration minus the same with the later MLPs severed)
  at the layer.

The offset with the largest score wins (ties go to the later token, so a flat profile keeps the
papers' last token).

- ``"traced"``: one choice per subject length (in tokens), from the first ``token_trace_facts``
  requests of that length in the batch;
- ``"traced_per_request"``: one choice per request, from its own trace.

This is our extension (no paper chooses the token by tracing); ``edit.info["edit_token"]``
records the scores and the choice.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from interp_edit.analysis.edit_token_aie import TokenFact, edit_token_aie
from interp_edit.analysis.tracing import causal_trace, subject_embedding_std
from interp_edit.editing.config import TRACED_EDIT_TOKENS, SubjectTokenConfig
from interp_edit.editing.requests import (
    TokenizedRequest,
    describe_collisions,
    key_collisions,
    prepare_requests,
    subject_token_name,
)
from interp_edit.errors import EditConfigError, EditRequestError, InvalidArgumentError, KeyCollisionWarning


def prepare_at_edit_tokens(model, requests, fingerprint: str, cfg: SubjectTokenConfig,
                           layers: Sequence[int]) -> tuple[list[TokenizedRequest], dict]:
    """The requests tokenised at ``cfg.edit_token`` (traced ones resolved against ``layers``, the
    edited MLP layers) and what to record in ``edit.info["edit_token"]``."""
    if cfg.edit_token not in TRACED_EDIT_TOKENS:
        treqs = prepare_requests(model, requests, fingerprint, edit_token=cfg.edit_token)
        info = {"mode": cfg.edit_token, "positions": [r.edit_position for r in treqs]}
    else:
        plain = prepare_requests(model, requests, fingerprint)
        chosen, scores = traced_offsets(model, plain, cfg, layers)
        treqs = prepare_requests(model, plain, fingerprint, edit_token=[subject_token_name(k) for k in chosen])
        info = {"mode": cfg.edit_token, "layers": list(layers), "offsets": chosen, "scores": scores,
                "positions": [r.edit_position for r in treqs]}
    info["key_collisions"] = check_key_collisions(model, treqs, cfg)
    return treqs, info


def check_requests_first(model, requests, cfg: SubjectTokenConfig) -> None:
    """Validate ``requests`` (and, with ``cfg.strict``, refuse shared keys) before an editor's
    own preparation computes anything (AlphaEdit's null space); warnings wait for the edit.
    Traced edit tokens are known only after tracing: checked at the subject's last token."""
    edit_token = "subject_last" if cfg.edit_token in TRACED_EDIT_TOKENS else cfg.edit_token
    from interp_edit.adapter import model_fingerprint

    treqs = prepare_requests(model, requests, model_fingerprint(model), edit_token=edit_token)
    groups = key_collisions(treqs)
    if groups and cfg.strict and cfg.edit_token not in TRACED_EDIT_TOKENS:
        raise EditRequestError(describe_collisions(model, treqs, groups, type(cfg).__name__.removesuffix("Config")))


def check_key_collisions(model, treqs: Sequence[TokenizedRequest], cfg: SubjectTokenConfig) -> list[list[int]]:
    """The requests that share one key (:func:`key_collisions`), warned about — or, with
    ``cfg.strict``, refused — before any compute; returned for ``edit.info``."""
    groups = key_collisions(treqs)
    if groups:
        message = describe_collisions(model, treqs, groups, type(cfg).__name__.removesuffix("Config"))
        if cfg.strict:
            raise EditRequestError(message)
        warnings.warn(message, KeyCollisionWarning, stacklevel=4)
    return groups


def traced_offsets(model, treqs: Sequence[TokenizedRequest], cfg: SubjectTokenConfig,
                   layers: Sequence[int]) -> tuple[list[int], dict[str, list[float]]]:
    """Per request, the subject offset with the largest MLP-mediated effect at ``layers``, and the
    scores per group (key: the subject length ``"3"`` for ``traced``, the request index
    ``"#i"`` for ``traced_per_request``)."""
    per_request = cfg.edit_token == "traced_per_request"
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(treqs):
        groups.setdefault(f"#{i}" if per_request else str(r.subject_span[1] - r.subject_span[0]), []).append(i)
    std = subject_embedding_std(model, [r.request.subject for r in treqs])
    chosen = [0] * len(treqs)
    scores: dict[str, list[float]] = {}
    for key, members in groups.items():
        traced = [treqs[i] for i in members[: cfg.token_trace_facts]]
        n_tokens = traced[0].subject_span[1] - traced[0].subject_span[0]
        if cfg.token_trace_curve == "mlp":
            row = _mlp_restoration_row(model, traced, cfg, layers, std)
        else:
            row = []
            for offset in range(n_tokens):
                facts = [TokenFact(r.request.text, r.request.subject, None, r.subject_span[0] + offset) for r in traced]
                try:
                    aie = edit_token_aie(model, facts, samples=cfg.token_trace_noise_samples, seed=cfg.seed, embedding_std=std)
                except InvalidArgumentError as err:
                    raise EditConfigError(f"field 'edit_token' is {cfg.edit_token!r} but subject token {offset} of the "
                                          f"requests {members[: cfg.token_trace_facts]} cannot be traced: {err}") from None
                row.append(aie.mlp_mediated[list(layers)].mean().item())
        scores[key] = row
        best = max(range(n_tokens), key=lambda k: (row[k], k))
        for i in members:
            chosen[i] = best
    return chosen, scores


def _mlp_restoration_row(model, traced: Sequence[TokenizedRequest], cfg: SubjectTokenConfig, layers: Sequence[int],
                         std: float) -> list[float]:
    """Per subject offset: the MLP-output restoration effect at ``layers``, averaged over the requests."""
    total = None
    for r in traced:
        trace = causal_trace(model, r.request.text, r.request.subject, None, kinds=("mlp",), window=1,
                             samples=cfg.token_trace_noise_samples, seed=cfg.seed, embedding_std=std)
        start, end = trace.subject_span
        row = trace.indirect_effects[0][list(layers)][:, start:end].mean(0)
        total = row if total is None else total + row
    return (total / len(traced)).tolist()
