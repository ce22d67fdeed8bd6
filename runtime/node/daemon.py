"""The node manager: one per node. It owns the node's resources, leases workers to
owners, runs the worker pool, manages the node's shared-memory object store, and
reports to the control store.

Run as `python -m runtime.node ARGS_JSON`. Listening sockets may be passed in by the
parent (as inherited fds) so that clients can connect before this process is up.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import defaultdict, deque
from typing import Any

import psutil

from .. import config as config_mod
from .. import owner_pipe
from .._core.private_files import make_private_dir
from ..rpc.connection import Connection, bind_socket, connect, serve, socket_address
from ..runtime_env.spec import env_hash
from . import logs
from .metrics_export import MetricsExporter
from .object_store import ObjectStoreManager
from .transfer import ObjectTransfer
from .resources import (LeaseQueue, LeaseRequest, ResourcePool, bundle_resources, is_group_resource,
                        normalize)
from .runtime_env_agent import RuntimeEnvAgent
from .worker_pool import WorkerRecord, WorkerStarter
from .zygote import become_subreaper, start_zygote

logger = logging.getLogger("runtime.node")


def infeasible_text(demand: dict, nodes: list[dict]) -> str:
    """Why a request can never be granted on this cluster: what is missing and what there is."""
    def shown(res: dict) -> str:
        keep = {k: v for k, v in sorted(res.items())
                if k in demand or not (k.startswith("node:") or k in ("memory", "object_store_memory"))}
        return "{" + ", ".join(f"{k}: {v:g}" for k, v in keep.items()) + "}"
    missing = {k: v for k, v in demand.items() if all(n.get(k, 0.0) + 1e-9 < v for n in nodes)}
    where = "no node of the cluster has" if len(nodes) > 1 else "the cluster's only node does not have"
    return (f"A task or actor requires {shown(demand)}, but {where} {shown(missing or demand)} "
            f"(nodes: {'; '.join(shown(n) for n in nodes)}). It waits until a node with enough "
            "resources joins (an autoscaler may add one); interrupt it, or lower the request.")


class NodeDaemon:
    def __init__(self, args: dict) -> None:
        self.args = args
        self.node_id: str = args["node_id"]
        self.token: str = args["token"]
        self.session_dir: str = args["session_dir"]
        self.config = config_mod.SystemConfig.from_json(args["system_config"])
        total = {"CPU": float(args["num_cpus"]), "memory": float(args["memory"]),
                 "object_store_memory": float(args["object_store_memory"])}
        if args.get("num_gpus"):
            total["GPU"] = float(args["num_gpus"])
        total.update(normalize(args.get("resources") or {}))
        total[f"node:{args['node_ip']}"] = 1.0
        self.pool = ResourcePool(total)
        self.leases = LeaseQueue(self.pool)
        self.shm_dir = args["shm_dir"]
        make_private_dir(self.shm_dir)  # 0700; the object files in it are 0600 (shm.py)
        spill_root = self.config.object_spilling_directory or os.path.join(self.session_dir, "spill")
        self.store = ObjectStoreManager(self.shm_dir, os.path.join(spill_root, f"orrery-spill-{self.node_id[:12]}"),
                                        int(args["object_store_memory"]))
        self.workers: dict[str, WorkerRecord] = {}
        self.idle: dict[str, deque[str]] = defaultdict(deque)
        self.waiting_for_worker: dict[str, deque] = defaultdict(deque)  # env_key -> (req, gpus) waiting
        self.starter = WorkerStarter(self, args["num_cpus"])  # worker_pool.py: forks, caps and replaces workers
        self.core_workers: dict[str, Connection] = {}  # drivers and workers, for state queries
        self.lease_ids = itertools.count(1)
        self.request_ids = itertools.count(1)
        self.gcs: Connection | None = None
        self.stopping = False
        self.infeasible_warned: set[str] = set()
        self.bundles: dict[str, dict] = {}  # placement group id -> its bundles reserved here
        self.exit_codes: dict[int, int] = {}
        self.dead_workers: deque[dict] = deque(maxlen=200)  # the latest exits, for the state API
        # Other nodes (from the control store's node table), and connections to their managers.
        self.peers: dict[str, dict] = {}
        self.peer_conns: dict[str, Connection] = {}
        self._peer_connecting: dict[str, asyncio.Future] = {}
        self.metrics = MetricsExporter(self, args.get("metrics_fd"))
        self.runtime_envs = RuntimeEnvAgent(os.path.join(self.session_dir, "runtime_resources", self.node_id[:12]),
                                            self._fetch_package, self.config)
        self.transfer = ObjectTransfer(self.node_id, self.token, self.store, self._peer_for_transfer,
                                       request_timeout=self.config.hello_timeout_s)
        self._report_scheduled = False
        self.nodes_epoch = [0, 0]
        self.handlers = {
            "hello": self.on_hello, "lease": self.on_lease, "return_lease": self.on_return_lease,
            "lease_actor": self.on_lease_actor, "kill_worker": self.on_kill_worker,
            "blocked": self.on_blocked, "unblocked": self.on_unblocked,
            "create_object": self.on_create_object, "seal_object": self.on_seal_object,
            "free_objects": self.on_free_objects, "restore_object": self.on_restore_object,
            "get_resources": self.on_get_resources, "list_objects": self.on_list_objects,
            "node_info": self.on_node_info, "shutdown": self.on_shutdown,
            "prepare_bundles": self.on_prepare_bundles, "commit_bundles": self.on_commit_bundles,
            "cancel_bundles": self.on_cancel_bundles, "nodes_changed": self.on_nodes_changed,
            "pull_object": self.on_pull_object, "object_info": self.on_object_info,
            "metrics_report": self.on_metrics_report, "list_workers": self.on_list_workers,
            "list_logs": self.on_list_logs, "read_log": self.on_read_log,
            "runtime_env_cache": self.on_runtime_env_cache,
        }
        # The control store's to send, over the connection this node opened to it: from a peer that
        # connected here they would replace the node list or hold resources for nobody.
        for op in ("nodes_changed", "lease_actor", "prepare_bundles", "commit_bundles", "cancel_bundles"):
            self.handlers[op] = _ours_only(op, self.handlers[op])

    # -- lifecycle ---------------------------------------------------------------------
    async def run(self, zygote_pid: int, zygote_sock: socket.socket) -> None:
        self.zygote_pid, self.zygote_sock = zygote_pid, zygote_sock
        loop = asyncio.get_running_loop()
        self.done = asyncio.Event()
        loop.add_signal_handler(signal.SIGCHLD, self._reap)
        loop.add_reader(zygote_sock.fileno(), self.starter.zygote_readable)
        loop.add_signal_handler(signal.SIGTERM, self.done.set)
        loop.add_signal_handler(signal.SIGINT, self.done.set)
        owner_pipe.watch(loop, self.args.get("owner_fd"), self._owner_gone)
        transfer_sock = bind_socket(f"tcp:{self.args['node_ip']}:0")  # object data streams (transfer.py)
        transfer_server = loop.create_task(self.transfer.serve(transfer_sock))
        self.transfer_address = socket_address(transfer_sock)
        await self._connect_gcs(self.config.startup_timeout_s)
        servers = []
        for fd in (self.args["unix_fd"], self.args["tcp_fd"]):
            sock = socket.socket(fileno=fd)
            servers.append(await serve(sock, self.handlers, self.token, on_close=self.on_conn_closed, name="node",
                                       hello_timeout=self.config.hello_timeout_s))
        hb = loop.create_task(self._heartbeat())
        reaper = loop.create_task(self._idle_reaper())
        self.metrics.start(loop)
        await self.done.wait()
        await self.metrics.stop()
        hb.cancel()
        reaper.cancel()
        transfer_server.cancel()
        transfer_sock.close()
        for s in servers:
            s.close()
        self.shutdown_workers()

    def _owner_gone(self) -> None:
        logger.info("the driver that owns this embedded cluster is gone; shutting down")
        self.done.set()

    async def _connect_gcs(self, timeout: float) -> None:
        """Connect and register; after a control-store restart also say which actor workers and
        placement-group bundles this node still holds, so that they carry on."""
        gcs = await connect(self.args["gcs_address"], self.handlers, self.token,
                            info={"kind": "node", "node_id": self.node_id}, on_close=self._gcs_lost,
                            timeout=timeout, name="node->gcs")
        reply, _ = await gcs.request({
            "op": "register_node", "node_id": self.node_id, "resources": self.pool.total,
            "address": self.args["tcp_address"], "unix_address": self.args["unix_address"], "shm_dir": self.shm_dir,
            "pid": os.getpid(), "hostname": socket.gethostname(), "node_ip": self.args["node_ip"],
            "session_dir": self.session_dir, "transfer_address": self.transfer_address,
            "labels": self.args.get("labels") or {}, "metrics_export_address": self.metrics.address,
            "actors": [{"actor_id": w.actor_id, "worker_id": w.worker_id} for w in self.workers.values()
                       if w.state == "actor"],
            "bundles": list(self.bundles)}, timeout=timeout)
        self.gcs = gcs
        self.on_nodes_changed(gcs, reply, [])

    def _gcs_lost(self, conn: Connection) -> None:
        """The control store went away. Work in progress carries on (leases and objects do not go
        through it); reconnect for up to gcs_reconnect_timeout_s, then give up and shut down."""
        if self.done.is_set() or conn is not self.gcs:
            return
        self.on_conn_closed(conn)  # actor placements it was waiting for are void
        logger.warning("lost the control store; reconnecting for up to %g s", self.config.gcs_reconnect_timeout_s)
        _spawn(self._reconnect_gcs())

    async def _reconnect_gcs(self) -> None:
        deadline = time.monotonic() + self.config.gcs_reconnect_timeout_s
        while not self.done.is_set():
            try:
                await self._connect_gcs(timeout=2.0)
                logger.info("reconnected to the control store")
                return
            except ValueError as e:  # it refused us: declared dead meanwhile
                logger.error("the control store refused this node: %s; shutting down", e)
                break
            except Exception as e:  # noqa: BLE001 - not back yet
                if time.monotonic() > deadline:
                    logger.error("the control store did not come back within %g s (%s); shutting down",
                                 self.config.gcs_reconnect_timeout_s, e)
                    break
            await asyncio.sleep(0.1)  # retry period while the control store restarts
        self.done.set()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval_s)
            if self.gcs is not None and not self.gcs.closed:
                self.gcs.send({"op": "heartbeat", "node_id": self.node_id})
            # Also what is free here, every beat: the control store's view, debited by each node it
            # picks for a spillback that may never come, is set right within a beat.
            self._report_resources()
            if self.peers and self.leases.waiting:
                _spawn(self._respill())

    # -- the other nodes ---------------------------------------------------------------
    def on_nodes_changed(self, conn: Connection, msg: dict, bufs: list) -> None:
        """The control store's list of live nodes (on registration, and whenever one joins or dies);
        an older list than the one applied (a register reply overtaken by a broadcast) is ignored."""
        epoch = msg.get("epoch") or [0, 0]
        if epoch < self.nodes_epoch:
            return
        self.nodes_epoch = epoch
        peers = {n["node_id"]: n for n in msg.get("nodes", ()) if n["node_id"] != self.node_id}
        for gone in set(self.peers) - set(peers):
            for c in list(self.core_workers.values()):  # owners here drop their leases on it
                if not c.closed:
                    c.send({"op": "node_dead", "node_id": gone, "address": self.peers[gone]["address"]})
        self.peers = peers
        for node_id in list(self.peer_conns):
            if node_id not in self.peers:
                self.peer_conns.pop(node_id).close()
        if self.peers:
            self._report_resources()
            if self.leases.waiting:
                _spawn(self._respill())

    async def _peer_conn(self, node_id: str) -> Connection:
        conn = self.peer_conns.get(node_id)
        if conn is not None and not conn.closed:
            return conn
        fut = self._peer_connecting.get(node_id)
        if fut is None:
            peer = self.peers.get(node_id)
            if peer is None:
                raise ConnectionError(f"node {node_id[:8]} is not alive (it died or left the cluster)")
            fut = self._peer_connecting[node_id] = asyncio.ensure_future(connect(
                peer["address"], self.handlers, self.token, info={"kind": "node-peer", "node_id": self.node_id},
                timeout=10, name=f"node->{node_id[:8]}"))
            fut.add_done_callback(lambda _f: self._peer_connecting.pop(node_id, None))
        conn = await asyncio.shield(fut)
        self.peer_conns[node_id] = conn
        return conn

    async def _peer_for_transfer(self, node_id: str) -> tuple[Connection, str]:
        conn = await self._peer_conn(node_id)
        return conn, self.peers[node_id]["transfer_address"]

    def _report_resources(self) -> None:
        """Tell the control store what is free here (at most every 50 ms), so that other nodes
        can spill work to this one. Only in clusters of more than one node."""
        if self._report_scheduled or not self.peers:
            return
        self._report_scheduled = True

        def send() -> None:
            self._report_scheduled = False
            if self.gcs is not None and not self.gcs.closed:
                self.gcs.send({"op": "resource_report", "node_id": self.node_id, "total": self.pool.total,
                               "available": self.pool.available, "pending": len(self.leases.waiting)})

        asyncio.get_running_loop().call_later(0.05, send)

    async def _pick_node(self, demand: dict, strategy: str = "", fits_now: bool = True,
                         below: float = 2.0) -> dict | None:
        """Ask the control store for another node for `demand` (None: none suits, or no answer);
        `below`: only a node whose utilisation would stay under it."""
        try:
            reply, _ = await self.gcs.request({"op": "pick_node", "demand": demand, "exclude": self.node_id,
                                               "strategy": strategy, "fits_now": fits_now, "below": below},
                                              timeout=10)
        except Exception as e:  # noqa: BLE001 - scheduling goes on locally without the view
            logger.warning("could not ask the control store for a node: %s", e)
            return None
        return reply if reply.get("node_id") and reply["node_id"] in self.peers else None

    async def _respill(self) -> None:
        """Requests waiting here that another node could serve now go there (spillback)."""
        for req in list(self.leases.waiting.values())[:16]:
            fut, _conn, _env, _kind = req.payload
            if req.pinned or fut.done() or self.pool.fits(req.demand):
                continue
            target = await self._pick_node(req.demand)
            if target is not None and self.leases.cancel(req.request_id) is not None and not fut.done():
                fut.set_result({"spillback": target["address"], "node_id": target["node_id"]})

    async def _idle_reaper(self) -> None:
        # Periodic housekeeping, not synchronisation: stop extra idle workers.
        while True:
            await asyncio.sleep(max(1.0, self.config.idle_worker_timeout_s / 4))
            now = time.monotonic()
            keep = int(self.pool.total.get("CPU", 1))
            idle = [w for w in self.workers.values() if w.state == "idle"]
            for w in sorted(idle, key=lambda w: w.idle_since)[:max(0, len(idle) - keep)]:
                if now - w.idle_since > self.config.idle_worker_timeout_s:
                    self.kill(w)
            for key in self.runtime_envs.sweep():
                logger.info("removed the unused runtime_env cache entry %s", key)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.exit_codes[pid] = os.waitstatus_to_exitcode(status)
            self.starter.exited(pid)

    def shutdown_workers(self) -> None:
        self.stopping = True
        pids = [w.pid for w in self.workers.values() if w.pid] + [self.zygote_pid]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        pending = set(pids)
        while pending and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, 0)
                pending.discard(pid)
            except ChildProcessError:
                break
        self.store.close()

    # -- connections -------------------------------------------------------------------
    def on_hello(self, conn: Connection, msg: dict, bufs: list) -> None:
        info = conn.peer_info
        kind = info.get("kind")
        if kind == "worker" and info.get("worker_id", "") in self.workers:
            rec = self.workers[info["worker_id"]]
            if rec.state != "starting":
                conn.abort("unexpected worker registration")
                return
            rec.conn, rec.pid, rec.address = conn, info["pid"], info["address"]
            self.core_workers[rec.worker_id] = conn
            self._worker_ready(rec)
            self.starter.registered(rec)
        elif kind == "worker" and info.get("worker_id") in self.starter.expired:
            self.starter.expired.discard(info["worker_id"])
            conn.abort("this worker registered after its start had timed out (startup_timeout_s)")
        elif kind in ("driver", "worker"):  # a driver, or another node's worker leasing here
            self.core_workers[info["worker_id"]] = conn

    def on_conn_closed(self, conn: Connection) -> None:
        info = conn.peer_info
        wid = info.get("worker_id")
        if wid:
            self.core_workers.pop(wid, None)
            self.metrics.worker_gone(wid)
            freed = self.store.free_owner(wid)
            if freed:
                logger.info("freed %d objects owned by departed worker %s", freed, wid[:8])
        if info.get("kind") == "worker" and wid in self.workers:
            self.worker_died(self.workers[wid])
        ended = info.get("leased_for_job") if info.get("kind") == "driver" else None
        if ended:  # no task of that job can come from here again: its idle workers are not kept
            for rec in list(self.workers.values()):
                if rec.job_id == ended and rec.state == "idle":
                    self.kill(rec)
        # Leases held by this connection (an owner) go back to the pool, and their workers go:
        # what they run is the departed owner's (left "released", they would never be used again).
        for rec in list(self.workers.values()):
            if rec.lease_owner is conn and rec.state == "leased":
                self._release_lease(rec)
                self.kill(rec)
        for req in list(self.leases.waiting.values()):
            if req.payload and req.payload[1] is conn:
                self.leases.cancel(req.request_id)
        self.schedule()

    # -- leases ------------------------------------------------------------------------
    def on_lease(self, conn: Connection, msg: dict, bufs: list) -> Any:
        """A worker for a task: granted here, or answered with `spillback` (another node's
        address) when this node cannot run it now and another can (see _place)."""
        demand = normalize(msg.get("demand"))
        strategy = msg.get("strategy")
        if not self.peers or (strategy is None and self.pool.fits(demand) and not self.leases.waiting
                              and self._utilisation(demand) <= self.config.scheduler_spread_threshold):
            return self._queue_lease(conn, demand, msg.get("env") or {}, "task", pinned=False, job=msg.get("job", ""))
        return self._place(conn, msg, demand, "task")

    def _utilisation(self, demand: dict) -> float:
        """The busiest of CPU and GPU as a used fraction, once `demand` is granted."""
        used = [1.0 - (self.pool.available.get(k, 0.0) - demand.get(k, 0.0)) / t
                for k in ("CPU", "GPU") if (t := self.pool.total.get(k, 0.0)) > 0]
        return max(used, default=0.0)

    async def _place(self, conn: Connection, msg: dict, demand: dict, kind: str) -> dict:
        """Scheduling across nodes. DEFAULT (Ray's hybrid policy): here while this node is used
        up to scheduler_spread_threshold (pack), then on a less used node where it fits now (spread);
        when it does not fit here, on the least used node where it fits now, else queue here if it
        can ever run here, else on a node where it can. SPREAD: the control store rotates over the nodes. A node id (affinity): there;
        with soft=True, DEFAULT when that node is gone. A request already spilled once stays."""
        strategy = msg.get("strategy")
        pinned = bool(msg.get("spilled"))
        if isinstance(strategy, list) and strategy[0] == "node":
            _, node_id, soft = strategy
            if node_id == self.node_id:
                pinned = True
            elif node_id in self.peers:
                return {"spillback": self.peers[node_id]["address"], "node_id": node_id}
            elif not soft:
                raise ValueError(f"NodeAffinitySchedulingStrategy(node_id={node_id!r}, soft=False): that node is not "
                                 "alive. List nodes with runtime.nodes(), or pass soft=True to run elsewhere.")
            strategy = None
        if not pinned and self.peers:
            if strategy == "SPREAD":
                target = await self._pick_node(demand, "SPREAD", fits_now=False)
                if target is not None and target["node_id"] != self.node_id:
                    return {"spillback": target["address"], "node_id": target["node_id"]}
            elif not self.pool.fits(demand) or self.leases.waiting:
                target = await self._pick_node(demand)
                if target is None and not self.pool.feasible(demand):
                    target = await self._pick_node(demand, fits_now=False)
                if target is not None:
                    return {"spillback": target["address"], "node_id": target["node_id"]}
            elif self._utilisation(demand) > self.config.scheduler_spread_threshold:
                # Past the threshold: spread to a node that would be less used than this one.
                target = await self._pick_node(demand, below=self._utilisation(demand))
                if target is not None:
                    return {"spillback": target["address"], "node_id": target["node_id"]}
        return await self._queue_lease(conn, demand, msg.get("env") or {}, kind, pinned=pinned, job=msg.get("job", ""))

    def _queue_lease(self, conn: Connection, demand: dict, env: dict, kind: str, pinned: bool,
                     job: str = "") -> asyncio.Future:
        """Workers are pooled by job and runtime_env: a worker never runs tasks of two jobs or of
        two environments (so env_vars, cwd and sys.path cannot cross from one to the other)."""
        fut = asyncio.get_running_loop().create_future()
        if job and conn.peer_info.get("kind") == "driver":
            conn.peer_info["leased_for_job"] = job  # its idle workers go when the driver does
        req = LeaseRequest(next(self.request_ids), demand, _env_key(env, job), payload=(fut, conn, env, kind),
                           pinned=pinned)
        if not self.leases.add(req):
            self._warn_infeasible(conn, demand)
        self.schedule()
        return fut

    def on_lease_actor(self, conn: Connection, msg: dict, bufs: list) -> asyncio.Future:
        # The control store chose this node for the actor: it waits here.
        demand = normalize(msg.get("demand"))
        return self._queue_lease(conn, demand, msg.get("env") or {}, "actor:" + msg["actor_id"], pinned=True,
                                 job=msg.get("job", ""))

    # -- placement group bundles (two-phase: the control store prepares on every node, then commits)
    def on_prepare_bundles(self, conn: Connection, msg: dict, bufs: list) -> dict:
        pg_id = msg["pg_id"]
        if pg_id in self.bundles:
            return {"ok": True}
        base: dict[str, float] = {}
        for _index, bundle in msg["bundles"]:
            for k, v in normalize(bundle).items():
                base[k] = base.get(k, 0.0) + v
        if not self.pool.fits(base):
            return {"ok": False, "reason": f"node {self.node_id[:8]} has {self.pool.available} free, "
                                          f"the bundles need {base}"}
        gpus = self.pool.acquire(base)
        self.bundles[pg_id] = {"bundles": msg["bundles"], "base": base, "gpus": gpus, "extra": {}}
        return {"ok": True}

    def on_commit_bundles(self, conn: Connection, msg: dict, bufs: list) -> dict:
        rec = self.bundles.get(msg["pg_id"])
        if rec is None:
            raise ValueError(f"placement group {msg['pg_id']} was not prepared on node {self.node_id[:8]}")
        if not rec["extra"]:
            extra: dict[str, float] = {}
            for index, bundle in rec["bundles"]:
                for k, v in bundle_resources(msg["pg_id"], index, normalize(bundle)).items():
                    extra[k] = extra.get(k, 0.0) + v
            rec["extra"] = extra
            self.pool.add_resources(extra)
            self.schedule()
        return {"ok": True}

    def on_cancel_bundles(self, conn: Connection, msg: dict, bufs: list) -> dict:
        """Undo a prepare, or remove a committed group: its tasks' and actors' workers are killed."""
        pg_id = msg["pg_id"]
        rec = self.bundles.pop(pg_id, None)
        if rec is None:
            return {"ok": True}
        for worker in list(self.workers.values()):
            if any(pg_id in k for k in worker.demand):
                self.kill(worker)
        self.pool.remove_resources(rec["extra"])
        self.pool.release(rec["base"], rec["gpus"])
        self.schedule()
        return {"ok": True}

    def _warn_infeasible(self, conn: Connection, demand: dict) -> None:
        if any(is_group_resource(k) for k in demand):
            return  # waits for its placement group, whose own state says why it is pending
        text = infeasible_text(demand, [dict(self.pool.total)] + [dict(p.get("resources") or {})
                                                                  for p in self.peers.values()])
        key = json.dumps(demand, sort_keys=True)
        if key not in self.infeasible_warned:
            self.infeasible_warned.add(key)
            logger.warning(text)
        if not conn.closed:  # the owner shows it where the task was submitted (a notebook cell)
            conn.send({"op": "infeasible", "text": text, "demand": demand})

    def schedule(self) -> None:
        self._report_resources()
        for req, gpus in self.leases.grantable():
            fut = req.payload[0]
            if fut.done():  # requester went away
                self.pool.release(req.demand, gpus)
                continue
            self._assign_worker(req, gpus)

    def _assign_worker(self, req: LeaseRequest, gpus: list) -> None:
        idle = self.idle[req.env_key]
        while idle:
            rec = self.workers.get(idle.popleft())
            if rec is not None and rec.state == "idle":
                self._grant(rec, req, gpus)
                return
        self.waiting_for_worker[req.env_key].append((req, gpus))
        self.starter.start(req.payload[2], req.env_key)

    async def _fetch_package(self, name: str) -> bytes:
        if self.gcs is None or self.gcs.closed:
            await self._connect_gcs(self.config.gcs_reconnect_timeout_s)
        _, bufs = await self.gcs.request({"op": "get_package", "name": name}, timeout=300)
        return bytes(bufs[0])

    def on_runtime_env_cache(self, conn: Connection, msg: dict, bufs: list) -> dict:
        return {"node_id": self.node_id, "entries": self.runtime_envs.describe()}

    def _worker_ready(self, rec: WorkerRecord) -> None:
        waiting = self.waiting_for_worker[rec.env_key]
        while waiting:
            req, gpus = waiting.popleft()
            if req.payload[0].done() or req.payload[1].closed:  # the requester left while it started
                self.pool.release(req.demand, gpus)
                continue
            self._grant(rec, req, gpus)
            return
        self._make_idle(rec)

    def _grant(self, rec: WorkerRecord, req: LeaseRequest, gpus: list) -> None:
        fut, owner, _env, kind = req.payload
        rec.lease_id = next(self.lease_ids)
        rec.demand, rec.gpus, rec.lease_owner, rec.blocked = req.demand, gpus, owner, False
        if kind.startswith("actor:"):
            rec.state, rec.actor_id = "actor", kind[6:]
        else:
            rec.state = "leased"
        fut.set_result({"lease_id": rec.lease_id, "worker_id": rec.worker_id, "address": rec.address,
                        "pid": rec.pid, "gpus": gpus, "node_id": self.node_id})

    def _make_idle(self, rec: WorkerRecord) -> None:
        rec.state, rec.lease_owner, rec.idle_since = "idle", None, time.monotonic()
        self.idle[rec.env_key].append(rec.worker_id)

    def on_return_lease(self, conn: Connection, msg: dict, bufs: list) -> None:
        rec = self.workers.get(msg["worker_id"])
        if rec is not None and rec.state == "leased" and rec.lease_id == msg["lease_id"]:
            self._release_lease(rec)
            if msg.get("kill"):
                self.kill(rec)
            else:
                self._make_idle(rec)
            self.schedule()

    def _release_lease(self, rec: WorkerRecord) -> None:
        demand = dict(rec.demand)
        if rec.blocked and demand.get("CPU"):
            demand["CPU"] = 0.0  # its CPU was already lent back
        self.pool.release(demand, rec.gpus)
        rec.demand, rec.gpus, rec.lease_owner, rec.blocked = {}, [], None, False
        rec.state = "released"

    def worker_died(self, rec: WorkerRecord) -> None:
        was_actor = rec.state == "actor"
        if rec.state in ("leased", "actor"):
            self._release_lease(rec)
        self.dead_workers.append({**self._worker_row(rec), "is_alive": False, "end_time": time.time(),
                                  "exit_code": self.exit_codes.get(rec.pid)})
        rec.state = "dead"
        self.workers.pop(rec.worker_id, None)
        self.runtime_envs.release(rec.env_keys)
        if was_actor and self.gcs is not None and not self.gcs.closed:
            code = self.exit_codes.get(rec.pid)
            self.gcs.send({"op": "actor_worker_died", "actor_id": rec.actor_id, "worker_id": rec.worker_id,
                           "exit_code": code})
        self.starter.replace(rec.env_key, rec.env)  # a worker that died while starting

    def kill(self, rec: WorkerRecord) -> None:
        if rec.pid:
            try:
                os.kill(rec.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def on_kill_worker(self, conn: Connection, msg: dict, bufs: list) -> dict:
        rec = self.workers.get(msg.get("worker_id", ""))
        if rec is None and msg.get("actor_id"):
            rec = next((w for w in self.workers.values() if w.actor_id == msg["actor_id"]), None)
        if rec is not None:
            self.kill(rec)
            return {"killed": True}
        return {"killed": False}

    def on_blocked(self, conn: Connection, msg: dict, bufs: list) -> None:
        rec = self.workers.get(conn.peer_info.get("worker_id", ""))
        if rec is not None and rec.state in ("leased", "actor") and not rec.blocked and rec.demand.get("CPU"):
            rec.blocked = True
            self.pool.lend_cpu(rec.demand["CPU"])
            self.schedule()

    def on_unblocked(self, conn: Connection, msg: dict, bufs: list) -> None:
        rec = self.workers.get(conn.peer_info.get("worker_id", ""))
        if rec is not None and rec.blocked:
            rec.blocked = False
            self.pool.reclaim_cpu(rec.demand.get("CPU", 0.0))

    # -- objects -----------------------------------------------------------------------
    def on_create_object(self, conn: Connection, msg: dict, bufs: list) -> dict:
        return {"reuse": self.store.create(msg["object_id"], msg["size"], msg["owner"])}

    def on_seal_object(self, conn: Connection, msg: dict, bufs: list) -> None:
        self.store.seal(msg["object_id"])

    def on_free_objects(self, conn: Connection, msg: dict, bufs: list) -> None:
        """Free objects here, or on `node_id` when they live there (an owner frees through its
        own node); freeing a primary copy frees the copies other nodes pulled of it."""
        node_id = msg.get("node_id")
        if node_id and node_id != self.node_id:
            _spawn(self._forward_free(node_id, msg["object_ids"]))
            return
        for oid in msg["object_ids"]:
            self.store.free(oid)
            for holder in self.transfer.forget(oid):
                if holder != self.node_id:
                    _spawn(self._forward_free(holder, [oid]))

    async def _forward_free(self, node_id: str, object_ids: list) -> None:
        try:
            (await self._peer_conn(node_id)).send({"op": "free_objects", "object_ids": object_ids})
        except (ConnectionError, OSError):
            pass  # that node is gone, and its copies with it

    async def on_pull_object(self, conn: Connection, msg: dict, bufs: list) -> dict:
        """A reader here needs an object stored on `node_id`: copy it into this node's store."""
        try:
            return {"found": await self.transfer.pull(msg["object_id"], msg["node_id"])}
        except (ConnectionError, OSError, asyncio.TimeoutError) as e:
            return {"found": False, "why": f"node {msg['node_id'][:8]} that holds it is unreachable ({e})"}

    async def on_object_info(self, conn: Connection, msg: dict, bufs: list) -> dict:
        return await self.transfer.object_info(msg["object_id"], msg["node_id"])


    def on_restore_object(self, conn: Connection, msg: dict, bufs: list) -> dict:
        return {"found": self.store.restore(msg["object_id"])}

    # -- state -------------------------------------------------------------------------
    def on_get_resources(self, conn: Connection, msg: dict, bufs: list) -> dict:
        mem = psutil.virtual_memory()
        return {"total": self.pool.total, "available": self.pool.available, "store": self.store.describe(),
                "pending_demand": self.leases.demand_summary(),
                "workers": sum(1 for w in self.workers.values() if w.state != "dead"), "peers": sorted(self.peers),
                "memory_used": mem.total - mem.available, "memory_total": mem.total}

    def on_node_info(self, conn: Connection, msg: dict, bufs: list) -> dict:
        return {"node_id": self.node_id, "shm_dir": self.shm_dir, "config": self.config.to_json(),
                "node_ip": self.args["node_ip"], "metrics_export_port": self.metrics.port}

    async def on_list_objects(self, conn: Connection, msg: dict, bufs: list) -> dict:
        async def ask(c: Connection) -> list:
            try:
                reply, _ = await c.request({"op": "list_refs"}, timeout=5)
                return reply.get("objects", [])
            except Exception:
                return []

        results = await asyncio.gather(*(ask(c) for c in list(self.core_workers.values()) if not c.closed))
        objects = [o for r in results for o in r]
        for o in objects:
            stored = self.store.objects.get(bytes.fromhex(o["object_id"]))
            o["spilled"] = bool(stored and stored.spilled_path)
            o["in_shared_memory"] = stored is not None
            o["node_id"] = self.node_id
            if stored is not None:
                o["size_bytes"] = stored.size
        return {"objects": objects, "store": self.store.describe()}

    def on_metrics_report(self, conn: Connection, msg: dict, bufs: list) -> None:
        info = conn.peer_info
        if info.get("worker_id"):
            self.metrics.report(info["worker_id"], "driver" if info.get("kind") == "driver" else "core_worker",
                                msg["families"])

    def _worker_row(self, rec: WorkerRecord | None = None, driver: tuple[str, dict] | None = None) -> dict:
        """A worker process (`rec`) or a driver connected here (`driver`: its id and hello), for
        the state API's workers."""
        row = {"is_alive": True, "node_id": self.node_id, "ip": self.args["node_ip"], "end_time": None,
               "exit_code": None}
        if rec is not None:
            return {**row, "worker_id": rec.worker_id, "worker_type": "WORKER", "pid": rec.pid,
                    "state": rec.state.upper(), "actor_id": rec.actor_id or None, "start_time": rec.started_at}
        wid, info = driver
        return {**row, "worker_id": wid, "worker_type": "DRIVER", "pid": info.get("pid"), "state": "DRIVER",
                "actor_id": None, "start_time": None}

    def on_list_workers(self, conn: Connection, msg: dict, bufs: list) -> dict:
        """This node's worker processes (live, and the latest that exited) and its drivers."""
        rows = [self._worker_row(w) for w in self.workers.values() if w.state != "dead"]
        rows += [self._worker_row(driver=(wid, c.peer_info)) for wid, c in self.core_workers.items()
                 if c.peer_info.get("kind") == "driver"]
        return {"workers": rows + list(self.dead_workers)}

    def on_list_logs(self, conn: Connection, msg: dict, bufs: list) -> dict:
        return {"node_id": self.node_id, "logs": logs.list_logs(os.path.join(self.session_dir, "logs"),
                                                                 msg.get("glob") or "*")}

    def on_read_log(self, conn: Connection, msg: dict, bufs: list) -> dict:
        try:
            return logs.read_log(os.path.join(self.session_dir, "logs"), msg["filename"], msg.get("lines"),
                                 msg.get("offset"), msg.get("task_id"))
        except (ValueError, FileNotFoundError) as e:
            return {"error": str(e), "not_found": isinstance(e, FileNotFoundError)}

    def on_shutdown(self, conn: Connection, msg: dict, bufs: list) -> dict:
        self.done.set()
        return {}


_TASKS: set = set()


def _spawn(coro: Any) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


def _ours_only(op: str, handler: Any) -> Any:
    def run(conn: Connection, msg: dict, bufs: list) -> Any:
        if conn.server_side:
            raise PermissionError(f"{op!r} comes from the control store, over the node's own connection to it")
        return handler(conn, msg, bufs)
    return run


def _env_key(env: dict, job: str) -> str:
    return f"{job}|{env_hash(env)}"


def main() -> None:
    args = json.loads(sys.argv[1])
    with open(args.pop("token_file")) as f:
        args["token"] = f.read().strip()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s node %(name)s: %(message)s")
    become_subreaper()
    worker_args = {"node_address": args["unix_address"], "token": args["token"], "node_id": args["node_id"],
                   "shm_dir": args["shm_dir"], "session_dir": args["session_dir"],
                   "gcs_address": args["gcs_address"], "system_config": args["system_config"],
                   "node_ip": args["node_ip"], "sock_dir": os.path.dirname(args["unix_address"][5:]),
                   "user_umask": args.get("user_umask"),  # given back to workers before user code runs
                   "_close_fds": [args["unix_fd"], args["tcp_fd"], args.get("owner_fd"), args.get("metrics_fd")]}
    zygote_pid, zygote_sock = start_zygote(worker_args)
    daemon = NodeDaemon(args)
    asyncio.run(daemon.run(zygote_pid, zygote_sock))
    os._exit(0)


if __name__ == "__main__":
    main()
