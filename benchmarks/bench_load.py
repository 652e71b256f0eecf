"""Load time of the embedded toy-world model (the issue asks for < 3 s, import excluded).

Prints key=value lines: the import time of TransformerLens (a one-off cost of the process),
and the median load time of ``load_model("toyworld")`` over repeats, measured in this run.
"""

from __future__ import annotations

import statistics
import time


def main(repeats: int = 5) -> None:
    import torch

    torch.set_num_threads(2)
    start = time.perf_counter()
    import transformer_lens  # noqa: F401

    print(f"import_transformer_lens_s={time.perf_counter() - start:.2f}")
    from interp_edit import load_model

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        load_model("toyworld")
        times.append(time.perf_counter() - start)
    print(f"toyworld_load_first_s={times[0]:.3f}")
    print(f"toyworld_load_median_s={statistics.median(times):.3f}")


if __name__ == "__main__":
    main()
