"""How fast this machine's Python encrypts and decrypts TLS records, with no socket at all:
the ceiling for any TLS link here (docs/security.md, "What TLS costs").

    python benchmarks/tls_ceiling.py

Two `ssl` objects joined by memory buffers do a handshake with a fresh certificate, then one
encrypts 100 MB in 64 KiB writes and the other decrypts it; each rate is one core's, GB/s.
"""

from __future__ import annotations

import os
import ssl
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from runtime._testing.tls import tls_env  # noqa: E402

os.environ.update(tls_env(tempfile.mkdtemp(prefix="tls-ceiling-")))
from runtime.rpc import tls  # noqa: E402

N, CHUNK = 100_000_000, 64 << 10


def main() -> None:
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = tls.server_context().wrap_bio(s_in, s_out, server_side=True)
    client = tls.client_context().wrap_bio(c_in, c_out)
    for _ in range(10):  # the handshake, pumped by hand
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    src, dst = memoryview(bytearray(N)), bytearray(N)
    records = []
    t0 = time.perf_counter()
    for start in range(0, N, CHUNK):
        server.write(src[start:start + CHUNK])
        records.append(s_out.read())
    t1 = time.perf_counter()
    view, got = memoryview(dst), 0
    for blob in records:
        c_in.write(blob)
        while got < N:
            try:
                k = client.read(N - got, view[got:])
            except ssl.SSLWantReadError:
                break
            got += k
    t2 = time.perf_counter()
    assert got == N
    print(f"{client.version()} {client.cipher()[0]}: encrypt {N / (t1 - t0) / 1e9:.2f} GB/s, "
          f"decrypt {N / (t2 - t1) / 1e9:.2f} GB/s (one core each; {ssl.OPENSSL_VERSION})")


if __name__ == "__main__":
    main()
