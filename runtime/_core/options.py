"""Validation of @remote / .options() arguments and how they turn into resource demands."""

from __future__ import annotations

import json
import sys
from typing import Any

from .bad_input import check_options

# Every option Ray 2.60 accepts (tests/unit/test_ray_signatures.py checks against Ray's own
# lists). Accepted and unused, because they mean nothing here (docs/ray_compatibility.md):
# accelerator_type, label_selector, fallback_strategy, _labels (node labels select nodes only for
# placement-group bundles so far), object_store_memory (a per-task store quota), _metadata,
# enable_task_events (task events are always kept), generator back-pressure (_generator_*,
# _num_objects_per_yield, _actor_generator_*), tensor transports (GPU-to-GPU),
# allow_out_of_order_execution, max_pending_calls, concurrency_groups / concurrency_group.
COMMON = {"num_cpus", "num_gpus", "memory", "resources", "scheduling_strategy", "runtime_env", "placement_group",
          "placement_group_bundle_index", "placement_group_capture_child_tasks", "accelerator_type", "name",
          "label_selector", "_metadata", "enable_task_events", "fallback_strategy", "_labels", "object_store_memory"}
TASK_OPTIONS = COMMON | {"num_returns", "max_retries", "retry_exceptions", "max_calls",
                         "_generator_backpressure_num_objects", "_num_objects_per_yield"}
ACTOR_OPTIONS = COMMON | {"max_restarts", "max_task_retries", "max_concurrency", "namespace", "lifetime",
                          "get_if_exists", "max_pending_calls", "concurrency_groups", "allow_out_of_order_execution",
                          "enable_tensor_transport", "_actor_generator_backpressure_num_objects"}
METHOD_OPTIONS = {"num_returns", "name", "max_task_retries", "retry_exceptions", "concurrency_group",
                  "enable_task_events", "tensor_transport", "_labels", "_generator_backpressure_num_objects",
                  "_num_objects_per_yield"}


def validate(options: dict, allowed: set[str], what: str) -> dict:
    check_options(options, allowed, what)
    for key in ("num_cpus", "num_gpus", "memory"):
        v = options.get(key)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0):
            raise ValueError(f"{key} must be a non-negative number, got {v!r} (in {what}).")
    res = options.get("resources")
    if res is not None:
        if not isinstance(res, dict):
            raise TypeError(f"resources must be a dict like {{'custom': 1}}, got {type(res).__name__} (in {what}).")
        for k in ("CPU", "GPU", "memory"):
            if k in res:
                raise ValueError(f"Use num_cpus/num_gpus/memory instead of resources={{{k!r}: ...}} (in {what}).")
        for k, v in res.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"Resource {k!r} must be a non-negative number, got {v!r} (in {what}).")
    nr = options.get("num_returns")
    if nr is not None and (not isinstance(nr, int) or isinstance(nr, bool) or nr < 0):
        raise ValueError(f"num_returns must be a non-negative int, got {nr!r} (in {what}).")
    for key in ("max_retries", "max_restarts", "max_task_retries"):
        v = options.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < -1):
            raise ValueError(f"{key} must be an int >= -1 (-1 means infinite), got {v!r} (in {what}).")
    mc = options.get("max_concurrency")
    if mc is not None and (not isinstance(mc, int) or mc < 1):
        raise ValueError(f"max_concurrency must be an int >= 1, got {mc!r} (in {what}).")
    rx = options.get("retry_exceptions")
    if rx is not None and not isinstance(rx, bool):
        if not (isinstance(rx, (list, tuple)) and all(isinstance(t, type) and issubclass(t, BaseException) for t in rx)):
            raise TypeError(f"retry_exceptions must be a bool or a list of exception classes, got {rx!r} (in {what}).")
    lt = options.get("lifetime")
    if lt not in (None, "detached", "non_detached"):
        raise ValueError(f"lifetime must be 'detached' or None, got {lt!r} (in {what}).")
    ss = options.get("scheduling_strategy")
    if ss is not None and ss not in ("DEFAULT", "SPREAD") and not hasattr(ss, "_strategy_kind"):
        raise ValueError(f"scheduling_strategy must be 'DEFAULT', 'SPREAD' or a strategy object from "
                         f"runtime.util.scheduling_strategies, got {ss!r} (in {what}).")
    validate_runtime_env(options.get("runtime_env"))
    return options


def validate_runtime_env(env: Any) -> None:
    from ..runtime_env.spec import validate as validate_env
    validate_env(env)


def demand_of(options: dict, default_cpus: float) -> dict[str, float]:
    d: dict[str, float] = {}
    cpus = options.get("num_cpus")
    d["CPU"] = float(default_cpus if cpus is None else cpus)
    if options.get("num_gpus"):
        d["GPU"] = float(options["num_gpus"])
    if options.get("memory"):
        d["memory"] = float(options["memory"])
    for k, v in (options.get("resources") or {}).items():
        d[k] = float(v)
    return {k: v for k, v in d.items() if v > 0}


# A pending task holds its demand, runtime_env and scheduling key: tasks asking the same share
# one copy (about 230 bytes each otherwise). Nothing changes them after submission.
_NO_ENV: dict = {}
_SHARED_DEMANDS: dict[tuple, dict[str, float]] = {}


def shared_demand(demand: dict[str, float]) -> dict[str, float]:
    """The one dict equal to `demand` (up to 4,096 distinct ones are kept)."""
    key = tuple(demand.items())
    found = _SHARED_DEMANDS.get(key)
    if found is None and len(_SHARED_DEMANDS) < 4096:
        found = _SHARED_DEMANDS[key] = demand
    return demand if found is None else found


def env_of(options: dict, job_env: dict | None, cw: Any = None) -> dict:
    """The resolved runtime_env a task or actor runs in (runtime/runtime_env/spec.py): the job's,
    overridden key by key by its own options' (env_vars merged)."""
    task_env = options.get("runtime_env")
    if not task_env:
        return job_env or _NO_ENV
    from ..runtime_env.driver import resolve_env
    from ..runtime_env.spec import merge
    return merge(job_env, resolve_env(cw, task_env))


def sched_key(demand: dict, env: dict, strategy: Any = None) -> str:
    return sys.intern(json.dumps([sorted(demand.items()), env, strategy], sort_keys=True))


def strategy_of(options: dict) -> Any:
    """The scheduling strategy as node managers and the control store read it: None (DEFAULT),
    "SPREAD" or ["node", node_id, soft]. Placement groups are handled by resolve_placement."""
    ss = options.get("scheduling_strategy")
    if ss == "SPREAD":
        return "SPREAD"
    if getattr(ss, "_strategy_kind", "") == "node_affinity":
        return ["node", ss.node_id, bool(ss.soft)]
    return None


def resolve_placement(options: dict, demand: dict[str, float], cw: Any) -> tuple[dict[str, float], list | None]:
    """A task or actor placed in a placement group asks for the group's resources instead of
    plain ones (see runtime/node/resources.py). Returns (demand, what its children inherit):
    with capture_child_tasks, the tasks it submits go into the same group."""
    from ..node.resources import demand_in_group
    ss = options.get("scheduling_strategy")
    pg = options.get("placement_group")
    index = options.get("placement_group_bundle_index", -1)
    capture = options.get("placement_group_capture_child_tasks")
    if getattr(ss, "_strategy_kind", "") == "placement_group":
        pg, index, capture = ss.placement_group, ss.placement_group_bundle_index, ss.placement_group_capture_child_tasks
    elif pg == "default":
        pg = None
    if pg is not None:
        group = [pg.id, pg.bundle_specs, pg.strategy, pg.name]
    elif ss is None and cw.mode == "worker" and getattr(cw, "current_pg", None):
        # The group this task runs in, captured for its children: [id, bundles, strategy, name],
        # read as it is (a PlacementGroup object is runtime.util's, above this module).
        group, index, capture = list(cw.current_pg), -1, True
    else:
        return demand, None
    pg_id, bundles = group[0], group[1]
    if not isinstance(index, int) or not -1 <= index < len(bundles):
        raise ValueError(f"placement_group_bundle_index must be -1 (any bundle) or 0..{len(bundles) - 1}, got {index!r}.")
    candidates = bundles if index < 0 else [bundles[index]]
    if not any(all(b.get(k, 0.0) + 1e-9 >= v for k, v in demand.items()) for b in candidates):
        where = "any bundle" if index < 0 else f"bundle {index} ({bundles[index]})"
        raise ValueError(f"This task or actor asks for {demand}, more than {where} of placement group "
                         f"{pg_id[:12]} holds (bundles: {bundles}); ask for less or make the bundles bigger.")
    inherit = group if capture else None
    return demand_in_group(demand, pg_id, index), inherit
