"""The kernel tells the Jupyter server which cluster it is connected to, so the lab sidebar
and status bar show the cluster of the notebook in focus, not one cluster per server.

A file `orrery-kernel-<kernel id>.json` beside the kernel's connection file (in Jupyter's
runtime directory, which the server reads as `runtime_dir`) holds the control store's address
and the kernel's pid; it is rewritten after a cell when the kernel's connection has changed
and removed when the kernel exits. The server ignores a file whose pid is gone (a restarted
kernel keeps its id but not its process).
"""

from __future__ import annotations

import atexit
import json
import os
from typing import Any

from runtime._core import worker_state

PREFIX = "orrery-kernel-"


def announcement_path() -> str | None:
    """Where this kernel announces its cluster; None outside a Jupyter kernel."""
    try:
        from ipykernel.connect import get_connection_file
        conn = get_connection_file()
    except Exception:  # noqa: BLE001 - not a kernel (a plain IPython shell, a script)
        return None
    name = os.path.basename(conn)
    if not (name.startswith("kernel-") and name.endswith(".json")):
        return None
    return os.path.join(os.path.dirname(conn), PREFIX + name[len("kernel-"):])


class Announcer:
    def __init__(self) -> None:
        self.path = announcement_path()
        self.announced: str | None = "unset"
        if self.path is not None:
            atexit.register(self.withdraw)

    def update(self, *_: Any) -> None:
        """After each cell: (re)write the file if the kernel's cluster changed."""
        if self.path is None:
            return
        cw = worker_state.current_or_none()
        address = getattr(cw, "gcs_address", None)
        if address == self.announced:
            return
        self.announced = address
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"gcs_address": address, "pid": os.getpid(),
                       "notebook": os.environ.get("JPY_SESSION_NAME", "")}, f)
        os.replace(tmp, self.path)

    def withdraw(self) -> None:
        if self.path is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def read_announcement(runtime_dir: str, kernel_id: str) -> dict | None:
    """The server's side: the live kernel's announcement, or None."""
    import psutil
    if not kernel_id or "/" in kernel_id or kernel_id.startswith("."):
        return None
    try:
        with open(os.path.join(runtime_dir, PREFIX + kernel_id + ".json")) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and psutil.pid_exists(int(info.get("pid") or 0)) else None
