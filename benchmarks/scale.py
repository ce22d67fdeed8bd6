"""How cost grows with work, on one backend: each point in a fresh driver process.

    python benchmarks/scale.py --backend runtime --out benchmarks/results/scale_runtime.json
    python benchmarks/scale.py --backend ray --tasks 10000,100000 --out benchmarks/results/scale_ray.json

Curves (issue 15):
- tasks: N no-op tasks submitted, then gathered with one get. Reported: throughput (N / time
  from the first submission until the get returns) and the driver's RSS growth per pending
  task (its RSS right after the last submission, before the get, less its RSS before the
  first one), in bytes.

Each point is one run; the ratios between backends and between points come from one run of
this script per backend.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

_TASKS = r"""
import importlib, json, sys, time
import psutil
ray = importlib.import_module(sys.argv[1])
n = int(sys.argv[2])
ray.init(num_cpus=2)

@ray.remote
def noop():
    return None

ray.get([noop.remote() for _ in range(200)])  # workers up, functions exported
me = psutil.Process()
base = me.memory_info().rss
t0 = time.perf_counter()
refs = [noop.remote() for _ in range(n)]
pending = me.memory_info().rss
ray.get(refs)
elapsed = time.perf_counter() - t0
del refs
ray.shutdown()
print("SCALE_RESULT " + json.dumps({"tasks_per_s": n / elapsed, "driver_bytes_per_pending_task": (pending - base) / n}))
"""


def tasks_point(backend: str, n: int, timeout: float) -> dict:
    proc = subprocess.run([sys.executable, "-c", _TASKS, backend, str(n)], capture_output=True, text=True,
                          timeout=timeout, cwd=Path(__file__).resolve().parent)
    for line in proc.stdout.splitlines():
        if line.startswith("SCALE_RESULT "):
            return json.loads(line.split(" ", 1)[1])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-10:]
    raise RuntimeError(f"{n} tasks on {backend}: exited {proc.returncode}\n" + "\n".join(tail))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["runtime", "ray"], default="runtime")
    parser.add_argument("--tasks", default="10000,100000,1000000", help="comma-separated task counts")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per point")
    parser.add_argument("--out", help="write the JSON results here")
    args = parser.parse_args()
    points = []
    for n in [int(x) for x in args.tasks.split(",") if x]:
        t0 = time.perf_counter()
        try:
            point = {"tasks": n, **tasks_point(args.backend, n, args.timeout)}
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            point = {"tasks": n, "error": str(e)}
        points.append(point)
        print(f"[{args.backend}] {json.dumps(point)}  ({time.perf_counter() - t0:.0f}s)", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"backend": args.backend, "tasks": points}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
