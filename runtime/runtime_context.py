"""Ray's module path for the runtime context (`from ray.runtime_context import RuntimeContext`)."""

from ._core.context import RuntimeContext, get_runtime_context

__all__ = ["RuntimeContext", "get_runtime_context"]
