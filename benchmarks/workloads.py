"""The benchmark workloads, registered by the names of the numbers they produce.

Every workload takes a :class:`Bench` (the imported backend module, ``runtime`` or
``ray``, plus what ``init()`` returned) and returns one number, or a dict when it
produces several (``init_s`` and ``shutdown_s`` come from one cold start).

Remote functions and actor classes are defined inside the workload functions on
purpose: nested definitions are pickled by value, so the workers never need to
import this module.

The code is identical for both backends; only the module passed in differs.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import psutil

BIG_NBYTES = 100_000_000  # "100 MB": 0.1 GB in decimal units
BIG_GB = BIG_NBYTES / 1e9


@dataclass
class Bench:
    ray: Any  # the backend module: `runtime` or `ray`
    backend: str  # its import name
    context: Any = None  # what init() returned, if the cluster is up


@dataclass(frozen=True)
class Workload:
    name: str  # the primary result name; also the registry key
    produces: tuple[str, ...]  # every result name it reports
    run: Callable[[Bench], float | dict[str, float]]
    needs_cluster: bool  # False: runs before the shared init(), in its own process


WORKLOADS: dict[str, Workload] = {}


def workload(*produces: str, needs_cluster: bool = True):
    def register(fn):
        WORKLOADS[produces[0]] = Workload(produces[0], produces, fn, needs_cluster)
        return fn

    return register


@cache
def big_array() -> np.ndarray:
    """The 100 MB array, created once and shared by the large-object workloads."""
    return np.ones(BIG_NBYTES, dtype=np.uint8)  # np.ones touches every page


def _elapsed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- cold start

_COLD_START = r"""
import importlib, json, sys, time
ray = importlib.import_module(sys.argv[1])

@ray.remote
def one():
    return 1

t0 = time.perf_counter()
ray.init(num_cpus=2)
assert ray.get(one.remote()) == 1
t1 = time.perf_counter()
ray.shutdown()
t2 = time.perf_counter()
print("COLD_START_RESULT " + json.dumps({"init_s": t1 - t0, "shutdown_s": t2 - t1}), flush=True)
"""


@workload("init_s", "shutdown_s", needs_cluster=False)
def cold_start(bench: Bench) -> dict[str, float]:
    """init() until a trivial task returns, then shutdown(), in a fresh interpreter.

    The import of the backend is not timed; only init()+get(f.remote()) and shutdown().
    """
    proc = subprocess.run(
        [sys.executable, "-c", _COLD_START, bench.backend],
        # Same first sys.path entry as `python benchmarks/run.py`, so the child
        # imports the backend from where the parent did.
        cwd=Path(__file__).resolve().parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("COLD_START_RESULT "):
            return json.loads(line.split(" ", 1)[1])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    raise RuntimeError(f"cold-start subprocess exited {proc.returncode}:\n" + "\n".join(tail))


# --------------------------------------------------------------------------- footprint


def runtime_processes(bench: Bench) -> list[psutil.Process]:
    """Processes the runtime started: descendants of this (driver) process, plus any
    process whose command line names the session directory (for daemons that were
    re-parented)."""
    me = psutil.Process()
    procs = {p.pid: p for p in me.children(recursive=True)}
    session_dir = None
    info = getattr(bench.context, "address_info", None)
    if isinstance(info, dict):
        session_dir = info.get("session_dir")
    if session_dir:
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(p.info.get("cmdline") or [])
            if p.pid != me.pid and session_dir in cmdline:
                procs.setdefault(p.pid, p)
    return list(procs.values())


@workload("idle_rss_mb", "idle_processes")
def idle_footprint(bench: Bench) -> dict[str, float]:
    """Summed RSS (MiB) and count of the runtime's processes, idle after one task."""
    ray = bench.ray

    @ray.remote
    def noop():
        return None

    ray.get(noop.remote())
    time.sleep(2.0)
    rss = 0
    count = 0
    for p in runtime_processes(bench):
        try:
            rss += p.memory_info().rss
            count += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return {"idle_rss_mb": rss / 2**20, "idle_processes": count}


# --------------------------------------------------------------------------- tasks


@workload("tasks_async_per_s")
def tasks_async(bench: Bench) -> float:
    ray = bench.ray
    n = 10_000

    @ray.remote
    def noop():
        return None

    ray.get([noop.remote() for _ in range(200)])
    dt = _elapsed(lambda: ray.get([noop.remote() for _ in range(n)]))
    return n / dt


@workload("tasks_sync_per_s")
def tasks_sync(bench: Bench) -> float:
    ray = bench.ray
    n = 1_000

    @ray.remote
    def noop():
        return None

    for _ in range(50):
        ray.get(noop.remote())

    def run():
        for _ in range(n):
            ray.get(noop.remote())

    return n / _elapsed(run)


# --------------------------------------------------------------------------- actors


def _sync_actor_class(ray):
    @ray.remote
    class Sync:
        def m(self):
            return None

    return Sync


@workload("actor_calls_sync_per_s")
def actor_calls_sync(bench: Bench) -> float:
    ray = bench.ray
    n = 1_000
    actor = _sync_actor_class(ray).remote()
    try:
        for _ in range(50):
            ray.get(actor.m.remote())

        def run():
            for _ in range(n):
                ray.get(actor.m.remote())

        return n / _elapsed(run)
    finally:
        ray.kill(actor)


@workload("actor_calls_async_per_s")
def actor_calls_async(bench: Bench) -> float:
    ray = bench.ray
    n = 5_000
    return _calls_per_s(ray, _sync_actor_class(ray).remote(), n)


@workload("actor_calls_concurrent_per_s")
def actor_calls_concurrent(bench: Bench) -> float:
    ray = bench.ray
    n = 5_000

    @ray.remote
    class Async:
        async def m(self):
            return None

    return _calls_per_s(ray, Async.remote(), n)


def _calls_per_s(ray: Any, actor: Any, n: int) -> float:
    """n calls of `actor.m` submitted, then gathered with one get (after 200 to warm up); kills the actor."""
    try:
        ray.get([actor.m.remote() for _ in range(200)])
        return n / _elapsed(lambda: ray.get([actor.m.remote() for _ in range(n)]))
    finally:
        ray.kill(actor)


@workload("actor_create_per_s")
def actor_create(bench: Bench) -> float:
    """Create 50 actors with default options; each answers one ping."""
    ray = bench.ray
    n = 50

    @ray.remote
    class Pinger:
        def ping(self):
            return "pong"

    warm = Pinger.remote()
    ray.get(warm.ping.remote())
    ray.kill(warm)

    actors = []

    def run():
        actors.extend(Pinger.remote() for _ in range(n))
        assert ray.get([a.ping.remote() for a in actors]) == ["pong"] * n

    try:
        return n / _elapsed(run)
    finally:
        for a in actors:
            ray.kill(a)


@workload("pg_create_remove_per_s")
def pg_create_remove(bench: Bench) -> float:
    """Create a [{"CPU": 1}] placement group, wait until it is ready, remove it; repeated."""
    import importlib
    util = importlib.import_module(f"{bench.backend}.util")
    n = 20
    warm = util.placement_group([{"CPU": 1}])
    bench.ray.get(warm.ready())
    util.remove_placement_group(warm)

    def run():
        for _ in range(n):
            pg = util.placement_group([{"CPU": 1}])
            bench.ray.get(pg.ready())
            util.remove_placement_group(pg)

    return n / _elapsed(run)


# --------------------------------------------------------------------------- small objects


@workload("put_small_per_s")
def put_small(bench: Bench) -> float:
    ray = bench.ray
    n = 10_000
    warm = [ray.put(i) for i in range(200)]
    del warm
    refs = []
    dt = _elapsed(lambda: refs.extend(ray.put(i) for i in range(n)))
    return n / dt


@workload("get_small_per_s")
def get_small(bench: Bench) -> float:
    ray = bench.ray
    n = 10_000
    refs = [ray.put(i) for i in range(n)]
    for r in refs[:200]:
        ray.get(r)

    def run():
        for r in refs:
            ray.get(r)

    dt = _elapsed(run)
    assert ray.get(refs[-1]) == n - 1
    return n / dt


# --------------------------------------------------------------------------- large objects


@workload("put_gbps_100mb")
def put_big(bench: Bench) -> float:
    """put() of a 100 MB uint8 array, best of 3, in GB/s."""
    ray = bench.ray
    arr = big_array()
    warm = ray.put(np.ones(1_000_000, dtype=np.uint8))
    del warm
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        ref = ray.put(arr)
        best = min(best, time.perf_counter() - t0)
        del ref
        gc.collect()
    return BIG_GB / best


@workload("get_gbps_100mb")
def get_big(bench: Bench) -> float:
    """get() of a stored 100 MB array, best of 3, in GB/s (zero-copy expected)."""
    ray = bench.ray
    arr = big_array()
    warm = ray.put(np.ones(1_000_000, dtype=np.uint8))
    ray.get(warm)
    del warm
    ref = ray.put(arr)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        out = ray.get(ref)
        best = min(best, time.perf_counter() - t0)
        assert out.nbytes == BIG_NBYTES
        del out
    return BIG_GB / best


@workload("pass_100mb_to_10_tasks_s")
def pass_big_to_tasks(bench: Bench) -> float:
    """One stored 100 MiB array passed by ref to 10 tasks, each reading one byte of every 4 KiB
    page of it; seconds until all return. The put() happens before the clock starts."""
    ray = bench.ray
    size = 100 * 2**20

    @ray.remote
    def pages(a):
        return int(a[::4096].sum())  # one read per page: every page is mapped in this worker

    small = ray.put(np.ones(8192, dtype=np.uint8))
    ray.get([pages.remote(small) for _ in range(10)])
    ref = ray.put(np.ones(size, dtype=np.uint8))
    out = []
    dt = _elapsed(lambda: out.extend(ray.get([pages.remote(ref) for _ in range(10)])))
    assert out == [size // 4096] * 10
    return dt


# --------------------------------------------------------------------------- dependencies and wait


@workload("chain_1000_tasks_s")
def chain(bench: Bench) -> float:
    ray = bench.ray
    n = 1_000

    @ray.remote
    def inc(x):
        return x + 1

    def run_chain(length):
        x = inc.remote(0)
        for _ in range(length - 1):
            x = inc.remote(x)
        return ray.get(x)

    assert run_chain(20) == 20
    result = []
    dt = _elapsed(lambda: result.append(run_chain(n)))
    assert result == [n]
    return dt


@workload("wait_1000_refs_s")
def wait_many(bench: Bench) -> float:
    ray = bench.ray
    n = 1_000

    @ray.remote
    def noop():
        return None

    ray.wait([noop.remote() for _ in range(100)], num_returns=100)
    ready = []

    def run():
        refs = [noop.remote() for _ in range(n)]
        done, _ = ray.wait(refs, num_returns=n)
        ready.extend(done)

    dt = _elapsed(run)
    assert len(ready) == n
    return dt


# --------------------------------------------------------------------------- several nodes
# Each of these starts its own cluster of several node managers on this machine with the
# backend's `cluster_utils.Cluster` (Ray's test/demo harness, which ours mirrors), joins it as
# the driver, and stops it. They run before the shared single-node cluster is started.


def _with_cluster(bench: Bench, nodes: list[dict], body: Callable[[Any, Any], Any]) -> Any:
    import importlib
    cluster_utils = importlib.import_module(f"{bench.backend}.cluster_utils")
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args=nodes[0])
    try:
        for args in nodes[1:]:
            cluster.add_node(**args)
        cluster.wait_for_nodes()
        bench.ray.init(address=cluster.address)
        try:
            return body(bench.ray, cluster)
        finally:
            bench.ray.shutdown()
    finally:
        cluster.shutdown()


@workload("internode_gbps_100mb", needs_cluster=False)
def internode_transfer(bench: Bench) -> float:
    """A 100 MB array made by a task on a second node, then get() by the driver on the head:
    the object crosses between the two nodes' stores. Best of 3, fresh object each time, GB/s."""
    def body(ray, cluster):
        @ray.remote(resources={"far": 1})
        def make():
            import numpy as np
            return np.ones(100_000_000, dtype=np.uint8)

        best = float("inf")
        for _ in range(3):
            ref = make.remote()
            ray.wait([ref], fetch_local=False)
            t0 = time.perf_counter()
            value = ray.get(ref)
            best = min(best, time.perf_counter() - t0)
            assert value.nbytes == BIG_NBYTES and value[-1] == 1
            del value, ref
        return BIG_GB / best

    return _with_cluster(bench, [{"num_cpus": 1}, {"num_cpus": 1, "resources": {"far": 1}}], body)


@workload("tasks_4_nodes_per_s", needs_cluster=False)
def tasks_four_nodes(bench: Bench) -> float:
    """Throughput of 2,000 empty tasks on 4 nodes of 1 CPU each (submitted, then one get)."""
    def body(ray, cluster):
        @ray.remote
        def noop():
            return None

        ray.get([noop.remote() for _ in range(200)])
        n = 2_000
        return n / _elapsed(lambda: ray.get([noop.remote() for _ in range(n)]))

    return _with_cluster(bench, [{"num_cpus": 1}] * 4, body)


@workload("dead_node_detect_s", needs_cluster=False)
def dead_node_detect(bench: Bench) -> float:
    """A worker node's processes SIGKILLed (remove_node(allow_graceful=False)): seconds until
    ray.nodes() reports it dead. Default settings of each backend."""
    def body(ray, cluster):
        victim = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        t0 = time.perf_counter()
        cluster.remove_node(victim, allow_graceful=False)
        while any(n["NodeID"] == victim.node_id and n["Alive"] for n in ray.nodes()):
            if time.perf_counter() - t0 > 120:
                raise TimeoutError("the killed node was not declared dead within 120 s")
            time.sleep(0.01)
        return time.perf_counter() - t0

    return _with_cluster(bench, [{"num_cpus": 1}], body)


@workload("actor_recover_s", needs_cluster=False)
def actor_recover(bench: Bench) -> float:
    """An actor (max_restarts=1) whose process is SIGKILLed: seconds from the kill until a call
    to it (max_task_retries=-1) returns from the restarted instance."""
    import os
    import signal

    def body(ray, cluster):
        @ray.remote(max_restarts=1, max_task_retries=-1)
        class Probe:
            def pid(self):
                return os.getpid()

        probe = Probe.remote()
        pid = ray.get(probe.pid.remote())
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        new_pid = ray.get(probe.pid.remote())
        elapsed = time.perf_counter() - t0
        assert new_pid != pid
        return elapsed

    return _with_cluster(bench, [{"num_cpus": 1}, {"num_cpus": 1}], body)


# --------------------------------------------------------------------------- Dask
# groupby('k').x.mean() over 5,000,000 rows in 20 partitions (dd.from_pandas). Each backend runs
# it on its own Dask scheduler (ours: runtime.util.dask; Ray's: ray.util.dask); the runtime run
# also times Dask's threaded scheduler and a dask.distributed LocalCluster on the same machine,
# for the ratio against Dask itself. Best of 3 after one warm-up run.

DASK_ROWS, DASK_PARTITIONS = 5_000_000, 20


def _dask_groupby_frame() -> Any:
    import dask.dataframe as dd
    import pandas as pd
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"k": rng.integers(0, 100, DASK_ROWS), "x": rng.random(DASK_ROWS)})
    return dd.from_pandas(df, npartitions=DASK_PARTITIONS).groupby("k").x.mean()


def _best_of(fn: Callable[[], Any], runs: int = 3) -> float:
    fn()
    return min(_elapsed(fn) for _ in range(runs))


@workload("dask_groupby_s", "dask_groupby_threads_s", "dask_groupby_distributed_s")
def dask_groupby(bench: Bench) -> dict[str, float]:
    import importlib
    expr = _dask_groupby_frame()
    get = importlib.import_module(f"{bench.backend}.util.dask")
    scheduler = get.runtime_dask_get if bench.backend == "runtime" else get.ray_dask_get
    out = {"dask_groupby_s": _best_of(lambda: expr.compute(scheduler=scheduler))}
    if bench.backend == "runtime":  # Dask's own schedulers, once, in the same run as ours
        out["dask_groupby_threads_s"] = _best_of(lambda: expr.compute(scheduler="threads"))
        from distributed import Client, LocalCluster
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc, \
                Client(lc) as client:
            out["dask_groupby_distributed_s"] = _best_of(lambda: client.compute(expr).result())
    return out


# --------------------------------------------------------------------------- Datasets
# The same code on ray.data and runtime.data. Best of 3 after a warm-up.


@workload("data_map_batches_s")
def data_map_batches(bench: Bench) -> float:
    """range(5,000,000) -> pandas map_batches adding a column -> count()."""
    import importlib
    data = importlib.import_module(f"{bench.backend}.data")
    n = 5_000_000

    def run():
        assert data.range(n).map_batches(lambda df: df.assign(y=df["id"] * 2), batch_format="pandas").count() == n

    return _best_of(run)


@workload("data_parquet_roundtrip_s")
def data_parquet_roundtrip(bench: Bench) -> float:
    """range(5,000,000) with a float column written as parquet to a directory, read back, summed."""
    import importlib
    import shutil
    import tempfile
    data = importlib.import_module(f"{bench.backend}.data")
    n = 5_000_000
    root = tempfile.mkdtemp(prefix="bench-parquet-")

    def run():
        path = tempfile.mkdtemp(dir=root)
        data.range(n).map_batches(lambda df: df.assign(x=df["id"] * 0.5), batch_format="pandas").write_parquet(path)
        assert data.read_parquet(path).sum("id") == n * (n - 1) // 2

    try:
        return _best_of(run)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- runtime_env

_RUNTIME_ENV = r"""
import importlib, json, os, sys, tempfile, time
ray = importlib.import_module(sys.argv[1])
from importlib import import_module
JobSubmissionClient = import_module(sys.argv[1] + ".job_submission").JobSubmissionClient

@ray.remote
def version():
    import humanize
    return humanize.__name__

ctx = ray.init(num_cpus=2, include_dashboard=True)
t0 = time.perf_counter()
ray.get(version.options(runtime_env={"pip": ["humanize==4.9.0"]}).remote())
t1 = time.perf_counter()
# The same pip spec in another environment (other env_vars): the packages are cached, the
# worker is new, as for the next job that uses the spec.
ray.get(version.options(runtime_env={"pip": ["humanize==4.9.0"], "env_vars": {"NEXT": "1"}}).remote())
t2 = time.perf_counter()
wd = tempfile.mkdtemp()
with open(os.path.join(wd, "blob.bin"), "wb") as f:
    f.write(os.urandom(10 * 1024 * 1024))
url = ctx.dashboard_url
client = JobSubmissionClient("http://" + url)
t3 = time.perf_counter()
job = client.submit_job(entrypoint="python -c \"import os; assert os.path.getsize('blob.bin') == 10485760\"",
                        runtime_env={"working_dir": wd})
while True:
    status = str(client.get_job_status(job))
    if status.endswith(("SUCCEEDED", "FAILED", "STOPPED")):
        break
    time.sleep(0.02)
t4 = time.perf_counter()
assert status.endswith("SUCCEEDED"), (status, client.get_job_logs(job))
ray.shutdown()
print("RUNTIME_ENV_RESULT " + json.dumps({"runtime_env_pip_first_task_s": t1 - t0,
      "runtime_env_pip_cached_task_s": t2 - t1, "working_dir_job_s": t4 - t3}), flush=True)
"""


@workload("runtime_env_pip_first_task_s", "runtime_env_pip_cached_task_s", "working_dir_job_s", needs_cluster=False)
def runtime_env(bench: Bench) -> dict[str, float]:
    """In a fresh cluster: the first task with {"pip": ["humanize==4.9.0"]} (the node's
    environment cache is cold; the installer's download cache may not be, for either backend),
    a task with the same pip spec in another environment (cached packages, a new worker), and a
    job with a 10 MiB working_dir submitted over HTTP until SUCCEEDED."""
    proc = subprocess.run([sys.executable, "-c", _RUNTIME_ENV, bench.backend], cwd=Path(__file__).resolve().parent,
                          capture_output=True, text=True, timeout=600)
    for line in proc.stdout.splitlines():
        if line.startswith("RUNTIME_ENV_RESULT "):
            return json.loads(line.split(" ", 1)[1])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    raise RuntimeError(f"runtime_env subprocess exited {proc.returncode}:\n" + "\n".join(tail))


# --------------------------------------------------------------------------- thin clients

_CLIENT = r"""
import importlib, json, sys, time
import numpy as np
ray = importlib.import_module(sys.argv[1])
ray.init(sys.argv[2])

@ray.remote
def noop():
    return None

ray.get([noop.remote() for _ in range(50)])
n = 500
t0 = time.perf_counter()
ray.get([noop.remote() for _ in range(n)])
rate = n / (time.perf_counter() - t0)
value = np.ones(10_000_000, dtype=np.uint8)
best = float("inf")
for _ in range(3):
    t0 = time.perf_counter()
    assert ray.get(ray.put(value)).nbytes == value.nbytes
    best = min(best, time.perf_counter() - t0)
ray.shutdown()
print("CLIENT_RESULT " + json.dumps({"client_tasks_per_s": rate, "client_put_get_gbps_10mb": 0.02 / best}), flush=True)
"""


@workload("client_tasks_per_s", "client_put_get_gbps_10mb", needs_cluster=False)
def thin_client(bench: Bench) -> dict[str, float]:
    """A thin client (ours: client://, Ray: ray://) of a head started with each backend's
    `start --head` on this machine: 500 empty tasks submitted then gathered, and a 10 MB array
    put and got back (20 MB over the link, GB/s; best of 3)."""
    import os
    import shutil
    import socket
    import tempfile
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.mkdtemp(prefix="bench-client-")
    env = {**os.environ, "TMPDIR": tmp}
    if bench.backend == "ray":
        cli = [os.path.join(os.path.dirname(sys.executable), "ray")]
        start = [*cli, "start", "--head", "--port", "0", "--num-cpus", "2", "--ray-client-server-port", str(port),
                 "--include-dashboard", "false", f"--temp-dir={tmp}/ray"]
        address = f"ray://127.0.0.1:{port}"
    else:
        cli = [sys.executable, "-m", "runtime"]
        start = [*cli, "start", "--head", "--port", "0", "--num-cpus", "2", "--client-server-port", str(port),
                 "--include-dashboard", "false"]
        address = f"client://127.0.0.1:{port}"
    try:
        subprocess.run(start, env=env, check=True, capture_output=True, timeout=120)
        proc = subprocess.run([sys.executable, "-c", _CLIENT, bench.backend, address], env=env,
                              cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run([*cli, "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)
    for line in proc.stdout.splitlines():
        if line.startswith("CLIENT_RESULT "):
            return json.loads(line.split(" ", 1)[1])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    raise RuntimeError(f"thin client subprocess exited {proc.returncode}:\n" + "\n".join(tail))
