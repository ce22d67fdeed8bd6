"""Objects between nodes: a node manager pulls a copy of an object that lives in another
node's store, in chunks over TCP, straight from that node manager (never through the head).

The puller reserves space in its own store, asks the source for the size, then keeps a few
chunk reads in flight and writes each chunk at its offset into a temporary file, which it
renames into place and seals: readers on the puller's node then map the copy as any local
object. The source remembers which nodes hold copies, so that freeing the primary frees
them too. Concurrent pulls of one object on one node share one transfer.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Awaitable, Callable

from ..rpc.connection import Connection
from .object_store import ObjectStoreManager
from .shm import object_path

logger = logging.getLogger("runtime.node")

CHUNK_BYTES = 8 << 20  # large enough that per-request overhead is small, small enough to pipeline
WINDOW = 4  # chunk reads in flight per transfer


class ObjectTransfer:
    def __init__(self, node_id: str, store: ObjectStoreManager,
                 peer: Callable[[str], Awaitable[Connection]]) -> None:
        self.node_id = node_id
        self.store = store
        self.peer = peer  # node id -> connection to that node's manager
        self.pulls: dict[bytes, asyncio.Task] = {}
        self.copies: dict[bytes, set[str]] = {}  # object served -> nodes that pulled a copy
        self.pulled_bytes_total = 0

    # -- puller side -------------------------------------------------------------------
    async def pull(self, oid: bytes, source_node: str) -> bool:
        """Make `oid` present in this node's store, copying it from `source_node` if needed.
        False if the source no longer has it; raises if the source cannot be reached."""
        obj = self.store.objects.get(oid)
        if obj is not None and obj.sealed:
            return self.store.restore(oid)
        task = self.pulls.get(oid)
        if task is None:
            task = self.pulls[oid] = asyncio.get_running_loop().create_task(self._pull(oid, source_node))
            task.add_done_callback(lambda _t: self.pulls.pop(oid, None))
        return await asyncio.shield(task)

    async def _pull(self, oid: bytes, source_node: str) -> bool:
        conn = await self.peer(source_node)
        info, _ = await conn.request({"op": "object_info", "object_id": oid, "node_id": self.node_id}, timeout=30)
        if not info.get("found"):
            return False
        size = info["size"]
        reuse = self.store.create(oid, size, info["owner"])
        tmp = object_path(self.store.shm_dir, oid) + ".tmp"
        ok = False
        try:
            fd = os.open(tmp, os.O_RDWR if reuse else os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600)
            try:
                if not reuse:
                    os.ftruncate(fd, max(size, 1))
                await self._copy_chunks(conn, oid, size, fd)
            finally:
                os.close(fd)
            os.rename(tmp, object_path(self.store.shm_dir, oid))
            self.store.seal(oid)
            self.pulled_bytes_total += size
            ok = True
            return True
        finally:
            if not ok:
                self.store.free(oid)

    async def _copy_chunks(self, conn: Connection, oid: bytes, size: int, fd: int) -> None:
        offsets = list(range(0, size, CHUNK_BYTES))
        loop = asyncio.get_running_loop()

        async def worker() -> None:
            while offsets:
                off = offsets.pop(0)
                n = min(CHUNK_BYTES, size - off)
                reply, bufs = await conn.request({"op": "read_chunk", "object_id": oid, "offset": off,
                                                  "length": n}, timeout=60)
                if not reply.get("found") or len(bufs[0]) != n:
                    raise ConnectionError(f"object {oid.hex()[:16]} disappeared from its node during the transfer")
                # The write runs off the loop: the next chunks keep arriving meanwhile.
                await loop.run_in_executor(None, _pwrite_all, fd, bufs[0], off)

        await asyncio.gather(*(worker() for _ in range(min(WINDOW, len(offsets)))))

    # -- source side -------------------------------------------------------------------
    def object_info(self, oid: bytes, puller: str) -> dict:
        obj = self.store.objects.get(oid)
        if obj is None or not obj.sealed or not self.store.restore(oid):
            return {"found": False}
        self.copies.setdefault(oid, set()).add(puller)
        return {"found": True, "size": os.stat(object_path(self.store.shm_dir, oid)).st_size, "owner": obj.owner}

    def read_chunk(self, oid: bytes, offset: int, length: int) -> tuple[dict, list]:
        obj = self.store.objects.get(oid)
        if obj is None:
            return {"found": False}, []
        path = obj.spilled_path or object_path(self.store.shm_dir, oid)
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, OSError):
            return {"found": False}, []
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        return {"found": True}, [data]

    def forget(self, oid: bytes) -> set[str]:
        """The object is freed here: the nodes whose copies must be freed too."""
        return self.copies.pop(oid, set())


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
