"""The client server: the head's port for thin clients, served from the control store's process.

It only accepts: each connection is handed, as an inherited socket, to a new proxy process
(`python -m runtime.client.proxy`), which checks the token and serves that client alone. A
client's crash, a malformed frame or a huge value then touches its own proxy, never the
control store. Proxies are stopped with the control store.

At most MAX_UNAUTHENTICATED_PROXIES proxies at a time have not yet seen their client's hello
(each says so through a pipe, or exits after hello_timeout_s): a flood of connections that
never authenticate cannot start a process per connection; the excess is closed at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
from typing import Any

logger = logging.getLogger(__name__)
MAX_UNAUTHENTICATED_PROXIES = 16


class ClientServer:
    def __init__(self, sock: socket.socket, *, gcs_address: str, session_dir: str, token_file: str,
                 hello_timeout_s: float = 10.0) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self.gcs_address = gcs_address
        self.session_dir = session_dir
        self.token_file = token_file
        self.procs: list[subprocess.Popen] = []
        self.hello_timeout_s = hello_timeout_s
        self.unauthenticated: set[int] = set()  # read ends of the pipes of proxies not yet past hello
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            conn, peer = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            logger.warning("client server: accept failed: %s", e)
            return
        self.reap()
        if len(self.unauthenticated) >= MAX_UNAUTHENTICATED_PROXIES:
            logger.warning("client server: closing the connection from %s: %d proxies are waiting for their "
                           "client's hello already", peer, len(self.unauthenticated))
            conn.close()
            return
        try:
            self.procs.append(self._spawn(conn, peer))
        except OSError as e:
            logger.warning("client server: could not start a proxy for %s: %s", peer, e)
        finally:
            conn.close()  # the proxy has its own copy

    def _spawn(self, conn: socket.socket, peer: Any) -> subprocess.Popen:
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        ready_r, ready_w = os.pipe()  # the proxy closes its end once its client said hello (or it exits)
        args = {"fd": conn.fileno(), "gcs_address": self.gcs_address, "token_file": self.token_file, "peer": where,
                "ready_fd": ready_w, "hello_timeout_s": self.hello_timeout_s}
        log = open(os.path.join(self.session_dir, "logs", f"client-proxy-{len(self.procs)}.log"), "ab")
        try:
            proc = subprocess.Popen([sys.executable, "-m", "runtime.client.proxy", json.dumps(args)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    pass_fds=[conn.fileno(), ready_w], start_new_session=True, close_fds=True)
        except OSError:
            os.close(ready_r)
            raise
        finally:
            log.close()
            os.close(ready_w)
        self.unauthenticated.add(ready_r)
        self.loop.add_reader(ready_r, self._authenticated, ready_r)
        return proc

    def _authenticated(self, ready_r: int) -> None:
        self.loop.remove_reader(ready_r)
        os.close(ready_r)
        self.unauthenticated.discard(ready_r)

    def reap(self) -> None:
        """Forget proxies whose client left (and collect their exit status)."""
        self.procs = [p for p in self.procs if p.poll() is None]

    def stop(self, timeout: float = 5.0) -> None:
        if self.loop is not None:
            self.loop.remove_reader(self.sock.fileno())
            for ready_r in list(self.unauthenticated):
                self._authenticated(ready_r)
        self.sock.close()
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []
