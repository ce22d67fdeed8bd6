from __future__ import annotations

import threading

import numpy as np
import pytest

from runtime.serialization.core import (deregister_serializer, deserialize, layout, read_from, register_serializer,
                                        serialize, write_into)


def test_numpy_buffer_goes_out_of_band_and_back_zero_copy():
    arr = np.arange(1000, dtype=np.int64)
    so = serialize({"a": arr})
    assert len(so.buffers) == 1 and len(so.meta) < 1000
    size, _ = layout(so)
    dest = bytearray(size)
    write_into(so, memoryview(dest))
    meta, bufs = read_from(memoryview(bytes(dest)))
    out = deserialize(meta, bufs)["a"]
    assert np.array_equal(out, arr) and not out.flags.writeable


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
