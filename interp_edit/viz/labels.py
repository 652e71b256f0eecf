"""The words figures use for colour scales: every colourbar's title is a key of
:data:`COLORBAR_LABELS`, whose value says what the colour measures (the same text is in each
figure's docstring and the results' docs)."""

from __future__ import annotations

#: colourbar title -> what it means
COLORBAR_LABELS = {
    "p(target)": "probability of the answer token at the last position",
    "log p(target)": "log-probability of the answer token at the last position",
    "logit diff": "logit(answer) - logit(foil) at the last position",
    "p(top-1)": "probability of the top-1 token of the logit lens at that layer and position",
    "indirect effect": "score with the site restored minus the corrupted score (ROME's IE)",
    "AIE": "average indirect effect over facts: restored minus corrupted score (ROME)",
    "Δ log p(target)": "change of log p(target): a neuron's / layer's contribution, or after minus before an edit",
    "restored fraction": "patched metric normalised so that the corrupted run is 0 and the clean run 1",
    "Δ logit": "direct effect on the answer's logit (minus the foil's), through the unembedding",
    "query share × Δ log p": "share of a layer's output in the top FFN value neurons' inputs, times their Δ log p(target)",
}

#: colourbar title of each trace metric (``CausalTraceResult.settings.metric``)
METRIC_LABELS = {"prob": "p(target)", "logprob": "log p(target)", "logit_diff": "logit diff"}
