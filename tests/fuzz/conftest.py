"""One cluster for the fuzz suite: a head (control store with a client server and the dashboard,
a node manager) and a joined node, on loopback, with a short hello timeout.

Its processes are tolerated by the per-test leak check while the suite runs and must all be
gone when the package's tests are done (checked here, as the plugin's shared runtime is).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from runtime._testing import pytest_plugin
from runtime._testing.sync import wait_for

from . import support
from .support import CLIENT, HTTP, RPC, TRANSFER, Listener

# Examples per hypothesis test are multiplied by this (ORRERY_FUZZ_SCALE=10 for a longer local run;
# CI runs 1: the same examples every time, derandomized).
SCALE = float(os.environ.get("ORRERY_FUZZ_SCALE", "1"))
HELLO_TIMEOUT_S = 2.0  # the cluster's hello_timeout_s (10 s by default)
IDLE_WORKER_TIMEOUT_S = 2.0
CLOSE_SLACK_S = 15.0  # how much later than that a server may close a connection, on a loaded 2-core VM
JOINED = "joined"  # the joined node's custom resource: a task that needs it runs there
FD_SLACK = 10
RSS_SLACK = 50 << 20
# No value the fuzzer makes can reach beyond this machine or install anything; the sockets
# fuzzed are plain ones (None: unset while the cluster starts).
OFFLINE_ENV = {"UV_OFFLINE": "1", "PIP_NO_INDEX": "1", "UV_NO_CONFIG": "1", "RUNTIME_USE_TLS": None,
               "RAY_USE_TLS": None}


@dataclass
class FuzzCluster:
    procs: Any  # launcher.ClusterProcesses
    joined: dict  # launcher.add_node's description of the joined node
    token: str
    server_pids: dict = field(default_factory=dict)  # "gcs", "node@head", "node@joined", "dashboard" -> pid

    @property
    def gcs_address(self) -> str:
        return self.procs.gcs_address

    def gcs(self, msg: dict) -> dict:
        from runtime._core import launcher
        return launcher.gcs_request(self.procs.gcs_address, self.token, msg)

    def roots(self) -> list[int]:
        return [self.server_pids["gcs"], self.server_pids["node@head"], self.server_pids["node@joined"]]

    # -- the listening sockets, found from the processes and named by what they are --------
    def listeners(self) -> list[Listener]:
        """Every listening socket of the head's and the joined node's processes (and their
        children: dashboard, workers), each named by what it serves. A socket that is none of
        the cluster's known ones fails here: the suite must learn what it speaks."""
        nodes = {n["node_id"]: n for n in self.gcs({"op": "list_nodes"})["nodes"] if n["alive"]}
        # Workers: those of actors (the `driver` fixture's); task workers come and go with the idle
        # timeout, and their sockets with them (they run the same code).
        workers = {w["pid"]: w for w in self.gcs({"op": "list_workers"})["workers"]
                   if w["is_alive"] and w["worker_type"] == "WORKER"}
        actors = {w["pid"] for w in workers.values() if w.get("actor_id")}
        known: dict[str, tuple[str, str, str]] = {self.procs.gcs_address: (RPC, "gcs", "head"),
                                                  "tcp:" + self.procs.client_address: (CLIENT, "client", "head")}
        dash = self.procs.ops["dashboard"]
        known[f"tcp:{dash['host']}:{dash['port']}"] = (HTTP, "dashboard", "head")
        for desc in self.procs.nodes:
            where = "head" if desc is self.procs.nodes[0] else "joined"
            known[desc["node_address"]] = (RPC, "node", where)
            known[desc["node_tcp_address"]] = (RPC, "node", where)
            known[f"tcp:{desc['node_ip']}:{desc['metrics_export_port']}"] = (HTTP, "metrics", where)
            node = nodes.get(desc["node_id"])
            if node is not None:
                known[node["transfer_address"]] = (TRANSFER, "transfer", where)
        found = support.listening_sockets(self.roots())
        out, unknown = [], []
        for address, pid in sorted(found.items()):
            if address in known:
                role, server, where = known[address]
            elif pid in workers:
                if pid not in actors:
                    continue
                role, server = RPC, "worker"
                where = "head" if workers[pid]["node_id"] == self.procs.nodes[0]["node_id"] else "joined"
            else:
                unknown.append(f"{address} (pid {pid})")
                continue
            out.append(Listener(address, pid, role, server, where))
        assert not unknown, f"listening sockets the fuzz suite does not know: {unknown}"
        return out

    # -- health: processes, fds, memory, a task ------------------------------------------
    def usage(self) -> dict[str, tuple[int, int]]:
        self._find_dashboard()
        return {name: support.usage(pid) for name, pid in self.server_pids.items()}

    def _find_dashboard(self) -> None:
        import psutil
        if "dashboard" in self.server_pids:
            return
        for p in psutil.Process(self.server_pids["gcs"]).children():
            with contextlib.suppress(psutil.Error):
                if "runtime.dashboard" in " ".join(p.cmdline()):
                    self.server_pids["dashboard"] = p.pid

    def assert_alive(self) -> None:
        import psutil
        for name, pid in self.server_pids.items():
            assert psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE, \
                f"the {name} process (pid {pid}) is gone"

    def assert_back_to(self, before: dict[str, tuple[int, int]], what: str) -> None:
        """fds (within FD_SLACK, waited for: the servers close what the fuzzer opened) and
        resident memory (within RSS_SLACK) of every server are back near `before`."""
        self.assert_alive()

        def settled() -> bool:
            now = self.usage()
            return all(now[n][0] <= fds + FD_SLACK for n, (fds, _) in before.items())
        try:
            wait_for(settled, timeout=HELLO_TIMEOUT_S + CLOSE_SLACK_S, what=f"fds back near the baseline after {what}")
        except AssertionError:
            raise AssertionError(f"after {what}: fds {before} -> {self.usage()}; "
                                 f"{ {n: support.describe_fds(pid) for n, pid in self.server_pids.items()} }") from None
        now = self.usage()
        grown = {n: (now[n][1] - rss) >> 20 for n, (_, rss) in before.items() if now[n][1] > rss + RSS_SLACK}
        assert not grown, f"after {what}: resident memory grew by more than {RSS_SLACK >> 20} MiB: {grown} MiB"

    def run_tasks(self) -> None:
        """A new driver runs a task on each node."""
        import runtime
        assert not runtime.is_initialized()
        runtime.init(address=self.gcs_address.removeprefix("tcp:"))
        try:
            self.check_tasks()
        finally:
            runtime.shutdown()

    def check_tasks(self) -> None:
        import runtime

        @runtime.remote(num_cpus=0.5)
        def where() -> str:
            return runtime.get_runtime_context().get_node_id()

        try:
            head = runtime.get(where.remote(), timeout=30)
            joined = runtime.get(where.options(resources={JOINED: 0.5}).remote(), timeout=30)
        except runtime.exceptions.GetTimeoutError:
            raise AssertionError(f"tasks do not run: resources {self.gcs({'op': 'cluster_resources'})}, "
                                 f"placement groups {self.gcs({'op': 'list_pgs'})}, the control store picks "
                                 f"{self.gcs({'op': 'pick_node', 'demand': {JOINED: 0.5}})}") from None
        assert head == self.procs.nodes[0]["node_id"] and joined == self.joined["node_id"], (head, joined)


@contextlib.contextmanager
def _offline_env() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in OFFLINE_ENV}
    for k, v in OFFLINE_ENV.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="package")
def fuzz_cluster() -> Iterator[FuzzCluster]:
    import runtime
    from runtime._core import launcher
    from runtime.config import SystemConfig

    pytest_plugin._stop_shared_runtime()
    if runtime.is_initialized():
        runtime.shutdown()
    before = pytest_plugin._Census.take()
    # Idle workers the fuzzer's leases started are stopped soon, so fds come back to the baseline.
    config = SystemConfig.resolve({"hello_timeout_s": HELLO_TIMEOUT_S, "idle_worker_timeout_s": IDLE_WORKER_TIMEOUT_S})
    with _offline_env():
        procs = launcher.start_cluster(num_cpus=1, config=config, client_port=0, ops={"dashboard": {"port": 0}})
        try:
            joined = launcher.add_node(procs, num_cpus=1, resources={JOINED: 1})
        except BaseException:
            launcher.stop_cluster(procs)
            raise
    pytest_plugin._tolerated_sessions.add(procs.session_name)
    try:
        cluster = FuzzCluster(procs, joined, procs.token, {"gcs": procs.procs["gcs"].pid,
                                                           "node@head": procs.procs["node"].pid,
                                                           "node@joined": joined["pid"]})
        wait_for(lambda: len([n for n in cluster.gcs({"op": "list_nodes"})["nodes"] if n["alive"]]) == 2,
                 timeout=30, what="the joined node to register")
        # Both activated ports (dashboard, metrics) start their servers on the first connection.
        for lst in (l for l in cluster.listeners() if l.role == HTTP):
            wait_for(lambda lst=lst: support.http_alive(lst, "/api/version" if lst.server == "dashboard" else "/"),
                     timeout=30, what=f"{lst} to serve")
        cluster.usage()  # finds the dashboard's process
        yield cluster
    finally:
        launcher.stop_cluster(procs)
        pytest_plugin._tolerated_sessions.discard(procs.session_name)
        procs_left, shm_left = pytest_plugin.wait_no_leaks(before)
        if procs_left or shm_left:
            pytest_plugin._remove_leftovers(procs_left, shm_left)
            raise pytest_plugin.RuntimeLeakError("fuzz_cluster: " + pytest_plugin._describe_leaks(
                procs_left, shm_left, pytest_plugin.LEAK_WAIT_S))


@pytest.fixture
def cluster(fuzz_cluster: FuzzCluster) -> Iterator[FuzzCluster]:
    """The suite's cluster, checked after each test: its servers are alive and answer."""
    yield fuzz_cluster
    fuzz_cluster.assert_alive()


@pytest.fixture
def driver(cluster: FuzzCluster) -> Iterator[FuzzCluster]:
    """This process is a driver of the cluster for the test, with an actor on each node: their
    workers (and the workers' own listening sockets) are there while the test runs."""
    import runtime
    runtime.init(address=cluster.gcs_address.removeprefix("tcp:"))
    try:
        cluster.check_tasks()

        class Holder:  # defined here: pickled by value (workers cannot import this package)
            def node(self) -> str:
                return runtime.get_runtime_context().get_node_id()

        from runtime.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        actor = runtime.remote(num_cpus=0)(Holder)
        held = [actor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["node_id"], soft=False)).remote()
                for node in (cluster.procs.nodes[0], cluster.joined)]
        nodes = runtime.get([h.node.remote() for h in held], timeout=60)
        assert nodes == [cluster.procs.nodes[0]["node_id"], cluster.joined["node_id"]], nodes
        yield cluster
    finally:
        runtime.shutdown()


def deadline_s() -> float:
    return HELLO_TIMEOUT_S + CLOSE_SLACK_S
