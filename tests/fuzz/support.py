"""What the fuzz suite needs to talk to a cluster's sockets: finding them, raw frames, the
servers' op tables and the fields their handlers read, the processes' fds and memory.

Nothing here mocks a part of the runtime: sockets are real, op tables come from constructing
the real server objects, and the fields of each op are read from its handler's source.
"""

from __future__ import annotations

import ast
import collections
import contextlib
import errno
import inspect
import os
import secrets
import selectors
import socket
import struct
import tempfile
import textwrap
import time
from dataclasses import dataclass
from typing import Any, Callable

import psutil

from runtime.rpc.framing import FrameDecoder, FrameError, encode

# Roles of the listening sockets, by what they speak.
RPC, CLIENT, TRANSFER, HTTP = "rpc", "client", "transfer", "http"
PROBE_OP = "__fuzz_probe__"  # no server has it: answered at once with an "unknown op" error
_SO_ACCEPTCON = 0x10000  # /proc/net/unix flag of a listening socket


# -- listening sockets, from the processes -------------------------------------------------
@dataclass(frozen=True)
class Listener:
    address: str  # "tcp:HOST:PORT" or "unix:/path"
    pid: int  # the process that serves it (the first found)
    role: str = ""  # RPC, CLIENT, TRANSFER, HTTP
    server: str = ""  # "gcs", "node", "worker", "client", "dashboard", "metrics", "transfer"
    node: str = ""  # "head" or "joined"

    @property
    def family(self) -> int:
        return socket.AF_UNIX if self.address.startswith("unix:") else socket.AF_INET

    def __str__(self) -> str:
        return f"{self.server}@{self.node}({self.address}, pid {self.pid})"


def _unix_listening_inodes() -> dict[int, str]:
    out = {}
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            parts = line.split()
            if len(parts) >= 8 and int(parts[3], 16) & _SO_ACCEPTCON:
                out[int(parts[6])] = parts[7]
    return out


def listening_sockets(root_pids: list[int]) -> dict[str, int]:
    """address -> pid, for every listening TCP and Unix socket of these processes and their
    descendants (psutil's net_connections; /proc/net/unix tells which Unix sockets listen)."""
    found: dict[str, int] = {}
    procs = []
    for pid in root_pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            p = psutil.Process(pid)
            procs += [p, *p.children(recursive=True)]
    listening_unix = _unix_listening_inodes()
    for p in procs:
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN and c.type == socket.SOCK_STREAM:
                    found.setdefault(f"tcp:{c.laddr.ip}:{c.laddr.port}", p.pid)
            for c in p.net_connections(kind="unix"):
                if c.fd < 0 or c.type != socket.SOCK_STREAM:
                    continue
                try:
                    link = os.readlink(f"/proc/{p.pid}/fd/{c.fd}")
                except OSError:
                    continue
                inode = int(link[len("socket:["):-1]) if link.startswith("socket:[") else -1
                if inode in listening_unix and c.laddr:
                    found.setdefault("unix:" + c.laddr, p.pid)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


# -- raw connections and frames ---------------------------------------------------------------
def connect(listener: Listener, timeout: float = 10.0) -> socket.socket:
    s = socket.socket(listener.family, socket.SOCK_STREAM)
    target = _sockaddr(listener)
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            s.connect(target)
            return s
        except BlockingIOError:  # a Unix socket's backlog is full: the server accepts as it goes
            if time.monotonic() > deadline:
                s.close()
                raise
            time.sleep(0.001)  # retry interval of a condition wait (the backlog has room)
        except BaseException:
            s.close()
            raise


def frame(header: dict, buffers: list | tuple = ()) -> bytes:
    return b"".join(bytes(p) for p in encode(dict(header), list(buffers)))


def hello(token: str, info: dict | None = None) -> bytes:
    return frame({"op": "hello", "token": token, "info": info or {"kind": "fuzz"}})


def raw_frame(header_bytes: bytes, tail: bytes = b"") -> bytes:
    """A frame whose header is any bytes (the length fields made to match)."""
    return struct.pack("<II", 4 + len(header_bytes) + len(tail), len(header_bytes)) + header_bytes + tail


def wait_closed(sock: socket.socket, timeout: float) -> bool:
    """Read (and drop) what the server sends until it closes the connection; False if it is
    still open after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except (TimeoutError, socket.timeout):
            return False


def exchange(sock: socket.socket, data: bytes, probe_id: int, timeout: float) -> str:
    """Send `data` then a probe request; "answered" when the probe's reply comes back (so
    everything sent before it was read and dispatched), "closed" when the server closed the
    connection first, "timeout" otherwise."""
    try:
        sock.sendall(data + frame({"op": PROBE_OP, "id": probe_id}))
    except (BrokenPipeError, ConnectionResetError):
        return "closed"
    decoder = FrameDecoder()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout"
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 16)
        except (ConnectionResetError, BrokenPipeError):
            return "closed"
        except (TimeoutError, socket.timeout):
            return "timeout"
        if not chunk:
            return "closed"
        try:
            for msg, _ in decoder.feed(chunk):
                if msg.get("op") == "_r" and msg.get("id") == probe_id:
                    return "answered"
        except FrameError as e:
            raise AssertionError(f"the server sent a malformed frame: {e}") from None


def read_until(sock: socket.socket, predicate: Callable[[dict], bool], timeout: float = 10.0) -> dict:
    """The first message from the server that `predicate` accepts (others are dropped)."""
    decoder = FrameDecoder()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise AssertionError("the server closed the connection")
        for msg, _ in decoder.feed(chunk):
            if predicate(msg):
                return msg
    raise AssertionError(f"no such message within {timeout} s")


def server_read_all(sock: socket.socket) -> bool:
    """True once the server end of this loopback TCP connection has nothing left to read
    (its receive queue in /proc/net/tcp is empty): what we sent was read."""
    ours = sock.getsockname()
    theirs = sock.getpeername()

    def hexaddr(addr: tuple) -> str:
        return "%08X:%04X" % (int.from_bytes(socket.inet_aton(addr[0]), "little"), addr[1])

    local, remote = hexaddr(theirs), hexaddr(ours)
    with open("/proc/net/tcp") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 4 and parts[1] == local and parts[2] == remote:
                return int(parts[4].split(":")[1], 16) == 0
    return False


def request(sock: socket.socket, msg: dict, timeout: float = 10.0) -> dict | None:
    """Send a request (it gets an id) on an authenticated socket; its reply, or None when the
    server closed the connection instead."""
    msg = {**msg, "id": msg.get("id", 77)}
    sock.sendall(frame(msg))
    decoder = FrameDecoder()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(1 << 16)
        except (ConnectionResetError, BrokenPipeError):
            return None
        if not chunk:
            return None
        for reply, _ in decoder.feed(chunk):
            if reply.get("op") == "_r" and reply.get("id") == msg["id"]:
                return reply
    raise AssertionError(f"no reply to {msg!r} within {timeout} s")


def rpc_alive(listener: Listener, token: str, timeout: float = 10.0) -> bool:
    """A new authenticated connection gets an answer."""
    try:
        with connect(listener, timeout) as s:
            return exchange(s, hello(token), 1, timeout) == "answered"
    except OSError:
        return False


def http_alive(listener: Listener, path: str = "/", timeout: float = 10.0) -> int:
    """The status of a GET (0 when there is no answer)."""
    import http.client
    host, _, port = listener.address[4:].rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return 0
    finally:
        conn.close()


def left_open(cases: list[tuple[Listener, bytes, bool]], timeout: float) -> list[tuple[Listener, bytes]]:
    """For each (listener, data, half_close): a new connection gets `data` (then our end of the
    stream is shut when half_close); returns the cases whose connection the server had not
    closed within `timeout` s. All connections wait at once."""
    socks: dict[socket.socket, tuple[Listener, bytes]] = {}
    try:
        for lst, data, half_close in cases:
            s = connect(lst)
            try:
                s.sendall(data)
                if half_close:
                    s.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                s.close()
                continue
            socks[s] = (lst, data)
        still = wait_all_closed(list(socks), timeout)
        return [socks[s] for s in still]
    finally:
        for s in socks:
            s.close()


def _sockaddr(listener: Listener) -> Any:
    if listener.family == socket.AF_UNIX:
        return listener.address[5:]
    host, _, port = listener.address[4:].rpartition(":")
    return host, int(port)


def open_idle(listeners: list[Listener], n: int, timeout: float) -> dict[Listener, list[socket.socket]]:
    """`n` connections to each listener, opened round-robin and a few hundred at a time (so
    that no server's accept queue overflows into SYN retries), that send nothing."""
    out: dict[Listener, list[socket.socket]] = {lst: [] for lst in listeners}
    todo = collections.deque(lst for _ in range(n) for lst in listeners)
    connecting: dict[socket.socket, Listener] = {}
    sel = selectors.DefaultSelector()
    deadline = time.monotonic() + timeout
    try:
        while (todo or connecting) and time.monotonic() < deadline:
            while todo and len(connecting) < 256:
                lst = todo.popleft()
                s = socket.socket(lst.family, socket.SOCK_STREAM)
                s.setblocking(False)
                err = s.connect_ex(_sockaddr(lst))
                if err == 0:
                    out[lst].append(s)
                elif err in (errno.EINPROGRESS, errno.EAGAIN) and lst.family == socket.AF_INET:
                    connecting[s] = lst
                    sel.register(s, selectors.EVENT_WRITE)
                elif err == errno.EAGAIN:  # a Unix socket's backlog is full: again once it accepted some
                    s.close()
                    todo.append(lst)
                    break
                else:
                    s.close()
            for key, _ in sel.select(timeout=0.01):
                s = key.fileobj
                sel.unregister(s)
                lst = connecting.pop(s)
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    out[lst].append(s)
                else:
                    s.close()
    finally:
        for s in connecting:
            s.close()
        sel.close()
    return out


def wait_all_closed(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
    """Wait until the server closed every one of `socks`; returns those still open at the deadline."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    open_ = set(socks)
    deadline = time.monotonic() + timeout
    try:
        while open_ and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=max(0.0, min(1.0, deadline - time.monotonic()))):
                s = key.fileobj
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(s)
                    open_.discard(s)
    finally:
        sel.close()
    return list(open_)


# -- processes --------------------------------------------------------------------------------
def describe_fds(pid: int) -> dict:
    """What a process's fds are (socket, pipe, file paths), and how many children it has."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                kind = target.split(":")[0] if ":" in target else target
                out[kind] = out.get(kind, 0) + 1
    with contextlib.suppress(psutil.Error):
        out["children"] = len(psutil.Process(pid).children())
    return out


def usage(pid: int) -> tuple[int, int]:
    """(open fds, resident bytes) of a process."""
    p = psutil.Process(pid)
    return p.num_fds(), p.memory_info().rss


# -- the servers' op tables -------------------------------------------------------------------
@dataclass
class OpTables:
    """op -> handler for each RPC server, from real instances built in a scratch directory."""
    gcs: dict[str, Callable]
    node: dict[str, Callable]
    worker: dict[str, Callable]
    client: dict[str, Callable]


def op_tables() -> OpTables:
    from runtime._core.core_worker import CoreWorker
    from runtime.client.proxy import ClientSession
    from runtime.config import SystemConfig
    from runtime.gcs.server import ControlStore
    from runtime.jobs.manager import JobManager
    from runtime.node.daemon import NodeDaemon
    from runtime.worker.executor import Executor

    config = SystemConfig(gcs_storage="none")
    with tempfile.TemporaryDirectory(prefix="orr-fuzz-") as scratch:
        gcs = ControlStore({"token": "t", "session_dir": scratch, "system_config": config.to_json()})
        gcs.job_manager = JobManager(scratch, "127.0.0.1:1")  # made in run(); here for fields_read
        node = NodeDaemon({"node_id": secrets.token_hex(16), "token": "t", "session_dir": scratch,
                           "system_config": config.to_json(), "num_cpus": 1, "memory": 1e9,
                           "object_store_memory": 1e8, "node_ip": "127.0.0.1",
                           "shm_dir": os.path.join(scratch, "shm")})
        cw = CoreWorker(mode="worker", worker_id=secrets.token_hex(16), token="t", session_dir=scratch,
                        node_address="unix:" + os.path.join(scratch, "none.sock"), gcs_address="tcp:127.0.0.1:1",
                        config=config, sock_dir=scratch, node_ip="127.0.0.1")
        worker = {**cw.handlers, **Executor(cw).handlers()}
        cw.loop.close()
        cw._listen_sock.close()
        session = ClientSession("127.0.0.1:1")
        client = session.handlers()
        session.serial.shutdown()
        session.blocking.shutdown()
    return OpTables(gcs=dict(gcs.handlers), node=dict(node.handlers), worker=worker, client=client)


def _target(fn: Any) -> Any:
    """The function a handler wrapper (a durable or ordered closure) calls in the end."""
    seen = 0
    while not inspect.ismethod(fn) and getattr(fn, "__closure__", None) and seen < 4:
        inner = [c.cell_contents for c in fn.__closure__
                 if callable(getattr(c, "cell_contents", None)) and not isinstance(c.cell_contents, type)]
        inner = [f for f in inner if inspect.ismethod(f) or inspect.isfunction(f)]
        if not inner:
            break
        fn, seen = inner[-1], seen + 1
    return fn


def fields_read(handler: Any, param: str | None = None, depth: int = 2) -> set[str]:
    """The message fields a handler reads (`msg["x"]`, `msg.get("x")`, `for k in (...): msg[k]`),
    following the message into the methods it is passed to, `depth` calls deep."""
    fn = _target(handler)
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return set()
    tree = ast.parse(source)
    func = next((n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), None)
    if func is None:
        return set()
    names = [a.arg for a in func.args.args]
    name = param or ("msg" if "msg" in names else (names[2] if len(names) > 2 else names[-1] if names else ""))
    keys: set[str] = set()
    loop_vars: dict[str, list[str]] = {}
    for node in ast.walk(func):
        if isinstance(node, ast.comprehension) and isinstance(node.target, ast.Name) and \
                isinstance(node.iter, (ast.Tuple, ast.List)):
            loop_vars[node.target.id] = [e.value for e in node.iter.elts
                                         if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    for node in ast.walk(func):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == name:
            if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
                keys.add(node.slice.value)
            elif isinstance(node.slice, ast.Name):
                keys.update(loop_vars.get(node.slice.id, ()))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            f = node.func
            if f.attr == "get" and isinstance(f.value, ast.Name) and f.value.id == name and node.args and \
                    isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                keys.add(node.args[0].value)
            elif depth and inspect.ismethod(fn):
                for a in node.args:  # queued as (self.method, conn, msg, bufs): method(conn, msg, bufs) later
                    if isinstance(a, ast.Tuple) and a.elts and isinstance(a.elts[0], ast.Attribute):
                        at = [i for i, e in enumerate(a.elts) if isinstance(e, ast.Name) and e.id == name]
                        later = _resolve(fn.__self__, a.elts[0])
                        if at and later is not None:
                            params = list(inspect.signature(later).parameters)
                            if at[0] - 1 < len(params):
                                keys |= fields_read(later, params[at[0] - 1], depth - 1)
                positions = [i for i, a in enumerate(node.args) if isinstance(a, ast.Name) and a.id == name]
                callee = _resolve(fn.__self__, f)
                if positions and callee is not None:
                    try:
                        params = list(inspect.signature(callee).parameters)
                    except (TypeError, ValueError):
                        continue
                    if positions[0] < len(params):
                        keys |= fields_read(callee, params[positions[0]], depth - 1)
    return keys


def _resolve(obj: Any, attr: ast.Attribute) -> Any:
    """`self.a.b` in a method of `obj` -> obj.a.b (None if it is not that shape)."""
    chain = []
    node: Any = attr
    while isinstance(node, ast.Attribute):
        chain.append(node.attr)
        node = node.value
    if not (isinstance(node, ast.Name) and node.id == "self"):
        return None
    target = obj
    for part in reversed(chain):
        target = getattr(target, part, None)
        if target is None:
            return None
    return target if inspect.ismethod(target) or inspect.isfunction(target) else None
