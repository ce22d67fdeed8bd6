"""Where the time of many short tasks goes: the cost of one wake-up of another process on this
machine, then rounds of 1,000 no-op tasks submitted and waited for, with the CPU time each
process of the cluster spent per task (docs/benchmarks.md, 2026-12-05; docs/architecture.md,
pipelining).

    python benchmarks/task_cpu.py                    # ours, pipelining as configured (16)
    python benchmarks/task_cpu.py --in-flight 1      # ours, one task per worker at a time
    .venv-ray/bin/python benchmarks/task_cpu.py --backend ray

Prints the median and the fastest round, and microseconds of CPU per task for the driver and
every process under it (psutil cpu_times before and after the rounds).
"""

from __future__ import annotations

import argparse
import importlib
import os
import socket
import statistics
import time

import psutil


def ping_pong_us(n: int = 20_000) -> float:
    """One round trip between two processes over a unix socketpair: two wake-ups."""
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        for _ in range(n):
            b.recv(64)
            b.send(b"x")
        os._exit(0)
    start = time.perf_counter()
    for _ in range(n):
        a.send(b"x")
        a.recv(64)
    elapsed = time.perf_counter() - start
    os.waitpid(pid, 0)
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["runtime", "ray"], default="runtime")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--in-flight", type=int, help="ours: max_tasks_in_flight_per_worker")
    args = parser.parse_args()
    print(f"process-to-process round trip (unix socketpair): {ping_pong_us():.1f} us")
    ray = importlib.import_module(args.backend)
    config = {"max_tasks_in_flight_per_worker": args.in_flight} if args.in_flight else None
    ray.init(num_cpus=2, **({"_system_config": config} if config else {}))

    @ray.remote
    def noop():
        return None

    ray.wait([noop.remote() for _ in range(200)], num_returns=200)
    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]

    def cpu() -> dict[int, float]:
        out = {}
        for p in procs:
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return out

    before, rounds = cpu(), []
    for _ in range(args.rounds):
        start = time.perf_counter()
        refs = [noop.remote() for _ in range(1000)]
        ray.wait(refs, num_returns=len(refs))
        rounds.append(time.perf_counter() - start)
        del refs
    after = cpu()
    print(f"1,000 no-op tasks then wait: median {statistics.median(rounds):.3f} s, fastest {min(rounds):.3f} s")
    for p in procs:
        if p.pid in after and p.pid in before:
            name = "driver" if p is me else " ".join(p.cmdline()[1:3])[:40]
            used = (after[p.pid] - before[p.pid]) / (args.rounds * 1000) * 1e6
            if used >= 0.5:
                print(f"  {p.pid:>7} {name:<40} {used:6.1f} us CPU per task")
    ray.shutdown()


if __name__ == "__main__":
    main()
