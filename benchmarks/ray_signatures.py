"""Write Ray's signatures of the public API in ../shared/design/API.md to a JSON file.

Run with Ray's interpreter (`make ray-signatures`, which uses .venv-ray):

    .venv-ray/bin/python benchmarks/ray_signatures.py tests/data/ray_signatures.json

tests/unit/test_ray_signatures.py reads the checked-in file and checks that every keyword Ray
accepts is accepted by ours, so the comparison is with what Ray really has, not with a reading
of its docs, and it cannot drift while the file is regenerated for a new Ray version.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
import typing

# Ray's dotted names, by where they live. "a.b.C.m" is the method m of class C.
FUNCTIONS = [
    *(f"ray.{n}" for n in ("init", "shutdown", "is_initialized", "get", "put", "wait", "cancel", "kill", "get_actor",
                           "nodes", "cluster_resources", "available_resources", "get_gpu_ids", "get_runtime_context")),
    *(f"ray.runtime_context.RuntimeContext.{n}" for n in (
        "get_job_id", "get_node_id", "get_task_id", "get_actor_id", "get_assigned_resources")),
    "ray.util.placement_group", "ray.util.placement_group_table", "ray.util.remove_placement_group",
    "ray.util.get_placement_group", "ray.util.placement_group.PlacementGroup.ready",
    "ray.util.placement_group.PlacementGroup.wait",
    "ray.util.scheduling_strategies.PlacementGroupSchedulingStrategy.__init__",
    "ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy.__init__",
    "ray.util.ActorPool.__init__",
    *(f"ray.util.ActorPool.{n}" for n in ("map", "map_unordered", "submit", "get_next", "get_next_unordered",
                                          "has_next", "has_free", "push", "pop_idle")),
    "ray.util.queue.Queue.__init__",
    *(f"ray.util.queue.Queue.{n}" for n in ("put", "get", "put_async", "get_async", "put_nowait", "get_nowait",
                                            "put_nowait_batch", "get_nowait_batch", "qsize", "size", "empty", "full",
                                            "shutdown")),
    *(f"ray.util.metrics.{c}.{m}" for c in ("Counter", "Gauge", "Histogram") for m in ("__init__", "set_default_tags")),
    "ray.util.metrics.Counter.inc", "ray.util.metrics.Gauge.set", "ray.util.metrics.Histogram.observe",
    "ray.util.register_serializer", "ray.util.deregister_serializer", "ray.util.inspect_serializability",
    *(f"ray.util.state.{n}" for n in ("list_nodes", "list_tasks", "list_actors", "list_objects",
                                      "list_placement_groups", "list_jobs", "summarize_tasks")),
    "ray.util.dask.ray_dask_get", "ray.util.dask.enable_dask_on_ray", "ray.util.dask.disable_dask_on_ray",
    *(f"ray.data.{n}" for n in ("range", "from_items", "from_pandas", "from_arrow", "from_numpy", "read_parquet",
                                "read_csv", "read_json", "from_dask")),
    "ray.data.ActorPoolStrategy.__init__",
    *(f"ray.data.Dataset.{n}" for n in (
        "map", "map_batches", "flat_map", "filter", "add_column", "drop_columns", "select_columns", "repartition",
        "random_shuffle", "sort", "groupby", "union", "zip", "limit", "split", "split_at_indices", "take", "take_all",
        "take_batch", "show", "count", "schema", "sum", "min", "max", "mean", "std", "aggregate", "iter_rows",
        "iter_batches", "to_pandas", "to_arrow_refs", "to_dask", "write_parquet", "write_csv", "write_json",
        "materialize", "stats")),
    *(f"ray.data.grouped_data.GroupedData.{n}" for n in ("count", "sum", "min", "max", "mean", "std", "aggregate",
                                                         "map_groups")),
    *(f"ray.data.aggregate.{n}.__init__" for n in ("AggregateFn", "Count", "Sum", "Min", "Max", "Mean", "Std")),
    "ray.job_submission.JobSubmissionClient.__init__",
    *(f"ray.job_submission.JobSubmissionClient.{n}" for n in (
        "submit_job", "get_job_status", "get_job_info", "get_job_logs", "tail_job_logs", "stop_job", "list_jobs",
        "delete_job")),
]

# Names that must exist (classes users catch or compare with), with no signature to compare.
NAMES = [
    *(f"ray.exceptions.{n}" for n in (
        "RayTaskError", "RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError",
        "NodeDiedError", "ObjectLostError", "OwnerDiedError", "ObjectReconstructionFailedError", "GetTimeoutError",
        "TaskCancelledError", "OutOfMemoryError", "ObjectStoreFullError", "RuntimeEnvSetupError", "RayError")),
    "ray.util.queue.Empty", "ray.util.queue.Full", "ray.ObjectRef", "ray.method", "ray.remote",
    "ray.job_submission.JobStatus", "ray.data.aggregate.AggregateFnV2",
]


def resolve(dotted: str):
    """The object at a dotted name: attributes of the shortest importable module that has them
    (so "ray.util.placement_group" is the function that ray.util exports, not its module)."""
    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
            for attr in parts[i:]:
                obj = getattr(obj, attr)
            return obj
        except (ImportError, AttributeError):
            continue
    raise ImportError(dotted)


def describe(fn) -> list[dict]:
    sig = inspect.signature(inspect.unwrap(fn))
    return [{"name": p.name, "kind": p.kind.name, "required": p.default is inspect.Parameter.empty}
            for p in sig.parameters.values() if p.name != "self"]


def method_decorator_options() -> list[str]:
    """@ray.method(...) takes **kwargs; its keywords are those of its last overload."""
    import ray.actor
    overloads = typing.get_overloads(ray.actor.method)
    return sorted(p for o in overloads for p in inspect.signature(o).parameters if not p.startswith("__"))


def state_schemas() -> dict:
    """The columns of Ray's state API rows (what `ray list X` and `/api/v0/X` give), for
    runtime/_core/ray_state.py: without --detail, the added --detail ones, and the filterable."""
    from ray.util.state.common import StateResource, resource_to_schema
    out = {}
    for resource in ("actors", "jobs", "nodes", "placement_groups", "workers", "tasks", "objects"):
        schema = resource_to_schema(StateResource(resource))
        basic = schema.list_columns(detail=False)
        out[resource] = {"columns": basic,
                         "detail_columns": [c for c in schema.list_columns(detail=True) if c not in basic],
                         "filterable": sorted(schema.filterable_columns())}
    return out


def main(out: str) -> None:
    import ray
    from ray._common import ray_option_utils
    from ray.actor import ActorMethod

    method_call = [p for p in inspect.signature(ActorMethod._remote).parameters if p not in ("self", "args", "kwargs")]
    data = {
        "ray_version": ray.__version__,
        "functions": {name: describe(resolve(name)) for name in FUNCTIONS},
        "names": sorted(NAMES),
        "options": {
            "task": sorted(ray_option_utils.task_options),
            "actor": sorted(ray_option_utils.actor_options),
            "method_call": sorted(method_call),  # handle.m.options(...)
            "method_decorator": method_decorator_options(),  # @ray.method(...)
        },
        "state_schemas": state_schemas(),
    }
    for name in NAMES:
        resolve(name)  # fail here, not in the test, if Ray renamed one
    with open(out, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {len(data['functions'])} signatures of Ray {ray.__version__} to {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/ray_signatures.json")
