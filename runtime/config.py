"""The one place system configuration is defined and resolved.

Order: defaults, then `RUNTIME_<KEY>` (or Ray's `RAY_<key>`) environment variables, then `init(_system_config=...)`
or `runtime start --system-config JSON`. Unknown keys fail loudly with a suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from typing import Any


@dataclasses.dataclass(frozen=True)
class SystemConfig:
    # Results and put() values whose serialized size is below this travel inline, not via shm.
    max_inline_bytes: int = 100 * 1024
    # Directory that objects are spilled to when the store is full ("" = <session dir>/spill).
    object_spilling_directory: str = ""
    # How long an idle leased worker is kept by its owner before it is returned.
    lease_idle_timeout_s: float = 0.05
    # Short tasks pushed to one leased worker before it answers (pipelining; 1: one at a time, as
    # Ray's max_tasks_in_flight_per_worker). Fewer when tasks take longer: runtime/_core/normal_task_submitter.py.
    max_tasks_in_flight_per_worker: int = 16
    # Idle workers above num_cpus are stopped after this long.
    idle_worker_timeout_s: float = 60.0
    # Seconds an RPC waits for a reply before failing (drivers and daemons).
    rpc_timeout_s: float = 30.0
    # Seconds init() waits for the embedded cluster to come up.
    startup_timeout_s: float = 30.0
    # A connection to any of the cluster's ports that has not authenticated within this long (no
    # hello with the token, a request sent byte by byte, an HTTP connection idle) is closed.
    hello_timeout_s: float = 10.0
    # Workers a node starts at once (0: its CPU count, at least 2; Ray's
    # maximum_startup_concurrency). More wait their turn: hundreds started together on a few
    # cores each take so long that some miss hello_timeout_s.
    worker_startup_concurrency: int = 0
    # Node heartbeat period towards the control store.
    heartbeat_interval_s: float = 1.0
    # A node whose heartbeats stop for this long is declared dead (its connection is dropped, its
    # actors fail over, its placement-group bundles are placed again), even if its socket stays open.
    node_death_timeout_s: float = 10.0
    # How often a process sends its tasks' state changes to the control store (0 = never).
    task_events_interval_s: float = 0.5
    # How long after a change a process sends its application metrics (runtime.util.metrics) to
    # its node manager, which serves them to Prometheus (0 = never).
    metrics_report_interval_s: float = 2.0
    # Record where each object was created (put, task submission): `runtime memory --group-by
    # STACK_TRACE` and the state API's call_site (Ray's RAY_record_ref_creation_sites).
    record_ref_creation_sites: bool = False
    # Tasks the control store keeps for the state API; the oldest finished ones go first.
    task_events_max_tasks: int = 10000
    # Unfinished tasks it keeps besides: past this many the oldest are dropped too (counted in
    # list_tasks' "dropped"), so a driver that queues a million tasks does not cost the control
    # store ~1 KB each. Ray's task_events_max_num_task_in_gcs is 100,000 too.
    task_events_max_unfinished_tasks: int = 100000
    # Where the control store keeps its tables so that a restarted head recovers them: "" (SQLite
    # in the session directory), "sqlite:///ABSOLUTE/PATH", "redis://HOST:PORT[/DB]", or "none".
    gcs_storage: str = ""
    # DEFAULT scheduling packs work onto a node until this share of its CPUs (or GPUs) is in use,
    # then spreads it to less used nodes (Ray's hybrid policy; 1.0: pack until full).
    scheduler_spread_threshold: float = 0.5
    # How long node managers, drivers and workers keep trying to reach a restarted control store.
    gcs_reconnect_timeout_s: float = 60.0
    # runtime_env: the largest working_dir or py_modules package, after excludes (Ray's is 500 MiB).
    runtime_env_max_package_mb: int = 500
    # runtime_env: a node removes an unpacked package or pip environment that no worker has used for
    # this long, and the least recently used ones while its cache is over runtime_env_cache_max_mb.
    runtime_env_cache_ttl_s: float = 600.0
    runtime_env_cache_max_mb: int = 10240
    # Named actors and placement groups are reachable only from jobs of their own namespace: get_actor,
    # get_if_exists and list_named_actors(all_namespaces=True) do not cross namespaces (`runtime start
    # --head --isolate-namespaces`). Not a security boundary: see docs/security.md.
    isolate_namespaces: bool = False

    @classmethod
    def resolve(cls, overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> SystemConfig:
        environ = os.environ if environ is None else environ
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for name, f in fields.items():
            # Ours, or Ray's spelling of the same setting (RAY_record_ref_creation_sites=1).
            raw = environ.get(f"RUNTIME_{name.upper()}", environ.get(f"RAY_{name}"))
            if raw is not None:
                values[name] = _coerce(name, f.type, raw)
        for key, value in (overrides or {}).items():
            if key not in fields:
                close = difflib.get_close_matches(key, fields, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f". Valid keys: {', '.join(sorted(fields))}."
                raise ValueError(f"Unknown _system_config key '{key}'{hint}")
            values[key] = _coerce(key, fields[key].type, value)
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SystemConfig:
        return cls(**json.loads(text))


def _coerce(name: str, type_name: Any, value: Any) -> Any:
    kind = {"int": int, "float": float, "str": str, "bool": bool}.get(str(type_name), str)
    try:
        if kind is bool and isinstance(value, str):
            return value.lower() in ("1", "true", "yes")
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"System config '{name}' must be {kind.__name__}, got {value!r}.") from None


def cluster_address_from_env() -> str | None:
    """RUNTIME_ADDRESS (or Ray's RAY_ADDRESS) makes init() join that cluster."""
    return os.environ.get("RUNTIME_ADDRESS") or os.environ.get("RAY_ADDRESS") or None
