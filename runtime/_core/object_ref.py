"""ObjectRef: a future for a value in the cluster, owned by the process that created it."""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

from ..serialization.core import record_nested_ref
from . import worker_state


class ObjectRef:
    """A reference to an object; `runtime.get(ref)` or `await ref` returns its value.

    References are counted: when the last `ObjectRef` for an object is gone everywhere
    (and no pending task or stored object holds it), the object is freed.
    """

    __slots__ = ("_id", "_owner")  # no __weakref__: Ray's ObjectRef takes none either, and 8 bytes a ref

    def __init__(self, object_id: bytes, owner: str) -> None:
        cw = worker_state.current()
        self._id = object_id
        self._owner = owner
        cw.refs.add_local(object_id, owner)

    def __del__(self) -> None:
        cw = worker_state.current_or_none()
        if cw is not None:
            try:
                cw.defer_remove_local(self._id)
            except Exception:  # noqa: BLE001 - never raise from __del__ (interpreter exit)
                pass

    def __reduce__(self) -> tuple:
        record_nested_ref(self)
        return _rebuild_ref, (self._id, self._owner)

    @property
    def owner_address(self) -> str:
        return self._owner

    def binary(self) -> bytes:
        return bytes(self._id)

    def hex(self) -> str:
        return self._id.hex()

    def task_id(self) -> str:
        return self._id[:16].hex()

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __await__(self) -> Any:
        return self.as_future().__await__()

    def as_future(self) -> asyncio.Future:
        """An asyncio future on the running loop that resolves to the value."""
        return asyncio.wrap_future(self.future())

    def future(self) -> concurrent.futures.Future:
        """A concurrent.futures.Future that resolves to the value."""
        return worker_state.current().get_future(self)


def _rebuild_ref(object_id: bytes, owner: str) -> ObjectRef:
    return ObjectRef(object_id, owner)
