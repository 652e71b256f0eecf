"""The ``interp-edit`` command line. Heavy imports happen inside the commands, so ``--help``
is quick."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_demo(args: argparse.Namespace) -> int:
    from interp_edit.demo import run_demo

    run_demo(n_facts=args.facts, top_k=args.top_k, seed=args.seed)
    return 0


def _cmd_toy_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from interp_edit.model import BUILTIN_MODELS
    from interp_edit.toyworld.training import ToyTrainConfig, train_and_save

    cfg = ToyTrainConfig()
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    if args.seed is not None:
        cfg = replace(cfg, seed=args.seed)
    out = Path(args.out) if args.out else BUILTIN_MODELS["toyworld"]
    metrics = train_and_save(cfg, out, progress=not args.quiet)
    print(f"checkpoint={out}")
    for key, value in metrics.items():
        print(f"{key}={value:.4f}")
    return 0


def _cmd_toy_eval(args: argparse.Namespace) -> int:
    from interp_edit.model import load_model
    from interp_edit.toyworld import load_world
    from interp_edit.toyworld.evaluation import evaluate_toyworld

    model = load_model(args.checkpoint or "toyworld")
    for key, value in evaluate_toyworld(model, load_world(args.checkpoint)).items():
        print(f"{key}={value:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interp-edit", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="load the toy-world model and show what it knows")
    demo.add_argument("--facts", type=int, default=6, help="number of facts to show")
    demo.add_argument("--top-k", type=int, default=5, help="predictions shown per fact")
    demo.add_argument("--seed", type=int, default=0, help="which facts are drawn")
    demo.set_defaults(func=_cmd_demo)

    toy = sub.add_parser("toy", help="the embedded toy-world model").add_subparsers(dest="toy_command", required=True)
    train = toy.add_parser("train", help="retrain the toy-world model from scratch (deterministic)")
    train.add_argument("--out", help="checkpoint folder (default: the package's own checkpoint)")
    train.add_argument("--steps", type=int, help="optimisation steps (default: the shipped config)")
    train.add_argument("--seed", type=int, help="training seed (default 0)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_cmd_toy_train)
    ev = toy.add_parser("eval", help="print the toy-world model's accuracies as key=value lines")
    ev.add_argument("--checkpoint", help="checkpoint folder (default: the shipped model)")
    ev.set_defaults(func=_cmd_toy_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from interp_edit.errors import InterpEditError

    try:
        return args.func(args)
    except InterpEditError as err:
        print(f"interp-edit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
