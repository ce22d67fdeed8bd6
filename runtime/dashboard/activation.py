"""Socket activation of the dashboard, run inside the control store.

The launcher binds the dashboard's port with the cluster and hands the listening socket to the
control store, which does not accept on it: it only waits until a connection is pending, then
starts the dashboard process with the socket. The dashboard accepts that first connection
from the backlog (it waits there the fraction of a second the process takes to start), and
every later one. Clusters nobody opens the dashboard of never pay for its process.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import Any

logger = logging.getLogger("runtime.gcs")


class DashboardActivation:
    def __init__(self, fd: int, session_dir: str, gcs_address: str, token_file: str,
                 hello_timeout_s: float = 10.0) -> None:
        self.fd = fd
        self.args = {"fd": fd, "session_dir": session_dir, "gcs_address": gcs_address, "token_file": token_file,
                     "hello_timeout_s": hello_timeout_s}
        self.proc: subprocess.Popen | None = None
        self.loop: Any = None
        self.pipe_w: int | None = None

    def start(self, loop: Any) -> None:
        self.loop = loop
        loop.add_reader(self.fd, self._activate)

    def _activate(self) -> None:
        self.loop.remove_reader(self.fd)
        # The dashboard exits when this control store does, even by SIGKILL: it watches a pipe
        # whose only write end stays here (as the owner pipe of an embedded cluster).
        self.pipe_r, self.pipe_w = os.pipe()
        log = open(os.path.join(self.args["session_dir"], "logs", "dashboard.log"), "ab")
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "runtime.dashboard",
                                          json.dumps({**self.args, "owner_fd": self.pipe_r})],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         pass_fds=[self.fd, self.pipe_r], close_fds=True, start_new_session=True)
        finally:
            log.close()
            os.close(self.pipe_r)
        logger.info("dashboard started on first use (pid %d)", self.proc.pid)

    def stop(self) -> None:
        if self.proc is None:
            if self.loop is not None:
                self.loop.remove_reader(self.fd)
        elif self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.pipe_w is not None:
            os.close(self.pipe_w)
        os.close(self.fd)
