"""Module state of the public API in this process: the job's settings and cluster handle."""

from __future__ import annotations

from typing import Any

from . import worker_state

job_runtime_env: dict | None = None
cluster: Any = None  # launcher.ClusterProcesses when this driver started an embedded cluster
context: Any = None
# The notebook cell running now (kernel_ext sets it); copied onto the driver's core worker.
current_cell: dict | None = None


def ensure_initialized() -> Any:
    """The current core worker; like Ray, the first remote call starts a local cluster."""
    cw = worker_state.current_or_none()
    if cw is None:
        from .api import init
        init()
        cw = worker_state.current()
    return cw
