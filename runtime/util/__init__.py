"""runtime.util: actor pools, queues, serializers, state listings."""

from __future__ import annotations

from . import state
from .actor_pool import ActorPool
from .serialization import deregister_serializer, inspect_serializability, register_serializer

__all__ = ["ActorPool", "deregister_serializer", "inspect_serializability", "register_serializer", "state"]
