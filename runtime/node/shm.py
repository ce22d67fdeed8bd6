"""Shared-memory object files: written once by their creator, mapped read-only by readers.

Each object is one file in the node's directory under /dev/shm. A reader maps it
read-only, so numpy and Arrow values built on it are zero-copy and immutable. Deleting
(or spilling) a file never invalidates a mapping that a reader already holds.
"""

from __future__ import annotations

import mmap
import os


from ..serialization.core import SerializedObject, header_bytes, layout, read_from



def object_path(shm_dir: str, object_id: bytes) -> str:
    return os.path.join(shm_dir, object_id.hex())


def shm_size(obj: SerializedObject) -> int:
    return layout(obj)[0]


def write_object(shm_dir: str, object_id: bytes, obj: SerializedObject, size: int) -> None:
    """Write `obj` to its file; visible to readers only once complete (atomic rename)."""
    path = object_path(shm_dir, object_id)
    tmp = path + ".tmp"
    # pwrite, not memcpy into a fresh mapping: tmpfs allocates pages in-kernel without
    # a page fault per 4 KiB (about 1.6x faster for 100 MB here).
    _, offsets = layout(obj)
    fd = os.open(tmp, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, max(size, 1))
        _pwrite_all(fd, header_bytes(obj), 0)
        for off, buf in zip(offsets[1:], obj.buffers):
            _pwrite_all(fd, memoryview(buf).cast("B"), off)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def _pwrite_all(fd: int, data: memoryview | bytes, offset: int) -> None:
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def map_object(shm_dir: str, object_id: bytes) -> tuple[memoryview, list[memoryview]] | None:
    """Map an object read-only; None if its file is not there (spilled or freed)."""
    try:
        fd = os.open(object_path(shm_dir, object_id), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    return read_from(memoryview(mm))
