"""The owner pipe: how an embedded cluster's daemons notice that their driver is gone.

The driver keeps the only write end; each daemon inherits the read end and watches it.
EOF on it (the driver exited, even by SIGKILL) means shut down.
"""

from __future__ import annotations

import asyncio
import os
from typing import Callable


def watch(loop: asyncio.AbstractEventLoop, fd: int | None, on_gone: Callable[[], None]) -> None:
    """Call `on_gone()` once when the owner's end of the pipe closes (no-op for fd None)."""
    if fd is None:
        return

    def readable() -> None:
        try:
            data = os.read(fd, 1024)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            on_gone()

    loop.add_reader(fd, readable)
