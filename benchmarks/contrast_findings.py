"""Success-versus-failure contrast studies on the toy world (the closing note's findings).

For each method, ``--n`` independent single edits of shuffled toy-world person facts (born in,
profession, speaks, instrument) are split by efficacy (p(new) > p(true) after the edit) and the
mean pre/post layer-level attribution diffs of the two groups are contrasted
(:func:`interp_edit.evaluation.contrast_study`). MEGA's question: does success − failure show
attention promoting the new object in later layers, and attention + FFN suppressing the old one?

A method may carry config fields: ``rome:steps=4`` (ROME with a 4-step target optimisation, a
weakened configuration that fails more often so that both groups are large).

Prints ``key=value`` lines per method: group sizes, the MEGA-pattern numbers (mean leverage of
attention promotion in the later / earlier half of the layers, of attention and FFN
suppression), the top layers, and the (layer, module, direction) cells whose bootstrap interval
excludes 0. Usage:
    .venv/bin/python -u benchmarks/contrast_findings.py --methods rome memit fine --n 100 [--out DIR] [--figures DIR]

Measured (``--methods rome:steps=4 rome memit fine intattn --n 100``, then ``--methods memit:steps=4
intattn:steps=4 --n 100``; successes / failures, leverage of attention promotion at layers 3 / 4,
mean leverage of attention / FFN suppression over layers):

    rome            99 / 1    -0.78 / +0.71   +0.81 / +0.46
    memit           98 / 2    -0.72 / +0.19   +0.74 / +0.43
    intattn         99 / 1    -0.54 / +0.52   +0.75 / +0.40
    fine           100 / 0    undefined (no failures)
    rome:steps=4    79 / 21   -0.32 / +0.21   +0.31 / +0.28
    memit:steps=4   62 / 38   -0.28 / +0.33   +0.30 / +0.17
    intattn:steps=4 66 / 34   -0.31 / +0.35   +0.33 / +0.17

Suppression of the old object (attention at layers 2-3, FFN growing towards the top) separates
successes from failures; late attention promotes the new object about equally in both groups
(notebook 04 has the discussion).
"""

from __future__ import annotations

import argparse
import ast
import random
import time
from pathlib import Path

import torch

from interp_edit import load_model
from interp_edit.evaluation.contrast import DIRECTIONS, MODULES, contrast_study
from interp_edit.toyworld import counterfact_records, world_of
from interp_edit.toyworld.world import stable_seed

RELATIONS = ("born_in", "profession", "speaks", "instrument")


def pool(model, n: int, seed: str) -> list:
    records = [r for r in counterfact_records(world_of(model)) if r.relation_id in RELATIONS]
    random.Random(stable_seed(seed)).shuffle(records)
    return records[:n]


def parse_method(text: str) -> tuple[str, dict]:
    """``rome`` or ``rome:steps=4,layer=1`` -> (name, config)."""
    name, _, rest = text.partition(":")
    config = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            config[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            config[key] = value
    return name, config


def report(label: str, result, seconds: float) -> None:
    print(f"{label} n={result.n_success + result.n_failure} successes={result.n_success} failures={result.n_failure} "
          f"seconds={seconds:.1f}")
    if not result.defined:
        print(f"{label} undefined={result.undefined_reason}")
        return
    for key, value in result.pattern().items():
        print(f"{label} {key}={value:+.3f}")
    for m, module in enumerate(MODULES):
        for d, direction in enumerate(DIRECTIONS):
            print(f"{label} top_layers_{module}_{direction}={result.top_layers(module, direction, k=2)}")
            row = ", ".join(f"{v:+.2f}" for v in result.leverage[:, m, d].tolist())
            print(f"{label} leverage_{module}_{direction}=[{row}]")
    low, high = result.leverage_ci[..., 0], result.leverage_ci[..., 1]
    cells = []
    for layer, m, d in (low > 0).nonzero().tolist() + (high < 0).nonzero().tolist():
        cells.append(f"L{layer}.{MODULES[m]}.{DIRECTIONS[d]}{'+' if low[layer, m, d] > 0 else '-'}")
    print(f"{label} ci_excludes_zero={sorted(cells)}")
    for group, mean in (("success", result.success_mean), ("failure", result.failure_mean)):
        late = result.n_layers // 2
        print(f"{label} {group}_attn_promote_late={float(mean[late:, 0, 0].mean()):+.3f} "
              f"{group}_attn_suppress={float(mean[:, 0, 1].mean()):+.3f} {group}_ffn_suppress={float(mean[:, 1, 1].mean()):+.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["rome", "memit", "fine"])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", default="contrast-findings")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None, help="folder for resumable per-method JSONL results")
    parser.add_argument("--figures", type=Path, default=None, help="folder for the panels / leverage figures")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("toyworld")
    records = pool(model, args.n, args.seed)
    for text in args.methods:
        name, config = parse_method(text)
        label = text.replace(":", "[").replace(",", ";") + ("]" if ":" in text else "")
        start = time.perf_counter()
        out = args.out / text.replace(":", "_").replace(",", "_").replace("=", "") if args.out else None
        result = contrast_study(model, name, records, config=config, n_boot=args.n_boot, out=out, progress=False)
        report(label, result, time.perf_counter() - start)
        if args.figures is not None:
            stem = text.replace(":", "_").replace(",", "_").replace("=", "")
            result.save(args.figures / f"contrast_{stem}_panels", "panels")
            if result.defined:
                result.save(args.figures / f"contrast_{stem}_leverage", "leverage")


if __name__ == "__main__":
    main()
