"""Objects between nodes: a node manager pulls a copy of an object that lives in another
node's store straight from that node manager (never through the head).

Control goes over the ordinary RPC connection (`object_info`: size and owner; the source
also notes which nodes hold copies, so that freeing the primary frees them). The bytes go
over a data stream of their own: the source `sendfile`s the object's file into the socket
(no copy in user space) and the puller receives straight into a mapping of its new file.
Large objects come as several ranges over parallel streams. The copy is renamed into place
and sealed: readers on the puller's node then map it as any local object. Concurrent pulls
of one object on one node share one transfer.

Data stream request, fixed 76 bytes: token (32 ASCII hex) | object id (20) | offset (u64) |
length (u64) | reserved (u64). Reply: u64 length that follows (0: not here), then the bytes.

With TLS on (runtime/rpc/tls.py) a stream is a blocking TLS socket in a thread of its own:
OpenSSL encrypts and decrypts without the GIL, the receiver decrypts straight into the
mapping, and the two streams of a large object use two cores. (asyncio's TLS transport
would run every byte through the event loop's one thread.)
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import mmap
import os
import socket
import ssl
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable, Callable

from ..rpc import tls
from ..rpc.connection import Connection, parse_address
from .object_store import ObjectStoreManager
from .shm import object_path

logger = logging.getLogger("runtime.node")

STREAM_MIN_BYTES = 16 << 20  # objects at least this large come over two streams in parallel
SEAL_WAIT_S = 20.0  # how long a pull waits for an object still being written on its node
_REQUEST = struct.Struct("<32s20sQQQ")
_LENGTH = struct.Struct("<Q")
TLS_IO_TIMEOUT_S = 30.0  # a TLS stream's send or receive that makes no progress
_CHUNK = 4 << 20  # bytes per TLS write: big enough for full records, small enough to stay in cache
# TLS streams run here; a bounded pool, so a flood of connections queues instead of spawning threads.
_TLS_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="tls-stream")


class ObjectTransfer:
    def __init__(self, node_id: str, token: str, store: ObjectStoreManager,
                 peer: Callable[[str], Awaitable[tuple[Connection, str]]], request_timeout: float = 10.0) -> None:
        self.request_timeout = request_timeout  # a data stream whose request is not all in by then is closed
        self.node_id = node_id
        self.token = token
        self.store = store
        self.peer = peer  # node id -> (connection to that node's manager, its data stream address)
        self.pulls: dict[bytes, asyncio.Task] = {}
        self.copies: dict[bytes, set[str]] = {}  # object served -> nodes that pulled a copy

    # -- puller side -------------------------------------------------------------------
    async def pull(self, oid: bytes, source_node: str) -> bool:
        """Make `oid` present in this node's store, copying it from `source_node` if needed.
        False if the source no longer has it; raises if the source cannot be reached."""
        obj = self.store.objects.get(oid)
        if obj is not None and obj.sealed:
            return self.store.restore(oid)
        task = self.pulls.get(oid)
        if task is None:
            task = self.pulls[oid] = asyncio.get_running_loop().create_task(self._pull(oid, source_node))
            task.add_done_callback(lambda _t: self.pulls.pop(oid, None))
        return await asyncio.shield(task)

    async def _pull(self, oid: bytes, source_node: str) -> bool:
        conn, stream_address = await self.peer(source_node)
        info, _ = await conn.request({"op": "object_info", "object_id": oid, "node_id": self.node_id}, timeout=30)
        if not info.get("found"):
            return False
        size = info["size"]
        reuse = self.store.create(oid, size, info["owner"])
        tmp = object_path(self.store.shm_dir, oid) + ".tmp"
        ok = False
        try:
            fd = os.open(tmp, os.O_RDWR if reuse else os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600)
            try:
                if not reuse:
                    os.ftruncate(fd, max(size, 1))
                with mmap.mmap(fd, max(size, 1)) as mm:
                    view = memoryview(mm)
                    try:
                        parts = 2 if size >= STREAM_MIN_BYTES else 1
                        step = -(-size // parts)
                        await asyncio.gather(*(self._receive(stream_address, oid, view, off, min(step, size - off))
                                               for off in range(0, size, step)))
                    finally:
                        view.release()
            finally:
                os.close(fd)
            os.rename(tmp, object_path(self.store.shm_dir, oid))
            self.store.seal(oid)
            ok = True
            return True
        finally:
            if not ok:
                self.store.free(oid)

    async def _receive(self, address: str, oid: bytes, view: memoryview, offset: int, length: int) -> None:
        """One byte range of the object, over its own data stream, into the mapping."""
        loop = asyncio.get_running_loop()
        _kind, (host, port) = parse_address(address)
        request = _REQUEST.pack(self.token.encode(), oid, offset, length, 0)
        ctx = tls.client_context()
        if ctx is not None:
            await loop.run_in_executor(_TLS_POOL, _receive_tls, ctx, (host, port), request,
                                       view[offset:offset + length], oid)
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), 10)
            await loop.sock_sendall(sock, request)
            head = await _recv_exactly(loop, sock, _LENGTH.size)
            (n,) = _LENGTH.unpack(head)
            if n != length:
                raise ConnectionError(f"object {oid.hex()[:16]} is no longer on its node (it sent {n} of "
                                      f"{length} bytes)")
            got = 0
            while got < length:
                k = await loop.sock_recv_into(sock, view[offset + got:offset + length])
                if k == 0:
                    raise ConnectionError(f"the data stream of object {oid.hex()[:16]} closed early")
                got += k
        finally:
            sock.close()

    # -- source side -------------------------------------------------------------------
    async def object_info(self, oid: bytes, puller: str) -> dict:
        await self.store.wait_sealed(oid, SEAL_WAIT_S)
        obj = self.store.objects.get(oid)
        if obj is None or not obj.sealed or not self.store.restore(oid):
            return {"found": False}
        self.copies.setdefault(oid, set()).add(puller)
        return {"found": True, "size": os.stat(object_path(self.store.shm_dir, oid)).st_size, "owner": obj.owner}

    async def serve(self, sock: socket.socket) -> None:
        """Accept data streams on `sock` (the node's transfer port) until cancelled."""
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        while True:
            client, _ = await loop.sock_accept(sock)
            client.setblocking(False)
            _spawn(self._send(client))

    async def _send(self, client: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        ctx = tls.server_context()
        if ctx is not None:
            await self._send_tls(ctx, client)
            return
        try:
            path, offset, length = self._requested(
                await asyncio.wait_for(_recv_exactly(loop, client, _REQUEST.size), self.request_timeout))
            if path is None:
                return
            try:
                f = open(path, "rb") if path else None
            except OSError:
                f = None
            if f is None:
                await loop.sock_sendall(client, _LENGTH.pack(0))
                return
            with f:
                await loop.sock_sendall(client, _LENGTH.pack(length))
                await loop.sock_sendfile(client, f, offset, length)
        except (ConnectionError, OSError, struct.error) as e:
            logger.info("data stream ended early: %s", e)
        finally:
            client.close()

    def _requested(self, request: bytes) -> tuple[str | None, int, int]:
        """(file to send, offset, length) of a data stream's request: path None for a wrong
        token (close the stream), "" for an object not here (send length 0)."""
        token, oid, offset, length, _ = _REQUEST.unpack(request)
        if not hmac.compare_digest(token, self.token.encode()):
            logger.warning("closing a data stream: wrong cluster token")
            return None, 0, 0
        obj = self.store.objects.get(oid)
        path = (obj.spilled_path or object_path(self.store.shm_dir, oid)) if obj is not None and obj.sealed else ""
        return path, offset, length

    async def _send_tls(self, ctx: ssl.SSLContext, client: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        conn = None
        try:
            client.setblocking(True)
            client.settimeout(self.request_timeout)  # a peer that stalls before its request holds a thread briefly
            conn = await loop.run_in_executor(_TLS_POOL, _accept_tls, ctx, client)
            request = await loop.run_in_executor(_TLS_POOL, _recv_exactly_blocking, conn, _REQUEST.size)
            conn.settimeout(TLS_IO_TIMEOUT_S)
            path, offset, length = self._requested(request)
            if path is None:
                return
            await loop.run_in_executor(_TLS_POOL, _send_file_tls, conn, path, offset, length)
        except (ConnectionError, OSError, struct.error) as e:  # ssl.SSLError is an OSError
            logger.info("TLS data stream ended early: %s", e)
        finally:
            (conn or client).close()

    def forget(self, oid: bytes) -> set[str]:
        """The object is freed here: the nodes whose copies must be freed too."""
        return self.copies.pop(oid, set())


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            raise ConnectionError("the data stream closed early")
        data += chunk
    return bytes(data)


def _accept_tls(ctx: ssl.SSLContext, client: socket.socket) -> ssl.SSLSocket:
    return ctx.wrap_socket(client, server_side=True)


def _receive_tls(ctx: ssl.SSLContext, target: tuple, request: bytes, view: memoryview, oid: bytes) -> None:
    """The receiving end of one TLS stream (a _TLS_POOL thread): decrypts into `view`."""
    try:
        with socket.create_connection(target, timeout=TLS_IO_TIMEOUT_S) as raw, ctx.wrap_socket(raw) as sock:
            sock.sendall(request)
            (n,) = _LENGTH.unpack(_recv_exactly_blocking(sock, _LENGTH.size))
            if n != len(view):
                raise ConnectionError(f"object {oid.hex()[:16]} is no longer on its node (it sent {n} of "
                                      f"{len(view)} bytes)")
            got = 0
            while got < n:
                k = sock.recv_into(view[got:])
                if k == 0:
                    raise ConnectionError(f"the data stream of object {oid.hex()[:16]} closed early")
                got += k
    except ssl.SSLError as e:
        raise tls.wrap_error(f"{target[0]}:{target[1]}", e) from None
    finally:
        view.release()


def _send_file_tls(sock: ssl.SSLSocket, path: str, offset: int, length: int) -> None:
    try:
        f = open(path, "rb") if path else None
    except OSError:
        f = None
    if f is None:
        sock.sendall(_LENGTH.pack(0))
        return
    with f:
        sock.sendall(_LENGTH.pack(length))
        if not length:
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                for start in range(offset, offset + length, _CHUNK):
                    sock.sendall(view[start:min(start + _CHUNK, offset + length)])
            finally:
                view.release()


def _recv_exactly_blocking(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the data stream closed early")
        data += chunk
    return bytes(data)


_TASKS: set = set()


def _spawn(coro: Awaitable) -> None:
    task = asyncio.ensure_future(coro)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
