"""Serialization: pickle protocol 5 with out-of-band buffers, cloudpickle for code.

`serialize(value)` returns a `SerializedObject`: a small pickle ("meta") plus the
large buffers (numpy, Arrow, bytes-like) that pickle handed out of band. Buffers are
never copied here: they are written once, into a frame or into shared memory, and a
reader rebuilds the value on top of them (zero-copy, read-only for shm).

ObjectRefs found while pickling are collected in `SerializedObject.nested_refs`, so the
owner can keep them alive while the outer object lives.
"""

from __future__ import annotations

import io
import pickle
import struct
import threading
from collections import ChainMap
from typing import Any, Callable

import cloudpickle

_local = threading.local()
_custom_table: dict[type, Callable] = {}
_HEADER = struct.Struct("<QI")  # meta length, buffer count (shm layout)
_ALIGN = 64


class SerializedObject:
    __slots__ = ("meta", "buffers", "nested_refs")

    def __init__(self, meta: bytes, buffers: list, nested_refs: list) -> None:
        self.meta = meta
        self.buffers = buffers
        self.nested_refs = nested_refs

    @property
    def total_bytes(self) -> int:
        return len(self.meta) + sum(memoryview(b).nbytes for b in self.buffers)


class _Pickler(cloudpickle.Pickler):
    # The C pickler reads dispatch_table when constructed; a ChainMap sees later registrations.
    dispatch_table = ChainMap(_custom_table, cloudpickle.Pickler.dispatch_table)


def _custom_reduce(deserializer: Callable, state: Any) -> Any:
    return deserializer(state)


def register_serializer(cls: type, *, serializer: Callable[[Any], Any], deserializer: Callable[[Any], Any]) -> None:
    """Use `serializer(obj)` / `deserializer(state)` for instances of `cls` (in this process)."""
    if not isinstance(cls, type):
        raise TypeError(f"register_serializer needs a class, got {cls!r}.")
    if not callable(serializer) or not callable(deserializer):
        raise TypeError("register_serializer needs callable `serializer` and `deserializer`.")

    def reduce(obj: Any) -> tuple:
        return _custom_reduce, (deserializer, serializer(obj))

    _custom_table[cls] = reduce


def deregister_serializer(cls: type) -> None:
    """Forget a serializer registered with `register_serializer`."""
    if _custom_table.pop(cls, None) is None:
        raise ValueError(f"No serializer is registered for {cls.__qualname__}.")


def record_nested_ref(ref: Any) -> None:
    """Called by ObjectRef.__reduce__ / ActorHandle.__reduce__ while pickling."""
    collector = getattr(_local, "collector", None)
    if collector is not None:
        collector.append(ref)


def serialize(value: Any) -> SerializedObject:
    buffers: list = []
    collector: list = []
    prev = getattr(_local, "collector", None)
    _local.collector = collector
    try:
        f = io.BytesIO()
        p = _Pickler(f, protocol=5, buffer_callback=buffers.append)
        p.dump(value)
        meta = f.getvalue()
    finally:
        _local.collector = prev
    # PickleBuffers hold the original memory; keep raw memoryviews for writing.
    raw = [b.raw() if isinstance(b, pickle.PickleBuffer) else memoryview(b) for b in buffers]
    return SerializedObject(meta, raw, collector)


def deserialize(meta: bytes | memoryview, buffers: list | tuple = ()) -> Any:
    return pickle.loads(meta, buffers=buffers)


def dumps(value: Any) -> bytes:
    """Plain cloudpickle bytes (functions, classes, control messages)."""
    return cloudpickle.dumps(value, protocol=5)


# -- shared-memory layout ---------------------------------------------------------------
# u64 meta_len | u32 nbufs | u64 len * nbufs | meta | pad | buf0 (64-aligned) | pad | buf1 ...

def layout(obj: SerializedObject) -> tuple[int, list[int]]:
    """Total size of `obj` in the shm layout and the offset of each piece (meta first)."""
    lens = [memoryview(b).nbytes for b in obj.buffers]
    pos = _HEADER.size + 8 * len(lens)
    offsets = [pos]
    pos += len(obj.meta)
    for ln in lens:
        pos = (pos + _ALIGN - 1) // _ALIGN * _ALIGN
        offsets.append(pos)
        pos += ln
    return pos, offsets


def header_bytes(obj: SerializedObject) -> bytes:
    """The fixed header, buffer lengths and meta: the first part of the shm layout."""
    lens = [memoryview(b).nbytes for b in obj.buffers]
    head = _HEADER.pack(len(obj.meta), len(lens)) + (struct.pack(f"<{len(lens)}Q", *lens) if lens else b"")
    return head + obj.meta


def read_from(src: memoryview) -> tuple[memoryview, list[memoryview]]:
    """Split a shm object into (meta, buffers) views without copying."""
    meta_len, nbufs = _HEADER.unpack_from(src, 0)
    lens = struct.unpack_from(f"<{nbufs}Q", src, _HEADER.size) if nbufs else ()
    pos = _HEADER.size + 8 * nbufs
    meta = src[pos:pos + meta_len]
    pos += meta_len
    bufs = []
    for ln in lens:
        pos = (pos + _ALIGN - 1) // _ALIGN * _ALIGN
        bufs.append(src[pos:pos + ln])
        pos += ln
    return meta, bufs
