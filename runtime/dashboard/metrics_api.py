"""`GET /metrics` on the dashboard: the whole cluster's Prometheus metrics in one scrape.

Each node serves its own (runtime/node/metrics_export.py); this asks every live node at once and
merges the families by name (a family may appear once in an exposition), for a user who points
one Prometheus job, or `curl`, at the dashboard. Each sample gets the `instance` label of the node
endpoint it came from, as a federating Prometheus would add: nodes on one machine share their
`NodeAddress`. A node that does not answer in time is left out
and counted in `ray_dashboard_unreachable_nodes`, not a failed scrape.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from ..node.metrics_export import Families
from ..rpc import tls

routes = web.RouteTableDef()
NODE_TIMEOUT_S = 5.0


@routes.get("/metrics")
async def cluster_metrics(request: web.Request) -> web.Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.parser import text_string_to_metric_families

    reply, _ = await request.app["gcs"].call({"op": "list_nodes"})
    targets = [n["metrics_export_address"] for n in reply["nodes"] if n["alive"] and n.get("metrics_export_address")]
    timeout = aiohttp.ClientTimeout(total=NODE_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        texts = await asyncio.gather(*(_scrape(session, t) for t in targets))
    merged: dict[str, object] = {}
    for target, text in zip(targets, texts):
        for fam in text_string_to_metric_families(text or ""):
            fam.samples = [s._replace(labels={**s.labels, "instance": target}) for s in fam.samples]
            known = merged.setdefault(fam.name, fam)
            if known is not fam:
                known.samples.extend(fam.samples)
    unreachable = GaugeMetricFamily("ray_dashboard_unreachable_nodes",
                                    "live nodes whose metrics endpoint did not answer this scrape")
    unreachable.add_metric([], sum(1 for t in texts if t is None))
    merged[unreachable.name] = unreachable
    return web.Response(body=generate_latest(Families(list(merged.values()))),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _scrape(session: aiohttp.ClientSession, target: str) -> str | None:
    try:
        async with session.get(f"{tls.scheme()}://{target}/metrics", ssl=tls.client_context() or True) as resp:
            return await resp.text() if resp.status == 200 else None
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        return None

