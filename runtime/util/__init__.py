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
           "get_placement_group", "inspect_serializability", "list_named_actors", "metrics", "placement_group",
           "placement_group_table", "register_serializer", "remove_placement_group", "scheduling_strategies",
           "state"]


def list_named_actors(all_namespaces: bool = False) -> list:
    """The live named actors (detached or not), as Ray's: their names in this job's namespace, or
    with `all_namespaces` a {"name": ..., "namespace": ...} per actor of every namespace. On a
    cluster that isolates namespaces (`runtime start --head --isolate-namespaces`) every namespace
    but this job's is left out either way."""
    from .._core.session import ensure_initialized
    cw = ensure_initialized()
    reply, _ = cw.run_sync(cw.gcs_request({"op": "list_named_actors"}))
    if all_namespaces:
        return [{"name": a["name"], "namespace": a["namespace"]} for a in reply["actors"]]
    return [a["name"] for a in reply["actors"] if a["namespace"] == cw.namespace]
