"""How fast this machine's Python encrypts and decrypts TLS records, with no socket at all:
the ceiling for any TLS link here (docs/security.md, "What TLS costs").

    python benchmarks/tls_ceiling.py

First two `ssl` objects joined by memory buffers do a handshake with a fresh certificate, then
one encrypts 100 MB in 64 KiB writes and the other decrypts it (each rate is one core's, GB/s).
Then a bare pair of TCP sockets between two processes moves 100 MB, plain and with TLS, over
one and two streams: what a transfer costs before any object store is involved.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import ssl
import sys
import tempfile
import threading
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


def _serve(listener: socket.socket, use_tls: bool) -> None:
    """The sending process: each connection asks for (offset, length) of a 100 MB buffer."""
    src = memoryview(bytearray(N))

    def one(conn: socket.socket) -> None:
        sock = tls.server_context().wrap_socket(conn, server_side=True) if use_tls else conn
        head = sock.recv(16)
        off, length = int.from_bytes(head[:8], "little"), int.from_bytes(head[8:], "little")
        for start in range(off, off + length, 4 << 20):
            sock.sendall(src[start:min(start + (4 << 20), off + length)])
        sock.close()

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=one, args=(conn,)).start()


def sockets() -> None:
    dst = memoryview(bytearray(N))
    for use_tls in (False, True):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        sender = multiprocessing.get_context("fork").Process(target=_serve, args=(listener, use_tls), daemon=True)
        sender.start()
        for streams in (1, 2):
            step = N // streams

            def receive(off: int) -> None:
                raw = socket.create_connection(listener.getsockname())
                sock = tls.client_context().wrap_socket(raw) if use_tls else raw
                sock.sendall(off.to_bytes(8, "little") + step.to_bytes(8, "little"))
                got = 0
                while got < step:
                    got += sock.recv_into(dst[off + got:off + step])
                sock.close()

            best = 0.0
            for _ in range(3):
                t0 = time.perf_counter()
                threads = [threading.Thread(target=receive, args=(i * step,)) for i in range(streams)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                best = max(best, N / (time.perf_counter() - t0) / 1e9)
            print(f"sockets, {'TLS' if use_tls else 'plain'}, {streams} stream(s): {best:.2f} GB/s (best of 3)")
        sender.kill()
        listener.close()


if __name__ == "__main__":
    main()
    sockets()
