"""data_map_batches_s' workload at several explicit batch sizes, on one backend
(docs/benchmarks.md, 2026-12-05): `range(5M).map_batches(df.assign(y=...), batch_size=B).count()`,
best of 3 after a warm-up, for B in None (whole blocks), 4096 and 1024.

    python benchmarks/map_batches_sizes.py
    .venv-ray/bin/python benchmarks/map_batches_sizes.py --backend ray
"""

from __future__ import annotations

import argparse
import importlib
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["runtime", "ray"], default="runtime")
    args = parser.parse_args()
    ray = importlib.import_module(args.backend)
    data = importlib.import_module(f"{args.backend}.data")
    ray.init(num_cpus=2)
    n = 5_000_000
    for size in (None, 4096, 1024):
        def run():
            ds = data.range(n).map_batches(lambda df: df.assign(y=df["id"] * 2), batch_format="pandas", batch_size=size)
            assert ds.count() == n

        run()
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        print(f"[{args.backend}] batch_size={size}: {best:.3f} s")
    ray.shutdown()


if __name__ == "__main__":
    main()
