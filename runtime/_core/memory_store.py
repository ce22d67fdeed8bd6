"""Per-process store of object values this process owns or has fetched.

Small values live here serialized (so every `get` returns a fresh copy, and stored
objects are immutable); large values live in the node's shared memory and this store
keeps only their mapping. Waiters are callbacks run when an entry becomes ready.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

PENDING, INLINE, SHM, ERROR = 0, 1, 2, 3
# Tiny serialized values (a task returning None: 4 bytes) are kept once, not once per result.
_SHARED_META_MAX = 16
_shared_meta: dict[bytes, bytes] = {}


class StoreEntry:
    __slots__ = ("state", "meta", "bufs", "size", "error", "waiters", "mapped", "nested", "node_id")

    def __init__(self) -> None:
        self.state = PENDING
        self.meta: bytes | None = None
        # Empty tuples, not lists, until the value arrives (then they are replaced, never
        # appended to): a pending result is most of what a queued task costs its owner.
        self.bufs: list | tuple = ()
        self.size = 0
        self.error: BaseException | None = None
        self.waiters: list[Callable[[], None]] | None = None
        self.mapped: Any = None  # (meta view, buffer views) of the shm mapping, once read
        self.nested: list | tuple = ()  # [(object_id, owner, holder)] refs pickled inside this value
        self.node_id = ""


class MemoryStore:
    def __init__(self) -> None:
        self.entries: dict[bytes, StoreEntry] = {}
        self.lock = threading.Lock()

    def create_pending(self, oid: bytes) -> StoreEntry:
        e = self.entries.get(oid)
        if e is None:
            e = self.entries[oid] = StoreEntry()
        return e

    def _fire(self, e: StoreEntry) -> None:
        waiters, e.waiters = e.waiters, None
        for w in waiters or ():
            w()

    def set_inline(self, oid: bytes, meta: bytes, bufs: list, nested: list = ()) -> None:
        if len(meta) <= _SHARED_META_MAX:  # None, True, small ints: one bytes object for all results alike
            meta = _shared_meta.setdefault(meta, meta) if len(_shared_meta) < 1024 else meta
        with self.lock:
            e = self.entries.get(oid) or self.create_pending(oid)
            e.state, e.meta, e.bufs, e.nested = INLINE, meta, bufs or (), list(nested) if nested else ()
            e.size = len(meta) + sum(len(b) for b in bufs)
        self._fire(e)

    def set_shm(self, oid: bytes, size: int, node_id: str, nested: list = ()) -> None:
        with self.lock:
            e = self.entries.get(oid) or self.create_pending(oid)
            e.state, e.size, e.node_id, e.nested = SHM, size, node_id, list(nested) if nested else ()
        self._fire(e)

    def set_error(self, oid: bytes, error: BaseException) -> None:
        with self.lock:
            e = self.entries.get(oid) or self.create_pending(oid)
            e.state, e.error = ERROR, error
        self._fire(e)

    def reset_pending(self, oid: bytes) -> None:
        """The value is being made again (its copy was lost): readers wait for the new one."""
        with self.lock:
            e = self.entries.get(oid) or self.create_pending(oid)
            e.state, e.mapped, e.node_id, e.error = PENDING, None, "", None

    def add_waiter(self, oid: bytes, callback: Callable[[], None]) -> bool:
        """Register `callback` for when `oid` is ready. False (not registered) if ready now."""
        with self.lock:
            e = self.entries.get(oid)
            if e is None:
                e = self.create_pending(oid)
            if e.state != PENDING:
                return False
            if e.waiters is None:
                e.waiters = []
            e.waiters.append(callback)
            return True

    def ready(self, oid: bytes) -> bool:
        e = self.entries.get(oid)
        return e is not None and e.state != PENDING

    def pop(self, oid: bytes) -> StoreEntry | None:
        with self.lock:
            return self.entries.pop(oid, None)
