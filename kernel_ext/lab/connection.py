"""The jupyter server's own connection to the cluster, made lazily and never on the event loop.

The server process joins the cluster as a driver (`runtime.init(address=...)`) the first
time an endpoint needs it. Every runtime call is blocking, and a call to a cluster that
went away can block for a long time, so each one runs in a small thread pool and is
awaited with a deadline: a request answers "not connected" within seconds, never hangs.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import runtime

T = TypeVar("T")

CONNECT_TIMEOUT_S = 3.0
CALL_TIMEOUT_S = 5.0


class NotConnected(Exception):
    """No cluster to answer from; the message is a sentence for the user."""


def cluster_address() -> str:
    """RUNTIME_ADDRESS if set, else "auto": the cluster `runtime start --head` started here."""
    return os.environ.get("RUNTIME_ADDRESS") or "auto"


class ClusterConnection:
    """One per server process. Connection attempts are single-flight and retried on later requests."""

    def __init__(self, connect_timeout: float = CONNECT_TIMEOUT_S, call_timeout: float = CALL_TIMEOUT_S) -> None:
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        # A stuck call keeps its thread, so the pool has a few: one hung cluster call must
        # not stop the next request from being answered with an error.
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="orrery-lab")
        self._connecting: Future | None = None
        self._resetting: Future | None = None
        self.address = cluster_address()

    async def _await(self, fut: Future, timeout: float) -> Any:
        # shield: a deadline ends our wait, not the thread's work (which cannot be interrupted).
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), timeout)

    async def ensure_connected(self) -> None:
        if runtime.is_initialized():
            return
        if self._resetting is not None and not self._resetting.done():
            raise NotConnected("Lost the cluster; reconnecting.")
        if self._connecting is None or self._connecting.done():
            self.address = cluster_address()
            self._connecting = self._pool.submit(runtime.init, address=self.address, ignore_reinit_error=True)
        fut = self._connecting
        try:
            await self._await(fut, self.connect_timeout)
        except asyncio.TimeoutError:
            raise NotConnected(f"Still connecting to the cluster at {self.address!r} "
                               f"(no answer within {self.connect_timeout:g} s).") from None
        # Whatever init raised (ConnectionError, a bad address's ValueError...) is the reason to
        # show; the next request tries again.
        except Exception as e:  # noqa: BLE001
            self._connecting = None
            raise NotConnected(f"Could not connect to the cluster at {self.address!r}: {e}") from None

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking runtime call off the event loop, connecting first if needed."""
        await self.ensure_connected()
        fut = self._pool.submit(fn, *args, **kwargs)
        try:
            return await self._await(fut, self.call_timeout)
        except asyncio.TimeoutError:
            self._reset()
            raise NotConnected(f"The cluster at {self.address!r} did not answer within "
                               f"{self.call_timeout:g} s; reconnecting.") from None
        except (ConnectionError, OSError, EOFError) as e:
            self._reset()
            raise NotConnected(f"Lost the cluster at {self.address!r}: {e}") from None

    def _reset(self) -> None:
        """Disconnect (in a thread) so the next request joins afresh, e.g. a restarted cluster."""
        if self._resetting is None or self._resetting.done():
            self._connecting = None
            self._resetting = self._pool.submit(runtime.shutdown)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
