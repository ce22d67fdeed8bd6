"""The cluster YAML: read, validate, and turn into the policy's `NodeType`s.

The schema is a subset of Ray's cluster YAML, so a Ray config with the same keys loads:

    cluster_name: orrery
    max_workers: 4                 # worker nodes, the head not counted (default 2, as in Ray)
    idle_timeout_minutes: 5        # default 5
    upscaling_speed: 1.0           # optional, default 1.0
    provider:
      type: kubernetes             # or: local (node managers on this machine)
      namespace: orrery            # kubernetes only; default "default"
      head_service: orrery-head    # kubernetes only; default <cluster_name>-head
      worker_deployment: orrery-worker   # kubernetes only; or {node type: Deployment}
    head_node_type: head
    available_node_types:
      head:   {resources: {CPU: 2}, min_workers: 0, max_workers: 0}
      worker: {resources: {CPU: 2, x86: 1}, min_workers: 1, max_workers: 4,
               object_store_memory: 1073741824}

Every mistake is a ValueError naming the key and what it expects; an unknown key fails with a
suggestion, so a typo never silently turns into a default. Ray keys that only matter to Ray's
own node launcher (setup_commands, auth, docker, node_config, ...) are accepted and listed in
`ClusterConfig.ignored_keys`, so the monitor can say they had no effect.

PyYAML is imported when a file or text is loaded, not at import time.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .policy import NodeType, normalize_resources

PROVIDER_TYPES = ("local", "kubernetes")

_TOP_KEYS = {"cluster_name", "provider", "max_workers", "idle_timeout_minutes", "upscaling_speed",
             "available_node_types", "head_node_type"}
_NODE_TYPE_KEYS = {"resources", "min_workers", "max_workers", "object_store_memory"}
_K8S_KEYS = {"namespace", "head_service", "worker_deployment"}
_PROVIDER_KEYS = {"type"} | _K8S_KEYS

# Ray keys for its SSH/cloud node launcher and its own Kubernetes operator; nothing here uses
# them, but a Ray YAML carrying them should still load.
_RAY_TOP_KEYS = {"auth", "docker", "file_mounts", "cluster_synced_files", "file_mounts_sync_continuously",
                 "rsync_exclude", "rsync_filter", "initialization_commands", "setup_commands",
                 "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
                 "worker_start_ray_commands", "no_restart"}
_RAY_NODE_TYPE_KEYS = {"node_config", "docker", "worker_setup_commands", "labels"}
_RAY_PROVIDER_KEYS = {"use_internal_ips", "cache_stopped_nodes", "disable_node_updaters",
                      "disable_launch_config_check", "foreground_node_launch", "worker_liveness_check",
                      "head_ip", "worker_ips"}

# Kubernetes object names: a DNS-1123 label (namespaces, services) or subdomain (deployments).
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True)
class ProviderConfig:
    type: str
    namespace: str = "default"
    head_service: str = ""
    # node type -> the Deployment whose replicas are that type's workers (kubernetes only)
    worker_deployments: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterConfig:
    cluster_name: str
    provider: ProviderConfig
    max_workers: int
    idle_timeout_minutes: float
    upscaling_speed: float
    node_types: dict[str, NodeType]
    head_node_type: str
    object_store_memory: dict[str, int]  # node type -> bytes, for the types that set it
    ignored_keys: tuple[str, ...] = ()  # Ray-only keys present in the file, e.g. "setup_commands"

    @property
    def idle_timeout_s(self) -> float:
        return self.idle_timeout_minutes * 60.0

    def decide_kwargs(self) -> dict[str, Any]:
        """What `policy.decide()` takes from the config:
        `decide(**cfg.decide_kwargs(), nodes=..., now=..., pending=...)`."""
        return {"node_types": self.node_types, "max_workers": self.max_workers,
                "idle_timeout_s": self.idle_timeout_s, "upscaling_speed": self.upscaling_speed}

    def worker_types(self) -> list[NodeType]:
        """The types the autoscaler may launch (max_workers > 0), by name."""
        return sorted((t for t in self.node_types.values() if t.max_workers > 0), key=lambda t: t.name)


def load_cluster_config(path: str | Path) -> ClusterConfig:
    """Read and validate a cluster YAML file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"cannot read the cluster config {path}: {e.strerror or e}") from e
    return parse_cluster_yaml(text, source=str(path))


def parse_cluster_yaml(text: str, source: str = "cluster config") -> ClusterConfig:
    """Validate cluster YAML given as text; `source` names it in error messages."""
    import yaml  # here, not at the top: only loading a config needs PyYAML

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{source}: not valid YAML: {e}") from e
    return cluster_config_from_dict(data, source=source)


def cluster_config_from_dict(data: Any, source: str = "cluster config") -> ClusterConfig:
    """Validate an already-parsed cluster config (a dict as YAML or JSON gives it)."""
    v = _Validator(source)
    top = v.mapping(data, "", "a mapping of cluster settings (cluster_name, provider, available_node_types, ...)")
    ignored = v.keys(top, "", _TOP_KEYS, _RAY_TOP_KEYS)
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type"):
        if key not in top:
            raise v.error(key, "is required")
    name = top["cluster_name"]
    if not isinstance(name, str) or not name.strip():
        raise v.error("cluster_name", f"must be a non-empty string, got {name!r}")
    max_workers = v.integer(top.get("max_workers", 2), "max_workers")
    idle_minutes = v.number(top.get("idle_timeout_minutes", 5), "idle_timeout_minutes", minimum=0.0)
    speed = v.number(top.get("upscaling_speed", 1.0), "upscaling_speed", minimum=0.0)
    if speed <= 0:
        raise v.error("upscaling_speed", f"must be a number > 0, got {top['upscaling_speed']!r}")

    raw_types = v.mapping(top["available_node_types"], "available_node_types",
                          "a mapping of node type name -> {resources, min_workers, max_workers}")
    if not raw_types:
        raise v.error("available_node_types", "must name at least one node type")
    node_types: dict[str, NodeType] = {}
    object_store: dict[str, int] = {}
    for type_name, spec in raw_types.items():
        where = f"available_node_types.{type_name}"
        if not isinstance(type_name, str) or not type_name:
            raise v.error("available_node_types", f"node type names must be non-empty strings, got {type_name!r}")
        spec = v.mapping(spec, where, "a mapping with resources, min_workers and max_workers")
        ignored += v.keys(spec, where, _NODE_TYPE_KEYS, _RAY_NODE_TYPE_KEYS)
        if "resources" not in spec:
            raise v.error(f"{where}.resources", "is required: what one node of this type offers, like {CPU: 2}")
        resources = v.resources(spec["resources"], f"{where}.resources")
        lo = v.integer(spec.get("min_workers", 0), f"{where}.min_workers")
        hi = v.integer(spec.get("max_workers", max_workers), f"{where}.max_workers")
        if lo > hi:
            raise v.error(f"{where}.min_workers", f"is {lo}, more than {where}.max_workers ({hi})")
        node_types[type_name] = NodeType(type_name, resources, max_workers=hi, min_workers=lo)
        if "object_store_memory" in spec:
            osm = v.integer(spec["object_store_memory"], f"{where}.object_store_memory")
            if osm <= 0:
                raise v.error(f"{where}.object_store_memory", f"must be a number of bytes > 0, got {osm}")
            object_store[type_name] = osm

    head = top["head_node_type"]
    if head not in node_types:
        raise v.error("head_node_type", f"is {head!r}, which is not in available_node_types "
                                        f"({', '.join(map(repr, node_types))})")
    min_sum = sum(t.min_workers for t in node_types.values())
    if min_sum > max_workers:
        raise v.error("max_workers", f"is {max_workers}, fewer than the node types' min_workers add up to ({min_sum})")

    provider, provider_ignored = _provider(v, top["provider"], name, node_types)
    ignored += provider_ignored
    return ClusterConfig(cluster_name=name, provider=provider, max_workers=max_workers,
                         idle_timeout_minutes=idle_minutes, upscaling_speed=speed, node_types=node_types,
                         head_node_type=head, object_store_memory=object_store, ignored_keys=tuple(ignored))


def _provider(v: _Validator, raw: Any, cluster_name: str,
              node_types: Mapping[str, NodeType]) -> tuple[ProviderConfig, list[str]]:
    p = v.mapping(raw, "provider", f"a mapping with at least type ({' or '.join(PROVIDER_TYPES)})")
    ignored = v.keys(p, "provider", _PROVIDER_KEYS, _RAY_PROVIDER_KEYS)
    kind = p.get("type")
    if kind not in PROVIDER_TYPES:
        raise v.error("provider.type", f"must be one of {', '.join(PROVIDER_TYPES)}, got {kind!r}")
    if kind == "local":
        extra = sorted(k for k in _K8S_KEYS if k in p)
        if extra:
            raise v.error(f"provider.{extra[0]}", "is a kubernetes setting, but provider.type is 'local'")
        return ProviderConfig("local"), ignored

    namespace = v.k8s_name(p.get("namespace", "default"), "provider.namespace", _DNS_LABEL)
    service = v.k8s_name(p.get("head_service", f"{cluster_name}-head"), "provider.head_service", _DNS_LABEL)
    workers = sorted(t.name for t in node_types.values() if t.max_workers > 0)
    raw_dep = p.get("worker_deployment", f"{cluster_name}-worker")
    if isinstance(raw_dep, str):
        if len(workers) > 1:
            raise v.error("provider.worker_deployment", (
                f"names one Deployment, but node types {', '.join(map(repr, workers))} can all have workers; "
                "give a mapping {node type: Deployment name}"))
        deployments = {t: v.k8s_name(raw_dep, "provider.worker_deployment", _DNS_SUBDOMAIN) for t in workers}
    else:
        m = v.mapping(raw_dep, "provider.worker_deployment",
                      "a Deployment name, or a mapping {node type: Deployment name}")
        deployments = {}
        for t, dep in m.items():
            if t not in node_types:
                raise v.error(f"provider.worker_deployment.{t}", (
                    f"names a node type that is not in available_node_types ({', '.join(map(repr, node_types))})"))
            deployments[t] = v.k8s_name(dep, f"provider.worker_deployment.{t}", _DNS_SUBDOMAIN)
        missing = [t for t in workers if t not in deployments]
        if missing:
            raise v.error("provider.worker_deployment", (
                f"has no Deployment for node type {', '.join(map(repr, missing))}, which can have workers "
                "(max_workers > 0)"))
    return ProviderConfig("kubernetes", namespace=namespace, head_service=service,
                          worker_deployments=deployments), ignored


class _Validator:
    """Checks one value at a time; errors read '<source>: `<key>` <what is wrong>.'"""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, problem: str) -> ValueError:
        return ValueError(f"{self.source}: `{key}` {problem}." if key else f"{self.source}: {problem}.")

    def mapping(self, value: Any, key: str, expected: str) -> dict:
        if not isinstance(value, dict):
            raise self.error(key, f"must be {expected}, got {type(value).__name__} {value!r}"[:300])
        return value

    def keys(self, m: Mapping, where: str, known: set[str], ray_only: set[str]) -> list[str]:
        """Fail on unknown keys (with the closest known one); return the Ray-only keys present."""
        prefix = f"{where}." if where else ""
        for k in m:
            if k in known or k in ray_only:
                continue
            close = difflib.get_close_matches(str(k), sorted(known), n=1)
            hint = f"did you mean `{prefix}{close[0]}`?" if close else f"known keys: {', '.join(sorted(known))}"
            raise self.error(f"{prefix}{k}", f"is not a known key; {hint}")
        return [f"{prefix}{k}" for k in m if k in ray_only]

    def integer(self, value: Any, key: str) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 1.0e+9 bytes
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.error(key, f"must be a whole number >= 0, got {value!r}{_text_hint(value)}")
        return value

    def number(self, value: Any, key: str, minimum: float) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < minimum:
            raise self.error(key, f"must be a number >= {minimum:g}, got {value!r}{_text_hint(value)}")
        return float(value)

    def resources(self, value: Any, key: str) -> dict[str, float]:
        m = self.mapping(value, key, "a mapping of resource name -> amount, like {CPU: 2, GPU: 1}")
        for name, amount in m.items():
            if _text_hint(amount):
                raise self.error(f"{key}.{name}", f"must be a number, got {amount!r}{_text_hint(amount)}")
        try:
            return normalize_resources(m, f"`{key}`")
        except ValueError as e:
            raise ValueError(f"{self.source}: {e}") from None

    def k8s_name(self, value: Any, key: str, pattern: re.Pattern[str]) -> str:
        if not isinstance(value, str) or not pattern.match(value):
            raise self.error(key, (f"must be a Kubernetes object name (lower-case letters, digits and '-', "
                                   f"starting and ending with a letter or digit), got {value!r}"))
        return value


def _text_hint(value: Any) -> str:
    # YAML 1.1 (PyYAML) reads 1e9 and 1.0e9 as text: only 1.0e+9 or 1000000000 are numbers.
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return " (text, not a number: YAML reads 1e9 as text; write 1000000000 or 1.0e+9)"
    return ""
