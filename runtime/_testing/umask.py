"""A umask that would leave files group-writable and world-readable: tests of file modes run
under it, so that they fail unless the modes are set on purpose."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def permissive_umask() -> Iterator[None]:
    old = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(old)
