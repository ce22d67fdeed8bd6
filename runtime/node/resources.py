"""Resource arithmetic and the lease queue policy of one node (sans-I/O, unit-tested).

Quantities are floats; CPU can go negative while tasks that lent their CPU (blocked in
`get`) take it back, as in Ray, so a nested task never deadlocks the pool.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

EPS = 1e-9


def normalize(demand: dict[str, float] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in (demand or {}).items():
        if not isinstance(k, str):
            raise ValueError(f"Resource names must be strings, got {k!r}.")
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
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
            self.available[k] = min(self.total.get(k, 0.0), self.available.get(k, 0.0) + v)
        self.free_gpu_ids = sorted(set(self.free_gpu_ids) | set(gpu_ids))

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
