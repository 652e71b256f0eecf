"""How many texts ``stats_samples="auto"`` needs, and how close that gets to a large sample.

For each model, one ROME edit (statistics only matter: 2 optimisation steps) with
``stats_samples="auto"`` at each tolerance; printed per tolerance: the texts and tokens it
used, whether it converged, its seconds, and the relative distance of C⁻¹k̄ (the request's
whitened key, what ROME's update is built from) at that sample from C⁻¹k̄ at the largest sample
(``--max-texts``, computed once, cached). One run at the smallest tolerance also prints the
relative change between consecutive sample sizes (``*_change_at_<n>=``).

Models: the toy world (ROME's toy preset, layer 0, corpus: its own default text) and a
randomly initialised GPT-2-small-sized Hugging Face model
(``tiny_hf_model("gpt2", size="gpt2-small")``, 12 layers, d_model 768, d_mlp 3072, the toy
tokenizer; ROME's generic layer) with a corpus generated offline: toy-world sentences
(``CorpusSampler``, seed 101). Both runs are on one CPU thread.

    .venv/bin/python benchmarks/bench_stats_auto.py [--models toy,gpt2small] [--tolerances 0.2,0.1,0.05]
        [--toy-max-texts 32000] [--gpt2-max-texts 4000] [--cov-ridge 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from interp_edit import load_model
from interp_edit.adapter import model_fingerprint
from interp_edit.editing import rome
from interp_edit.editing.methods.rome import ROMEConfig
from interp_edit.editing.requests import prepare_requests
from interp_edit.editing.targets import compute_keys, prefixes_for
from interp_edit.statistics.keys import key_statistics
from interp_edit.toyworld import counterfact_records, load_world


def whitened(stats, key, ridge: float):
    cov = stats.moment
    if ridge:
        cov = cov + ridge * cov.diagonal().mean() * torch.eye(len(cov), dtype=cov.dtype)
    return torch.linalg.solve(cov, key)


def run(label, model, corpus, requests, tolerances, max_texts, cache_dir, ridge: float = 0.0):
    cfg = ROMEConfig.for_model(model, steps=2, cov_ridge=ridge)
    treqs = prepare_requests(model, requests, model_fingerprint(model))
    key = compute_keys(model, treqs, cfg.layer, prefixes_for(model, cfg)).double().T  # [d_mlp, request]
    start = time.perf_counter()
    reference = key_statistics(model, [cfg.layer], corpus=corpus, n_samples=max_texts, cache_dir=cache_dir, progress=False)[cfg.layer]
    print(f"{label}_reference_texts={reference.provenance.n_texts} {label}_reference_tokens={reference.provenance.n_tokens} "
          f"{label}_reference_seconds={time.perf_counter() - start:.1f} {label}_layer={cfg.layer} {label}_d_mlp={model.cfg.d_mlp}")
    x_ref = whitened(reference, key, ridge)
    for tol in sorted(tolerances, reverse=True):
        start = time.perf_counter()
        edit = rome(model, requests, corpus=corpus, cache_dir=cache_dir, steps=2, cov_ridge=ridge, stats_samples="auto",
                    stats_tolerance=tol, stats_max_samples=max_texts)
        seconds = time.perf_counter() - start
        rec = edit.info["stats"][0]
        used = key_statistics(model, [cfg.layer], corpus=corpus, n_samples=rec["n_texts"], cache_dir=cache_dir, progress=False)[cfg.layer]
        x = whitened(used, key, ridge)
        distance = float(((x - x_ref).norm(dim=0) / x_ref.norm(dim=0)).max())
        print(f"{label}_tol={tol} {label}_auto_texts={rec['n_texts']} {label}_auto_tokens={rec['n_tokens']} "
              f"{label}_converged={rec['auto']['converged']} {label}_seconds={seconds:.1f} "
              f"{label}_distance_to_reference={distance:.4f}")
        if tol == min(tolerances):
            print(" ".join(f"{label}_change_at_{s['n_texts']}={s['relative_change']:.4f}" for s in rec["auto"]["steps"]
                           if s["relative_change"] is not None))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="toy,gpt2small")
    parser.add_argument("--tolerances", default="0.2,0.1,0.05")
    parser.add_argument("--toy-max-texts", type=int, default=32000)
    parser.add_argument("--gpt2-max-texts", type=int, default=4000)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--cov-ridge", type=float, default=0.0, help="ROME's cov_ridge (C + ridge·mean diag·I), both models")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tolerances = [float(t) for t in args.tolerances.split(",")]
    toy = load_model("toyworld")
    world = load_world()
    records = [r for r in counterfact_records(world) if r.relation_id in ("born_in", "profession")][: args.requests]
    with tempfile.TemporaryDirectory() as cache:
        if "toy" in args.models.split(","):
            run("toy", toy, None, records, tolerances, args.toy_max_texts, cache, args.cov_ridge)
        if "gpt2small" in args.models.split(","):
            from interp_edit.adapter.tiny import tiny_hf_model
            from interp_edit.toyworld.corpus import CorpusSampler

            hf = tiny_hf_model("gpt2", vocab_size=len(toy.tokenizer), size="gpt2-small")
            model = load_model("tiny-gpt2", hf_model=hf, tokenizer=toy.tokenizer)
            sampler = CorpusSampler(world, seed=101)
            texts = [sampler.sample() for _ in range(args.gpt2_max_texts)]
            run("gpt2small", model, texts, records, tolerances, args.gpt2_max_texts, cache, args.cov_ridge)


if __name__ == "__main__":
    main()
