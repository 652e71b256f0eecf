"""Knowledge-editing metrics, each named for exactly what it computes.

Probability comparisons (CounterFact, Meng et al. 2022). A target's probability after a prompt
is the product of its teacher-forced token probabilities; two targets are compared by their
*mean per-token log-probability* (``compare="mean_logprob"``, ROME's evaluation code; equal to
comparing probabilities when both targets have the same number of tokens) or by the product
itself (``compare="prob"``).

- ``efficacy_score`` = mean over prompts of [p(new) > p(true)]; ``efficacy_magnitude`` =
  mean (p(new) − p(true)). ``paraphrase_*``: the same on paraphrases.
- ``neighborhood_score`` = mean [p(true) > p(new)]; ``neighborhood_magnitude`` = mean
  (p(true) − p(new)), on other subjects that must keep the true object.
- ``counterfact_score`` = the harmonic mean of efficacy, paraphrase and neighbourhood scores.
- ``ngram_entropy``: generation fluency, the weighted mean of the bi- and tri-gram entropies
  (bits) of a text's words, weights 2/3 and 4/3 (ROME's GE), over greedy generations.

Token-level (zsRE / EasyEdit style; *not* comparable with the scores above):

- ``token_accuracy`` = the fraction of target tokens that are the top-1 prediction when the
  target is teacher-forced.

Multi-hop (MQuAKE): ``multihop_accuracy`` = the fraction of questions for which *any* phrasing
is answered right; answered right = greedy decoding emits the answer (or an alias) first,
i.e. every answer token is the top-1 prediction under teacher forcing.

Perplexity: ``corpus_perplexity`` = exp(mean negative log-likelihood per predicted token) over
a set of texts, every token of each text predicted after BOS and the tokens before it (the
held-out perplexity of sequential experiments: a cheap surrogate for model collapse).

Multiple choice (CaseEdit-style): the choice is the argmax of the options' label-token logits
at the end of the prompt; ``option_entropy`` = H(p) = −Σ p_i log2 p_i of the softmax over
those logits, in bits (log2 5 for a uniform five-way choice).
"""

from __future__ import annotations

import math
import operator
import re
from collections import Counter
from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp_edit.analysis.scoring import encode_target
from interp_edit.batching import encode_prompts, last_token_logits, pad_right
from interp_edit.errors import InvalidArgumentError, TokenizationError
from interp_edit.evaluation.logprobs import TokenScores, score_continuations
from interp_edit.validation import check_choice, check_int, check_sequence

COMPARISONS = ("mean_logprob", "prob")


def _prompts(prompts, name: str = "prompts") -> list[str]:
    """``prompts`` as a list; a single string (which would be scored character by character)
    or a non-sequence is an :class:`~interp_edit.errors.InvalidArgumentError` naming ``name``."""
    return check_sequence(prompts, name, nonempty=False)


def _repeat(value: str | Sequence[str], n: int, name: str = "target") -> list[str]:
    """``value`` once per prompt: a single string repeated ``n`` times, or a list of exactly
    ``n`` (one per prompt); any other count is an
    :class:`~interp_edit.errors.InvalidArgumentError` naming ``name`` and the counts given."""
    if isinstance(value, str):
        return [value] * n
    values = check_sequence(value, name, nonempty=False)
    if len(values) != n:
        raise InvalidArgumentError(f"{name} has {len(values)} entries for {n} prompts: give one per prompt, "
                                   f"or a single string for all")
    return values


def _check_compare(compare: str) -> str:
    return check_choice(compare, "compare", COMPARISONS)


def new_beats_true(new: TokenScores, true: TokenScores, compare: str = "mean_logprob") -> Bool[Tensor, " n"]:
    """[p(new) > p(true)] per prompt, strictly (see the module docstring for ``compare``);
    ``new_beats_true(true, new)`` is [p(true) > p(new)] — a tie counts for neither."""
    _check_compare(compare)
    return new.mean > true.mean if compare == "mean_logprob" else new.total > true.total


def _pair(model, prompts, target_new, target_true) -> tuple[TokenScores, TokenScores]:
    """The scores of ``target_new`` and of ``target_true`` after each prompt (one forward pass
    for both); the prompts and the two targets' counts are checked before it."""
    prompts = _prompts(prompts)
    new = _repeat(target_new, len(prompts), "target_new")
    true = _repeat(target_true, len(prompts), "target_true")
    scores = score_continuations(model, prompts + prompts, new + true)
    n = len(prompts)
    return (TokenScores(scores.logprobs[:n], scores.top1[:n]), TokenScores(scores.logprobs[n:], scores.top1[n:]))


def _mean(values: Tensor) -> float:
    return float(values.float().mean()) if len(values) else math.nan


def efficacy_score(model, prompts: Sequence[str], target_new: str | Sequence[str], target_true: str | Sequence[str],
                   compare: str = "mean_logprob") -> float:
    """Mean over prompts of [p(new) > p(true)]."""
    _check_compare(compare)
    new, true = _pair(model, prompts, target_new, target_true)
    return _mean(new_beats_true(new, true, compare))


def efficacy_magnitude(model, prompts: Sequence[str], target_new: str | Sequence[str],
                       target_true: str | Sequence[str]) -> float:
    """Mean over prompts of p(new) − p(true) (probabilities = products of token probabilities)."""
    new, true = _pair(model, prompts, target_new, target_true)
    return _mean(new.prob - true.prob)


def paraphrase_score(model, paraphrases: Sequence[str], target_new, target_true, compare: str = "mean_logprob") -> float:
    """:func:`efficacy_score` on paraphrases of the rewrite prompt."""
    return efficacy_score(model, paraphrases, target_new, target_true, compare)


def paraphrase_magnitude(model, paraphrases: Sequence[str], target_new, target_true) -> float:
    """:func:`efficacy_magnitude` on paraphrases of the rewrite prompt."""
    return efficacy_magnitude(model, paraphrases, target_new, target_true)


def neighborhood_score(model, prompts: Sequence[str], target_new, target_true, compare: str = "mean_logprob") -> float:
    """Mean over neighbourhood prompts of [p(true) > p(new)]."""
    _check_compare(compare)
    new, true = _pair(model, prompts, target_new, target_true)
    return _mean(new_beats_true(true, new, compare))


def neighborhood_magnitude(model, prompts: Sequence[str], target_new, target_true) -> float:
    """Mean over neighbourhood prompts of p(true) − p(new)."""
    return -efficacy_magnitude(model, prompts, target_new, target_true)


def counterfact_score(efficacy: float, paraphrase: float, neighborhood: float) -> float:
    """The harmonic mean of the three scores (0 if any is 0; NaN if any is NaN)."""
    values = (efficacy, paraphrase, neighborhood)
    if any(v != v for v in values):
        return math.nan
    if min(values) <= 0:
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def token_accuracy(model, prompts: Sequence[str], targets: str | Sequence[str]) -> Float[Tensor, " n"]:
    """Per prompt: the fraction of the target's tokens that are the top-1 prediction when the
    target is teacher-forced (zsRE / EasyEdit's accuracy)."""
    prompts = _prompts(prompts)
    return score_continuations(model, prompts, _repeat(targets, len(prompts), "targets")).token_accuracy


def any_phrasing_right(exact: Bool[Tensor, " rows"] | Sequence[bool], groups: Sequence[Sequence[int]]) -> list[float]:
    """MQuAKE's "any phrasing" rule, the one place it is implemented: per group of rows (the
    phrasings of one question, times its answer aliases), 1.0 if any row is answered exactly
    (greedy decoding emits the answer), else 0.0; NaN for an empty group."""
    flags = [bool(x) for x in exact]
    return [float(any(flags[i] for i in group)) if len(group) else math.nan for group in groups]


def answered(model, prompts: Sequence[str], answers: Sequence[Sequence[str]]) -> Bool[Tensor, " n"]:
    """Per prompt: whether greedy decoding emits one of its answers first (every token top-1)."""
    return multihop_correct(model, [[p] for p in prompts], answers)


def multihop_correct(model, questions: Sequence[Sequence[str]], answers: Sequence[Sequence[str]]) -> Bool[Tensor, " n"]:
    """Per multi-hop question: whether any of its phrasings is answered right (any answer
    alias counts). Every question needs at least one phrasing and one answer (a question with
    none could never be answered right): an empty list is an
    :class:`~interp_edit.errors.InvalidArgumentError` naming ``questions[i]`` / ``answers[i]``,
    raised before any forward pass."""
    questions, answers = _prompts(questions, "questions"), _prompts(answers, "answers")
    if len(questions) != len(answers):
        raise InvalidArgumentError(f"{len(questions)} questions but {len(answers)} lists of answers")
    prompts, targets, groups = [], [], []
    for i, (phrasings, options) in enumerate(zip(questions, answers, strict=True)):
        if isinstance(phrasings, str) or isinstance(options, str):
            raise InvalidArgumentError(f"each question needs a list of phrasings and a list of answers, got {phrasings!r}, {options!r}")
        phrasings = check_sequence(phrasings, f"questions[{i}]", nonempty=False)
        options = check_sequence(options, f"answers[{i}]", nonempty=False)
        if not phrasings:
            raise InvalidArgumentError(f"questions[{i}] has no phrasings: a question needs at least one")
        if not options:
            raise InvalidArgumentError(f"answers[{i}] is empty: question {i} needs at least one answer")
        group = []
        for phrasing in phrasings:
            for answer in options:
                group.append(len(prompts))
                prompts.append(phrasing)
                targets.append(answer)
        groups.append(group)
    exact = score_continuations(model, prompts, targets).exact if prompts else []
    return torch.tensor([value == 1.0 for value in any_phrasing_right(exact, groups)], dtype=torch.bool)


def multihop_accuracy(model, questions: Sequence[Sequence[str]], answers: Sequence[Sequence[str]]) -> float:
    """MQuAKE's multi-hop accuracy: the fraction of questions with any phrasing answered right."""
    return _mean(multihop_correct(model, questions, answers))


# --- fluency --------------------------------------------------------------------------------

_WORD = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """Generation entropy of one text: the mean over n of weight_n · H_n, H_n the entropy (bits)
    of the text's word n-gram frequencies (words: runs of letters/digits and single
    punctuation marks). The defaults are ROME's GE; a text repeating one word scores 0."""
    if len(ns) != len(weights):
        raise InvalidArgumentError(f"ngram_entropy: {len(ns)} n-gram sizes ns={tuple(ns)} but {len(weights)} weights={tuple(weights)}")
    words = _WORD.findall(text)
    parts = []
    for n, weight in zip(ns, weights, strict=True):
        counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        total = sum(counts.values())
        entropy = -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0
        parts.append(weight * entropy)
    return sum(parts) / len(parts)


@torch.no_grad()
def greedy_token_ids(model, prompts: Sequence[str], max_new_tokens: int = 50, batch_size: int = 64) -> list[list[int]]:
    """The greedily decoded new token ids of each prompt (BOS + prompt, the prompt not
    included), batched with right padding: at every step one forward of the batch's unfinished
    rows and the argmax of each row's logits at its own last real position. Each row has its
    own limit — at most ``max_new_tokens`` and never past the model's context — so a prompt's
    generation does not depend on its batch-mates; a row stops at the end-of-text token (not
    included).

    >>> ids = greedy_token_ids(model, ["Talvik Corlo was born in"], max_new_tokens=1)
    >>> [model.tokenizer.decode(i) for i in ids]
    [' Karsa']
    """
    prompts = _prompts(prompts)
    check_int(max_new_tokens, "max_new_tokens", minimum=1)
    check_int(batch_size, "batch_size", minimum=1)
    tokenizer = model.tokenizer
    eos = tokenizer.eos_token_id
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        rows = encode_prompts(tokenizer, prompts[start : start + batch_size])
        starts = [len(r) for r in rows]
        limits = [min(n + max_new_tokens, model.cfg.n_ctx) for n in starts]  # each row's own final length
        active = [i for i, r in enumerate(rows) if len(r) < limits[i]]
        while active:
            tokens, lengths = pad_right([rows[i] for i in active], tokenizer.pad_token_id or 0)
            logits = model(tokens.to(model.cfg.device))
            nxt = logits[torch.arange(len(active)), lengths.to(logits.device) - 1].argmax(-1).tolist()
            for i, token in zip(active, nxt, strict=True):
                if token != eos:
                    rows[i].append(token)
            active = [i for i, token in zip(active, nxt, strict=True) if token != eos and len(rows[i]) < limits[i]]
        out += [r[n:] for r, n in zip(rows, starts, strict=True)]
    return out


def greedy_generate(model, prompts: Sequence[str], max_new_tokens: int = 50, batch_size: int = 64) -> list[str]:
    """Greedy continuations of each prompt (prompt text included), at most ``max_new_tokens``
    and never past the model's context; a row stops at the end-of-text token."""
    prompts = _prompts(prompts)
    tokenizer = model.tokenizer
    new = greedy_token_ids(model, prompts, max_new_tokens, batch_size)
    return [tokenizer.decode(tokenizer.encode(p, add_special_tokens=False) + ids) for p, ids in zip(prompts, new, strict=True)]


def generation_fluency(model, prompts: Sequence[str], max_new_tokens: int = 50) -> Float[Tensor, " n"]:
    """:func:`ngram_entropy` of each prompt's greedy generation."""
    return torch.tensor([ngram_entropy(t) for t in greedy_generate(model, prompts, max_new_tokens)])


# --- perplexity -----------------------------------------------------------------------------

@torch.no_grad()
def corpus_perplexity(model, texts: Sequence[str], batch_size: int = 32) -> float:
    """The perplexity of a corpus: exp of the mean negative log-likelihood per predicted token,
    over all tokens of all ``texts`` (each text BOS-first, its every token predicted from the
    ones before it, BOS included; the BOS itself is not predicted). Batched with right
    padding; padded positions are not scored.

    >>> ppl = corpus_perplexity(model, ["Talvik Corlo was born in Karsa."])
    >>> 1.0 <= ppl < 10
    True
    """
    ids = encode_prompts(model.tokenizer, _prompts(texts, "texts"))
    nll, count = 0.0, 0
    for start in range(0, len(ids), batch_size):
        tokens, lengths = pad_right(ids[start : start + batch_size], model.tokenizer.pad_token_id or 0)
        tokens = tokens.to(model.cfg.device)
        logprobs = model(tokens, return_type="logits").float().log_softmax(-1)[:, :-1]
        picked = logprobs.gather(-1, tokens[:, 1:, None])[..., 0]
        scored = torch.arange(tokens.shape[1] - 1, device=tokens.device)[None] < (lengths.to(tokens.device) - 1)[:, None]
        nll -= float(picked[scored].double().sum())
        count += int(scored.sum())
    return math.exp(nll / count) if count else math.nan


# --- multiple choice -------------------------------------------------------------------------

def label_token_ids(tokenizer, labels: Sequence[str], prompt: str | None = None) -> Int[Tensor, " k"]:
    """The one token of each option label as the continuation of ``prompt`` (with a leading
    space; :func:`~interp_edit.prompts.encode_target`, whose neutral context stands in for a
    prompt not given). In context, not alone: a SentencePiece / Metaspace tokenizer (Llama,
    Mistral) encodes ``" A"`` alone as ``["▁", "▁A"]`` but continues a prompt with ``"▁A"``."""
    ids = []
    for label in labels:
        try:
            found = encode_target(tokenizer, label.lstrip(" "), prompt)
        except TokenizationError as err:
            raise TokenizationError(f"option label {label!r} does not tokenise as a continuation: {err}") from None
        if len(found) != 1:
            raise TokenizationError(f"option label {label!r} is {len(found)} tokens ({list(found)}) after the prompt; "
                                    "a label must be one token")
        ids.append(found[0])
    return torch.tensor(ids)


def _check_options(prompts, labels) -> tuple[list[str], list[list[str]]]:
    """``prompts`` and ``labels`` as lists, one non-empty list of option labels per prompt;
    else an :class:`~interp_edit.errors.InvalidArgumentError` naming the argument."""
    prompts, labels = _prompts(prompts), check_sequence(labels, "labels", nonempty=False)
    if len(labels) != len(prompts):
        raise InvalidArgumentError(f"labels has {len(labels)} lists of options for {len(prompts)} prompts: give one per prompt")
    return prompts, [check_sequence(opts, f"labels[{i}]") for i, opts in enumerate(labels)]


def option_probabilities(model, prompts: Sequence[str], labels: Sequence[Sequence[str]]) -> list[Float[Tensor, " k"]]:
    """Per question: the softmax over its option labels' next-token logits after the prompt
    (the arguments and the labels' tokens checked before the forward pass)."""
    prompts, labels = _check_options(prompts, labels)
    ids = [label_token_ids(model.tokenizer, opts, prompt) for prompt, opts in zip(prompts, labels, strict=True)]
    logits = last_token_logits(model, prompts)
    return [torch.softmax(row[opts], -1) for row, opts in zip(logits, ids, strict=True)]


def option_entropy(probs: Float[Tensor, "*batch k"]) -> Float[Tensor, "*batch"]:
    """Shannon entropy in bits, H(p) = −Σ p_i log2 p_i (0 · log 0 = 0)."""
    return -(probs * torch.log2(probs.clamp_min(1e-45))).where(probs > 0, torch.zeros_like(probs)).sum(-1)


def mcq_choices(probs: Sequence[Float[Tensor, " k"]]) -> Int[Tensor, " n"]:
    """The chosen option of each question: the argmax over its labels' logits."""
    return torch.stack([p.argmax() for p in probs]) if probs else torch.zeros(0, dtype=torch.long)


def _option_index(answer, i: int, n_options: int) -> int:
    """``answers[i]`` as an int in [0, n_options) (an int, a NumPy integer or an integer 0-d
    tensor); else an :class:`~interp_edit.errors.InvalidArgumentError` naming it and its value."""
    try:
        index = None if isinstance(answer, bool) else operator.index(answer)
    except TypeError:
        index = None
    if index is None:
        raise InvalidArgumentError(f"answers[{i}] must be an integer option index, got {answer!r} ({type(answer).__name__})")
    if not 0 <= index < n_options:
        raise InvalidArgumentError(f"answers[{i}] = {index} is not an option index: question {i} has "
                                   f"{n_options} options (0 to {n_options - 1})")
    return index


def mcq_accuracy(model, prompts: Sequence[str], labels: Sequence[Sequence[str]], answers: Sequence[int]) -> float:
    """The fraction of questions whose chosen option is ``answers[i]``: one answer per prompt,
    an index into its labels (0 <= answers[i] < len(labels[i])); else an
    :class:`~interp_edit.errors.InvalidArgumentError` naming ``answers[i]``, before any forward."""
    prompts, labels = _check_options(prompts, labels)
    answers = check_sequence(answers, "answers", nonempty=False)
    if len(answers) != len(prompts):
        raise InvalidArgumentError(f"answers has {len(answers)} entries for {len(prompts)} prompts: give one per prompt")
    answers = [_option_index(answer, i, len(opts)) for i, (answer, opts) in enumerate(zip(answers, labels, strict=True))]
    chosen = mcq_choices(option_probabilities(model, prompts, labels))
    return _mean(chosen == torch.tensor(answers, dtype=torch.long))
