from __future__ import annotations

import struct

import pytest

from runtime.rpc.framing import MAX_FRAME_BYTES, FrameDecoder, FrameError, encode


def _wire(header: dict, buffers: list = ()) -> bytes:
    return b"".join(bytes(p) for p in encode(dict(header), buffers))


def test_roundtrip_header_and_buffers_byte_by_byte():
    data = _wire({"op": "x", "n": 1}, [b"abc", b"", memoryview(b"defg")]) + _wire({"op": "y"})
    dec = FrameDecoder()
    out = []
    for i in range(len(data)):
        out.extend(dec.feed(data[i:i + 1]))
    assert [m["op"] for m, _ in out] == ["x", "y"]
    assert [bytes(b) for b in out[0][1]] == [b"abc", b"", b"defg"]
    assert out[0][0]["n"] == 1 and dec.pending_bytes == 0


def test_truncated_frame_waits_for_more_bytes():
    data = _wire({"op": "x"}, [b"payload"])
    dec = FrameDecoder()
    assert dec.feed(data[:-3]) == []
    assert len(dec.feed(data[-3:])) == 1


@pytest.mark.parametrize("garbage", [
    struct.pack("<I", 2) + b"zz",                            # body shorter than its own header length field
    struct.pack("<I", MAX_FRAME_BYTES + 1),                  # absurd length prefix
    struct.pack("<II", 8, 100) + b"abcd",                    # header length past the frame end
    struct.pack("<II", 5, 1) + b"\xc1",                      # 0xc1 is never valid msgpack
    struct.pack("<II", 6, 2) + b"\x92\x01",                  # a list, not a map
])
def test_malformed_frames_raise_frame_error(garbage):
    with pytest.raises(FrameError):
        FrameDecoder().feed(garbage)


def test_buffer_lengths_must_add_up():
    import msgpack
    head = msgpack.packb({"op": "x", "_b": [10]})
    frame = struct.pack("<II", 4 + len(head) + 3, len(head)) + head + b"abc"
    with pytest.raises(FrameError):
        FrameDecoder().feed(frame)
