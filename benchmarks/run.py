"""Run the benchmark workloads on one backend and write the numbers as JSON.

    python benchmarks/run.py --backend runtime --out benchmarks/results/runtime.json
    python benchmarks/run.py --backend ray --out benchmarks/results/ray.json
    python benchmarks/run.py --backend runtime --only tasks_async_per_s,chain_1000_tasks_s
    python benchmarks/run.py --list

The same workload code runs on both backends: `--backend runtime` does
`import runtime as ray`, `--backend ray` does `import ray`. The cold start
(`init_s`, `shutdown_s`) runs in a fresh subprocess first; every other workload
shares one `init(num_cpus=2)` in this process. A workload that raises or runs
past `--timeout` is recorded as null and the run goes on.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import psutil

from machine_info import describe_machine, machine_line
from workloads import WORKLOADS, Bench, Workload, runtime_processes


class WorkloadTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise WorkloadTimeout("workload ran past --timeout")


def select(only: str | None) -> list[Workload]:
    if not only:
        return list(WORKLOADS.values())
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    known = {n for w in WORKLOADS.values() for n in w.produces}
    unknown = wanted - known
    if unknown:
        sys.exit(f"unknown workload(s): {', '.join(sorted(unknown))}; see --list")
    return [w for w in WORKLOADS.values() if wanted & set(w.produces)]


def run_one(bench: Bench, w: Workload, timeout: int, results: dict, errors: dict) -> None:
    print(f"[{bench.backend}] {w.name} ...", flush=True)
    t0 = time.perf_counter()
    signal.alarm(timeout)
    try:
        value = w.run(bench)
    except Exception as exc:  # noqa: BLE001 - one broken workload must not stop the rest
        signal.alarm(0)
        msg = f"{type(exc).__name__}: {exc}"
        print(f"[{bench.backend}] {w.name} FAILED after {time.perf_counter() - t0:.1f}s: {msg}", flush=True)
        traceback.print_exc(limit=4)
        for name in w.produces:
            results[name] = None
            errors[name] = msg
        return
    finally:
        signal.alarm(0)
        gc.collect()
    values = value if isinstance(value, dict) else {w.name: value}
    for name in w.produces:
        results[name] = values.get(name)
    shown = ", ".join(f"{k} = {_fmt(v)}" for k, v in values.items())
    print(f"[{bench.backend}] {shown}  ({time.perf_counter() - t0:.1f}s)", flush=True)


def _alive(p) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["runtime", "ray"], default="runtime")
    parser.add_argument("--out", help="write the JSON results here")
    parser.add_argument("--only", help="comma-separated result names to run (see --list)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per workload (default 300)")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    parser.add_argument("--tls", action="store_true",
                        help="mutual TLS on every TCP link (ours only): a new CA and certificate for this run")
    args = parser.parse_args()
    if args.tls:
        import tempfile
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from runtime._testing.tls import tls_env
        os.environ.update(tls_env(tempfile.mkdtemp(prefix="bench-tls-")))  # every process inherits it

    if args.list:
        for w in WORKLOADS.values():
            print(", ".join(w.produces))
        return 0

    if args.backend == "ray":
        # No usage-stats reporting from a benchmark run (there is no network to report to).
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    chosen = select(args.only)
    ray = importlib.import_module(args.backend)
    machine = describe_machine()
    version = getattr(ray, "__version__", None)
    print(f"[{args.backend}] version {version}; {machine_line(machine)}", flush=True)
    signal.signal(signal.SIGALRM, _on_alarm)

    bench = Bench(ray=ray, backend=args.backend)
    results: dict = {}
    errors: dict = {}

    # The cold start runs first, while nothing else of ours is running.
    for w in chosen:
        if not w.needs_cluster:
            run_one(bench, w, args.timeout, results, errors)

    clustered = [w for w in chosen if w.needs_cluster]
    if clustered:
        try:
            bench.context = ray.init(num_cpus=2)
        except Exception as exc:  # noqa: BLE001
            msg = f"init failed: {type(exc).__name__}: {exc}"
            print(f"[{args.backend}] {msg}", flush=True)
            traceback.print_exc()
            for w in clustered:
                for name in w.produces:
                    results[name] = None
                    errors[name] = msg
        else:
            try:
                for w in clustered:
                    run_one(bench, w, args.timeout, results, errors)
            finally:
                leftovers_before = len(runtime_processes(bench))
                t0 = time.perf_counter()
                ray.shutdown()
                print(
                    f"[{args.backend}] shutdown of the shared cluster ({leftovers_before} processes) "
                    f"took {time.perf_counter() - t0:.2f}s",
                    flush=True,
                )
                time.sleep(1.0)
                left = [p for p in runtime_processes(bench) if _alive(p)]
                if left:
                    print(f"[{args.backend}] WARNING: {len(left)} processes still alive after shutdown: "
                          f"{[p.pid for p in left]}", flush=True)

    report = {
        "backend": args.backend,
        "backend_version": version,
        "machine": machine,
        "results": results,
    }
    if errors:
        report["errors"] = errors
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"[{args.backend}] wrote {out}", flush=True)
    else:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
