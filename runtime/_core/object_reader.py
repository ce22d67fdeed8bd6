"""Reading objects: waiting until values are ready, fetching those owned elsewhere from their
owners, and turning stored values into Python objects (mapping shared memory, pulling a copy
from another node, or having a lost one rebuilt).

Runs in the caller's thread (get, wait) and on the io loop (fetches), through `host` (the
CoreWorker). Countdown, the wake-up of a blocked get, is plain and tested alone.
"""

from __future__ import annotations

import asyncio
import pickle
import threading
from concurrent.futures import Future as ConcurrentFuture
from typing import TYPE_CHECKING, Any

from ..exceptions import GetTimeoutError, ObjectLostError, OwnerDiedError, TaskError
from ..node import shm
from ..serialization.core import deserialize
from .memory_store import INLINE, PENDING, SHM
from .object_ref import ObjectRef

if TYPE_CHECKING:  # the core worker imports this module, never the other way round
    from .core_worker import CoreWorker


class Countdown:
    """Released by whoever makes the last of `need` objects ready; the reader blocks on it.
    A plain lock: cheaper to wake than an Event (no Python-level Condition on either side)."""

    __slots__ = ("_done", "_remaining", "_count_lock")

    def __init__(self, need: int) -> None:
        self._done = threading.Lock()
        self._done.acquire()
        self._remaining = need
        self._count_lock = threading.Lock() if need > 1 else None

    def one_ready(self) -> None:
        if self._count_lock is None:
            try:
                self._done.release()
            except RuntimeError:  # another of the refs got there first
                pass
            return
        with self._count_lock:
            self._remaining -= 1
            if self._remaining != 0:
                return
        self._done.release()

    def done(self) -> bool:
        return not self._done.locked()

    def wait(self, timeout: float | None) -> bool:
        """Block until released (True), or `timeout` seconds (False)."""
        return self._done.acquire(timeout=-1 if timeout is None else max(timeout, 0))


class ObjectReader:
    def __init__(self, host: CoreWorker) -> None:
        self.host = host
        self.store = host.store
        self._fetching: set[bytes] = set()  # not owned here, being fetched from their owners

    def ensure_fetch(self, ref: ObjectRef) -> None:
        """Make sure a value we don't own is being fetched from its owner (loop thread)."""
        oid = ref._id
        if self.store.ready(oid) or oid in self._fetching:
            return
        self._fetching.add(oid)
        self.store.create_pending(oid)
        self.host.spawn(self._fetch(oid, ref._owner))

    async def _fetch(self, oid: bytes, owner: str) -> None:
        try:
            conn = await self.host.get_conn(owner)
            reply, bufs = await conn.request({"op": "get_object", "o": oid}, timeout=None)
            self.apply_object_reply(oid, reply, bufs)
        except (ConnectionError, OSError, asyncio.TimeoutError) as e:
            self.store.set_error(oid, OwnerDiedError(oid.hex(), f"its owner {owner} is unreachable ({e}); "
                                                     "the process that created it has exited."))
        except Exception as e:  # noqa: BLE001 - the owner answered with an error
            self.store.set_error(oid, e if isinstance(e, ObjectLostError) else ObjectLostError(oid.hex(), str(e)))
        finally:
            self._fetching.discard(oid)

    def apply_object_reply(self, oid: bytes, reply: dict, bufs: list) -> None:
        kind = reply["k"]
        if kind == "i":
            self.store.set_inline(oid, reply["m"], [bytes(b) for b in bufs])
        elif kind == "s":
            self.store.set_shm(oid, reply["size"], reply["node"])
        elif kind == "e":
            self.store.set_error(oid, pickle.loads(reply["m"]))
        else:
            self.store.set_error(oid, ObjectLostError(oid.hex(), reply.get("why", "the owner no longer has it")))

    def wait_ready(self, refs: list[ObjectRef], num_returns: int, timeout: float | None) -> None:
        """Block until at least `num_returns` of `refs` are ready (or timeout)."""
        store = self.store
        pending = [r for r in refs if not store.ready(r._id)]
        need = num_returns - (len(refs) - len(pending))
        if need <= 0:
            return
        latch = Countdown(need)
        one_ready = latch.one_ready
        to_fetch = []
        for r in pending:
            if not store.add_waiter(r._id, one_ready):
                one_ready()
            if r._owner != self.host.address:
                to_fetch.append(r)
        if to_fetch:
            self.host.on_loop(lambda: [self.ensure_fetch(r) for r in to_fetch])
        if latch.done():
            return
        blocked = self.host.blocked_hook is not None
        if blocked:
            self.host.blocked_hook(True)
        try:
            if not latch.wait(timeout):
                left = sum(1 for r in refs if not store.ready(r._id)) - (len(refs) - num_returns)
                raise GetTimeoutError(f"Get timed out: {left} of {len(refs)} objects were not ready "
                                      f"after {timeout} s. Raise the timeout, or check `runtime list tasks`.")
        finally:
            if blocked:
                self.host.blocked_hook(False)

    def get(self, refs: list[ObjectRef], timeout: float | None = None) -> list[Any]:
        self.wait_ready(refs, len(refs), timeout)
        return [self.materialize(r) for r in refs]

    def materialize(self, ref: ObjectRef) -> Any:
        e = self.store.entries.get(ref._id)
        if e is None or e.state == PENDING:
            raise ObjectLostError(ref.hex(), "it was freed while being read")
        if e.state == INLINE:
            return deserialize(e.meta, e.bufs)
        if e.state == SHM:
            if e.mapped is None:
                try:
                    e.mapped = self._map_shm(ref._id, e.node_id)
                except ObjectLostError as lost:
                    if e.node_id == self.host.node_id:
                        raise
                    # Its node is gone: rebuild it from lineage (owner) or have the owner do so.
                    self.host.run_sync(self.host.recovery.recover(ref, e.node_id, lost.detail))
                    return self.materialize(ref)
            meta, bufs = e.mapped
            return deserialize(meta, bufs)
        err = e.error
        if isinstance(err, TaskError):
            raise err.as_instanceof_cause()
        raise err

    def _map_shm(self, oid: bytes, node_id: str) -> tuple:
        host = self.host
        mapped = shm.map_object(host.shm_dir, oid)
        if mapped is None:
            if node_id and node_id != host.node_id:  # on another node: our node manager pulls a copy
                reply, _ = host.run_sync(host.nm.request({"op": "pull_object", "object_id": oid, "node_id": node_id},
                                                         timeout=None))
            else:  # spilled: ask the node manager to bring it back
                reply, _ = host.run_sync(host.nm.request({"op": "restore_object", "object_id": oid}))
            mapped = shm.map_object(host.shm_dir, oid) if reply.get("found") else None
            if mapped is None:
                where = reply.get("why") or "the node freed or lost it"
                raise ObjectLostError(oid.hex(), f"its shared-memory copy is gone ({where})")
        return mapped

    def wait(self, refs: list[ObjectRef], num_returns: int, timeout: float | None) -> tuple[list, list]:
        try:
            self.wait_ready(refs, num_returns, timeout)
        except GetTimeoutError:
            pass
        ready, not_ready = [], []
        for r in refs:
            (ready if self.store.ready(r._id) and len(ready) < num_returns else not_ready).append(r)
        return ready, not_ready

    def get_future(self, ref: ObjectRef) -> ConcurrentFuture:
        fut: ConcurrentFuture = ConcurrentFuture()

        def resolve() -> None:
            try:
                fut.set_result(self.materialize(ref))
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting code
                fut.set_exception(e)

        def on_ready() -> None:
            # Deserialize off the io loop: values can be large, and get may need the loop.
            threading.Thread(target=resolve, daemon=True).start() if self.store.entries.get(
                ref._id) and self.store.entries[ref._id].state == SHM else resolve()

        if not self.store.add_waiter(ref._id, on_ready):
            on_ready()
        elif ref._owner != self.host.address:
            self.host.on_loop(self.ensure_fetch, ref)
        return fut
