"""The public core API: init/shutdown/get/put/wait/cancel/kill/... (sync shells over the core worker)."""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
import time
import uuid
from typing import Any

from ..config import SystemConfig, cluster_address_from_env
from ..rpc import tls
from . import api_state, launcher, worker_state
from .actor import ActorClass, ActorHandle
from .context import ClusterContext
from .core_worker import CoreWorker
from .object_ref import ObjectRef
from ..runtime_env.spec import require_uploaded
from .options import validate_runtime_env
from .remote_function import RemoteFunction

logger = logging.getLogger("runtime")
_init_lock = threading.Lock()


def is_initialized() -> bool:
    return worker_state.current_or_none() is not None


def init(address: str | None = None, *, num_cpus: float | None = None, num_gpus: float | None = None,
         resources: dict | None = None, labels: dict | None = None, object_store_memory: int | None = None,
         local_mode: bool = False, ignore_reinit_error: bool = False, include_dashboard: bool | None = None,
         dashboard_host: str = "127.0.0.1", dashboard_port: int | None = None, job_config: Any = None,
         configure_logging: bool = True, logging_level: int | str = "info", logging_format: str | None = None,
         logging_config: Any = None, log_to_driver: bool = True, namespace: str | None = None,
         runtime_env: dict | None = None, enable_resource_isolation: bool = False, cgroup_path: str | None = None,
         system_reserved_cpu: float | None = None, system_reserved_memory: int | None = None,
         proxy_server_url: str | None = None, _system_config: dict | None = None, **kwargs: Any) -> ClusterContext:
    """Start or join a cluster. The parameters are Ray's, in Ray's order.

    Args:
        address: None starts an embedded cluster owned by this process; "auto" joins the
            cluster started on this machine with `runtime start --head`; "HOST:PORT" joins
            the cluster whose control store listens there.
        labels: the embedded cluster's node labels.
        include_dashboard, dashboard_host, dashboard_port: an embedded cluster's dashboard
            (Ray's job REST API, runtime/dashboard), started on first use; by default on
            127.0.0.1:8265, or the next free port when that is taken and no port was asked for.
        job_config: a Ray `JobConfig`; its runtime_env and ray_namespace are used when the
            runtime_env and namespace arguments are not given.
        logging_level, logging_format: the level (and, if given, the format) of the
            "runtime" logger in this process, when configure_logging is true.
        local_mode, logging_config, enable_resource_isolation, cgroup_path,
        system_reserved_cpu, system_reserved_memory, proxy_server_url: accepted as Ray's and
            unused (docs/ray_compatibility.md says why); local_mode=True logs a warning.

    Example:
        >>> import runtime
        >>> ctx = runtime.init(num_cpus=2)
        >>> runtime.get(runtime.put(41)) + 1
        42
        >>> runtime.shutdown()
    """
    metrics_export_port = kwargs.pop("_metrics_export_port", None)  # Ray's private init() argument
    if kwargs:
        raise ValueError(f"Unknown argument(s) to init(): {', '.join(sorted(kwargs))}. See help(runtime.init).")
    if configure_logging:
        _configure_logging(logging_level, logging_format)
    if local_mode:
        logger.warning("init(local_mode=True) is not supported (Ray deprecated it); tasks run in worker processes "
                       "as usual. To debug a task, call the function itself: f._function(...).")
    if job_config is not None:
        runtime_env = runtime_env if runtime_env is not None else getattr(job_config, "runtime_env", None) or None
        namespace = namespace or getattr(job_config, "ray_namespace", None)
    # The dashboard (runtime/dashboard) starts on first use, so it costs init() one bind.
    ops = {"dashboard": {"enabled": include_dashboard is not False, "host": dashboard_host, "port": dashboard_port},
           "metrics_export_port": metrics_export_port}
    with _init_lock:
        if is_initialized():
            if ignore_reinit_error:
                return api_state.context
            raise RuntimeError("runtime.init() was called twice in this process. Call runtime.shutdown() first, "
                               "or pass ignore_reinit_error=True to reuse the running cluster.")
        if num_cpus is not None and (not isinstance(num_cpus, (int, float)) or num_cpus < 0):
            raise ValueError(f"num_cpus must be a non-negative number, got {num_cpus!r}.")
        if num_gpus is not None and (not isinstance(num_gpus, (int, float)) or num_gpus < 0):
            raise ValueError(f"num_gpus must be a non-negative number, got {num_gpus!r}.")
        if resources is not None and not isinstance(resources, dict):
            raise TypeError(f"resources must be a dict like {{'custom': 1}}, got {type(resources).__name__}.")
        validate_runtime_env(runtime_env)
        config = SystemConfig.resolve(_system_config)
        address = address or cluster_address_from_env()
        if address is not None and address.startswith("client://"):
            require_uploaded(runtime_env)
            return _init_client(address, namespace, runtime_env, config,
                                any(v is not None for v in (num_cpus, num_gpus, resources, object_store_memory)))
        cluster = None
        if address is None:
            cluster = launcher.start_cluster(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                                             object_store_memory=object_store_memory, config=config, labels=labels,
                                             ops=ops)
            info = cluster.info()
        else:
            if any(v is not None for v in (num_cpus, num_gpus, resources, object_store_memory, labels)):
                raise ValueError("num_cpus, num_gpus, resources, labels and object_store_memory describe a new "
                                 "cluster; they cannot be given when joining an existing one (address=...).")
            info = _find_cluster(address)
        ns = namespace or uuid.uuid4().hex
        cw = CoreWorker(mode="driver", worker_id=uuid.uuid4().hex, token=info["token"],
                        session_dir=info["session_dir"], node_address=info["node_address"],
                        gcs_address=info["gcs_address"], config=config, namespace=ns,
                        sock_dir=info.get("sock_dir", ""), node_ip=info.get("node_ip", "127.0.0.1"))
        cw.current_cell = api_state.current_cell  # set by the notebook extension, if loaded
        worker_state.set_current(cw)
        api_state.cluster = cluster
        try:
            cw.start_loop_thread()
            cw.run_sync(_connect_driver(cw, ns), timeout=config.startup_timeout_s + 5)
        except BaseException as e:
            _teardown()
            logs = os.path.join(info["session_dir"], "logs")
            raise ConnectionError(f"Could not start or join the cluster ({type(e).__name__}: {e}). "
                                  f"See the logs in {logs}.") from e
        try:  # packs and uploads a working_dir / py_modules once for the whole job
            api_state.job_runtime_env = _job_runtime_env(cw, runtime_env)
        except BaseException:
            _teardown()
            raise
        address_info = {"address": info["gcs_address"].removeprefix("tcp:"), "gcs_address": info["gcs_address"],
                        "node_address": info["node_address"], "session_dir": info["session_dir"],
                        "node_id": cw.node_id, "object_store_address": cw.shm_dir,
                        "metrics_export_port": cw.metrics_export_port}
        dashboard = ((info.get("ops") or {}).get("dashboard") or {}).get("url")
        # As Ray's: HOST:PORT without the scheme.
        address_info["webui_url"] = tls.strip_scheme(dashboard) if dashboard else None
        api_state.context = ClusterContext(address_info, cw.node_id, ns, {})
        api_state.context.dashboard_url = address_info["webui_url"]
        atexit.register(shutdown)
        return api_state.context


def _job_runtime_env(cw: CoreWorker, runtime_env: dict | None) -> dict:
    """The job's resolved runtime_env. A job submitted with a runtime_env (the job server sets
    RUNTIME_JOB_RUNTIME_ENV) combines it with init()'s as Ray does: the same key or env var in
    both is an error unless RUNTIME_OVERRIDE_JOB_RUNTIME_ENV=1 (Ray's RAY_OVERRIDE_...) lets
    init()'s win."""
    from ..runtime_env.driver import resolve_env
    from ..runtime_env.spec import merge
    mine = resolve_env(cw, runtime_env)
    injected = os.environ.get("RUNTIME_JOB_RUNTIME_ENV")
    if not injected:
        return mine
    job_env = json.loads(injected)
    override = "1" in (os.environ.get("RUNTIME_OVERRIDE_JOB_RUNTIME_ENV"), os.environ.get("RAY_OVERRIDE_JOB_RUNTIME_ENV"))
    clash = (set(job_env) & set(mine)) - {"env_vars"}
    clash |= {f"env_vars[{k!r}]" for k in set(job_env.get("env_vars") or {}) & set(mine.get("env_vars") or {})}
    if clash and not override:
        raise ValueError(f"init(runtime_env=...) sets {sorted(clash)}, which the submitted job's runtime_env "
                         "sets too. Set each in one place, or set RUNTIME_OVERRIDE_JOB_RUNTIME_ENV=1 to let "
                         "init()'s win.")
    return merge(job_env, mine)


def _configure_logging(level: int | str, fmt: str | None) -> None:
    """Ray's logging_level / logging_format, for this process's "runtime" logger."""
    log = logging.getLogger("runtime")
    log.setLevel(level.upper() if isinstance(level, str) else level)
    if fmt is not None and not any(getattr(h, "_from_init", False) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(fmt))
        handler._from_init = True  # type: ignore[attr-defined]
        log.addHandler(handler)


def _init_client(address: str, namespace: str | None, runtime_env: dict | None, config: SystemConfig,
                 shaped: bool) -> ClusterContext:
    """A thin client: everything goes through the head's client server (runtime/client)."""
    from ..client.worker import connect_client
    if shaped:
        raise ValueError("num_cpus, num_gpus, resources and object_store_memory describe a new cluster; "
                         "they cannot be given when connecting to one (address='client://...').")
    cw = connect_client(address, namespace, runtime_env, config)
    cw.current_cell = api_state.current_cell
    worker_state.set_current(cw)
    api_state.job_runtime_env = runtime_env
    address_info = {"address": address, "gcs_address": cw.gcs_address, "session_dir": cw.session_dir,
                    "node_id": cw.node_id, "client": True}
    api_state.context = ClusterContext(address_info, cw.node_id, cw.namespace, {})
    atexit.register(shutdown)
    return api_state.context


def _driver_kind() -> str:
    """What kind of driver this process is, for job lists: "notebook" (an IPython kernel),
    "jupyter-server" (the lab extension), "cli" (a `runtime ...` command) or "script"."""
    if api_state.driver_kind:
        return api_state.driver_kind
    return "notebook" if "ipykernel" in sys.modules else "script"


async def _connect_driver(cw: CoreWorker, namespace: str) -> None:
    await cw.connect_cluster("driver")
    reply, _ = await cw.gcs_request({"op": "register_job", "namespace": namespace, "pid": os.getpid(),
                                     "entrypoint": " ".join(sys.argv), "kind": _driver_kind()})
    cw.job_id = reply["job_id"]
    cw.gcs.peer_info["job_id"] = cw.job_id


def _find_cluster(address: str) -> dict:
    """`auto`: the `runtime start --head` cluster, else the newest running one on this machine
    (a notebook's embedded cluster, say). HOST:PORT: the running cluster listening there."""
    info = launcher.read_current_cluster()
    if address == "auto":
        if info is None:
            running = launcher.live_clusters()
            if running:
                return running[0]
            raise ConnectionError("No running cluster was found on this machine (no current-cluster file under "
                                  f"{launcher.cluster_root()}). Start one with `runtime start --head`, or call "
                                  "runtime.init() without an address for an embedded cluster.")
        return info
    target = address.removeprefix("tcp:")
    for candidate in ([info] if info else []) + launcher.live_clusters():
        if candidate["gcs_address"].removeprefix("tcp:") == target:
            return candidate
    raise ConnectionError(f"No cluster started on this machine listens at {address!r}. Check the address printed by "
                          "`runtime start --head` (or use address='auto').")


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


def _teardown() -> None:
    cw = worker_state.current_or_none()
    worker_state.set_current(None)
    if cw is not None:
        cw.shutdown()
    cluster, api_state.cluster = api_state.cluster, None
    if cluster is not None:
        launcher.stop_cluster(cluster)
    api_state.context = None
    api_state.job_runtime_env = None


def shutdown(wait_for_processes: bool = True, _exiting_interpreter: bool = False) -> None:
    """Disconnect; if this process started an embedded cluster, stop all its processes. Ray's
    wait_for_processes and _exiting_interpreter are accepted: we always wait for the embedded
    cluster's processes to end (they end within a second of the owner pipe closing)."""
    with _init_lock:
        _teardown()
    try:
        atexit.unregister(shutdown)
    except Exception:
        pass


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
    values = api_state.ensure_initialized().get(refs, timeout)
    return values[0] if single else values


def put(value: Any, *, _owner: ActorHandle | None = None, _tensor_transport: str | None = None) -> ObjectRef:
    """Store `value` in the cluster and return a ref to it. Ray's `_owner` (an actor to own the
    object) and `_tensor_transport` (GPU tensor transports) are accepted and unused: the caller
    owns what it puts, and the object lives while refs to it exist."""
    return api_state.ensure_initialized().put(value)


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
    return api_state.ensure_initialized().wait(refs, num_returns, timeout)


def cancel(ray_waitable: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that returns `ray_waitable` (an ObjectRef; Ray's name for it); `get` then
    raises TaskCancelledError."""
    object_ref = ray_waitable
    if not isinstance(object_ref, ObjectRef):
        raise TypeError(f"cancel() expects an ObjectRef returned by .remote(), got {type(object_ref).__name__}.")
    cw = api_state.ensure_initialized()
    spec = cw.tasks.get(object_ref._id)
    if force and spec is not None and spec.actor_id:
        raise ValueError("force=True is not supported for actor tasks; use runtime.kill(actor) to stop the actor.")
    cw.cancel(object_ref, force, recursive)


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Stop an actor's process now. With no_restart=False it is restarted (if max_restarts allows)."""
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() expects an actor handle, got {type(actor).__name__}. For tasks use runtime.cancel().")
    cw = api_state.ensure_initialized()
    cw.run_sync(cw.gcs_request({"op": "kill_actor", "actor_id": actor._actor_id, "no_restart": no_restart}))


def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of the named actor `name` in `namespace` (default: this job's)."""
    if not isinstance(name, str) or not name:
        raise ValueError("get_actor() needs the actor's name as a non-empty string.")
    cw = api_state.ensure_initialized()
    reply, _ = cw.run_sync(cw.gcs_request({"op": "get_actor", "name": name, "namespace": namespace or cw.namespace}))
    meta = reply["meta"]
    cw.subscribe_actor_nowait(reply["actor_id"], meta.get("max_task_retries", 0))
    return ActorHandle(reply["actor_id"], meta)


def nodes() -> list[dict]:
    """The cluster's nodes, in Ray's format."""
    cw = api_state.ensure_initialized()
    reply, _ = cw.run_sync(cw.gcs_request({"op": "list_nodes"}))
    out = []
    for n in reply["nodes"]:
        out.append({"NodeID": n["node_id"], "Alive": n["alive"], "NodeManagerAddress": n["node_ip"],
                    "NodeManagerHostname": n["hostname"], "NodeManagerPort": int(n["address"].rsplit(":", 1)[1]),
                    "ObjectStoreSocketName": n["shm_dir"], "Resources": n["resources"], "IsHead": n["is_head"],
                    "Labels": n.get("labels") or {}, "alive": n["alive"],
                    "MetricsExportPort": int(n["metrics_export_address"].rsplit(":", 1)[1])
                    if n.get("metrics_export_address") else None})
    return out


def _resource_snapshot() -> dict:
    cw = api_state.ensure_initialized()
    reply, _ = cw.run_sync(cw.gcs_request({"op": "cluster_resources"}))
    return reply["nodes"]


def cluster_resources() -> dict[str, float]:
    """Total resources of all alive nodes."""
    total: dict[str, float] = {}
    for node in _resource_snapshot().values():
        for k, v in node["total"].items():
            total[k] = total.get(k, 0.0) + v
    return total


def available_resources() -> dict[str, float]:
    """Resources not currently held by tasks, actors or reservations."""
    avail: dict[str, float] = {}
    for node in _resource_snapshot().values():
        for k, v in node["available"].items():
            if v > 0:
                avail[k] = avail.get(k, 0.0) + v
    return avail


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
