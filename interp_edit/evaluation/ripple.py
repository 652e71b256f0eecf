"""Ripple effects of an edit (RippleEdits, Cohen et al., TACL 2024) with ground truth from the
toy world: an edit changes one fact, and the facts that follow from it must change with it,
while the subject's other facts must not.

Cases: :mod:`interp_edit.data.ripple` (the built-in data set ``toyworld-ripple``, also
:func:`toy_ripple_cases`): a person's birth city moved (``compositionality_I``,
``relation_specificity``) or a city moved to another country (``compositionality_II``).
RippleEdits' other criteria need structure the toy world lacks (:data:`UNAVAILABLE` says which
and why).

Scoring (:func:`ripple_scores`): a test is right when greedy decoding emits its expected
answer on any of its phrasings (MQuAKE's rule, :func:`~interp_edit.evaluation.metrics.any_phrasing_right`).
A row per case gives each kind's accuracy; score the unedited model too (``before=True``
expects the answers before the edit) to keep the tests the model knew, as RippleEdits does
(:func:`known_tests_only`). Experiments on ``toyworld-ripple``
(:func:`~interp_edit.evaluation.run_experiment`) do both: the tests are filtered on the unedited
model before any edit, and every row carries each kind's accuracy.

>>> cases = toy_ripple_cases(world, n=2)
>>> [c.edit_kind for c in cases], sorted({t.kind for t in cases[0].tests})
(['person', 'city'], ['compositionality_I', 'relation_specificity'])
>>> rows = ripple_scores(model, cases)             # the unedited model: the old answers hold
>>> round(rows[0]["relation_specificity"], 2)
1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from interp_edit.data.ripple import RIPPLE_KINDS, UNAVAILABLE, RippleCase, RippleTest


def toy_ripple_cases(world, n: int | None = None, *, people_per_city: int = 5, seed: int = 0) -> list[RippleCase]:
    """``n`` ripple cases (all by default: one per person and per city, interleaved person,
    city, person...), in a fixed shuffled order: the cases of the built-in data set
    ``toyworld-ripple`` (:mod:`interp_edit.data.ripple`).

    >>> case = toy_ripple_cases(world, n=1)[0]           # a person's birth city moved
    >>> case.rewrite.prompt, [t.kind for t in case.tests][:3]
    ('{} was born in', ['compositionality_I', 'compositionality_I', 'compositionality_I'])
    """
    from interp_edit.data.formats import Where
    from interp_edit.data.ripple import parse_ripple, toy_ripple

    records = toy_ripple(world, seed, n=n, people_per_city=people_per_city)
    return [parse_ripple(r, Where("toyworld-ripple", i)) for i, r in enumerate(records)]


def _check_cases(cases, fields: Sequence[str], *, nonempty: bool = False) -> list[RippleCase]:
    """``cases`` as a list of :class:`RippleCase` whose ``fields`` are checked, before any
    forward (:func:`~interp_edit.validation.check_records`: a bad case raises
    :class:`~interp_edit.errors.InvalidArgumentError` naming its index and field; ``nonempty``:
    an empty list too)."""
    from interp_edit.errors import InvalidArgumentError
    from interp_edit.validation import check_records

    hint = "load them with toy_ripple_cases(world) or load_dataset('toyworld-ripple')"
    cases = check_records(cases, "cases", RippleCase, fields=fields, hint=hint)
    if nonempty and not cases:
        raise InvalidArgumentError(f"cases is empty: no RippleCase to edit; {hint}")
    return cases


def _answered(model, cases: Sequence[RippleCase], before: bool) -> list[list[bool]]:
    """Per case, per test: answered right (any phrasing; ``before``: the pre-edit answer)."""
    from interp_edit.evaluation.metrics import answered, any_phrasing_right

    prompts, answers, groups = [], [], []
    for case in cases:
        for test in case.tests:
            expected = test.before if before else test.answer
            groups.append(list(range(len(prompts), len(prompts) + len(test.prompts))))
            prompts += list(test.prompts)
            answers += [[expected]] * len(test.prompts)
    right = any_phrasing_right(answered(model, prompts, answers), groups) if prompts else []
    out, at = [], 0
    for case in cases:
        out.append([bool(v) for v in right[at : at + len(case.tests)]])
        at += len(case.tests)
    return out


def _by_kind(case: RippleCase, flags: Sequence[bool], keep: Sequence[bool] | None = None) -> dict[str, float]:
    row = {}
    for kind in RIPPLE_KINDS:
        values = [f for j, (t, f) in enumerate(zip(case.tests, flags, strict=True))
                  if t.kind == kind and (keep is None or keep[j])]
        row[kind] = sum(values) / len(values) if values else math.nan
    return row


def ripple_scores(model, cases: Sequence[RippleCase], *, before: bool = False) -> list[dict]:
    """Per case: each kind's accuracy (mean over its tests of "any phrasing answered"; NaN for
    a kind the case has no test of), plus ``case_id`` and ``edit_kind``. ``before=True`` checks
    the answers the tests had before the edit (run it on the unedited model to find the facts
    it knew). Every case is checked first (a bad one raises
    :class:`~interp_edit.errors.InvalidArgumentError` naming its index and field)."""
    cases = _check_cases(cases, ("case_id", "edit_kind", "tests"))
    return [{"case_id": c.case_id, "edit_kind": c.edit_kind, **_by_kind(c, flags)}
            for c, flags in zip(cases, _answered(model, cases, before), strict=True)]


def known_tests_only(model, cases: Sequence[RippleCase]) -> tuple[list[RippleCase], dict[str, int]]:
    """The cases with only the tests ``model`` (unedited) answers right before the edit
    (RippleEdits' filter: a consequence the model never knew cannot ripple), and the number of
    tests kept per kind. A case keeps its edit even when no test is left.

    >>> kept, known = known_tests_only(model, toy_ripple_cases(world, n=2))
    >>> sorted(known), len(kept)
    (['compositionality_I', 'compositionality_II', 'relation_specificity'], 2)
    """
    from dataclasses import replace

    cases = list(cases)
    knew = _answered(model, cases, before=True)
    kept = [replace(c, tests=tuple(t for t, k in zip(c.tests, flags, strict=True) if k))
            for c, flags in zip(cases, knew, strict=True)]
    return kept, {kind: sum(t.kind == kind for c in kept for t in c.tests) for kind in RIPPLE_KINDS}


@dataclass
class RippleResult:
    """:func:`ripple_study`'s result: per case, each kind's accuracy after its edit over the
    tests the unedited model answered right (``rows``), and the edit's efficacy (``edited``:
    the edited fact itself is answered with its new object).

    >>> res = ripple_study(model, "rome", toy_ripple_cases(world, n=4), config={"steps": 5})
    >>> sorted(res.summary())
    ['compositionality_I', 'compositionality_II', 'efficacy', 'relation_specificity']
    >>> fig = res.plot()
    """

    method: str
    rows: list[dict]
    #: tests the unedited model knew, per kind, over all cases
    known: dict[str, int]
    unavailable: dict[str, str]

    def summary(self) -> dict[str, float]:
        """Mean over cases of each kind (cases without a known test of it left out) and efficacy."""
        out = {}
        for key in (*RIPPLE_KINDS, "efficacy"):
            values = [r[key] for r in self.rows if not math.isnan(r[key])]
            out[key] = sum(values) / len(values) if values else math.nan
        return out

    def __repr__(self) -> str:
        from interp_edit.reprs import number, short_repr

        return short_repr("RippleResult", method=repr(self.method), cases=str(len(self.rows)),
                          **{k: number(v) for k, v in self.summary().items()})

    def plot(self):
        """A bar per kind (and efficacy): the mean accuracy after the edits, known tests only."""
        import plotly.graph_objects as go

        from interp_edit.viz.layout import fit_layout  # (importing interp_edit.viz sets the Jupyter renderer)

        summary = self.summary()
        labels = [f"{k}<br>({self.known.get(k, len(self.rows))} tests)" for k in summary]
        fig = go.Figure(go.Bar(x=labels, y=list(summary.values())))
        missing = "; ".join(f"{k}: {why}" for k, why in self.unavailable.items())
        fig.update_layout(title=f"Ripple effects of {self.method} edits on the toy world ({len(self.rows)} cases)<br>"
                                f"<sup>not measurable here: {missing}</sup>", yaxis=dict(range=[0, 1], title="accuracy"),
                          height=420, width=760)
        return fit_layout(fig)


def ripple_study(model, method: str, cases: Sequence[RippleCase], *, config: dict | None = None) -> RippleResult:
    """Edit each case on its own with ``method`` (``config``: its fields), score its tests
    after the edit and undo it. Accuracy counts only the tests the unedited model answered
    right before (RippleEdits' filter); ``efficacy`` is the edited fact answered with its new
    object. The model is unchanged afterwards. The cases (a non-empty list of
    :class:`RippleCase`), the method and its config are checked before any forward.

    >>> res = ripple_study(model, "rome", toy_ripple_cases(world, n=2), config={"steps": 5})
    >>> len(res.rows), res.rows[0]["edit_kind"]
    (2, 'person')
    """
    from interp_edit.editing import edit
    from interp_edit.editing.registry import check_editor_config
    from interp_edit.evaluation.metrics import answered

    cases = _check_cases(cases, ("case_id", "edit_kind", "rewrite", "tests"), nonempty=True)
    config = check_editor_config(model, method, config)  # the method by the registry's lookup, its fields resolved
    knew = _answered(model, cases, before=True)
    known = {kind: sum(k for c, flags in zip(cases, knew, strict=True) for t, k in zip(c.tests, flags, strict=True)
                       if t.kind == kind) for kind in RIPPLE_KINDS}
    rows = []
    for case, keep in zip(cases, knew, strict=True):
        e = edit(model, [case.rewrite.as_dict()], method, **config)
        with e.applied(model):
            flags = _answered(model, [case], before=False)[0]
            efficacy = float(answered(model, [case.rewrite.text], [[case.rewrite.target_new]])[0])
        rows.append({"case_id": case.case_id, "edit_kind": case.edit_kind, **_by_kind(case, flags, keep),
                     "efficacy": efficacy})
    return RippleResult(method, rows, known, dict(UNAVAILABLE))


__all__ = ["RIPPLE_KINDS", "UNAVAILABLE", "RippleCase", "RippleResult", "RippleTest", "known_tests_only", "ripple_scores",
           "ripple_study", "toy_ripple_cases"]
