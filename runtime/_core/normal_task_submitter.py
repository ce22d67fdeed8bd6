"""Normal (non-actor) tasks: leasing workers from node managers and pushing tasks to them.

Tasks with the same resource demand and environment share a SchedulingQueue and its leased
workers, as in Ray's normal task submitter: a worker that finishes a task takes the next one
queued, and goes back to its node manager after lease_idle_timeout_s without work.

The submitter runs on the io loop. It reaches the network and the rest of the core worker
through `host` (the CoreWorker).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from typing import TYPE_CHECKING, Any

from ..exceptions import TaskCancelledError, WorkerCrashedError
from ..rpc.connection import Connection, ConnectionClosed
from ..worker import output
from . import task_events as te
from .task_manager import CANCELLED, RETRY
from .task_spec import TaskSpec

if TYPE_CHECKING:  # the core worker imports this module, never the other way round
    from .core_worker import CoreWorker

logger = logging.getLogger("runtime")

MAX_LEASE_REQUESTS = 64  # in flight per queue: enough to fill a cluster, few enough not to flood it


class Lease:
    __slots__ = ("lease_id", "worker_id", "address", "conn", "gpus", "busy", "idle_handle", "sq", "dead", "nm",
                 "node_id")

    def __init__(self, reply: dict, conn: Connection, sq: SchedulingQueue, nm: Connection) -> None:
        self.lease_id = reply["lease_id"]
        self.worker_id = reply["worker_id"]
        self.address = reply["address"]
        self.gpus = reply["gpus"]
        self.node_id = reply["node_id"]
        self.nm = nm  # the node manager that granted it: the lease goes back there
        self.conn = conn
        self.busy: TaskSpec | None = None
        self.idle_handle: asyncio.TimerHandle | None = None
        self.sq = sq
        self.dead = False


class SchedulingQueue:
    """Tasks with the same resource demand and environment share leased workers."""

    __slots__ = ("key", "demand", "env", "queue", "leases", "requesting", "strategy", "infeasible")

    def __init__(self, key: str, demand: dict, env: dict, strategy: Any = None) -> None:
        self.key, self.demand, self.env, self.strategy = key, demand, env, strategy
        self.infeasible: str | None = None  # why no node can grant this demand, until one does
        self.queue: collections.deque[TaskSpec] = collections.deque()
        self.leases: list[Lease] = []
        self.requesting = 0

    def leases_wanted(self) -> int:
        """How many more lease requests to send for the tasks still queued."""
        return max(0, min(len(self.queue), MAX_LEASE_REQUESTS) - self.requesting)

    def drop(self, lease: Lease) -> None:
        """`lease` takes no more tasks (its worker died or it went back)."""
        lease.dead = True
        if lease in self.leases:
            self.leases.remove(lease)

    def idle_leases_on(self, node_id: str) -> list[Lease]:
        return [x for x in self.leases if x.node_id == node_id and x.busy is None]


class NormalTaskSubmitter:
    def __init__(self, host: CoreWorker) -> None:
        self.host = host
        self.queues: dict[str, SchedulingQueue] = {}
        self._infeasible_warned: set[tuple] = set()  # (text, cell) already shown

    def enqueue(self, spec: TaskSpec) -> None:
        """`spec`'s dependencies are ready: queue it for a leased worker."""
        if spec.cancelled:
            return
        err = self.host.dep_error(spec)
        if err is not None:
            self.host.finish_task(spec, error=err)
            return
        sq = self.queues.get(spec.sched_key)
        if sq is None:
            sq = self.queues[spec.sched_key] = SchedulingQueue(spec.sched_key, spec.demand, spec.env, spec.strategy)
        sq.queue.append(spec)
        self.dispatch(sq)

    def dispatch(self, sq: SchedulingQueue) -> None:
        if sq.infeasible is not None:  # a task joined a queue already known to wait: its cell is told
            self._say_infeasible(sq)
        for lease in sq.leases:
            if not sq.queue:
                break
            if lease.busy is None and not lease.dead:
                self._push(lease, sq.queue.popleft())
        for _ in range(sq.leases_wanted()):
            sq.requesting += 1
            self.host.spawn(self._request_lease(sq))

    async def _request_lease(self, sq: SchedulingQueue) -> None:
        """Ask our node manager for a worker; follow its spillback to another node's manager."""
        host = self.host
        nm, msg = host.nm, {"op": "lease", "demand": sq.demand, "env": sq.env, "strategy": sq.strategy,
                            "job": host.job_id}
        try:
            while True:
                reply, _ = await nm.request(msg, timeout=None)
                if "spillback" not in reply:
                    break
                nm = await host.get_conn(reply["spillback"])
                msg["spilled"] = True
        except (ConnectionError, OSError):
            sq.requesting -= 1
            if sq.queue and not host.closed:  # that node died: ask again (our own node decides anew)
                host.loop.call_later(0.1, self.dispatch, sq)
            return
        except Exception as e:  # noqa: BLE001 - the request itself is wrong (e.g. affinity to a dead node)
            sq.requesting -= 1
            while sq.queue:
                host.finish_task(sq.queue.popleft(), error=e)
            return
        sq.requesting -= 1
        sq.infeasible = None  # granted: the cluster can hold it now
        try:
            conn = await host.get_conn(reply["address"])
        except Exception:
            logger.warning("could not reach leased worker %s", reply["address"])
            self._return_lease_msg(nm, reply, kill=True)
            self.dispatch(sq)
            return
        lease = Lease(reply, conn, sq, nm)
        sq.leases.append(lease)
        if sq.queue:
            self._push(lease, sq.queue.popleft())
        else:
            self.return_lease(lease)

    @staticmethod
    def _return_lease_msg(nm: Connection, reply: dict, kill: bool = False) -> None:
        if nm is not None and not nm.closed:
            nm.send({"op": "return_lease", "worker_id": reply["worker_id"], "lease_id": reply["lease_id"],
                     "kill": kill})

    def return_lease(self, lease: Lease) -> None:
        lease.idle_handle = None
        if lease.busy is not None or lease.dead:
            return
        lease.sq.drop(lease)
        self._return_lease_msg(lease.nm, {"worker_id": lease.worker_id, "lease_id": lease.lease_id})

    def _push(self, lease: Lease, spec: TaskSpec) -> None:
        if lease.idle_handle is not None:
            lease.idle_handle.cancel()
            lease.idle_handle = None
        lease.busy = spec
        spec.lease = lease
        self.host.task_event(spec, te.RUNNING, (lease.worker_id, lease.node_id))
        msg, bufs = self.host.task_message(spec, lease.conn, lease.node_id)
        msg["gpu"] = lease.gpus
        msg["res"] = spec.demand
        try:
            lease.conn.request_cb(msg, bufs, lambda r, b, err: self._on_task_done(
                lease, spec, None if err else (r, b), err))
        except ConnectionClosed as e:
            self._on_task_done(lease, spec, None, e)

    def _on_task_done(self, lease: Lease, spec: TaskSpec, result: Any, exc: BaseException | None) -> None:
        host = self.host
        if host.closed:
            return  # shutting down: connections closing is expected, not a crash
        lease.busy = None
        sq = lease.sq
        if exc is not None:
            sq.drop(lease)
            what = host.task_manager.retry_after_worker_death(spec)
            if what == CANCELLED:
                host.finish_task(spec, error=TaskCancelledError(spec.task_id.hex()))
            elif what == RETRY:
                output.in_context(spec, logger.warning, "A worker died while running task `%s`; retrying (%s "
                                  "retries left).", spec.name, "infinite" if spec.max_retries < 0 else spec.max_retries)
                sq.queue.appendleft(spec)
            else:
                host.finish_task(spec, error=WorkerCrashedError(spec.name, f"worker {lease.worker_id[:8]} exited"))
        else:
            reply, bufs = result
            raised = host.task_manager.exception_to_retry(spec, reply)
            if raised is None:
                host.apply_results(spec, reply, bufs, lease.address)
            else:
                logger.info("task `%s` raised %s; retrying", spec.name, raised)
                sq.queue.appendleft(spec)
        if sq.strategy == "SPREAD" and not lease.dead:
            self.return_lease(lease)  # one task per lease: each is placed (spread) on its own
        if sq.queue:
            self.dispatch(sq)
        elif not lease.dead and lease.busy is None:
            lease.idle_handle = host.loop.call_later(host.config.lease_idle_timeout_s, self.return_lease, lease)

    def cancel(self, spec: TaskSpec, force: bool, recursive: bool) -> None:
        lease = spec.lease
        if lease is None or lease.busy is not spec:  # not running: it never will
            sq = self.queues.get(spec.sched_key)
            if sq is not None and spec in sq.queue:
                sq.queue.remove(spec)
            self.host.finish_task(spec, error=TaskCancelledError(spec.task_id.hex()))
            return
        if force:
            if not lease.nm.closed:
                lease.nm.send({"op": "kill_worker", "worker_id": lease.worker_id})
        else:
            lease.conn.send({"op": "cancel", "t": spec.task_id, "recursive": recursive})

    # -- workers and nodes going away ------------------------------------------------------
    def conn_closed(self, conn: Connection) -> None:
        for sq in self.queues.values():
            for lease in list(sq.leases):
                if lease.conn is conn:
                    sq.drop(lease)

    def forget_leases_on(self, node_id: str) -> None:
        """Workers leased on a node believed gone take no more tasks (their connections may not
        have closed yet). They are handed back too: if the node is in fact alive (a reader could not
        pull from it for another reason), a worker kept leased would hold its resources forever."""
        for sq in self.queues.values():
            for lease in sq.idle_leases_on(node_id):
                if lease.idle_handle is not None:
                    lease.idle_handle.cancel()
                self.return_lease(lease)

    def abort_leases_on(self, node_id: str, why: str) -> None:
        for sq in self.queues.values():
            for lease in list(sq.leases):
                if lease.node_id == node_id:
                    lease.conn.abort(why)

    # -- infeasible demands ----------------------------------------------------------------
    def on_infeasible(self, demand: dict, text: str) -> None:
        """A lease request of ours can never be granted as the cluster is: say so where the
        waiting tasks were submitted (each notebook cell once), else once in this process."""
        queues = [sq for sq in self.queues.values() if sq.demand == demand]
        for sq in queues:
            sq.infeasible = text
            self._say_infeasible(sq)
        if not any(s.context is not None for sq in queues for s in sq.queue):
            if (text, None) not in self._infeasible_warned:
                self._infeasible_warned.add((text, None))
                logger.warning(text)

    def _say_infeasible(self, sq: SchedulingQueue) -> None:
        """Tell each notebook cell with a task waiting in `sq` why it waits (once per cell)."""
        for spec in sq.queue:
            key = (sq.infeasible, json.dumps(spec.cell, sort_keys=True, default=str))
            if spec.context is not None and key not in self._infeasible_warned:
                self._infeasible_warned.add(key)
                output.in_context(spec, logger.warning, sq.infeasible)
