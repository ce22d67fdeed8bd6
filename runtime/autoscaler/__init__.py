"""The autoscaler: a pure decision policy, the cluster YAML, and node providers.

- `policy`: `decide()` turns a snapshot (node types, nodes, unmet demand, the time) into a
  `ScaleDecision`. No I/O, no clock: the monitor loop gathers and acts.
- `config`: `load_cluster_config()` reads and validates a Ray-style cluster YAML (needs PyYAML).
- `provider`: the `NodeProvider` interface the monitor acts through; `kubernetes` holds the
  `KubernetesProvider` (needs the `kubernetes` package, imported only when it is used).

Only the policy is imported here, so `import runtime.autoscaler` needs neither PyYAML nor the
Kubernetes client.
"""

from __future__ import annotations

from .policy import (
    NodeState,
    NodeType,
    PlacementGroupDemand,
    ScaleDecision,
    UnmetDemand,
    decide,
)
from .provider import NodeProvider, ProviderNode

__all__ = [
    "NodeProvider",
    "NodeState",
    "NodeType",
    "PlacementGroupDemand",
    "ProviderNode",
    "ScaleDecision",
    "UnmetDemand",
    "decide",
]
