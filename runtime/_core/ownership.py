"""The objects this process owns, and its side of references it borrows.

Creating owned objects (put: inline here when small, else in the node's shared memory),
telling owners when we start and stop borrowing, releasing an owned object once the
ReferenceTable says nothing refers to it (its shared-memory copy, the refs pickled inside it,
its lineage), and answering other processes about what we own (get_object, list_refs, the
borrower notices). The counting itself is the ReferenceTable's; this is what follows from it.
Works through `host` (the CoreWorker).
"""

from __future__ import annotations

import os
import pickle
import sys
from typing import TYPE_CHECKING, Any

from ..exceptions import ObjectLostError
from ..node import shm
from ..rpc.connection import Connection
from ..serialization.core import SerializedObject, serialize
from .ids import ObjectID
from .memory_store import ERROR, INLINE, PENDING, SHM
from .object_ref import ObjectRef
from .reference_table import RefEntry, ReferenceTable

if TYPE_CHECKING:  # the core worker imports this module, never the other way round
    from .core_worker import CoreWorker


class Ownership:
    def __init__(self, host: CoreWorker) -> None:
        self.host = host
        self.store = host.store
        # Counts who refers to what; tells us (on_release, on_new_borrow) when that changes.
        self.refs = ReferenceTable(host.address, self.on_release, self.on_new_borrow)
        self.object_cells: dict[bytes, dict] = {}  # owned object -> the cell that created it
        self.object_sites: dict[bytes, str] = {}  # owned object -> where it was created, when recorded
        self._prune_handle: Any = None  # asyncio.TimerHandle of _prune_write_maps, while armed

    # -- borrowing and releasing -------------------------------------------------------
    def on_new_borrow(self, oid: bytes, owner: str) -> None:
        if owner:
            self.host.on_loop(self.send_owner, owner, {"op": "add_borrower", "o": oid, "a": self.host.address})

    def send_owner(self, owner: str, msg: dict) -> None:
        conn = self.host.conns.get(owner)
        if conn is not None and not conn.closed:
            conn.send(msg)
            return

        async def _later() -> None:
            try:
                (await self.host.get_conn(owner)).send(msg)
            except Exception:
                pass  # the owner is gone; nothing to tell it

        self.host.spawn(_later())

    def on_release(self, oid: bytes, e: RefEntry) -> None:
        if self.host.closed:
            return
        self.host.on_loop(self._release_on_loop, oid, e)

    def _release_on_loop(self, oid: bytes, e: RefEntry) -> None:
        entry = self.store.pop(oid)
        if e.owned:
            if entry is not None:
                if entry.state == SHM:
                    self.free_shm(oid, entry.node_id)
                self.release_nested(oid, entry.nested)
            self.object_cells.pop(oid, None)
            self.object_sites.pop(oid, None)
            freed = self.host.task_manager.forget(oid)
            if freed is not None:
                self.host.release_task_args(freed)
        else:
            self.send_owner(e.owner, {"op": "remove_borrower", "o": oid, "a": self.host.address})

    def free_shm(self, oid: bytes, node_id: str) -> None:
        """Free an object's shared-memory copy on the node that holds it (through our own node
        manager, which forwards; the holder frees the copies other nodes pulled)."""
        if self.host.nm is not None and not self.host.nm.closed:
            self.host.nm.send({"op": "free_objects", "object_ids": [oid], "node_id": node_id})

    def release_nested(self, outer: bytes, nested: list) -> None:
        for oid, owner, holder in nested:
            if holder == self.host.address:
                self.refs.remove_contained(oid, outer)
            else:
                self.send_owner(holder, {"op": "release_contained", "o": oid, "x": outer})

    def pin_nested(self, outer: bytes, so: SerializedObject) -> list:
        nested = []
        for r in so.nested_refs:
            self.refs.add_contained(r._id, r._owner, outer)
            nested.append((r._id, r._owner, self.host.address))
        return nested

    # owner-side handlers
    def on_add_borrower(self, conn: Connection, msg: dict, bufs: list) -> None:
        self.refs.add_borrower(msg["o"], msg["a"])

    def on_remove_borrower(self, conn: Connection, msg: dict, bufs: list) -> None:
        self.refs.remove_borrower(msg["o"], msg["a"])

    def on_release_contained(self, conn: Connection, msg: dict, bufs: list) -> None:
        self.refs.remove_contained(msg["o"], msg["x"])

    def on_list_refs(self, conn: Connection, msg: dict, bufs: list) -> dict:
        out = []
        for oid, e in self.refs.snapshot():
            if not e.owned:
                continue
            entry = self.store.entries.get(oid)
            state = {PENDING: "PENDING", INLINE: "INLINE", SHM: "SHARED_MEMORY", ERROR: "ERROR"}[
                entry.state if entry else PENDING]
            out.append({"object_id": oid.hex(), "size_bytes": entry.size if entry else 0, "owner": self.host.address,
                        "owner_worker_id": self.host.worker_id, "owner_pid": self.host.pid, "reference_kinds": e.kinds(),
                        "local_refs": e.local, "pending_task_refs": e.submitted, "captured_in": len(e.contained_in),
                        "borrowers": len(e.borrowers), "state": state, "spilled": False,
                        "cell": self.object_cells.get(oid), "call_site": self.object_sites.get(oid),
                        "owner_is_driver": self.host.mode == "driver"})
        return {"objects": out}

    # -- creating owned objects ----------------------------------------------------------------
    def put(self, value: Any) -> ObjectRef:
        if isinstance(value, ObjectRef):
            raise TypeError("Calling put() on an ObjectRef is not allowed: the value is already stored. "
                            "Pass the ref itself, or put a list containing it.")
        so = serialize(value)
        oid = ObjectID.new()
        ref = ObjectRef(oid, self.host.address)
        nested = self.pin_nested(oid, so)
        self.store_serialized(oid, so, nested, owner_wid=self.host.worker_id)
        if self.host.current_cell is not None:
            self.object_cells[oid] = self.host.current_cell
        if self.host.config.record_ref_creation_sites:
            self.object_sites[oid] = call_site()
        return ref

    def store_serialized(self, oid: bytes, so: SerializedObject, nested: list, owner_wid: str) -> tuple[str, Any]:
        """Store locally: inline if small, else in the node's shared memory. Returns how."""
        total = so.total_bytes
        if total < self.host.config.max_inline_bytes:
            bufs = [bytes(b) for b in so.buffers]  # copy: the caller may mutate its buffers later
            self.store.set_inline(oid, so.meta, bufs, nested)
            return "i", None
        size = self.write_shm(oid, so, owner_wid)
        self.store.set_shm(oid, size, self.host.node_id, nested)
        return "s", size

    def write_shm(self, oid: bytes, so: SerializedObject, owner_wid: str) -> int:
        size = shm.shm_size(so)
        reply, _ = self.host.run_sync(self.host.nm.request(
            {"op": "create_object", "object_id": oid, "size": size, "owner": owner_wid},
            timeout=self.host.config.rpc_timeout_s))
        shm.write_object(self.host.shm_dir, oid, so, size, reuse=reply.get("reuse", False))
        self.host.on_loop(self._after_write, oid)
        return size

    def _after_write(self, oid: bytes) -> None:
        self.host.nm.send({"op": "seal_object", "object_id": oid})
        if shm.has_write_maps() and self._prune_handle is None:
            self._prune_handle = self.host.loop.call_later(2.0, self._prune_write_maps)

    def _prune_write_maps(self) -> None:
        # Mappings kept for reuse (shm.py) must not outlive their file by long.
        shm.prune_write_maps()
        self._prune_handle = self.host.loop.call_later(2.0, self._prune_write_maps) if shm.has_write_maps() else None

    def put_args(self, so: SerializedObject) -> ObjectRef:
        oid = ObjectID.new()
        ref = ObjectRef(oid, self.host.address)
        nested = self.pin_nested(oid, so)
        self.store_serialized(oid, so, nested, owner_wid=self.host.worker_id)
        return ref

    # -- answering other processes ------------------------------------------------------------
    def on_get_object(self, conn: Connection, msg: dict, bufs: list) -> Any:
        oid = msg["o"]
        e = self.store.entries.get(oid)
        if e is None:
            return {"k": "x", "why": "the owner has already freed it (no references were left)"}
        if e.state == PENDING:
            fut = self.host.loop.create_future()

            def done() -> None:
                if not fut.done():
                    fut.set_result(None)

            if self.store.add_waiter(oid, lambda: self.host.on_loop(done)):
                async def wait_then_reply() -> Any:
                    await fut
                    return self.object_reply(oid)

                return wait_then_reply()
        return self.object_reply(oid)

    def object_reply(self, oid: bytes) -> Any:
        e = self.store.entries.get(oid)
        if e is None:
            return {"k": "x", "why": "it was freed"}
        if e.state == INLINE:
            return {"k": "i", "m": e.meta}, e.bufs
        if e.state == SHM:
            return {"k": "s", "size": e.size, "node": e.node_id}
        return {"k": "e", "m": _pickle_error(e.error)}


_RUNTIME_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def call_site() -> str:
    """Where user code called into the runtime: the innermost frame outside this package
    ("path:line in function"), as `runtime memory --group-by STACK_TRACE` shows it."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_RUNTIME_DIR):
        frame = frame.f_back
    if frame is None:
        return "(unknown)"
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"




def _pickle_error(err: BaseException | None) -> bytes:
    try:
        return pickle.dumps(err)
    except Exception:
        return pickle.dumps(ObjectLostError("", f"{type(err).__name__}: {err}"))
