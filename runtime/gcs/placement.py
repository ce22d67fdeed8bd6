"""Placement groups in the control store: where each bundle goes (a pure policy, unit-tested),
and the two-phase reservation across node managers.

A group is PENDING until every bundle is reserved, then CREATED; REMOVED when removed (its
resources go back, its tasks and actors are killed); RESCHEDULING when a node holding some of
its bundles died, until they are reserved again elsewhere. Reservation is all-or-nothing:
prepare on every chosen node, commit on all if every prepare succeeded, else cancel those
that did and try again later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..node.resources import normalize

logger = logging.getLogger("runtime.gcs")

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
EPS = 1e-9


def _fits(avail: dict[str, float], demand: dict[str, float]) -> bool:
    return all(avail.get(k, 0.0) + EPS >= v for k, v in demand.items())


def _take(avail: dict[str, float], demand: dict[str, float]) -> None:
    for k, v in demand.items():
        avail[k] = avail.get(k, 0.0) - v


def _sum(bundles: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            out[k] = out.get(k, 0.0) + v
    return out


def label_matches(labels: dict[str, str], selector: dict[str, str]) -> bool:
    """Ray's label selector: {"key": "v"}, "!v" (not v), "in(a,b)", "!in(a,b)"."""
    for key, want in selector.items():
        have = labels.get(key)
        negate = want.startswith("!")
        want = want[1:] if negate else want
        choices = [w.strip() for w in want[3:-1].split(",")] if want.startswith("in(") and want.endswith(")") \
            else [want]
        if (have in choices) == negate:
            return False
    return True


def choose_nodes(bundles: list[dict[str, float]], strategy: str, available: dict[str, dict[str, float]],
                 allowed: list[set[str]] | None = None) -> tuple[list[str] | None, str]:
    """The node of each bundle, or (None, why not). `available`: node id -> free resources;
    `allowed`: per bundle, the nodes its label selector lets it use (None: any)."""
    avail = {n: dict(r) for n, r in available.items()}
    nodes = sorted(avail)
    if strategy == "STRICT_PACK":
        total = _sum(bundles)
        for n in nodes:
            if _fits(avail[n], total) and (allowed is None or all(n in a for a in allowed)):
                return [n] * len(bundles), ""
        return None, f"no node has {total} free for all bundles together (STRICT_PACK)"
    if strategy == "STRICT_SPREAD" and len(bundles) > len(nodes):
        return None, f"STRICT_SPREAD needs {len(bundles)} nodes, one per bundle; the cluster has {len(nodes)}"
    placed: list[str] = []
    for i, b in enumerate(bundles):
        used = set(placed)
        if strategy == "PACK":
            order = sorted(nodes, key=lambda n: (n not in used, n))  # fill nodes already used first
        elif strategy == "SPREAD":
            order = sorted(nodes, key=lambda n: (placed.count(n), n))  # the least-used node first
        else:  # STRICT_SPREAD
            order = [n for n in nodes if n not in used]
        target = next((n for n in order if _fits(avail[n], b) and (allowed is None or n in allowed[i])), None)
        if target is None:
            labels = " with the labels it selects" if allowed is not None else ""
            return None, f"bundle {i} {b} fits on no node{labels} ({strategy})"
        _take(avail[target], b)
        placed.append(target)
    return placed, ""


@dataclass
class PlacementGroupRecord:
    pg_id: str
    name: str
    namespace: str
    strategy: str
    bundles: list[dict[str, float]]
    job_id: str
    detached: bool
    state: str = "PENDING"
    bundle_nodes: list[str] = field(default_factory=list)
    reason: str = "not scheduled yet"
    created_at: float = field(default_factory=time.time)
    placed_ms: float | None = None  # from creation to the last bundle reserved (Ray's end-to-end latency)
    attempts: int = 0  # tries at reserving the bundles
    waiters: list[asyncio.Future] = field(default_factory=list)
    cell: dict | None = None
    label_selectors: list | None = None  # Ray's bundle_label_selector: one dict per bundle

    def public(self) -> dict:
        return {"placement_group_id": self.pg_id, "name": self.name, "namespace": self.namespace,
                "strategy": self.strategy, "state": self.state, "bundles": self.bundles,
                "bundle_nodes": list(self.bundle_nodes), "job_id": self.job_id, "is_detached": self.detached,
                "pending_reason": self.reason if self.state in ("PENDING", "RESCHEDULING") else "",
                "creation_time": self.created_at, "cell": self.cell,
                "stats": {"scheduling_attempt": self.attempts, "end_to_end_creation_latency_ms": self.placed_ms,
                          "scheduling_state": _SCHEDULING_STATE.get(self.state, self.state)}}


# Ray's `stats.scheduling_state` for our states (its QUEUED covers both waiting states).
_SCHEDULING_STATE = {"PENDING": "QUEUED", "RESCHEDULING": "QUEUED", "CREATED": "FINISHED", "REMOVED": "REMOVED"}


class PlacementGroupManager:
    """Owned by the control store; `store` gives it the live node connections."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.groups: dict[str, PlacementGroupRecord] = {}
        self.named: dict[tuple[str, str], str] = {}
        self._retry_task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._lock = asyncio.Lock()  # one reservation attempt at a time: they compete for the same resources

    def create(self, msg: dict, job_id: str) -> dict:
        strategy = msg.get("strategy", "PACK")
        if strategy not in STRATEGIES:
            raise ValueError(f"Unknown placement strategy {strategy!r}; use one of {', '.join(STRATEGIES)}.")
        bundles = msg["bundles"]
        if not isinstance(bundles, list) or not bundles or not all(isinstance(b, dict) and b for b in bundles):
            raise ValueError("A placement group needs a non-empty list of non-empty bundles, like [{'CPU': 1}].")
        for b in bundles:  # amounts the placement loop can compare, checked here rather than failing it later
            normalize(b)
        if not isinstance(msg["pg_id"], str):
            raise ValueError(f"A placement group id is a string, not {msg['pg_id']!r}.")
        name, ns = msg.get("name") or "", msg.get("namespace", "")
        if name and self.named.get((ns, name)) in self.groups:
            existing = self.groups[self.named[(ns, name)]]
            if existing.state != "REMOVED":
                raise ValueError(f"A placement group named {name!r} already exists in namespace {ns!r}.")
        rec = PlacementGroupRecord(msg["pg_id"], name, ns, strategy, bundles, job_id, bool(msg.get("detached")),
                                   cell=msg.get("cell"), label_selectors=msg.get("label_selectors") or None)
        self.groups[rec.pg_id] = rec
        if name:
            self.named[(ns, name)] = rec.pg_id
        self.store.persist.placement_group(rec)
        self.kick()
        return {"pg_id": rec.pg_id}

    def recover(self, rows: dict[str, dict]) -> None:
        """Groups kept by an earlier control store of this session (persistence.py)."""
        for pg_id, row in rows.items():
            rec = PlacementGroupRecord(**row)
            self.groups[pg_id] = rec
            if rec.name and rec.state != "REMOVED":
                self.named[(rec.namespace, rec.name)] = pg_id

    def node_reconnected(self, node_id: str, held: set[str]) -> None:
        """A node back after a restart holds `held` groups' bundles: a group whose bundles it
        should hold but does not is placed again; bundles it holds for no live group are freed."""
        conn = self.store.node_conns[node_id]
        for rec in self.groups.values():
            if rec.state == "CREATED" and node_id in rec.bundle_nodes and rec.pg_id not in held:
                self._set(rec, "RESCHEDULING", f"node {node_id[:8]} lost its bundles; they are placed again")
                self.store._spawn(self._release_survivors(rec, node_id))
        for pg_id in held:
            rec = self.groups.get(pg_id)
            if rec is None or rec.state != "CREATED" or node_id not in rec.bundle_nodes:
                conn.send({"op": "cancel_bundles", "pg_id": pg_id})
        self.kick()

    def _set(self, rec: PlacementGroupRecord, state: str, reason: str) -> None:
        rec.state, rec.reason = state, reason
        self.store.persist.placement_group(rec)

    def get(self, pg_id: str) -> PlacementGroupRecord:
        rec = self.groups.get(pg_id)
        if rec is None:
            raise ValueError(f"No placement group {pg_id} in this cluster.")
        return rec

    def by_name(self, name: str, namespace: str) -> dict:
        pg_id = self.named.get((namespace, name))
        if pg_id is None or self.groups[pg_id].state == "REMOVED":
            raise ValueError(f"No placement group named {name!r} in namespace {namespace!r}.")
        return self.groups[pg_id].public()

    async def wait(self, pg_id: str, timeout: float | None) -> bool:
        rec = self.get(pg_id)
        if rec.state == "CREATED":
            return True
        if rec.state == "REMOVED":
            return False
        fut = asyncio.get_running_loop().create_future()
        rec.waiters.append(fut)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            return False

    async def remove(self, pg_id: str) -> None:
        rec = self.get(pg_id)
        if rec.state == "REMOVED":
            return
        async with self._lock:
            await self._cancel_on(rec, set(rec.bundle_nodes))
            rec.bundle_nodes = []
            self._set(rec, "REMOVED", "removed")
            self._notify(rec, False)
        self.kick()  # what it held may let a waiting group in

    def list(self) -> list[dict]:
        return [rec.public() for rec in self.groups.values()]

    def owner_gone(self, job_id: str) -> None:
        for rec in list(self.groups.values()):
            if rec.job_id == job_id and not rec.detached and rec.state != "REMOVED":
                self.store._spawn(self.remove(rec.pg_id))

    def node_died(self, node_id: str) -> None:
        for rec in self.groups.values():
            if rec.state == "CREATED" and node_id in rec.bundle_nodes:
                self._set(rec, "RESCHEDULING", f"node {node_id[:8]} died; its bundles are placed again")
                self.store._spawn(self._release_survivors(rec, node_id))
        self.kick()

    async def _release_survivors(self, rec: PlacementGroupRecord, dead: str) -> None:
        async with self._lock:
            await self._cancel_on(rec, set(rec.bundle_nodes) - {dead})
            rec.bundle_nodes = []
        self.kick()

    # -- scheduling -------------------------------------------------------------------------
    def kick(self) -> None:
        """Try waiting groups now (a group was created or removed, a node came or went)."""
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        if self._retry_task is None or self._retry_task.done():
            self._retry_task = asyncio.get_running_loop().create_task(self._schedule_pending())

    async def _schedule_pending(self) -> None:
        """Try every waiting group, then again while any waits: at once when kicked, else after a
        growing delay (resources also free up as tasks end, which the control store does not see)."""
        delay = 0.05
        while True:
            self._wake.clear()
            waiting = [r for r in self.groups.values() if r.state in ("PENDING", "RESCHEDULING")]
            if not waiting:
                return
            for rec in waiting:
                try:
                    await self._try_reserve(rec)
                except Exception as e:  # noqa: BLE001 - a node went away mid-way: retry later
                    rec.reason = f"reservation failed: {e}; retrying"
            if any(r.state in ("PENDING", "RESCHEDULING") for r in self.groups.values()):
                try:
                    await asyncio.wait_for(self._wake.wait(), delay)
                    delay = 0.05
                except asyncio.TimeoutError:
                    delay = min(delay * 2, 1.0)

    async def _available(self) -> dict[str, dict[str, float]]:
        conns = {n: c for n, c in self.store.node_conns.items() if not c.closed}

        async def ask(c: Any) -> dict:
            reply, _ = await c.request({"op": "get_resources"}, timeout=10)
            return {k: v for k, v in reply["available"].items() if "_group_" not in k}

        replies = await asyncio.gather(*(ask(c) for c in conns.values()), return_exceptions=True)
        return {n: r for n, r in zip(conns, replies) if isinstance(r, dict)}

    async def _try_reserve(self, rec: PlacementGroupRecord) -> None:
        async with self._lock:
            if rec.state not in ("PENDING", "RESCHEDULING"):
                return
            rec.attempts += 1
            totals = {n: node["resources"] for n, node in self.store.nodes.items() if node["alive"]}
            allowed = None if rec.label_selectors is None else [
                {n for n in totals if label_matches(self.store.nodes[n].get("labels") or {}, sel)}
                for sel in rec.label_selectors]
            never, why_never = choose_nodes(rec.bundles, rec.strategy, totals, allowed)
            if never is None:
                rec.reason = f"infeasible: {why_never}, even with nothing else running; it waits for nodes that can hold it"
                return
            placed, why = choose_nodes(rec.bundles, rec.strategy, await self._available(), allowed)
            if placed is None:
                rec.reason = f"waiting for resources: {why} with what is free now"
                return
            by_node: dict[str, list] = {}
            for i, node in enumerate(placed):
                by_node.setdefault(node, []).append([i, rec.bundles[i]])
            prepared: set[str] = set()
            for node, bundles in by_node.items():
                reply, _ = await self.store.node_conns[node].request(
                    {"op": "prepare_bundles", "pg_id": rec.pg_id, "bundles": bundles}, timeout=10)
                if not reply["ok"]:
                    await self._cancel_on(rec, prepared)
                    rec.reason = f"waiting for resources: {reply.get('reason', '')}"
                    return
                prepared.add(node)
            for node in by_node:
                await self.store.node_conns[node].request({"op": "commit_bundles", "pg_id": rec.pg_id}, timeout=10)
            rec.bundle_nodes = placed
            if rec.placed_ms is None:
                rec.placed_ms = round((time.time() - rec.created_at) * 1000, 3)
            self._set(rec, "CREATED", "")
            logger.info("placement group %s created: bundles on %s", rec.pg_id[:8], [n[:8] for n in placed])
            self._notify(rec, True)

    async def _cancel_on(self, rec: PlacementGroupRecord, nodes: set[str]) -> None:
        for node in nodes:
            conn = self.store.node_conns.get(node)
            if conn is not None and not conn.closed:
                try:
                    await conn.request({"op": "cancel_bundles", "pg_id": rec.pg_id}, timeout=10)
                except Exception as e:  # noqa: BLE001 - that node is going away with its reservation
                    logger.warning("could not release placement group %s on node %s: %s", rec.pg_id[:8], node[:8], e)

    def _notify(self, rec: PlacementGroupRecord, value: bool) -> None:
        for fut in rec.waiters:
            if not fut.done():
                fut.set_result(value)
        rec.waiters.clear()
