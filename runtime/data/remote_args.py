"""Ray Data's per-operator task options (`num_cpus=`, `num_gpus=`, `resources=`, `runtime_env=`,
..., `**ray_remote_args`), in one place for every operator that takes them.

Operators fused into one task per block run with the largest demand of any of them (a
`map_batches(num_gpus=1)` block task asks for a GPU, whatever is fused with it); readers pass
theirs to the read tasks. `ray_remote_args_fn` is called for each task, as Ray does.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

# Ray's keywords for the tasks of an operator, in Ray's order.
KEYWORDS = ("num_cpus", "num_gpus", "memory", "concurrency", "label_selector", "fallback_strategy", "max_calls",
            "resources", "accelerator_type", "runtime_env", "ray_remote_args_fn")
# Accepted and unused: node labels do not steer tasks yet, max_calls does not recycle the
# fused task's worker, and concurrency on a function operator (Ray: at most N tasks at once)
# is left to the streaming window (DataContext.max_blocks_in_flight).
UNUSED = ("concurrency", "label_selector", "fallback_strategy", "max_calls", "accelerator_type")


# A reader's: the same, with `ray_remote_args` a dict keyword (its ** is the pyarrow arguments).
READ_KEYWORDS = tuple(k for k in KEYWORDS if k != "ray_remote_args_fn") + ("ray_remote_args",)


def takes_remote_args(*, keywords: tuple[str, ...] = KEYWORDS, var_name: str | None = "ray_remote_args") -> Callable:
    """Give a function Ray's keyword-only task options; it receives them collected as
    `_remote_args` (a dict of task options). Keywords it names itself (map_batches takes
    `concurrency`) stay its own. var_name: Ray's **name for any other task option (an operator's
    **ray_remote_args); None keeps the function's own ** (a reader's pyarrow arguments)."""
    def wrap(method: Callable) -> Callable:
        sig = inspect.signature(method)
        own_var = [p for p in sig.parameters.values() if p.kind is p.VAR_KEYWORD]
        own = [p for p in sig.parameters.values() if p.name != "_remote_args" and p.kind is not p.VAR_KEYWORD]
        own_names = {p.name for p in own}
        added = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=None)
                 for k in keywords if k not in own_names]
        added_names = {p.name for p in added}
        var = [inspect.Parameter(var_name, inspect.Parameter.VAR_KEYWORD)] if var_name else own_var

        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            taken = {k: kwargs.pop(k) for k in list(kwargs)
                     if k in added_names or (var_name is not None and k not in own_names)}
            extra = taken.pop("ray_remote_args", None) if var_name is None else None
            return method(*args, **kwargs, _remote_args=collect({**(extra or {}), **taken}))

        del call.__wrapped__  # inspect.signature must show the signature below, not the function's
        call.__signature__ = sig.replace(parameters=[*own, *added, *var])  # type: ignore[attr-defined]
        return call
    return wrap


def collect(given: dict[str, Any]) -> dict[str, Any]:
    """Task options from Ray Data's keywords: None and the unused ones dropped."""
    out = {k: v for k, v in given.items() if v is not None and k not in UNUSED}
    fn = out.pop("ray_remote_args_fn", None)
    if fn is not None and not callable(fn):
        raise TypeError(f"ray_remote_args_fn must be a function returning a dict of task options, got {fn!r}.")
    if fn is not None:
        out["_args_fn"] = fn
    return out


def merged(option_sets: list[dict[str, Any]]) -> dict[str, Any]:
    """One task's options for fused operators: the largest of each resource, the last of the rest."""
    out: dict[str, Any] = {}
    for opts in option_sets:
        opts = dict(opts)
        fn = opts.pop("_args_fn", None)
        if fn is not None:
            opts.update(fn())
        for k, v in opts.items():
            if k in ("num_cpus", "num_gpus", "memory"):
                out[k] = max(out.get(k, 0), v)
            elif k == "resources":
                res = dict(out.get("resources") or {})
                for name, amount in v.items():
                    res[name] = max(res.get(name, 0), amount)
                out["resources"] = res
            else:
                out[k] = v
    return out
