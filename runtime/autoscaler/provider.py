"""The node provider interface: how the monitor loop starts and stops nodes.

A provider only carries out what `policy.decide()` chose; it makes no decisions of its own.
Implementations: `kubernetes.KubernetesProvider` (a worker Deployment per node type) and the
local provider (node managers on this machine, for tests and demos).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ProviderNode:
    """A node as the provider sees it (a pod, a process), before it has joined the cluster.

    `node_id` is the provider's id (the pod name), not the control store's node id: the monitor
    matches the two (by `ip` or hostname) to tell which nodes are still starting.
    """

    node_id: str
    node_type: str
    status: str  # "pending" (not running yet) or "running"
    ip: str | None = None


class NodeProvider(ABC):
    """Starts and stops worker nodes of the types named in the cluster config."""

    @abstractmethod
    def non_terminated_nodes(self) -> list[ProviderNode]:
        """Every worker node that exists and is not being terminated, pending ones included."""

    @abstractmethod
    def create_nodes(self, node_type: str, count: int) -> None:
        """Start `count` more nodes of `node_type`; returns once the request is accepted, not when
        the nodes are up (they show as "pending" in `non_terminated_nodes` meanwhile)."""

    @abstractmethod
    def terminate_nodes(self, node_ids: Sequence[str]) -> None:
        """Stop exactly these nodes. Ids that are already gone are skipped, not an error: the
        snapshot the decision came from may be a few seconds old."""
