"""What one more fork costs a process that already has many live children: why creating
actors slows from ~180/s at 50 to ~85/s at 1,000 (docs/benchmarks.md, "How cost grows with
work", 2026-12-05). Our zygote forks every worker; this is the same, without the runtime.

    python benchmarks/fork_cost.py        # 1,000 children in steps of 200

Prints the median time of a fork() at each step; the children sleep until the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import time

import numpy  # noqa: F401 - a worker-sized process: the zygote has numpy's modules loaded
import pandas  # noqa: F401


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--children", type=int, default=1000)
    parser.add_argument("--step", type=int, default=200)
    args = parser.parse_args()
    touched = [bytearray(4096) for _ in range(5000)]  # some private pages, as a warm process has
    kids: list[int] = []
    try:
        while len(kids) < args.children:
            times = []
            for _ in range(args.step):
                start = time.perf_counter()
                pid = os.fork()
                if pid == 0:
                    signal.pause()
                    os._exit(0)
                times.append(time.perf_counter() - start)
                kids.append(pid)
            print(f"{len(kids):>5} alive: fork {statistics.median(times) * 1e3:.2f} ms (median of {args.step})")
    finally:
        for pid in kids:
            os.kill(pid, signal.SIGKILL)
        for pid in kids:
            os.waitpid(pid, 0)
    del touched


if __name__ == "__main__":
    main()
