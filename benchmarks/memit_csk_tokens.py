"""MEMIT-CSK at different edit tokens on the toy world's relation statements (``toyworld-csk``),
next to plain MEMIT: one batch edit of ``--n`` statements per setting, scored with
:func:`interp_edit.evaluation.commonsense.commonsense_scores` (efficacy: previously-wrong edited
statements now answered with the new object; paraphrase efficacy the same on the held-out
phrasings; relapse: other statements — the subjects' other relations and other people's facts
of the same relations — previously right now wrong). Seconds per edit = the batch's wall time /
its size (key statistics are computed once beforehand and not timed).

Settings: the edit token (subject_last, verb_first, verb_last, prompt_last; on these prompts the
verb is the last phrase, so verb_last and prompt_last are the same position) with the fixed
window of MEMIT's toy preset (layers 0-1) and with ``layers="auto"`` (W = 2); then ``--windows``
widths of the auto window; then compound statements (``"{} was born in Karsa and works as a"``)
edited at the object token and the verb.

Prints ``key=value`` lines. Usage:
    .venv/bin/python -u benchmarks/memit_csk_tokens.py [--n 100] [--windows 1 2 3]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from interp_edit import load_model
from interp_edit.data import load_dataset
from interp_edit.editing import MEMITCSKConfig, memit, memit_csk
from interp_edit.errors import EditConfigError
from interp_edit.evaluation.commonsense import commonsense_scores
from interp_edit.statistics.keys import second_moments


def run(model, cases, label: str, fn) -> None:
    requests = [c.rewrite.as_dict() for c in cases]
    start = time.perf_counter()
    try:
        result = fn(requests)
    except EditConfigError as err:  # e.g. layers="auto" on a flat AIE curve
        print(f"setting={label} error={str(err)!r}", flush=True)
        return
    seconds = time.perf_counter() - start
    scores = commonsense_scores(model, result, cases)
    effect = result.info.get("aie", {}).get("window_effect")
    print(f"setting={label} layers={result.info.get('layers', result.config.get('layers'))} "
          + (f"window_effect={effect:.3f} " if effect is not None else "") +
          f"efficacy={scores.efficacy:.3f} paraphrase={scores.paraphrase_efficacy:.3f} relapse={scores.relapse:.3f} "
          f"n_edited={scores.n_edited} n_previously_wrong={scores.n_previously_wrong} "
          f"n_relapse={scores.n_previously_right} seconds_per_edit={seconds / len(cases):.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--windows", type=int, nargs="*", default=[1, 2, 3])
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model("toyworld")
    dataset = load_dataset("toyworld-csk", tokenizer=model.tokenizer, model=model)
    simple = [c for c in dataset if c.kind == "simple"]
    compound = [c for c in dataset if c.kind == "compound"]
    random.Random(1).shuffle(simple)
    random.Random(1).shuffle(compound)
    simple, compound = simple[: args.n], compound[: args.n]
    cfg = MEMITCSKConfig.for_model(model)
    second_moments(model, list(range(model.cfg.n_layers)), n_samples=cfg.stats_samples, batch_size=cfg.stats_batch_size)

    run(model, simple, "memit", lambda r: memit(model, r))
    for token in ("subject_last", "verb_first", "verb_last", "prompt_last"):
        run(model, simple, f"memit_csk:{token}:fixed", lambda r, t=token: memit_csk(model, r, edit_token=t, layers=(0, 1)))
        run(model, simple, f"memit_csk:{token}:auto", lambda r, t=token: memit_csk(model, r, edit_token=t))
    for width in args.windows:
        for token in ("subject_last", "verb_last"):
            run(model, simple, f"memit_csk:{token}:auto:W={width}",
                lambda r, t=token, w=width: memit_csk(model, r, edit_token=t, window=w))
    for token in ("object_last", "verb_last", "subject_last"):
        run(model, compound, f"compound:memit_csk:{token}:fixed", lambda r, t=token: memit_csk(model, r, edit_token=t, layers=(0, 1)))
        run(model, compound, f"compound:memit_csk:{token}:auto", lambda r, t=token: memit_csk(model, r, edit_token=t))
    run(model, compound, "compound:memit_csk:object_last:layers=3-4",
        lambda r: memit_csk(model, r, edit_token="object_last", layers=(3, 4)))


if __name__ == "__main__":
    main()
