"""Several nodes on one machine, for tests, demos and notebooks (Ray's `ray.cluster_utils`).

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=2, resources={"x86": 1})
    runtime.init(address=cluster.address)
    ...
    cluster.remove_node(worker, allow_graceful=False)   # SIGKILL: a node dying
    cluster.shutdown()

Each node is its own node manager process with its own resources, worker pool, sockets and
shared-memory object store, joined to one control store, as on separate machines. The
processes belong to the process that made the Cluster: they exit with it even if it is killed.
"""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable

from .config import SystemConfig
from ._core import launcher


@dataclass
class NodeHandle:
    node_id: str
    pid: int
    name: str
    resources: dict
    info: dict

    @property
    def unique_id(self) -> str:  # Ray's name for it
        return self.node_id


class Cluster:
    def __init__(self, initialize_head: bool = False, connect: bool = False, head_node_args: dict | None = None,
                 shutdown_at_exit: bool = True, _system_config: dict | None = None) -> None:
        self._config = SystemConfig.resolve(_system_config)
        self._procs: launcher.ClusterProcesses | None = None
        self.head_node: NodeHandle | None = None
        self.worker_nodes: list[NodeHandle] = []
        if shutdown_at_exit:
            import atexit
            atexit.register(self.shutdown)
        if initialize_head:
            self.add_node(**(head_node_args or {}))
            if connect:
                self.connect()

    # -- nodes ---------------------------------------------------------------------------
    def add_node(self, wait: bool = True, num_cpus: float | None = None, num_gpus: float | None = None,
                 resources: dict | None = None, object_store_memory: int | None = None, labels: dict | None = None,
                 **_ignored: Any) -> NodeHandle:
        """The first call starts the head (control store + node manager), later calls a worker node."""
        if self._procs is None:
            self._procs = launcher.start_cluster(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                                                 object_store_memory=object_store_memory, config=self._config,
                                                 labels=labels)
            node = self._procs.nodes[0]
        else:
            node = launcher.add_node(self._procs, num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                                     object_store_memory=object_store_memory, labels=labels)
        handle = NodeHandle(node["node_id"], node["pid"], node["name"], node["resources"], node)
        if self.head_node is None:
            self.head_node = handle
        else:
            self.worker_nodes.append(handle)
        if wait:
            self.wait_for(lambda: self._connected(handle.node_id), 30, f"node {handle.node_id[:8]} to join")
        return handle

    def _connected(self, node_id: str) -> bool:
        """`node_id` is alive and every live node manager knows every other one (so work spills)."""
        nodes = self._gcs({"op": "cluster_resources"})["nodes"]
        return node_id in nodes and all(set(r.get("peers", ())) == set(nodes) - {n} for n, r in nodes.items())

    def remove_node(self, node: NodeHandle, allow_graceful: bool = True) -> None:
        """Stop a node: SIGTERM lets it shut down cleanly; allow_graceful=False SIGKILLs it, as a
        crash or a lost machine would. Its workers exit when their node manager is gone."""
        proc = self._procs.procs.pop(node.name) if self._procs is not None else None
        if proc is None:
            raise ValueError(f"Node {node.node_id[:8]} is not part of this cluster (or was removed already).")
        proc.send_signal(signal.SIGTERM if allow_graceful else signal.SIGKILL)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        launcher.cleanup_node_dirs(node.info)
        self._procs.nodes = [n for n in self._procs.nodes if n["node_id"] != node.node_id]
        if node in self.worker_nodes:
            self.worker_nodes.remove(node)

    def kill_head(self) -> None:
        """SIGKILL the control store (the head's central process); nodes and drivers keep running
        and try to reconnect."""
        proc = self._procs.procs["gcs"]
        proc.kill()
        proc.wait(10)

    def restart_head(self) -> None:
        """Kill the control store if it runs, start it again on the same port, and wait until every
        node that was alive has reconnected to it (it recovers its tables from storage)."""
        if self._procs.procs["gcs"].poll() is None:
            self.kill_head()
        launcher.restart_gcs(self._procs)
        self.wait_for(self._all_back, 30, "the nodes to reconnect to the restarted control store")

    def _all_back(self) -> bool:
        try:
            return {n.node_id for n in self.list_all_nodes()} <= self.alive_node_ids()
        except (ConnectionError, OSError):
            return False

    def kill_worker(self, pid: int) -> None:
        """SIGKILL one worker process (a task's or an actor's), as a crash would."""
        import os
        os.kill(pid, signal.SIGKILL)

    def list_all_nodes(self) -> list[NodeHandle]:
        return ([self.head_node] if self.head_node else []) + list(self.worker_nodes)

    @property
    def address(self) -> str:
        if self._procs is None:
            raise RuntimeError("The cluster has no head yet: call add_node() or pass initialize_head=True.")
        return self._procs.gcs_address.removeprefix("tcp:")

    def connect(self, namespace: str | None = None) -> Any:
        import runtime
        return runtime.init(address=self.address, namespace=namespace)

    # -- observing -------------------------------------------------------------------------
    def _gcs(self, msg: dict) -> dict:
        return launcher.gcs_request(self._procs.gcs_address, self._procs.token, msg)

    def alive_node_ids(self) -> set[str]:
        return {n["node_id"] for n in self._gcs({"op": "list_nodes"})["nodes"] if n["alive"]}

    def wait_for_nodes(self, timeout: float = 30) -> None:
        want = [n.node_id for n in self.list_all_nodes()]
        self.wait_for(lambda: all(self._connected(n) for n in want), timeout, f"{len(want)} nodes to be connected")

    @staticmethod
    def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """Poll `predicate` until it returns something true; fail naming `what` after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.02)  # polling interval of a condition wait, not a synchronisation sleep

    def shutdown(self) -> None:
        procs, self._procs = self._procs, None
        if procs is not None:
            launcher.stop_cluster(procs)
        self.head_node, self.worker_nodes = None, []

