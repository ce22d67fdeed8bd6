"""The actor directory of the control store: one record per actor, where each runs, its
restarts and its death, and the names live actors go by.

Actor lifecycle (one record per actor):

    PENDING_CREATION --created--> ALIVE --worker died, restarts left--> RESTARTING --> ALIVE
           |                        |
           +--__init__ raised-------+--killed / no restarts left / owner gone--> DEAD

Owned by the control store (server.py) as placement.py's groups are: the server routes the
actor ops here and tells the directory when nodes, drivers and connections come and go. The
server is passed in as `host` (typed under TYPE_CHECKING only, so no import cycle) for what
the directory shares with the rest: node connections, node picking, persistence, config, the
namespace rules and the background-task set.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..node.resources import normalize
from ..rpc.connection import Connection, connect
from .checks import typed

if TYPE_CHECKING:
    from .server import ControlStore

logger = logging.getLogger("runtime.gcs")

PENDING, ALIVE, RESTARTING, DEAD = "PENDING_CREATION", "ALIVE", "RESTARTING", "DEAD"


@dataclass
class ActorRecord:
    actor_id: str
    job_id: str
    name: str
    namespace: str
    class_name: str
    meta: dict
    spec: dict
    spec_bufs: list
    demand: dict
    env: dict
    max_restarts: int
    detached: bool
    cell: dict | None = None  # the notebook cell that created it
    strategy: Any = None  # None, "SPREAD" or ["node", node_id, soft]
    waiting_for_node: bool = False  # queued where it cannot fit: placed again when a node joins
    state: str = PENDING
    address: str = ""
    worker_id: str = ""
    node_id: str = ""
    pid: int = 0
    num_restarts: int = 0
    death_reason: str = ""
    no_restart: bool = False
    version: int = 0  # bumped on every state change; subscribers apply updates monotonically
    subscribers: set = field(default_factory=set)
    created_at: float = field(default_factory=time.time)

    def public(self) -> dict:
        return {"actor_id": self.actor_id, "class_name": self.class_name, "state": self.state, "name": self.name,
                "namespace": self.namespace, "job_id": self.job_id, "node_id": self.node_id, "pid": self.pid,
                "address": self.address, "num_restarts": self.num_restarts, "death_cause": self.death_reason,
                "is_detached": self.detached, "max_restarts": self.max_restarts,
                "cell": self.cell, "cell_id": (self.cell or {}).get("cell_id")}


class ActorDirectory:
    """The actors table and the named-actor index; `host` is the control store."""

    def __init__(self, host: ControlStore) -> None:
        self.host = host
        self.actors: dict[str, ActorRecord] = {}
        self.named: dict[tuple[str, str], str] = {}

    # -- what the server tells the directory ---------------------------------------------
    def recover(self, rows: dict[str, dict]) -> None:
        """Records persisted by an earlier control store of this session; named ones keep their names."""
        for actor_id, row in rows.items():
            rec = ActorRecord(**row)
            self.actors[actor_id] = rec
            if rec.name and rec.state != DEAD:
                self.named[(rec.namespace, rec.name)] = actor_id

    def resume(self) -> None:
        """Recovered actors that were being placed when the old control store died are placed again."""
        for rec in self.actors.values():
            if rec.state in (PENDING, RESTARTING):
                self.host._spawn(self._schedule(rec))

    def node_joined(self) -> None:
        """Actors that waited for a node with room may fit on the one that joined."""
        for rec in self.actors.values():
            if rec.state in (PENDING, RESTARTING) and rec.waiting_for_node:
                rec.waiting_for_node = False
                self.host._spawn(self._schedule(rec))

    def node_died(self, node_id: str) -> None:
        for rec in self.actors.values():
            if rec.node_id == node_id and rec.state in (ALIVE, PENDING, RESTARTING):
                self._actor_failed(rec, "its node died")

    def node_reconnected(self, conn: Connection, node_id: str, held: dict[str, str]) -> None:
        """A node back after the control store restarted holds these actor workers (actor id ->
        worker id): actors found there answer again as they were (same process, same state);
        those missing fail over; workers the directory does not know as alive there are killed."""
        for rec in self.actors.values():
            if rec.node_id != node_id or rec.state != ALIVE:
                continue
            if held.get(rec.actor_id) == rec.worker_id:
                self._publish(rec)
            else:
                self._actor_failed(rec, "its worker was gone when its node reconnected")
        for actor_id, worker_id in held.items():
            rec = self.actors.get(actor_id)
            if rec is None or rec.state != ALIVE or rec.worker_id != worker_id:
                conn.send({"op": "kill_worker", "worker_id": worker_id})

    def owner_gone(self, job_id: str) -> None:
        """A job's driver exited: its actors go with it, except detached ones."""
        for rec in list(self.actors.values()):
            if rec.job_id == job_id and not rec.detached and rec.state != DEAD:
                self._kill(rec, no_restart=True, reason="its owner (the driver of job "
                           f"{job_id}) exited; use lifetime='detached' to keep an actor alive")

    def conn_closed(self, conn: Connection) -> None:
        for rec in self.actors.values():
            rec.subscribers.discard(conn)

    def counts(self) -> collections.Counter:
        """Actors by (state, class name), for the `ray_actors` metric."""
        return collections.Counter((r.state, r.class_name) for r in self.actors.values())

    # -- actor ops -----------------------------------------------------------------------
    def on_create_actor(self, conn: Connection, msg: dict, bufs: list) -> dict:
        name, ns = msg.get("name") or "", msg["namespace"]
        self.host._check_namespace(conn, ns, f"the actor named {name!r}" if name else "an actor")
        if name:
            existing = self.actors.get(self.named.get((ns, name), ""))
            if existing is not None and existing.state != DEAD:
                if msg.get("get_if_exists"):
                    existing.subscribers.add(conn)
                    return {"actor_id": existing.actor_id, "existing": True, "meta": existing.meta}
                raise ValueError(f"An actor named {name!r} already exists in namespace {ns!r}. Use "
                                 "runtime.get_actor(name) to get it, or pass get_if_exists=True.")
        # Kept in the record: a wrong type would break its scheduling and restarts later, not this request.
        typed(msg, actor_id=str, namespace=str, class_name=str, max_restarts=int, detached=bool)
        normalize(msg["demand"])
        rec = ActorRecord(actor_id=msg["actor_id"], job_id=conn.peer_info.get("job_id") or msg.get("job_id", ""),
                          name=name, namespace=ns, class_name=msg["class_name"], meta=msg["meta"], spec=msg["spec"],
                          spec_bufs=[bytes(b) for b in bufs], demand=msg["demand"], env=msg.get("env") or {},
                          max_restarts=msg["max_restarts"], detached=msg["detached"], cell=msg.get("cell"),
                          strategy=msg.get("strategy"))
        rec.subscribers.add(conn)
        self.actors[rec.actor_id] = rec
        if name:
            self.named[(ns, name)] = rec.actor_id
        self.host.persist.actor(rec)
        self.host._spawn(self._schedule(rec))
        return {"actor_id": rec.actor_id, "existing": False}

    def _pick_node(self, rec: ActorRecord) -> tuple[str, Connection] | None:
        """Where the actor goes: as its scheduling strategy says (see ControlStore.pick_node), else the least
        used node where it fits now, else one where it fits at all, else (infeasible) the head,
        which tells the owner why it waits."""
        strategy, only = rec.strategy, ""
        if isinstance(strategy, list) and strategy[0] == "node":
            _, node_id, soft = strategy
            if node_id in self.host.node_conns:
                only = node_id
            elif not soft:
                return None
            strategy = None
        node_id = self.host.pick_node(rec.demand, strategy=strategy or "", only=only) or \
            self.host.pick_node(rec.demand, strategy=strategy or "", fits_now=False, only=only)
        if node_id is None:
            rec.waiting_for_node = True
            node_id = only or next(iter(self.host.node_conns), None)
        return (node_id, self.host.node_conns[node_id]) if node_id else None

    async def _schedule(self, rec: ActorRecord) -> None:
        picked = self._pick_node(rec)
        if picked is None:
            self._bury(rec, "no node is alive to run it" if not rec.strategy else
                       f"its scheduling strategy {rec.strategy} names a node that is not alive")
            return
        node_id, node_conn = picked
        try:
            lease, _ = await node_conn.request({"op": "lease_actor", "actor_id": rec.actor_id, "demand": rec.demand,
                                                "env": rec.env, "job": rec.job_id}, timeout=None)
        except Exception as e:
            self._actor_failed(rec, f"could not get a worker: {e}")
            return
        if rec.state == DEAD:  # killed while waiting for a worker
            node_conn.send({"op": "kill_worker", "worker_id": lease["worker_id"]})
            return
        rec.address, rec.worker_id, rec.node_id, rec.pid = lease["address"], lease["worker_id"], node_id, lease["pid"]
        try:
            wconn = await connect(rec.address, {}, self.host.token, info={"kind": "gcs"}, name="gcs->actor")
            reply, rbufs = await wconn.request({"op": "create_actor", "actor_id": rec.actor_id, "spec": rec.spec,
                                                "restarted": rec.num_restarts > 0, "gpus": lease["gpus"],
                                                "job_id": rec.job_id, "namespace": rec.namespace},
                                               rec.spec_bufs, timeout=None)
            wconn.close()
        except Exception as e:  # the worker died while constructing: counts as a failure
            logger.info("actor %s creation interrupted: %s", rec.actor_id[:8], e)
            return  # actor_worker_died from the node decides restart or death
        if rec.state == DEAD:
            return
        if reply.get("init_error"):
            rec.no_restart = True
            self._bury(rec, "the actor's constructor raised an exception:\n" + reply["init_error"])
            node_conn.send({"op": "kill_worker", "worker_id": rec.worker_id})
            return
        rec.state = ALIVE
        self._publish(rec)

    def _actor_failed(self, rec: ActorRecord, why: str) -> None:
        if rec.state == DEAD:
            return
        if rec.no_restart or (rec.max_restarts != -1 and rec.num_restarts >= rec.max_restarts):
            extra = "" if rec.no_restart else f" (max_restarts={rec.max_restarts} exhausted)"
            self._bury(rec, f"the actor's process died: {why}{extra}")
            return
        rec.num_restarts += 1
        rec.state, rec.address = RESTARTING, ""
        self._publish(rec)
        self.host._spawn(self._schedule(rec))

    def on_actor_worker_died(self, conn: Connection, msg: dict, bufs: list) -> None:
        rec = self.actors.get(msg["actor_id"])
        if rec is not None and rec.worker_id == msg["worker_id"]:
            code = msg.get("exit_code")
            self._actor_failed(rec, f"worker {msg['worker_id'][:8]} exited" + (f" with code {code}" if code is not None else ""))

    def _bury(self, rec: ActorRecord, reason: str) -> None:
        rec.state, rec.death_reason, rec.address = DEAD, reason, ""
        self._publish(rec)
        if rec.name and self.named.get((rec.namespace, rec.name)) == rec.actor_id:
            del self.named[(rec.namespace, rec.name)]

    def _publish(self, rec: ActorRecord) -> None:
        rec.version += 1
        self.host.persist.actor(rec)
        msg = {"op": "actor_update", "actor_id": rec.actor_id, "state": rec.state, "address": rec.address,
               "num_restarts": rec.num_restarts, "reason": rec.death_reason, "version": rec.version,
               "node_id": rec.node_id}
        for c in list(rec.subscribers):
            if c.closed:
                rec.subscribers.discard(c)
            else:
                c.send(dict(msg))

    def on_subscribe_actor(self, conn: Connection, msg: dict, bufs: list) -> dict:
        rec = self.actors.get(msg["actor_id"])
        if rec is None:
            return {"state": DEAD, "reason": "no such actor is known to the cluster", "address": "",
                    "num_restarts": 0, "version": 1 << 30}
        rec.subscribers.add(conn)
        return {"state": rec.state, "address": rec.address, "num_restarts": rec.num_restarts,
                "reason": rec.death_reason, "version": rec.version, "node_id": rec.node_id}

    def on_get_actor(self, conn: Connection, msg: dict, bufs: list) -> dict:
        self.host._check_namespace(conn, msg["namespace"], f"the actor named {msg['name']!r}")
        aid = self.named.get((msg["namespace"], msg["name"]))
        rec = self.actors.get(aid or "")
        if rec is None or rec.state == DEAD:
            raise ValueError(f"Failed to look up actor with name {msg['name']!r} in namespace {msg['namespace']!r}. "
                             "It does not exist or is dead; check the name and the namespace (init(namespace=...)).")
        return {"actor_id": rec.actor_id, "meta": rec.meta}

    def on_kill_actor(self, conn: Connection, msg: dict, bufs: list) -> dict:
        rec = self.actors.get(msg["actor_id"])
        if rec is None:
            raise ValueError(f"Unknown actor {msg['actor_id'][:8]}.")
        self._kill(rec, no_restart=msg.get("no_restart", True), reason="it was killed by runtime.kill()")
        return {}

    def _kill(self, rec: ActorRecord, *, no_restart: bool, reason: str) -> None:
        if no_restart:
            rec.no_restart = True
            worker_id = rec.worker_id
            self._bury(rec, reason)
            node_conn = self.host.node_conns.get(rec.node_id)
        else:
            worker_id, node_conn = rec.worker_id, self.host.node_conns.get(rec.node_id)
        if node_conn is not None and not node_conn.closed and worker_id:
            node_conn.send({"op": "kill_worker", "worker_id": worker_id})

    def on_list_actors(self, conn: Connection, msg: dict, bufs: list) -> dict:
        return {"actors": [r.public() for r in self.actors.values()]}

    def on_list_named_actors(self, conn: Connection, msg: dict, bufs: list) -> dict:
        """Live named actors as {"name", "namespace"}: of every namespace, or, when the cluster
        isolates namespaces, of the caller's job's only."""
        only = self.host._job_namespace(conn) if self.host.config.isolate_namespaces else None
        if self.host.config.isolate_namespaces and only is None:
            return {"actors": []}
        return {"actors": [{"name": name, "namespace": ns} for (ns, name), aid in sorted(self.named.items())
                           if (only is None or ns == only) and aid in self.actors
                           and self.actors[aid].state != DEAD]}
