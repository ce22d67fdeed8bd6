"""Orrery's distributed runtime, with Ray's public API: `import runtime as ray`."""

from __future__ import annotations

from . import exceptions
from ._core.actor import ActorClass, ActorHandle, method
from ._core.api import (
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    get_gpu_ids,
    init,
    is_initialized,
    kill,
    nodes,
    put,
    remote,
    shutdown,
    wait,
)
from ._core.context import get_runtime_context
from ._core.object_ref import ObjectRef

__version__ = "0.1.0"

__all__ = [
    "ActorClass", "ActorHandle", "ObjectRef", "available_resources", "cancel", "cluster_resources", "exceptions",
    "get", "get_actor", "get_gpu_ids", "get_runtime_context", "init", "is_initialized", "kill", "method", "nodes",
    "put", "remote", "shutdown", "wait",
]
