"""The local node provider: worker nodes are node managers started on this machine and joined
to the running head (as `runtime start --address` does). For tests, demos and one big machine;
the decisions are the policy's, as with the Kubernetes provider."""

from __future__ import annotations

import logging
import signal
import subprocess
from collections.abc import Sequence
from typing import Any

from .._core import launcher
from ..config import SystemConfig
from .config import ClusterConfig
from .provider import NodeProvider, ProviderNode

logger = logging.getLogger("runtime.autoscaler")

_STANDARD = ("CPU", "GPU", "memory", "object_store_memory")


class LocalProvider(NodeProvider):
    def __init__(self, cluster: ClusterConfig, head_info: dict, config: SystemConfig | None = None) -> None:
        self.cluster = cluster
        self.head_info = head_info
        self.attached = launcher.attach(head_info, config or SystemConfig.resolve())
        self.nodes: dict[str, tuple[str, Any]] = {}  # control-store node id -> (node type, process)
        self.joined: set[str] = set()  # node ids the control store lists as alive (set by the monitor)

    def non_terminated_nodes(self) -> list[ProviderNode]:
        out = []
        for node_id, (node_type, proc) in list(self.nodes.items()):
            if proc.poll() is not None:  # exited (crashed, or stopped by `runtime stop`)
                del self.nodes[node_id]
                continue
            out.append(ProviderNode(node_id, node_type, "running" if node_id in self.joined else "pending",
                                    "127.0.0.1"))
        return out

    def create_nodes(self, node_type: str, count: int) -> None:
        spec = self.cluster.node_types[node_type].resources
        custom = {k: v for k, v in spec.items() if k not in _STANDARD}
        for _ in range(count):
            node = launcher.add_node(self.attached, num_cpus=spec.get("CPU", 0), num_gpus=spec.get("GPU", 0),
                                     resources=custom,
                                     object_store_memory=self.cluster.object_store_memory.get(node_type))
            self.nodes[node["node_id"]] = (node_type, self.attached.procs[node["name"]])
            logger.info("started a %s node %s (pid %d)", node_type, node["node_id"][:8], node["pid"])

    def terminate_nodes(self, node_ids: Sequence[str]) -> None:
        for node_id in node_ids:
            entry = self.nodes.pop(node_id, None)
            if entry is None:
                continue
            proc = entry[1]
            proc.send_signal(signal.SIGTERM)  # a clean stop: its workers end, its store is removed
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            logger.info("stopped node %s", node_id[:8])
