"""The public core API: remote/get/put/wait/cancel/kill/... (sync shells over the core worker);
init, shutdown and is_initialized are session.py's."""

from __future__ import annotations

import time
from typing import Any

from . import api_state, cluster_info, launcher, worker_state
from .actor import ActorClass, ActorHandle
from .object_ref import ObjectRef
from .remote_function import RemoteFunction
from .session import ensure_initialized, init, is_initialized, shutdown

__all__ = ["add_local_nodes", "available_resources", "cancel", "cluster_resources", "get", "get_actor",
           "get_gpu_ids", "init", "is_initialized", "kill", "nodes", "put", "remote", "shutdown", "wait"]


def remote(*args: Any, **options: Any) -> Any:
    """Make a function a remote function, or a class an actor class.

    Example:
        >>> @runtime.remote
        ... def square(x):
        ...     return x * x
        >>> runtime.get([square.remote(i) for i in range(4)])
        [0, 1, 4, 9]
    """
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("@runtime.remote takes either a function/class or keyword options, e.g. "
                        "@runtime.remote(num_cpus=2).")
    return lambda obj: _make_remote(obj, options)


def _make_remote(obj: Any, options: dict) -> Any:
    if isinstance(obj, type):
        return ActorClass(obj, options)
    if callable(obj):
        return RemoteFunction(obj, options)
    raise TypeError(f"@runtime.remote must decorate a function or a class, not {type(obj).__name__}.")


def _check_refs(refs: Any, what: str) -> tuple[list[ObjectRef], bool]:
    if isinstance(refs, ObjectRef):
        return [refs], True
    if isinstance(refs, (list, tuple)):
        bad = [r for r in refs if not isinstance(r, ObjectRef)]
        if bad:
            raise TypeError(f"{what} expects ObjectRefs, but the list contains {type(bad[0]).__name__} "
                            f"{bad[0]!r:.60}. Pass the refs returned by .remote() or put().")
        return list(refs), False
    raise TypeError(f"{what} expects an ObjectRef or a list of ObjectRefs, got {type(refs).__name__} "
                    f"{refs!r:.60}. Pass the refs returned by .remote() or put().")


def get(object_refs: Any, *, timeout: float | None = None, _use_object_store: bool = False) -> Any:
    """Block until the values are ready and return them (a list for a list).

    Raises the task's exception (`TaskError`, also an instance of the original class),
    or `GetTimeoutError` after `timeout` seconds. `_use_object_store` (Ray's client mode) is
    accepted and unused: values on this node are always read from the shared-memory store.
    """
    refs, single = _check_refs(object_refs, "runtime.get()")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout < 0):
        raise ValueError(f"timeout must be a non-negative number of seconds or None, got {timeout!r}.")
    values = ensure_initialized().get(refs, timeout)
    return values[0] if single else values


def put(value: Any, *, _owner: ActorHandle | None = None, _tensor_transport: str | None = None) -> ObjectRef:
    """Store `value` in the cluster and return a ref to it. Ray's `_owner` (an actor to own the
    object) and `_tensor_transport` (GPU tensor transports) are accepted and unused: the caller
    owns what it puts, and the object lives while refs to it exist."""
    return ensure_initialized().put(value)


def wait(ray_waitables: list, *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True) -> tuple[list, list]:
    """Return (ready, not_ready) once `num_returns` refs are ready or `timeout` passed; order is kept.
    (The first parameter has Ray's name, `ray_waitables`: a list of ObjectRefs.)"""
    if isinstance(ray_waitables, ObjectRef):
        raise TypeError("wait() expects a list of ObjectRefs, got a single ObjectRef; use wait([ref]).")
    refs, _ = _check_refs(ray_waitables, "runtime.wait()")
    if len(set(refs)) != len(refs):
        raise ValueError("wait() got the same ObjectRef more than once; pass each ref once.")
    if not isinstance(num_returns, int) or num_returns < 1 and refs or num_returns > len(refs):
        raise ValueError(f"num_returns must be between 1 and the number of refs ({len(refs)}), got {num_returns!r}.")
    if not refs:
        return [], []
    return ensure_initialized().wait(refs, num_returns, timeout)


def cancel(ray_waitable: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that returns `ray_waitable` (an ObjectRef; Ray's name for it); `get` then
    raises TaskCancelledError."""
    object_ref = ray_waitable
    if not isinstance(object_ref, ObjectRef):
        raise TypeError(f"cancel() expects an ObjectRef returned by .remote(), got {type(object_ref).__name__}.")
    cw = ensure_initialized()
    spec = cw.tasks.get(object_ref._id)
    if force and spec is not None and spec.actor_id:
        raise ValueError("force=True is not supported for actor tasks; use runtime.kill(actor) to stop the actor.")
    cw.cancel(object_ref, force, recursive)


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Stop an actor's process now. With no_restart=False it is restarted (if max_restarts allows)."""
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() expects an actor handle, got {type(actor).__name__}. For tasks use runtime.cancel().")
    cw = ensure_initialized()
    cw.run_sync(cw.gcs_request({"op": "kill_actor", "actor_id": actor._actor_id, "no_restart": no_restart}))


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of the named actor `name` in `namespace` (default: this job's)."""
    if not isinstance(name, str) or not name:
        raise ValueError("get_actor() needs the actor's name as a non-empty string.")
    cw = ensure_initialized()
    reply, _ = cw.run_sync(cw.gcs_request({"op": "get_actor", "name": name, "namespace": namespace or cw.namespace}))
    meta = reply["meta"]
    cw.subscribe_actor_nowait(reply["actor_id"], meta.get("max_task_retries", 0))
    return ActorHandle(reply["actor_id"], meta)


def nodes() -> list[dict]:
    """The cluster's nodes, in Ray's format."""
    return cluster_info.nodes(ensure_initialized())


def cluster_resources() -> dict[str, float]:
    """Total resources of all alive nodes."""
    return cluster_info.cluster_resources(ensure_initialized())


def available_resources() -> dict[str, float]:
    """Resources not currently held by tasks, actors or reservations."""
    return cluster_info.available_resources(ensure_initialized())


def add_local_nodes(count: int, *, num_cpus: float | None = None, object_store_memory: int | None = None,
                    timeout: float = 30) -> list[str]:
    """More node managers for the embedded cluster this driver started (`%cluster start --nodes K`);
    returns their node ids once they have joined."""
    cluster = api_state.cluster
    if cluster is None:
        raise RuntimeError("Only an embedded cluster (runtime.init() without an address) can grow from here; "
                           "add nodes to a running cluster with `runtime start --address HOST:PORT`.")
    ids = [launcher.add_node(cluster, num_cpus=num_cpus, object_store_memory=object_store_memory)["node_id"]
           for _ in range(count)]
    deadline = time.monotonic() + timeout
    while not set(ids) <= {n["NodeID"] for n in nodes() if n["Alive"]}:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} new node(s) did not join within {timeout} s; see {cluster.session_dir}/logs")
        time.sleep(0.05)  # polling a condition with a deadline
    return ids


def get_gpu_ids() -> list[int]:
    """GPU ids assigned to the current task or actor (matches CUDA_VISIBLE_DEVICES)."""
    return list(worker_state.current().gpu_ids)


def _internal_addresses() -> dict:
    """TCP addresses of the control store and the local node manager (for tests and tools)."""
    cw = worker_state.current()
    info = api_state.cluster.info() if api_state.cluster else launcher.read_current_cluster() or {}
    gcs = cw.gcs_address.removeprefix("tcp:").rsplit(":", 1)
    out = {"gcs": (gcs[0], int(gcs[1]))}
    nm = info.get("node_tcp_address") or ""
    if nm:
        h, p = nm.removeprefix("tcp:").rsplit(":", 1)
        out["node_manager"] = (h, int(p))
    return out
