"""Judging edits from free generation instead of teacher forcing.

Teacher-forced scores ask whether the edited model *prefers* the new object when it is fed
after the prompt; "The Mirage of Model Editing" (ACL 2025) found that this overstates how
often the model *says* it (96.8% teacher-forced efficacy vs 38.5% judged from generation).
Here each prompt is continued by greedy decoding (batched, deterministic: see
:func:`~interp_edit.evaluation.metrics.greedy_token_ids`) for ``gen_tokens`` tokens and the
continuation is judged by two rules:

- **exact**: the continuation, leading whitespace stripped, starts with an answer;
- **contains**: an answer appears anywhere in the continuation.

Both match whole words: an answer counts only where it is not glued to letters or digits
around it (``"Karsan"`` does not contain ``"Karsa"``). A prompt counts when *any* of its
accepted answers matches. Row metrics (mean over the case's prompts of that kind; NaN when the
case has none):

- counterfact: ``gen_efficacy_*`` (rewrite prompt, new object), ``gen_paraphrase_*``
  (paraphrases, new object), ``gen_neighborhood_*`` (neighbourhood prompts: the generation still
  gives the *true* object);
- zsre: ``gen_efficacy_*`` (``src``), ``gen_paraphrase_*`` (``rephrase``), both against
  ``target_new``; ``gen_specificity_*`` (``loc`` still answered with ``loc_ans``);
- mquake: ``gen_efficacy_*`` (mean over the rewrites' prompts) and ``gen_multihop_*`` (the
  questions, against the new answer and its aliases);
- mcq: ``gen_efficacy_*`` on the rewrite prompt.

where ``*`` is ``exact`` or ``contains``. In the toy world every relation has exactly one
object per subject (a person is born in one city, speaks one language, has one profession and
plays one instrument; a city lies in one country, a country has one capital and one language),
so the true answer of a neighbourhood prompt is that one object; aliases of multi-hop answers
are accepted where a dataset lists them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from interp_edit.errors import InvalidArgumentError

#: the evaluation protocols of :func:`~interp_edit.evaluation.run_experiment`
PROTOCOLS = ("teacher_forced", "generation", "both")
#: the default number of greedily generated tokens a prompt is judged on
DEFAULT_GEN_TOKENS = 8
#: the judging rules, in the order of the metric suffixes
RULES = ("exact", "contains")


def check_protocol(protocol) -> str:
    """``protocol`` if it is one of :data:`PROTOCOLS`; else :class:`InvalidArgumentError`
    naming ``protocol``.

    >>> check_protocol("both")
    'both'
    """
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:
        raise InvalidArgumentError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return protocol


def check_gen_tokens(gen_tokens) -> int:
    """``gen_tokens`` if it is an integer >= 1; else :class:`InvalidArgumentError` naming it.

    >>> check_gen_tokens(8)
    8
    """
    if isinstance(gen_tokens, bool) or not isinstance(gen_tokens, int) or gen_tokens < 1:
        raise InvalidArgumentError(f"gen_tokens must be an integer >= 1, got {gen_tokens!r}")
    return gen_tokens


def uses_teacher_forcing(protocol: str) -> bool:
    """Whether ``protocol`` includes the teacher-forced scores.

    >>> uses_teacher_forcing("generation"), uses_teacher_forcing("both")
    (False, True)
    """
    return protocol in ("teacher_forced", "both")


def uses_generation(protocol: str) -> bool:
    """Whether ``protocol`` includes the generation judgements.

    >>> uses_generation("teacher_forced"), uses_generation("both")
    (False, True)
    """
    return protocol in ("generation", "both")


def _word(answer: str) -> re.Pattern:
    return re.compile(r"(?<!\w)" + re.escape(answer.strip()) + r"(?!\w)")


def exact_match(continuation: str, answers: str | Sequence[str]) -> bool:
    """Whether the continuation (leading whitespace stripped) starts with one of ``answers``
    as a whole word.

    >>> exact_match(" Karsa, a town", ["Karsa"]), exact_match(" the town of Karsa", "Karsa")
    (True, False)
    >>> exact_match(" Karsan", "Karsa")
    False
    """
    answers = [answers] if isinstance(answers, str) else list(answers)
    text = continuation.lstrip()
    return any(a.strip() and _word(a).match(text) is not None for a in answers)


def contains_match(continuation: str, answers: str | Sequence[str]) -> bool:
    """Whether one of ``answers`` appears anywhere in the continuation as a whole word.

    >>> contains_match(" the town of Karsa", "Karsa"), contains_match(" Karsan", ["Karsa"])
    (True, False)
    """
    answers = [answers] if isinstance(answers, str) else list(answers)
    return any(a.strip() and _word(a).search(continuation) is not None for a in answers)


def greedy_continuations(model, prompts: Sequence[str], gen_tokens: int = DEFAULT_GEN_TOKENS,
                         batch_size: int = 64) -> list[str]:
    """The greedy continuation of each prompt (``gen_tokens`` new tokens at most, the prompt
    not included), decoded; batched and deterministic.

    >>> greedy_continuations(model, ["Talvik Corlo was born in"], gen_tokens=1)
    [' Karsa']
    """
    from interp_edit.evaluation.metrics import greedy_token_ids

    check_gen_tokens(gen_tokens)
    ids = greedy_token_ids(model, list(prompts), gen_tokens, batch_size)
    return [model.tokenizer.decode(row) for row in ids]


def _probes(case) -> list[tuple[str, str, tuple[str, ...]]]:
    """(metric kind, prompt, accepted answers) of one case."""
    from interp_edit.data.cases import CounterFactCase, MCQCase, MQuAKECase, ZsRECase
    from interp_edit.data.ripple import RippleCase

    if isinstance(case, CounterFactCase):
        r = case.rewrite
        return ([("efficacy", r.text, (r.target_new,))] + [("paraphrase", p, (r.target_new,)) for p in case.paraphrase_prompts]
                + ([("neighborhood", p, (r.target_true,)) for p in case.neighborhood_prompts] if r.target_true else []))
    if isinstance(case, ZsRECase):
        return [("efficacy", case.src, (case.target_new,)), ("paraphrase", case.rephrase, (case.target_new,)),
                ("specificity", case.loc, (case.loc_ans,))]
    if isinstance(case, MQuAKECase):
        p = case.probe
        return ([("efficacy", r.text, (r.target_new,)) for r in case.requested_rewrite]
                + [("multihop", q, (p.new_answer, *p.new_answer_aliases)) for q in p.questions])
    if isinstance(case, (MCQCase, RippleCase)):
        return [("efficacy", case.rewrite.text, (case.rewrite.target_new,))]
    raise TypeError(f"unsupported case type {type(case).__name__}")


#: the metric kinds each case type reports (so a case without such prompts gets NaN)
_KINDS = {"CounterFactCase": ("efficacy", "paraphrase", "neighborhood"), "ZsRECase": ("efficacy", "paraphrase", "specificity"),
          "MQuAKECase": ("efficacy", "multihop"), "MCQCase": ("efficacy",),
          "RippleCase": ("efficacy",)}


def generation_rows(model, cases: Sequence, gen_tokens: int = DEFAULT_GEN_TOKENS, batch_size: int = 64) -> list[dict]:
    """Per case, the generation metrics of the module docstring (``gen_<kind>_exact`` and
    ``gen_<kind>_contains``), every prompt of every case decoded in shared batches.

    >>> from interp_edit.data import load_dataset
    >>> rows = generation_rows(model, [load_dataset("toyworld-counterfact")[0]])
    >>> sorted(rows[0])[:2], rows[0]["gen_efficacy_exact"]        # unedited: the true object
    (['gen_efficacy_contains', 'gen_efficacy_exact'], 0.0)
    >>> rows[0]["gen_neighborhood_exact"]
    1.0
    """
    check_gen_tokens(gen_tokens)
    probes = [(row, kind, answers, prompt) for row, case in enumerate(cases) for kind, prompt, answers in _probes(case)]
    texts = greedy_continuations(model, [p for *_, p in probes], gen_tokens, batch_size) if probes else []
    found: list[dict[str, list[float]]] = [{} for _ in cases]
    for (row, kind, answers, _), text in zip(probes, texts, strict=True):
        found[row].setdefault(f"gen_{kind}_exact", []).append(float(exact_match(text, answers)))
        found[row].setdefault(f"gen_{kind}_contains", []).append(float(contains_match(text, answers)))
    rows = []
    for case, per_row in zip(cases, found, strict=True):
        row = {f"gen_{kind}_{rule}": math.nan for kind in _KINDS[type(case).__name__] for rule in RULES}
        row.update({key: sum(values) / len(values) for key, values in per_row.items()})
        rows.append(row)
    return rows
