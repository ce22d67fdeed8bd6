"""Plain-text views of the cluster (status lines; the widget's non-interactive form)."""

from __future__ import annotations

import runtime
from runtime.util import state

from .cellcode import format_size


def summary() -> str:
    """Nodes with their resources and object-store use, in a few lines."""
    total = runtime.cluster_resources()
    free = runtime.available_resources()
    lines = [f"Cluster: {len(runtime.nodes())} node(s), "
             f"CPU {total.get('CPU', 0) - free.get('CPU', 0):g}/{total.get('CPU', 0):g} in use"
             + (f", GPU {total.get('GPU', 0) - free.get('GPU', 0):g}/{total.get('GPU', 0):g}" if total.get("GPU") else "")]
    for store in state.object_store_stats():
        lines.append(f"Object store: {format_size(store['used_bytes'])} of {format_size(store['capacity_bytes'])} used, "
                     f"{store['num_objects']} object(s), {store['spilled_objects']} spilled")
    custom = {k: v for k, v in total.items() if k not in ("CPU", "GPU", "memory", "object_store_memory")}
    if custom:
        lines.append("Custom resources: " + ", ".join(f"{k}={v:g}" for k, v in sorted(custom.items())))
    return "\n".join(lines)
