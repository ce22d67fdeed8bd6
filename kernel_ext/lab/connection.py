"""The jupyter server's own connection to the cluster, made lazily and never on the event loop.

The server process joins the cluster as a driver (`runtime.init(address=...)`) the first
time an endpoint needs it. Every runtime call is blocking, and a call to a cluster that
went away can block for a long time, so each one runs in a daemon thread of its own and is
awaited with a deadline: a request answers "not connected" within seconds, never hangs,
and a stuck call cannot keep the server from exiting.

The server never starts a cluster: runtime calls made without a connection raise instead of
starting an embedded one (api_state.auto_init). With the address "auto" it follows the
cluster that address means now: when that one stops, or another becomes current (a new
`runtime start --head`), the next request joins the new one.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import runtime
from runtime._core import api_state, worker_state

T = TypeVar("T")

CONNECT_TIMEOUT_S = 3.0
CALL_TIMEOUT_S = 5.0


class NotConnected(Exception):
    """No cluster to answer from; the message is a sentence for the user."""


def cluster_address() -> str:
    """RUNTIME_ADDRESS if set, else "auto": the cluster `runtime start --head` started here."""
    return os.environ.get("RUNTIME_ADDRESS") or "auto"


def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future:
    """fn(*args) in a daemon thread: its Future. (A ThreadPoolExecutor's threads are joined at
    exit, so one call stuck on a cluster that went away would hang the server's shutdown.)"""
    fut: Future = Future()

    def run() -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting request
            fut.set_exception(e)

    threading.Thread(target=run, name="orrery-lab", daemon=True).start()
    return fut


def _current_gcs() -> str | None:
    cw = worker_state.current_or_none()
    return getattr(cw, "gcs_address", None)


def _auto_gcs() -> str | None:
    """The control store that address "auto" means now (None: no cluster runs here)."""
    from runtime._core.session import find_cluster
    try:
        return find_cluster("auto")["gcs_address"]
    except ConnectionError:
        return None


class ClusterConnection:
    """One per server process. Connection attempts are single-flight and retried on later requests.

    The runtime allows one connection per process, so the server is joined to one cluster at a
    time: the one a request asks for (the announced cluster of the notebook in focus, see
    kernel_ext/announce.py), else the default (RUNTIME_ADDRESS or "auto"). A request for
    another cluster than the joined one disconnects and joins that one.
    """

    def __init__(self, connect_timeout: float = CONNECT_TIMEOUT_S, call_timeout: float = CALL_TIMEOUT_S) -> None:
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self._connecting: Future | None = None
        self._resetting: Future | None = None
        self.address = cluster_address()  # what was last asked for: "auto", HOST:PORT
        api_state.auto_init = False  # this process follows clusters; it never starts one
        api_state.driver_kind = "jupyter-server"
        atexit.register(self.close)

    async def _await(self, fut: Future, timeout: float) -> Any:
        # shield: a deadline ends our wait, not the thread's work (which cannot be interrupted).
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), timeout)

    async def ensure_connected(self, target: str | None = None) -> None:
        """Joined to `target` (a control store's address, "tcp:HOST:PORT" or HOST:PORT), or to
        the default address when None."""
        want = target.removeprefix("tcp:") if target else cluster_address()
        if runtime.is_initialized() and not await self._moved(want):
            return
        if self._resetting is not None and not self._resetting.done():
            try:  # leaving the other cluster takes a moment: this request then joins the new one
                await self._await(self._resetting, self.connect_timeout)
            except asyncio.TimeoutError:
                raise NotConnected("Still leaving the previous cluster; reconnecting.") from None
            except Exception:  # noqa: BLE001 - a failed goodbye to a cluster that went away: join anyway
                pass
        if self._connecting is None or self._connecting.done():
            self.address = want
            self._connecting = in_thread(self._connect, want)
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

    @staticmethod
    def _connect(address: str) -> None:
        runtime.init(address=address, ignore_reinit_error=True)
        atexit.unregister(runtime.shutdown)  # close() ends the connection at exit, with a deadline

    async def _moved(self, want: str) -> bool:
        """Is the cluster `want` means now another than the one joined (or none)? Then the
        connection is reset, and the next request joins the new one. With "auto" that is the
        cluster "auto" finds now (the one before it stopped, or a new head took its place)."""
        if self._connecting is not None and not self._connecting.done():
            return False
        if want == "auto":
            try:
                wanted = await self._await(in_thread(_auto_gcs), self.call_timeout)
            except asyncio.TimeoutError:
                return False
        elif want.startswith(("unix:", "client://")):
            return False  # cannot be compared with a control store's address: keep what is joined
        else:
            wanted = "tcp:" + want
        if wanted == _current_gcs():
            return False
        self._reset()
        return True

    async def call(self, fn: Callable[..., T], *args: Any, target: str | None = None, **kwargs: Any) -> T:
        """Run a blocking runtime call off the event loop, joined to `target` (None: the
        default cluster) first if needed."""
        await self.ensure_connected(target)
        fut = in_thread(fn, *args, **kwargs)
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
            self._resetting = in_thread(runtime.shutdown)

    def close(self, timeout: float = 2.0) -> None:
        """At exit: disconnect, waiting at most `timeout` (a cluster that went away must not
        hold the server up)."""
        if runtime.is_initialized():
            try:
                in_thread(runtime.shutdown).result(timeout)
            except Exception:  # noqa: BLE001 - exiting anyway
                pass
