"""Metrics of dataset cases (any of the five formats), one row per case, with every
teacher-forced continuation of all cases scored in shared batches.

Row keys by format (see :mod:`interp_edit.evaluation.metrics` for the definitions):

- counterfact: ``efficacy_score``, ``efficacy_magnitude``, ``paraphrase_score``,
  ``paraphrase_magnitude``, ``neighborhood_score``, ``neighborhood_magnitude``,
  ``efficacy_token_accuracy``, ``paraphrase_token_accuracy``, ``neighborhood_token_accuracy``
  (of the true object), ``multihop_accuracy`` (cases with a multi-hop probe), ``fluency``
  (with ``fluency=True``);
- zsre: ``efficacy_token_accuracy``, ``paraphrase_token_accuracy``,
  ``specificity_token_accuracy`` (``loc_ans`` after ``loc``), ``efficacy_score`` and
  ``paraphrase_score`` (against ``answers[0]``);
- mquake: ``multihop_accuracy`` (new answer), ``multihop_accuracy_original`` (old answer),
  ``efficacy_score`` (mean over the case's rewrites);
- mcq: ``mcq_reliability``, ``mcq_generalisation``, ``mcq_locality``, ``mcq_portability``
  (accuracy per kind), ``option_entropy`` (bits, mean over the case's questions) and
  ``option_entropy_<kind>``, ``efficacy_score``;
- ripple: ``efficacy_score``, ``efficacy_token_accuracy`` and, under every protocol, each ripple
  kind's accuracy (``compositionality_I``, ``compositionality_II``, ``relation_specificity``;
  a test is right when greedy decoding emits its answer on any phrasing, as RippleEdits judges
  it; NaN for a kind the case has no test of).

``protocol="generation"`` replaces these teacher-forced metrics by the ``gen_*`` metrics of
:mod:`interp_edit.evaluation.generation` (greedy decoding judged by exact / contains match);
``protocol="both"`` gives both sets. ``fluency`` is measured under every protocol.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from interp_edit.data.cases import MCQ_KINDS, CounterFactCase, MCQCase, MQuAKECase, Rewrite, ZsRECase
from interp_edit.data.ripple import RippleCase
from interp_edit.evaluation.logprobs import TokenScores, score_continuations
from interp_edit.evaluation.metrics import (
    COMPARISONS,
    any_phrasing_right,
    counterfact_score,
    generation_fluency,
    mcq_choices,
    new_beats_true,
    option_entropy,
    option_probabilities,
)
from interp_edit.validation import check_choice, check_int, check_records


class _Pairs:
    """Collects (prompt, target) pairs, scores them in one batched pass."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.targets: list[str] = []
        self.scores: TokenScores | None = None

    def add(self, prompts: Sequence[str], target: str) -> list[int]:
        start = len(self.prompts)
        self.prompts += list(prompts)
        self.targets += [target] * len(prompts)
        return list(range(start, len(self.prompts)))

    def run(self, model) -> None:
        self.scores = score_continuations(model, self.prompts, self.targets)

    def get(self, index: list[int]) -> TokenScores:
        return TokenScores([self.scores.logprobs[i] for i in index], [self.scores.top1[i] for i in index])


def _mean(values) -> float:
    values = [float(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]
    return sum(values) / len(values) if values else math.nan


def _comparison(pairs: _Pairs, prompts: Sequence[str], rewrite: Rewrite):
    """The new target's scores on ``prompts`` and, when the rewrite names the answer it
    replaces, the comparison with it (else NaN: nothing to compare with, e.g. zsRE written as
    ROME does)."""
    new = pairs.add(prompts, rewrite.target_new)
    true = pairs.add(prompts, rewrite.target_true) if rewrite.target_true is not None else None

    def finish(compare: str = "mean_logprob", reverse: bool = False) -> tuple[TokenScores, TokenScores | None, torch.Tensor]:
        a = pairs.get(new)
        if true is None:
            return a, None, torch.full((len(prompts),), math.nan)
        b = pairs.get(true)
        return a, b, new_beats_true(b, a, compare) if reverse else new_beats_true(a, b, compare)

    return finish


def _multihop(pairs: _Pairs, questions: Sequence[str], answers: Sequence[str]):
    index = [pairs.add(questions, a) for a in answers]

    def finish() -> float:
        rows = [i for per_answer in index for i in per_answer]  # every phrasing × every answer alias
        return any_phrasing_right(pairs.get(rows).exact, [range(len(rows))])[0]

    return finish


def case_texts(case, *, fluency: bool = False) -> list[tuple[str, str, tuple[str, ...]]]:
    """(field, prompt, targets teacher-forced after it) of every prompt an evaluation of
    ``case`` runs (the fields named as in the case's file; no targets: the prompt alone is read,
    a multiple-choice question's last token or a prompt continued by greedy decoding)."""
    out: list[tuple[str, str, tuple[str, ...]]] = []

    def rewrite(prefix: str, r: Rewrite) -> None:
        out.append((prefix + "prompt", r.text, (r.target_new,) + ((r.target_true,) if r.target_true is not None else ())))

    if isinstance(case, CounterFactCase):
        r = case.rewrite
        both = (r.target_new,) + ((r.target_true,) if r.target_true is not None else ())
        rewrite("requested_rewrite.", r)
        out += [(f"paraphrase_prompts[{i}]", p, both) for i, p in enumerate(case.paraphrase_prompts)]
        out += [(f"neighborhood_prompts[{i}]", p, both) for i, p in enumerate(case.neighborhood_prompts)]
        if case.multihop is not None:
            h = case.multihop
            out += [(f"multihop.questions[{i}]", q, (h.new_answer, *h.new_answer_aliases)) for i, q in enumerate(h.questions)]
        if fluency:
            out += [(f"generation_prompts[{i}]", p, ()) for i, p in enumerate(case.generation_prompts)]
    elif isinstance(case, ZsRECase):
        both = (case.target_new,) + ((case.target_true,) if case.target_true is not None else ())
        out += [("src", case.src, both), ("rephrase", case.rephrase, both), ("loc", case.loc, (case.loc_ans,))]
    elif isinstance(case, MQuAKECase):
        for i, r in enumerate(case.requested_rewrite):
            rewrite(f"requested_rewrite[{i}].", r)
        p = case.probe
        answers = (p.new_answer, *p.new_answer_aliases, p.answer, *p.answer_aliases)
        out += [(f"questions[{i}]", q, answers) for i, q in enumerate(p.questions)]
    elif isinstance(case, RippleCase):
        rewrite("requested_rewrite.", case.rewrite)
        out += [(f"tests[{t}].prompts[{i}]", q, (test.answer, test.before)) for t, test in enumerate(case.tests)
                for i, q in enumerate(test.prompts)]
    elif isinstance(case, MCQCase):
        rewrite("requested_rewrite.", case.rewrite)
        out += [(f"questions[{i}].prompt", q.prompt, ()) for i, q in enumerate(case.questions)]
    return out


def check_lengths(model, named: Sequence[tuple[str, str, str, Sequence[str]]]) -> None:
    """Every (what, field, prompt, targets) fits the model's context: BOS, the prompt's tokens and
    every target's tokens but its last (what a teacher-forced forward reads; a prompt read alone
    needs one position more than itself). Else :class:`~interp_edit.errors.PromptTooLongError`
    naming ``what`` (e.g. ``case 12``) and the field, before any forward. Targets are tokenised
    only where a generous bound (one token per UTF-8 byte) could overflow the context."""
    from interp_edit.batching import encode_prompts
    from interp_edit.errors import PromptTooLongError
    from interp_edit.prompts import encode_target

    n_ctx, tokenizer = getattr(getattr(model, "cfg", None), "n_ctx", None), getattr(model, "tokenizer", None)
    if n_ctx is None or tokenizer is None:  # a stand-in without a context or tokenizer (tests' scorers): nothing to check
        return
    unique = list(dict.fromkeys(prompt for _, _, prompt, _ in named))
    lengths = dict(zip(unique, (len(ids) for ids in encode_prompts(tokenizer, unique)), strict=True))
    for what, field, prompt, targets in named:
        size = lengths[prompt]
        for target in targets:
            if size + len((" " + target.lstrip(" ")).encode("utf-8")) - 1 > n_ctx:
                size = max(size, lengths[prompt] + len(encode_target(tokenizer, target, prompt)) - 1)
        if size > n_ctx:
            with_target = " with its target" if size > lengths[prompt] else ""
            raise PromptTooLongError(f"{what}: field {field!r}: {prompt!r:.120}{with_target} is {size} tokens (BOS "
                                     f"included), more than the model's context {n_ctx}")


def check_case_lengths(model, cases: Sequence, *, fluency: bool = False) -> None:
    """:func:`check_lengths` of every prompt :func:`evaluate_cases` runs on ``cases``, naming the
    case by its id and the field."""
    check_lengths(model, [(f"case {case.case_id}", field, prompt, targets) for case in cases
                          for field, prompt, targets in case_texts(case, fluency=fluency)])


def evaluate_cases(model, cases: Sequence, *, fluency: bool = False, max_new_tokens: int = 50,
                   compare: str = "mean_logprob", protocol: str = "teacher_forced", gen_tokens: int = 8) -> list[dict]:
    """One dict of metrics per case (keys by format and ``protocol``: see the module
    docstring), plus ``case_id``. ``gen_tokens``: the greedy tokens a generation is judged on."""
    from interp_edit.evaluation.generation import (
        check_gen_tokens,
        check_protocol,
        generation_rows,
        uses_generation,
        uses_teacher_forcing,
    )

    cases = check_records(cases, "cases", (CounterFactCase, ZsRECase, MQuAKECase, RippleCase, MCQCase),
                          hint="load them with interp_edit.data.load_dataset(...)")
    check_protocol(protocol)
    check_gen_tokens(gen_tokens)
    check_choice(compare, "compare", COMPARISONS)
    check_int(max_new_tokens, "max_new_tokens", minimum=1)
    check_case_lengths(model, cases, fluency=fluency)  # a prompt beyond the context: named, before any forward
    if uses_teacher_forcing(protocol):
        rows = _teacher_forced_rows(model, cases, compare)
    else:
        rows = [{"case_id": case.case_id} for case in cases]
    if uses_generation(protocol):
        for row, found in zip(rows, generation_rows(model, cases, gen_tokens), strict=True):
            row.update(found)
    ripple = [(row, case) for row, case in enumerate(cases) if isinstance(case, RippleCase)]
    if ripple:
        from interp_edit.evaluation.ripple import ripple_scores

        for (row, _), found in zip(ripple, ripple_scores(model, [c for _, c in ripple]), strict=True):
            rows[row].update({k: v for k, v in found.items() if k not in ("case_id", "edit_kind")})
    if fluency:
        generation = [(row, p) for row, case in enumerate(cases) if isinstance(case, CounterFactCase)
                      for p in (case.generation_prompts or (case.rewrite.text,))]
        if generation:
            values = generation_fluency(model, [p for _, p in generation], max_new_tokens).tolist()
            per_row: dict[int, list[float]] = {}
            for (row, _), value in zip(generation, values, strict=True):
                per_row.setdefault(row, []).append(value)
            for row, found in per_row.items():
                rows[row]["fluency"] = _mean(found)
    return rows


def _teacher_forced_rows(model, cases: Sequence, compare: str) -> list[dict]:
    pairs = _Pairs()
    finishers = []
    mcq_questions: list[tuple[int, object]] = []
    for row, case in enumerate(cases):
        if isinstance(case, CounterFactCase):
            r = case.rewrite
            parts = {"efficacy": _comparison(pairs, [r.text], r), "paraphrase": _comparison(pairs, case.paraphrase_prompts, r),
                     "neighborhood": _comparison(pairs, case.neighborhood_prompts, r)}
            hop = case.multihop and _multihop(pairs, case.multihop.questions, (case.multihop.new_answer, *case.multihop.new_answer_aliases))
            finishers.append(lambda parts=parts, hop=hop: _counterfact_row(parts, hop, compare))
        elif isinstance(case, ZsRECase):
            r = case.rewrite
            parts = {"efficacy": _comparison(pairs, [case.src], r), "paraphrase": _comparison(pairs, [case.rephrase], r)}
            loc = pairs.add([case.loc], case.loc_ans)
            finishers.append(lambda parts=parts, loc=loc: _zsre_row(pairs, parts, loc, compare))
        elif isinstance(case, MQuAKECase):
            p = case.probe
            new = _multihop(pairs, p.questions, (p.new_answer, *p.new_answer_aliases))
            old = _multihop(pairs, p.questions, (p.answer, *p.answer_aliases))
            eff = [_comparison(pairs, [r.text], r) for r in case.requested_rewrite]
            finishers.append(lambda new=new, old=old, eff=eff: {
                "multihop_accuracy": new(), "multihop_accuracy_original": old(),
                "efficacy_score": _mean([float(f(compare)[2].float().mean()) for f in eff])})
        elif isinstance(case, RippleCase):
            eff = _comparison(pairs, [case.rewrite.text], case.rewrite)
            finishers.append(lambda eff=eff: {"efficacy_score": float(eff(compare)[2].float().mean()),
                                              "efficacy_token_accuracy": _mean(eff(compare)[0].token_accuracy)})
        elif isinstance(case, MCQCase):
            eff = _comparison(pairs, [case.rewrite.text], case.rewrite)
            mcq_questions += [(row, q) for q in case.questions]
            finishers.append(lambda eff=eff: {"efficacy_score": float(eff(compare)[2].float().mean())})
        else:
            raise TypeError(f"case {row}: unsupported case type {type(case).__name__}")
    pairs.run(model)
    rows = [{"case_id": case.case_id, **finish()} for case, finish in zip(cases, finishers, strict=True)]
    if mcq_questions:
        _add_mcq(model, rows, mcq_questions)
    return rows


def _counterfact_row(parts, hop, compare: str) -> dict:
    out = {}
    for name, finish in parts.items():
        new, true, wins = finish(compare, reverse=name == "neighborhood")
        if name == "neighborhood":
            out.update(neighborhood_score=_mean(wins), neighborhood_magnitude=_mean(true.prob - new.prob),
                       neighborhood_token_accuracy=_mean(true.token_accuracy))
        else:
            out.update({f"{name}_score": _mean(wins), f"{name}_magnitude": _mean(new.prob - true.prob),
                        f"{name}_token_accuracy": _mean(new.token_accuracy)})
    out["multihop_accuracy"] = hop() if hop else math.nan
    return out


def _zsre_row(pairs: _Pairs, parts, loc, compare: str) -> dict:
    out = {}
    for name, finish in parts.items():
        new, _, wins = finish(compare)
        out.update({f"{name}_token_accuracy": _mean(new.token_accuracy), f"{name}_score": _mean(wins)})
    out["specificity_token_accuracy"] = _mean(pairs.get(loc).token_accuracy)
    return out


def _add_mcq(model, rows: list[dict], questions) -> None:
    probs = option_probabilities(model, [q.prompt for _, q in questions], [q.labels for _, q in questions])
    chosen = mcq_choices(probs).tolist()
    per_row: dict[int, dict[str, list[float]]] = {}
    for (row, q), p, choice in zip(questions, probs, chosen, strict=True):
        slot = per_row.setdefault(row, {})
        entropy = float(option_entropy(p))
        slot.setdefault(f"mcq_{q.kind}", []).append(float(choice == q.answer))
        slot.setdefault(f"option_entropy_{q.kind}", []).append(entropy)
        slot.setdefault("option_entropy", []).append(entropy)
    for row, slot in per_row.items():
        for kind in MCQ_KINDS:
            rows[row].setdefault(f"mcq_{kind}", math.nan)
        rows[row].update({key: _mean(values) for key, values in slot.items()})


def aggregate(rows: Sequence[dict]) -> dict[str, float]:
    """The mean of every numeric key over rows (NaN entries skipped), plus ``counterfact_score``
    (the harmonic mean of the efficacy, paraphrase and neighbourhood scores) when all three
    are present."""
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "case_id"]
    out = {}
    for key in keys:
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and r[key] == r[key]]
        out[key] = sum(values) / len(values) if values else math.nan
    if all(k in out for k in ("efficacy_score", "paraphrase_score", "neighborhood_score")):
        out["counterfact_score"] = counterfact_score(out["efficacy_score"], out["paraphrase_score"], out["neighborhood_score"])
    return out


def probed_cases(cases: Sequence) -> list:
    """The cases :func:`fact_probes` asks about: those whose true answer is known."""
    return [c for c in cases if isinstance(c, ZsRECase) or c.rewrites()[0].target_true]


def fact_probes(cases: Sequence) -> list[tuple[str, str]]:
    """(prompt, true answer) of each case's first rewrite: unrelated facts to watch for drift."""
    return [(c.src, c.answers[0]) if isinstance(c, ZsRECase) else (c.rewrites()[0].text, c.rewrites()[0].target_true)
            for c in probed_cases(cases)]


def unrelated_metrics(model, probes: Sequence[tuple[str, str]], reference: Sequence[float] | None = None) -> tuple[dict, list[float]]:
    """Drift on unrelated facts: ``unrelated_accuracy`` (the true answer is still emitted by
    greedy decoding) and, given the unedited log-probs ``reference``, ``unrelated_logprob_drop``
    = mean (log p_unedited − log p_now) of the true answers. Returns the metrics and the
    current log-probs."""
    if not probes:
        return {}, []
    scores = score_continuations(model, [p for p, _ in probes], [a for _, a in probes])
    logprobs = scores.total.tolist()
    out = {"unrelated_accuracy": _mean(scores.exact.float())}
    if reference is not None:
        out["unrelated_logprob_drop"] = _mean([a - b for a, b in zip(reference, logprobs, strict=True)])
    return out, logprobs
