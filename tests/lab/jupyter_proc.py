"""A real Jupyter server (or JupyterLab) subprocess for the lab tests, stopped by its pid.

The server gets its own config, data and runtime directories under the test's tmp dir,
so a user's Jupyter settings cannot change what the tests see.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from runtime._testing.sync import wait_for

ENABLE_EXTENSION = "--ServerApp.jpserver_extensions=kernel_ext.lab=True"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class JupyterServer:
    proc: subprocess.Popen
    url: str
    token: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def request(self, path: str, *, method: str = "GET", body: bytes | None = None,
                token: str | None = None, timeout: float = 30) -> tuple[int, dict]:
        """(status, JSON body) of a call with the token in the Authorization header."""
        req = urllib.request.Request(self.url + path, data=body, method=method)
        tok = self.token if token is None else token
        if tok:
            req.add_header("Authorization", f"token {tok}")
        if body is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, {"raw": raw.decode(errors="replace")}

    def get(self, path: str, **kw) -> dict:
        status, body = self.request(path, **kw)
        assert status == 200, f"GET {path} answered {status}: {body}\nserver log:\n{self.log()}"
        return body

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # graceful: the server shuts its kernels down
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_jupyter(tmp: Path, env: dict, app: str = "server") -> JupyterServer:
    """`jupyter server` or `jupyter lab` on 127.0.0.1, a free port and a random token."""
    token = uuid.uuid4().hex
    port = free_port()
    root = tmp / "notebooks"
    root.mkdir(exist_ok=True)
    env = dict(env)
    for var, sub in (("JUPYTER_CONFIG_DIR", "jconfig"), ("JUPYTER_RUNTIME_DIR", "jruntime"),
                     ("JUPYTERLAB_SETTINGS_DIR", "jsettings"), ("JUPYTERLAB_WORKSPACES_DIR", "jworkspaces")):
        (tmp / sub).mkdir(exist_ok=True)
        env[var] = str(tmp / sub)
    module = "jupyter_server" if app == "server" else "jupyterlab"
    log_path = tmp / f"jupyter-{app}.log"
    cmd = [sys.executable, "-m", module, "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           ENABLE_EXTENSION]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and CI run as root
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = JupyterServer(proc, f"http://127.0.0.1:{port}", token, log_path)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter {app} exited with {proc.returncode}:\n{server.log()}")
        try:
            return server.request("/api/status", timeout=2)[0] == 200
        except OSError:
            return False

    try:
        wait_for(ready, timeout=90, what=f"jupyter {app} answering /api/status", retry_on=(OSError,))
    except BaseException:
        server.stop()
        raise
    return server


def hold_cpu_until(started: str, release: str) -> str:
    """Body of the tests' blocked task: it waits on a file, not on runtime.get, because a task
    blocked in get gives its CPU back and the tests check the CPU is held."""
    import os
    import time

    open(started, "w").close()
    while not os.path.exists(release):
        time.sleep(0.02)  # polls the test's release file; the test itself never sleeps
    return "released"
