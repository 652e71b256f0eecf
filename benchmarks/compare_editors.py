"""Every registered editor on the same toy-world edits: the comparison table of docs/editing.md.

The edits are MQuAKE-style toy cases (``toy_multihop_edit_cases``): a person's birth city
changes, so their birth country / capital / language questions change too. Each edit is
independent: computed, applied, scored, undone. Per editor:

- efficacy, paraphrase, neighbourhood: [p(new) > p(old)] on the rewrite prompt, its held-out
  paraphrases, and [p(old) > p(new)] on other people born in the old city;
- multi-hop: the case's multi-hop questions answered with the new answer (any phrasing, every
  answer token top-1), on the phrasings ACE is given (``multihop_edit``) and on held-out
  phrasings no editor sees (``multihop_heldout``);
- relation locality: the person's other relations keep their top-1 answer
  (:func:`interp_edit.evaluation.locality.relation_locality`);
- parameters touched: weight entries the edit changes (non-zero entries of the dense ΔW), and
  for steering edits 0 weights (the hooks' size is reported instead);
- seconds per edit: computing the edit (key statistics are computed once before timing).

Every editor runs with its toy-world preset (MEMIT-CSK: see ``OVERRIDES``) and gets the same plain request (prompt, subject, new and old city; no paraphrases);
ACE gets the same fact plus the case's first multi-hop phrasing with its new answer (its hop
structure). Prints ``key=value`` lines and a Markdown table; results are kept per method in
``--out`` so a rerun continues, each under a key of the library version, a hash of the
library's source files, the editor's resolved config and the run's settings (a row made by other
code or settings is recomputed, never reused). Usage:
    .venv/bin/python -u benchmarks/compare_editors.py [--n 100] [--methods rome,memit,...] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from interp_edit import load_model
from interp_edit.editing import get_editor
from interp_edit.editing.edit import LowRankDelta
from interp_edit.evaluation.locality import relation_locality, unedited_answers
from interp_edit.evaluation.multihop_edits import mean_rows, multihop_edit_scores, toy_multihop_edit_cases
from interp_edit.toyworld import world_of

METHODS = ("rome", "memit", "alphaedit", "ft", "memit_csk", "fine", "intattn", "ace", "mega")
SHOWN = ("efficacy", "paraphrase", "neighborhood", "multihop_edit", "multihop_heldout", "relation_locality",
         "params_touched", "seconds_per_edit")


def weights_touched(edit) -> int:
    total = 0
    for delta in edit.deltas.values():
        if isinstance(delta, LowRankDelta):
            total += int((delta.dense() != 0).sum())
        else:
            total += int((delta.values != 0).sum())
    return total


#: per-editor settings on top of the toy presets. MEMIT-CSK edits at the prompt's last token
#: (the end of the verb phrase) in layers 2-3, the window its AIE tracing chose over 100 toy
#: statements (benchmarks/memit_csk_tokens.py); tracing a single request per edit is too noisy
#: for the automatic window.
OVERRIDES = {"memit_csk": {"edit_token": "prompt_last", "layers": (2, 3)}}


def request_for(method: str, case):
    return case.ace_request() if method == "ace" else case.fact


def source_hash() -> str:
    """A hash of every source file of the installed interp_edit package."""
    import hashlib

    import interp_edit

    digest = hashlib.sha256()
    for path in sorted(Path(interp_edit.__file__).parent.rglob("*.py")):
        digest.update(path.as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def cache_key(method: str, resolved_config: dict, n: int, model) -> str:
    """The key of a cached row: library version, source hash, resolved config, settings."""
    import hashlib

    from interp_edit import __version__
    from interp_edit.adapter import model_fingerprint

    payload = {"version": __version__, "source": source_hash(), "method": method, "config": resolved_config, "n": n,
               "overrides": OVERRIDES.get(method, {}), "model": model_fingerprint(model)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def warm_up(model, method: str, cases):
    """One edit before timing (key statistics and caches); its config is the resolved one."""
    return get_editor(method).fn(model, [request_for(method, cases[0])], **OVERRIDES.get(method, {}))


def run_method(model, world, method: str, cases, reference) -> dict:
    editor = get_editor(method)
    settings = OVERRIDES.get(method, {})
    rows, locality, touched, seconds = [], [], [], []
    for case, ref in zip(cases, reference, strict=True):
        start = time.perf_counter()
        edit = editor.fn(model, [request_for(method, case)], **settings)
        seconds.append(time.perf_counter() - start)
        touched.append(weights_touched(edit))
        with edit.applied(model):
            rows += multihop_edit_scores(model, [case])
            locality.append(relation_locality(model, None, [case.fact], world=world, reference=[ref]).fraction)
    out = mean_rows(rows, ["efficacy", "paraphrase", "neighborhood", "multihop_edit", "multihop_heldout", "multihop_other"])
    kept = [v for v in locality if not math.isnan(v)]
    out["relation_locality"] = sum(kept) / len(kept)
    out["params_touched"] = sum(touched) / len(touched)
    out["seconds_per_edit"] = sum(seconds) / len(seconds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default="results/compare_editors")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model("toyworld")
    world = world_of(model)
    cases = toy_multihop_edit_cases(world, n=args.n)
    reference = unedited_answers(model, [c.fact for c in cases], world=world)
    unedited = mean_rows(multihop_edit_scores(model, cases), ["efficacy", "paraphrase", "neighborhood", "multihop_edit",
                                                               "multihop_heldout", "multihop_other"])
    for key, value in unedited.items():
        print(f"unedited_{key}={value:.4f}")
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    results = {}
    for method in args.methods.split(","):
        resolved = warm_up(model, method, cases).config
        path = folder / f"{method}_n{args.n}_{cache_key(method, resolved, args.n, model)}.json"
        if path.exists():
            results[method] = json.loads(path.read_text())
        else:
            results[method] = run_method(model, world, method, cases, reference)
            path.write_text(json.dumps(results[method]))
        for key, value in results[method].items():
            print(f"{method}_{key}={value:.4f}", flush=True)
    print("\n| editor | " + " | ".join(SHOWN) + " |")
    print("|---" * (len(SHOWN) + 1) + "|")
    for method, row in results.items():
        cells = [f"{row[k]:.0f}" if k == "params_touched" else f"{row[k]:.2f}" if k == "seconds_per_edit" else f"{row[k]:.3f}"
                 for k in SHOWN]
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
