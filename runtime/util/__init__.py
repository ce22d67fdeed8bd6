"""runtime.util: actor pools, queues, serializers, state listings."""

from __future__ import annotations

from . import metrics, scheduling_strategies, state
from .actor_pool import ActorPool
from .placement_group import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from .serialization import deregister_serializer, inspect_serializability, register_serializer

__all__ = ["ActorPool", "PlacementGroup", "deregister_serializer", "get_current_placement_group",
           "get_placement_group", "inspect_serializability", "metrics", "placement_group", "placement_group_table",
           "register_serializer", "remove_placement_group", "scheduling_strategies", "state"]
