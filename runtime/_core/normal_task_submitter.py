"""Normal (non-actor) tasks: leasing workers from node managers and pushing tasks to them.

Tasks with the same resource demand and environment share a SchedulingQueue and its leased
workers, as in Ray's normal task submitter: a worker that finishes a task takes the next one
queued, and goes back to its node manager after lease_idle_timeout_s without work.

Short tasks are pipelined: while tasks wait and the queue's recent tasks took little time, a
leased worker is sent up to `SchedulingQueue.depth()` of them at once (at most the config's
max_tasks_in_flight_per_worker), so it starts the next without waiting a round trip for it (on
this 2-core VM one process-to-process wake-up costs ~35 µs, more than a no-op task). What a
worker holds is bounded by PIPELINE_BUDGET_S of expected work. Tasks queued on a worker behind
a task that runs long are taken back (work stealing) when another lease is idle, and a worker
whose running task blocks in get/wait hands its queue back at once, so a task never waits
behind one that waits for it. A worker runs its queue in order, so only the first task in it
can have started: if the worker dies, the others are queued again without spending a retry.

The submitter runs on the io loop. It reaches the network and the rest of the core worker
through `host` (the CoreWorker).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
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
# Pipelining (see the module docstring): a worker holds at most the config's
# max_tasks_in_flight_per_worker tasks (1: no pipelining), and no more than PIPELINE_BUDGET_S of
# expected work; tasks behind one that has run STEAL_AFTER_S are taken back for an idle worker.
# Measured on 1,000 no-op tasks (wait_1000_refs_s, median of 30): at most 1 in flight 0.215 s,
# 4 0.117 s, 16 0.083 s.
PIPELINE_BUDGET_S = 0.002
STEAL_AFTER_S = 0.01


class Lease:
    __slots__ = ("lease_id", "worker_id", "address", "conn", "gpus", "inflight", "head_since", "last_done", "hold",
                 "lost", "ran", "idle_handle", "sq", "dead", "nm", "node_id")

    def __init__(self, reply: dict, conn: Connection, sq: SchedulingQueue, nm: Connection) -> None:
        self.lease_id = reply["lease_id"]
        self.worker_id = reply["worker_id"]
        self.address = reply["address"]
        self.gpus = reply["gpus"]
        self.node_id = reply["node_id"]
        self.nm = nm  # the node manager that granted it: the lease goes back there
        self.conn = conn
        # Tasks pushed and not answered, in push order: the worker runs them in this order, so
        # the first is the one running and the others have not started.
        self.inflight: collections.deque[tuple[TaskSpec, float]] = collections.deque()  # (spec, pushed at)
        self.head_since = 0.0  # when inflight[0] started (about: when the one before it was answered)
        self.last_done = 0.0  # when a task of this lease was last answered
        self.hold = False  # the worker gave tasks back while its task waits: pipeline none behind it
        self.lost = False  # its connection was lost; `ran` is the task that was running then
        self.ran: TaskSpec | None = None
        self.idle_handle: asyncio.TimerHandle | None = None
        self.sq = sq
        self.dead = False

    def running(self) -> TaskSpec | None:
        return self.inflight[0][0] if self.inflight else None


class SchedulingQueue:
    """Tasks with the same resource demand and environment share leased workers."""

    __slots__ = ("key", "demand", "env", "queue", "leases", "requesting", "strategy", "infeasible", "service_s",
                 "steal_handle")

    def __init__(self, key: str, demand: dict, env: dict, strategy: Any = None) -> None:
        self.key, self.demand, self.env, self.strategy = key, demand, env, strategy
        self.infeasible: str | None = None  # why no node can grant this demand, until one does
        self.queue: collections.deque[TaskSpec] = collections.deque()
        self.leases: list[Lease] = []
        self.requesting = 0
        self.service_s: float | None = None  # recent time a worker spent per task (moving average)
        self.steal_handle: asyncio.TimerHandle | None = None

    def depth(self, most: int) -> int:
        """How many tasks a leased worker may hold, at most `most`: 1 until tasks have been
        timed, and for SPREAD (each task is placed on its own)."""
        s = self.service_s
        if s is None or self.strategy == "SPREAD" or most <= 1:
            return 1
        return max(1, min(most, int(PIPELINE_BUDGET_S / max(s, 1e-6))))

    def timed(self, seconds: float) -> None:
        s = self.service_s
        self.service_s = seconds if s is None else s + 0.25 * (seconds - s)

    def leases_wanted(self) -> int:
        """How many more lease requests to send for the tasks still queued."""
        return max(0, min(len(self.queue), MAX_LEASE_REQUESTS) - self.requesting)

    def drop(self, lease: Lease) -> None:
        """`lease` takes no more tasks (its worker died or it went back)."""
        lease.dead = True
        if lease in self.leases:
            self.leases.remove(lease)

    def idle_leases_on(self, node_id: str) -> list[Lease]:
        return [x for x in self.leases if x.node_id == node_id and not x.inflight]

    def stealable(self) -> bool:
        """Some worker holds tasks that wait behind its running one."""
        return any(len(x.inflight) > 1 for x in self.leases)


class NormalTaskSubmitter:
    def __init__(self, host: CoreWorker) -> None:
        self.host = host
        self.queues: dict[str, SchedulingQueue] = {}
        self._infeasible_warned: set[tuple] = set()  # (text, cell) already shown
        # Counts for tests and debugging: tasks pushed behind a running one, and given back unstarted.
        self.pipelined = 0
        self.given_back = 0

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
            if not lease.inflight and not lease.dead:
                self._push(lease, sq.queue.popleft())
        for _ in range(sq.leases_wanted()):
            sq.requesting += 1
            self.host.spawn(self._request_lease(sq))
        if sq.queue:
            self._pipeline(sq)

    def _pipeline(self, sq: SchedulingQueue) -> None:
        """Queue more of sq's tasks on its busy workers, each to the one holding fewest, up to
        sq.depth(...) each; none behind a task that has run STEAL_AFTER_S already."""
        depth = sq.depth(self.host.config.max_tasks_in_flight_per_worker)
        if depth <= 1:
            return
        now = time.monotonic()
        takers = [x for x in sq.leases if not x.dead and not x.hold and now - x.head_since < STEAL_AFTER_S]
        while sq.queue and takers:
            lease = min(takers, key=lambda x: len(x.inflight))
            if len(lease.inflight) >= depth:
                break
            self._push(lease, sq.queue.popleft())

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
            if sq.queue:
                self._pipeline(sq)
        elif sq.stealable():  # tasks wait behind others: keep it a while, it may take them
            lease.idle_handle = host.loop.call_later(host.config.lease_idle_timeout_s, self.return_lease, lease)
            self._arm_steal(sq)
        else:
            self.return_lease(lease)

    @staticmethod
    def _return_lease_msg(nm: Connection, reply: dict, kill: bool = False) -> None:
        if nm is not None and not nm.closed:
            nm.send({"op": "return_lease", "worker_id": reply["worker_id"], "lease_id": reply["lease_id"],
                     "kill": kill})

    def return_lease(self, lease: Lease) -> None:
        lease.idle_handle = None
        if lease.inflight or lease.dead:
            return
        lease.sq.drop(lease)
        self._return_lease_msg(lease.nm, {"worker_id": lease.worker_id, "lease_id": lease.lease_id})

    def _push(self, lease: Lease, spec: TaskSpec) -> None:
        if lease.idle_handle is not None:
            lease.idle_handle.cancel()
            lease.idle_handle = None
        now = time.monotonic()
        if not lease.inflight:
            lease.head_since = now
            self.host.task_event(spec, te.RUNNING, (lease.worker_id, lease.node_id))
        else:
            self.pipelined += 1
        lease.inflight.append((spec, now))
        spec.lease = lease
        msg, bufs = self.host.task_message(spec, lease.conn, lease.node_id)
        msg["gpu"] = lease.gpus
        msg["res"] = spec.demand
        try:
            lease.conn.request_cb(msg, bufs, lambda r, b, err: self._on_task_done(
                lease, spec, None if err else (r, b), err))
        except ConnectionClosed as e:
            self._on_task_done(lease, spec, None, e)

    def _answered(self, lease: Lease, spec: TaskSpec, now: float) -> float:
        """Take `spec` off its worker's queue; returns when it was pushed. The next task there
        starts now (the worker runs them in order)."""
        inflight = lease.inflight
        if inflight and inflight[0][0] is spec:
            pushed = inflight.popleft()[1]
            if inflight:
                lease.head_since = now
                nxt = inflight[0][0]
                self.host.task_event(nxt, te.RUNNING, (lease.worker_id, lease.node_id))
            return pushed
        for i, (s, pushed) in enumerate(inflight):  # given back or cancelled before it started
            if s is spec:
                del inflight[i]
                return pushed
        return now

    def _on_task_done(self, lease: Lease, spec: TaskSpec, result: Any, exc: BaseException | None) -> None:
        host = self.host
        if host.closed:
            return  # shutting down: connections closing is expected, not a crash
        sq = lease.sq
        if exc is not None and not lease.lost:  # the first of its tasks to hear of it
            lease.lost, lease.ran = True, lease.running()
        now = time.monotonic()
        pushed = self._answered(lease, spec, now)
        if exc is not None:
            sq.drop(lease)
            if lease.ran is not None and spec is not lease.ran:
                self._requeue(sq, spec)  # it waited behind the running task: it never started
            else:
                self._worker_died(spec, lease)
        else:
            reply, bufs = result
            if reply.get("stolen"):  # given back before it started (see the module docstring)
                self.given_back += 1
                lease.hold = bool(lease.inflight)
                self._requeue(sq, spec)
            else:
                lease.hold = False
                sq.timed(now - max(pushed, lease.last_done))
                lease.last_done = now
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
        elif not lease.dead and not lease.inflight:
            lease.idle_handle = host.loop.call_later(host.config.lease_idle_timeout_s, self.return_lease, lease)
            self._arm_steal(sq)

    def _requeue(self, sq: SchedulingQueue, spec: TaskSpec) -> None:
        """`spec` went to a worker and did not start there: it goes first in line again."""
        if spec.cancelled:
            self.host.finish_task(spec, error=TaskCancelledError(spec.task_id.hex()))
        else:
            sq.queue.appendleft(spec)

    def _worker_died(self, spec: TaskSpec, lease: Lease) -> None:
        host, sq = self.host, lease.sq
        what = host.task_manager.retry_after_worker_death(spec)
        if what == CANCELLED:
            host.finish_task(spec, error=TaskCancelledError(spec.task_id.hex()))
        elif what == RETRY:
            output.in_context(spec, logger.warning, "A worker died while running task `%s`; retrying (%s "
                              "retries left).", spec.name, "infinite" if spec.max_retries < 0 else spec.max_retries)
            sq.queue.appendleft(spec)
        else:
            host.finish_task(spec, error=WorkerCrashedError(spec.name, f"worker {lease.worker_id[:8]} exited"))

    # -- work stealing ---------------------------------------------------------------------
    def _arm_steal(self, sq: SchedulingQueue) -> None:
        if sq.steal_handle is None and sq.stealable():
            sq.steal_handle = self.host.loop.call_later(STEAL_AFTER_S, self._steal, sq)

    def _steal(self, sq: SchedulingQueue) -> None:
        """A worker of sq is idle while tasks wait on another behind a task running for
        STEAL_AFTER_S or more: ask for them back (the worker answers each it has not started
        with `stolen`, and they are queued again here)."""
        sq.steal_handle = None
        if sq.queue or not any(not x.inflight and not x.dead for x in sq.leases):
            return
        now = time.monotonic()
        for lease in sq.leases:
            if len(lease.inflight) > 1 and not lease.dead and now - lease.head_since >= STEAL_AFTER_S:
                try:
                    lease.conn.send({"op": "steal", "t": [s.task_id for s, _ in list(lease.inflight)[1:]]})
                except ConnectionClosed:
                    pass
        self._arm_steal(sq)  # tasks behind a task not yet long-running may need taking later

    def cancel(self, spec: TaskSpec, force: bool, recursive: bool) -> None:
        lease = spec.lease
        if lease is None or lease.dead or all(s is not spec for s, _ in lease.inflight):  # not pushed: it never will run
            sq = self.queues.get(spec.sched_key)
            if sq is not None and spec in sq.queue:
                sq.queue.remove(spec)
            self.host.finish_task(spec, error=TaskCancelledError(spec.task_id.hex()))
            return
        if force and lease.running() is spec:  # (one queued behind it has not started: a plain cancel does)
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
