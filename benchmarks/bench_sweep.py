"""The same 4-cell grid (ROME at layers 1 / 2, MEMIT at layers [1] / [2], 4 toy-world CounterFact
cases each, independent edits) run in this process and on a new local Ray instance with two
workers. Prints ``key=value``: wall seconds of each, Ray's start-up overhead (``ray.init``), the
ratio Ray / in-process (sweep alone and with start-up), and whether every cell's per-case rows
are identical. The key-statistics cache is warmed first (in a temporary folder) so neither run
pays for it. Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sweep.py
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

GRID = {
    "models": ["toyworld"],
    "editors": [{"method": "rome", "grid": {"layer": [1, 2]}}, {"method": "memit", "grid": {"layers": [[1], [2]]}}],
    "datasets": [{"name": "toyworld-counterfact", "n": 4}],
    "unrelated": 5, "fluency": False, "threads": 1,
}


def _rows(result) -> dict:
    return {cid: json.dumps([e["rows"] for e in r["batches"]], sort_keys=True) for cid, r in result.results.items()}


def main() -> None:
    import torch

    from interp_edit.adapter import load_model
    from interp_edit.statistics.collect import CACHE_ENV
    from interp_edit.sweep import RayExecutor, run_sweep

    torch.set_num_threads(1)
    scratch = Path(tempfile.mkdtemp())
    os.environ[CACHE_ENV] = str(scratch / "stats")  # the Ray workers inherit it
    start = time.perf_counter()
    model = load_model("toyworld")
    load_seconds = time.perf_counter() - start
    warm = GRID | {"datasets": [{"name": "toyworld-counterfact", "n": 1}], "unrelated": 0}
    run_sweep(warm, scratch / "warm", models={"toyworld": model}, progress=False)

    start = time.perf_counter()
    local = run_sweep(GRID, scratch / "inprocess", models={"toyworld": model}, progress=False)
    inprocess = time.perf_counter() - start

    executor = RayExecutor(workers=2)
    start = time.perf_counter()
    executor.start()
    startup = time.perf_counter() - start
    start = time.perf_counter()
    on_ray = run_sweep(GRID, scratch / "ray", executor=executor, progress=False)  # closes (shuts Ray down)
    ray_sweep = time.perf_counter() - start

    same = not local.failed and not on_ray.failed and _rows(local) == _rows(on_ray)
    print(f"cells={len(local.cells)} cpus={os.cpu_count()} load_average={os.getloadavg()[0]:.1f}")
    print(f"model_load_seconds={load_seconds:.2f}")
    print(f"inprocess_seconds={inprocess:.2f}")
    print(f"ray_startup_seconds={startup:.2f}")
    print(f"ray_sweep_seconds={ray_sweep:.2f}")
    print(f"ray_total_seconds={startup + ray_sweep:.2f}")
    print(f"ratio_ray_sweep_over_inprocess={ray_sweep / inprocess:.3f}")
    print(f"ratio_ray_total_over_inprocess={(startup + ray_sweep) / inprocess:.3f}")
    print(f"identical_rows={same}")
    if not same:
        print(f"failed_inprocess={list(local.failed)} failed_ray={list(on_ray.failed)}")
    assert not math.isnan(inprocess)


if __name__ == "__main__":
    main()
