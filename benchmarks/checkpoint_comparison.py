"""The same checks on any toy-world checkpoint (issue 20): run it on the shipped model and on a
retrained one, and compare the key=value lines side by side.

- ``toy_*``: the checkpoint's own accuracies on its own world (``evaluate_toyworld``);
- ``aie3_offset{k}``: on 3-token names, the MLP-mediated AIE (``edit_token_aie``) at the ROME
  layer of the preset at subject token k; ``mlp{2,3}_offset{k}``: the MLP-output restoration
  effect there (what ``edit_token="traced"`` maximises by default);
- ``{method}_{tokens}tok_{edit_token}_efficacy`` (and paraphrase / neighborhood): person facts
  with 2- and 3-token subject names, edited at the subject's last token (the papers') and at
  the token ``edit_token="traced"`` picks. ROME: independent single edits (the traced offset is
  chosen once per subject length over the same requests, as one ``traced`` call on them would);
  MEMIT, AlphaEdit, IntAttn: one batch per subject length;
- ``mega_*``: MEGA with the fixed gate threshold and with the calibrated gate
  (``gate_calibration_texts``): efficacy on its edits and how many unrelated prompts (other
  subjects' facts) change at all (``unrelated_changed``: any logit differs; the gate's promise is 0).

Usage (1 thread; about 4 minutes per checkpoint on a free core)::

    .venv/bin/python benchmarks/checkpoint_comparison.py [--model toyworld|FOLDER] [--n 20] [--mega 10]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from interp_edit import load_model
from interp_edit.adapter import model_fingerprint
from interp_edit.analysis.edit_token_aie import TokenFact, edit_token_aie
from interp_edit.batching import last_token_logits
from interp_edit.editing import AlphaEditor, ROMEConfig, intattn, mega, memit, prepare_requests, rome
from interp_edit.editing.edit_token_choice import prepare_at_edit_tokens, traced_offsets
from interp_edit.evaluation.counterfact import counterfact_scores, mean_scores
from interp_edit.toyworld import counterfact_records, world_of
from interp_edit.toyworld.evaluation import evaluate_toyworld
from interp_edit.toyworld.world import stable_seed

KEYS = ("efficacy", "paraphrase", "neighborhood")


def by_subject_length(model, n: int) -> dict[int, list]:
    """``n`` person facts (distinct subjects) per subject length 2 and 3, in a seeded order."""
    records = [r for r in counterfact_records(world_of(model)) if r.relation_id in ("born_in", "profession", "speaks", "instrument")]
    random.Random(stable_seed("checkpoint-comparison")).shuffle(records)
    out: dict[int, list] = {2: [], 3: []}
    seen: set[str] = set()
    fp = model_fingerprint(model)
    for record in records:
        if record.subject in seen:
            continue
        (treq,) = prepare_requests(model, [record], fp)
        length = treq.subject_span[1] - treq.subject_span[0]
        if length in out and len(out[length]) < n:
            out[length].append(record)
            seen.add(record.subject)
    return out


def show(prefix: str, scores: dict) -> None:
    print(" ".join(f"{prefix}_{k}={scores[k]:.4f}" for k in KEYS))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="toyworld")
    parser.add_argument("--n", type=int, default=20, help="facts per subject length")
    parser.add_argument("--mega", type=int, default=10, help="MEGA edits (0: skip)")
    parser.add_argument("--methods", default="rome,memit,alphaedit,intattn")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = load_model(args.model)
    world = world_of(model)
    print(f"model={args.model} world_seed={world.seed} n_people={len(world.people)}")
    for key, value in evaluate_toyworld(model, world).items():
        print(f"toy_{key}={value:.4f}")
    groups = by_subject_length(model, args.n)
    fp = model_fingerprint(model)
    layer = ROMEConfig.for_model(model).layer
    plain = prepare_requests(model, groups[3], fp)
    for k in range(3):
        facts = [TokenFact(t.request.text, t.request.subject, None, t.subject_span[0] + k) for t in plain]
        print(f"aie3_offset{k}={edit_token_aie(model, facts).mlp_mediated[layer].item():.4f}")
    cfg = ROMEConfig.for_model(model, edit_token="traced")
    _, mlp_scores = traced_offsets(model, plain + prepare_requests(model, groups[2], fp), cfg, [layer])
    for length in ("2", "3"):
        print(" ".join(f"mlp{length}_offset{k}={v:.4f}" for k, v in enumerate(mlp_scores[length])))

    for method in args.methods.split(","):
        for length, records in groups.items():
            for token in ("subject_last", "traced"):
                prefix = f"{method}_{length}tok_{token}"
                if method == "rome":
                    cfg = ROMEConfig.for_model(model, edit_token=token)
                    treqs, info = prepare_at_edit_tokens(model, records, fp, cfg, [cfg.layer])
                    rows = []
                    for record, treq in zip(records, treqs, strict=True):
                        with rome(model, [record], edit_token=treq.edit_token).applied(model):
                            rows += counterfact_scores(model, [record])
                    scores = mean_scores(rows)
                else:
                    if method == "memit":
                        result = memit(model, records, edit_token=token)
                    elif method == "alphaedit":
                        result = AlphaEditor(model, edit_token=token)(model, records)
                    else:
                        result = intattn(model, records, edit_token=token)
                    info = result.info["edit_token"]
                    with result.applied(model):
                        scores = mean_scores(counterfact_scores(model, records))
                show(prefix, scores)
                if token == "traced":
                    print(f"{prefix}_offsets={sorted(set(info['offsets']))}")

    if args.mega:
        records = groups[2][: args.mega // 2] + groups[3][: args.mega - args.mega // 2]
        subjects = {r.subject for r in records}
        others = [r for r in counterfact_records(world) if r.subject not in subjects]
        random.Random(stable_seed("checkpoint-comparison-unrelated")).shuffle(others)
        unrelated = [r.prompt.format(r.subject) for r in others[:30]]
        base = last_token_logits(model, unrelated)
        for label, overrides in (("fixed", {}), ("calibrated", {"gate_calibration_texts": 200})):
            rows, changed = [], 0
            for record in records:
                with mega(model, [record], **overrides).applied(model):
                    rows += counterfact_scores(model, [record])
                    changed += int((last_token_logits(model, unrelated) != base).any(-1).sum())
            show(f"mega_{label}", mean_scores(rows))
            print(f"mega_{label}_unrelated_changed={changed} of {len(records) * len(unrelated)}")
    print(f"seconds={time.perf_counter() - start:.0f}")


if __name__ == "__main__":
    main()
