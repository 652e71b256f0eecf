"""Batch and sequential editing experiments with resumable JSONL results.

``run_experiment`` draws ``n`` cases of a dataset (a seeded shuffle), edits them in batches of
``batch_size`` and measures:

- each batch's cases right after their edit (``rows``);
- every ``eval_every`` batches (and after the last), all cases edited so far — in sequential
  mode on the model with every edit so far applied, the curves of papers on sequential editing;
  in independent mode the running mean of the per-batch rows;
- a fixed sample of ``unrelated`` other cases' true facts, about subjects no edit touches
  (drift: accuracy, log-prob drop);
- in sequential mode, at each checkpoint (and on the unedited model, in the baseline), the
  ``heldout_perplexity`` of a fixed held-out corpus: the butterfly-effect paper's cheap
  surrogate for model collapse. For a toy-world dataset the corpus is :data:`HELDOUT_TEXTS`
  texts of :class:`~interp_edit.toyworld.corpus.CorpusSampler` with the seed
  :data:`HELDOUT_SEED` (neither the training seed nor the statistics' one); for another
  dataset the texts given as ``heldout_texts`` (without them the metric is absent).

``protocol`` chooses how edits are judged: ``"teacher_forced"`` (the default: log-probabilities
of the targets), ``"generation"`` (greedy decoding of ``gen_tokens`` tokens judged by exact /
contains match, :mod:`interp_edit.evaluation.generation`) or ``"both"`` (both sets of metrics in
one table).

On a ``ripple`` data set (``toyworld-ripple``) the edited cases keep only the ripple tests the
unedited model answers right (RippleEdits' filter, :func:`~interp_edit.evaluation.ripple.known_tests_only`,
run before any edit; ``settings["ripple_known_tests"]`` counts them per kind), and every row
carries each ripple kind's accuracy.

Independent mode undoes each batch's edit before the next; sequential mode keeps them
(AlphaEdit through one :class:`~interp_edit.editing.AlphaEditor`, so later batches preserve the
keys of earlier ones; UltraEdit with one :class:`~interp_edit.editing.UltraEditState`, so later
batches are normalised with the statistics of every earlier one; WISE and GRACE with one side
memory / codebook that each batch extends, as their lifelong protocols do: the previous batch's
edit is undone and passed as ``memory=``, and the new edit, holding the whole memory, replaces it;
other methods are simply called on the edited model). The model gets its original weights back at the end, also on an
exception.

With ``out``, results go to ``out/results.jsonl`` (one line of settings, one of baseline metrics,
one per finished batch; a batch whose edit found requests sharing one key records their groups
as ``key_collisions``) and, in sequential mode, each batch's edit to ``out/edits/`` (and the
AlphaEditor's accumulated keys, UltraEdit's normalisation statistics). Running again with the
same settings and the same cases (``settings["cases_sha256"]``: a hash of the edited cases'
content and of the drift probes) resumes after the last finished batch: the earlier edits are re-applied from their
files, no case is repeated or lost.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from interp_edit.atomic_files import atomic_path, write_text_atomic
from interp_edit.editing.registry import check_editor_config
from interp_edit.errors import DatasetError, ExperimentError, InvalidArgumentError
from interp_edit.evaluation.cases import (
    aggregate,
    check_case_lengths,
    check_lengths,
    evaluate_cases,
    fact_probes,
    probed_cases,
    unrelated_metrics,
)
from interp_edit.evaluation.experiment import ExperimentResult
from interp_edit.evaluation.generation import DEFAULT_GEN_TOKENS, check_gen_tokens, check_protocol
from interp_edit.progress import progress_bar
from interp_edit.validation import check_int

RESULTS_FILE = "results.jsonl"
#: the case formats :func:`evaluate_cases` measures
EXPERIMENT_FORMATS = ("counterfact", "zsre", "mquake", "mcq", "ripple")
#: the toy world's held-out corpus: this many texts of ``CorpusSampler(world, seed=HELDOUT_SEED)``
#: (training samples with its config's seed, 0 by default; the statistics with 7919)
HELDOUT_SEED = 104729
HELDOUT_TEXTS = 32


def _after_batch(batch: int) -> None:
    """Called after each batch is recorded (tests replace it to simulate an interruption)."""


def _library_version() -> str:
    from interp_edit import __version__

    return __version__


def select_cases(dataset, n: int | None, n_unrelated: int, seed: int) -> tuple[list, list]:
    """The edited cases (the first ``n`` of a seeded shuffle) and the unrelated ones (drift
    probes): the next cases of the shuffle whose probed subject (the subject of their first
    rewrite, the fact :func:`~interp_edit.evaluation.cases.fact_probes` asks) is no edited case's
    subject (of any of its rewrites), up to ``n_unrelated`` — another relation of an edited
    subject is not an unrelated fact, an edit may well move it. When fewer such cases remain, a
    ``UserWarning`` gives the count and all of them are used."""
    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    n = len(order) if n is None else n
    if not 1 <= n <= len(order):
        raise InvalidArgumentError(f"n={n} but the dataset {dataset.name!r} has {len(order)} cases")
    edited = [dataset[i] for i in order[:n]]
    subjects = {r.subject for case in edited for r in case.rewrites()}
    others, skipped = [], 0
    for i in order[n:]:
        if len(others) == n_unrelated:
            break
        if dataset[i].rewrites()[0].subject in subjects:
            skipped += 1
        else:
            others.append(dataset[i])
    if len(others) < n_unrelated:
        import warnings

        warnings.warn(f"unrelated={n_unrelated}, but only {len(others)} of the {len(order) - n} cases of dataset "
                      f"{dataset.name!r} beyond the {n} edited ones are about a subject no edit touches ({skipped} "
                      f"skipped: facts of an edited subject are not unrelated); drift is measured on those {len(others)}",
                      UserWarning, stacklevel=3)
    return edited, others


def _same_rewrite(r) -> tuple[str, str, str]:
    """What makes two rewrites one edit: the subject, the filled prompt and the new target."""
    return r.subject.strip(), r.text.strip(), r.target_new.strip()


def _requests(cases: Sequence) -> list:
    """The edit requests of ``cases``: each rewrite once (MQuAKE cases of one batch often share a
    rewrite; an identical one is edited once, not refused as a duplicate)."""
    from interp_edit.editing import EditRequest

    unique = {}
    for c in cases:
        for r in c.rewrites():
            unique.setdefault(_same_rewrite(r), r)
    return [EditRequest(r.prompt, r.subject, r.target_new, r.target_true) for r in unique.values()]


def check_batch_rewrites(batches: Sequence[Sequence]) -> None:
    """Before any evaluation or file: within each batch, two rewrites of one filled prompt must
    ask for the same new target (no edit can continue one text two ways); else
    :class:`~interp_edit.errors.EditRequestError` naming the batch, the prompt and both cases' ids.
    Identical rewrites (subject, prompt and new target) are allowed: they are edited once."""
    from interp_edit.errors import EditRequestError

    for b, cases in enumerate(batches):
        first: dict[str, tuple[object, object]] = {}
        for case in cases:
            for r in case.rewrites():
                text = r.text.strip()
                if text not in first:
                    first[text] = (case, r)
                    continue
                other, seen = first[text]
                if seen.target_new.strip() != r.target_new.strip():
                    raise EditRequestError(
                        f"cases {other.case_id} and {case.case_id} (batch {b}) conflict: the same prompt {r.text!r} "
                        f"(subjects {seen.subject!r} and {r.subject!r}) with different new targets ({seen.target_new!r} "
                        f"vs {r.target_new!r}); one edit cannot write both: use batch_size=1 or leave one case out")


def cases_digest(cases: Sequence, probes: Sequence[tuple[str, str]]) -> str:
    """The SHA-256 of what a run edits and measures: every field of the edited cases (rewrites,
    prompts, targets, ids) and the drift probes' prompts and answers; a results file of other
    content is not resumed into."""
    import hashlib

    from interp_edit.data.cases import case_to_dict

    content = {"cases": [case_to_dict(c) for c in cases], "unrelated_probes": [list(p) for p in probes]}
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def _format_of(case) -> str | None:
    """The experiment format of a case (``None``: not a case of one)."""
    from interp_edit.data.cases import CounterFactCase, MCQCase, MQuAKECase, ZsRECase
    from interp_edit.data.ripple import RippleCase

    kinds = {CounterFactCase: "counterfact", ZsRECase: "zsre", MQuAKECase: "mquake", MCQCase: "mcq", RippleCase: "ripple"}
    return kinds.get(type(case))


def _as_dataset(cases):
    """A list / tuple of cases (e.g. ``dataset[:10]``) as a :class:`~interp_edit.data.Dataset`
    of their one format; cases of no or of several formats are a :class:`DatasetError` naming them."""
    from interp_edit.data.cases import Dataset
    from interp_edit.validation import check_sequence

    items = check_sequence(cases, "dataset", error=DatasetError)
    formats = [_format_of(c) for c in items]
    for i, fmt in enumerate(formats):
        if fmt is None:
            raise DatasetError(f"dataset[{i}]: expected a case of one of {', '.join(EXPERIMENT_FORMATS)} (load them with "
                               f"interp_edit.data.load_dataset), got {type(items[i]).__name__}")
        if fmt != formats[0]:
            raise DatasetError(f"dataset[{i}] is a {fmt} case but dataset[0] a {formats[0]} one: an experiment runs "
                               "cases of one format")
    zsre_target = None
    if formats[0] == "zsre":  # the convention the loader used: a target it replaces named or not
        zsre_target = "answer" if items[0].target_true is None else "alt"
    name = f"{len(items)} {formats[0]} cases"
    return Dataset(name, formats[0], tuple(items), source=name, zsre_target=zsre_target)


def _read_jsonl(path: Path) -> list[dict]:
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by an interruption: everything after it is redone
    return lines


def _append(path: Path, entry: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
        handle.flush()


#: settings a results file of an earlier version may lack: such a file is resumed without comparing them
_ADDED_SETTINGS = ("cases_sha256",)


def _comparable(settings: dict) -> dict:
    out = {k: v for k, v in settings.items() if k not in ("started",)}
    out.setdefault("protocol", "teacher_forced")  # files written before protocols existed
    return out


def heldout_corpus(world, n: int = HELDOUT_TEXTS) -> list[str]:
    """The toy world's held-out texts: the first ``n`` of ``CorpusSampler(world,
    seed=HELDOUT_SEED)`` (a :class:`~interp_edit.toyworld.world.ToyWorld` or its spec).

    >>> texts = heldout_corpus(world)
    >>> len(texts), texts == heldout_corpus(world)
    (32, True)
    """
    from interp_edit.toyworld.corpus import CorpusSampler

    world = world.build() if hasattr(world, "build") else world
    sampler = CorpusSampler(world, seed=HELDOUT_SEED)
    return [sampler.sample() for _ in range(n)]


def _check_heldout(model, texts) -> list[str]:
    """``heldout_texts``: a non-empty list of non-empty strings, each within the context."""
    from interp_edit.batching import encode_prompts

    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise InvalidArgumentError(f"heldout_texts must be a non-empty list of strings, got {type(texts).__name__} {texts!r:.80}")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise InvalidArgumentError(f"heldout_texts[{i}] must be a non-empty string, got {text!r:.80}")
    for i, ids in enumerate(encode_prompts(model.tokenizer, texts)):
        if len(ids) > model.cfg.n_ctx:
            raise InvalidArgumentError(f"heldout_texts[{i}] is {len(ids)} tokens with BOS; the model's context is {model.cfg.n_ctx}")
    return list(texts)


class _Session:
    """The editing side of one run: computes each batch's edit (one AlphaEditor in sequential
    AlphaEdit runs), saves / restores what resuming needs."""

    def __init__(self, model, method: str, sequential: bool, config: dict, folder: Path | None) -> None:
        from interp_edit.editing import AlphaEditor, get_editor

        self.model, self.method, self.sequential, self.config, self.folder = model, method, sequential, config, folder
        self.editor = get_editor(method)
        self.alpha = AlphaEditor(model, **config) if sequential and method == "alphaedit" else None
        #: UltraEdit's lifelong normalisation statistics, passed to every batch of a sequential run
        self.ultra = None
        if sequential and method == "ultraedit":
            from interp_edit.editing import UltraEditState

            self.ultra = UltraEditState()

    def items(self, cases) -> list:
        """What the editor's function takes for ``cases``."""
        return list(cases) if self.editor.takes_cases else _requests(cases)

    def prepare(self, cases) -> None:
        """The editor's experiment-level check / config (before any edit)."""
        if self.editor.prepare is not None:
            self.config = self.editor.prepare(self.model, self.items(cases), self.config)

    @property
    def extends_memory(self) -> bool:
        """Sequential WISE / GRACE: each batch extends the side memory / codebook of the one before (``memory=``)."""
        return self.sequential and self.method in ("wise", "grace")

    def edit(self, cases, applied: list):
        """The edit of ``cases`` on the model with ``applied`` (this run's edits so far, applied in
        place); sequential WISE / GRACE undo the last one and extend its memory (it leaves ``applied``)."""
        if self.alpha is not None:
            return self.alpha(self.model, _requests(cases))
        if self.ultra is not None:
            return self.editor.fn(self.model, self.items(cases), state=self.ultra, **self.config)
        if self.extends_memory and applied:
            previous = applied.pop().undo(self.model)
            return self.editor.fn(self.model, self.items(cases), memory=previous, **self.config)
        return self.editor.fn(self.model, self.items(cases), **self.config)

    def _paths(self, batch: int) -> tuple[Path, Path]:
        folder = self.folder / "edits"
        return folder / f"batch_{batch:05d}.safetensors", folder / f"{self.method}_state_{batch:05d}.pt"

    def save(self, batch: int, edit) -> str | None:
        if self.folder is None or not self.sequential:
            return None
        edit_path, state_path = self._paths(batch)
        edit.save(edit_path)
        if self.alpha is not None:
            with atomic_path(state_path) as tmp:
                torch.save({"preserved": self.alpha.preserved, "n_edited": self.alpha.n_edited}, tmp)
        if self.ultra is not None:
            with atomic_path(state_path) as tmp:
                torch.save(self.ultra.state_dict(), tmp)
        return str(edit_path.relative_to(self.folder))

    def prune(self, batch: int) -> None:
        """Once batch ``batch`` is recorded, the editor state before it is no longer needed."""
        if self.folder is not None and (self.alpha is not None or self.ultra is not None):
            self._paths(batch - 1)[1].unlink(missing_ok=True)

    def restore(self, done: int) -> list:
        """Re-apply the edits of batches ``0 … done-1`` (sequential runs); returns them."""
        from interp_edit.editing import Edit

        applied = []
        if not self.sequential or done == 0:
            return applied
        # sequential WISE / GRACE: the last batch's edit holds the whole memory, the earlier ones are its past
        for batch in range(done - 1 if self.extends_memory else 0, done):
            edit_path, _ = self._paths(batch)
            applied.append(Edit.load(edit_path).apply(self.model))
        if self.alpha is not None:
            state_path = self._paths(done - 1)[1]
            if not state_path.exists():
                raise ExperimentError(f"cannot resume the AlphaEdit sequence: missing {state_path}")
            state = torch.load(state_path)
            self.alpha.preserved = {int(k): v.to(self.model.cfg.device) for k, v in state["preserved"].items()}
            self.alpha.n_edited = state["n_edited"]
            self.alpha.last_edit_hash = applied[-1].content_hash()  # re-applied above: the next batch may follow it
        if self.ultra is not None:
            from interp_edit.editing import UltraEditState

            state_path = self._paths(done - 1)[1]
            if not state_path.exists():
                raise ExperimentError(f"cannot resume the UltraEdit sequence: missing {state_path}")
            self.ultra = UltraEditState.from_state_dict(torch.load(state_path))
        return applied


def run_experiment(model, dataset, method: str, *, n: int | None = None, batch_size: int = 1, sequential: bool = False,
                   eval_every: int = 1, seed: int = 0, out: str | Path | None = None, unrelated: int = 100,
                   fluency: bool = True, max_new_tokens: int = 50, config: dict | None = None,
                   progress: bool = True, protocol: str = "teacher_forced", gen_tokens: int = DEFAULT_GEN_TOKENS,
                   heldout_texts: Sequence[str] | None = None) -> ExperimentResult:
    """Edit ``n`` cases of ``dataset`` (a :class:`~interp_edit.data.Dataset` or a name / path for
    :func:`~interp_edit.data.load_dataset`) with ``method`` in batches; see the module docstring.
    ``config``: the editor's config fields (e.g. ``{"layers": (1, 2)}``). ``protocol``:
    ``"teacher_forced"`` | ``"generation"`` | ``"both"``; ``gen_tokens``: the greedy tokens a
    generation is judged on (``max_new_tokens`` is the fluency generations' length);
    ``heldout_texts``: the held-out corpus of sequential runs (default: the toy world's).

    >>> res = run_experiment(model, "toyworld-counterfact", "memit", n=2, batch_size=2,
    ...                      unrelated=5, fluency=False, progress=False, out="run")
    >>> len(res.batches), res.settings["method"]
    (1, 'memit')
    >>> "efficacy_score" in res.final_metrics()
    True
    >>> res = run_experiment(model, "toyworld-counterfact", "memit", n=2, batch_size=2, unrelated=5,
    ...                      fluency=False, progress=False, protocol="both", sequential=True)
    >>> [k for k in res.final_metrics() if k.startswith("gen_efficacy")], "heldout_perplexity" in res.baseline
    (['gen_efficacy_exact', 'gen_efficacy_contains'], True)
    """
    from interp_edit.adapter import model_fingerprint
    from interp_edit.data import Dataset, check_tokens, load_dataset

    if n is not None:
        check_int(n, "n", minimum=1)
    check_int(batch_size, "batch_size", minimum=1)
    check_int(eval_every, "eval_every", minimum=1)
    check_int(unrelated, "unrelated", minimum=0)
    check_int(seed, "seed")
    check_int(max_new_tokens, "max_new_tokens", minimum=1)
    for name, value in (("sequential", sequential), ("fluency", fluency), ("progress", progress)):
        if not isinstance(value, bool):
            raise InvalidArgumentError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    check_protocol(protocol)
    check_gen_tokens(gen_tokens)
    config = check_editor_config(model, method, config)  # before any evaluation or file: a bad field fails here
    if heldout_texts is not None:
        heldout_texts = _check_heldout(model, heldout_texts)
    from interp_edit.toyworld.model_world import check_same_world

    if isinstance(dataset, (str, Path)):
        dataset = load_dataset(dataset, model=model)
    elif not isinstance(dataset, Dataset):  # a list / slice of cases, as evaluate_cases takes
        dataset = _as_dataset(dataset)
    check_same_world(model, getattr(dataset, "world", None), f"dataset {dataset.name!r}")
    if dataset.format not in EXPERIMENT_FORMATS:
        raise DatasetError(f"dataset {dataset.name!r} has {dataset.format!r} cases; experiments evaluate "
                           f"{', '.join(EXPERIMENT_FORMATS)} cases (commonsense statements are scored by "
                           "interp_edit.evaluation.commonsense.commonsense_scores)")
    dataset = check_tokens(dataset, model.tokenizer)
    edited, others = select_cases(dataset, n, unrelated, seed)
    probes = fact_probes(others)
    # before any forward or file: every prompt fits the context, no batch asks one prompt for two targets
    check_case_lengths(model, edited, fluency=fluency)
    check_lengths(model, [(f"unrelated case {c.case_id}", "src" if dataset.format == "zsre" else "requested_rewrite.prompt",
                           prompt, (answer,)) for c, (prompt, answer) in zip(probed_cases(others), probes, strict=True)])
    check_batch_rewrites([edited[i : i + batch_size] for i in range(0, len(edited), batch_size)])
    ripple_known = None
    if dataset.format == "ripple":  # RippleEdits' filter, on the unedited model, before any edit
        from interp_edit.evaluation.ripple import known_tests_only

        edited, ripple_known = known_tests_only(model, edited)
    batches = [edited[i : i + batch_size] for i in range(0, len(edited), batch_size)]
    settings = {
        "dataset": dataset.name, "format": dataset.format, "method": method, "n": len(edited), "batch_size": batch_size,
        "sequential": sequential, "eval_every": eval_every, "seed": seed, "unrelated": len(others), "fluency": fluency,
        "max_new_tokens": max_new_tokens, "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
        "model_fingerprint": model_fingerprint(model), "case_ids": [c.case_id for c in edited],
        # the drift probes' cases: a file whose probes were others (an earlier selection) is not resumed into
        "unrelated_case_ids": [c.case_id for c in others],
        "library_version": _library_version(),  # results of another version are not resumed into
    }
    settings["protocol"] = protocol  # (a file of an earlier version has none: it was teacher forced)
    if dataset.format == "zsre":  # which answer the edits write: results of the other convention are not resumed into
        settings["zsre_target"] = getattr(dataset, "zsre_target", None) or "alt"
    if ripple_known is not None:
        settings["ripple_known_tests"] = ripple_known
    # the content itself (requests, prompts, targets): another file of the same name and ids is not resumed into
    settings["cases_sha256"] = cases_digest(edited, probes)
    if protocol != "teacher_forced":
        settings["gen_tokens"] = gen_tokens
    heldout = None
    if sequential:
        heldout = heldout_texts if heldout_texts is not None else (
            heldout_corpus(dataset.world) if getattr(dataset, "world", None) is not None else None)
    if heldout is not None:
        import hashlib

        digest = hashlib.sha256("\x1f".join(heldout).encode()).hexdigest()
        settings["heldout"] = {"n_texts": len(heldout), "sha256": digest}
    measure = {"fluency": fluency, "max_new_tokens": max_new_tokens, "protocol": protocol, "gen_tokens": gen_tokens}
    folder = Path(out) if out is not None else None
    path = folder / RESULTS_FILE if folder is not None else None
    session = _Session(model, method, sequential, config, folder)
    session.prepare(edited)  # the editor's own check of the cases, before any work
    records = _resume(path, settings)
    if records:  # drop a line cut by the interruption, and anything after it
        write_text_atomic(path, "".join(json.dumps(line) + "\n" for line in [{"type": "settings", **settings}, *records]))
    baseline = records[0] if records else None
    done = records[1:]
    applied: list = []
    start = time.perf_counter()
    try:
        if baseline is None:
            t0 = time.perf_counter()
            unrelated_now, reference = unrelated_metrics(model, probes)
            rows = evaluate_cases(model, edited, **measure)
            baseline = {"type": "baseline", "metrics": aggregate(rows) | unrelated_now | _collapse(model, heldout),
                        "unrelated_logprobs": reference,
                        "seconds": time.perf_counter() - t0}
            if path is not None:
                folder.mkdir(parents=True, exist_ok=True)
                write_text_atomic(path, json.dumps({"type": "settings", **settings}) + "\n")
                _append(path, baseline)
        reference = baseline["unrelated_logprobs"]
        applied = session.restore(len(done))
        bar = progress_bar(total=len(batches), initial=len(done), desc=f"{method} {'sequential' if sequential else 'independent'}",
                   disable=not progress)
        all_rows = [row for entry in done for row in entry["rows"]]
        for b in range(len(done), len(batches)):
            cases = batches[b]
            t0 = time.perf_counter()
            edit = session.edit(cases, applied)
            edit_seconds = time.perf_counter() - t0
            edit.apply(model)
            applied.append(edit)
            rows = evaluate_cases(model, cases, **measure)
            all_rows += rows
            entry = {"type": "batch", "batch": b, "n_edited": sum(len(x) for x in batches[: b + 1]),
                     "case_ids": [c.case_id for c in cases], "edit_seconds": edit_seconds, "rows": rows}
            collisions = (getattr(edit, "info", None) or {}).get("key_collisions")
            if collisions:  # requests of this batch the editor could not tell apart (its KeyCollisionWarning)
                entry["key_collisions"] = [[int(i) for i in group] for group in collisions]
            if (b + 1) % eval_every == 0 or b == len(batches) - 1:
                drift, _ = unrelated_metrics(model, probes, reference)
                if sequential:
                    so_far = [c for batch in batches[: b + 1] for c in batch]
                    metrics = aggregate(evaluate_cases(model, so_far, **measure))
                else:
                    metrics = aggregate(all_rows)
                entry["checkpoint"] = metrics | drift | _collapse(model, heldout)
            entry["edit_file"] = session.save(b, edit)
            if not sequential:
                applied.pop().undo(model)
            entry["seconds"] = time.perf_counter() - t0
            if path is not None:
                _append(path, entry)
                session.prune(b)
            done.append(entry)
            bar.update(1)
            _after_batch(b)
        bar.close()
    finally:
        for edit in reversed(applied):
            edit.undo(model)
    wall = baseline["seconds"] + sum(entry["seconds"] for entry in done)
    return ExperimentResult(settings, baseline["metrics"], done, wall, time.perf_counter() - start)


def _collapse(model, heldout: list[str] | None) -> dict:
    """``heldout_perplexity`` of the held-out corpus (nothing without one)."""
    from interp_edit.evaluation.metrics import corpus_perplexity

    return {} if heldout is None else {"heldout_perplexity": corpus_perplexity(model, heldout)}


def _resume(path: Path | None, settings: dict) -> list[dict]:
    """The baseline and finished batch entries of an earlier run with the same settings."""
    if path is None or not path.exists():
        return []
    lines = _read_jsonl(path)
    if not lines or lines[0].get("type") != "settings":
        return []
    found = {k: v for k, v in lines[0].items() if k != "type"}
    wanted = json.loads(json.dumps(settings))
    for key in _ADDED_SETTINGS:  # a file that records no content hash (an older run) stays resumable
        if key not in found:
            wanted.pop(key, None)
    if _comparable(found) != _comparable(wanted):
        differ = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
        raise ExperimentError(f"{path} holds a run with other settings (differing: {differ}); use another --out folder")
    entries = [line for line in lines[1:] if line.get("type") in ("baseline", "batch")]
    if not entries or entries[0]["type"] != "baseline":
        return []
    batches = [e for e in entries[1:] if e["type"] == "batch"]
    batches = [e for i, e in enumerate(batches) if e["batch"] == i]  # contiguous prefix only
    return [entries[0], *batches]

