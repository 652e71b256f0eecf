"""CounterFact scores (Meng et al. 2022), each a probability comparison per prompt:

- ``efficacy``: p(new) > p(true) on the rewrite prompt;
- ``paraphrase``: the same, averaged over the paraphrase prompts;
- ``neighborhood``: p(true) > p(new) on the neighbourhood prompts (other subjects, same relation
  and true object), averaged;
- ``same_subject``: p(answer) > p(new) on the subject's other relations (the edit must not
  leak into them);
- magnitudes: mean p(new) − p(true).

Multi-token targets are compared by their mean per-token teacher-forced log-probability (as
ROME's evaluation does). These are *scores* in the paper's sense, not EasyEdit's token accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from interp_edit.evaluation.logprobs import continuation_logprobs
from interp_edit.prompts import CounterFactRecord


def _mean_logprob(model, prompts: Sequence[str], targets: Sequence[str]):
    totals, counts = continuation_logprobs(model, prompts, targets)
    return totals / counts


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
    scores = _mean_logprob(model, prompts, targets).tolist() if prompts else []
    pairs: list[dict[tuple[str, str], dict[str, float]]] = [{} for _ in records]
    for (i, kind, label, text), value in zip(owners, scores, strict=True):
        pairs[i].setdefault((kind, text), {})[label] = value
    out = []
    for per_record in pairs:
        row: dict[str, list[float]] = {k: [] for k in ("efficacy", "paraphrase", "neighborhood", "same_subject")}
        magnitude = float("nan")
        for (kind, _), pair in per_record.items():
            new_wins = pair["new"] > pair["true"]
            row[kind].append(float(new_wins if kind in ("efficacy", "paraphrase") else not new_wins))
            if kind == "efficacy":
                magnitude = math.exp(pair["new"]) - math.exp(pair["true"])
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
