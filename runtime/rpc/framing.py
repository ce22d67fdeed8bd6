"""Length-prefixed frames: a msgpack header plus out-of-band buffers. Pure, no I/O.

Wire format of one frame:

    u32 body_len | u32 header_len | msgpack(header) | buffer_0 | buffer_1 | ...

`header["_b"]` lists the buffer lengths. Buffers are never copied into the msgpack
header, so a pickle-5 out-of-band buffer (a numpy array, say) is written as-is.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

MAX_FRAME_BYTES = 1 << 30  # larger payloads go through shared memory or chunked transfer
_U32 = struct.Struct("<I")
_U32x2 = struct.Struct("<II")


class FrameError(Exception):
    """The peer sent bytes that are not a valid frame; the connection must be closed."""


def encode(header: dict[str, Any], buffers: list | tuple = ()) -> list:
    """Return the pieces of one frame, ready for `transport.writelines`."""
    if buffers:
        header["_b"] = [memoryview(b).nbytes for b in buffers]
    head = msgpack.packb(header, use_bin_type=True)
    body_len = 4 + len(head) + sum(header.get("_b", ()))
    if body_len > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {body_len} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
    if not buffers:
        return [_U32x2.pack(body_len, len(head)) + head]
    return [_U32x2.pack(body_len, len(head)) + head, *buffers]


class FrameDecoder:
    """Incremental decoder: feed bytes, get complete (header, buffers) messages."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], list[memoryview]]]:
        self._buf += data
        out = []
        buf = self._buf
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            (body_len,) = _U32.unpack_from(buf, pos)
            if body_len < 4 or body_len > MAX_FRAME_BYTES:
                raise FrameError(f"invalid frame length {body_len}")
            if n - pos - 4 < body_len:
                break
            (head_len,) = _U32.unpack_from(buf, pos + 4)
            if head_len > body_len - 4:
                raise FrameError(f"header length {head_len} exceeds frame length {body_len}")
            start = pos + 8
            try:
                header = msgpack.unpackb(bytes(buf[start:start + head_len]), raw=False, strict_map_key=False)
            except Exception as e:  # msgpack raises several unrelated types on garbage
                raise FrameError(f"undecodable header: {e}") from None
            if not isinstance(header, dict) or not isinstance(header.get("op"), str):
                raise FrameError("header is not a map with a string 'op'")
            buffers: list[memoryview] = []
            lens = header.pop("_b", None)
            if lens:
                if not isinstance(lens, list) or sum(lens) != body_len - 4 - head_len:
                    raise FrameError("buffer lengths do not add up to the frame length")
                data_mv = memoryview(bytes(buf[start + head_len:pos + 4 + body_len]))
                off = 0
                for ln in lens:
                    buffers.append(data_mv[off:off + ln])
                    off += ln
            elif body_len - 4 != head_len:
                raise FrameError("trailing bytes after header")
            out.append((header, buffers))
            pos += 4 + body_len
        if pos:
            del buf[:pos]
        return out

    def head(self, n: int) -> bytes:
        """The first `n` bytes still buffered (fewer if fewer arrived)."""
        return bytes(self._buf[:n])

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)
