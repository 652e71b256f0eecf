"""The ``interp-edit`` command line. Heavy imports happen inside the commands, so ``--help``
is quick."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class CommandLineError(Exception):
    """A flag's value is unusable (not JSON, not a list of integers, an unwritable folder);
    the message names the flag."""


def _json_object(text: str | None, flag: str) -> dict:
    """The JSON object given to ``flag`` (``{}`` if not given)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise CommandLineError(f"{flag}: not valid JSON ({err}): {text!r}") from None
    if not isinstance(value, dict):
        raise CommandLineError(f"{flag}: expected a JSON object of config fields, e.g. '{{\"steps\": 4}}', got {text!r}")
    return value


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise CommandLineError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def _writable_folder(path: str | None, flag: str) -> Path | None:
    """``path`` as a folder that exists (created if needed) and can be written, checked before
    any compute."""
    if path is None:
        return None
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".interp_edit_write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise CommandLineError(f"{flag} {path}: cannot write there ({err.strerror or err})") from None
    return folder


def _writable_file(path: str | None, flag: str) -> None:
    if path is not None:
        _writable_folder(str(Path(path).parent), flag)
        if Path(path).is_dir():
            raise CommandLineError(f"{flag} {path}: is a folder; give a file name")


def _cmd_demo(args: argparse.Namespace) -> int:
    from interp_edit.demo import run_demo

    _writable_folder(args.figures, "--figures")
    run_demo(n_facts=args.facts, top_k=args.top_k, seed=args.seed, figures=args.figures, aie_facts=args.aie_facts,
             model=args.model)
    return 0


def _cmd_toy_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from interp_edit.adapter import BUILTIN_MODELS
    from interp_edit.toyworld.training import ToyTrainConfig, train_and_save

    cfg = ToyTrainConfig()
    overrides = {"steps": args.steps, "seed": args.seed, "world_seed": args.world_seed, "n_people": args.n_people,
                 "threads": args.threads}
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if args.d_mlp is not None:
        if args.d_mlp < 1:
            raise CommandLineError(f"--d-mlp: expected a positive integer, got {args.d_mlp}")
        cfg = replace(cfg, model=replace(cfg.model, d_mlp=args.d_mlp))
    out = _writable_folder(args.out, "--out") or BUILTIN_MODELS["toyworld"]
    metrics = train_and_save(cfg, out, progress=not args.quiet)
    print(f"checkpoint={out}")
    for key, value in metrics.items():
        print(f"{key}={value:.4f}")
    return 0


def _cmd_toy_eval(args: argparse.Namespace) -> int:
    from interp_edit.adapter import load_model
    from interp_edit.toyworld import world_of
    from interp_edit.toyworld.evaluation import evaluate_toyworld

    model = load_model(args.checkpoint or "toyworld")
    for key, value in evaluate_toyworld(model, world_of(model)).items():
        print(f"{key}={value:.4f}")
    return 0


def _cmd_trace(args: argparse.Namespace) -> int:
    from interp_edit.adapter import load_model
    from interp_edit.analysis import causal_trace

    _writable_folder(args.out, "--out")
    model = load_model(args.model)
    result = causal_trace(
        model, args.prompt, args.subject, args.target, kinds=tuple(args.kinds.split(",")),
        corruption=args.corruption, noise=args.noise, samples=args.samples, window=args.window,
        metric=args.metric, severed=args.severed, seed=args.seed, replacement=args.replacement, foil=args.foil,
    )
    out = Path(args.out)
    html, png = result.save(out / f"{args.name}_rome")
    result.save(out / f"{args.name}_tl", layout="tl")
    print(f"target={result.target!r} clean_score={result.clean_score:.4f} corrupted_score={result.corrupted_score:.4f}")
    print(f"figures={html} {png}")
    for i, site in enumerate(result.top_sites(args.top), 1):
        print(f"top{i}: kind={site['kind']} layer={site['layer']} pos={site['pos']} token={site['token']!r} "
              f"indirect_effect={site['indirect_effect']:.4f}")
    return 0


def _cmd_attribute(args: argparse.Namespace) -> int:
    from interp_edit.adapter import load_model
    from interp_edit.analysis import neuron_attribution

    _writable_folder(args.out, "--out")
    model = load_model(args.model)
    result = neuron_attribution(model, args.prompt, args.target, top_k=args.top_k, keep_bias=args.keep_bias, method=args.method)
    print(f"target={result.target_token!r} target_id={result.target_id} logprob_frozen_norm={result.logprob:.4f} "
          f"logprob_model={result.model_logprob:.4f}")
    if result.target_note:
        print(f"note={result.target_note}")
    for layer, (attn, ffn) in enumerate(result.layer_scores.tolist()):
        print(f"layer={layer} attn_score={attn:.4f} ffn_score={ffn:.4f}")
    print(f"{'rank':>4}  {'neuron':<16} {'kind':<5} {'score':>9} {'coef':>9}  promotes")
    for row in result.table(args.show):
        print(f"{row['rank']:>4}  {row['neuron']:<16} {row['kind']:<5} {row['score']:>9.4f} {row['coefficient']:>9.3f}  {row['top_tokens']}")
    out = Path(args.out)
    for view in ("overview", "query"):
        html, png = result.save(out / f"{args.name}_{view}", view=view)
        print(f"figures={html} {png}")
    return 0


def _top_k_lines(model, prompt: str, k: int) -> list[str]:
    import torch

    from interp_edit.batching import last_token_logits
    from interp_edit.validation import check_int

    check_int(k, "--top-k", minimum=1, maximum=model.cfg.d_vocab_out)
    top = torch.topk(torch.softmax(last_token_logits(model, [prompt]), -1)[0], k)
    return [f"{model.tokenizer.decode([i])!r}:{p:.3f}" for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]


def _cmd_edit(args: argparse.Namespace) -> int:
    from interp_edit.adapter import load_model
    from interp_edit.editing import EditRequest, edit
    from interp_edit.validation import check_int

    _writable_file(args.out, "--out")
    layers = _int_list(args.layers, "--layers") if args.layers else None
    model = load_model(args.model)
    check_int(args.top_k, "--top-k", minimum=1, maximum=model.cfg.d_vocab_out)
    request = EditRequest(args.prompt, args.subject, args.target_new, args.target_true)
    overrides = {}
    if args.layer is not None:
        overrides["layer"] = args.layer
    if layers:
        overrides["layers"] = layers
    result = edit(model, [request], args.method, **overrides)
    prompts = [request.text, *args.check]
    for prompt in prompts:
        print(f"before {prompt!r}: {' '.join(_top_k_lines(model, prompt, args.top_k))}")
    with result.applied(model):
        for prompt in prompts:
            print(f"after  {prompt!r}: {' '.join(_top_k_lines(model, prompt, args.top_k))}")
    for row in result.summary(model):
        print(f"delta: parameter={row['parameter']} kind={row['kind']} rank={row['rank']} "
              f"norm={row['delta_norm']:.4f} relative_norm={row['relative_norm']:.4f}")
    if args.out:
        print(f"saved={result.save(args.out)}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import math

    from interp_edit.adapter import load_model
    from interp_edit.editing import get_editor
    from interp_edit.evaluation import run_experiment

    editor = get_editor(args.method)
    data = args.data or editor.default_data
    config = _json_object(args.config, "--config")
    _writable_folder(args.out, "--out")
    model = load_model(args.model)
    result = run_experiment(model, data, args.method, n=args.n, batch_size=args.batch_size, sequential=args.sequential,
                            eval_every=args.eval_every, seed=args.seed, out=args.out, unrelated=args.unrelated,
                            fluency=not args.no_fluency, config=config, progress=not args.quiet)
    files = result.save(Path(args.out) / "summary") if args.out else []
    if args.json:
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.summary().items()}
        print(json.dumps(clean))
    else:
        print(result.table())
        for path in files:
            print(f"saved={path}")
    return 0


def _cmd_contrast(args: argparse.Namespace) -> int:
    import random

    from interp_edit.adapter import load_model
    from interp_edit.evaluation.contrast import contrast_study
    from interp_edit.toyworld import counterfact_records, world_or_shipped
    from interp_edit.toyworld.world import stable_seed

    config = _json_object(args.config, "--config")
    _writable_folder(args.out, "--out")
    model = load_model(args.model)
    relations = tuple(args.relations.split(","))
    records = [r for r in counterfact_records(world_or_shipped(model)) if r.relation_id in relations]
    random.Random(stable_seed("contrast", args.seed)).shuffle(records)
    out = Path(args.out) if args.out else None
    result = contrast_study(model, args.method, records[: args.n], config=config, groups=tuple(args.groups.split(",")),
                            n_boot=args.n_boot, seed=args.seed, out=out, progress=not args.quiet)
    print(result.summary())
    print(f"n_success={result.n_success} n_failure={result.n_failure}")
    if result.defined:
        for key, value in result.pattern().items():
            print(f"{key}={value:+.4f}")
        for row in result.table():
            print(f"L{row['layer']} {row['module']:4} {row['direction']:12} success {row['success_mean']:+.3f} "
                  f"failure {row['failure_mean']:+.3f} leverage {row['leverage']:+.3f} "
                  f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]")
    else:
        print(f"undefined={result.undefined_reason}")
    if out is not None:
        views = ("panels", "leverage", "margins") if result.defined else ("panels", "margins")
        for view in views:
            print(f"saved={result.save(out / f'contrast_{view}', view)[1]}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from interp_edit.sweep import run_sweep

    result = run_sweep(args.spec, args.out, executor=args.executor, retries=args.retries, workers=args.workers,
                       address=args.address, connect_timeout=args.connect_timeout, progress=not args.quiet)
    print(result.table())
    for path in result.save(Path(args.out) / "summary", figure=not args.no_figure):
        print(f"saved={path}")
    print(f"cells={len(result.cells)} finished={len(result.results)} failed={len(result.failed)} "
          f"retried={len(result.retried)} wall_seconds={result.wall_seconds:.1f}")
    for cell_id, errors in result.failed.items():
        print(f"failed={cell_id} attempts={len(errors)} error={errors[-1].splitlines()[-1]!r}", file=sys.stderr)
    return 1 if result.failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interp-edit", description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, help="torch threads (default: the package's policy, "
                        "interp_edit.threads: $INTERP_EDIT_THREADS or 1)")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="load the toy-world model and show what it knows")
    demo.add_argument("--facts", type=int, default=6, help="number of facts to show")
    demo.add_argument("--top-k", type=int, default=5, help="predictions shown per fact")
    demo.add_argument("--seed", type=int, default=0, help="which facts are drawn")
    demo.add_argument("--figures", default="results/demo", help="folder for the figures (default results/demo, not tracked by git)")
    demo.add_argument("--aie-facts", type=int, default=100, help="facts averaged in the AIE figure")
    demo.add_argument("--model", default="toyworld", help="a toy-world checkpoint: name or folder (default: toyworld)")
    demo.set_defaults(func=_cmd_demo)

    trace = sub.add_parser("trace", help="causal trace of one fact: figures + the top restoration sites")
    trace.add_argument("--prompt", required=True, help="the prompt, e.g. 'Talvik Corlo was born in'")
    trace.add_argument("--subject", required=True, help="the subject as it appears in the prompt")
    trace.add_argument("--target", help="the answer to score (default: the clean top-1 token)")
    trace.add_argument("--model", default="toyworld", help="model name or folder (default: toyworld)")
    trace.add_argument("--kinds", default="hidden,mlp,attn")
    trace.add_argument("--corruption", default="gaussian", choices=("gaussian", "replace"))
    trace.add_argument("--replacement", help="subject swapped in by --corruption replace")
    trace.add_argument("--noise", type=float, default=3.0, help="noise scale in embedding stds")
    trace.add_argument("--samples", type=int, default=10)
    trace.add_argument("--window", type=int, help="layers restored together for mlp/attn (default: 10 of 48 layers "
                       "scaled to the model's depth, max(1, round(10 * n_layers / 48)))")
    trace.add_argument("--metric", default="prob", choices=("prob", "logprob", "logit_diff"))
    trace.add_argument("--foil", help="competing answer for --metric logit_diff")
    trace.add_argument("--severed", choices=("mlp", "attn"))
    trace.add_argument("--seed", type=int, default=0)
    trace.add_argument("--top", type=int, default=5, help="restoration sites printed")
    trace.add_argument("--out", default="results/figures", help="folder for the figures (default results/figures)")
    trace.add_argument("--name", default="causal_trace", help="file name stem of the figures")
    trace.set_defaults(func=_cmd_trace)

    attribute = sub.add_parser("attribute", help="neuron-level attribution of one prompt: ranked value neurons, layer scores, figures")
    attribute.add_argument("--prompt", required=True, help="the prompt, e.g. 'Talvik Corlo was born in'")
    attribute.add_argument("--target", help="the answer to score (default: the model's top-1 token; a multi-token answer: its first token)")
    attribute.add_argument("--model", default="toyworld", help="model name or folder (default: toyworld)")
    attribute.add_argument("--top-k", type=int, default=300, help="value / query neurons kept per kind (clipped)")
    attribute.add_argument("--keep-bias", action="store_true", help="keep the final norm and unembedding biases in the readout")
    attribute.add_argument("--method", default="exact", choices=("exact", "first_order", "exact_top_k"),
                           help="exact log-prob increases of every neuron (default), their cheaper gradient approximation, "
                                "or the exact top-k certified by first-order bounds (exact_top_k)")
    attribute.add_argument("--show", type=int, default=15, help="neurons printed")
    attribute.add_argument("--out", default="results/figures", help="folder for the figures (default results/figures)")
    attribute.add_argument("--name", default="attribution", help="file name stem of the figures")
    attribute.set_defaults(func=_cmd_attribute)

    edit = sub.add_parser("edit", help="edit one fact; print the top-k before and after, save the edit")
    edit.add_argument("--method", default="rome", help="an editor of the registry: rome, memit, alphaedit, ft, memit_csk, fine, intattn, ace (needs multi-hop cases), mega (default rome)")
    edit.add_argument("--prompt", required=True, help="the prompt with {} for the subject, e.g. '{} was born in'")
    edit.add_argument("--subject", required=True)
    edit.add_argument("--target-new", required=True, help="the new object")
    edit.add_argument("--target-true", help="the current object (optional)")
    edit.add_argument("--layer", type=int, help="edited layer (rome, ft; default: the model's preset)")
    edit.add_argument("--layers", help="edited layers, comma-separated (memit, alphaedit)")
    edit.add_argument("--check", action="append", default=[], help="another prompt to show before/after (repeatable)")
    edit.add_argument("--model", default="toyworld", help="model name or folder (default: toyworld)")
    edit.add_argument("--top-k", type=int, default=5)
    edit.add_argument("--out", help="save the edit to this .safetensors file")
    edit.set_defaults(func=_cmd_edit)

    ev_cmd = sub.add_parser("evaluate", help="edit n dataset cases in batches (independent or sequential); print the metrics")
    ev_cmd.add_argument("--model", default="toyworld", help="model name or folder (default: toyworld)")
    ev_cmd.add_argument("--data", help="built-in dataset (toyworld-counterfact, -zsre, -mquake, -mcq) or a JSON / JSONL file "
                        "(default: the one that suits the method: toyworld-mquake for ace, toyworld-counterfact otherwise)")
    ev_cmd.add_argument("--method", default="rome", help="an editor of the registry: rome, memit, alphaedit, ft, memit_csk, fine, intattn, ace (needs multi-hop cases), mega (default rome)")
    ev_cmd.add_argument("--n", type=int, help="number of cases edited (default: all)")
    ev_cmd.add_argument("--batch-size", type=int, default=1, help="requests per edit (default 1)")
    ev_cmd.add_argument("--sequential", action="store_true", help="keep every batch's edit (default: undo each batch)")
    ev_cmd.add_argument("--eval-every", type=int, default=1, help="evaluate all edited cases every this many batches")
    ev_cmd.add_argument("--unrelated", type=int, default=100, help="unrelated facts watched for drift")
    ev_cmd.add_argument("--seed", type=int, default=0, help="which cases are drawn")
    ev_cmd.add_argument("--no-fluency", action="store_true", help="skip the greedy generations (faster)")
    ev_cmd.add_argument("--config", help='editor config fields as JSON, e.g. \'{"layers": [1, 2]}\'')
    ev_cmd.add_argument("--out", help="folder for results.jsonl (resumable), edits, summary.json and the figure")
    ev_cmd.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    ev_cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    ev_cmd.set_defaults(func=_cmd_evaluate)

    con = sub.add_parser("contrast", help="success-vs-failure contrast of pre/post-edit attribution diffs over n toy edits")
    con.add_argument("--method", default="rome", help="a registered editor (default rome)")
    con.add_argument("--n", type=int, default=100, help="independent single edits (default 100)")
    con.add_argument("--model", default="toyworld", help="model name or folder (default: toyworld; the pool is the facts of the model's toy world)")
    con.add_argument("--relations", default="born_in,profession,speaks,instrument", help="toy-world relations in the pool")
    con.add_argument("--groups", default="edit", help="prompt groups recorded: edit,paraphrase,neighborhood (default edit)")
    con.add_argument("--config", help='editor config fields as JSON, e.g. \'{"steps": 4}\'')
    con.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the confidence intervals")
    con.add_argument("--seed", type=int, default=0, help="which facts are drawn; bootstrap seed")
    con.add_argument("--out", help="folder for contrast.jsonl (resumable) and the figures")
    con.add_argument("--quiet", action="store_true", help="no progress bar")
    con.set_defaults(func=_cmd_contrast)

    sw = sub.add_parser("sweep", help="run a grid of experiments (editors x configs x datasets x seeds x models); resumable")
    sw.add_argument("spec", help="the grid: a .json or .yaml file (see interp_edit.sweep.spec)")
    sw.add_argument("--out", required=True, help="folder for every cell's results.jsonl (resumable) and the merged summary")
    sw.add_argument("--executor", default="inprocess", choices=("inprocess", "processes", "ray"),
                    help="where cells run: this process (default), local processes, or Ray")
    sw.add_argument("--address", help="Ray cluster address (host:port, ray://host:port or auto; default: a new local instance)")
    sw.add_argument("--workers", type=int, default=2, help="local processes / CPUs of a local Ray instance (default 2)")
    sw.add_argument("--retries", type=int, default=2, help="retries of a failed cell (default 2)")
    sw.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to wait for a Ray address (default 10)")
    sw.add_argument("--no-figure", action="store_true", help="skip the merged figure")
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.set_defaults(func=_cmd_sweep)

    toy = sub.add_parser("toy", help="the embedded toy-world model").add_subparsers(dest="toy_command", required=True)
    train = toy.add_parser("train", help="retrain the toy-world model from scratch (deterministic)")
    train.add_argument("--out", help="checkpoint folder (default: the package's own checkpoint)")
    train.add_argument("--steps", type=int, help="optimisation steps (default: the shipped config)")
    train.add_argument("--seed", type=int, help="training seed: initialisation and training text (default 0)")
    train.add_argument("--world-seed", type=int, help="seed of the world: who the people are and their facts (default 0)")
    train.add_argument("--n-people", type=int, help="people in the world (default 400)")
    train.add_argument("--threads", type=int, help="CPU threads used for training (default 2)")
    train.add_argument("--d-mlp", type=int, help="MLP width of every block (default 512)")
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
        if args.func is not _cmd_toy_train:  # training sets its own threads (ToyTrainConfig.threads)
            from interp_edit.threads import set_threads

            set_threads(args.threads)
        return args.func(args)
    except (InterpEditError, CommandLineError, OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        # expected errors (bad input, files, JSON): one line naming the flag or file, no traceback
        message = " ".join(str(err).split()) or type(err).__name__
        if isinstance(err, OSError) and err.filename and str(err.filename) not in message:
            message = f"{err.filename}: {message}"
        print(f"interp-edit: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
