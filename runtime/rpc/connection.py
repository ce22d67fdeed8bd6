"""One small RPC layer for every component: asyncio protocol over Unix or TCP sockets.

A connection carries requests (`{"op", "id", ...}`, answered by `{"op": "_r", "id", "ok", ...}`)
and one-way messages (no "id"). The first frame on every connection must be
`{"op": "hello", "token": ...}`; a server closes a connection whose first frame is
anything else, or that sends a malformed frame, and keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import itertools
import logging
import os
import pickle
import socket
import ssl
import threading
from typing import Any, Callable

from . import tls
from .framing import FrameDecoder, FrameError, encode

logger = logging.getLogger(__name__)

Handler = Callable[["Connection", dict, list], Any]
# Called with (reply, buffers, None) or (None, None, error) when a request_cb is answered.
ReplyCallback = Callable[[Any, Any, "BaseException | None"], None]

# The most an unauthenticated peer may send before its hello is complete (a hello is < 1 KiB).
MAX_HELLO_BYTES = 64 * 1024
# What a peer says it is, in its hello's info; servers key their tables by these.
_HELLO_IDS = ("kind", "worker_id", "node_id", "job_id", "address")

# Returned by a handler that will send its reply later itself (`conn.reply_threadsafe(call_id, ...)`).
DEFERRED = object()


class RpcError(Exception):
    """The remote handler raised; carries the remote error text."""


class ConnectionClosed(ConnectionError):
    pass


class RefusedClosed(ConnectionClosed, tls.PeerRefused):
    """Closed by a TCP server before it sent a word: it refused our hello (see tls.wrap_error)."""


def parse_address(address: str) -> tuple[str, Any]:
    """'unix:/path' -> ('unix', '/path'); 'tcp:host:port' or 'host:port' -> ('tcp', (host, port))."""
    if address.startswith("unix:"):
        return "unix", address[5:]
    if address.startswith("tcp:"):
        address = address[4:]
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Invalid address {address!r}; expected 'HOST:PORT' or 'unix:/path'.")
    return "tcp", (host, int(port))


class Connection(asyncio.Protocol):
    """A framed, authenticated, bidirectional RPC connection."""

    def __init__(self, handlers: dict[str, Handler], token: str, *, server_side: bool,
                 on_close: Callable[[Connection], None] | None = None, name: str = "",
                 hello_timeout: float | None = None) -> None:
        self.handlers = handlers
        self.token = token
        self.server_side = server_side
        self.authenticated = not server_side
        self.on_close = on_close
        self.hello_timeout = hello_timeout  # server side: seconds a peer has to authenticate
        self._hello_timer: asyncio.TimerHandle | None = None
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.peer_info: dict[str, Any] = {}  # what the peer said about itself in hello
        self.answered = server_side  # a client's peer has sent a frame (else a close is explained)
        self.close_reason = ""
        self.peer_address = ""  # what connect() dialled
        self._tcp = False
        self._decoder = FrameDecoder()
        self._pending: dict[int, asyncio.Future | ReplyCallback] = {}
        self._ids = itertools.count(1)  # next() is atomic: any thread may number a request
        self._out: list = []
        self._flush_scheduled = False
        self._fd = -1
        # Guards _out, _flush_scheduled and direct writes, so send_threadsafe keeps frames whole
        # and in order with what the loop thread writes.
        self._wlock = threading.Lock()
        self._loop = asyncio.get_event_loop()
        self.closed_event = asyncio.Event()

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Writes from other threads go straight to the socket, except under TLS, where
            # only the transport can encrypt them.
            self._fd = sock.fileno() if transport.get_extra_info("sslcontext") is None else -1
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                self._tcp = True
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.server_side and self.hello_timeout:  # idle, or sending its hello byte by byte: closed
            self._hello_timer = self._loop.call_later(self.hello_timeout, self._hello_expired)

    def data_received(self, data: bytes) -> None:
        self.answered = True
        try:
            messages = self._decoder.feed(data)
        except FrameError as e:
            self.abort(f"malformed frame: {e}")
            return
        for msg, bufs in messages:
            if self.closed:
                return
            if not self.authenticated:
                if msg.get("op") != "hello" or not _token_matches(msg.get("token"), self.token):
                    self.abort("unauthenticated: first frame was not a hello with the cluster token")
                    return
                self.authenticated = True
                if self._hello_timer is not None:
                    self._hello_timer.cancel()
                self.peer_info = msg.get("info") or {}
                if not isinstance(self.peer_info, dict) or not all(
                        isinstance(self.peer_info.get(k), (str, type(None))) for k in _HELLO_IDS):
                    self.peer_info = {}
                    self.abort("malformed hello: its info is not a map of string ids")
                    return
                h = self.handlers.get("hello")
                if h is not None:
                    try:
                        h(self, msg, bufs)
                    except Exception as e:  # noqa: BLE001 - a hello this server cannot take closes that connection
                        self.abort(f"hello refused: {type(e).__name__}: {e}")
                        return
                continue
            self._dispatch(msg, bufs)
        if not self.authenticated:
            self._check_first_frame()

    def _check_first_frame(self) -> None:
        """A first frame no hello could be is refused as soon as its length is known, not
        buffered: a TLS ClientHello (0x16 0x03 ... reads as a length over 66 KB), an HTTP
        request, a huge prefix."""
        head = self._decoder.head(4)
        if len(head) == 4 and int.from_bytes(head, "little") > MAX_HELLO_BYTES:
            self.abort("a TLS client connected, but this server does not use TLS (RUNTIME_USE_TLS is off here)"
                       if head[:2] == b"\x16\x03" else
                       f"unauthenticated: a first frame of over {MAX_HELLO_BYTES} bytes")

    def _hello_expired(self) -> None:
        if not self.authenticated and not self.closed:
            self.abort(f"unauthenticated: no hello with the cluster token within {self.hello_timeout:g} s")

    def connection_lost(self, exc: Exception | None) -> None:
        with self._wlock:  # the socket is closed after this returns: no direct write may follow
            self.closed = True
            pending, self._pending = self._pending, {}
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        if not self.answered and self._tcp:
            # Closed by a server that never said a word: our hello was refused (TLS on there
            # and not here, or a wrong token). Say so instead of a bare "closed".
            self.close_reason = str(tls.wrap_error(self.peer_address or self.name, exc or EOFError("end of stream")))
        err = (RefusedClosed(self.close_reason) if self.close_reason else
               ConnectionClosed(f"connection {self.name} closed" + (f": {exc}" if exc else "")))
        for fut in pending.values():
            if isinstance(fut, asyncio.Future):
                if not fut.done():
                    fut.set_exception(err)
                    fut.exception()  # an awaiter still gets it; one abandoned at shutdown logs nothing
            else:
                _call_back(fut, None, None, err)
        self.closed_event.set()
        if self.on_close is not None:
            try:
                self.on_close(self)
            except Exception:
                logger.exception("on_close handler failed for %s", self.name)

    # -- dispatch ----------------------------------------------------------------------
    def _dispatch(self, msg: dict, bufs: list) -> None:
        op = msg["op"]
        if op == "_r":
            call_id = msg.get("id")
            fut = self._pending.pop(call_id, None) if isinstance(call_id, int) else None
            if fut is None:
                return
            ok = msg.get("ok", True)
            if not isinstance(fut, asyncio.Future):  # request_cb: called now, not a loop turn later
                _call_back(fut, msg, bufs, None) if ok else _call_back(fut, None, None, _remote_error(msg, bufs))
            elif not fut.done():
                if ok:
                    fut.set_result((msg, bufs))
                else:
                    fut.set_exception(_remote_error(msg, bufs))
            return
        call_id = msg.get("id")
        handler = self.handlers.get(op)
        if handler is None:
            if call_id is not None:
                self._reply_error(call_id, RpcError(f"unknown op {op!r}"))
            else:
                logger.warning("%s: unknown one-way op %r ignored", self.name, op)
            return
        try:
            result = handler(self, msg, bufs)
        except Exception as e:
            self._handler_failed(call_id, op, e)
            return
        if inspect.isawaitable(result):
            task = self._loop.create_task(self._finish(call_id, op, result))
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)
        elif call_id is not None and result is not DEFERRED:
            self._reply(call_id, result)

    async def _finish(self, call_id: int | None, op: str, awaitable: Any) -> None:
        try:
            result = await awaitable
        except Exception as e:
            self._handler_failed(call_id, op, e)
            return
        if call_id is not None:
            self._reply(call_id, result)

    def _handler_failed(self, call_id: int | None, op: str, e: Exception) -> None:
        """A request's error goes back to the caller; a one-way message's is logged (it has no caller)."""
        if call_id is not None:
            self._reply_error(call_id, e)
        else:
            logger.exception("%s: handler for %r failed", self.name, op, exc_info=e)

    def reply_threadsafe(self, call_id: int, result: Any) -> None:
        """Send the reply of a DEFERRED request from any thread."""
        self.send_threadsafe(*_reply_message(call_id, result))

    def _reply(self, call_id: int, result: Any) -> None:
        if self.closed:  # the caller went away while its request was handled: nobody to answer
            logger.debug("%s: reply to request %d dropped, the connection is closed", self.name, call_id)
            return
        self.send(*_reply_message(call_id, result))

    def _reply_error(self, call_id: int, exc: BaseException) -> None:
        if self.closed:
            logger.debug("%s: error reply to request %d dropped, the connection is closed: %s", self.name, call_id, exc)
            return
        try:
            blob = pickle.dumps(exc)
        except Exception:
            blob = b""
        self.send({"op": "_r", "id": call_id, "ok": False, "err": f"{type(exc).__name__}: {exc}"},
                  [blob] if blob else ())

    # -- sending -----------------------------------------------------------------------
    def send(self, msg: dict, bufs: list | tuple = ()) -> None:
        """Queue a frame (loop thread only); frames queued in one loop turn go out in one write."""
        if self.closed:
            if self.close_reason:
                raise RefusedClosed(self.close_reason)
            raise ConnectionClosed(f"connection {self.name} is closed")
        data = encode(msg, bufs)
        with self._wlock:
            self._out.extend(data)
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        self._loop.call_soon(self._flush)

    def send_threadsafe(self, msg: dict, bufs: list | tuple = ()) -> None:
        """Send from any thread. When nothing is queued the frame is written to the socket
        right here, so a worker's reply does not wait for its io thread to wake up."""
        data = encode(msg, bufs)
        with self._wlock:
            if not self.closed and self.transport is not None:
                self._write_threadsafe(data)

    def _write_threadsafe(self, data: list) -> None:
        # Caller holds _wlock. Write directly only when nothing is waiting to go out first.
        if self._fd >= 0 and not (self._out or self._flush_scheduled or self.transport.get_write_buffer_size()):
            data = _write_some(self._fd, data)
            if not data:
                return
        self._out.extend(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._wlock:
            self._flush_scheduled = False
            out, self._out = self._out, []
            if out and not self.closed and self.transport is not None:
                self.transport.writelines(out)

    def request_nowait(self, msg: dict, bufs: list | tuple = ()) -> asyncio.Future:
        call_id = msg["id"] = next(self._ids)
        fut = self._loop.create_future()
        self._pending[call_id] = fut
        self.send(msg, bufs)
        return fut

    def request_cb(self, msg: dict, bufs: list | tuple, callback: ReplyCallback) -> None:
        """Like request_nowait, but the answer (or the connection's loss) calls
        `callback(reply, bufs, error)` directly from the reading loop turn (loop thread only)."""
        if self.closed:
            raise ConnectionClosed(f"connection {self.name} is closed")
        call_id = msg["id"] = next(self._ids)
        self._pending[call_id] = callback
        self.send(msg, bufs)

    def request_cb_threadsafe(self, msg: dict, bufs: list | tuple, callback: ReplyCallback) -> bool:
        """request_cb from any thread; False (nothing sent) if the connection is closed."""
        call_id = msg["id"] = next(self._ids)
        data = encode(msg, bufs)
        with self._wlock:  # connection_lost takes it too: the callback is either failed or answered
            if self.closed or self.transport is None:
                return False
            self._pending[call_id] = callback
            self._write_threadsafe(data)
        return True

    async def request(self, msg: dict, bufs: list | tuple = (), timeout: float | None = 30.0) -> tuple[dict, list]:
        fut = self.request_nowait(msg, bufs)
        if timeout is None:
            return await fut
        return await asyncio.wait_for(fut, timeout)

    def abort(self, reason: str) -> None:
        if not self.closed:
            logger.warning("closing connection %s: %s", self.name or self.peer_info, reason)
        if self.transport is not None:
            self.transport.abort()
        self.closed = True

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self._flush()
            self.transport.close()


_BACKGROUND: set[asyncio.Task] = set()


def _reply_message(call_id: int, result: Any) -> tuple[dict, Any]:
    if isinstance(result, tuple):  # (body, buffers)
        body, bufs = result
    else:
        body, bufs = result, ()
    # The id last: a body that is itself a reply (passed on from another connection) must not
    # answer under its own id. ("ok" may be overridden: prepare_bundles answers ok=False.)
    msg = {"op": "_r", "ok": True, **(body or {}), "id": call_id}
    return msg, bufs


def _call_back(cb: ReplyCallback, msg: Any, bufs: Any, err: BaseException | None) -> None:
    try:
        cb(msg, bufs, err)
    except Exception:
        logger.exception("reply callback %r failed", cb)


def _write_some(fd: int, pieces: list) -> list:
    """Write what the non-blocking socket takes now; return the pieces (or tails) left."""
    try:
        n = os.writev(fd, pieces)
    except (BlockingIOError, InterruptedError):
        return pieces
    except OSError:
        return pieces  # the loop sees the broken socket and closes the connection
    for i, p in enumerate(pieces):
        size = memoryview(p).nbytes
        if n < size:
            return [memoryview(p).cast("B")[n:], *pieces[i + 1:]]
        n -= size
    return []


def _token_matches(given: Any, token: str) -> bool:
    """In constant time: how long a refusal takes says nothing about how much of it was right."""
    return isinstance(given, str) and hmac.compare_digest(given.encode(), token.encode())


def _remote_error(msg: dict, bufs: list) -> BaseException:
    if bufs:
        try:
            exc = pickle.loads(bufs[0])
            if isinstance(exc, BaseException):
                return exc
        except Exception:
            pass
    return RpcError(msg.get("err", "remote error"))


async def serve(address_sock: socket.socket, handlers: dict[str, Handler], token: str, *,
                on_close: Callable[[Connection], None] | None = None, name: str = "",
                hello_timeout: float | None = None) -> asyncio.AbstractServer:
    """Serve on an already-bound listening socket (Unix or TCP). `hello_timeout`: a connection
    that has not authenticated after that many seconds is closed."""
    loop = asyncio.get_running_loop()

    def factory() -> Connection:
        return Connection(handlers, token, server_side=True, on_close=on_close, name=name,
                          hello_timeout=hello_timeout)

    if address_sock.family == socket.AF_UNIX:
        return await loop.create_unix_server(factory, sock=address_sock)
    ctx = tls.server_context()
    return await loop.create_server(factory, sock=address_sock, ssl=ctx,
                                    ssl_handshake_timeout=tls.HANDSHAKE_TIMEOUT_S if ctx else None)


async def connect(address: str, handlers: dict[str, Handler], token: str, *, info: dict | None = None,
                  on_close: Callable[[Connection], None] | None = None, timeout: float = 10.0,
                  name: str = "") -> Connection:
    """Open a connection and send the hello frame."""
    loop = asyncio.get_running_loop()
    kind, target = parse_address(address)

    def factory() -> Connection:
        return Connection(handlers, token, server_side=False, on_close=on_close, name=name or address)

    async def _open() -> Connection:
        if kind == "unix":
            _, conn = await loop.create_unix_connection(factory, target)
            return conn
        ctx = tls.client_context()
        try:
            _, conn = await loop.create_connection(factory, target[0], target[1], ssl=ctx,
                                                   ssl_handshake_timeout=tls.HANDSHAKE_TIMEOUT_S if ctx else None)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as e:
            raise tls.wrap_error(address, e) from None
        return conn

    conn = await asyncio.wait_for(_open(), timeout)
    conn.peer_address = address.removeprefix("tcp:")
    conn.send({"op": "hello", "token": token, "info": info or {}})
    return conn


def bind_socket(address: str) -> socket.socket:
    """Create and bind a listening socket; 'tcp:127.0.0.1:0' picks a free port."""
    kind, target = parse_address(address)
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(target)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(target)
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


def socket_address(sock: socket.socket) -> str:
    if sock.family == socket.AF_UNIX:
        return "unix:" + sock.getsockname()
    host, port = sock.getsockname()[:2]
    return f"tcp:{host}:{port}"
