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
    from runtime.util.placement_group import PlacementGroup
    formatter.for_type(PlacementGroup, _placement_group_html)


def _object_ref_html(ref: Any) -> str:
    from runtime import wait
    try:
        # Not timeout=0: a ref another process owns (a value a cell left in the cluster) is
        # ready only once its owner answers, which takes a round trip; a ready one returns at once.
        ready = bool(wait([ref], timeout=0.5)[0])
    except Exception:  # noqa: BLE001 - a display must never raise
        ready = False
    status = "ready" if ready else "pending"
    return (f"<code>ObjectRef({html.escape(ref.hex()[:16])}…)</code> <small>{status}; "
            f"<code>runtime.get(ref)</code> fetches the value</small>")


def _actor_html(handle: Any) -> str:
    return f"<code>{html.escape(repr(handle))}</code>"


def _placement_group_html(pg: Any) -> str:
    from runtime.util import placement_group_table
    try:
        row = placement_group_table(pg)
    except Exception:  # noqa: BLE001 - a display must never raise
        row = {"state": "unknown", "bundles_to_node_id": {}, "pending_reason": ""}
    nodes = list(row.get("bundles_to_node_id", {}).values())
    bundles = "".join(f"<li>{i}: {html.escape(str(b))}"
                      + (f" on node <code>{html.escape(nodes[i][:8])}</code>" if i < len(nodes) else "") + "</li>"
                      for i, b in enumerate(pg.bundle_specs))
    why = f"<br><small>{html.escape(row['pending_reason'])}</small>" if row.get("pending_reason") else ""
    name = f" <b>{html.escape(pg.name)}</b>" if pg.name else ""
    return (f"<code>PlacementGroup({html.escape(pg.id[:12])})</code>{name} {html.escape(pg.strategy)}, "
            f"{html.escape(row['state'])}{why}<ul>{bundles}</ul>")
