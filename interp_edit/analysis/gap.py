"""The clean–corrupted gap every localisation result rests on, and when it is too small to mean
anything.

A causal trace, a patching run or an AIE measures how much of the gap between the clean run and
the corrupted one a restored activation brings back. If the clean run does not prefer the target
(the model does not know the fact) or the gap is tiny, the colour scale still stretches over it
and draws a crisp "localisation" of noise. :class:`ScoreGap` records the gap and says so; the
results carry one (``result.gap``) and put its warnings in their repr and figure title.

>>> g = ScoreGap(clean=0.00247, corrupted=0.00245, metric="prob", clean_prefers_target=False)
>>> g.warnings()
['the clean run does not prefer the target (the model may not know the fact)', 'the clean-corrupted gap 2e-05 is below 0.01 (prob): effects are noise-level']
"""

from __future__ import annotations

from dataclasses import dataclass

#: the smallest clean − corrupted gap worth localising, per metric (a probability: one point
#: of probability; log-probabilities, logit differences and KL divergences: 0.1 nats / logits)
GAP_FLOORS = {"prob": 0.01, "logprob": 0.1, "logit_diff": 0.1, "kl": 0.1}


@dataclass(frozen=True)
class ScoreGap:
    """The clean and corrupted scores of one measurement (or their means over facts), the
    metric, and whether the clean run's top-1 token is the target's first token (``None``:
    not checked)."""

    clean: float
    corrupted: float
    metric: str
    clean_prefers_target: bool | None = None

    @property
    def gap(self) -> float:
        return self.clean - self.corrupted

    @property
    def floor(self) -> float:
        return GAP_FLOORS[self.metric]

    @property
    def reliable(self) -> bool:
        """No warning: the clean run prefers the target (or was not checked) and the gap is at
        least :data:`GAP_FLOORS` of the metric."""
        return not self.warnings()

    def warnings(self) -> list[str]:
        out = []
        if self.clean_prefers_target is False:
            out.append("the clean run does not prefer the target (the model may not know the fact)")
        if not self.gap >= self.floor:
            out.append(f"the clean-corrupted gap {self.gap:.2g} is below {self.floor:g} ({self.metric}): "
                       "effects are noise-level")
        return out

    def repr_note(self) -> str | None:
        """The repr's ``WARNING=`` value (None when reliable)."""
        return None if self.reliable else repr("; ".join(self.warnings()))

    def title_note(self) -> str:
        """The figure-title suffix: empty when reliable."""
        return "" if self.reliable else "<br><b>WARNING: " + "; ".join(self.warnings()) + "</b>"


def metric_gap(clean: float, corrupted: float, metric: str, clean_prefers_target: bool | None = None) -> ScoreGap:
    """The :class:`ScoreGap` of a measurement in ``metric``. ``"kl"`` (KL divergence from the
    clean run: 0 for the clean run, larger the further a run strays) is lower for the clean run,
    so its gap is the corrupted run's divergence minus the clean run's."""
    if metric == "kl":
        return ScoreGap(-clean, -corrupted, metric, clean_prefers_target)
    return ScoreGap(clean, corrupted, metric, clean_prefers_target)


__all__ = ["GAP_FLOORS", "ScoreGap", "metric_gap"]
