"""A real redis-server for tests (Debian's package, installed by apt when missing and root),
on 127.0.0.1 and a free port, stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from .debian import debian_program


def require_redis_server() -> str:
    """For a test: the redis-server executable and the redis package, or skip saying what is missing."""
    import pytest
    pytest.importorskip("redis", reason="the redis package is not installed (pip install 'orrery[redis]')")
    exe = ensure_redis_server()
    if exe is None:
        pytest.skip("redis-server not found and could not be installed (Debian: apt-get install redis-server)")
    return exe


def ensure_redis_server() -> str | None:
    """The redis-server executable; installs Debian's package first when missing and allowed."""
    return debian_program("redis-server", "redis-server", ("/usr/bin/redis-server", "/usr/local/bin/redis-server"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")  # not "-LOADING": the data set is loaded
    except OSError:
        return False


class RedisServer:
    """One redis-server process on 127.0.0.1:port with its data in `dir`."""

    def __init__(self, exe: str, dir: Path, port: int) -> None:
        self.exe, self.dir, self.port = exe, dir, port
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{port}/0"

    def start(self, *, appendonly: bool = False, deadline_s: float = 30) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        log = self.dir / "redis.log"
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", "--appendonly", "yes" if appendonly else "no", "--daemonize", "no",
             # `always`: the AOF is written and fsynced before Redis replies. With the default
             # `everysec` Redis may put off the write for up to 2 s while a background fsync runs,
             # yet still reply, so a SIGKILL loses writes it acknowledged (CI saw it once).
             "--appendfsync", "always" if appendonly else "everysec",
             "--logfile", str(log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + deadline_s
        while not _pings(self.port):
            try:  # waits for the process to exit (a failed start) at most a moment, then asks again
                self.proc.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                pass
            else:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on port {self.port} within {deadline_s} s")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


