"""Editing speed: ROME per edit with the statistics store cold (cleared: the disk cache is read
and C factorised again) and warm; MEMIT of 100 requests with the targets optimised in one batch
(``chunk_size=64``) against one request at a time (``chunk_size=1``), with the largest delta
difference; ROME's and MEMIT's target optimisation with the unedited prefix reused against every
position recomputed (``reuse_prefix``); and sequential MEMIT / AlphaEdit editing in batches (each batch applied in place,
statistics computed once).

    .venv/bin/python benchmarks/bench_edit_speed.py             # CPU: GPT-2-small shape, ~2-3 min
    .venv/bin/python benchmarks/bench_edit_speed.py --threads 1

The CPU run uses few optimisation steps and prefixes (printed in ``settings=``): the batched /
one-at-a-time ratio compares the same steps on both sides, so it does not depend on their
number. ``measure(device, dtype, dry_run=False)`` (imported by ``gpu_suite.py``) runs the
published shapes: ROME at Llama-3-8B shape with its preset, MEMIT of 100 and 1,000 and AlphaEdit
of 100 at GPT-2-XL shape, and :func:`sequential` edits. Models are randomly initialised on the
device (no CPU init); the toy world's tokenizer and CounterFact records supply the requests, its
text the statistics corpus.
"""

from __future__ import annotations

import argparse
import os
import statistics as stat
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

#: Llama-3-8B: 32 layers, d_model 4096, d_mlp 14336, 32 query / 8 key-value heads, vocabulary 128,256
LLAMA3_8B = dict(n_layers=32, d_model=4096, d_head=128, n_heads=32, n_key_value_heads=8, d_mlp=14336, d_vocab=128256,
                 d_vocab_out=128256, n_ctx=8192, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
                 rotary_dim=128, rotary_base=500000.0, gated_mlp=True, final_rms=True, eps=1e-5,
                 original_architecture="LlamaForCausalLM")
GPT2_XL = dict(n_layers=48, d_model=1600, n_heads=25)
GPT2_SMALL = dict(n_layers=12, d_model=768, n_heads=12)


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device):
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def build(shape: dict, tokenizer, *, device: str = "cpu", dtype=torch.float32, name: str = "random"):
    """A randomly initialised HookedTransformer of ``shape`` (GPT-2 style unless it says
    otherwise), created and initialised directly on ``device`` (no CPU copy)."""
    from interp_edit.adapter import build_hooked_transformer

    cfg = dict(d_head=shape["d_model"] // shape["n_heads"], d_mlp=4 * shape["d_model"], n_ctx=1024, d_vocab=50257,
               d_vocab_out=50257, act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard",
               original_architecture="GPT2LMHeadModel")
    cfg.update(shape)
    cfg.update(default_prepend_bos=True, model_name=name, device=device, dtype=dtype)
    torch.manual_seed(0)
    with torch.device(device):
        model = build_hooked_transformer(cfg, tokenizer)
    return model.eval()


def toy_inputs(n_texts: int):
    """(toy model, CounterFact records with distinct subjects, statistics texts) of the toy world."""
    from interp_edit import load_model
    from interp_edit.statistics.collect import default_corpus
    from interp_edit.toyworld import counterfact_records, world_of

    toy = load_model("toyworld")
    records, subjects = [], set()
    for record in counterfact_records(world_of(toy)):  # one fact per subject: no two requests share a key
        if record.subject not in subjects:
            subjects.add(record.subject)
            records.append(record)
    return toy, records, default_corpus(toy, n_texts)


def rome_cold_warm(model, records, corpus, cache_dir, device, repeats: int = 2, **settings) -> dict:
    """ROME per edit: cold (store cleared before each edit: disk cache read, C factorised) and
    warm (store kept), medians over ``repeats`` edits; the first edit computes the statistics."""
    from interp_edit.editing import rome
    from interp_edit.statistics import clear_statistics_cache

    run = lambda r: rome(model, [r], corpus=corpus, cache_dir=cache_dir, **settings)  # noqa: E731
    run(records[0])
    cold, warm, parts = [], [], None
    for i in range(repeats):
        clear_statistics_cache(model)
        cold.append(timed(lambda i=i: run(records[1 + i]), device)[0])
        seconds, edit = timed(lambda i=i: run(records[1 + repeats + i]), device)
        warm.append(seconds)
        parts = edit.info["seconds"]
    out = {"rome_cold_s": stat.median(cold), "rome_warm_s": stat.median(warm)}
    out["rome_cold_over_warm"] = out["rome_cold_s"] / out["rome_warm_s"]
    for part in ("stats", "keys", "targets", "update"):
        out[f"rome_warm_{part}_s"] = parts[part]
    out["rome_warm_outside_parts_s"] = out["rome_warm_s"] - sum(parts[p] for p in ("stats", "keys", "targets", "update"))
    return out


def memit_batched_vs_single(model, records, corpus, cache_dir, device, n: int = 100, **settings) -> dict:
    """MEMIT of ``n`` requests with the targets optimised together (chunk_size 64) and one at a
    time (chunk_size 1): whole-edit and target seconds, and the largest delta difference."""
    from interp_edit.editing import memit

    run = lambda **kw: memit(model, records[:n], corpus=corpus, cache_dir=cache_dir, **settings, **kw)  # noqa: E731
    memit(model, records[:2], corpus=corpus, cache_dir=cache_dir, **settings)  # statistics computed, store warm
    t_batched, batched = timed(lambda: run(chunk_size=64), device)
    t_single, single = timed(lambda: run(chunk_size=1), device)
    diff = max(float((batched.deltas[k].dense() - single.deltas[k].dense()).abs().max()) for k in batched.deltas)
    scale = max(float(batched.deltas[k].dense().abs().max()) for k in batched.deltas)
    return {f"memit_{n}_batched_s": t_batched, f"memit_{n}_single_s": t_single,
            f"memit_{n}_batched_targets_s": batched.info["seconds"]["targets"],
            f"memit_{n}_single_targets_s": single.info["seconds"]["targets"],
            "targets_batched_speedup": single.info["seconds"]["targets"] / batched.info["seconds"]["targets"],
            "edit_batched_speedup": t_single / t_batched,
            "max_delta_difference": diff, "max_delta_abs": scale}


def targets_prefix_reuse(model, records, device, tag: str, config_cls, n: int = 1, repeats: int = 2, **settings) -> dict:
    """The target optimisation of ``n`` requests (``config_cls``' settings: ROME's v* at the MLP
    output, MEMIT's z in the residual) with every position recomputed at every step
    (``reuse_prefix=False``) and with the unedited prefix reused (``True``): medians over
    ``repeats`` alternating runs, the speed-up, and the largest target difference."""
    from interp_edit.adapter import model_fingerprint
    from interp_edit.editing import prepare_requests
    from interp_edit.editing.targets import optimise_targets, prefixes_for

    cfg = config_cls.for_model(model, **settings)
    layer = cfg.layer if hasattr(cfg, "layer") else max(cfg.layers)
    site = "mlp_out" if hasattr(cfg, "layer") else "resid_post"
    treqs = prepare_requests(model, records[:n], model_fingerprint(model))
    prefixes, tcfg = prefixes_for(model, cfg), cfg.target_config()
    run = lambda reuse: optimise_targets(model, treqs, layer, prefixes, tcfg, initial_site=site, reuse_prefix=reuse)  # noqa: E731
    times: dict[bool, list[float]] = {False: [], True: []}
    results = {}
    for _ in range(repeats):
        for reuse in (False, True):
            seconds, results[reuse] = timed(lambda reuse=reuse: run(reuse), device)
            times[reuse].append(seconds)
    full, reused = stat.median(times[False]), stat.median(times[True])
    diff = float((results[True].target - results[False].target).abs().max())
    return {f"{tag}_targets_full_s": full, f"{tag}_targets_reused_prefix_s": reused,
            f"{tag}_targets_reuse_speedup": full / reused, f"{tag}_targets_reuse_max_diff": diff,
            f"{tag}_targets_max_abs": float(results[False].target.abs().max())}


def one_edit(model, method: str, records, corpus, cache_dir, device, **settings) -> dict:
    """Seconds of one ``method`` edit of ``records`` (statistics cached and the store warm
    beforehand), and its info["seconds"] parts."""
    from interp_edit.editing import alphaedit, memit

    fn = {"memit": memit, "alphaedit": alphaedit}[method]
    fn(model, records[:2], corpus=corpus, cache_dir=cache_dir, **settings)
    seconds, edit = timed(lambda: fn(model, records, corpus=corpus, cache_dir=cache_dir, **settings), device)
    return {"s": seconds, **{f"{k}_s": v for k, v in edit.info["seconds"].items()}}


def sequential(model, method: str, n_edits: int, batch: int, *, records, corpus, cache_dir, device="cpu",
               **settings) -> dict:
    """``n_edits`` requests edited in batches of ``batch`` with ``method`` (``"memit"`` or
    ``"alphaedit"``: one :class:`AlphaEditor` for the sequence), each batch's edit applied in
    place before the next; the statistics are computed once (before the first batch). Records
    are reused cyclically when there are fewer than ``n_edits``. The model is restored after.
    Returns total and per-batch seconds (median, first, last)."""
    from interp_edit.editing import AlphaEditor, memit
    from interp_edit.statistics import key_statistics

    cfg_layers = settings.get("layers")
    editor = AlphaEditor(model, corpus=corpus, cache_dir=cache_dir, **settings) if method == "alphaedit" else None
    if editor is None:  # the statistics before any edit is applied (from the base model)
        from interp_edit.editing import MEMITConfig

        layers = cfg_layers or MEMITConfig.for_model(model, **settings).layers
        key_statistics(model, layers, corpus=corpus, n_samples=settings.get("stats_samples", 2000), cache_dir=cache_dir,
                       progress=False)
    applied, times = [], []
    try:
        for start in range(0, n_edits, batch):
            chunk = [records[(start + i) % len(records)] for i in range(min(batch, n_edits - start))]
            call = (lambda chunk=chunk: editor(model, chunk)) if editor is not None else \
                (lambda chunk=chunk: memit(model, chunk, corpus=corpus, cache_dir=cache_dir, **settings))
            seconds, edit = timed(lambda call=call: call().apply(model), device)
            applied.append(edit)
            times.append(seconds)
    finally:
        for edit in reversed(applied):
            edit.undo(model)
    return {"n_edits": n_edits, "batch": batch, "total_s": sum(times), "batch_median_s": stat.median(times),
            "batch_first_s": times[0], "batch_last_s": times[-1]}


def measure(device: str = "cuda", dtype: torch.dtype = torch.bfloat16, dry_run: bool = False, *,
            sequential_edits: int = 1000, n_texts: int = 1000) -> dict:
    """The GPU figures as a flat dict: ROME at Llama-3-8B shape (preset: layer 5, 25 steps, 20
    prefixes; statistics of ``n_texts`` texts cached) cold and warm; MEMIT of 100 and 1,000 and
    AlphaEdit of 100 at GPT-2-XL shape (published GPT-2 XL settings); sequential MEMIT / AlphaEdit
    of ``sequential_edits`` in batches of 100, with the 10,000-edit time extrapolated from the
    batch median (``*_10k_extrapolated_s``). ``dry_run``: tiny shapes on the CPU (checks the code)."""
    from interp_edit.editing import ROMEConfig
    from interp_edit.statistics import clear_statistics_cache

    out: dict = {}
    toy, records, texts = toy_inputs(40 if dry_run else n_texts)
    cache_dir = tempfile.mkdtemp(prefix="bench-edit-speed-")
    if dry_run:
        device, dtype = "cpu", torch.float32
        llama = dict(LLAMA3_8B, n_layers=3, d_model=64, d_head=16, rotary_dim=16, n_heads=4, n_key_value_heads=2, d_mlp=128,
                     d_vocab=toy.cfg.d_vocab, d_vocab_out=toy.cfg.d_vocab, n_ctx=256)
        xl = dict(n_layers=3, d_model=64, n_heads=4, d_vocab=toy.cfg.d_vocab, d_vocab_out=toy.cfg.d_vocab)
        rome_settings = dict(ROMEConfig.PRESETS["Meta-Llama-3-8B"], layer=1, steps=3, n_prefixes=2, prefix_lengths=((3, 2),),
                             stats_samples=len(texts))
        xl_settings = dict(layers=(0, 1), steps=2, n_prefixes=1, stats_samples=len(texts))
        n_memit, n_big, sequential_edits, batch = 10, 20, 20, 10
    else:
        llama, xl = LLAMA3_8B, GPT2_XL
        rome_settings = dict(ROMEConfig.PRESETS["Meta-Llama-3-8B"], stats_samples=len(texts))  # n_prefixes 20, 21 templates
        xl_settings = dict(stats_samples=len(texts))  # the class defaults: the published GPT-2 XL settings
        n_memit, n_big, batch = 100, 1000, 100
    t0 = time.perf_counter()
    model = build(llama, toy.tokenizer, device=device, dtype=dtype, name="llama3-8b-random")
    _sync(device)
    out["llama_build_s"] = time.perf_counter() - t0
    out.update(rome_cold_warm(model, records, texts, cache_dir, device, **rome_settings))
    out.update(targets_prefix_reuse(model, records, device, "rome", ROMEConfig, **rome_settings))
    out["rome_settings"] = ",".join(f"{k}:{v}" for k, v in sorted(rome_settings.items()))
    clear_statistics_cache(model)
    del model
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
    t0 = time.perf_counter()
    model = build(xl, toy.tokenizer, device=device, dtype=dtype, name="gpt2xl-random")
    _sync(device)
    out["gpt2xl_build_s"] = time.perf_counter() - t0
    for method, n in (("memit", n_memit), ("alphaedit", n_memit), ("memit", n_big)):
        for key, value in one_edit(model, method, records[:n], texts, cache_dir, device, **xl_settings).items():
            out[f"{method}_{n}_{key}"] = value
    for method in ("memit", "alphaedit"):
        result = sequential(model, method, sequential_edits, batch, records=records, corpus=texts, cache_dir=cache_dir,
                            device=device, **xl_settings)
        for key, value in result.items():
            out[f"sequential_{method}_{key}"] = value
        out[f"sequential_{method}_10k_extrapolated_s"] = result["batch_median_s"] * 10_000 / batch
    clear_statistics_cache(model)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from interp_edit.editing import MEMITConfig, ROMEConfig

    toy, records, texts = toy_inputs(1000)
    model = build(GPT2_SMALL, toy.tokenizer, name="gpt2-small-random")
    rome_settings = dict(layer=5, steps=4, n_prefixes=2, prefix_length=5, stats_samples=len(texts))
    memit_settings = dict(layers=(3, 4, 5), steps=3, n_prefixes=1, prefix_length=5, stats_samples=len(texts))
    print("shape=gpt2-small (12 layers, d_model 768, d_mlp 3072, vocab 50257), random init, float32, CPU")
    print("rome_settings=" + ",".join(f"{k}:{v}" for k, v in rome_settings.items()))
    print("memit_settings=" + ",".join(f"{k}:{v}" for k, v in memit_settings.items()))
    with tempfile.TemporaryDirectory() as cache_dir:
        values = {**rome_cold_warm(model, records, texts, cache_dir, "cpu", **rome_settings),
                  **memit_batched_vs_single(model, records, texts, cache_dir, "cpu", n=args.requests, **memit_settings),
                  **targets_prefix_reuse(model, records, "cpu", "rome", ROMEConfig, **rome_settings),
                  **targets_prefix_reuse(model, records, "cpu", f"memit_{args.requests}", MEMITConfig, n=args.requests,
                                         repeats=1, **memit_settings)}
    for key, value in values.items():
        print(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")


if __name__ == "__main__":
    main()
