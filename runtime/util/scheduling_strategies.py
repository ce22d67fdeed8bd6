"""Scheduling strategies (Ray's `ray.util.scheduling_strategies`): besides the strings
"DEFAULT" and "SPREAD", run a task or actor in a placement group's bundle, or on a given node."""

from __future__ import annotations

from typing import Any


class PlacementGroupSchedulingStrategy:
    _strategy_kind = "placement_group"

    def __init__(self, placement_group: Any, placement_group_bundle_index: int = -1,
                 placement_group_capture_child_tasks: bool | None = None) -> None:
        from .placement_group import PlacementGroup
        if not isinstance(placement_group, PlacementGroup):
            raise TypeError("PlacementGroupSchedulingStrategy needs the PlacementGroup returned by "
                            f"placement_group(...), got {type(placement_group).__name__}.")
        n = placement_group.bundle_count
        if not isinstance(placement_group_bundle_index, int) or not -1 <= placement_group_bundle_index < n:
            raise ValueError(f"placement_group_bundle_index must be -1 (any bundle) or 0..{n - 1} for this group "
                             f"of {n} bundle(s), got {placement_group_bundle_index!r}.")
        self.placement_group = placement_group
        self.placement_group_bundle_index = placement_group_bundle_index
        self.placement_group_capture_child_tasks = bool(placement_group_capture_child_tasks)


class NodeAffinitySchedulingStrategy:
    """Run on `node_id`; with soft=True anywhere if that node cannot (one-node clusters: always here)."""

    _strategy_kind = "node_affinity"

    def __init__(self, node_id: str, soft: bool, _spill_on_unavailable: bool = False,
                 _fail_on_unavailable: bool = False) -> None:
        # Ray's _spill_on_unavailable / _fail_on_unavailable are accepted and unused: soft=True
        # already runs elsewhere when the node cannot, and hard affinity to a dead node fails.
        if not isinstance(node_id, str) or not node_id:
            raise ValueError("NodeAffinitySchedulingStrategy needs a node id (hex string), e.g. from "
                             "runtime.get_runtime_context().get_node_id().")
        self.node_id = node_id
        self.soft = soft


__all__ = ["NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy"]
