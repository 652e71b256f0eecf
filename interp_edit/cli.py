"""The ``interp-edit`` command line (argparse). Every flag's value is checked when the
arguments are parsed or, for editor names, right after, before any model loads, and so are a
command's data file and records, config fields, request and texts (what needs the model, e.g. a
layer against its depth, after it loads, before any compute); heavy imports
happen inside the commands, so ``--help`` is quick. Every flag's help shows its default
(:class:`HelpFormatter`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

#: the top-level ``--help`` text (prose: argparse prints it as written)
DESCRIPTION = (
    "Mechanistic interpretability of knowledge editing, from the command line. Trace where a model "
    "stores a fact (trace), attribute its prediction to neurons (attribute), edit a fact (edit), measure "
    "editors on a data set (evaluate, sweep) and contrast successful with failed edits (contrast), on the "
    "shipped toy-world model or a Hugging Face model. Run 'interp-edit COMMAND --help' for a command's flags."
)
KINDS = ("hidden", "mlp", "attn")
#: the editors of :func:`interp_edit.editing.registry.editors` (kept equal by a test), so that
#: argparse refuses a misspelt --method at once, before torch is imported
METHODS = ("rome", "memit", "alphaedit", "ft", "memit_csk", "fine", "intattn", "ace", "mega", "emmet", "grace", "kn", "pmet", "ultraedit", "wise")
GROUPS = ("edit", "paraphrase", "neighborhood")
#: the toy world's relations (:data:`interp_edit.toyworld.templates.RELATIONS`, kept equal by a
#: test; importing the toy world here would import transformers and slow ``--help``)
RELATIONS = ("born_in", "profession", "speaks", "instrument", "located_in", "capital", "country_language")
#: the largest seed a flag takes: numpy's and torch's generators both accept 0 .. 2**32 - 1
MAX_SEED = 2**32 - 1
#: the most threads a flag takes (torch crashes on absurd thread counts)
MAX_THREADS = 1024
#: the most people a toy world holds (:data:`interp_edit.toyworld.world.MAX_PEOPLE`, kept equal by a test)
MAX_PEOPLE = 24800


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds ``(default: …)`` to a flag's help unless the help already names its default; an
    on/off flag reads ``(default: off)``, a required one ``(required)``."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if action.required:
            return text + " (required)"
        if isinstance(action, argparse._StoreTrueAction):
            return text + " (default: off)"
        if action.default is None or action.default == []:
            return text
        return text + " (default: %(default)s)"


def _int_at_least(minimum: int, maximum: int | None = None):
    """An argparse type: an integer >= ``minimum`` (and <= ``maximum`` if given)."""
    expected = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = expected
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _names_from(allowed: tuple[str, ...]):
    """A comma-separated list of names from ``allowed``, e.g. ``hidden,mlp``."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(x.strip() for x in text.split(","))
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {unknown} in {text!r}; choose comma-separated from "
                                             f"{','.join(allowed)}")
        return names

    parse.__name__ = "list"
    return parse


def _ints_of(item):
    """A comma-separated list of integers, each checked by the type ``item``, e.g. ``1,2``."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            return tuple(item(x) for x in text.split(","))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, each {item.__name__}, "
                                             f"got {text!r}") from None

    parse.__name__ = "list"
    return parse


def _file_stem(text: str) -> str:
    """An argparse type: a file name stem for figures written into ``--out`` (no folder part,
    not empty, not ``.`` or ``..``)."""
    if not text.strip() or text in (".", "..") or any(sep in text for sep in ("/", "\\", "\0")):
        raise argparse.ArgumentTypeError(f"expected a file name stem without a folder, e.g. 'trace1', got {text!r}; "
                                         "give the folder with --out")
    return text


_file_stem.__name__ = "file name stem"

POSITIVE, NON_NEGATIVE = _int_at_least(1), _int_at_least(0)
SEED, THREADS = _int_at_least(0, MAX_SEED), _int_at_least(1, MAX_THREADS)
PEOPLE = _int_at_least(2, MAX_PEOPLE)


def _editor(name: str, flag: str = "--method"):
    """The registered editor ``name`` (imports the editors, not TransformerLens or a model)."""
    from interp_edit.editing.registry import get_editor
    from interp_edit.errors import EditConfigError

    try:
        return get_editor(name)
    except EditConfigError as err:
        raise CommandLineError(f"{flag}: {err}") from None


class CommandLineError(Exception):
    """A flag's value is unusable (not JSON, not a list of integers, an unwritable folder);
    the message names the flag."""


def _one_line(err: BaseException) -> str:
    """An expected error as one line (an OSError with its file named)."""
    message = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, OSError) and err.filename and str(err.filename) not in message:
        message = f"{err.filename}: {message}"
    return message


@contextlib.contextmanager
def _from_flag(flag: str, errors: tuple[type[BaseException], ...] | None = None):
    """Errors raised inside, about the value ``flag`` gave (by default every
    :class:`~interp_edit.errors.InterpEditError` and ``OSError``), re-raised as a
    :class:`CommandLineError` naming the flag: the one line :func:`main` prints (exit status 2)
    for what is found only once the model has loaded (a missing model folder, a layer the model
    lacks, more cases than its world's data set has)."""
    if errors is None:
        from interp_edit.errors import InterpEditError

        errors = (InterpEditError, OSError)
    try:
        yield
    except errors as err:
        raise CommandLineError(f"{flag}: {_one_line(err)}") from None


def _load(name: str, flag: str = "--model"):
    """The model ``flag`` names, loaded; a load that fails is reported naming ``flag``."""
    from interp_edit.adapter import load_model

    with _from_flag(flag):
        return load_model(name)


def _check_n(n: int | None, dataset) -> None:
    """``--n`` no more than the cases of ``dataset`` (a loaded :class:`~interp_edit.data.Dataset`)."""
    if n is not None and n > len(dataset):
        raise CommandLineError(f"--n {n} but the dataset {dataset.name!r} has {len(dataset)} cases")


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


def _check_config(editor, fields: dict, flag: str, model_name: str) -> dict:
    """``fields`` (editor config fields given by ``flag``) checked against the editor's config
    class before the model loads: an unknown field name, a value of the wrong type and, where
    the model's config can be read without loading its weights (a checkpoint folder, e.g. the
    toy world's: the sweep's :func:`~interp_edit.sweep.cells._model_shape`), a value its preset
    for the model rejects. Keyword arguments of the editor's function (e.g. ``corpus``) pass as
    the run passes them. What needs the loaded model (a layer index against its depth, the
    context prefixes) is checked after loading. Returns ``fields``."""
    import dataclasses
    import inspect

    from interp_edit.editing.config import preset_config
    from interp_edit.errors import EditConfigError
    from interp_edit.sweep.cells import _model_shape
    from interp_edit.validation import check_fields

    cls = editor.config_class
    keywords = {name for name, p in inspect.signature(editor.fn).parameters.items() if p.kind is p.KEYWORD_ONLY}
    own = {k: v for k, v in fields.items() if k not in keywords}
    try:
        shape = _model_shape(model_name, {})
    except (ValueError, OSError):  # an unknown or unreadable model: loading it says why
        shape = None
    try:
        if shape is not None:
            preset_config(cls, shape, own)
        else:  # names and types only: how fields combine depends on the model's preset
            names = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(own) - names)
            if unknown:
                raise EditConfigError(f"{cls.__name__} has no field(s) {unknown}; fields: {sorted(names)}")
            check_fields(cls(**own), EditConfigError)
    except EditConfigError as err:
        raise CommandLineError(f"{flag}: {err}") from None
    return fields


def _experiment_data(data: str, zsre_target: str, n: int | None):
    """``--data`` read and checked before the model loads: a built-in name, or a file's (or the
    hub's) records parsed and validated, with ``--n`` no more than its cases; its format one
    that experiments evaluate (zsRE for ``--zsre-target answer``). Returns the loaded dataset,
    or a built-in dataset's name (it is built from the loaded model's world)."""
    from interp_edit.data import builtin_datasets, load_dataset
    from interp_edit.errors import DatasetError
    from interp_edit.evaluation.runner import EXPERIMENT_FORMATS

    builtins = builtin_datasets()
    if data in builtins:
        dataset, name, fmt = data, data, builtins[data].format
    else:
        dataset = load_dataset(data, zsre_target=zsre_target)
        name, fmt = dataset.name, dataset.format
        _check_n(n, dataset)
    if fmt not in EXPERIMENT_FORMATS:
        raise DatasetError(f"dataset {name!r} has {fmt!r} cases; experiments evaluate "
                           f"{', '.join(EXPERIMENT_FORMATS)} cases (commonsense statements are scored by "
                           "interp_edit.evaluation.commonsense.commonsense_scores)")
    if zsre_target != "alt" and fmt != "zsre":
        raise CommandLineError(f"--zsre-target {zsre_target}: dataset {name!r} is {fmt!r}, not zsRE")
    return dataset


def _writable_folder(path: str | None, flag: str) -> Path | None:
    """``path`` as a folder that exists (created if needed) and can be written, checked before
    any compute."""
    if path is None:
        return None
    if not path.strip():  # Path("") is the current folder, which a run would fill unasked
        raise CommandLineError(f"{flag}: empty path; give a folder")
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
    if path is not None and not path.strip():
        raise CommandLineError(f"{flag}: empty path; give a file name")
    if path is not None and path.rstrip().endswith(("/", "\\")):  # Path() drops the separator: "new/" became new.safetensors
        raise CommandLineError(f"{flag} {path}: ends with a folder separator; give a file name, e.g. {path.rstrip()}edit.safetensors")
    if path is not None:
        _writable_folder(str(Path(path).parent), flag)
        if Path(path).is_dir():
            raise CommandLineError(f"{flag} {path}: is a folder; give a file name")


def _check_texts(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """The text flags ``names`` that are given are not empty (checked before the model loads)."""
    for name in names:
        value = getattr(args, name)
        if value is not None and not value.strip():
            raise CommandLineError(f"--{name}: empty text {value!r}")


def _cmd_demo(args: argparse.Namespace) -> int:
    from interp_edit.demo import run_demo
    from interp_edit.errors import CheckpointError, ModelNotFoundError

    _writable_folder(args.figures, "--figures")
    with _from_flag("--model", (ModelNotFoundError, CheckpointError)):  # the demo loads nothing else
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
        cfg = replace(cfg, model=replace(cfg.model, d_mlp=args.d_mlp))
    out = _writable_folder(args.out, "--out") or BUILTIN_MODELS["toyworld"]
    metrics = train_and_save(cfg, out, progress=not args.quiet)
    print(f"checkpoint={out}")
    for key, value in metrics.items():
        print(f"{key}={value:.4f}")
    return 0


def _cmd_toy_eval(args: argparse.Namespace) -> int:
    from interp_edit.toyworld import world_of
    from interp_edit.toyworld.evaluation import evaluate_toyworld

    model = _load(args.checkpoint or "toyworld", "--checkpoint")
    for key, value in evaluate_toyworld(model, world_of(model)).items():
        print(f"{key}={value:.4f}")
    return 0


def _cmd_trace(args: argparse.Namespace) -> int:
    from interp_edit.analysis import causal_trace

    _check_texts(args, ("prompt", "subject", "target", "foil", "replacement"))
    if args.subject not in args.prompt:
        raise CommandLineError(f"--subject {args.subject!r}: does not occur in --prompt {args.prompt!r}")
    if args.metric == "logit_diff" and args.foil is None:
        raise CommandLineError("--metric logit_diff needs --foil (the competing answer)")
    if args.corruption == "replace" and args.replacement is None:
        raise CommandLineError("--corruption replace needs --replacement (the subject swapped in)")
    from interp_edit.analysis.tracing import TraceSettings
    from interp_edit.errors import InterpEditError

    try:  # the trace's own checks of its settings (--severed with --kinds ...), before the model loads
        given = dict(kinds=tuple(args.kinds), corruption=args.corruption, noise=args.noise, samples=args.samples,
                     window=args.window, metric=args.metric, severed=args.severed, seed=args.seed,
                     replacement=args.replacement)
        TraceSettings(**{k: v for k, v in given.items() if v is not None}).validate()
    except InterpEditError as err:
        raise CommandLineError(f"--severed / --kinds / trace settings: {err}") from None
    _writable_folder(args.out, "--out")
    model = _load(args.model)
    result = causal_trace(
        model, args.prompt, args.subject, args.target, kinds=args.kinds,
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
    from interp_edit.analysis import neuron_attribution

    _check_texts(args, ("prompt", "target"))
    _writable_folder(args.out, "--out")
    model = _load(args.model)
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
    from interp_edit.editing import EditRequest, edit
    from interp_edit.editing.registry import check_editor_config
    from interp_edit.editing.requests import validate_request
    from interp_edit.validation import check_int, check_prompt_batch

    _writable_file(args.out, "--out")
    editor = _editor(args.method)
    # the request and the config fields the flags set, before the model loads (a layer against
    # the model's depth after)
    request = EditRequest(args.prompt, args.subject, args.target_new, args.target_true)
    validate_request(request, 0)
    overrides = {}
    if args.layer is not None:
        overrides["layer"] = args.layer
    if args.layers:
        overrides["layers"] = args.layers
    flags = "/".join(f"--{k}" for k in overrides)
    _check_config(editor, overrides, flags, args.model)
    model = _load(args.model)
    if overrides:  # against the loaded model (a layer it lacks), before any compute
        with _from_flag(flags):
            check_editor_config(model, args.method, overrides)
    check_int(args.top_k, "--top-k", minimum=1, maximum=model.cfg.d_vocab_out)
    # every --check prompt (non-empty, within the context; the error names which) before the edit
    check_prompt_batch(model, args.check, "--check", allow_empty=True)
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

    from interp_edit.editing.registry import check_editor_config
    from interp_edit.evaluation import run_experiment

    editor = _editor(args.method)
    # everything checkable without the model before it loads: the data, its records, the config
    data = _experiment_data(args.data or editor.default_data, args.zsre_target, args.n)
    config = _check_config(editor, _json_object(args.config, "--config"), "--config", args.model)
    _writable_folder(args.out, "--out")
    model = _load(args.model)
    if isinstance(data, str):  # a built-in dataset, of the model's world: --n against its cases
        from interp_edit.data import load_dataset

        with _from_flag("--data"):
            data = load_dataset(data, model=model, zsre_target=args.zsre_target)
        _check_n(args.n, data)
    with _from_flag("--config"):  # against the loaded model (a layer it lacks), before any edit
        check_editor_config(model, args.method, config)
    result = run_experiment(model, data, args.method, n=args.n, batch_size=args.batch_size, sequential=args.sequential,
                            eval_every=args.eval_every, seed=args.seed, out=args.out, unrelated=args.unrelated,
                            fluency=not args.no_fluency, config=config, progress=not args.quiet,
                            protocol=args.protocol, gen_tokens=args.gen_tokens)
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

    from interp_edit.editing.registry import check_editor_config
    from interp_edit.evaluation.contrast import contrast_study
    from interp_edit.toyworld import counterfact_records, world_or_shipped
    from interp_edit.toyworld.world import stable_seed

    editor = _editor(args.method)
    config = _check_config(editor, _json_object(args.config, "--config"), "--config", args.model)
    _writable_folder(args.out, "--out")
    model = _load(args.model)
    with _from_flag("--config"):  # against the loaded model (a layer it lacks), before any edit
        check_editor_config(model, args.method, config)
    records = [r for r in counterfact_records(world_or_shipped(model)) if r.relation_id in args.relations]
    random.Random(stable_seed("contrast", args.seed)).shuffle(records)
    out = Path(args.out) if args.out else None
    result = contrast_study(model, args.method, records[: args.n], config=config, groups=args.groups,
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
    from interp_edit.sweep.runner import check_out

    check_out(args.out, "--out")
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


class _Parser(argparse.ArgumentParser):
    """argparse, with a refused flag reported as every other user error is: one line,
    ``interp-edit: error: ...``, naming the flag and where its help is; exit status 2. Flags are
    not abbreviated: a flag's value that begins like another flag (``--kinds --m``) is refused
    naming the flag it was given to, not as an ambiguous abbreviation of others."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        print(f"interp-edit: error: {' '.join(message.split())} (see `{self.prog} --help`)", file=sys.stderr)
        self.exit(2)


def _sub(subparsers, name: str, **kwargs) -> argparse.ArgumentParser:
    return subparsers.add_parser(name, formatter_class=HelpFormatter, **kwargs)


_METHOD_HELP = "an editor of the registry (ace needs multi-hop cases)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="interp-edit", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--threads", type=THREADS, help="torch threads (default: the package's policy, "
                        "interp_edit.threads: $INTERP_EDIT_THREADS or 1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = _sub(sub, "demo", help="load the toy-world model and show what it knows",
                description="Load the toy-world model, show what it knows and write the demo figures.")
    demo.add_argument("--facts", type=POSITIVE, default=6, help="number of facts to show")
    demo.add_argument("--top-k", type=POSITIVE, default=5, help="predictions shown per fact")
    demo.add_argument("--seed", type=SEED, default=0, help="which facts are drawn")
    demo.add_argument("--figures", default="results/demo", help="folder for the figures (not tracked by git)")
    demo.add_argument("--aie-facts", type=POSITIVE, default=100, help="facts averaged in the AIE figure")
    demo.add_argument("--model", default="toyworld", help="a toy-world checkpoint: name or folder")
    demo.set_defaults(func=_cmd_demo)

    trace = _sub(sub, "trace", help="causal trace of one fact: figures + the top restoration sites",
                 description="Causal trace of one fact (ROME): corrupt the subject, restore one site at a time.")
    trace.add_argument("--prompt", required=True, help="the prompt, e.g. 'Talvik Corlo was born in'")
    trace.add_argument("--subject", required=True, help="the subject as it appears in the prompt")
    trace.add_argument("--target", help="the answer to score (default: the clean top-1 token)")
    trace.add_argument("--model", default="toyworld", help="model name or folder")
    trace.add_argument("--kinds", type=_names_from(KINDS), default=KINDS, metavar="KINDS",
                       help=f"what is restored, comma-separated from {','.join(KINDS)} (default: all three)")
    trace.add_argument("--corruption", default="gaussian", choices=("gaussian", "replace"),
                       help="noise on the subject's embeddings, or another subject swapped in")
    trace.add_argument("--replacement", help="subject swapped in by --corruption replace (default: none; required there)")
    trace.add_argument("--noise", type=_positive_float, default=3.0, help="noise scale in embedding stds")
    trace.add_argument("--samples", type=POSITIVE, default=10, help="corrupted runs averaged")
    trace.add_argument("--window", type=POSITIVE, help="layers restored together for mlp/attn (default: 10 of 48 layers "
                       "scaled to the model's depth, max(1, round(10 * n_layers / 48)))")
    trace.add_argument("--metric", default="prob", choices=("prob", "logprob", "logit_diff"),
                       help="score of the answer: p(target), log p(target) or logit(target) - logit(foil)")
    trace.add_argument("--foil", help="competing answer for --metric logit_diff (default: none)")
    trace.add_argument("--severed", choices=("mlp", "attn"), help="sever this path while restoring hidden states "
                       "(default: none)")
    trace.add_argument("--seed", type=SEED, default=0, help="seed of the noise")
    trace.add_argument("--top", type=POSITIVE, default=5, help="restoration sites printed")
    trace.add_argument("--out", default="results/figures", help="folder for the figures")
    trace.add_argument("--name", type=_file_stem, default="causal_trace", help="file name stem of the figures")
    trace.set_defaults(func=_cmd_trace)

    attribute = _sub(sub, "attribute", help="neuron-level attribution of one prompt: ranked value neurons, layer "
                     "scores, figures", description="Neuron-level attribution of one prompt's prediction.")
    attribute.add_argument("--prompt", required=True, help="the prompt, e.g. 'Talvik Corlo was born in'")
    attribute.add_argument("--target", help="the answer to score (default: the model's top-1 token; a multi-token "
                           "answer: its first token)")
    attribute.add_argument("--model", default="toyworld", help="model name or folder")
    attribute.add_argument("--top-k", type=POSITIVE, default=300, help="value / query neurons kept per kind (clipped)")
    attribute.add_argument("--keep-bias", action="store_true", help="keep the final norm and unembedding biases in the "
                           "readout")
    attribute.add_argument("--method", default="exact", choices=("exact", "first_order", "exact_top_k"),
                           help="exact log-prob increases of every neuron, their cheaper gradient approximation, "
                                "or the exact top-k certified by first-order bounds (exact_top_k)")
    attribute.add_argument("--show", type=POSITIVE, default=15, help="neurons printed")
    attribute.add_argument("--out", default="results/figures", help="folder for the figures")
    attribute.add_argument("--name", type=_file_stem, default="attribution", help="file name stem of the figures")
    attribute.set_defaults(func=_cmd_attribute)

    edit = _sub(sub, "edit", help="edit one fact; print the top-k before and after, save the edit",
                description="Edit one fact; print the top-k predictions before and after; save the edit.")
    edit.add_argument("--method", default="rome", choices=METHODS, help=_METHOD_HELP)
    edit.add_argument("--prompt", required=True, help="the prompt with {} for the subject, e.g. '{} was born in'")
    edit.add_argument("--subject", required=True, help="the subject put in for {}")
    edit.add_argument("--target-new", required=True, help="the new object")
    edit.add_argument("--target-true", help="the current object (default: none, optional)")
    edit.add_argument("--layer", type=NON_NEGATIVE, help="edited layer (rome, ft; default: the model's preset)")
    edit.add_argument("--layers", type=_ints_of(NON_NEGATIVE), metavar="LAYERS",
                      help="edited layers, comma-separated (memit, alphaedit; default: the model's preset)")
    edit.add_argument("--check", action="append", default=[], help="another prompt to show before/after (repeatable; "
                      "default: none)")
    edit.add_argument("--model", default="toyworld", help="model name or folder")
    edit.add_argument("--top-k", type=POSITIVE, default=5, help="predictions printed per prompt")
    edit.add_argument("--out", help="save the edit to this .safetensors file (default: not saved)")
    edit.set_defaults(func=_cmd_edit)

    ev_cmd = _sub(sub, "evaluate", help="edit n dataset cases in batches (independent or sequential); print the metrics",
                  description="Edit n cases of a data set in batches (independent or sequential); print the metrics.")
    ev_cmd.add_argument("--model", default="toyworld", help="model name or folder")
    ev_cmd.add_argument("--data", help="built-in dataset (toyworld-counterfact, -zsre, -mquake, -mcq, -ripple) or a JSON / JSONL "
                        "file (default: the one that suits the method: toyworld-mquake for ace, toyworld-counterfact "
                        "otherwise)")
    ev_cmd.add_argument("--method", default="rome", choices=METHODS, help=_METHOD_HELP)
    ev_cmd.add_argument("--zsre-target", default="alt", choices=("alt", "answer"),
                        help="a zsRE case's new answer: its 'alt' (EasyEdit) or answers[0] (ROME / MEMIT / AlphaEdit, "
                        "whose published zsRE numbers are of this)")
    ev_cmd.add_argument("--n", type=POSITIVE, help="number of cases edited (default: all)")
    ev_cmd.add_argument("--batch-size", type=POSITIVE, default=1, help="requests per edit")
    ev_cmd.add_argument("--sequential", action="store_true", help="keep every batch's edit (off: undo each batch)")
    ev_cmd.add_argument("--eval-every", type=POSITIVE, default=1, help="evaluate all edited cases every this many batches")
    ev_cmd.add_argument("--unrelated", type=NON_NEGATIVE, default=100, help="unrelated facts watched for drift")
    ev_cmd.add_argument("--seed", type=SEED, default=0, help="which cases are drawn")
    ev_cmd.add_argument("--no-fluency", action="store_true", help="skip the greedy generations (faster)")
    ev_cmd.add_argument("--protocol", default="teacher_forced", choices=("teacher_forced", "generation", "both"),
                        help="judge edits by teacher-forced log-probs, by greedy generation (exact / contains match) "
                        "or both (default: teacher_forced)")
    ev_cmd.add_argument("--gen-tokens", type=POSITIVE, default=8, help="greedy tokens a generation is judged on")
    ev_cmd.add_argument("--config", help='editor config fields as JSON, e.g. \'{"layers": [1, 2]}\' (default: the '
                        "editor's preset for the model)")
    ev_cmd.add_argument("--out", help="folder for results.jsonl (resumable), edits, summary.json and the figure "
                        "(default: nothing written)")
    ev_cmd.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    ev_cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    ev_cmd.set_defaults(func=_cmd_evaluate)

    con = _sub(sub, "contrast", help="success-vs-failure contrast of pre/post-edit attribution diffs over n toy edits",
               description="Contrast the pre/post-edit attribution diffs of successful and failed edits.")
    con.add_argument("--method", default="rome", choices=METHODS, help=_METHOD_HELP)
    con.add_argument("--n", type=POSITIVE, default=100, help="independent single edits")
    con.add_argument("--model", default="toyworld", help="model name or folder (the pool is the facts of the model's "
                     "toy world)")
    con.add_argument("--relations", type=_names_from(RELATIONS), default=",".join(RELATIONS[:4]), metavar="RELATIONS",
                     help=f"toy-world relations in the pool, comma-separated from {','.join(RELATIONS)}")
    con.add_argument("--groups", type=_names_from(GROUPS), default=("edit",), metavar="GROUPS",
                     help=f"prompt groups recorded, comma-separated from {','.join(GROUPS)} (default: edit)")
    con.add_argument("--config", help='editor config fields as JSON, e.g. \'{"steps": 4}\' (default: the editor\'s '
                     "preset)")
    con.add_argument("--n-boot", type=POSITIVE, default=1000, help="bootstrap resamples of the confidence intervals")
    con.add_argument("--seed", type=SEED, default=0, help="which facts are drawn; bootstrap seed")
    con.add_argument("--out", help="folder for contrast.jsonl (resumable) and the figures (default: nothing written)")
    con.add_argument("--quiet", action="store_true", help="no progress bar")
    con.set_defaults(func=_cmd_contrast)

    sw = _sub(sub, "sweep", help="run a grid of experiments (editors x configs x datasets x seeds x models); resumable",
              description="Run a grid of experiments (editors x configs x datasets x seeds x models); resumable.")
    sw.add_argument("spec", help="the grid: a .json or .yaml file (see interp_edit.sweep.spec)")
    sw.add_argument("--out", required=True, help="folder for every cell's results.jsonl (resumable) and the merged "
                    "summary")
    sw.add_argument("--executor", default="inprocess", choices=("inprocess", "processes", "ray"),
                    help="where cells run: this process, local processes, or Ray")
    sw.add_argument("--address", help="Ray cluster address (host:port, ray://host:port or auto; default: a new local "
                    "instance)")
    sw.add_argument("--workers", type=POSITIVE, default=2, help="local processes / CPUs of a local Ray instance")
    sw.add_argument("--retries", type=NON_NEGATIVE, default=2, help="retries of a failed cell")
    sw.add_argument("--connect-timeout", type=_positive_float, default=10.0, help="seconds to wait for a Ray address")
    sw.add_argument("--no-figure", action="store_true", help="skip the merged figure")
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.set_defaults(func=_cmd_sweep)

    toy = _sub(sub, "toy", help="the embedded toy-world model", description="The embedded toy-world model.")
    toy_sub = toy.add_subparsers(dest="toy_command", required=True, metavar="COMMAND")
    train = _sub(toy_sub, "train", help="retrain the toy-world model from scratch (deterministic)",
                 description="Retrain the toy-world model from scratch (deterministic).")
    train.add_argument("--out", help="checkpoint folder (default: the package's own checkpoint)")
    train.add_argument("--steps", type=POSITIVE, help="optimisation steps (default: the shipped config)")
    train.add_argument("--seed", type=SEED, help="training seed: initialisation and training text (default 0)")
    train.add_argument("--world-seed", type=SEED, help="seed of the world: who the people are and their facts (default 0)")
    train.add_argument("--n-people", type=PEOPLE, help=f"people in the world, 2 to {MAX_PEOPLE} (default 400)")
    train.add_argument("--threads", type=THREADS, help="CPU threads used for training (default 2)")
    train.add_argument("--d-mlp", type=POSITIVE, help="MLP width of every block (default 512)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_cmd_toy_train)
    ev = _sub(toy_sub, "eval", help="print the toy-world model's accuracies as key=value lines",
              description="Print the toy-world model's accuracies as key=value lines.")
    ev.add_argument("--checkpoint", help="checkpoint folder (default: the shipped model)")
    ev.set_defaults(func=_cmd_toy_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a bad flag, with a message naming it,
    before any model loads)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help (0) or a refused value (2: argparse printed which flag)
        return done.code if isinstance(done.code, int) else 2
    from interp_edit.errors import InterpEditError

    try:
        if args.func is not _cmd_toy_train:  # training sets its own threads (ToyTrainConfig.threads)
            from interp_edit.threads import set_threads

            set_threads(args.threads)
        return args.func(args)
    except (InterpEditError, CommandLineError, OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        # expected errors (bad input, files, JSON): one line naming the flag or file, no traceback
        print(f"interp-edit: error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
