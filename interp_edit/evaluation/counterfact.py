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

from interp_edit.errors import DatasetError, InvalidArgumentError
from interp_edit.evaluation.logprobs import TokenScores, score_continuations
from interp_edit.evaluation.metrics import new_beats_true
from interp_edit.prompts import CounterFactRecord
from interp_edit.validation import check_records

#: what counterfact_scores needs, for the error on an input that lacks it
_NEEDS = ("counterfact_scores needs a CounterFactRecord (interp_edit.toyworld.counterfact_records) or a public "
          "CounterFact record dict (requested_rewrite {prompt, subject, target_new, target_true}, paraphrase_prompts, "
          "neighborhood_prompts; e.g. the cases of load_dataset(...) as r.to_counterfact() or the file's records): a "
          "plain edit request has no paraphrase or neighbourhood prompts to score (for the rewrite prompt alone use "
          "interp_edit.evaluation.metrics.efficacy_score)")


def _from_counterfact(item, index: int):
    """A public CounterFact record dict as a :class:`CounterFactRecord`, parsed by the data
    loaders' parser (the case id defaults to the index; ``same_subject_prompts``, this
    toolkit's extension, is read when given); anything else is returned as given."""
    from interp_edit.data.formats import Where, parse_counterfact

    if not isinstance(item, dict):
        return item
    if "requested_rewrite" not in item:
        raise InvalidArgumentError(f"records[{index}]: a dict without 'requested_rewrite' (keys {sorted(item)}); {_NEEDS}")
    try:
        case = parse_counterfact({"case_id": index, **item} if item.get("case_id") is None else item,
                                 Where("counterfact_scores records", index))
    except DatasetError as err:
        raise InvalidArgumentError(str(err)) from None
    same = item.get("same_subject_prompts") or ()
    if isinstance(same, (str, bytes)) or not isinstance(same, (list, tuple)) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 for p in same):
        raise InvalidArgumentError(f"records[{index}]: field 'same_subject_prompts' must be a list of "
                                   f"[prompt, answer] pairs, got {same!r}")
    rewrite = item["requested_rewrite"]
    relation = rewrite.get("relation_id") if isinstance(rewrite.get("relation_id"), str) else None
    r = case.rewrite
    return CounterFactRecord(int(case.case_id) if case.case_id.lstrip("-").isdigit() else index, r.prompt, r.subject,
                             relation or "unknown", r.target_true, r.target_new, case.paraphrase_prompts,
                             case.neighborhood_prompts, case.attribute_prompts, tuple(tuple(p) for p in same))


def check_counterfact_records(records) -> list[CounterFactRecord]:
    """``records`` as CounterFactRecords (public CounterFact dicts converted), every field
    checked: an :class:`~interp_edit.errors.InvalidArgumentError` names the index and the field."""
    return check_records(records, "records", CounterFactRecord, convert=_from_counterfact, hint=_NEEDS,
                         fields=("prompt", "subject", "target_new", "target_true", "paraphrase_prompts",
                                 "neighborhood_prompts", "same_subject_prompts"))


def counterfact_scores(model, records: Sequence[CounterFactRecord | dict]) -> list[dict[str, float]]:
    """Per record: ``efficacy``, ``paraphrase``, ``neighborhood``, ``same_subject`` scores and
    ``efficacy_magnitude`` (p(new) − p(true) on the rewrite prompt). All prompts of all records
    are scored in shared batches; each score is the mean over the record's prompts of that kind
    by position, so a prompt listed twice counts twice (as in
    :func:`~interp_edit.evaluation.evaluate_cases`). A record is a :class:`CounterFactRecord` or a public
    CounterFact record dict (read by the data loaders' parser); anything else, or a bad field,
    raises :class:`~interp_edit.errors.InvalidArgumentError` naming the index and the field
    before anything is scored (an :class:`~interp_edit.editing.EditRequest` has no paraphrase
    or neighbourhood prompts, and the error says what to pass)."""
    records = check_counterfact_records(records)
    prompts, targets, owners = [], [], []

    def add(record_index: int, kind: str, position: int, text: str, answer_pairs: Sequence[tuple[str, str]]):
        # a prompt is owned by its position in the record (kind, index), not its text: a
        # prompt repeated within a record counts once per occurrence, as in evaluate_cases
        for label, target in answer_pairs:
            prompts.append(text)
            targets.append(target)
            owners.append((record_index, kind, position, label))

    for i, r in enumerate(records):
        pair = (("new", r.target_new), ("true", r.target_true))
        add(i, "efficacy", 0, r.prompt.format(r.subject), pair)
        for j, text in enumerate(r.paraphrase_prompts):
            add(i, "paraphrase", j, text, pair)
        for j, text in enumerate(r.neighborhood_prompts):
            add(i, "neighborhood", j, text, pair)
        for j, (text, answer) in enumerate(r.same_subject_prompts):
            add(i, "same_subject", j, text, (("new", r.target_new), ("true", answer)))
    scores = score_continuations(model, prompts, targets) if prompts else TokenScores([], [])
    pairs: list[dict[tuple[str, int], dict[str, TokenScores]]] = [{} for _ in records]
    for row_index, (i, kind, position, label) in enumerate(owners):
        pairs[i].setdefault((kind, position), {})[label] = TokenScores([scores.logprobs[row_index]], [scores.top1[row_index]])
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
