"""Actor calls: the caller's side of each actor it calls.

Calls to one actor go out in submission order over one connection. Where the actor is comes
from the control store (subscribe_actor, then actor_update pushes); while it is not ALIVE the
calls wait in its channel, and when its process dies the calls in flight are retried
(max_task_retries) or fail with ActorDiedError.

ActorChannel's state changes are plain methods (tested alone); ActorTaskSubmitter does the
I/O through `host` (the CoreWorker).
"""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING, Any, Callable

from ..exceptions import ActorDiedError, TaskCancelledError
from ..rpc.connection import Connection
from . import task_events as te
from .task_spec import TaskSpec


if TYPE_CHECKING:  # the core worker imports this module, never the other way round
    from .core_worker import CoreWorker


class ActorChannel:
    """Caller-side state of one actor: where it is, and calls not yet answered."""

    __slots__ = ("actor_id", "state", "address", "conn", "connecting", "queue", "inflight", "reason",
                 "subscribed", "handle_gone", "max_task_retries", "num_restarts", "version", "lock", "posted",
                 "node_id")

    def __init__(self, actor_id: str, max_task_retries: int) -> None:
        self.actor_id = actor_id
        self.state = "PENDING_CREATION"
        self.address = ""
        self.node_id = ""
        self.conn: Connection | None = None
        self.connecting = False
        self.queue: collections.deque[TaskSpec] = collections.deque()
        self.inflight: dict[bytes, TaskSpec] = {}
        self.reason = ""
        self.subscribed = False
        self.handle_gone = False
        self.max_task_retries = max_task_retries
        self.num_restarts = 0
        self.version = -1  # of the last control-store state applied
        # The caller's thread may send a call itself (ActorTaskSubmitter.submit); the loop
        # holds this lock while it changes where calls go or sends queued ones, so calls stay
        # in order. `posted` counts calls handed to the loop but not yet in `queue`.
        self.lock = threading.RLock()
        self.posted = 0

    def apply_state(self, version: int, num_restarts: int, state: str, reason: str, address: str,
                    node_id: str) -> bool:
        """Take the control store's view of the actor (a subscribe reply or an actor_update).
        False if it was ignored: a subscribe reply resumes its coroutine a loop turn after it
        arrives, so it can be older than an update already applied; only ever move forward."""
        if self.state == "DEAD" or version < self.version:
            return False
        self.version = version
        self.num_restarts = num_restarts
        self.state, self.reason = state, reason
        if address and address != self.address:
            self.address, self.conn = address, None
        self.node_id = node_id
        return True

    def conn_lost(self, consume_retry: Callable[[TaskSpec], bool]) -> list[TaskSpec]:
        """The connection to the actor's process closed. Calls in flight that have a retry
        left go back to the front of the queue, in order; returns those that failed."""
        self.conn = None
        self.address = ""
        if self.state == "ALIVE":
            self.state = "UNKNOWN"  # until the control store says (restarting, or dead)
        retry, failed = [], []
        for spec in list(self.inflight.values()):
            self.inflight.pop(spec.task_id, None)
            (retry if consume_retry(spec) else failed).append(spec)
        self.queue.extendleft(reversed(retry))
        return failed

    def died_reason(self) -> str:
        return self.reason or "the actor's process died while running this call (max_task_retries=0)"

    def out_of_scope_now(self) -> bool:
        """Every handle is gone and no call is left: the actor is to be killed (once)."""
        if self.handle_gone and not self.queue and not self.inflight and self.state != "DEAD":
            self.state = "DEAD"
            self.reason = "all handles to it went out of scope"
            return True
        return False


class ActorTaskSubmitter:
    def __init__(self, host: CoreWorker) -> None:
        self.host = host
        self.actors: dict[str, ActorChannel] = {}

    def channel(self, actor_id: str, max_task_retries: int = 0) -> ActorChannel:
        ch = self.actors.get(actor_id)
        if ch is None:  # setdefault: the caller's thread may create it at the same time
            ch = self.actors.setdefault(actor_id, ActorChannel(actor_id, max_task_retries))
        return ch

    def submit(self, spec: TaskSpec, has_deps: bool, max_task_retries: int) -> None:
        """Send (or queue) an actor call whose arguments are attached; any thread."""
        host = self.host
        ch = self.channel(spec.actor_id, max_task_retries)
        with ch.lock:
            # Fast path: a connected actor with nothing queued ahead gets the call straight from
            # this thread, which saves waking the io thread (about a fifth of a sync call).
            if not (has_deps or ch.posted or ch.queue or ch.state != "ALIVE" or ch.conn is None or host.closed):
                host.task_manager.add_pending(spec)
                ch.inflight[spec.task_id] = spec
                if self._send_call(ch, spec, ch.conn, threadsafe=True):
                    return
                del ch.inflight[spec.task_id]
            ch.posted += 1
        host.post(self._submit_on_loop, spec)

    def _send_call(self, ch: ActorChannel, spec: TaskSpec, conn: Connection, threadsafe: bool) -> bool:
        msg, bufs = self.host.task_message(spec, conn, ch.node_id)
        self.host.task_event(spec, te.RUNNING, ("", ch.node_id))

        def on_reply(reply: Any, rbufs: Any, err: BaseException | None) -> None:
            self._on_reply(ch, spec, reply, rbufs, err)

        if threadsafe:
            return conn.request_cb_threadsafe(msg, bufs, on_reply)
        conn.request_cb(msg, bufs, on_reply)
        return True

    def _submit_on_loop(self, spec: TaskSpec) -> None:
        ch = self.channel(spec.actor_id)
        with ch.lock:
            ch.posted -= 1
            self.host.task_manager.add_pending(spec)
            ch.queue.append(spec)
            self._subscribe_once(ch)
            self.flush(ch)

    def _subscribe_once(self, ch: ActorChannel) -> None:
        if not ch.subscribed:
            ch.subscribed = True
            self.host.spawn(self._subscribe(ch))

    def subscribe_nowait(self, actor_id: str, max_task_retries: int) -> None:
        self.host.on_loop(lambda: self._subscribe_once(self.channel(actor_id, max_task_retries)))

    def resubscribe(self) -> None:
        """The control store came back: its pushes of actor states restart from a subscribe."""
        for ch in self.actors.values():
            if ch.subscribed and ch.state != "DEAD":
                self.host.spawn(self._subscribe(ch))

    async def _subscribe(self, ch: ActorChannel) -> None:
        host = self.host
        try:
            try:
                reply, _ = await host.gcs_request({"op": "subscribe_actor", "actor_id": ch.actor_id})
            except ConnectionError:  # the control store went away mid-request: once more, reconnecting
                reply, _ = await host.gcs_request({"op": "subscribe_actor", "actor_id": ch.actor_id})
        except Exception as e:
            ch.state, ch.reason = "DEAD", f"the control store could not be reached: {e}"
            self.flush(ch)
            return
        self.apply_state(ch, reply)

    def on_update(self, msg: dict) -> None:
        ch = self.actors.get(msg["actor_id"])
        if ch is not None:
            self.apply_state(ch, msg)

    def apply_state(self, ch: ActorChannel, msg: dict) -> None:
        with ch.lock:
            if ch.apply_state(msg["version"], msg["num_restarts"], msg["state"], msg.get("reason", ""),
                              msg.get("address", ""), msg.get("node_id", "")):
                self.flush(ch)

    def flush(self, ch: ActorChannel) -> None:
        """Send what can be sent now; fail the queue of a dead actor."""
        with ch.lock:
            self._flush_locked(ch)

    def _flush_locked(self, ch: ActorChannel) -> None:
        host = self.host
        if ch.state == "DEAD":
            err = ActorDiedError(ch.actor_id, ch.reason)
            while ch.queue:
                host.finish_task(ch.queue.popleft(), error=err)
            return
        if ch.state != "ALIVE" or not ch.address:
            return
        if ch.conn is None or ch.conn.closed:
            if not ch.connecting:
                ch.connecting = True
                host.spawn(self._connect(ch))
            return
        while ch.queue:
            spec = ch.queue[0]
            if spec.cancelled:
                ch.queue.popleft()
                continue
            if host.deps_pending(spec):
                host.when_deps_ready(spec, lambda s: self.flush(ch))
                return
            ch.queue.popleft()
            err = host.dep_error(spec)
            if err is not None:
                host.finish_task(spec, error=err)
                continue
            ch.inflight[spec.task_id] = spec
            self._send_call(ch, spec, ch.conn, threadsafe=False)

    async def _connect(self, ch: ActorChannel) -> None:
        address = ch.address
        try:
            conn = await self.host.get_conn(address)
        except Exception:
            conn = None
        with ch.lock:
            ch.connecting = False
            if ch.address != address:
                self.flush(ch)
                return
            if conn is None:
                ch.state = "UNKNOWN"  # wait for the control store to say what happened
                return
            ch.conn = conn
            self.flush(ch)

    def _on_reply(self, ch: ActorChannel, spec: TaskSpec, reply: dict, bufs: list,
                  err: BaseException | None) -> None:
        if err is not None:
            return  # connection lost: handled by conn_closed
        if reply.get("actor_dead"):
            ch.inflight.pop(spec.task_id, None)
            self.host.finish_task(spec, error=ActorDiedError(ch.actor_id, reply["actor_dead"]))
            return
        self.host.apply_results(spec, reply, bufs, ch.address)

    def conn_closed(self, conn: Connection) -> None:
        for ch in self.actors.values():
            if ch.conn is conn:
                with ch.lock:
                    for spec in ch.conn_lost(self.host.task_manager.consume_retry):
                        self.host.finish_task(spec, error=ActorDiedError(ch.actor_id, ch.died_reason()))
                    self.flush(ch)

    def abort_conns_on(self, node_id: str, why: str) -> None:
        for ch in self.actors.values():
            if ch.node_id == node_id and ch.conn is not None:
                ch.conn.abort(why)

    def cancel(self, spec: TaskSpec, recursive: bool) -> None:
        ch = self.channel(spec.actor_id)
        with ch.lock:
            if spec in ch.queue:
                ch.queue.remove(spec)
                self.host.finish_task(spec, error=TaskCancelledError(spec.task_id.hex()))
            elif ch.conn is not None and not ch.conn.closed:
                ch.conn.send({"op": "cancel", "t": spec.task_id, "force": False, "recursive": recursive})

    def task_finished(self, spec: TaskSpec) -> None:
        ch = self.actors.get(spec.actor_id)
        if ch is not None:
            ch.inflight.pop(spec.task_id, None)
            self._maybe_kill_out_of_scope(ch)

    def handle_out_of_scope(self, actor_id: str) -> None:
        """The last handle went (loop thread)."""
        ch = self.channel(actor_id)
        ch.handle_gone = True
        self._maybe_kill_out_of_scope(ch)

    def _maybe_kill_out_of_scope(self, ch: ActorChannel) -> None:
        if not ch.out_of_scope_now():
            return

        async def kill() -> None:
            try:
                await self.host.gcs_request({"op": "kill_actor", "actor_id": ch.actor_id, "no_restart": True})
            except Exception:
                pass

        self.host.spawn(kill())
