"""One small result of every analysis / evaluation type on the toy model (for the repr and
figure-layout tests)."""

from __future__ import annotations


def build_zoo(model, records) -> dict:
    from interp_edit.analysis import (
        TokenFact,
        ablate_neurons,
        activation_patch,
        attribution_diff,
        average_indirect_effect,
        causal_trace,
        direct_logit_attribution,
        edit_token_aie,
        logit_lens,
        neuron_attribution,
        qv_pathways,
    )
    from interp_edit.analysis.circuits import circuit_diff, edge_scores, find_circuit, path_patch
    from interp_edit.editing import edit
    from interp_edit.evaluation import contrast_study, run_experiment

    r = records[0]
    text = r.prompt.format(r.subject)
    same = [x for x in records[1:] if x.prompt == r.prompt and len(model.to_tokens(x.prompt.format(x.subject))[0])
            == len(model.to_tokens(text)[0])]
    trace = causal_trace(model, text, r.subject, r.target_true, samples=3)
    attribution = neuron_attribution(model, text, r.target_true, top_k=20)
    subject_last = trace.subject_span[1] - 1
    ft = edit(model, [r], "ft")
    other = same[0].prompt.format(same[0].subject)
    scores = edge_scores(model, text, other, method="eap")
    return {
        "edge_scores": scores,
        "circuit": find_circuit(model, scores=scores, n_edges=10, curve=(0, 5, 10)),
        "path_patching": path_patch(model, text, other, ["a0.h0 -> logits", ["m0 -> a1.h0<v>", "a1.h0 -> logits"]]),
        "circuit_diff": circuit_diff(model, ft, method="eap", n_edges=10, paraphrases=False),
        "trace": trace,
        "aie": average_indirect_effect(model, records[:3], samples=2, progress=False),
        "patching": activation_patch(model, text, same[0].prompt.format(same[0].subject), answer=r.target_true,
                                     foil=same[0].target_true),
        "lens": logit_lens(model, text, r.target_true),
        "dla": direct_logit_attribution(model, text, r.target_true, r.target_new),
        "attribution": attribution,
        "ablation": ablate_neurons(model, attribution.value_neurons(5), [text], [r.target_true]),
        "pathways": qv_pathways(model, [x.prompt.format(x.subject) for x in records[:3]], [x.target_true for x in records[:3]],
                                n_value=10, top_pathways=10),
        "diff": attribution_diff(model, ft, r),
        "edit_token_aie": edit_token_aie(model, [TokenFact(text, r.subject, r.target_true, subject_last)], samples=2),
        "contrast": contrast_study(model, "ft", records[:3], progress=False, n_boot=20),
        "experiment": run_experiment(model, "toyworld-counterfact", "ft", n=1, unrelated=2, fluency=False, progress=False),
        "sweep": SweepRows.from_experiment(run_experiment(model, "toyworld-counterfact", "ft", n=1, unrelated=2,
                                                          fluency=False, progress=False)),
        "record": r,
        "text": text,
    }


class SweepRows:
    """What the sweep figure reads of a :class:`~interp_edit.sweep.SweepResult` (``rows()``,
    ``cells``): 2 methods × 2 configs × 2 seeds × 2 modes around one real experiment's summary,
    without running 16 cells."""

    def __init__(self, rows: list[dict]):
        self._rows, self.cells = rows, list(range(len(rows) + 1))

    @classmethod
    def from_experiment(cls, experiment) -> SweepRows:
        summary, rows = experiment.summary(), []
        for method in ("rome", "memit_csk"):
            for config in ("layer=1 v_lr=0.5", "layer=3 v_lr=0.5"):
                for seed in (0, 1):
                    for mode in ("independent", "sequential"):
                        scale = 1 - 0.05 * len(rows)
                        rows.append({"cell": len(rows), "method": method, "config": config, "seed": seed, "mode": mode,
                                     "status": "ok"} | {k: v * scale for k, v in summary.items() if isinstance(v, float)})
        return cls(rows + [{"cell": len(rows), "method": "rome", "config": "", "seed": 0, "mode": "independent",
                            "status": "failed"}])

    def rows(self) -> list[dict]:
        return self._rows
