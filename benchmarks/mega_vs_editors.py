"""MEGA vs ROME vs MEMIT on the same toy-world edits, each edit independent (apply, score, undo).

Per method: CounterFact efficacy / paraphrase / neighbourhood / same-subject scores, the largest
|Δlogit| on unrelated prompts (other subjects' prompts, next-token logits), and the weight
change while the edit is applied (largest |Δ| over the whole state dict, bitwise compare).
MEGA is run with the toy preset (paraphrases among the sources), with the paraphrases held out
(``use_paraphrases=False``: the paraphrase score is then on unseen prompts), with the upper-half
layer rule, and — given ``--contrast`` edits — with layers from a ROME contrast study. The gate
threshold sweep reuses each fitted edit with another threshold (the fit does not depend on it).

Prints ``key=value`` lines. Usage:
    .venv/bin/python -u benchmarks/mega_vs_editors.py [--n 100] [--contrast 60] [--thresholds 0.5,0.7,0.8,0.9,0.95]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time

import torch

from interp_edit import load_model
from interp_edit.batching import last_token_logits
from interp_edit.editing import Edit, get_editor
from interp_edit.evaluation.counterfact import counterfact_scores, mean_scores
from interp_edit.toyworld import counterfact_records, world_of
from interp_edit.toyworld.world import stable_seed

KEYS = ("efficacy", "paraphrase", "neighborhood", "same_subject")


def person_records(world, seed: str):
    records = [r for r in counterfact_records(world) if r.relation_id in ("born_in", "profession", "speaks", "instrument")]
    random.Random(stable_seed(seed)).shuffle(records)
    return records


def with_threshold(edit: Edit, threshold: float) -> Edit:
    hooks = {label: dataclasses.replace(h, gate_threshold=threshold) for label, h in edit.hooks.items()}
    return Edit(edit.method, {}, edit.model_fingerprint, edit.config, edit.requests, edit.info, hooks=hooks)


def run(model, records, unrelated, make_edit, thresholds=()) -> dict:
    """Independent edits: scores, unrelated max |Δlogit|, max |Δweight| (and a threshold sweep)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    base = last_token_logits(model, unrelated)
    rows, sweep = [], {t: [] for t in thresholds}
    sweep_unrelated = dict.fromkeys(thresholds, 0.0)
    worst_logit = worst_weight = 0.0
    changed = 0  # (edit, unrelated prompt) pairs whose logits moved by more than 1e-6
    start = time.perf_counter()
    for record in records:
        edit = make_edit(record)
        with edit.applied(model):
            worst_weight = max(worst_weight, max(float((v - state[k]).abs().max()) if v.numel() else 0.0
                                                 for k, v in model.state_dict().items()))
            rows += counterfact_scores(model, [record])
            drift = (last_token_logits(model, unrelated) - base).abs().amax(-1)
            worst_logit, changed = max(worst_logit, float(drift.max())), changed + int((drift > 1e-6).sum())
        for t in thresholds:
            with with_threshold(edit, t).applied(model):
                sweep[t] += counterfact_scores(model, [record])
                sweep_unrelated[t] = max(sweep_unrelated[t], float((last_token_logits(model, unrelated) - base).abs().max()))
    seconds = time.perf_counter() - start
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()), "model not restored"
    return {"scores": mean_scores(rows), "unrelated": worst_logit, "changed": changed / (len(records) * len(unrelated)), "weight": worst_weight, "seconds": seconds,
            "sweep": {t: mean_scores(v) for t, v in sweep.items()}, "sweep_unrelated": sweep_unrelated}


def forcing_check(model, records, template: str) -> None:
    """Does forcing the new object in context make the toy model predict it? (MEGA's "forced"
    targets assume it does.) Mean logit difference new − true, bare vs forced, and how often
    the forced prompt's argmax is the new object."""
    from interp_edit.analysis.scoring import encode_target

    bare = [r.prompt.format(r.subject) for r in records]
    forced = [template.format(prompt=p, new=r.target_new) for p, r in zip(bare, records, strict=True)]
    new = torch.tensor([encode_target(model.tokenizer, r.target_new)[0] for r in records])
    true = torch.tensor([encode_target(model.tokenizer, r.target_true)[0] for r in records])
    rows = torch.arange(len(records))
    for name, prompts in (("bare", bare), ("forced", forced)):
        logits = last_token_logits(model, prompts)
        diff = (logits[rows, new] - logits[rows, true]).mean()
        hits = (logits.argmax(-1) == new).float().mean()
        print(f"forcing_{name}_mean_logit_new_minus_true={diff:.3f} forcing_{name}_argmax_new={hits:.3f}")


def show(prefix: str, out: dict) -> None:
    for key in KEYS:
        print(f"{prefix}_{key}={out['scores'][key]:.4f}")
    print(f"{prefix}_unrelated_max_abs_dlogit={out['unrelated']:.3g}")
    print(f"{prefix}_unrelated_changed_fraction={out['changed']:.4f}")
    print(f"{prefix}_max_abs_dweight={out['weight']:.3g}")
    print(f"{prefix}_seconds={out['seconds']:.1f}")
    for t, scores in out["sweep"].items():
        line = " ".join(f"{k}={scores[k]:.4f}" for k in KEYS)
        print(f"{prefix}_gate{t:g}: {line} unrelated_max_abs_dlogit={out['sweep_unrelated'][t]:.3g}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--contrast", type=int, default=60, help="ROME edits of the contrast study (0: skip)")
    parser.add_argument("--contrast-steps", type=int, default=0,
                        help="ROME optimisation steps in the contrast study (0: the toy preset)")
    parser.add_argument("--thresholds", default="0.5,0.7,0.8,0.9,0.95")
    parser.add_argument("--methods", default="mega,mega_heldout,mega_upper_half,rome,memit")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("toyworld")
    world = world_of(model)
    pool = person_records(world, "mega-vs-editors")
    records = pool[: args.n]
    edited_subjects = {r.subject for r in records}
    # unrelated: other subjects' facts (a same-subject prompt is not unrelated: see same_subject)
    unrelated = [r.prompt.format(r.subject) for r in pool[args.n :] if r.subject not in edited_subjects][:30]
    thresholds = tuple(float(t) for t in args.thresholds.split(",") if t)
    print(f"edits={len(records)} unrelated_prompts={len(unrelated)}")
    print("unedited_" + " unedited_".join(f"{k}={v:.4f}" for k, v in mean_scores(counterfact_scores(model, records)).items()
                                          if k in KEYS))
    forcing_check(model, records, "{prompt} {new} . {prompt}")
    mega, rome, memit = (get_editor(n).fn for n in ("mega", "rome", "memit"))
    runs = {
        "mega": (lambda r: mega(model, [r]), thresholds),
        "mega_heldout": (lambda r: mega(model, [r], use_paraphrases=False), thresholds),
        "mega_upper_half": (lambda r: mega(model, [r], layers=None), ()),
        "rome": (lambda r: rome(model, [r]), ()),
        "memit": (lambda r: memit(model, [r]), ()),
    }
    for name in args.methods.split(","):
        make, sweep = runs[name]
        show(name, run(model, records, unrelated, make, sweep))

    if args.contrast:
        try:
            from interp_edit.evaluation.contrast import contrast_study
        except ImportError as err:
            print(f"contrast_skipped={err}")
            return
        config = {"steps": args.contrast_steps} if args.contrast_steps else None
        study_pool = pool[-args.contrast :]
        start = time.perf_counter()
        study = contrast_study(model, "rome", study_pool, config=config, progress=False)
        print(f"contrast_rome_edits={len(study_pool)} contrast_seconds={time.perf_counter() - start:.1f}")
        print(f"contrast_defined={study.defined} reason={study.undefined_reason}")
        if study.defined:
            lev = study.leverage[:, 0, 0].tolist()
            print("contrast_attn_promote_new_leverage=" + ",".join(f"{v:.4f}" for v in lev))
            out = run(model, records, unrelated, lambda r: mega(model, [r], layers=None, contrast=study), ())
            picked = mega(model, [records[0]], layers=None, contrast=study).info["layers"]
            print(f"mega_contrast_layers={picked}")
            show("mega_contrast", out)


if __name__ == "__main__":
    main()
