"""`python -m runtime demo`: a short tour of the runtime on an embedded cluster."""

from __future__ import annotations

import os
import time


def _step(title: str) -> None:
    print(f"\n== {title}")


def run_demo(notebook: str | None = None) -> int:
    import numpy as np

    import runtime as ray

    t0 = time.perf_counter()
    ctx = ray.init(num_cpus=2)
    print(f"Started an embedded cluster in {time.perf_counter() - t0:.2f} s: control store, node manager and "
          f"workers are separate processes (session {ctx.address_info['session_dir']}).")
    print(f"Resources: {ray.cluster_resources()}")

    _step("Remote functions: square over 4 inputs")

    @ray.remote
    def square(x: int) -> int:
        return x * x

    t = time.perf_counter()
    refs = [square.remote(i) for i in range(4)]
    print(f"square.remote(i) for i in range(4) -> {ray.get(refs)}  ({(time.perf_counter() - t) * 1000:.1f} ms)")

    _step("Dependent tasks: square.remote(square.remote(2))")
    t = time.perf_counter()
    print(f"-> {ray.get(square.remote(square.remote(2)))}  ({(time.perf_counter() - t) * 1000:.1f} ms; "
          "the inner result is passed by reference and resolved before the outer task runs)")

    _step("Actors: 4 Counters, each incremented 3 times")

    @ray.remote
    class Counter:
        def __init__(self) -> None:
            self.value = 0

        def increment(self) -> None:
            self.value += 1

        def get_value(self) -> int:
            return self.value

    t = time.perf_counter()
    counters = [Counter.remote() for _ in range(4)]
    for c in counters:
        for _ in range(3):
            c.increment.remote()
    print(f"-> {ray.get([c.get_value.remote() for c in counters])}  ({(time.perf_counter() - t) * 1000:.1f} ms, "
          "including starting 4 actor processes)")

    _step("Objects: a 100 MB numpy array put once, read by 4 tasks")
    arr = np.arange(100_000_000 // 8, dtype=np.float64)
    t = time.perf_counter()
    ref = ray.put(arr)
    put_s = time.perf_counter() - t
    t = time.perf_counter()
    view = ray.get(ref)
    get_s = time.perf_counter() - t
    print(f"put: {put_s * 1000:.1f} ms; get: {get_s * 1000:.2f} ms (zero-copy: read-only view on shared memory, "
          f"writeable={view.flags.writeable})")

    @ray.remote
    def total(a: np.ndarray) -> float:
        return float(a.sum())

    t = time.perf_counter()
    sums = ray.get([total.remote(ref) for _ in range(4)])
    print(f"4 tasks summed the same array: {sums[0]:.0f} each, in {(time.perf_counter() - t) * 1000:.1f} ms "
          "(each mapped it, none copied it)")
    del view

    _step("Fault tolerance: a flaky task whose worker exits one time in three")

    @ray.remote(max_retries=10)
    def flaky(x: int) -> int:
        import random
        import sys
        if random.randint(0, 2) == 1:
            sys.exit(0)  # the worker process dies; the owner retries the task elsewhere
        return x

    t = time.perf_counter()
    print(f"-> {ray.get([flaky.remote(i) for i in range(8)])}  ({(time.perf_counter() - t) * 1000:.1f} ms; "
          "retries are logged above)")

    _step("Errors keep their type and remote traceback")

    @ray.remote
    def fails() -> None:
        raise ValueError("bad input")

    try:
        ray.get(fails.remote())
    except ValueError as e:
        print(f"caught as ValueError: {str(e).splitlines()[-1]}")

    status = _run_notebook_job(notebook, ctx) if notebook else "SUCCEEDED"

    t = time.perf_counter()
    ray.shutdown()
    print(f"\nShut down in {time.perf_counter() - t:.2f} s; no processes left (pid {os.getpid()} owned them).")
    return 0 if status == "SUCCEEDED" else 1


def _run_notebook_job(path: str, ctx: object) -> str:
    """Run a notebook as a batch job on this cluster, as `runtime job submit --notebook` does."""
    import sys

    from ..jobs.client import JobSubmissionClient

    _step(f"A notebook as a batch job: {path}")
    if not os.path.isfile(path):
        print(f"No notebook at {path!r}; run `make demo` from the repository root.")
        return "FAILED"
    client = JobSubmissionClient(ctx.address_info["gcs_address"])  # type: ignore[attr-defined]
    name = os.path.basename(path)
    with open(path, "rb") as f:
        job_id = client.submit_job(files={name: f.read()}, notebook=name, working_dir=os.path.dirname(os.path.abspath(path)))
    print(f"Submitted as job {job_id}; each cell's output follows.")
    status = client.wait_until_finished(job_id, on_output=lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    info = client.get_job_info(job_id)
    print(f"Job {job_id} {status}: {info.get('message', '')}")
    return status
