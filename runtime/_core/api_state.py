"""Module state of the public API in this process: the job's settings and cluster handle.
Plain data, set by session.py (init/shutdown) and by the processes that embed a driver."""

from __future__ import annotations

from typing import Any

job_runtime_env: dict | None = None
cluster: Any = None  # launcher.ClusterProcesses when this driver started an embedded cluster
context: Any = None
# The notebook cell running now (kernel_ext sets it); copied onto the driver's core worker.
current_cell: dict | None = None


# A process that must never start a cluster of its own (the Jupyter server's extension, which
# only follows clusters that others start) turns this off: a call without a connection then
# raises ConnectionError instead of starting an embedded cluster.
auto_init = True
# "jupyter-server", "cli": set by such processes before they join, shown in job lists
# (session._driver_kind tells notebooks and scripts apart by itself).
driver_kind: str | None = None
