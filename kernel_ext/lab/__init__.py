"""Jupyter-server extension: the cluster's live state over REST, for the JupyterLab panel.

Enabled by `etc/jupyter/jupyter_server_config.d/orrery-lab.json` (shipped in the wheel).
The endpoints live under `/orrery/api/` and read only the public state API
(`runtime.util.state`), so the lab works where only the Jupyter port is exposed.
See docs/notebooks.md, "JupyterLab extension".
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict]:
    return [{"module": "kernel_ext.lab"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from .handlers import setup_handlers

    setup_handlers(serverapp)
    serverapp.log.info("Orrery lab extension: REST endpoints under /orrery/api/, the cluster's dashboard "
                       "under /orrery/dashboard/")
