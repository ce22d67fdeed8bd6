"""The autoscaler's monitor loop: every `interval_s`, read the cluster's state from the control
store, let the policy decide (policy.py), and have the provider carry it out.

Run on the head: `python -m runtime.autoscaler.monitor --config cluster.yaml` (`runtime up`
and `runtime start --head --autoscaling-config` start it). What it reads: every node's total and
free resources and the lease requests waiting on it, the placement groups still pending, and
the bundles asked for with `runtime.autoscaler.sdk.request_resources`.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from typing import Callable

from .._core import launcher
from .config import ClusterConfig, load_cluster_config
from .policy import NodeState, PlacementGroupDemand, ScaleDecision, decide
from .provider import NodeProvider

logger = logging.getLogger("runtime.autoscaler")

REQUEST_KEY = "__autoscaler_request_resources"  # KV key of request_resources() (sdk.py)
_WORK = ("CPU", "GPU")  # a node using any of these (or a custom resource) is busy


class Monitor:
    def __init__(self, cluster: ClusterConfig, provider: NodeProvider, gcs: Callable[[dict], dict],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cluster = cluster
        self.provider = provider
        self.gcs = gcs  # one request to the control store
        self.clock = clock
        self.idle_since: dict[str, float] = {}
        self.last: ScaleDecision | None = None

    def snapshot(self) -> dict:
        return self.gcs({"op": "autoscaler_state"})

    def step(self) -> ScaleDecision:
        state = self.snapshot()
        now = self.clock()
        provider_nodes = self.provider.non_terminated_nodes()
        alive = {n["node_id"]: n for n in state["nodes"]}
        by_host = {n["hostname"]: n for n in state["nodes"]}
        if hasattr(self.provider, "joined"):
            self.provider.joined = set(alive)
        nodes, pending = [], []
        for n in state["nodes"]:
            pending.extend(d for d in n["pending"] if not any("_group_" in k for k in d))
            if n["is_head"]:
                nodes.append(NodeState(n["node_id"], self.cluster.head_node_type, n["total"], n["available"],
                                       self._idle(n, now), is_head=True))
        for p in provider_nodes:
            n = alive.get(p.node_id) or by_host.get(p.node_id)
            if n is None:
                nodes.append(NodeState(p.node_id, p.node_type, starting=True))
            else:
                nodes.append(NodeState(p.node_id, p.node_type, n["total"], n["available"], self._idle(n, now)))
        groups = [PlacementGroupDemand(g["bundles"], g["strategy"], g.get("name", "")) for g in state["pending_pgs"]]
        decision = decide(**self.cluster.decide_kwargs(), nodes=nodes, now=now, pending=pending,
                          placement_groups=groups, requested=state.get("requested") or ())
        for node_type, count in decision.launch.items():
            if count > 0:
                self.provider.create_nodes(node_type, count)
        if decision.terminate:
            self.provider.terminate_nodes(list(decision.terminate))
            for node_id in decision.terminate:
                self.idle_since.pop(node_id, None)
        if not decision.is_noop:
            for line in decision.summary():
                logger.info("%s", line)
        self.last = decision
        return decision

    def _idle(self, node: dict, now: float) -> float | None:
        """When the node last became idle (nothing of its CPU, GPU or custom resources in use and
        nothing waiting on it), or None while it has work."""
        busy = bool(node["pending"]) or any(
            node["available"].get(k, 0.0) + 1e-9 < v for k, v in node["total"].items()
            if k in _WORK or not (k in ("memory", "object_store_memory") or k.startswith("node:") or "_group_" in k))
        if busy:
            self.idle_since.pop(node["node_id"], None)
            return None
        return self.idle_since.setdefault(node["node_id"], now)

    def run(self, interval_s: float, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - one bad round must not stop autoscaling
                logger.warning("autoscaler round failed: %s", e)
            stop.wait(interval_s)


def make_provider(cluster: ClusterConfig, head_info: dict) -> NodeProvider:
    if cluster.provider.type == "kubernetes":
        from .kubernetes import KubernetesProvider
        return KubernetesProvider.from_config(cluster)
    from .local import LocalProvider
    return LocalProvider(cluster, head_info)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m runtime.autoscaler.monitor")
    p.add_argument("--config", required=True, help="the cluster YAML")
    p.add_argument("--cluster-info", required=True, help="cluster.json of the running head")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between rounds")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s autoscaler: %(message)s")
    cluster = load_cluster_config(args.config)
    with open(args.cluster_info) as f:
        info = json.load(f)
    provider = make_provider(cluster, info)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def gcs(msg: dict) -> dict:
        return launcher.gcs_request(info["gcs_address"], info["token"], msg)

    logger.info("autoscaling cluster %r (%s provider) every %g s", cluster.cluster_name, cluster.provider.type,
                args.interval)
    Monitor(cluster, provider, gcs).run(args.interval, stop)
    sys.exit(0)


if __name__ == "__main__":
    main()
