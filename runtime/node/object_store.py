"""The node's object store manager: capacity accounting, spilling, restoring, freeing.

Creators write object files themselves (see shm.py); this manager reserves space first,
spills the oldest sealed objects to disk when the store would pass its capacity, and
restores them on access. `ObjectStoreFullError` is raised only when spilling cannot help.

Freed files that nobody maps go to a small pool and are handed to the next creator of an
object of about the same size (shm.py says why). Pooled bytes count as used; the pool is
emptied before anything is spilled.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass

from .._core.private_files import copy_private, make_private_dir
from ..exceptions import ObjectStoreFullError
from .shm import REUSE_MIN_BYTES, object_path, try_lock_unmapped

logger = logging.getLogger(__name__)


@dataclass
class StoredObject:
    object_id: bytes
    size: int
    owner: str  # worker id (hex) of the owner; its death frees the object
    sealed: bool = False
    spilled_path: str = ""
    created_at: float = 0.0


@dataclass
class PooledFile:
    path: str
    size: int


class ObjectStoreManager:
    MAX_POOLED_FILES = 64  # also bounded by a quarter of the capacity in bytes
    def __init__(self, shm_dir: str, spill_dir: str, capacity_bytes: int) -> None:
        self.shm_dir = shm_dir
        self.spill_dir = spill_dir
        self.capacity = capacity_bytes
        self.used = 0  # bytes of objects currently in shared memory
        # Invariant: insertion order == age order, used for FIFO spilling.
        self.objects: OrderedDict[bytes, StoredObject] = OrderedDict()
        self.spilled_bytes_total = 0
        self.restored_bytes_total = 0
        self.pool: list[PooledFile] = []  # oldest first
        self._pool_seq = 0
        self.reused_total = 0
        self._seal_waiters: dict[bytes, list[asyncio.Future]] = {}

    def create(self, object_id: bytes, size: int, owner: str) -> bool:
        """Reserve space for a new object. True if a pooled file now lies at its temporary
        path for the creator to overwrite, False if the creator makes a new file."""
        if object_id in self.objects:
            return False  # a retried task writing the same return again
        if size > self.capacity:
            raise ObjectStoreFullError(
                f"Object {object_id.hex()[:16]} of {size} bytes is larger than the whole object store "
                f"({self.capacity} bytes). Start the cluster with a larger object_store_memory.")
        pooled = self._take_pooled(size)
        if pooled is not None:
            os.rename(pooled.path, object_path(self.shm_dir, object_id) + ".tmp")
            self.objects[object_id] = StoredObject(object_id, pooled.size, owner, created_at=time.time())
            self.reused_total += 1
            return True
        self._make_room(size)
        self.used += size
        self.objects[object_id] = StoredObject(object_id, size, owner, created_at=time.time())
        return False

    def _take_pooled(self, size: int) -> PooledFile | None:
        if size < REUSE_MIN_BYTES:
            return None
        # Close enough in size that the slack (which stays accounted to the object) is small.
        for i, p in enumerate(self.pool):
            if size <= p.size <= size + size // 8 + 65536:
                return self.pool.pop(i)
        return None

    def _pool_or_unlink(self, path: str, size: int) -> None:
        fd = try_lock_unmapped(path) if size >= REUSE_MIN_BYTES else None
        if fd is None:
            self.used -= size
            _unlink(path)
            return
        try:
            self._pool_seq += 1
            pooled = PooledFile(os.path.join(self.shm_dir, f"pool-{self._pool_seq}"), size)
            os.rename(path, pooled.path)  # while locked: no reader can have opened it since
        finally:
            os.close(fd)
        self.pool.append(pooled)
        cap = self.capacity // 4
        while len(self.pool) > self.MAX_POOLED_FILES or sum(p.size for p in self.pool) > cap:
            self._drop_pooled()

    def _drop_pooled(self) -> None:
        p = self.pool.pop(0)
        self.used -= p.size
        _unlink(p.path)

    def seal(self, object_id: bytes) -> None:
        obj = self.objects.get(object_id)
        if obj is not None:
            obj.sealed = True
        self._wake(object_id)

    async def wait_sealed(self, object_id: bytes, timeout: float) -> None:
        """Until an object being written is sealed, freed, or `timeout` passes. A creator's seal
        message and its reply to the owner go over different connections, so a reader elsewhere
        told of the object can ask for it before the seal has arrived here."""
        obj = self.objects.get(object_id)
        if obj is None or obj.sealed:
            return
        fut = asyncio.get_running_loop().create_future()
        self._seal_waiters.setdefault(object_id, []).append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            waiting = self._seal_waiters.get(object_id)
            if waiting is not None and fut in waiting:
                waiting.remove(fut)
                if not waiting:
                    del self._seal_waiters[object_id]

    def _wake(self, object_id: bytes) -> None:
        for fut in self._seal_waiters.pop(object_id, []):
            if not fut.done():
                fut.set_result(None)

    def _make_room(self, size: int) -> None:
        while self.pool and self.used + size > self.capacity:
            self._drop_pooled()
        if self.used + size <= self.capacity:
            return
        for obj in list(self.objects.values()):
            if self.used + size <= self.capacity:
                return
            if obj.sealed and not obj.spilled_path:
                self._spill(obj)
        if self.used + size > self.capacity:
            raise ObjectStoreFullError(
                f"The object store is full: {self.used} of {self.capacity} bytes are held by objects being "
                f"written, and {size} more bytes were requested. Free references (del refs) or raise "
                "object_store_memory.")

    def _spill(self, obj: StoredObject) -> None:
        make_private_dir(self.spill_dir, parents=True)  # 0700, its files 0600: the cluster user's only
        src = object_path(self.shm_dir, obj.object_id)
        dst = os.path.join(self.spill_dir, obj.object_id.hex())
        copy_private(src, dst)
        os.unlink(src)  # readers that mapped it keep their mapping
        obj.spilled_path = dst
        self.used -= obj.size
        self.spilled_bytes_total += obj.size
        logger.info("spilled object %s (%d bytes) to %s", obj.object_id.hex()[:16], obj.size, dst)

    def restore(self, object_id: bytes) -> bool:
        """Bring a spilled object back into shared memory. False if unknown."""
        obj = self.objects.get(object_id)
        if obj is None:
            return False
        if not obj.spilled_path:
            return True
        self._make_room(obj.size)
        dst = object_path(self.shm_dir, object_id)
        copy_private(obj.spilled_path, dst + ".tmp")
        os.rename(dst + ".tmp", dst)
        os.unlink(obj.spilled_path)
        obj.spilled_path = ""
        self.used += obj.size
        self.restored_bytes_total += obj.size
        self.objects.move_to_end(object_id)
        return True

    def free(self, object_id: bytes) -> None:
        obj = self.objects.pop(object_id, None)
        self._wake(object_id)
        if obj is None:
            return
        if obj.spilled_path:
            _unlink(obj.spilled_path)
        elif obj.sealed:
            self._pool_or_unlink(object_path(self.shm_dir, object_id), obj.size)
        else:
            self.used -= obj.size
            _unlink(object_path(self.shm_dir, object_id))
            _unlink(object_path(self.shm_dir, object_id) + ".tmp")

    def free_owner(self, owner: str) -> int:
        ids = [oid for oid, o in self.objects.items() if o.owner == owner]
        for oid in ids:
            self.free(oid)
        return len(ids)

    def describe(self) -> dict:
        return {"capacity_bytes": self.capacity, "used_bytes": self.used, "num_objects": len(self.objects),
                "spilled_objects": sum(1 for o in self.objects.values() if o.spilled_path),
                "spilled_bytes_total": self.spilled_bytes_total, "restored_bytes_total": self.restored_bytes_total,
                "pooled_bytes": sum(p.size for p in self.pool), "reused_files_total": self.reused_total}

    def close(self) -> None:
        shutil.rmtree(self.shm_dir, ignore_errors=True)
        shutil.rmtree(self.spill_dir, ignore_errors=True)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
