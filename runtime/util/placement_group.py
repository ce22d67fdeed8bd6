"""Placement groups: reserve bundles of resources (gang scheduling), then run tasks and actors
in them. Ray's API: `placement_group`, `remove_placement_group`, `get_placement_group`,
`placement_group_table`, `get_current_placement_group`.

    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
    ray.get(pg.ready())
    f.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote()
    remove_placement_group(pg)

The control store reserves every bundle or none (runtime/gcs/placement.py); a group that
cannot be placed stays PENDING, and `placement_group_table(pg)["pending_reason"]` says why.
"""

from __future__ import annotations

from typing import Any

from .._core.session import ensure_initialized
from .._core.ids import ActorID
from .._core.object_ref import ObjectRef

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def _gcs(msg: dict, timeout: float | None = None) -> dict:
    cw = ensure_initialized()
    reply, _ = cw.run_sync(cw.gcs_request(msg, timeout=timeout))
    return {k: v for k, v in reply.items() if k not in ("op", "id", "ok")}  # the RPC envelope


class PlacementGroup:
    def __init__(self, pg_id: str, bundles: list[dict], strategy: str = "PACK", name: str = "") -> None:
        self.id = pg_id
        self.bundle_specs = [dict(b) for b in bundles]
        self.strategy = strategy
        self.name = name

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def ready(self) -> ObjectRef:
        """An ObjectRef that resolves (to this group) once every bundle is reserved."""
        return ensure_initialized().placement_group_ready(self)

    def wait(self, timeout_seconds: float = 30) -> bool:
        """True once the group is created; False if `timeout_seconds` passed first."""
        return bool(_gcs({"op": "wait_pg", "pg_id": self.id, "timeout": timeout_seconds},
                         timeout=timeout_seconds + 10)["ready"])

    def __reduce__(self) -> tuple:
        return PlacementGroup, (self.id, self.bundle_specs, self.strategy, self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"PlacementGroup({self.id[:12]}, {self.strategy}, bundles={self.bundle_specs})"


def placement_group(bundles: list[dict[str, float]], strategy: str = "PACK", name: str = "",
                    lifetime: str | None = None, _soft_target_node_id: Any = None,
                    bundle_label_selector: list[dict[str, str]] | None = None,
                    topology_strategy: dict[str, str] | None = None) -> PlacementGroup:
    """Reserve `bundles` of resources on the cluster's nodes by `strategy`; returns at once (use
    `pg.ready()` or `pg.wait()`). bundle_label_selector: one selector per bundle, as Ray's
    ({"zone": "a"}, "!a", "in(a,b)", "!in(a,b)"), matched against node labels
    (`runtime start --labels`). topology_strategy (placement within label domains) is not built:
    a clear error says so. _soft_target_node_id is accepted and unused."""
    if not isinstance(bundles, list) or not bundles:
        raise ValueError("placement_group() needs a non-empty list of bundles, like [{'CPU': 1}, {'CPU': 1}].")
    for i, b in enumerate(bundles):
        if not isinstance(b, dict) or not b:
            raise ValueError(f"Bundle {i} must be a non-empty dict of resources, like {{'CPU': 1}}; got {b!r}.")
        for k, v in b.items():
            if not isinstance(k, str) or not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"Bundle {i}: resource {k!r} must be a non-negative number, got {v!r}.")
        if all(v == 0 for v in b.values()):
            raise ValueError(f"Bundle {i} asks for nothing ({b}); every bundle needs some resource.")
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown placement strategy {strategy!r}; use one of {', '.join(STRATEGIES)}.")
    if lifetime not in (None, "detached"):
        raise ValueError(f"lifetime must be None or 'detached', got {lifetime!r}.")
    if topology_strategy:
        raise ValueError("placement_group(topology_strategy=...) is not supported: placing bundles within label "
                         "domains is not built. Use strategy= with bundle_label_selector= instead.")
    if bundle_label_selector is not None and (
            not isinstance(bundle_label_selector, list) or len(bundle_label_selector) not in (0, len(bundles))
            or not all(isinstance(s, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in s.items())
                       for s in bundle_label_selector)):
        raise ValueError(f"bundle_label_selector must be a list of {len(bundles)} dicts of label to str, one per "
                         f"bundle, like [{{'zone': 'a'}}]; got {bundle_label_selector!r}.")
    cw = ensure_initialized()
    pg_id = ActorID.new().hex()
    clean = [{k: float(v) for k, v in b.items() if v > 0} for b in bundles]
    _gcs({"op": "create_pg", "pg_id": pg_id, "bundles": clean, "strategy": strategy, "name": name,
          "namespace": cw.namespace, "detached": lifetime == "detached", "job_id": cw.job_id,
          "cell": cw.current_cell, "label_selectors": bundle_label_selector or None})
    return PlacementGroup(pg_id, clean, strategy, name)


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Free the group's resources; its tasks and actors are stopped."""
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(f"remove_placement_group() takes a PlacementGroup, got {type(placement_group).__name__}.")
    _gcs({"op": "remove_pg", "pg_id": placement_group.id})


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    cw = ensure_initialized()
    row = _gcs({"op": "get_pg", "name": placement_group_name, "namespace": cw.namespace})
    return PlacementGroup(row["placement_group_id"], row["bundles"], row["strategy"], row["name"])


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict:
    """One group's row in Ray's shape, or every group's by id. A row has placement_group_id,
    name, strategy, state, bundles and bundles_to_node_id (dicts by bundle index), stats
    (scheduling_state, scheduling_attempt, end_to_end_creation_latency_ms) and, ours,
    pending_reason: why a PENDING group is not placed yet."""
    if placement_group is not None:
        return _table_row(_gcs({"op": "get_pg", "pg_id": placement_group.id}))
    return {row["placement_group_id"]: _table_row(row) for row in _gcs({"op": "list_pgs"})["placement_groups"]}


def _table_row(row: dict) -> dict:
    # Ray keys bundles by index (ints, which our wire format avoids: made here).
    return {"placement_group_id": row["placement_group_id"], "name": row["name"], "strategy": row["strategy"],
            "state": row["state"], "bundles": dict(enumerate(row["bundles"])),
            "bundles_to_node_id": dict(enumerate(row.get("bundle_nodes") or [])), "stats": row.get("stats", {}),
            "pending_reason": row.get("pending_reason", "")}


def get_current_placement_group() -> PlacementGroup | None:
    """In a task or actor that captures child tasks into its group: that group."""
    cw = ensure_initialized()
    current = getattr(cw, "current_pg", None)  # [id, bundles, strategy, name], set per task
    return PlacementGroup(*current) if current else None


__all__ = ["PlacementGroup", "get_current_placement_group", "get_placement_group", "placement_group",
           "placement_group_table", "remove_placement_group"]
