"""Notebook extension for the runtime: `%load_ext kernel_ext`.

Registers `%cluster`, `%%remote` / `%remote` and `%remote_config`, and rich displays
for `ObjectRef` and `ActorHandle`. Nothing starts until a magic needs a cluster.
See docs/notebooks.md.
"""

from __future__ import annotations

from typing import Any


_tagger: Any = None
_announcer: Any = None


def progress(refs: Any, desc: str = "tasks", show_after: float = 2.0) -> list:
    """Wait for refs with a progress bar shown after `show_after` seconds; returns their values."""
    from .widgets import progress as _progress
    return _progress(refs, desc=desc, show_after=show_after)


def load_ipython_extension(ipython: Any) -> None:
    global _tagger, _announcer
    from .announce import Announcer
    from .cell_tags import CellTagger
    from .magics import ClusterMagics
    from .reprs import register_formatters

    from runtime._core import api_state
    api_state.driver_kind = "notebook"  # job lists show this kernel's driver among the notebooks
    ipython.register_magics(ClusterMagics)
    register_formatters(ipython)
    if _tagger is None:
        _tagger = CellTagger(ipython)
        _tagger.register()
    if _announcer is None:  # the lab sidebar follows this kernel's cluster (announce.py)
        _announcer = Announcer()
        _announcer.update()
        ipython.events.register("post_run_cell", _announcer.update)


def unload_ipython_extension(ipython: Any) -> None:
    global _tagger, _announcer
    if _tagger is not None:
        _tagger.unregister()
        _tagger = None
    if _announcer is not None:
        ipython.events.unregister("post_run_cell", _announcer.update)
        _announcer.withdraw()
        _announcer = None
