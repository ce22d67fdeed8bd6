"""Starting and stopping cluster processes (control store + node manager) on this machine.

Listening sockets are bound here and inherited by the children, so clients can connect
at once: the kernel queues connections until the child's event loop accepts them.
An embedded cluster also inherits the read end of a pipe whose write end only the
driver holds: when the driver dies, even by SIGKILL, the children read EOF and exit.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from . import machine
from .private_files import (PRIVATE_UMASK, make_private_dir, open_private, private_process_env, user_umask,
                            write_private_file)

from ..config import SystemConfig
from ..rpc import tls
from ..rpc.connection import bind_socket, socket_address


def cluster_root() -> str:
    return os.path.join(tempfile.gettempdir(), "orrery")


def current_cluster_file() -> str:
    return os.path.join(cluster_root(), "current_cluster.json")


@dataclass
class ClusterProcesses:
    session_dir: str
    session_name: str
    token: str
    gcs_address: str
    node_address: str
    node_tcp_address: str
    shm_dir: str
    procs: dict = field(default_factory=dict)  # name -> Popen (embedded) or pid (persistent)
    owner_fd: int | None = None
    sock_dir: str = ""
    # The read end of the owner pipe, kept so that nodes added later watch the same pipe.
    owner_read_fd: int | None = None
    config: SystemConfig = field(default_factory=SystemConfig)
    nodes: list = field(default_factory=list)  # add_node() descriptions, the head's first
    node_ip: str = "127.0.0.1"  # the head's address: drivers on it listen there
    client_address: str = ""  # HOST:PORT of the client server (thin clients), if the head serves one
    ops: dict = field(default_factory=dict)  # dashboard and metrics settings (`runtime start --dashboard-port` ...)

    def info(self) -> dict:
        return {"session_dir": self.session_dir, "session_name": self.session_name, "token": self.token,
                "gcs_address": self.gcs_address, "node_address": self.node_address,
                "node_tcp_address": self.node_tcp_address, "shm_dir": self.shm_dir, "sock_dir": self.sock_dir,
                "pids": {k: (p.pid if hasattr(p, "pid") else p) for k, p in self.procs.items()},
                "node_ip": self.node_ip, "client_address": self.client_address, "ops": self.ops,
                "node_dirs": [{"shm_dir": n["shm_dir"], "sock_dir": n["sock_dir"]} for n in self.nodes]}


def default_resources(num_cpus: float | None, num_gpus: float | None, object_store_memory: int | None) -> dict:
    total = machine.memory_limit()  # cgroup-aware: containers and Binder get their own share
    if object_store_memory is None:
        shm_free = psutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else total
        object_store_memory = int(min(total * 0.3, shm_free * 0.9))
    return {"num_cpus": machine.cpu_limit() if num_cpus is None else num_cpus,
            "num_gpus": _detect_gpus() if num_gpus is None else num_gpus,
            "memory": int(total * 0.7), "object_store_memory": int(object_store_memory)}


def _detect_gpus() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    try:
        return len([d for d in os.listdir("/proc/driver/nvidia/gpus")])
    except OSError:
        return 0


def start_cluster(*, num_cpus: float | None = None, num_gpus: float | None = None, resources: dict | None = None,
                  object_store_memory: int | None = None, config: SystemConfig, persistent: bool = False,
                  port: int = 0, node_ip: str = "127.0.0.1", token: str | None = None,
                  labels: dict | None = None, client_port: int | None = None, temp_dir: str | None = None,
                  ops: dict | None = None) -> ClusterProcesses:
    """Start a control store and a head node. `client_port`: also serve thin clients
    (client://) there (0 picks a free port; None: no client server). `temp_dir`: where the
    session directory goes (`ray start --temp-dir`); a link to it in cluster_root() keeps it
    discoverable. `ops`: the dashboard and metrics settings, recorded in cluster.json."""
    if object_store_memory is not None and (not isinstance(object_store_memory, int) or object_store_memory <= 0):
        raise ValueError(f"object_store_memory must be a positive number of bytes, got {object_store_memory!r}.")
    session_name = f"session_{time.strftime('%Y%m%d-%H%M%S')}_{os.getpid()}_{secrets.token_hex(3)}"
    session_dir = os.path.join(cluster_root(), session_name)
    make_private_dir(cluster_root(), parents=True)  # 0700 each, whatever the umask (private_files.py)
    if temp_dir:
        session_dir = os.path.join(os.path.abspath(temp_dir), session_name)
        make_private_dir(session_dir, parents=True)
        os.symlink(session_dir, os.path.join(cluster_root(), session_name))
    make_private_dir(session_dir)
    make_private_dir(os.path.join(session_dir, "logs"))
    token = token or secrets.token_hex(16)
    write_private_file(os.path.join(session_dir, "token"), token)
    ops = dict(ops or {})
    if config.isolate_namespaces:  # recorded, so that `runtime start --head --restart` keeps it
        ops["isolate_namespaces"] = True
    bound: list = []  # the caller may try another port: a failed bind leaves nothing bound or made
    try:
        gcs_sock = bind_socket(f"tcp:{node_ip}:{port}")
        bound.append(gcs_sock)
        client_sock = bind_socket(f"tcp:{node_ip}:{client_port}") if client_port is not None else None
        bound.append(client_sock)
        dashboard_sock = _bind_dashboard(ops)
        bound.append(dashboard_sock)
        metrics_sock = _bind_metrics(node_ip, ops.get("metrics_export_port"))
    except OSError:
        for sock in bound:
            if sock is not None:
                sock.close()
        _remove_session_dir(session_dir)
        raise
    owner_r = owner_w = None
    if not persistent:
        owner_r, owner_w = os.pipe()
        os.set_inheritable(owner_r, True)
    cluster = ClusterProcesses(session_dir=session_dir, session_name=session_name, token=token,
                               gcs_address=socket_address(gcs_sock), node_address="", node_tcp_address="",
                               shm_dir="", owner_fd=owner_w, owner_read_fd=owner_r, config=config, node_ip=node_ip,
                               ops=ops)
    if client_sock is not None:
        cluster.client_address = socket_address(client_sock).removeprefix("tcp:")
    _start_gcs(cluster, gcs_sock, client_sock, dashboard_sock)
    head = add_node(cluster, num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                    object_store_memory=object_store_memory, head=True, node_ip=node_ip, labels=labels,
                    metrics_sock=metrics_sock)
    cluster.node_address, cluster.node_tcp_address = head["node_address"], head["node_tcp_address"]
    cluster.shm_dir, cluster.sock_dir = head["shm_dir"], head["sock_dir"]
    _write_private_json(os.path.join(session_dir, "cluster.json"), {**cluster.info(), "started": time.time()})
    return cluster


def _remove_session_dir(session_dir: str) -> None:
    import shutil
    shutil.rmtree(session_dir, ignore_errors=True)
    link = os.path.join(cluster_root(), os.path.basename(session_dir))
    if os.path.islink(link):
        os.unlink(link)


DASHBOARD_PORT = 8265  # Ray's


class PortTaken(OSError):
    """A port asked for (dashboard, metrics export) is in use; the message says what to do."""


def _bind_dashboard(ops: dict) -> Any:
    """The dashboard's listening socket (its process starts on first use), or None when it is off
    or aiohttp is missing. `ops["dashboard"]` gets the URL. A port asked for and taken is an
    OSError; the default port taken (another cluster here) moves to the next free one."""
    dash = ops.get("dashboard") or {}
    if dash.get("enabled") is False:
        return None
    try:
        import importlib.util
        if importlib.util.find_spec("aiohttp") is None:
            return None
    except ValueError:
        return None
    host, port = dash.get("host") or "127.0.0.1", dash.get("port")
    asked = port is not None
    port = DASHBOARD_PORT if port is None else port
    for candidate in ([port] if asked else [port + i for i in range(20)] + [0]):
        try:
            sock = bind_socket(f"tcp:{host}:{candidate}")
            break
        except OSError as e:
            if asked:
                raise PortTaken(e.errno, f"The dashboard port {host}:{port} is taken ({e.strerror}); pick "
                                         "another with --dashboard-port (dashboard_port=), or turn it off with "
                                         "--include-dashboard false.") from e
    bound = sock.getsockname()[1]
    ops["dashboard"] = {"enabled": True, "host": host, "port": bound, "url": f"{tls.scheme()}://{host}:{bound}"}
    return sock


def _start_gcs(cluster: ClusterProcesses, sock: Any, client_sock: Any = None, dashboard_sock: Any = None) -> None:
    gcs_args = {"tcp_fd": sock.fileno(), "token_file": os.path.join(cluster.session_dir, "token"),
                "owner_fd": cluster.owner_read_fd, "session_dir": cluster.session_dir,
                "system_config": cluster.config.to_json(),
                "client_fd": client_sock.fileno() if client_sock is not None else None,
                "dashboard_fd": dashboard_sock.fileno() if dashboard_sock is not None else None,
                # The machine's cluster (`runtime start --head`) also writes Prometheus's service
                # discovery file where Ray's is, at the top of the temp directory.
                "discovery_root": cluster_root() if cluster.owner_read_fd is None else None,
                "user_umask": user_umask()}  # job entrypoints get it back (the daemons run with 077)
    keep = [sock.fileno()] + [s.fileno() for s in (client_sock, dashboard_sock) if s is not None]
    cluster.procs["gcs"] = _spawn(cluster, "gcs", "runtime.gcs", gcs_args, keep)
    for s in (sock, client_sock, dashboard_sock):
        if s is not None:
            s.close()


def restart_gcs(cluster: ClusterProcesses) -> None:
    """Start the control store again on its port, in its session, after it died: it reads back
    its tables (runtime/gcs/persistence.py) and the nodes and drivers reconnect to it."""
    old = cluster.procs.get("gcs")
    if old is not None and old.poll() is None:
        raise RuntimeError("The control store is still running; stop or kill it first.")
    client = bind_socket("tcp:" + cluster.client_address) if cluster.client_address else None
    dash = (cluster.ops or {}).get("dashboard") or {}
    dashboard = None
    if dash.get("url"):
        try:  # a dashboard started by the old control store still serves the port: leave it
            dashboard = bind_socket(f"tcp:{dash['host']}:{dash['port']}")
        except OSError:
            pass
    _start_gcs(cluster, bind_socket("tcp:" + cluster.gcs_address.removeprefix("tcp:")), client, dashboard)
    path = os.path.join(cluster.session_dir, "cluster.json")  # where drivers look for live clusters
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return
    info.setdefault("pids", {})["gcs"] = cluster.procs["gcs"].pid
    _write_private_json(path, info)


def add_node(cluster: ClusterProcesses, *, num_cpus: float | None = None, num_gpus: float | None = None,
             resources: dict | None = None, object_store_memory: int | None = None, head: bool = False,
             node_ip: str = "127.0.0.1", labels: dict | None = None, metrics_export_port: int | None = None,
             metrics_sock: Any = None) -> dict:
    """Start one more node manager on this machine, joined to `cluster`'s control store: its own
    resources, worker pool, sockets and shared-memory object store. Returns its description
    (node_id, pid, addresses); it dies with the cluster (or its owner, when embedded).
    `metrics_export_port`: where it serves Prometheus metrics (None: a free port), or
    `metrics_sock` already bound there."""
    metrics_sock = metrics_sock or _bind_metrics(node_ip, metrics_export_port)
    res = default_resources(num_cpus, num_gpus, object_store_memory)
    node_id = secrets.token_hex(16)
    first = head
    # Unix socket paths are limited to ~107 bytes: fall back to a short directory when needed.
    sock_dir = os.path.join(cluster.session_dir, "sockets" if first else f"sockets-{node_id[:8]}")
    if len(sock_dir) > 60:
        sock_dir = tempfile.mkdtemp(prefix="orrery-", dir="/tmp")
    make_private_dir(sock_dir)
    shm_root = "/dev/shm" if os.path.isdir("/dev/shm") else cluster.session_dir
    shm_dir = os.path.join(shm_root, f"orrery-{cluster.session_name[-6:]}-{node_id[:8]}")
    nm_unix = bind_socket("unix:" + os.path.join(sock_dir, "node.sock"))
    os.chmod(os.path.join(sock_dir, "node.sock"), 0o600)  # bound with this process's umask
    nm_tcp = bind_socket(f"tcp:{node_ip}:0")
    metrics_port = metrics_sock.getsockname()[1]
    nm_args = {"unix_fd": nm_unix.fileno(), "tcp_fd": nm_tcp.fileno(), "owner_fd": cluster.owner_read_fd,
               "metrics_fd": metrics_sock.fileno(), "head": head,
               "token_file": os.path.join(cluster.session_dir, "token"), "node_id": node_id,
               "session_dir": cluster.session_dir, "gcs_address": cluster.gcs_address,
               "unix_address": socket_address(nm_unix), "tcp_address": socket_address(nm_tcp),
               "num_cpus": res["num_cpus"], "num_gpus": res["num_gpus"], "memory": res["memory"],
               "object_store_memory": res["object_store_memory"], "resources": resources or {},
               "shm_dir": shm_dir, "system_config": cluster.config.to_json(), "node_ip": node_ip,
               "labels": {str(k): str(v) for k, v in (labels or {}).items()}, "user_umask": user_umask()}
    name = "node" if first else f"node-{node_id[:8]}"
    proc = _spawn(cluster, name, "runtime.node", nm_args, [nm_unix.fileno(), nm_tcp.fileno(), metrics_sock.fileno()])
    cluster.procs[name] = proc
    for sock in (nm_unix, nm_tcp, metrics_sock):
        sock.close()
    node = {"node_id": node_id, "pid": proc.pid if hasattr(proc, "pid") else proc, "name": name, "node_ip": node_ip,
            "node_address": nm_args["unix_address"], "node_tcp_address": nm_args["tcp_address"],
            "shm_dir": shm_dir, "sock_dir": sock_dir, "resources": res,
            "metrics_export_port": metrics_port}
    cluster.nodes.append(node)
    return node


def _bind_metrics(node_ip: str, port: int | None) -> Any:
    """The node's Prometheus endpoint socket (its server starts on the first scrape)."""
    try:
        return bind_socket(f"tcp:{node_ip}:{port or 0}")
    except OSError as e:
        raise PortTaken(e.errno, f"The metrics export port {node_ip}:{port} is taken ({e.strerror}); pick "
                                        "another with --metrics-export-port, or leave it out for a free one.") from e


def _spawn(cluster: ClusterProcesses, name: str, module: str, args: dict, keep_fds: list[int]) -> Any:
    env = private_process_env(dict(os.environ))  # umask 077 below; the user's is handed down
    # The daemons read the token from the session's file; none of their children (workers,
    # whose tasks read their environment) get it from here.
    env.pop("RUNTIME_CLUSTER_TOKEN", None)
    env["ORRERY_SESSION"] = cluster.session_name
    env.setdefault("PYTHONUNBUFFERED", "1")
    log = open_private(os.path.join(cluster.session_dir, "logs", f"{name}.log"), "ab")
    pass_fds = keep_fds + ([cluster.owner_read_fd] if cluster.owner_read_fd is not None else [])
    try:
        # Own session even when embedded: an interrupt sent to the driver's process group (Ctrl-C,
        # a Jupyter kernel interrupt) must reach the driver only, not kill its cluster. Umask 077:
        # what the daemons and their tools write is the cluster user's only (private_files.py).
        return subprocess.Popen([sys.executable, "-m", module, json.dumps(args)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, pass_fds=pass_fds, env=env,
                                start_new_session=True, close_fds=True, umask=PRIVATE_UMASK)
    finally:
        log.close()


def attach(info: dict, config: SystemConfig) -> ClusterProcesses:
    """A running cluster (its cluster.json), to add nodes to it from this process. Nodes added so
    are persistent: they stop with the cluster (`runtime stop`), not with this process."""
    return ClusterProcesses(session_dir=info["session_dir"], session_name=info["session_name"], token=info["token"],
                            gcs_address=info["gcs_address"], node_address=info["node_address"],
                            node_tcp_address=info.get("node_tcp_address", ""), shm_dir=info.get("shm_dir", ""),
                            config=config, node_ip=info.get("node_ip", "127.0.0.1"),
                            client_address=info.get("client_address", ""), ops=info.get("ops") or {})


def remote_cluster_info(address: str, token: str) -> dict:
    """What a node joining a head on another machine needs: a session directory of its own (logs,
    sockets, spilled objects) and the head's address and token."""
    session_name = f"node_{time.strftime('%Y%m%d-%H%M%S')}_{os.getpid()}_{secrets.token_hex(3)}"
    session_dir = os.path.join(cluster_root(), session_name)
    make_private_dir(cluster_root(), parents=True)
    make_private_dir(session_dir)
    make_private_dir(os.path.join(session_dir, "logs"))
    write_private_file(os.path.join(session_dir, "token"), token)
    return {"session_dir": session_dir, "session_name": session_name, "token": token,
            "gcs_address": "tcp:" + address.removeprefix("tcp:"), "node_address": ""}


def route_ip(address: str) -> str:
    """This machine's address on the route to `address` (what the head will see us as)."""
    import socket
    host, _, port = address.removeprefix("tcp:").rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((socket.gethostbyname(host), int(port)))  # UDP: no packet is sent
        return s.getsockname()[0]


def gcs_request(gcs_address: str, token: str, msg: dict, timeout: float = 10) -> dict:
    """One request to a control store from outside a driver (tools, the CLI, the test harness)."""
    import asyncio

    from ..rpc.connection import connect

    async def ask() -> dict:
        conn = await connect(gcs_address, {}, token, info={"kind": "tool"}, timeout=timeout)
        try:
            reply, _ = await conn.request(msg, timeout=timeout)
            return reply
        finally:
            conn.close()

    return asyncio.run(ask())


def _write_private_json(path: str, data: dict) -> None:
    """Written whole (rename) and readable only by this user: it holds the cluster's token."""
    write_private_file(path, json.dumps(data, indent=2))


def _gcs_alive(info: dict) -> bool:
    """The control store named in `info` still runs (checked by command line, not just pid). For a
    node joined to a head on another machine: that its node manager, the drivers' way in, runs."""
    kind = "node" if info.get("joined") else "gcs"
    proc = _proc(info.get("pids", {}).get(kind) or 0)
    try:
        return proc is not None and f"runtime.{kind}" in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def write_joined_node_info(info: dict, node: dict) -> None:
    """A node joined to a head on another machine: drivers started on this machine with
    init(address=HEAD) find it here and go through it (its node manager, its object store)."""
    _write_private_json(os.path.join(info["session_dir"], "cluster.json"), {
        **info, "joined": True, "node_address": node["node_address"], "node_tcp_address": node["node_tcp_address"],
        "shm_dir": node["shm_dir"], "sock_dir": node["sock_dir"], "node_ip": node["node_ip"],
        "pids": {"node": node["pid"]}, "started": time.time()})


def live_clusters() -> list[dict]:
    """Every cluster started on this machine by this user that still runs, newest first: embedded
    ones (a notebook's, a script's) and `runtime start --head` ones alike."""
    found = []
    try:
        names = os.listdir(cluster_root())
    except OSError:
        return []
    for name in names:
        try:
            with open(os.path.join(cluster_root(), name, "cluster.json")) as f:
                info = json.load(f)
        except (OSError, ValueError):
            continue
        if _gcs_alive(info):
            found.append(info)
    return sorted(found, key=lambda i: i.get("started", 0), reverse=True)


def dashboard_token(url: str) -> str | None:
    """The token of this user's cluster on this machine whose dashboard is at `url`: our HTTP
    clients send it by themselves (cluster.json is readable by this user only)."""
    from urllib.parse import urlsplit
    want = urlsplit(url if "://" in url else "http://" + url)
    for info in live_clusters():
        dash = urlsplit(((info.get("ops") or {}).get("dashboard") or {}).get("url") or "")
        if dash.port == want.port and (dash.hostname == want.hostname or
                                       {dash.hostname, want.hostname} <= {"127.0.0.1", "localhost"}):
            return info.get("token")
    return None


def socket_address_unix(sock_dir: str) -> str:
    return "unix:" + os.path.join(sock_dir, "node.sock")


def stop_cluster(cluster: ClusterProcesses, timeout: float = 10.0) -> None:
    """Stop an embedded cluster: closing the owner pipe makes every daemon exit."""
    if cluster.owner_fd is not None:
        os.close(cluster.owner_fd)
        cluster.owner_fd = None
    if cluster.owner_read_fd is not None:
        os.close(cluster.owner_read_fd)
        cluster.owner_read_fd = None
    deadline = time.monotonic() + timeout
    for proc in cluster.procs.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    _cleanup_dirs(cluster.info())


def _cleanup_dirs(info: dict) -> None:
    for d in info.get("node_dirs") or [info]:
        cleanup_node_dirs(d)


def cleanup_node_dirs(node: dict) -> None:
    """What a node manager leaves behind when it was killed (a clean exit removes it itself)."""
    import shutil
    if node.get("shm_dir"):
        shutil.rmtree(node["shm_dir"], ignore_errors=True)
    sock_dir = node.get("sock_dir", "")
    if sock_dir.startswith("/tmp/orrery-"):
        shutil.rmtree(sock_dir, ignore_errors=True)


def write_current_cluster(cluster: ClusterProcesses) -> str:
    path = current_cluster_file()
    make_private_dir(os.path.dirname(path), parents=True)
    _write_private_json(path, cluster.info())
    return path


def read_current_cluster_file() -> dict | None:
    """The current-cluster file as written, whether its control store still runs or not."""
    try:
        with open(current_cluster_file()) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_current_cluster() -> dict | None:
    info = read_current_cluster_file()
    return info if info is not None and _gcs_alive(info) else None


def write_current_cluster_info(info: dict) -> None:
    _write_private_json(current_cluster_file(), info)


def start_monitor(cluster: ClusterProcesses, config_path: str) -> None:
    """The autoscaler's monitor (runtime/autoscaler/monitor.py), next to the control store."""
    args = ["--config", config_path, "--cluster-info", os.path.join(cluster.session_dir, "cluster.json")]
    log = open_private(os.path.join(cluster.session_dir, "logs", "autoscaler.log"), "ab")
    try:
        cluster.procs["monitor"] = subprocess.Popen(
            [sys.executable, "-m", "runtime.autoscaler.monitor", *args], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True, umask=PRIVATE_UMASK,
            env=private_process_env(dict(os.environ)))  # the nodes it starts give workers the user's umask
    finally:
        log.close()


def stop_persistent(info: dict, timeout: float = 10.0) -> list[int]:
    pids = [p for p in info.get("pids", {}).values() if p]
    try:  # nodes that joined later (`runtime start --address`) are known to the control store only
        joined = [n for n in gcs_request(info["gcs_address"], info["token"], {"op": "list_nodes"}, timeout=5)["nodes"]
                  if n["alive"] and n["pid"] not in pids]
    except Exception:  # noqa: BLE001 - the control store is already gone: its nodes exit by themselves
        joined = []
    monitor = info.get("pids", {}).get("monitor")
    # The autoscaler first (it would start nodes again), then the nodes: they shut their workers down.
    pids = ([monitor] if monitor else []) + [n["pid"] for n in joined] + [p for p in pids if p != monitor]
    info = {**info, "node_dirs": (info.get("node_dirs") or [info]) + [{"shm_dir": n["shm_dir"]} for n in joined]}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        gone, alive = psutil.wait_procs([_proc(p) for p in pids if _proc(p)], timeout=timeout)
        if not alive:
            break
    _cleanup_dirs(info)
    for path in (current_cluster_file(), os.path.join(cluster_root(), "prom_metrics_service_discovery.json")):
        try:
            os.unlink(path)
        except OSError:
            pass
    return pids


def _proc(pid: int) -> psutil.Process | None:
    if not pid:
        return None
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
