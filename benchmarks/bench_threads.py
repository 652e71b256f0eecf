"""The threads policy (``interp_edit.threads``) measured: the toy-world model's typical calls
timed with 1 and with 2 torch threads, alternating in the same process, median of
``--repeats``.

Workloads: a full causal trace (hidden + MLP + attention, 10 noise samples), an exact neuron
attribution, and a ROME edit (key statistics cached beforehand, so the edit itself is timed).
Prints ``<workload>_seconds_threads<N>=...`` and ``<workload>_speedup_2_vs_1=`` (time with 1
thread / time with 2: above 1 means 2 threads are faster), and the machine's load average, on
which the answer depends.
Usage: ``python benchmarks/bench_threads.py [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from common import median_time

from interp_edit import load_model
from interp_edit.analysis import causal_trace, neuron_attribution
from interp_edit.editing import EditRequest, rome
from interp_edit.statistics.collect import CACHE_ENV

PROMPT, SUBJECT = "Talvik Corlo was born in", "Talvik Corlo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault(CACHE_ENV, tempfile.mkdtemp(prefix="bench-threads-"))
    model = load_model("toyworld")
    request = EditRequest("{} was born in", SUBJECT, "Paris")
    rome(model, [request])  # computes and caches the key statistics once
    workloads = {
        "trace": lambda: causal_trace(model, PROMPT, SUBJECT),
        "attribution": lambda: neuron_attribution(model, PROMPT),
        "rome_edit": lambda: rome(model, [request]),
    }
    print(f"cpu_count={os.cpu_count()} load_average_1min={os.getloadavg()[0]:.2f}")
    for name, fn in workloads.items():
        times = {1: [], 2: []}
        for _ in range(args.repeats):  # alternate so that both see the same machine load
            for threads in (1, 2):
                torch.set_num_threads(threads)
                times[threads].append(median_time(fn, 1)[0])
        med = {t: sorted(v)[len(v) // 2] for t, v in times.items()}
        print(f"{name}_seconds_threads1={med[1]:.3f} {name}_seconds_threads2={med[2]:.3f} "
              f"{name}_speedup_2_vs_1={med[1] / med[2]:.2f}")
    print(f"load_average_1min_after={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
