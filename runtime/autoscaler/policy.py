"""The autoscaler's decisions: which nodes to launch, which to stop, and what can never fit.

Pure and I/O-free, like `runtime.node.resources`: the monitor loop gathers a snapshot (node
types from the cluster config, the worker nodes and what they hold, the demand the schedulers
could not place) and `decide()` returns a `ScaleDecision`. There is no clock in here: `now` is
an argument, so tests move time by passing numbers.

A decision is made in this order (the order of Ray's resource demand scheduler):

1. min_workers: launch nodes until every type has its minimum.
2. request_resources: the requested bundles must fit in the cluster's *total* capacity (what
   is in use does not matter); launch nodes for what does not.
3. pending demand (task and actor leases, placement-group bundles) is packed first-fit-
   decreasing onto the *free* capacity of the existing and starting nodes, then onto the nodes
   launched in steps 1-3, then onto new nodes of the smallest type that holds it, within
   max_workers (cluster-wide and per type) and the optional upscaling_speed cap.
4. idle nodes: a worker idle for idle_timeout_s, whose capacity no demand of steps 2-3 uses,
   is terminated; never below its type's min_workers and never one with work on it.

Demand that fits no node type (and no existing node) is reported as infeasible with a sentence
saying why; demand that could fit but cannot be placed now (limits) is reported as waiting.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

EPS = 1e-9

# With upscaling_speed set, this many nodes of a type may always be starting at once, so a
# cluster at zero nodes of a type can still grow (speed * 0 running would allow none).
UPSCALING_FLOOR = 5

PG_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")

Resources = Mapping[str, float]


def normalize_resources(resources: Resources | None, what: str = "resources") -> dict[str, float]:
    """A copy with float amounts and without zero amounts; negative or non-numeric amounts fail."""
    out: dict[str, float] = {}
    for name, amount in (resources or {}).items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{what}: resource names must be non-empty strings, got {name!r}.")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0 or math.isnan(amount):
            raise ValueError(f"{what}: resource {name!r} must be a non-negative number, got {amount!r}.")
        if amount > 0:
            out[name] = float(amount)
    return out


def _capacity(resources: Resources) -> dict[str, float]:
    # `CPU_group_<pg>`-style names are placement-group reservations carved out of the node's own
    # resources: counting them as well would count that capacity twice.
    return {k: float(v) for k, v in resources.items() if "_group_" not in k}


def _fits(free: Resources, demand: Resources) -> bool:
    return all(free.get(k, 0.0) + EPS >= v for k, v in demand.items())


def _take(free: dict[str, float], demand: Resources) -> None:
    for k, v in demand.items():
        free[k] = free.get(k, 0.0) - v


def _sum(bundles: Iterable[Resources]) -> dict[str, float]:
    out: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _num(v: float) -> int | float:
    return int(v) if float(v).is_integer() else v


def _fmt(resources: Resources) -> str:
    """{'CPU': 2, 'GPU': 1}: integral amounts without the trailing .0, names sorted."""
    return "{" + ", ".join(f"{k!r}: {_num(v)}" for k, v in sorted(resources.items())) + "}"


# -- inputs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeType:
    """A kind of node the provider can launch: `available_node_types.<name>` in the cluster YAML."""

    name: str
    resources: Mapping[str, float]
    max_workers: int
    min_workers: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "resources", normalize_resources(self.resources, f"node type {self.name!r}"))
        if not 0 <= self.min_workers <= self.max_workers:
            raise ValueError(f"node type {self.name!r}: need 0 <= min_workers <= max_workers, "
                             f"got min_workers={self.min_workers}, max_workers={self.max_workers}.")


@dataclass(frozen=True)
class NodeState:
    """One node of the cluster as the monitor sees it.

    `total` and `available` default to the type's resources (all free): a node still starting
    has not reported its own yet. `idle_since` is when the node last had no work; None while it
    has work. The head node (`is_head`) lends its free capacity but is never a worker: it is not
    counted in max_workers or min_workers and never terminated.
    """

    node_id: str
    node_type: str
    total: Mapping[str, float] | None = None
    available: Mapping[str, float] | None = None
    idle_since: float | None = None
    starting: bool = False
    is_head: bool = False


@dataclass(frozen=True)
class PlacementGroupDemand:
    """A placement group waiting for resources. STRICT_PACK needs one node holding the sum of its
    bundles, STRICT_SPREAD one distinct node per bundle; PACK and SPREAD bundles go anywhere."""

    bundles: Sequence[Resources]
    strategy: str = "PACK"
    name: str = ""

    def __post_init__(self) -> None:
        if self.strategy not in PG_STRATEGIES:
            raise ValueError(f"placement group {self.name!r}: unknown strategy {self.strategy!r}; "
                             f"use one of {', '.join(PG_STRATEGIES)}.")


# -- output ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnmetDemand:
    """Demand this decision does not satisfy, and why, in a sentence for `runtime status`."""

    source: str  # "task or actor", "request_resources", "placement group 'g' (STRICT_PACK)", ...
    resources: tuple[dict[str, float], ...]
    reason: str


@dataclass
class ScaleDecision:
    """What the monitor should do now. Empty when the cluster is the right size."""

    launch: dict[str, int] = field(default_factory=dict)  # node type -> nodes to start now
    # node type -> cause -> count, causes being "min_workers", "request_resources", "demand".
    launch_causes: dict[str, dict[str, int]] = field(default_factory=dict)
    terminate: dict[str, str] = field(default_factory=dict)  # node id -> why, longest idle first
    infeasible: list[UnmetDemand] = field(default_factory=list)  # fits no node type, no node
    waiting: list[UnmetDemand] = field(default_factory=list)  # could fit; limits stop it now

    @property
    def is_noop(self) -> bool:
        return not self.launch and not self.terminate

    def summary(self) -> list[str]:
        """One line per action or unmet demand, for the monitor's log."""
        lines = []
        for t, n in sorted(self.launch.items()):
            causes = ", ".join(f"{c}: {k}" for c, k in sorted(self.launch_causes.get(t, {}).items()))
            lines.append(f"launch {n} x {t} ({causes})")
        lines += [f"terminate {node_id}: {why}" for node_id, why in self.terminate.items()]
        lines += [f"infeasible {u.source} {', '.join(map(_fmt, u.resources))}: {u.reason}" for u in self.infeasible]
        lines += [f"waiting {u.source} {', '.join(map(_fmt, u.resources))}: {u.reason}" for u in self.waiting]
        return lines


# -- the plan: bins of capacity, existing and new ---------------------------------------------


@dataclass
class _Bin:
    node_id: str | None  # None for a node this decision launches
    node_type: str
    total: dict[str, float]
    free: dict[str, float]
    kind: str  # "head", "running", "starting" or "new"
    used: bool = False  # demand was packed here: the node is needed


@dataclass
class _Unit:
    """One thing to place: a lease, a STRICT_PACK group (its bundles summed), a bundle of a PACK or
    SPREAD group, a request_resources bundle; or a STRICT_SPREAD group (a distinct bin per part)."""

    source: str
    shown: tuple[dict[str, float], ...]  # what the report shows: the bundles as asked
    parts: list[dict[str, float]]  # what is packed: one entry, or one per STRICT_SPREAD bundle


class _Plan:
    """The nodes as bins of capacity (existing ones, then the ones this decision launches) and
    the counts the launch limits are checked against."""

    def __init__(self, types: dict[str, NodeType], nodes: Sequence[NodeState], max_workers: int | None,
                 upscaling_speed: float | None) -> None:
        self.types = types
        self.max_workers = max_workers
        self.upscaling_speed = upscaling_speed
        self.bins: list[_Bin] = []
        self.workers: dict[str, int] = {}  # type -> worker nodes, starting ones included
        self.running: dict[str, int] = {}
        self.starting: dict[str, int] = {}
        self.causes: dict[str, dict[str, int]] = {}
        busy, idle, starting, heads = [], [], [], []
        for n in nodes:
            known = types.get(n.node_type)
            total = _capacity(n.total if n.total is not None else (known.resources if known else {}))
            avail = _capacity(n.available) if n.available is not None else dict(total)
            kind = "head" if n.is_head else "starting" if n.starting else "running"
            b = _Bin(n.node_id, n.node_type, total, {k: max(v, 0.0) for k, v in avail.items()}, kind)
            if n.is_head:
                heads.append(b)
                continue
            self.workers[n.node_type] = self.workers.get(n.node_type, 0) + 1
            counter = self.starting if n.starting else self.running
            counter[n.node_type] = counter.get(n.node_type, 0) + 1
            if n.starting:
                starting.append(b)
            elif n.idle_since is None:
                busy.append(b)
            else:
                idle.append((n.idle_since, b))
        # First fit tries nodes with work first and the longest-idle nodes last, so demand lands
        # where it keeps the fewest nodes alive and long-idle nodes stay free to be terminated.
        idle.sort(key=lambda p: (-p[0], p[1].node_id))
        self.bins = heads + busy + [b for _, b in idle] + starting

    def total_workers(self) -> int:
        return sum(self.workers.values())

    def launch(self, node_type: str, cause: str) -> _Bin:
        res = dict(self.types[node_type].resources)
        b = _Bin(None, node_type, res, dict(res), "new")
        self.bins.append(b)
        self.workers[node_type] = self.workers.get(node_type, 0) + 1
        self.starting[node_type] = self.starting.get(node_type, 0) + 1
        per_type = self.causes.setdefault(node_type, {})
        per_type[cause] = per_type.get(cause, 0) + 1
        return b

    def headroom(self) -> float:
        return math.inf if self.max_workers is None else self.max_workers - self.total_workers()

    def why_not_launch(self, t: NodeType, cause: str) -> tuple[str, str] | None:
        """None if one more node of type t may be launched for `cause`, else (limit, sentence): the
        limit is "cluster_max", "type_max" or "upscaling_speed"."""
        if self.headroom() <= 0:
            return "cluster_max", f"the cluster is at max_workers ({self.max_workers})"
        if self.workers.get(t.name, 0) >= t.max_workers:
            return "type_max", f"node type {t.name!r} is at its max_workers ({t.max_workers})"
        if cause == "demand" and self.upscaling_speed is not None:
            cap = max(UPSCALING_FLOOR, math.ceil(self.upscaling_speed * self.running.get(t.name, 0)))
            if self.starting.get(t.name, 0) >= cap:
                return "upscaling_speed", (f"upscaling_speed {self.upscaling_speed:g} allows {cap} {t.name!r} "
                                           f"nodes starting at once and {self.starting.get(t.name, 0)} are")
        return None


def _size(resources: Resources, scale: Mapping[str, float]) -> float:
    """Size for first-fit-decreasing and for "smallest type": each amount as a share of the largest
    amount of that resource anywhere, summed, so bytes of memory do not outweigh CPUs."""
    return sum(v / scale[k] if scale.get(k) else v for k, v in resources.items())


def _launchable(types: Mapping[str, NodeType], max_workers: int | None) -> list[NodeType]:
    if max_workers is not None and max_workers <= 0:
        return []
    return [t for t in types.values() if t.max_workers > 0]


def _why_infeasible(part: Resources, types: Mapping[str, NodeType], launchable: list[NodeType],
                    nodes: Mapping[str, dict[str, float]], max_workers: int | None) -> str:
    """Why `part` fits no launchable node type and no existing node, in a sentence."""
    shapes = {f"node type {t.name!r}": dict(t.resources) for t in launchable}
    shapes.update({f"node {n}": total for n, total in nodes.items()})
    blocked = [t.name for t in types.values() if t not in launchable and _fits(t.resources, part)]
    tail = ""
    if blocked:
        limit = "the cluster's max_workers is 0" if max_workers is not None and max_workers <= 0 else "max_workers is 0"
        tail = f" (node type {', '.join(map(repr, blocked))} would hold it, but {limit})"
    if not shapes:
        return "no node type can be launched (every max_workers is 0) and the cluster has no nodes" + tail
    absent = [k for k in sorted(part) if all(k not in s for s in shapes.values())]
    if absent:
        return f"no node type and no node has {', '.join(map(repr, absent))} at all" + tail
    for k in sorted(part):
        best_label, best = max(((label, s.get(k, 0.0)) for label, s in shapes.items()), key=lambda p: p[1])
        if best + EPS < part[k]:
            return (f"it needs {k!r}: {_num(part[k])}, more than any node type or node has "
                    f"(the most is {_num(best)}, on {best_label})") + tail

    def lacking(shape: Resources) -> dict[str, float]:
        return {k: v - shape.get(k, 0.0) for k, v in part.items() if shape.get(k, 0.0) + EPS < v}

    label, shape = min(shapes.items(), key=lambda p: (len(lacking(p[1])), p[0]))
    return (f"no single node type or node has all of it together; the closest, {label} {_fmt(shape)}, "
            f"lacks {_fmt(lacking(shape))}") + tail


# -- the decision ----------------------------------------------------------------------------


def decide(node_types: Mapping[str, NodeType] | Iterable[NodeType], nodes: Sequence[NodeState], *,
           now: float, pending: Sequence[Resources] = (),
           placement_groups: Sequence[PlacementGroupDemand] = (), requested: Sequence[Resources] = (),
           max_workers: int | None = None, idle_timeout_s: float = 300.0,
           upscaling_speed: float | None = None) -> ScaleDecision:
    """Decide launches and terminations for one snapshot of the cluster.

    node_types: the launchable kinds of node (`NodeType`s, or a mapping name -> NodeType).
    nodes: every node, the head included (`is_head=True`) so its capacity counts.
    now: the current time, on the same clock as `NodeState.idle_since`.
    pending: resource demands of task and actor leases no node could grant.
    placement_groups: groups waiting for resources (created ones are not demand).
    requested: `request_resources` bundles; the cluster's total capacity must hold them all.
    max_workers: cluster-wide cap on worker nodes (the head excluded); None for no cap.
    idle_timeout_s: how long a worker must be idle before it is terminated.
    upscaling_speed: when set, at most max(UPSCALING_FLOOR, ceil(speed * running)) nodes of a
        type may be starting at once for pending demand (min_workers and request_resources
        launches are not held back by it, as in Ray).
    """
    types = dict(node_types) if isinstance(node_types, Mapping) else {t.name: t for t in node_types}
    if max_workers is not None and max_workers < 0:
        raise ValueError(f"max_workers must be >= 0 or None, got {max_workers}.")
    if upscaling_speed is not None and upscaling_speed <= 0:
        raise ValueError(f"upscaling_speed must be > 0 or None, got {upscaling_speed}.")
    plan = _Plan(types, nodes, max_workers, upscaling_speed)
    decision = ScaleDecision()
    launchable = _launchable(types, max_workers)
    node_totals = {b.node_id: b.total for b in plan.bins if b.node_id is not None}
    shapes = [dict(t.resources) for t in launchable] + list(node_totals.values())
    scale: dict[str, float] = {}
    for s in shapes:
        for k, v in s.items():
            scale[k] = max(scale.get(k, 0.0), v)

    def feasible(unit: _Unit) -> bool:
        for part in unit.parts:
            if not any(_fits(s, part) for s in shapes):
                decision.infeasible.append(UnmetDemand(unit.source, unit.shown, _why_infeasible(
                    part, types, launchable, node_totals, max_workers)))
                return False
        return True

    # 1. min_workers, types in name order so that a too-small max_workers is shared predictably.
    for t in sorted(types.values(), key=lambda t: t.name):
        while plan.workers.get(t.name, 0) < t.min_workers and plan.why_not_launch(t, "min_workers") is None:
            plan.launch(t.name, "min_workers")

    # 2. request_resources: packed onto every node's total capacity, as if nothing ran.
    requested_units = [_Unit("request_resources", (b,), [b]) for b in map(normalize_resources, requested) if b]
    _pack(filter(feasible, requested_units), lambda b: dict(b.total), plan, "request_resources", scale, decision)

    # 3. pending demand onto free capacity. STRICT_SPREAD groups go first: they are the hardest.
    spread_units, single_units = _demand_units(pending, placement_groups)
    for unit in filter(feasible, spread_units):
        if len(unit.parts) > _max_nodes(plan, max_workers):
            decision.infeasible.append(UnmetDemand(unit.source, unit.shown, (
                f"STRICT_SPREAD needs {len(unit.parts)} distinct nodes, one per bundle, and the cluster can "
                f"have at most {_max_nodes(plan, max_workers)} (the head and max_workers)")))
            continue
        snapshot = copy.deepcopy(plan)
        why = _place_spread(plan, unit, scale)
        if why is not None:
            plan.__dict__.update(snapshot.__dict__)  # all or nothing: no nodes for half a group
            decision.waiting.append(UnmetDemand(unit.source, unit.shown, why))
    _pack(filter(feasible, single_units), lambda b: b.free, plan, "demand", scale, decision)

    for t, causes in plan.causes.items():
        decision.launch[t] = sum(causes.values())
        decision.launch_causes[t] = dict(causes)

    # 4. idle workers to terminate.
    decision.terminate = _terminations(plan, nodes, types, now, idle_timeout_s, max_workers)
    return decision


def _max_nodes(plan: _Plan, max_workers: int | None) -> float:
    """The most nodes the cluster can have: the head(s) plus max_workers (or what runs, if more)."""
    heads = sum(1 for b in plan.bins if b.kind == "head")
    per_type = sum(t.max_workers for t in plan.types.values())
    cap = per_type if max_workers is None else min(max_workers, per_type)
    return heads + max(cap, plan.total_workers())


def _demand_units(pending: Sequence[Resources],
                  groups: Sequence[PlacementGroupDemand]) -> tuple[list[_Unit], list[_Unit]]:
    spread: list[_Unit] = []
    single: list[_Unit] = []
    for d in pending:
        if any("_group_" in k for k in d):
            # A task waiting to run inside a placement group's bundle: only that group's
            # reservation can hold it, and the group itself is the demand to scale for.
            continue
        part = normalize_resources(d, "pending demand")
        if part:
            single.append(_Unit("task or actor", (part,), [part]))
    for g in groups:
        bundles = [normalize_resources(b, f"placement group {g.name!r}") for b in g.bundles]
        bundles = [b for b in bundles if b]
        if not bundles:
            continue
        source = f"placement group {g.name!r} ({g.strategy})" if g.name else f"placement group ({g.strategy})"
        if g.strategy == "STRICT_PACK":
            single.append(_Unit(source, tuple(bundles), [_sum(bundles)]))
        elif g.strategy == "STRICT_SPREAD":
            spread.append(_Unit(source, tuple(bundles), bundles))
        else:
            single += [_Unit(f"{source} bundle {i}", (b,), [b]) for i, b in enumerate(bundles)]
    return spread, single


def _pack(units: Iterable[_Unit], capacity: Callable[[_Bin], dict[str, float]], plan: _Plan, cause: str,
          scale: Mapping[str, float], decision: ScaleDecision) -> None:
    """First-fit-decreasing: each unit onto the first node with room, else onto a new node.
    `capacity(bin)` is what fills up: the node's free capacity, or a copy of its total for
    request_resources."""
    caps = [capacity(b) for b in plan.bins]
    # Capacity only shrinks while packing and the limits only tighten, so for a shape that found
    # no room in nodes [0, i) later units of that shape start at i, and a shape that could not
    # be placed at all gets the same answer without trying again. Thousands of identical task
    # demands then cost about as much as one.
    start: dict[tuple, int] = {}
    failed: dict[tuple, str] = {}
    for unit in sorted(units, key=lambda u: -_size(u.parts[0], scale)):
        part = unit.parts[0]
        shape = tuple(sorted(part.items()))
        if shape in failed:
            decision.waiting.append(UnmetDemand(unit.source, unit.shown, failed[shape]))
            continue
        i = next((i for i in range(start.get(shape, 0), len(caps)) if _fits(caps[i], part)), None)
        if i is None:
            placed = _place_new(plan, part, cause, scale)
            if isinstance(placed, str):
                failed[shape] = placed
                decision.waiting.append(UnmetDemand(unit.source, unit.shown, placed))
                continue
            caps.append(capacity(placed))
            i = len(caps) - 1
        start[shape] = i
        _take(caps[i], part)
        plan.bins[i].used = True


def _place_new(plan: _Plan, part: Resources, cause: str, scale: Mapping[str, float]) -> _Bin | str:
    """Launch the smallest type that holds `part` and may grow; else the sentence why none."""
    lead = ("the cluster's total capacity cannot hold it" if cause == "request_resources"
            else "no node has free capacity for it")
    fitting = sorted((t for t in plan.types.values() if t.max_workers > 0 and _fits(t.resources, part)),
                     key=lambda t: (_size(t.resources, scale), t.name))
    if not fitting:
        return f"{lead}, and it fits only on existing nodes (no node type that can be launched holds it)"
    reasons = []
    for t in fitting:
        why = plan.why_not_launch(t, cause)
        if why is None:
            return plan.launch(t.name, cause)
        limit, sentence = why
        reasons.append(sentence)
        # A type at its max can never grow, so a bigger type may serve instead. A rate limit only
        # delays the smaller type, and a bigger node would cost more for its whole life: wait.
        if limit != "type_max":
            break
    return f"{lead}, and no node can be launched for it: " + "; ".join(reasons)


def _place_spread(plan: _Plan, unit: _Unit, scale: Mapping[str, float]) -> str | None:
    """Place each STRICT_SPREAD bundle on a node of its own; None, or why not (plan then dirty)."""
    taken: set[int] = set()
    for i, part in sorted(enumerate(unit.parts), key=lambda p: -_size(p[1], scale)):
        target = next((b for b in plan.bins if id(b) not in taken and _fits(b.free, part)), None)
        if target is None:
            placed = _place_new(plan, part, "demand", scale)
            if isinstance(placed, str):
                return f"STRICT_SPREAD needs {len(unit.parts)} distinct nodes; bundle {i} has none: {placed}"
            target = placed
        _take(target.free, part)
        target.used = True
        taken.add(id(target))
    return None


def _has_work(n: NodeState, total: Mapping[str, float]) -> bool:
    if n.idle_since is None:
        return True
    avail = _capacity(n.available) if n.available is not None else total
    return any(avail.get(k, 0.0) + EPS < v for k, v in total.items())


def _terminations(plan: _Plan, nodes: Sequence[NodeState], types: Mapping[str, NodeType], now: float,
                  idle_timeout_s: float, max_workers: int | None) -> dict[str, str]:
    used = {b.node_id for b in plan.bins if b.used and b.node_id is not None}
    candidates = []
    for n in nodes:
        if n.is_head or n.starting or n.node_id in used:
            continue
        known = types.get(n.node_type)
        total = _capacity(n.total if n.total is not None else (known.resources if known else {}))
        if not _has_work(n, total):
            candidates.append(n)
    candidates.sort(key=lambda n: (n.idle_since, n.node_id))  # longest idle first
    count = {t: c for t, c in plan.workers.items()}  # includes this decision's launches
    existing_total = sum(1 for n in nodes if not n.is_head)
    out: dict[str, str] = {}

    def drop(n: NodeState, why: str) -> None:
        out[n.node_id] = why
        count[n.node_type] -= 1

    def floor(n: NodeState) -> int:
        t = types.get(n.node_type)
        return t.min_workers if t else 0

    # Above a max_workers (lowered in the config, say): idle nodes go without waiting for the
    # timeout, though min_workers still holds (a type's min is at most its max).
    for n in candidates:
        t = types.get(n.node_type)
        type_max = t.max_workers if t else 0
        if count[n.node_type] > type_max:
            drop(n, f"node type {n.node_type!r} has {count[n.node_type]} workers, above its max_workers ({type_max})")
        elif (max_workers is not None and existing_total - len(out) > max_workers
              and count[n.node_type] - 1 >= floor(n)):
            drop(n, f"the cluster has {existing_total - len(out)} workers, above max_workers ({max_workers})")
    for n in candidates:
        if n.node_id in out or now - n.idle_since < idle_timeout_s or count[n.node_type] - 1 < floor(n):
            continue
        drop(n, f"idle for {now - n.idle_since:.0f} s (idle_timeout {idle_timeout_s:.0f} s)")
    return out
