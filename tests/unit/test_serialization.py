from __future__ import annotations

import threading

import numpy as np
import pytest

from runtime.node.shm import map_object, shm_size, write_object
from runtime.serialization.core import deregister_serializer, deserialize, register_serializer, serialize


def test_numpy_buffer_goes_out_of_band_and_back_zero_copy(tmp_path):
    arr = np.arange(1000, dtype=np.int64)
    so = serialize({"a": arr, "b": b"x" * 10})
    assert len(so.buffers) == 1 and len(so.meta) < 1000
    write_object(str(tmp_path), b"\x01" * 20, so, shm_size(so))
    meta, bufs = map_object(str(tmp_path), b"\x01" * 20)
    out = deserialize(meta, bufs)
    assert np.array_equal(out["a"], arr) and not out["a"].flags.writeable and out["b"] == b"x" * 10
    assert map_object(str(tmp_path), b"\x02" * 20) is None


def test_registered_serializer_is_used_and_can_be_removed():
    class Holder:
        def __init__(self, n):
            self.n, self.lock = n, threading.Lock()

    register_serializer(Holder, serializer=lambda h: h.n, deserializer=lambda n: Holder(n))
    try:
        assert deserialize(serialize(Holder(3)).meta).n == 3
    finally:
        deregister_serializer(Holder)
    with pytest.raises(TypeError):
        serialize(Holder(3))
    with pytest.raises(ValueError):
        deregister_serializer(Holder)
