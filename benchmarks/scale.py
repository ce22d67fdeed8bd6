"""How cost grows with work, on one backend: each point in a fresh driver process.

    python benchmarks/scale.py --backend runtime --out benchmarks/results/scale_runtime.json
    python benchmarks/scale.py --backend ray --out benchmarks/results/scale_ray.json
    python benchmarks/scale_chart.py benchmarks/results/scale_runtime.json benchmarks/results/scale_ray.json

Curves (issue 15), each point run in its own driver so one point's leftovers never weigh on
the next:
- tasks: N no-op tasks submitted, then gathered with one get. Throughput (N / time from the
  first submission until the get returns) and the driver's RSS growth per pending task (its
  RSS right after the last submission, before the get, less its RSS before the first one).
- actors: N actors of a class with one method (num_cpus=0, so CPUs do not limit how many live
  at once) created, then one call to each gathered. Creation rate (N / time from the first
  creation until every call returned) and memory per actor: the growth of the summed PSS of
  the driver and every process below it (the cluster: the backend starts it as the driver's
  children). PSS, not RSS, because pages shared between forked processes count once.
- objects: N objects of 1 MiB put and held. Put rate; per object, the memory the processes
  hold beyond the shared-memory files (PSS of every mapping not under /dev/shm: reference
  tables, store indexes, mappings) and the bytes /dev/shm grew beyond the 1 MiB payloads
  (allocation slack). The object store is sized to hold them all (12 GiB) on both backends,
  so nothing spills.
- nodes: a cluster of N node managers of 1 CPU each on this machine (the backend's
  cluster_utils.Cluster). Throughput of 2,000 no-op tasks (submitted, then one get), and
  scheduling latency under load: tasks submitted at a fixed rate (--latency-rate per second,
  the same for both backends) for 2,000 tasks, each returning time.time() when it starts;
  latency = start - submission, p50 and p99.

Each point is one run; ratios between backends and between points come from one run of this
script per backend.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# Shared by every point's driver: the backend is argv[1], the point's size argv[2].
_PRELUDE = r"""
import importlib, json, os, sys, time
import psutil
ray = importlib.import_module(sys.argv[1])
n = int(sys.argv[2])
extra = json.loads(sys.argv[3])

def cluster_procs():
    me = psutil.Process()
    return [me] + me.children(recursive=True)

def total_pss():
    total = 0
    for p in cluster_procs():
        try:
            total += p.memory_full_info().pss
        except psutil.Error:  # exited between listing and reading
            pass
    return total

def pss_outside_shm():
    total = 0
    for p in cluster_procs():
        try:
            total += sum(m.pss for m in p.memory_maps(grouped=True) if not m.path.startswith("/dev/shm"))
        except psutil.Error:
            pass
    return total

def shm_used():
    st = os.statvfs("/dev/shm")
    return (st.f_blocks - st.f_bfree) * st.f_frsize

def report(**values):
    print("SCALE_RESULT " + json.dumps(values), flush=True)
"""

_TASKS = _PRELUDE + r"""
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
report(tasks_per_s=n / elapsed, driver_bytes_per_pending_task=(pending - base) / n)
"""

_ACTORS = _PRELUDE + r"""
ray.init(num_cpus=2)

@ray.remote(num_cpus=0)
class Light:
    def ping(self):
        return os.getpid()

warm = Light.remote()
ray.get(warm.ping.remote())  # one actor up: the class exported, the first worker started
base = total_pss()
t0 = time.perf_counter()
actors = [Light.remote() for _ in range(n)]
pids = ray.get([a.ping.remote() for a in actors])
elapsed = time.perf_counter() - t0
assert len(set(pids)) == n, "each actor is its own process"
after = total_pss()
procs = len(cluster_procs())
del actors
ray.shutdown()
report(actors_per_s=n / elapsed, pss_bytes_per_actor=(after - base) / n, total_pss_bytes=after, processes=procs)
"""

_OBJECTS = _PRELUDE + r"""
import numpy as np
ray.init(num_cpus=1, object_store_memory=12 * 2**30)
payload = np.ones(2**20, dtype=np.uint8)
ray.get(ray.put(payload))  # the store's first mapping made
base_mem, base_shm = pss_outside_shm(), shm_used()
t0 = time.perf_counter()
refs = [ray.put(payload) for _ in range(n)]
elapsed = time.perf_counter() - t0
assert ray.get(refs[-1])[-1] == 1
mem, shm = pss_outside_shm(), shm_used()
del refs
ray.shutdown()
report(puts_per_s=n / elapsed, meta_bytes_per_object=(mem - base_mem) / n,
       shm_slack_bytes_per_object=(shm - base_shm) / n - 2**20)
"""

_NODES = _PRELUDE + r"""
cluster_utils = importlib.import_module(sys.argv[1] + ".cluster_utils")
cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
try:
    for _ in range(n - 1):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)

    @ray.remote
    def noop():
        return None

    @ray.remote
    def started():
        return time.time()

    ray.get([noop.remote() for _ in range(400)])
    ray.get([started.remote() for _ in range(400)])
    count = 2_000
    t0 = time.perf_counter()
    ray.get([noop.remote() for _ in range(count)])
    throughput = count / (time.perf_counter() - t0)

    # Open loop at a fixed rate: the i-th task is submitted at t_start + i / rate.
    rate = extra["latency_rate"]
    submitted, refs = [], []
    t_start = time.time()
    for i in range(count):
        delay = t_start + i / rate - time.time()
        if delay > 0:
            time.sleep(delay)
        submitted.append(time.time())
        refs.append(started.remote())
    latencies = sorted(s - q for s, q in zip(ray.get(refs), submitted))
    ray.shutdown()
finally:
    cluster.shutdown()
report(tasks_per_s=throughput, latency_p50_ms=1e3 * latencies[len(latencies) // 2],
       latency_p99_ms=1e3 * latencies[int(len(latencies) * 0.99)], latency_rate_per_s=rate)
"""

CURVES = {"tasks": _TASKS, "actors": _ACTORS, "objects": _OBJECTS, "nodes": _NODES}
DEFAULTS = {"tasks": "10000,100000,1000000", "actors": "50,200,1000", "objects": "1000,10000", "nodes": "2,4,8"}


def run_point(curve: str, backend: str, n: int, extra: dict, timeout: float) -> dict:
    env_args = [sys.executable, "-c", CURVES[curve], backend, str(n), json.dumps(extra)]
    proc = subprocess.run(env_args, capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).resolve().parent)
    for line in proc.stdout.splitlines():
        if line.startswith("SCALE_RESULT "):
            return json.loads(line.split(" ", 1)[1])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-10:]
    raise RuntimeError(f"{curve} {n} on {backend}: exited {proc.returncode}\n" + "\n".join(tail))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["runtime", "ray"], default="runtime")
    parser.add_argument("--curves", default=",".join(CURVES), help="comma-separated: " + ", ".join(CURVES))
    for curve, default in DEFAULTS.items():
        parser.add_argument(f"--{curve}", default=default, help=f"comma-separated sizes (default {default})")
    parser.add_argument("--latency-rate", type=float, default=200, help="tasks per second for the latency run")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per point")
    parser.add_argument("--out", help="write the JSON results here")
    args = parser.parse_args()
    results: dict = {"backend": args.backend}
    extra = {"latency_rate": args.latency_rate}
    for curve in [c for c in args.curves.split(",") if c]:
        points = results[curve] = []
        for n in [int(x) for x in getattr(args, curve).split(",") if x]:
            t0 = time.perf_counter()
            try:
                point = {"n": n, **run_point(curve, args.backend, n, extra, args.timeout)}
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                point = {"n": n, "error": str(e)}
            points.append(point)
            print(f"[{args.backend}] {curve} {json.dumps(point)}  ({time.perf_counter() - t0:.0f}s)", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
