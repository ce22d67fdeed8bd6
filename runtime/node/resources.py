"""Resource arithmetic and the lease queue policy of one node (sans-I/O, unit-tested).

Quantities are floats; CPU can go negative while tasks that lent their CPU (blocked in
`get`) take it back, as in Ray, so a nested task never deadlocks the pool.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

EPS = 1e-9


def normalize(demand: dict[str, float] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in (demand or {}).items():
        if not isinstance(k, str):
            raise ValueError(f"Resource names must be strings, got {k!r}.")
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < math.inf:  # no NaN either
            raise ValueError(f"Resource {k!r} must be a non-negative number, got {v!r}.")
        if v > 0:
            out[k] = float(v)
    return out


@dataclass
class ResourcePool:
    """Total and available resources of a node, with GPU ids handed out per lease."""

    total: dict[str, float]
    available: dict[str, float] = field(default_factory=dict)
    free_gpu_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.available:
            self.available = dict(self.total)
        if not self.free_gpu_ids:
            self.free_gpu_ids = list(range(int(self.total.get("GPU", 0))))

    def feasible(self, demand: dict[str, float]) -> bool:
        return all(self.total.get(k, 0.0) + EPS >= v for k, v in demand.items())

    def fits(self, demand: dict[str, float]) -> bool:
        return all(self.available.get(k, 0.0) + EPS >= v for k, v in demand.items())

    def acquire(self, demand: dict[str, float]) -> list[int]:
        """Take `demand`; returns the GPU ids assigned (whole GPUs first-fit)."""
        for k, v in demand.items():
            self.available[k] = self.available.get(k, 0.0) - v
        n = int(demand.get("GPU", 0) + 0.999999) if demand.get("GPU") else 0
        gpus, self.free_gpu_ids = self.free_gpu_ids[:n], self.free_gpu_ids[n:]
        return gpus

    def release(self, demand: dict[str, float], gpu_ids: list[int] = ()) -> None:
        for k, v in demand.items():
            if k not in self.total:  # a placement group's resource, gone with its group
                continue
            self.available[k] = min(self.total.get(k, 0.0), self.available.get(k, 0.0) + v)
        self.free_gpu_ids = sorted(set(self.free_gpu_ids) | set(gpu_ids))

    def add_resources(self, extra: dict[str, float]) -> None:
        """New named resources (a committed placement-group bundle's), available at once."""
        for k, v in extra.items():
            self.total[k] = self.total.get(k, 0.0) + v
            self.available[k] = self.available.get(k, 0.0) + v

    def remove_resources(self, extra: dict[str, float]) -> None:
        """Take back what add_resources gave; names left with nothing disappear."""
        for k, v in extra.items():
            self.total[k] = self.total.get(k, 0.0) - v
            self.available[k] = self.available.get(k, 0.0) - v
            if self.total[k] <= EPS:
                self.total.pop(k, None)
                self.available.pop(k, None)

    def lend_cpu(self, cpus: float) -> None:
        self.available["CPU"] = self.available.get("CPU", 0.0) + cpus

    def reclaim_cpu(self, cpus: float) -> None:
        self.available["CPU"] = self.available.get("CPU", 0.0) - cpus


@dataclass
class LeaseRequest:
    request_id: int
    demand: dict[str, float]
    env_key: str
    payload: object = None  # opaque to the policy (the I/O shell's reply handle)
    pinned: bool = False  # must run on this node (spilled here once, an actor placed here, affinity)


class LeaseQueue:
    """FIFO of lease requests; grants every request that fits, in arrival order.

    A request that does not fit waits; later, smaller requests may pass it (no
    head-of-line blocking), and infeasible requests are reported once each.
    """

    def __init__(self, pool: ResourcePool) -> None:
        self.pool = pool
        self.waiting: OrderedDict[int, LeaseRequest] = OrderedDict()

    def add(self, req: LeaseRequest) -> bool:
        """Queue a request; returns False when no amount of waiting can satisfy it."""
        self.waiting[req.request_id] = req
        return self.pool.feasible(req.demand)

    def cancel(self, request_id: int) -> LeaseRequest | None:
        return self.waiting.pop(request_id, None)

    def grantable(self) -> list[tuple[LeaseRequest, list[int]]]:
        """Acquire resources for every waiting request that fits now."""
        out = []
        for rid in list(self.waiting):
            req = self.waiting[rid]
            if self.pool.fits(req.demand):
                del self.waiting[rid]
                out.append((req, self.pool.acquire(req.demand)))
        return out

    def demand_summary(self) -> list[dict[str, float]]:
        return [r.demand for r in self.waiting.values()]


# -- placement groups -------------------------------------------------------------------------
# As in Ray, a committed bundle turns its share of the node into resources named after the
# group: `CPU_group_<i>_<pg>` (bundle i) and `CPU_group_<pg>` (any bundle of the group), plus
# `bundle_group_...` so that tasks asking for nothing can still be placed in a bundle. A task
# scheduled into a group asks for those names instead of plain CPU, so only the group's
# reservation can serve it, and the rest of the node cannot.
BUNDLE_UNIT = 1000.0  # bundle_group_* per bundle; a task in a bundle asks for 0.001 of it


def bundle_resources(pg_id: str, index: int, bundle: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in bundle.items():
        out[f"{k}_group_{index}_{pg_id}"] = v
        out[f"{k}_group_{pg_id}"] = v
    out[f"bundle_group_{index}_{pg_id}"] = BUNDLE_UNIT
    out[f"bundle_group_{pg_id}"] = BUNDLE_UNIT
    return out


def demand_in_group(demand: dict[str, float], pg_id: str, index: int) -> dict[str, float]:
    """What a task asking for `demand` must ask for to run in bundle `index` (-1: any bundle)."""
    suffix = f"_group_{pg_id}" if index < 0 else f"_group_{index}_{pg_id}"
    out = {k + suffix: v for k, v in demand.items()}
    out["bundle" + suffix] = BUNDLE_UNIT / 1_000_000
    return out


def is_group_resource(name: str) -> bool:
    return "_group_" in name
