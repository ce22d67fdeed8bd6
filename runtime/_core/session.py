"""Joining and leaving a cluster: `init` (start an embedded cluster or find a running one, then
connect this process's core worker as a driver), `shutdown`, and `ensure_initialized`, which
every call that needs the cluster goes through (like Ray, the first one starts a local cluster).

It sits under the modules that submit work (remote_function, actor, runtime.util) so that
they can reach the cluster without importing the public API (api.py) that is built on them."""

from __future__ import annotations

import atexit
import html
import json
import logging
import os
import sys
import threading
import uuid
from typing import Any

from ..config import SystemConfig, cluster_address_from_env
from ..rpc import tls
from ..runtime_env.spec import require_uploaded
from . import api_state, cluster_info, launcher, worker_state
from .core_worker import CoreWorker
from .options import validate_runtime_env

logger = logging.getLogger("runtime")
_init_lock = threading.Lock()


def ensure_initialized() -> Any:
    """The current core worker; like Ray, the first remote call starts a local cluster."""
    cw = worker_state.current_or_none()
    if cw is None:
        if not api_state.auto_init:
            raise ConnectionError("Not connected to a cluster (this process does not start one of its own).")
        init()
        cw = worker_state.current()
    return cw


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
            info = find_cluster(address)
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


def find_cluster(address: str) -> dict:
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


class ClusterContext:
    """Returned by `runtime.init()`: where the cluster is, with a notebook repr."""

    def __init__(self, address_info: dict, node_id: str, namespace: str, resources: dict) -> None:
        self.address_info = address_info
        self.dashboard_url = None
        self.node_id = node_id
        self.namespace = namespace
        self.resources = resources

    def __getitem__(self, key: str) -> Any:  # Ray's init() result is also dict-like
        return self.address_info[key]

    def __enter__(self) -> ClusterContext:
        return self

    def __exit__(self, *exc: Any) -> None:
        shutdown()

    def __repr__(self) -> str:
        return (f"ClusterContext(address={self.address_info.get('address')!r}, node_id={self.node_id[:12]!r}, "
                f"namespace={self.namespace!r})")

    def _repr_html_(self) -> str:
        import platform
        from importlib.metadata import PackageNotFoundError, version
        try:
            ours = version("orrery")
        except PackageNotFoundError:
            ours = "source checkout"
        try:
            cw = ensure_initialized()
            resources = {k: v for k, v in cluster_info.cluster_resources(cw).items() if not k.startswith("node:")}
            n_nodes = sum(1 for n in cluster_info.nodes(cw) if n["Alive"])
        except Exception:  # noqa: BLE001 - a display must not raise; show what init() knew
            resources, n_nodes = self.resources, "?"
        rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                       for k, v in [("address", self.address_info.get("address")), ("node", self.node_id[:12]),
                                    ("nodes", n_nodes), ("namespace", self.namespace), ("resources", resources),
                                    ("versions", f"orrery {ours}, Python {platform.python_version()}")])
        # Under a Jupyter server the dashboard is linked through it (kernel_ext/lab/dashboard_proxy.py),
        # which works where only the Jupyter port is reachable (Binder, JupyterHub set the prefix).
        dashboard = ""
        if self.dashboard_url:
            if os.environ.get("JPY_PARENT_PID") or os.environ.get("JUPYTERHUB_SERVICE_PREFIX"):
                prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/").rstrip("/")
                href = f"{prefix}/orrery/dashboard/"
            else:
                href = f"{tls.scheme()}://{self.dashboard_url}/"
            dashboard = f'<a href="{html.escape(href)}" target="_blank">Dashboard</a> · '
        note = (f"<small>{dashboard}Live view: <code>%cluster</code> in a notebook, or the Orrery sidebar in "
                "JupyterLab.</small>")
        return f"<table><caption>runtime cluster</caption>{rows}</table>{note}"
