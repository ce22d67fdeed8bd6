"""The control store: the cluster's tables (nodes, jobs, KV) and the RPC server that routes
every op to them. The only centralised part. The server holds the nodes and jobs itself and
delegates to what owns the rest, each with its own tables:

    actors.py     the actor directory: actors, named actors, scheduling, restarts, deaths
    placement.py  placement groups and their reservations on the nodes
    tasks.py      the task table of the state API
    checks.py     what requests must hold before a table keeps their fields

Run as `python -m runtime.gcs ARGS_JSON`.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from typing import Any

from .. import owner_pipe
from .._core.private_files import write_private_file
from ..config import SystemConfig
from ..jobs.manager import JobManager
from ..node.resources import normalize
from ..node.runtime_env_agent import RuntimeEnvAgent
from .actors import ALIVE, DEAD, PENDING, RESTARTING, ActorDirectory, ActorRecord  # noqa: F401 - re-exported
from .checks import amounts, typed
from .packages import PackageStore, check_name, name_of_uri
from .persistence import NoPersistence, Persistence
from .placement import PlacementGroupManager
from .tasks import TaskTable
from ..rpc.connection import Connection, serve

logger = logging.getLogger("runtime.gcs")


class ControlStore:
    def __init__(self, args: dict) -> None:
        self.args = args
        self.token = args["token"]
        self.nodes: dict[str, dict] = {}
        self.node_conns: dict[str, Connection] = {}
        self.jobs: dict[str, dict] = {}
        self.actor_dir = ActorDirectory(self)
        # The directory's tables under the names they had when the server held them, for
        # whoever inspects a ControlStore (tools, debugging); the server itself goes through actor_dir.
        self.actors, self.named = self.actor_dir.actors, self.actor_dir.named
        self.kv: dict[str, bytes] = {}
        self.config = SystemConfig.from_json(args["system_config"]) if args.get("system_config") else SystemConfig()
        self.packages = PackageStore(args["session_dir"])
        self.package_users: dict[str, set[str]] = collections.defaultdict(set)  # package -> job ids using it
        self._packages_swept = time.monotonic()

        async def fetch(name: str) -> bytes:
            return self.packages.get(name)
        # Submitted jobs' runtime_envs, made ready on the head for their entrypoints.
        self.job_envs = RuntimeEnvAgent(os.path.join(args["session_dir"], "runtime_resources", "jobs"), fetch,
                                        self.config)
        self.task_table = TaskTable(self)  # for the state API, fed by the submitters' task events
        self.placement_groups = PlacementGroupManager(self)
        self.job_counter = itertools.count(1)
        self.driver_conns: dict[str, Connection] = {}  # job id -> its driver's connection
        self._recovered_jobs: dict[str, dict] = {}
        self._start_wall, self._nodes_epoch = time.time(), 0
        self.started = time.monotonic()
        session_dir = args["session_dir"]
        self.persist: Any = (Persistence(self.config.gcs_storage, session_dir, os.path.basename(session_dir))
                             if self.config.gcs_storage != "none" else NoPersistence())
        self.handlers = {
            "register_node": self.on_register_node, "heartbeat": self.on_heartbeat,
            "register_job": self.on_register_job, "create_actor": self.actor_dir.on_create_actor,
            "get_actor": self.actor_dir.on_get_actor, "subscribe_actor": self.actor_dir.on_subscribe_actor,
            "kill_actor": self.actor_dir.on_kill_actor, "actor_worker_died": self.actor_dir.on_actor_worker_died,
            "list_nodes": self.on_list_nodes, "list_actors": self.actor_dir.on_list_actors,
            "list_jobs": self.on_list_jobs, "list_named_actors": self.actor_dir.on_list_named_actors,
            "cluster_resources": self.on_cluster_resources, "list_objects": self.on_list_objects,
            "task_events": self.task_table.on_task_events, "list_tasks": self.task_table.on_list_tasks,
            "cluster_metrics": self.on_cluster_metrics, "list_workers": self.on_list_workers,
            "list_logs": self.on_list_logs, "read_log": self.on_read_log,
            "cancel_task": self.task_table.on_cancel_task, "kv_put": self.on_kv_put,
            "submit_job": self.on_submit_job, "job_status": self.on_job_status, "job_logs": self.on_job_logs,
            "job_artifact": self.on_job_artifact, "stop_job": self.on_stop_job, "delete_job": self.on_delete_job,
            "create_pg": self.on_create_pg, "wait_pg": self.on_wait_pg, "remove_pg": self.on_remove_pg,
            "get_pg": self.on_get_pg, "list_pgs": self.on_list_pgs, "kv_get": self.on_kv_get, "kv_del": self.on_kv_del,
            "shutdown_cluster": self.on_shutdown_cluster, "resource_report": self.on_resource_report,
            "pick_node": self.on_pick_node, "hello": self.on_hello, "autoscaler_state": self.on_autoscaler_state,
            "package_exists": self.on_package_exists, "put_package": self.on_put_package,
            "get_package": self.on_get_package, "runtime_env_cache": self.on_runtime_env_cache,
        }
        # Answered only once what they changed is in storage: a reply is a promise that survives
        # a restart of the control store.
        for op in ("register_job", "create_actor", "kill_actor", "create_pg", "wait_pg", "remove_pg", "kv_put",
                   "kv_del", "submit_job", "delete_job"):
            self.handlers[op] = self._durable(self.handlers[op])
        self._recover()
        self._spread_next = 0

    def _durable(self, handler: Any) -> Any:
        async def run(conn: Connection, msg: dict, bufs: list) -> Any:
            result = handler(conn, msg, bufs)
            if asyncio.iscoroutine(result):
                result = await result
            await self.persist.drain()
            return result
        return run

    def _recover(self) -> None:
        """Tables left by an earlier control store of this session (it crashed or was killed):
        nodes and drivers get node_death_timeout_s to reconnect; actors and placement groups
        are as they were; named ones keep their names."""
        tables = self.persist.load()
        self._recovered_jobs = tables["subjobs"]
        if not any(tables.values()):
            return
        now = time.monotonic()
        for node_id, node in tables["nodes"].items():
            node.update(last_heartbeat=now, available=dict(node["resources"]))
            self.nodes[node_id] = node
        self.jobs.update(tables["jobs"])
        self.actor_dir.recover(tables["actors"])
        self.kv.update(tables["kv"])
        self.job_counter = itertools.count(int(tables["meta"].get("job_counter", 0)) + 1)
        self.placement_groups.recover(tables["pgs"])
        logger.info("recovered after a restart: %d nodes, %d jobs, %d actors, %d placement groups, %d keys",
                    len(self.nodes), len(self.jobs), len(self.actor_dir.actors), len(tables["pgs"]), len(self.kv))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.done = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, self.done.set)
        loop.add_signal_handler(signal.SIGINT, self.done.set)
        owner_pipe.watch(loop, self.args.get("owner_fd"), self.done.set)
        sock = socket.socket(fileno=self.args["tcp_fd"])
        host, port = sock.getsockname()[:2]
        self.job_manager = JobManager(self.args["session_dir"], f"{host}:{port}", persist=self.persist.submitted_job,
                                      recovered=self._recovered_jobs, forget=self.persist.submitted_job_deleted,
                                      reserve=self._reserve_for_job, runtime_envs=self.job_envs,
                                      entrypoint_umask=self.args.get("user_umask"))
        server = await serve(sock, self.handlers, self.token, on_close=self.on_conn_closed, name="gcs",
                             hello_timeout=self.config.hello_timeout_s)
        self.client_server = None
        if self.args.get("client_fd") is not None:  # thin clients (client://), see runtime/client
            from ..client.server import ClientServer
            self.client_server = ClientServer(socket.socket(fileno=self.args["client_fd"]),
                                              gcs_address=f"{host}:{port}", session_dir=self.args["session_dir"],
                                              token_file=self.args["token_file_path"],
                                              hello_timeout_s=self.config.hello_timeout_s)
            self.client_server.start(loop)
        self.dashboard = None
        if self.args.get("dashboard_fd") is not None:  # started on first use (runtime/dashboard)
            from ..dashboard.activation import DashboardActivation
            self.dashboard = DashboardActivation(self.args["dashboard_fd"], self.args["session_dir"],
                                                 f"{host}:{port}", self.args["token_file_path"],
                                                 hello_timeout_s=self.config.hello_timeout_s)
            self.dashboard.start(loop)
        watchdog = loop.create_task(self._watch_heartbeats())
        self.actor_dir.resume()
        self.placement_groups.kick()
        await self.done.wait()
        watchdog.cancel()
        if self.client_server is not None:
            self.client_server.stop()
        if self.dashboard is not None:
            self.dashboard.stop()
        self.job_manager.stop_all()
        server.close()
        self.persist.close()

    async def _watch_heartbeats(self) -> None:
        """A node that is stopped, hung or cut off keeps its socket open but stops sending
        heartbeats: declare it dead once node_death_timeout_s passed without one."""
        timeout = self.config.node_death_timeout_s
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))  # the watchdog's period, not a synchronisation
            if self.client_server is not None:
                self.client_server.reap()
            now = time.monotonic()
            if now - self._packages_swept > 60:
                self._packages_swept = now
                self._sweep_packages()
            for node_id, conn in list(self.node_conns.items()):
                node = self.nodes[node_id]
                silent = now - node["last_heartbeat"]
                if node["alive"] and silent > timeout:
                    node["death_reason"] = (f"no heartbeat for {silent:.1f} s (node_death_timeout_s={timeout:g}); "
                                            "the node manager is hung, stopped or unreachable")
                    logger.warning("node %s declared dead: %s", node_id[:8], node["death_reason"])
                    conn.abort(node["death_reason"])  # on_conn_closed fails its actors over
            if now - self.started < timeout:
                continue
            # After a restart: nodes and drivers that did not come back within the timeout are gone.
            for node_id, node in list(self.nodes.items()):
                if node["alive"] and node_id not in self.node_conns:
                    self._node_dead(node_id, "it did not reconnect after the control store restarted")
            for job_id, job in list(self.jobs.items()):
                if job["status"] == "RUNNING" and job_id not in self.driver_conns:
                    self._driver_gone(job_id)

    def on_conn_closed(self, conn: Connection) -> None:
        info = conn.peer_info
        self.task_table.owner_gone(conn)
        node_id = info.get("node_id", "")
        if info.get("kind") == "node" and self.node_conns.get(node_id) is conn:
            self._node_dead(node_id, "its node manager's connection closed (it exited or crashed)")
        job_id = info.get("job_id")
        if info.get("kind") == "driver" and job_id in self.jobs and self.driver_conns.get(job_id) is conn:
            self._driver_gone(job_id)
        self.actor_dir.conn_closed(conn)

    def _node_dead(self, node_id: str, reason: str) -> None:
        node = self.nodes[node_id]
        node["alive"] = False
        node["end_time"] = time.time()
        node.setdefault("death_reason", reason)
        self.node_conns.pop(node_id, None)
        self.persist.node(node)
        self._broadcast_nodes()
        self._write_service_discovery()
        self.actor_dir.node_died(node_id)
        self.placement_groups.node_died(node_id)

    def _driver_gone(self, job_id: str) -> None:
        self.driver_conns.pop(job_id, None)
        job = self.jobs[job_id]
        job["status"], job["end_time"] = "FINISHED", time.time()
        self.persist.job(job)
        self.placement_groups.owner_gone(job_id)
        self.actor_dir.owner_gone(job_id)

    def on_hello(self, conn: Connection, msg: dict, bufs: list) -> None:
        """A driver that comes back after the control store restarted names its job: it still owns it."""
        info = conn.peer_info
        job_id = info.get("job_id")
        if info.get("kind") == "driver" and job_id in self.jobs and self.jobs[job_id]["status"] == "RUNNING":
            self.driver_conns[job_id] = conn

    # -- nodes and jobs ----------------------------------------------------------------
    def on_register_node(self, conn: Connection, msg: dict, bufs: list) -> dict:
        typed(msg, node_id=str, address=str, transfer_address=str)
        normalize(msg["resources"])
        if not isinstance(msg.get("labels") or {}, dict):
            raise ValueError("a node's labels are a map")
        known = self.nodes.get(msg["node_id"])
        if known is not None and not known["alive"]:
            raise ValueError(f"node {msg['node_id'][:8]} was declared dead ({known.get('death_reason')}); "
                             "a dead node does not come back: start a new node manager")
        node = {k: msg[k] for k in ("node_id", "resources", "address", "unix_address", "shm_dir", "pid",
                                    "hostname", "node_ip", "session_dir", "transfer_address")}
        node["labels"] = msg.get("labels") or {}
        node["metrics_export_address"] = msg.get("metrics_export_address", "")
        node.update(alive=True, start_time=known["start_time"] if known else time.time(),
                    last_heartbeat=time.monotonic(), is_head=known["is_head"] if known else not self.nodes,
                    available=dict(msg["resources"]))
        self.nodes[msg["node_id"]] = node
        self.node_conns[msg["node_id"]] = conn
        conn.peer_info.update(kind="node", node_id=msg["node_id"])  # so that its close is the node's death
        self.persist.node(node)
        if known is not None:
            logger.info("node %s reconnected after the control store restarted", msg["node_id"][:8])
            self._reconcile_node(conn, msg)
        else:
            logger.info("node %s registered with %s", msg["node_id"][:8], msg["resources"])
        self._broadcast_nodes(but=conn)
        self._write_service_discovery()
        self.placement_groups.kick()  # groups waiting for room may fit now
        self.actor_dir.node_joined()  # actors that waited for a node with room may fit here
        return {"nodes": self._peer_list(), "epoch": self._next_epoch()}

    def _write_service_discovery(self) -> None:
        """`prom_metrics_service_discovery.json` in the session directory (and, for the machine's
        cluster, in the temp root, as Ray's /tmp/ray/...): the metrics endpoints of the live nodes
        in Prometheus's file_sd format (deploy/prometheus/). Replaced whole, so Prometheus never
        reads half a file."""
        targets = sorted(n["metrics_export_address"] for n in self.nodes.values()
                         if n["alive"] and n.get("metrics_export_address"))
        for folder in (self.args["session_dir"], self.args.get("discovery_root")):
            if not folder:
                continue
            path = os.path.join(folder, "prom_metrics_service_discovery.json")
            try:
                write_private_file(path, json.dumps([{"labels": {"job": "ray"}, "targets": targets}]))
            except OSError as e:
                logger.warning("could not write %s: %s", path, e)

    def _next_epoch(self) -> list:
        """Orders node lists: a register reply can reach a node manager after a later broadcast.
        The start time first, so that the lists of a restarted control store come after."""
        self._nodes_epoch += 1
        return [self._start_wall, self._nodes_epoch]

    def _reconcile_node(self, conn: Connection, msg: dict) -> None:
        """A node back after this control store restarted says which actor workers and placement
        group bundles it still holds: actors found there answer again as they were (same process,
        same state); those missing fail over; what the node holds that is not ours goes."""
        node_id = msg["node_id"]
        held = {a["actor_id"]: a["worker_id"] for a in msg.get("actors", ())}
        self.actor_dir.node_reconnected(conn, node_id, held)
        self.placement_groups.node_reconnected(node_id, set(msg.get("bundles", ())))

    def _peer_list(self) -> list[dict]:
        return [{"node_id": n["node_id"], "address": n["address"], "transfer_address": n["transfer_address"]}
                for n in self.nodes.values()
                if n["alive"] and n["node_id"] in self.node_conns]

    def _broadcast_nodes(self, but: Connection | None = None) -> None:
        """Every node manager learns the live nodes, to spill work and pull objects from them."""
        msg = {"op": "nodes_changed", "nodes": self._peer_list(), "epoch": self._next_epoch()}
        for c in self.node_conns.values():
            if c is not but and not c.closed:
                c.send(dict(msg))

    def on_resource_report(self, conn: Connection, msg: dict, bufs: list) -> None:
        node = self.nodes.get(msg["node_id"])
        if node is not None and self.node_conns.get(msg["node_id"]) is conn:  # a node reports for itself
            amounts(msg["total"])
            amounts(msg["available"])
            node["resources"], node["available"], node["pending"] = msg["total"], msg["available"], msg["pending"]

    def pick_node(self, demand: dict, *, strategy: str = "", fits_now: bool = True, exclude: str = "",
                  only: str = "", below: float = 2.0) -> str | None:
        """A node for `demand` from the resource view the nodes report. DEFAULT: the least used
        node where it fits now (or, with fits_now=False, could ever fit). SPREAD: the next node in
        turn where it fits now, else where it could. The view is debited at once, so a burst of
        requests spreads before the next reports arrive."""
        alive = [n for nid, n in sorted(self.nodes.items()) if n["alive"] and nid in self.node_conns
                 and (not only or nid == only)]

        def fits(n: dict, key: str) -> bool:
            return all(n[key].get(k, 0.0) + 1e-9 >= v for k, v in demand.items())

        if strategy == "SPREAD":
            if not alive:
                return None
            start = self._spread_next % len(alive)
            order = alive[start:] + alive[:start]
            chosen = next((n for n in order if fits(n, "available")), None) or \
                next((n for n in order if fits(n, "resources")), None)
            if chosen is not None:
                self._spread_next = alive.index(chosen) + 1
        else:
            candidates = [n for n in alive if n["node_id"] != exclude and fits(n, "available" if fits_now else "resources")]
            chosen = min(candidates, key=_utilisation, default=None)
            if chosen is not None and _utilisation(chosen, demand) >= below:
                chosen = None
        if chosen is None:
            return None
        for k, v in demand.items():
            chosen["available"][k] = chosen["available"].get(k, 0.0) - v
        return chosen["node_id"]

    def on_pick_node(self, conn: Connection, msg: dict, bufs: list) -> dict:
        node_id = self.pick_node(normalize(msg["demand"]), strategy=msg.get("strategy") or "",
                                 fits_now=msg.get("fits_now", True),
                                 exclude=msg.get("exclude", ""), below=msg.get("below", 2.0))
        return {"node_id": node_id, "address": self.nodes[node_id]["address"]} if node_id else {}

    def on_heartbeat(self, conn: Connection, msg: dict, bufs: list) -> None:
        node = self.nodes.get(msg["node_id"])
        if node is not None and self.node_conns.get(msg["node_id"]) is conn:
            node["last_heartbeat"] = time.monotonic()

    def on_register_job(self, conn: Connection, msg: dict, bufs: list) -> dict:
        job_id = f"{next(self.job_counter):08x}"
        self.persist.meta("job_counter", int(job_id, 16))
        conn.peer_info["job_id"] = job_id
        self.driver_conns[job_id] = conn
        self.jobs[job_id] = {"job_id": job_id, "namespace": msg["namespace"], "driver_pid": msg["pid"],
                             "status": "RUNNING", "start_time": time.time(), "end_time": None,
                             "entrypoint": msg.get("entrypoint", ""), "kind": msg.get("kind", "script")}
        self.persist.job(self.jobs[job_id])
        return {"job_id": job_id, "nodes": [n for n in self.nodes.values() if n["alive"]]}

    def _public_nodes(self) -> list[dict]:
        return [{k: v for k, v in n.items() if k not in ("last_heartbeat", "available", "pending")}
                for n in self.nodes.values()]

    def on_list_nodes(self, conn: Connection, msg: dict, bufs: list) -> dict:
        return {"nodes": self._public_nodes()}

    def on_list_jobs(self, conn: Connection, msg: dict, bufs: list) -> dict:
        drivers = [{**j, "type": "DRIVER"} for j in self.jobs.values()]
        return {"jobs": drivers + self.job_manager.list()}

    # -- placement groups (placement.py) ----------------------------------------------------
    def on_create_pg(self, conn: Connection, msg: dict, bufs: list) -> dict:
        if msg.get("name"):
            self._check_namespace(conn, msg.get("namespace", ""), f"the placement group named {msg['name']!r}")
        return self.placement_groups.create(msg, conn.peer_info.get("job_id") or msg.get("job_id", ""))

    async def on_wait_pg(self, conn: Connection, msg: dict, bufs: list) -> dict:
        return {"ready": await self.placement_groups.wait(msg["pg_id"], msg.get("timeout"))}

    async def on_remove_pg(self, conn: Connection, msg: dict, bufs: list) -> dict:
        await self.placement_groups.remove(msg["pg_id"])
        return {}

    def on_get_pg(self, conn: Connection, msg: dict, bufs: list) -> dict:
        if msg.get("name"):
            self._check_namespace(conn, msg.get("namespace", ""), f"the placement group named {msg['name']!r}")
            return self.placement_groups.by_name(msg["name"], msg.get("namespace", ""))
        return self.placement_groups.get(msg["pg_id"]).public()

    def on_list_pgs(self, conn: Connection, msg: dict, bufs: list) -> dict:
        return {"placement_groups": self.placement_groups.list()}

    # -- submitted jobs (runtime/jobs/manager.py) ------------------------------------------
    async def _reserve_for_job(self, job_id: str, demand: dict) -> Any:
        """A job's entrypoint resources, held by a placement group of one bundle until the job
        ends (the returned function removes it)."""
        pg_id = secrets.token_hex(16)
        self.placement_groups.create({"pg_id": pg_id, "bundles": [demand], "strategy": "STRICT_PACK",
                                      "name": f"_entrypoint_{job_id}", "detached": True}, "")
        try:
            placed = await self.placement_groups.wait(pg_id, None)
        except asyncio.CancelledError:  # the job was stopped while it waited
            await self.placement_groups.remove(pg_id)
            raise
        if not placed:
            raise ValueError("the placement group holding them was removed")

        async def release() -> None:
            await self.placement_groups.remove(pg_id)
        return release

    async def on_submit_job(self, conn: Connection, msg: dict, bufs: list) -> dict:
        reply = await self.job_manager.submit(msg, bufs)
        renv = msg.get("runtime_env") or {}
        for uri in [renv.get("working_dir")] + list(renv.get("py_modules") or []):
            if uri:  # kept while the job runs (see _sweep_packages)
                self.package_users[name_of_uri(uri)].add(reply["job_id"])
        return reply

    def on_job_status(self, conn: Connection, msg: dict, bufs: list) -> dict:
        return self.job_manager.get(msg["job_id"])

    def on_job_logs(self, conn: Connection, msg: dict, bufs: list) -> tuple:
        return self.job_manager.logs(msg["job_id"], int(msg.get("offset", 0)))

    def on_job_artifact(self, conn: Connection, msg: dict, bufs: list) -> tuple:
        return self.job_manager.artifact(msg["job_id"])

    def on_stop_job(self, conn: Connection, msg: dict, bufs: list) -> dict:
        return {"stopped": self.job_manager.stop(msg["job_id"])}

    def on_delete_job(self, conn: Connection, msg: dict, bufs: list) -> dict:
        return {"deleted": self.job_manager.delete(msg["job_id"])}

    async def on_cluster_resources(self, conn: Connection, msg: dict, bufs: list) -> dict:
        async def ask(node_id: str, c: Connection) -> tuple[str, dict]:
            reply, _ = await c.request({"op": "get_resources"}, timeout=10)
            return node_id, reply

        replies = await asyncio.gather(*(ask(n, c) for n, c in self.node_conns.items() if not c.closed),
                                       return_exceptions=True)
        return {"nodes": {n: r for n, r in (x for x in replies if isinstance(x, tuple))}}

    async def on_autoscaler_state(self, conn: Connection, msg: dict, bufs: list) -> dict:
        """What the autoscaler's monitor decides from (runtime/autoscaler/monitor.py)."""
        nodes = (await self.on_cluster_resources(conn, msg, bufs))["nodes"]
        out = [{"node_id": nid, "hostname": self.nodes[nid]["hostname"], "is_head": self.nodes[nid]["is_head"],
                "total": r["total"], "available": r["available"], "pending": r["pending_demand"]}
               for nid, r in nodes.items() if self.nodes[nid]["alive"]]
        pending = [g for g in self.placement_groups.list() if g["state"] in ("PENDING", "RESCHEDULING")]
        raw = self.kv.get("__autoscaler_request_resources")
        return {"nodes": out, "pending_pgs": pending, "requested": json.loads(raw) if raw else []}

    async def _ask_nodes(self, op: str) -> list[dict]:
        """The same question to every live node manager, at once; those that fail are left out."""
        async def ask(c: Connection) -> dict:
            reply, _ = await c.request({"op": op}, timeout=15)
            return reply

        replies = await asyncio.gather(*(ask(c) for c in self.node_conns.values() if not c.closed),
                                       return_exceptions=True)
        return [r for r in replies if isinstance(r, dict)]

    async def on_list_objects(self, conn: Connection, msg: dict, bufs: list) -> dict:
        replies = await self._ask_nodes("list_objects")
        return {"objects": [o for r in replies for o in r["objects"]], "stores": [r["store"] for r in replies]}

    async def on_list_workers(self, conn: Connection, msg: dict, bufs: list) -> dict:
        return {"workers": [w for r in await self._ask_nodes("list_workers") for w in r["workers"]]}

    async def on_list_logs(self, conn: Connection, msg: dict, bufs: list) -> dict:
        """Log files by node, of one node (`node_id`) or of all."""
        node = msg.get("node_id")
        if node:
            if node not in self.node_conns:
                raise ValueError(f"No live node {node!r}; `runtime list nodes` shows them.")
            reply, _ = await self.node_conns[node].request({"op": "list_logs", "glob": msg.get("glob")}, timeout=15)
            return {"nodes": {node: reply["logs"]}}
        return {"nodes": {r["node_id"]: r["logs"] for r in await self._ask_nodes("list_logs")}}

    async def on_read_log(self, conn: Connection, msg: dict, bufs: list) -> dict:
        """A log file of a node (the head's when no `node_id`), by the node manager that has it."""
        node = msg.get("node_id") or next((n for n, r in self.nodes.items() if r["is_head"] and r["alive"]), None)
        if node not in self.node_conns:
            raise ValueError(f"No live node {node!r}; `runtime list nodes` shows them.")
        ask = {k: msg.get(k) for k in ("filename", "lines", "offset", "task_id")}
        reply, _ = await self.node_conns[node].request({"op": "read_log", **ask}, timeout=30)
        return reply

    def on_cluster_metrics(self, conn: Connection, msg: dict, bufs: list) -> dict:
        """Counts for the head's Prometheus endpoint (runtime/node/metrics_export.py)."""
        tasks = self.task_table.counts()
        actors = self.actor_dir.counts()
        pgs = collections.Counter(pg["state"] for pg in self.placement_groups.list())
        jobs = collections.Counter(j["status"] for j in self.on_list_jobs(conn, {}, [])["jobs"])
        nodes = collections.Counter("ALIVE" if n["alive"] else "DEAD" for n in self.nodes.values())
        return {"tasks": [[*k, v] for k, v in tasks.items()], "actors": [[*k, v] for k, v in actors.items()],
                "placement_groups": list(pgs.items()), "jobs": list(jobs.items()), "nodes": list(nodes.items())}

    # -- shared with the actor directory and placement groups ----------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        _TASKS.add(task)
        task.add_done_callback(_TASKS.discard)

    def _job_namespace(self, conn: Connection) -> str | None:
        """The namespace of the job this connection works for: a driver's is the job it registered
        on this connection (or named when it reconnected after a restart of this process); a
        worker's, the job it said it runs tasks of when it connected (workers are never shared
        between jobs). None for connections of no job (tools, the dashboard, node managers)."""
        job = self.jobs.get(conn.peer_info.get("job_id") or "")
        return job["namespace"] if job is not None else None

    def _check_namespace(self, conn: Connection, namespace: str, what: str) -> None:
        """With isolate_namespaces (`runtime start --head --isolate-namespaces`), a job reaches
        named resources of its own namespace only."""
        if not self.config.isolate_namespaces:
            return
        mine = self._job_namespace(conn)
        if mine is None:
            raise ValueError(f"This cluster isolates namespaces (--isolate-namespaces), and {what} in namespace "
                             f"{namespace!r} was asked for by a connection that belongs to no job; only drivers "
                             "and their tasks and actors look up named resources, each in its own namespace.")
        if namespace != mine:
            raise ValueError(f"This cluster isolates namespaces (--isolate-namespaces): {what} in namespace "
                             f"{namespace!r} cannot be reached from a job in namespace {mine!r}. Run the driver in "
                             f"that namespace (runtime.init(namespace={namespace!r})), or hand this job the actor "
                             "handle itself.")

    # -- KV ----------------------------------------------------------------------------
    def on_kv_put(self, conn: Connection, msg: dict, bufs: list) -> dict:
        self.kv[msg["key"]] = bytes(bufs[0]) if bufs else b""
        self.persist.kv_put(msg["key"], self.kv[msg["key"]])
        return {}

    def on_kv_get(self, conn: Connection, msg: dict, bufs: list) -> Any:
        value = self.kv.get(msg["key"])
        return ({"found": value is not None}, [value] if value is not None else [])

    def on_kv_del(self, conn: Connection, msg: dict, bufs: list) -> dict:
        self.persist.kv_delete(msg["key"])
        return {"deleted": self.kv.pop(msg["key"], None) is not None}

    # -- runtime_env packages (runtime/gcs/packages.py) ---------------------------------
    def on_package_exists(self, conn: Connection, msg: dict, bufs: list) -> dict:
        name = check_name(msg["name"])
        job_id = conn.peer_info.get("job_id") or msg.get("job_id")
        if job_id:
            self.package_users[name].add(job_id)
        exists = self.packages.exists(name)
        if exists:
            os.utime(self.packages.path(name))
        return {"exists": exists}

    def on_put_package(self, conn: Connection, msg: dict, bufs: list) -> dict:
        self.packages.put(check_name(msg["name"]), bytes(bufs[0]) if bufs else b"")
        return {}

    def on_get_package(self, conn: Connection, msg: dict, bufs: list) -> tuple:
        return {}, [self.packages.get(check_name(msg["name"]))]

    def _sweep_packages(self) -> None:
        """Packages of jobs that ended, unused for runtime_env_cache_ttl_s, are deleted."""
        live = {j for j, job in self.jobs.items() if job.get("status") == "RUNNING"}
        live |= {j for j, job in self.job_manager.jobs.items() if job["status"] in ("PENDING", "RUNNING")}
        in_use = {name for name, users in self.package_users.items() if users & live}
        for key in self.job_envs.sweep():
            logger.info("removed the unused job runtime_env cache entry %s", key)
        for name in self.packages.remove_unused(in_use, self.config.runtime_env_cache_ttl_s):
            self.package_users.pop(name, None)
            logger.info("removed the unused runtime_env package %s", name)

    async def on_runtime_env_cache(self, conn: Connection, msg: dict, bufs: list) -> dict:
        """Every node's runtime_env cache (`runtime status`), and the head's package store."""
        async def ask(node_id: str, c: Connection) -> dict:
            try:
                reply, _ = await c.request({"op": "runtime_env_cache"}, timeout=5)
                return {"node_id": node_id, "entries": reply["entries"]}
            except Exception as e:  # noqa: BLE001 - a node that does not answer is shown as such
                return {"node_id": node_id, "error": str(e), "entries": []}
        nodes = await asyncio.gather(*(ask(n, c) for n, c in list(self.node_conns.items()) if not c.closed))
        root = self.packages.root
        names = sorted(os.listdir(root)) if os.path.isdir(root) else []
        pkgs = [{"name": n, "bytes": os.path.getsize(os.path.join(root, n))} for n in names if not n.endswith(".tmp")]
        return {"nodes": list(nodes), "packages": pkgs, "jobs": self.job_envs.describe()}

    def on_shutdown_cluster(self, conn: Connection, msg: dict, bufs: list) -> dict:
        for c in self.node_conns.values():
            if not c.closed:
                c.send({"op": "shutdown"})
        asyncio.get_running_loop().call_later(0.2, self.done.set)
        return {}


_TASKS: set = set()


def _utilisation(node: dict, demand: dict | None = None) -> float:
    """The busier of CPU and GPU as a used fraction, by the node's last report (after `demand`)."""
    demand = demand or {}
    used = [1.0 - (node["available"].get(k, 0.0) - demand.get(k, 0.0)) / v for k, v in node["resources"].items()
            if v > 0 and k in ("CPU", "GPU")]
    return max(used, default=0.0)


def main() -> None:
    args = json.loads(sys.argv[1])
    args["token_file_path"] = args.pop("token_file")
    with open(args["token_file_path"]) as f:
        args["token"] = f.read().strip()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s gcs %(name)s: %(message)s")
    asyncio.run(ControlStore(args).run())
    os._exit(0)


if __name__ == "__main__":
    main()
