"""Dask on the runtime (Ray's `ray.util.dask`): a Dask scheduler that runs each task of a Dask
graph (delayed, array, dataframe, bag) as a runtime task, with the results in the object store.

    import dask
    from runtime.util.dask import enable_dask_on_runtime, runtime_dask_get

    df.groupby("k").x.mean().compute(scheduler=runtime_dask_get)
    enable_dask_on_runtime()                      # every compute() from now on
    df = dask.persist(df, scheduler=runtime_dask_get, runtime_persist=True)[0]

How: the graph is converted to Dask's task spec (`dask._task_spec`), walked in dependency
order, and each task node is submitted with its dependencies' ObjectRefs as arguments, so
the runtime schedules it when they are ready and hands it the values (large ones zero-copy
from shared memory). Data embedded in the graph (a `from_pandas` partition, say) is put into
the object store once. Only the values asked for come back to the driver; with
`runtime_persist=True` (or Ray's `ray_persist=True`) they stay in the store and the returned
collections hold ObjectRefs, which later graphs run on this scheduler use directly.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable, Mapping
from typing import Any

from .._core.object_ref import ObjectRef

__all__ = ["disable_dask_on_runtime", "enable_dask_on_runtime", "runtime_dask_get", "ray_dask_get",
           "enable_dask_on_ray", "disable_dask_on_ray"]

_INLINE_BYTES = 100_000  # graph data smaller than this travels with each task instead of being put


def runtime_dask_get(dsk: Mapping, keys: Any, *, runtime_persist: bool = False, ray_persist: bool = False,
                     optimize_graph: bool = True, **_dask_kwargs: Any) -> Any:
    """The scheduler: `compute(scheduler=runtime_dask_get)`. Returns the values of `keys` (the
    same nesting of lists), or ObjectRefs to them when persisting. optimize_graph=False runs
    every task of the graph as it is (no fusing of linear chains)."""
    import runtime
    from dask._task_spec import Alias, DataNode, convert_legacy_graph, fuse_linear_task_spec

    if not isinstance(dsk, Mapping):  # newer Dask hands schedulers an expression
        dsk = dsk.__dask_graph__()
    graph = convert_legacy_graph(dsk)
    if optimize_graph:
        # Chains of tasks that each feed only the next become one task, as Dask's own process
        # scheduler fuses them (dask.multiprocessing): each task here is a round trip to a worker
        # and a pickled result, where the threaded scheduler passes a pointer. Data nodes are
        # kept out of the chains (passed as keys not to fuse): fused in, a 4 MB partition would
        # be pickled into the task instead of put once.
        data = {k for k, n in graph.items() if isinstance(n, DataNode)}
        graph = fuse_linear_task_spec(graph, set(_flatten(keys)) | data)
    refs: dict[Hashable, Any] = {}  # key -> ObjectRef, or a small value passed as it is
    for key in _toposort(graph):
        node = graph[key]
        if isinstance(node, DataNode):
            refs[key] = _data(node.value)
        elif isinstance(node, Alias):
            refs[key] = refs[node.target]
        else:
            deps = sorted(node.dependencies, key=repr)
            refs[key] = _executor().options(name=_task_name(key)).remote(node, deps, *[refs[d] for d in deps])
    wanted = _flatten(keys)
    if runtime_persist or ray_persist:
        return _pack(keys, {k: refs[k] if isinstance(refs[k], ObjectRef) else runtime.put(refs[k]) for k in wanted})
    out = [refs[k] for k in wanted]
    pending = [r for r in out if isinstance(r, ObjectRef)]
    values = dict(zip(map(id, pending), runtime.get(pending)))
    return _pack(keys, {k: values[id(r)] if isinstance(r, ObjectRef) else r for k, r in zip(wanted, out)})


def _run_node(node: Any, deps: list, *values: Any) -> Any:
    """In a worker: run one Dask task node with its dependencies' values."""
    return node(dict(zip(deps, values)))


def _data(value: Any) -> Any:
    """Graph data: an ObjectRef (persisted earlier) as it is, a large value put once."""
    import runtime
    if isinstance(value, ObjectRef):
        return value
    nbytes = getattr(value, "nbytes", None)
    if nbytes is None and hasattr(value, "memory_usage"):  # pandas: 8 bytes a cell is close enough to choose
        try:  # (DataFrame.memory_usage took ~0.25 ms a partition, more than the rest of the choice)
            nbytes = 8 * int(value.size)
        except (TypeError, ValueError, AttributeError):
            nbytes = None
    if nbytes is None:
        nbytes = sys.getsizeof(value)
    return runtime.put(value) if nbytes >= _INLINE_BYTES else value


def _toposort(graph: Mapping) -> list:
    """Keys in an order where each comes after its dependencies (Kahn's algorithm)."""
    waiting = {k: set(getattr(n, "dependencies", ()) or ()) for k, n in graph.items()}
    dependents: dict[Hashable, list] = {}
    for k, deps in waiting.items():
        missing = deps - graph.keys()
        if missing:
            raise ValueError(f"Dask graph task {k!r} depends on {sorted(map(repr, missing))[:3]}, which the graph "
                             "does not contain.")
        for d in deps:
            dependents.setdefault(d, []).append(k)
    ready = [k for k, deps in waiting.items() if not deps]
    order = []
    while ready:
        k = ready.pop()
        order.append(k)
        for child in dependents.get(k, ()):
            waiting[child].discard(k)
            if not waiting[child]:
                ready.append(child)
    if len(order) != len(graph):
        raise ValueError("The Dask graph has a cycle; it cannot be run.")
    return order


def _flatten(keys: Any) -> list:
    if isinstance(keys, list):
        return [k for sub in keys for k in _flatten(sub)]
    return [keys]


def _pack(keys: Any, values: dict) -> Any:
    if isinstance(keys, list):
        return [_pack(k, values) for k in keys]
    return values[keys]


def _task_name(key: Any) -> str:
    name = key[0] if isinstance(key, tuple) and key else key
    return f"dask:{str(name).rsplit('-', 1)[0]}"


_EXECUTOR: Any = None


def _executor() -> Any:
    """`_run_node` as a remote function, made on first use (importing this module does not
    start a cluster)."""
    global _EXECUTOR
    if _EXECUTOR is None:
        import runtime
        _EXECUTOR = runtime.remote(max_retries=3)(_run_node)
    return _EXECUTOR


def enable_dask_on_runtime(shuffle: str = "tasks", use_shuffle_optimization: bool = True) -> Any:
    """Make the runtime Dask's default scheduler, with task-based shuffles (returns Dask's config
    context, so it can also be used as `with enable_dask_on_runtime(): ...`). Ray's
    use_shuffle_optimization is accepted and unused: Dask's own task shuffle runs as it is."""
    import dask
    return dask.config.set({"scheduler": runtime_dask_get, "dataframe.shuffle.method": shuffle})


def disable_dask_on_runtime() -> Any:
    import dask
    return dask.config.set({"scheduler": None, "dataframe.shuffle.method": None})


# Ray's names, so that `import runtime as ray; from ray.util.dask import ray_dask_get` runs.
ray_dask_get = runtime_dask_get
enable_dask_on_ray = enable_dask_on_runtime
disable_dask_on_ray = disable_dask_on_runtime
