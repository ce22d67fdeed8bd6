"""The cluster's nodes and resources as the control store reports them, in Ray's formats, for a
given core worker. The public calls (api.nodes, api.cluster_resources, ...) and the notebook
repr of init()'s result (session.ClusterContext) both read them here."""

from __future__ import annotations

from typing import Any


def nodes(cw: Any) -> list[dict]:
    """The cluster's nodes, in Ray's format."""
    reply, _ = cw.run_sync(cw.gcs_request({"op": "list_nodes"}))
    out = []
    for n in reply["nodes"]:
        out.append({"NodeID": n["node_id"], "Alive": n["alive"], "NodeManagerAddress": n["node_ip"],
                    "NodeManagerHostname": n["hostname"], "NodeManagerPort": int(n["address"].rsplit(":", 1)[1]),
                    "ObjectStoreSocketName": n["shm_dir"], "Resources": n["resources"], "IsHead": n["is_head"],
                    "Labels": n.get("labels") or {}, "alive": n["alive"],
                    "MetricsExportPort": int(n["metrics_export_address"].rsplit(":", 1)[1])
                    if n.get("metrics_export_address") else None})
    return out


def _resource_snapshot(cw: Any) -> dict:
    reply, _ = cw.run_sync(cw.gcs_request({"op": "cluster_resources"}))
    return reply["nodes"]


def cluster_resources(cw: Any) -> dict[str, float]:
    """Total resources of all alive nodes."""
    total: dict[str, float] = {}
    for node in _resource_snapshot(cw).values():
        for k, v in node["total"].items():
            total[k] = total.get(k, 0.0) + v
    return total


def available_resources(cw: Any) -> dict[str, float]:
    """Resources not currently held by tasks, actors or reservations."""
    avail: dict[str, float] = {}
    for node in _resource_snapshot(cw).values():
        for k, v in node["available"].items():
            if v > 0:
                avail[k] = avail.get(k, 0.0) + v
    return avail
