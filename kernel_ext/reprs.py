"""Rich displays for runtime objects in a notebook."""

from __future__ import annotations

import html
from typing import Any


def register_formatters(ipython: Any) -> None:
    from runtime import ObjectRef
    from runtime._core.actor import ActorHandle

    formatter = ipython.display_formatter.formatters["text/html"]
    formatter.for_type(ObjectRef, _object_ref_html)
    formatter.for_type(ActorHandle, _actor_html)


def _object_ref_html(ref: Any) -> str:
    from runtime import wait
    try:
        ready = bool(wait([ref], timeout=0)[0])
    except Exception:  # noqa: BLE001 - a display must never raise
        ready = False
    status = "ready" if ready else "pending"
    return (f"<code>ObjectRef({html.escape(ref.hex()[:16])}…)</code> <small>{status}; "
            f"<code>runtime.get(ref)</code> fetches the value</small>")


def _actor_html(handle: Any) -> str:
    return f"<code>{html.escape(repr(handle))}</code>"
