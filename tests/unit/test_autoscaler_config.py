"""The cluster YAML: what loads, the defaults, and an error naming the key for each mistake."""

from __future__ import annotations

import copy
import re
import textwrap

import pytest

from runtime.autoscaler.config import (
    cluster_config_from_dict,
    load_cluster_config,
    parse_cluster_yaml,
)
from runtime.autoscaler.policy import NodeState, NodeType, decide

GOOD = textwrap.dedent("""\
    cluster_name: orrery
    max_workers: 6
    idle_timeout_minutes: 2
    upscaling_speed: 2
    provider:
      type: kubernetes
      namespace: orrery
      head_service: orrery-head
      worker_deployment:
        cpu: orrery-worker
        gpu: orrery-gpu-worker
    head_node_type: head
    available_node_types:
      head:
        resources: {CPU: 2}
        max_workers: 0
      cpu:
        resources: {CPU: 2, x86: 1}
        min_workers: 1
        max_workers: 4
        object_store_memory: 1073741824
      gpu:
        resources: {CPU: 4, GPU: 1}
    """)


def base() -> dict:
    """A small valid config as a dict, for tests that change one thing."""
    return {
        "cluster_name": "demo",
        "provider": {"type": "local"},
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 1}, "max_workers": 0},
            "cpu": {"resources": {"CPU": 2}, "min_workers": 0, "max_workers": 3},
        },
    }


def test_a_full_kubernetes_config_loads():
    c = parse_cluster_yaml(GOOD)
    assert c.cluster_name == "orrery" and c.max_workers == 6 and c.head_node_type == "head"
    assert c.idle_timeout_minutes == 2 and c.idle_timeout_s == 120.0 and c.upscaling_speed == 2.0
    assert c.node_types["cpu"] == NodeType("cpu", {"CPU": 2, "x86": 1}, min_workers=1, max_workers=4)
    assert c.node_types["gpu"].max_workers == 6  # a type's max defaults to the cluster's
    assert c.object_store_memory == {"cpu": 1073741824}
    assert [t.name for t in c.worker_types()] == ["cpu", "gpu"]
    p = c.provider
    assert (p.type, p.namespace, p.head_service) == ("kubernetes", "orrery", "orrery-head")
    assert p.worker_deployments == {"cpu": "orrery-worker", "gpu": "orrery-gpu-worker"}
    assert c.ignored_keys == ()


def test_defaults_follow_ray():
    raw = base()
    del raw["available_node_types"]["cpu"]["max_workers"]
    c = cluster_config_from_dict(raw)
    assert c.max_workers == 2 and c.idle_timeout_minutes == 5 and c.upscaling_speed == 1.0
    assert c.node_types["cpu"].max_workers == 2 and c.node_types["cpu"].min_workers == 0
    assert c.provider.type == "local"


def test_kubernetes_names_default_from_the_cluster_name():
    raw = base()
    raw["provider"] = {"type": "kubernetes"}
    p = cluster_config_from_dict(raw).provider
    assert (p.namespace, p.head_service, p.worker_deployments) == ("default", "demo-head", {"cpu": "demo-worker"})


def test_a_single_worker_deployment_name_serves_the_one_worker_type():
    raw = base()
    raw["provider"] = {"type": "kubernetes", "worker_deployment": "workers"}
    assert cluster_config_from_dict(raw).provider.worker_deployments == {"cpu": "workers"}


def test_ray_only_keys_load_and_are_listed():
    raw = base()
    raw["setup_commands"] = ["pip install x"]
    raw["auth"] = {"ssh_user": "ubuntu"}
    raw["available_node_types"]["cpu"]["node_config"] = {"InstanceType": "m5.large"}
    raw["provider"]["cache_stopped_nodes"] = False
    c = cluster_config_from_dict(raw)
    assert set(c.ignored_keys) == {"setup_commands", "auth", "available_node_types.cpu.node_config",
                                   "provider.cache_stopped_nodes"}


def test_load_reads_a_file_and_names_it_in_errors(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(GOOD)
    assert load_cluster_config(path).cluster_name == "orrery"
    path.write_text(GOOD.replace("max_workers: 6", "max_workers: six"))
    with pytest.raises(ValueError, match=re.escape(f"{path}: `max_workers` must be a whole number >= 0, got 'six'.")):
        load_cluster_config(path)
    with pytest.raises(ValueError, match="cannot read the cluster config .*missing.yaml"):
        load_cluster_config(tmp_path / "missing.yaml")


def test_broken_yaml_and_a_non_mapping_fail_clearly():
    with pytest.raises(ValueError, match="cluster config: not valid YAML"):
        parse_cluster_yaml("cluster_name: [unclosed")
    with pytest.raises(ValueError, match="must be a mapping of cluster settings"):
        parse_cluster_yaml("- just\n- a list\n")


def _set(path: str, value):
    """A change to base(): set `a.b.c` to value (None deletes it)."""
    def change(raw: dict) -> None:
        *parents, last = path.split(".")
        d = raw
        for p in parents:
            d = d[p]
        if value is None:
            del d[last]
        else:
            d[last] = value
    return change


@pytest.mark.parametrize(("change", "message"), [
    (_set("cluster_name", None), "`cluster_name` is required"),
    (_set("provider", None), "`provider` is required"),
    (_set("head_node_type", None), "`head_node_type` is required"),
    (_set("cluster_name", ""), "`cluster_name` must be a non-empty string"),
    (_set("idle_timeout_minute", 3), "`idle_timeout_minute` is not a known key; did you mean `idle_timeout_minutes`?"),
    (_set("max_workers", -1), "`max_workers` must be a whole number >= 0, got -1"),
    (_set("max_workers", True), "`max_workers` must be a whole number >= 0, got True"),
    (_set("max_workers", 2.5), "`max_workers` must be a whole number >= 0, got 2.5"),
    (_set("idle_timeout_minutes", -1), "`idle_timeout_minutes` must be a number >= 0, got -1"),
    (_set("upscaling_speed", 0), "`upscaling_speed` must be a number > 0, got 0"),
    (_set("available_node_types", {}), "`available_node_types` must name at least one node type"),
    (_set("available_node_types", ["cpu"]), "`available_node_types` must be a mapping of node type name"),
    (_set("available_node_types.cpu", "big"), "`available_node_types.cpu` must be a mapping"),
    (_set("available_node_types.cpu.resources", None), "`available_node_types.cpu.resources` is required"),
    (_set("available_node_types.cpu.resources", [2]), "`available_node_types.cpu.resources` must be a mapping"),
    (_set("available_node_types.cpu.resources", {"CPU": -2}),
     "`available_node_types.cpu.resources`: resource 'CPU' must be a non-negative number, got -2"),
    (_set("available_node_types.cpu.resources", {"memory": "8e9"}),
     "`available_node_types.cpu.resources.memory` must be a number, got '8e9' (text, not a number"),
    (_set("available_node_types.cpu.max_worker", 3),
     "`available_node_types.cpu.max_worker` is not a known key; did you mean `available_node_types.cpu.max_workers`?"),
    (_set("available_node_types.cpu.min_workers", 4), "`available_node_types.cpu.min_workers` is 4, more than"),
    (_set("available_node_types.cpu.object_store_memory", 0),
     "`available_node_types.cpu.object_store_memory` must be a number of bytes > 0"),
    (_set("head_node_type", "master"), "`head_node_type` is 'master', which is not in available_node_types"),
    (_set("provider.type", "aws"), "`provider.type` must be one of local, kubernetes, got 'aws'"),
    (_set("provider.namespace", "x"), "`provider.namespace` is a kubernetes setting, but provider.type is 'local'"),
])
def test_each_mistake_names_its_key(change, message):
    raw = copy.deepcopy(base())
    change(raw)
    with pytest.raises(ValueError, match=re.escape(message)):
        cluster_config_from_dict(raw)


def test_min_workers_adding_up_past_max_workers_fail():
    raw = base()
    raw["max_workers"] = 1
    raw["available_node_types"]["cpu"]["min_workers"] = 2
    with pytest.raises(ValueError, match=re.escape("`max_workers` is 1, fewer than the node types' min_workers add up to (2)")):
        cluster_config_from_dict(raw)


@pytest.mark.parametrize(("provider", "message"), [
    ({"type": "kubernetes", "namespace": "Not_A_Name"}, "`provider.namespace` must be a Kubernetes object name"),
    ({"type": "kubernetes", "worker_deployment": {"tpu": "w"}},
     "`provider.worker_deployment.tpu` names a node type that is not in available_node_types"),
    ({"type": "kubernetes", "worker_deployment": {}}, "`provider.worker_deployment` has no Deployment for node type 'cpu'"),
    ({"type": "kubernetes", "worker_deployment": 3}, "`provider.worker_deployment` must be a Deployment name, or a mapping"),
    ({"type": "kubernetes", "head_srvice": "h"}, "did you mean `provider.head_service`?"),
])
def test_kubernetes_provider_mistakes(provider, message):
    raw = base()
    raw["provider"] = provider
    with pytest.raises(ValueError, match=re.escape(message)):
        cluster_config_from_dict(raw)


def test_one_deployment_name_for_several_worker_types_asks_for_a_mapping():
    raw = base()
    raw["available_node_types"]["gpu"] = {"resources": {"GPU": 1}, "max_workers": 1}
    raw["provider"] = {"type": "kubernetes", "worker_deployment": "workers"}
    with pytest.raises(ValueError, match=re.escape("node types 'cpu', 'gpu' can all have workers; give a mapping")):
        cluster_config_from_dict(raw)


def test_the_config_feeds_the_policy():
    c = parse_cluster_yaml(GOOD)
    head = NodeState("h", "head", is_head=True)
    d = decide(**c.decide_kwargs(), nodes=[head], now=0, pending=[{"GPU": 1}])
    assert d.launch == {"cpu": 1, "gpu": 1}  # cpu for its min_workers, gpu for the demand
    idle = NodeState("w", "gpu", idle_since=0)
    assert list(decide(**c.decide_kwargs(), nodes=[head, idle], now=121).terminate) == ["w"]  # 2 minutes


def test_yaml_exponents_without_a_dot_are_text_and_the_error_says_so():
    text = GOOD.replace("object_store_memory: 1073741824", "object_store_memory: 1e9")
    with pytest.raises(ValueError, match=re.escape("got '1e9' (text, not a number: YAML reads 1e9 as text")):
        parse_cluster_yaml(text)
    c = parse_cluster_yaml(GOOD.replace("object_store_memory: 1073741824", "object_store_memory: 1.0e+9"))
    assert c.object_store_memory == {"cpu": 1_000_000_000}
