"""Each node's Prometheus endpoint: its processes' application metrics and its system metrics.

Drivers and workers send their `runtime.util.metrics` values to their node manager
(`metrics_report`, core_worker.report_metrics); the node manager keeps the last report of each
process and serves them on `--metrics-export-port` beside what it knows itself: object store,
resources, workers, waiting demand, CPU and memory. The head's also carries the cluster's counts
of tasks, actors, placement groups, jobs and nodes, asked of the control store at each scrape, so
that they appear once. Names and labels follow Ray's (`ray_` prefix; `SessionName`,
`NodeAddress`; `WorkerId` and `Component` on application metrics), so Ray's Grafana panels and
our deploy/ files work unchanged.

Like the dashboard, the endpoint starts on first use: the port is bound with the node, and
aiohttp and prometheus-client are imported when the first scrape arrives. A node nobody scrapes
pays one socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from typing import Any

import psutil

from ..rpc import tls

logger = logging.getLogger("runtime.node")
DEAD_REPORT_TTL_S = 300.0  # the last values of an exited process are still served this long
PREFIX = "ray_"  # Ray's, so that dashboards and alert rules written for Ray find our series


class MetricsExporter:
    def __init__(self, daemon: Any, fd: int | None) -> None:
        self.daemon = daemon
        self.sock = socket.socket(fileno=fd) if fd is not None else None
        self.address = "{}:{}".format(*self.sock.getsockname()[:2]) if self.sock is not None else ""
        self.port = self.sock.getsockname()[1] if self.sock is not None else None
        self.reports: dict[str, dict] = {}  # worker id -> {"component", "families", "gone_at"}
        self.runner: Any = None
        self.loop: Any = None

    # -- reports from this node's processes ------------------------------------------------
    def report(self, worker_id: str, component: str, families: list) -> None:
        if not well_formed(families):  # kept, it would break every scrape of this node for DEAD_REPORT_TTL_S
            logger.warning("metrics: dropped a malformed report from %s", str(worker_id)[:16])
            return
        self.reports[worker_id] = {"component": component, "families": families, "gone_at": None}

    def worker_gone(self, worker_id: str) -> None:
        rec = self.reports.get(worker_id)
        if rec is not None:
            rec["gone_at"] = time.monotonic()

    def _live_reports(self) -> list[tuple[str, dict]]:
        now = time.monotonic()
        for wid in [w for w, r in self.reports.items() if r["gone_at"] and now - r["gone_at"] > DEAD_REPORT_TTL_S]:
            del self.reports[wid]
        return list(self.reports.items())

    # -- serving -------------------------------------------------------------------------
    def start(self, loop: Any) -> None:
        if self.sock is not None:
            self.loop = loop
            loop.add_reader(self.sock.fileno(), self._activate)

    def _activate(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        task = self.loop.create_task(self._serve())
        task.add_done_callback(lambda t: t.cancelled() or not t.exception() or
                               logger.error("the metrics endpoint did not start: %s", t.exception()))

    async def _serve(self) -> None:
        try:
            from aiohttp import web
            import prometheus_client  # noqa: F401 - checked here, used by render()
        except ImportError as e:
            logger.error("metrics export needs aiohttp and prometheus-client (pip install 'orrery[dashboard]'): "
                         "%s; closing port %s", e, self.address)
            self.sock.close()
            self.sock = None
            return

        async def metrics(request: web.Request) -> web.Response:
            body, content_type = await self.render()
            return web.Response(body=body, headers={"Content-Type": content_type})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/", metrics)
        # An idle connection (no request yet, or headers sent slowly) is closed after hello_timeout_s.
        self.runner = web.AppRunner(app, access_log=None, keepalive_timeout=self.daemon.config.hello_timeout_s)
        await self.runner.setup()
        await web.SockSite(self.runner, self.sock, ssl_context=tls.server_context()).start()  # HTTPS under TLS
        logger.info("metrics endpoint serving on %s", self.address)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        elif self.sock is not None:
            if self.loop is not None:
                self.loop.remove_reader(self.sock.fileno())
            self.sock.close()

    async def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        cluster = None
        if self.daemon.args.get("head") and self.daemon.gcs is not None and not self.daemon.gcs.closed:
            try:
                cluster, _ = await self.daemon.gcs.request({"op": "cluster_metrics"}, timeout=5)
            except (ConnectionError, OSError, asyncio.TimeoutError) as e:
                logger.warning("metrics: no cluster counts from the control store (%s)", e)
        families = list(self.system_families()) + list(self.application_families())
        if cluster is not None:
            families += list(cluster_families(cluster, self.base_labels()))
        return generate_latest(Families(families)), CONTENT_TYPE_LATEST

    # -- what is served --------------------------------------------------------------------
    def base_labels(self) -> dict[str, str]:
        return {"SessionName": os.path.basename(self.daemon.session_dir), "NodeAddress": self.daemon.args["node_ip"]}

    def application_families(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        merged: dict[str, tuple] = {}  # name -> (family, its label names)
        base = self.base_labels()
        for worker_id, rec in self._live_reports():
            extra = {**base, "WorkerId": worker_id, "Component": rec["component"]}
            for fam in rec["families"]:
                name = PREFIX + fam["name"]
                keys = list(fam["tag_keys"])
                label_names = keys + [k for k in extra if k not in keys]
                if name not in merged:
                    cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
                           "histogram": HistogramMetricFamily}[fam["kind"]]
                    merged[name] = (cls(name, fam["description"] or fam["name"], labels=label_names), label_names)
                out, declared = merged[name]
                if declared != label_names or out.type != fam["kind"]:
                    continue  # two processes declared the name differently: the first one wins
                for tag_values, value in fam["samples"]:
                    labels = list(tag_values) + [extra[k] for k in label_names[len(keys):]]
                    if fam["kind"] == "histogram":
                        bounds, counts = fam["boundaries"], value[:-2]
                        cumulative, buckets = 0.0, []
                        for le, n in zip([*map(_le, bounds), "+Inf"], counts):
                            cumulative += n
                            buckets.append((le, cumulative))
                        out.add_metric(labels, buckets=buckets, sum_value=value[-2])
                    else:
                        out.add_metric(labels, value)
        return [fam for fam, _ in merged.values()]

    def system_families(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        d = self.daemon
        base = self.base_labels()
        names, values = list(base), list(base.values())

        def gauge(name: str, doc: str, value: float | None = None, labels: tuple = ()) -> Any:
            fam = GaugeMetricFamily(PREFIX + name, doc, labels=names + list(labels))
            if value is not None:
                fam.add_metric(values, value)
            return fam

        mem = psutil.virtual_memory()
        yield gauge("node_cpu_count", "CPUs of this machine", psutil.cpu_count() or 0)
        yield gauge("node_cpu_utilization", "CPU use of this machine, percent", psutil.cpu_percent(interval=None))
        yield gauge("node_mem_total", "memory of this machine, bytes", mem.total)
        yield gauge("node_mem_used", "memory in use on this machine, bytes", mem.total - mem.available)
        yield gauge("node_mem_available", "memory available on this machine, bytes", mem.available)

        store = d.store.describe()
        objects = gauge("object_store_memory", "object store bytes by where they are", labels=("Location",))
        spilled = sum(o.size for o in d.store.objects.values() if o.spilled_path)
        objects.add_metric(values + ["MMAP_SHM"], store["used_bytes"])
        objects.add_metric(values + ["SPILLED"], spilled)
        yield objects
        yield gauge("object_store_available_memory", "object store bytes free",
                    max(0, store["capacity_bytes"] - store["used_bytes"]))
        yield gauge("object_store_capacity_bytes", "object store capacity, bytes", store["capacity_bytes"])
        yield gauge("object_store_num_local_objects", "objects in this node's store", store["num_objects"])
        for key, doc in (("spilled_bytes_total", "bytes spilled to disk"),
                         ("restored_bytes_total", "bytes restored from disk")):
            fam = CounterMetricFamily(PREFIX + "object_store_" + key, doc, labels=names)
            fam.add_metric(values, store[key])
            yield fam

        resources = gauge("resources", "logical resources of this node", labels=("Name", "State"))
        for name, total in d.pool.total.items():
            if name.startswith("node:") or "_group_" in name:
                continue
            free = d.pool.available.get(name, 0.0)
            resources.add_metric(values + [name, "USED"], total - free)
            resources.add_metric(values + [name, "AVAILABLE"], free)
        yield resources

        workers = gauge("workers", "worker processes of this node by state", labels=("State",))
        counts: dict[str, int] = {"starting": 0, "idle": 0, "leased": 0, "actor": 0}
        for w in d.workers.values():
            if w.state != "dead":
                counts[w.state] = counts.get(w.state, 0) + 1
        for state, n in counts.items():
            workers.add_metric(values + [state.upper()], n)
        yield workers

        demand = gauge("resource_demand", "resources asked for by lease requests waiting at this node",
                       labels=("Name", "State"))
        requests = gauge("pending_lease_requests", "lease requests waiting at this node", labels=("State",))
        nodes = [dict(d.pool.total)] + [dict(p.get("resources") or {}) for p in d.peers.values()]
        sums: dict[tuple, float] = {}
        n_by_state = {"PENDING": 0, "INFEASIBLE": 0}
        for want in d.leases.demand_summary():
            fits = any(all(n.get(k, 0.0) + 1e-9 >= v for k, v in want.items()) for n in nodes)
            state = "PENDING" if fits or any("_group_" in k for k in want) else "INFEASIBLE"
            n_by_state[state] += 1
            for k, v in want.items():
                sums[(k, state)] = sums.get((k, state), 0.0) + v
        for (k, state), v in sums.items():
            demand.add_metric(values + [k, state], v)
        for state, n in n_by_state.items():
            requests.add_metric(values + [state], n)
        yield demand
        yield requests


def cluster_families(counts: dict, base: dict[str, str]) -> Any:
    """The control store's counts (GCS op `cluster_metrics`), served by the head only."""
    from prometheus_client.core import GaugeMetricFamily
    names, values = list(base), list(base.values())
    for key, doc, labels in (("tasks", "tasks by state and function (ended states count every task that "
                                       "ended)", ("State", "Name")),
                             ("actors", "actors by state and class", ("State", "Name")),
                             ("placement_groups", "placement groups by state", ("State",)),
                             ("jobs", "jobs (drivers and submitted jobs) by status", ("State",)),
                             ("cluster_nodes", "nodes by state", ("State",))):
        fam = GaugeMetricFamily(PREFIX + key, doc, labels=names + list(labels))
        for row in counts.get("nodes" if key == "cluster_nodes" else key, ()):
            fam.add_metric(values + [str(x) for x in row[:-1]], row[-1])
        yield fam


_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")  # runtime/util/metrics.py's METRIC_NAME_RE and TAG_KEY_RE
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def well_formed(families: Any) -> bool:
    """A report as core workers send it (runtime/_core/metrics_registry.py `snapshot`): names and
    tag keys Prometheus takes, string tag values, numbers, histogram rows of the right length."""
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    def names(x: Any, pattern: re.Pattern) -> bool:
        return isinstance(x, list) and all(isinstance(k, str) and pattern.match(k) for k in x)

    if not isinstance(families, list):
        return False
    for fam in families:
        if not (isinstance(fam, dict) and names([fam.get("name")], _NAME) and names(fam.get("tag_keys"), _LABEL)
                and fam.get("kind") in ("counter", "gauge", "histogram") and isinstance(fam.get("samples"), list)
                and isinstance(fam.get("description") or "", str)):
            return False
        bounds = fam.get("boundaries")
        if fam["kind"] == "histogram" and not (isinstance(bounds, list) and all(map(number, bounds))):
            return False
        for sample in fam["samples"]:
            if not (isinstance(sample, list) and len(sample) == 2 and isinstance(sample[0], list)
                    and len(sample[0]) == len(fam["tag_keys"]) and all(isinstance(v, str) for v in sample[0])):
                return False
            value = sample[1]
            if fam["kind"] != "histogram" and not number(value):
                return False
            if fam["kind"] == "histogram" and not (isinstance(value, list) and len(value) == len(bounds) + 3
                                                   and all(map(number, value))):
                return False
    return True


class Families:
    """What generate_latest() collects from: the families built for one scrape."""

    def __init__(self, families: list) -> None:
        self.families = families

    def collect(self) -> list:
        return self.families


def _le(bound: float) -> str:
    return repr(float(bound))
