"""`runtime.get_runtime_context()` and the object `runtime.init()` returns."""

from __future__ import annotations

import html
from typing import Any

from . import worker_state


class RuntimeContext:
    """What the current process is: its job, node, task and actor."""

    def get_job_id(self) -> str:
        return worker_state.current().job_id

    def get_node_id(self) -> str:
        return worker_state.current().node_id

    def get_worker_id(self) -> str:
        return worker_state.current().worker_id

    def get_task_id(self) -> str | None:
        cw = worker_state.current()
        return cw.current_task_id.hex() if cw.mode == "worker" and cw.current_task_id else None

    def get_actor_id(self) -> str | None:
        return worker_state.current().current_actor_id or None

    @property
    def namespace(self) -> str:
        return worker_state.current().namespace

    def get_namespace(self) -> str:
        return self.namespace

    def get_assigned_resources(self) -> dict:
        cw = worker_state.current()
        return dict(cw.assigned_resources) if cw.mode == "worker" else {}

    def get_accelerator_ids(self) -> dict:
        return {"GPU": [str(g) for g in worker_state.current().gpu_ids]}

    @property
    def was_current_actor_reconstructed(self) -> bool:
        return bool(worker_state.current().actor_reconstructed)

    @property
    def gcs_address(self) -> str:
        return worker_state.current().gcs_address


def get_runtime_context() -> RuntimeContext:
    worker_state.current()
    return RuntimeContext()


class ClusterContext:
    """Returned by `runtime.init()`: where the cluster is, with a notebook repr."""

    def __init__(self, address_info: dict, node_id: str, namespace: str, resources: dict) -> None:
        self.address_info = address_info
        self.dashboard_url = None
        self.node_id = node_id
        self.namespace = namespace
        self.resources = resources

    def __getitem__(self, key: str) -> Any:  # Ray's init() result is also dict-like
        return self.address_info[key]

    def __enter__(self) -> ClusterContext:
        return self

    def __exit__(self, *exc: Any) -> None:
        from .api import shutdown
        shutdown()

    def __repr__(self) -> str:
        return (f"ClusterContext(address={self.address_info.get('address')!r}, node_id={self.node_id[:12]!r}, "
                f"namespace={self.namespace!r})")

    def _repr_html_(self) -> str:
        import platform
        from importlib.metadata import PackageNotFoundError, version
        try:
            ours = version("orrery")
        except PackageNotFoundError:
            ours = "source checkout"
        try:
            from .api import cluster_resources, nodes
            resources = {k: v for k, v in cluster_resources().items() if not k.startswith("node:")}
            n_nodes = sum(1 for n in nodes() if n["Alive"])
        except Exception:  # noqa: BLE001 - a display must not raise; show what init() knew
            resources, n_nodes = self.resources, "?"
        rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                       for k, v in [("address", self.address_info.get("address")), ("node", self.node_id[:12]),
                                    ("nodes", n_nodes), ("namespace", self.namespace), ("resources", resources),
                                    ("versions", f"orrery {ours}, Python {platform.python_version()}")])
        # Under a Jupyter server the dashboard is linked through it (kernel_ext/lab/dashboard_proxy.py),
        # which works where only the Jupyter port is reachable (Binder, JupyterHub set the prefix).
        dashboard = ""
        if self.dashboard_url:
            import os
            if os.environ.get("JPY_PARENT_PID") or os.environ.get("JUPYTERHUB_SERVICE_PREFIX"):
                prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/").rstrip("/")
                href = f"{prefix}/orrery/dashboard/"
            else:
                from ..rpc import tls
                href = f"{tls.scheme()}://{self.dashboard_url}/"
            dashboard = f'<a href="{html.escape(href)}" target="_blank">Dashboard</a> · '
        note = (f"<small>{dashboard}Live view: <code>%cluster</code> in a notebook, or the Orrery sidebar in "
                "JupyterLab.</small>")
        return f"<table><caption>runtime cluster</caption>{rows}</table>{note}"
