"""Orrery's distributed runtime, with Ray's public API: `import runtime as ray`.

The names below are loaded on first use (PEP 562), so the daemons that live in this
package (`runtime.gcs`, `runtime.node`) do not pay for the driver API's imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ActorClass": "._core.actor", "ActorHandle": "._core.actor", "method": "._core.actor",
    "ObjectRef": "._core.object_ref", "get_runtime_context": "._core.context",
    **{name: "._core.api" for name in (
        "available_resources", "cancel", "cluster_resources", "get", "get_actor", "get_gpu_ids", "init",
        "is_initialized", "kill", "nodes", "put", "remote", "shutdown", "wait")},
}
_MODULES = {"exceptions", "util"}

__all__ = sorted([*_EXPORTS, *_MODULES])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    elif name in _MODULES:
        value = importlib.import_module("." + name, __name__)
    else:
        raise AttributeError(f"module 'runtime' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from . import exceptions, util
    from ._core.actor import ActorClass, ActorHandle, method
    from ._core.api import (available_resources, cancel, cluster_resources, get, get_actor, get_gpu_ids, init,
                            is_initialized, kill, nodes, put, remote, shutdown, wait)
    from ._core.context import get_runtime_context
    from ._core.object_ref import ObjectRef
