"""The load-time equivalence check: a model loaded from Hugging Face predicts what the Hugging
Face model predicts, or the load is refused.

``load_model`` (a ``hf_model=`` object, a Hugging Face folder, or a hub model on the bridge; on
either backend) runs both models once on a short probe (:data:`PROBE_LENGTH` token ids, one
sequence) and compares their log-probabilities over the whole vocabulary at every position.
Both models are already in memory (no copy of the weights): on the hooked backend the Hugging
Face model is left as it was; on the bridge its log-probabilities are taken *before* the bridge
wraps it. Beyond the tolerance of the less precise of the two dtypes
(:func:`tolerance`) it raises :class:`~interp_edit.errors.UnsupportedArchitectureError` naming
the largest difference (position, token) and the config fields set away from their defaults
that are not sizes (:func:`suspect_fields`: where a converter drops something, e.g. Llama's
``attention_bias`` / ``mlp_bias`` on the hooked backend, it is among them).

>>> model = load_model("mine", hf_model=hf, tokenizer=tok)           # checked
>>> load_check(model).max_abs_diff                                    # the measured difference
>>> load_model("mine", hf_model=hf, tokenizer=tok, check_equivalence=False)   # opt out: measured, never refused

What was measured (or why nothing was) is recorded on the model: :func:`load_check` returns a
:class:`LoadCheck` (``None`` for a model that was not loaded from Hugging Face: the toy world,
checkpoints, TransformerLens hub names on the hooked backend, which pay nothing).

A hooked load from a folder streams the Hugging Face weights one layer at a time
(:mod:`~interp_edit.adapter.streaming`): no Hugging Face model is in memory to compare with, so
by default the check is skipped and the :class:`LoadCheck` says why; ``check_equivalence=True``
asks for it anyway (the folder's model is read whole for the probe: one more copy of the
weights, dropped after).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interp_edit.errors import UnsupportedArchitectureError

#: Token ids in the probe (one sequence; one forward of each model).
PROBE_LENGTH = 8
_PROBE_SEED = 20260

#: Absolute tolerance on log-probabilities, per compared dtype (the less precise of the two
#: models'), plus ``RTOL_EPS`` machine epsilons of that dtype times the log-probability's size
#: (a log-probability of -20 in bfloat16 is only known to ±0.06). float32: rounding differences of
#: a converted model (folded norms, centred weights, another summation order) are 1e-6–1e-4 on the
#: tiny models and stay below 1e-3 on 7B models; 1e-2 leaves room and is still 100× below what a
#: dropped bias or norm does (0.1–10).
ATOL: dict[torch.dtype, float] = {
    torch.float64: 1e-4,
    torch.float32: 1e-2,
    torch.float16: 0.25,
    torch.bfloat16: 0.5,
}
RTOL_EPS = 8

#: Config fields that never point at a converter gap (sizes, token ids, bookkeeping), left out of
#: :func:`suspect_fields`.
_BOOKKEEPING = {
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "max_position_embeddings", "n_positions", "n_ctx", "n_embd", "n_layer", "n_head",
    "n_inner", "d_model", "ffn_dim", "initializer_range", "init_std", "bos_token_id", "eos_token_id", "pad_token_id",
    "sep_token_id", "decoder_start_token_id", "architectures", "model_type", "transformers_version", "_name_or_path",
    "torch_dtype", "dtype", "use_cache", "return_dict", "output_hidden_states", "output_attentions", "id2label",
    "label2id", "problem_type", "attn_implementation", "_attn_implementation_autoset", "tokenizer_class",
    "attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout", "hidden_dropout_prob",
    "attention_probs_dropout_prob", "summary_first_dropout", "layer_types", "chunk_size_feed_forward",
}


@dataclass(frozen=True)
class LoadCheck:
    """What the load-time equivalence check measured (or why it did not run).

    - ``checked``: whether the two models were compared;
    - ``max_abs_diff``: the largest |log-prob difference| over the probe (positions × vocabulary);
    - ``tolerance``: the absolute tolerance it was held to (plus ``RTOL_EPS`` ε·|log-prob|);
    - ``dtype``: the compared dtype (the less precise of the two models');
    - ``probe``: the token ids compared;
    - ``backend``: ``"hooked"`` or ``"bridge"``;
    - ``enforced``: whether a difference beyond the tolerance would have refused the load (False
      under ``check_equivalence=False``: measured and recorded only);
    - ``reason``: why nothing was compared (a hooked load streamed from a folder), or "".
    """

    checked: bool
    backend: str
    enforced: bool = True
    max_abs_diff: float | None = None
    tolerance: float | None = None
    dtype: str | None = None
    probe: tuple[int, ...] = ()
    reason: str = ""


_ATTR = "_interp_edit_load_check"


def load_check(model) -> LoadCheck | None:
    """The :class:`LoadCheck` recorded on ``model`` at load (None: not loaded from Hugging Face)."""
    return getattr(model, _ATTR, None)


def record(model, check: LoadCheck):
    """Keep ``check`` on ``model`` (the one place it is recorded); return ``model``."""
    setattr(model, _ATTR, check)
    return model


def skipped(model, backend: str, reason: str):
    """Record on ``model`` that the check did not run, and why; return ``model``."""
    return record(model, LoadCheck(checked=False, backend=backend, enforced=False, reason=reason))


def tolerance(dtype: torch.dtype) -> float:
    """The absolute log-probability tolerance of the compared ``dtype`` (:data:`ATOL`)."""
    return ATOL.get(dtype, ATOL[torch.float32])


def _less_precise(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    return max((a, b), key=lambda d: torch.finfo(d).eps if d.is_floating_point else 0.0)


def probe_tokens(vocab: int) -> torch.Tensor:
    """The probe: :data:`PROBE_LENGTH` token ids below ``vocab`` (fixed seed), shape [1, n]."""
    g = torch.Generator().manual_seed(_PROBE_SEED)
    return torch.randint(0, max(int(vocab), 1), (1, PROBE_LENGTH), generator=g)


def _hf_dtype_device(hf_model) -> tuple[torch.dtype, torch.device] | None:
    """The dtype and device of ``hf_model``'s weights; None where they are not in memory (meta)."""
    for p in hf_model.parameters():
        if p.is_floating_point():
            return (None if p.device.type == "meta" else (p.dtype, p.device))
    return None


@dataclass
class Reference:
    """The Hugging Face model's log-probabilities on the probe (float32, CPU) and what they came from."""

    tokens: torch.Tensor
    logprobs: torch.Tensor
    dtype: torch.dtype
    config: object


@torch.no_grad()
def reference(hf_model, vocab: int) -> Reference | None:
    """``hf_model``'s log-probabilities on the probe (one forward, in eval mode; its modules'
    train/eval flags are put back after), or None where its weights are not in memory."""
    placed = _hf_dtype_device(hf_model)
    if placed is None:
        return None
    dtype, device = placed
    tokens = probe_tokens(vocab)
    modes = [(m, m.training) for m in hf_model.modules()]
    hf_model.eval()
    try:
        logits = hf_model(input_ids=tokens.to(device), use_cache=False).logits
    finally:
        for module, training in modes:
            module.training = training
    return Reference(tokens, logits.float().log_softmax(-1).cpu(), dtype, hf_model.config)


def _model_dtype(model) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


@torch.no_grad()
def verify(model, ref: Reference, backend: str, name: str, *, enforce: bool = True):
    """Compare ``model`` with the Hugging Face reference ``ref`` on its probe; record the
    measured difference on ``model`` and return it, or (``enforce``) raise
    :class:`UnsupportedArchitectureError` beyond the tolerance."""
    device = next(p.device for p in model.parameters())
    logits = model(ref.tokens.to(device), return_type="logits")
    ours = logits.float().log_softmax(-1).cpu()
    theirs = ref.logprobs
    vocab = min(ours.shape[-1], theirs.shape[-1])
    ours, theirs = ours[..., :vocab], theirs[..., :vocab]
    dtype = _less_precise(_model_dtype(model), ref.dtype)
    atol = tolerance(dtype)
    rtol = RTOL_EPS * torch.finfo(dtype).eps
    diff = (ours - theirs).abs()
    excess = diff - (atol + rtol * theirs.abs())
    largest = float(diff.max())
    check = LoadCheck(checked=True, backend=backend, enforced=enforce, max_abs_diff=largest, tolerance=atol, dtype=str(dtype).replace("torch.", ""),
                      probe=tuple(int(t) for t in ref.tokens[0]))
    if enforce and (bool((excess > 0).any()) or not bool(torch.isfinite(diff).all())):
        flat = int(torch.nan_to_num(diff, nan=float("inf")).flatten().argmax())
        position, token = divmod(flat, vocab)
        position %= ref.tokens.shape[-1]
        fields = suspect_fields(ref.config)
        hint = (f"; config fields set away from their defaults (a conversion that drops one of them predicts "
                f"something else): {', '.join(fields)}") if fields else ""
        advice = ("load it with backend='bridge' (which runs the Hugging Face modules), or " if backend == "hooked" else "")
        raise UnsupportedArchitectureError(
            f"model {name!r} on backend={backend!r} does not predict what the Hugging Face model predicts: the largest "
            f"log-probability difference on a {ref.tokens.shape[-1]}-token probe is {largest:.4g} (position {position}, "
            f"token {token}), beyond the {check.dtype} tolerance {atol:g}{hint}. The conversion misses something this "
            f"config uses; {advice}pass check_equivalence=False to load it anyway (the difference is then recorded, not "
            "checked)"
        )
    return record(model, check)


def suspect_fields(hf_config) -> list[str]:
    """``field=value`` for the fields of ``hf_config`` set away from its class's defaults that
    are not sizes or bookkeeping (the candidates a conversion may not read: where a converter
    gap shows, the field it drops is among these)."""
    try:
        defaults = type(hf_config)().to_dict()
    except Exception:  # noqa: BLE001 - a config class whose defaults cannot be built: nothing to tell
        return []
    out = []
    for key, value in sorted(hf_config.to_dict().items()):
        if key in _BOOKKEEPING or key.startswith("_") or key.endswith("_token_id") or isinstance(value, dict):
            continue
        if key in defaults and defaults[key] == value:
            continue
        out.append(f"{key}={value!r}")
    return out
