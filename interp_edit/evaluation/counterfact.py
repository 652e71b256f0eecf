"""CounterFact scores (Meng et al. 2022), each a probability comparison per prompt:

- ``efficacy``: p(new) > p(true) on the rewrite prompt;
- ``paraphrase``: the same, averaged over the paraphrase prompts;
- ``neighborhood``: p(true) > p(new) on the neighbourhood prompts (other subjects, same relation
  and true object), averaged;
- ``same_subject``: p(answer) > p(new) on the subject's other relations (the edit must not
  leak into them);
- magnitudes: mean p(new) − p(true), a target's probability the product of its teacher-forced
  token probabilities (as in :mod:`~interp_edit.evaluation.metrics` and
  :func:`~interp_edit.evaluation.evaluate_cases`; ROME's ``summarize.py`` exponentiates the mean
  per-token log-probability instead — the same for one-token targets, docs/evaluation.md).

Multi-token targets are compared by their mean per-token teacher-forced log-probability (as
ROME's evaluation does). These are *scores* in the paper's sense, not EasyEdit's token accuracy.
Every comparison is :func:`~interp_edit.evaluation.metrics.new_beats_true` (strict: a tie
counts for neither side), the one rule all metrics share.
"""

from __future__ import annotations

from collections.abc import Sequence

from interp_edit.evaluation.logprobs import TokenScores, score_continuations
from interp_edit.evaluation.metrics import new_beats_true
from interp_edit.prompts import CounterFactRecord


def counterfact_scores(model, records: Sequence[CounterFactRecord]) -> list[dict[str, float]]:
    """Per record: ``efficacy``, ``paraphrase``, ``neighborhood``, ``same_subject`` scores and
    ``efficacy_magnitude`` (p(new) − p(true) on the rewrite prompt). All prompts of all records
    are scored in shared batches."""
    prompts, targets, owners = [], [], []

    def add(record_index: int, kind: str, texts: Sequence[str], answer_pairs: Sequence[tuple[str, str]]):
        for text in texts:
            for label, target in answer_pairs:
                prompts.append(text)
                targets.append(target)
                owners.append((record_index, kind, label, text))

    for i, r in enumerate(records):
        pair = (("new", r.target_new), ("true", r.target_true))
        add(i, "efficacy", [r.prompt.format(r.subject)], pair)
        add(i, "paraphrase", r.paraphrase_prompts, pair)
        add(i, "neighborhood", r.neighborhood_prompts, pair)
        for text, answer in r.same_subject_prompts:
            add(i, "same_subject", [text], (("new", r.target_new), ("true", answer)))
    scores = score_continuations(model, prompts, targets) if prompts else TokenScores([], [])
    pairs: list[dict[tuple[str, str], dict[str, TokenScores]]] = [{} for _ in records]
    for row_index, (i, kind, label, text) in enumerate(owners):
        pairs[i].setdefault((kind, text), {})[label] = TokenScores([scores.logprobs[row_index]], [scores.top1[row_index]])
    out = []
    for per_record in pairs:
        row: dict[str, list[float]] = {k: [] for k in ("efficacy", "paraphrase", "neighborhood", "same_subject")}
        magnitude = float("nan")
        for (kind, _), pair in per_record.items():
            new, true = pair["new"], pair["true"]
            # efficacy / paraphrase: [p(new) > p(true)]; neighbourhood / same subject: [p(true) > p(new)]
            wins = new_beats_true(new, true) if kind in ("efficacy", "paraphrase") else new_beats_true(true, new)
            row[kind].append(float(wins[0]))
            if kind == "efficacy":
                magnitude = float(new.prob[0] - true.prob[0])
        out.append({k: (sum(v) / len(v) if v else float("nan")) for k, v in row.items()} | {"efficacy_magnitude": magnitude})
    return out


def mean_scores(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of each score over records (NaN entries — records without such prompts — skipped)."""
    keys = rows[0].keys() if rows else ()
    out = {}
    for key in keys:
        values = [r[key] for r in rows if r[key] == r[key]]
        out[key] = sum(values) / len(values) if values else float("nan")
    return out
