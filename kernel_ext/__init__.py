"""Notebook extension for the runtime: `%load_ext kernel_ext`.

Registers `%cluster`, `%%remote` / `%remote` and `%remote_config`, and rich displays
for `ObjectRef` and `ActorHandle`. Nothing starts until a magic needs a cluster.
See docs/notebooks.md.
"""

from __future__ import annotations

from typing import Any


def load_ipython_extension(ipython: Any) -> None:
    from .magics import ClusterMagics
    from .reprs import register_formatters

    ipython.register_magics(ClusterMagics)
    register_formatters(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    pass
