"""KubernetesProvider against a fake of the kubernetes client's AppsV1Api and CoreV1Api.

No API server runs here. The fake keeps Deployments and pods in memory, answers with objects
shaped like the client's models (attribute access, snake_case), raises an exception with
`.status` as `kubernetes.client.ApiException` does, and records every call. When the real
client is installed, the recorded calls are also bound against its method signatures.
"""

from __future__ import annotations

import inspect
import sys
from types import SimpleNamespace

import pytest

from runtime.autoscaler.config import cluster_config_from_dict
from runtime.autoscaler.kubernetes import (
    API_PERMISSIONS,
    CHOSEN_DELETION_COST,
    DELETION_COST_ANNOTATION,
    KubernetesProvider,
)
from runtime.autoscaler.provider import ProviderNode

NS = "orrery"


class FakeApiError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"({status}) {reason}")
        self.status = status
        self.reason = reason


def pod(name, labels, phase="Running", ready=True, ip="10.0.0.1", deleting=False):
    conditions = [SimpleNamespace(type="Ready", status="True" if ready else "False")]
    return SimpleNamespace(
        metadata=SimpleNamespace(name=name, labels=dict(labels), annotations={},
                                 deletion_timestamp="2025-01-01T00:00:00Z" if deleting else None),
        status=SimpleNamespace(phase=phase, pod_ip=ip, conditions=conditions))


class FakeCluster:
    """The state both fake APIs share, and the log of calls made to them."""

    def __init__(self) -> None:
        self.deployments: dict[str, dict] = {}
        self.pods: list[SimpleNamespace] = []
        self.calls: list[tuple[str, str, tuple, dict]] = []  # (api, method, args, kwargs)
        self.fail: dict[str, Exception] = {}  # method -> exception to raise once

    def add_deployment(self, name, replicas, labels):
        self.deployments[name] = {"replicas": replicas, "labels": dict(labels)}

    def record(self, api, method, args, kwargs):
        self.calls.append((api, method, args, kwargs))
        if method in self.fail:
            raise self.fail.pop(method)


class FakeAppsV1Api:
    def __init__(self, cluster: FakeCluster) -> None:
        self.c = cluster

    def read_namespaced_deployment(self, name, namespace, **kwargs):
        self.c.record("apps", "read_namespaced_deployment", (name, namespace), kwargs)
        d = self.c.deployments.get(name) if namespace == NS else None
        if d is None:
            raise FakeApiError(404, f'deployments.apps "{name}" not found')
        selector = SimpleNamespace(match_labels=d["labels"] or None, match_expressions=None)
        return SimpleNamespace(metadata=SimpleNamespace(name=name),
                               spec=SimpleNamespace(replicas=d["replicas"], selector=selector))

    def patch_namespaced_deployment(self, name, namespace, body, **kwargs):
        self.c.record("apps", "patch_namespaced_deployment", (name, namespace, body), kwargs)
        self.c.deployments[name]["replicas"] = body["spec"]["replicas"]
        return self.read_namespaced_deployment(name, namespace)


class FakeCoreV1Api:
    def __init__(self, cluster: FakeCluster) -> None:
        self.c = cluster

    def _find(self, name):
        for p in self.c.pods:
            if p.metadata.name == name:
                return p
        raise FakeApiError(404, f'pods "{name}" not found')

    def list_namespaced_pod(self, namespace, label_selector=None, **kwargs):
        self.c.record("core", "list_namespaced_pod", (namespace,), {"label_selector": label_selector, **kwargs})
        wanted = dict(kv.split("=", 1) for kv in label_selector.split(",")) if label_selector else {}
        items = [p for p in self.c.pods if all(p.metadata.labels.get(k) == v for k, v in wanted.items())]
        return SimpleNamespace(items=items)

    def patch_namespaced_pod(self, name, namespace, body, **kwargs):
        self.c.record("core", "patch_namespaced_pod", (name, namespace, body), kwargs)
        p = self._find(name)
        p.metadata.annotations.update(body["metadata"]["annotations"])
        return p

    def delete_namespaced_pod(self, name, namespace, **kwargs):
        self.c.record("core", "delete_namespaced_pod", (name, namespace), kwargs)
        p = self._find(name)
        self.c.pods.remove(p)
        return p


CPU_LABELS = {"app.kubernetes.io/name": "orrery", "orrery.io/node-type": "cpu"}
GPU_LABELS = {"app.kubernetes.io/name": "orrery", "orrery.io/node-type": "gpu"}


@pytest.fixture
def k8s():
    c = FakeCluster()
    c.add_deployment("orrery-worker", 2, CPU_LABELS)
    c.add_deployment("orrery-gpu-worker", 1, GPU_LABELS)
    c.pods = [
        pod("w-a", CPU_LABELS, ip="10.0.0.2"),
        pod("w-b", CPU_LABELS, phase="Pending", ready=False, ip=None),
        pod("w-old", CPU_LABELS, deleting=True),  # terminating: no longer a node
        pod("w-done", CPU_LABELS, phase="Failed", ready=False),
        pod("g-a", GPU_LABELS, ready=False, ip="10.0.0.9"),  # running, not ready yet
        pod("head", {"app.kubernetes.io/name": "orrery", "orrery.io/node-type": "head"}),
    ]
    provider = KubernetesProvider(NS, {"cpu": "orrery-worker", "gpu": "orrery-gpu-worker"},
                                  apps_api=FakeAppsV1Api(c), core_api=FakeCoreV1Api(c))
    return c, provider


def test_nodes_are_the_pods_of_each_worker_deployment(k8s):
    c, provider = k8s
    assert provider.non_terminated_nodes() == [
        ProviderNode("w-a", "cpu", "running", "10.0.0.2"),
        ProviderNode("w-b", "cpu", "pending", None),
        ProviderNode("g-a", "gpu", "pending", "10.0.0.9"),
    ]
    selectors = [kw["label_selector"] for _, m, _, kw in c.calls if m == "list_namespaced_pod"]
    assert selectors == ["app.kubernetes.io/name=orrery,orrery.io/node-type=cpu",
                         "app.kubernetes.io/name=orrery,orrery.io/node-type=gpu"]


def test_create_raises_the_deployments_replicas(k8s):
    c, provider = k8s
    provider.create_nodes("cpu", 3)
    assert c.deployments["orrery-worker"]["replicas"] == 5
    assert ("apps", "patch_namespaced_deployment", ("orrery-worker", NS, {"spec": {"replicas": 5}}), {}) in c.calls
    c.calls.clear()
    provider.create_nodes("cpu", 0)
    assert c.calls == []


def test_create_for_a_type_without_a_deployment_names_the_mapping(k8s):
    _, provider = k8s
    with pytest.raises(ValueError, match="No worker Deployment for node type 'tpu'.*'cpu', 'gpu'"):
        provider.create_nodes("tpu", 1)


def test_terminate_marks_scales_down_and_deletes_exactly_the_chosen_pods(k8s):
    c, provider = k8s
    provider.terminate_nodes(["w-a"])
    writes = [(m, a) for _, m, a, _ in c.calls if not m.startswith(("read", "list"))]
    assert writes == [
        ("patch_namespaced_pod", ("w-a", NS, {"metadata": {"annotations": {DELETION_COST_ANNOTATION: CHOSEN_DELETION_COST}}})),
        ("patch_namespaced_deployment", ("orrery-worker", NS, {"spec": {"replicas": 1}})),
        ("delete_namespaced_pod", ("w-a", NS)),
    ]
    assert [p.metadata.name for p in c.pods] == ["w-b", "w-old", "w-done", "g-a", "head"]
    assert c.deployments["orrery-gpu-worker"]["replicas"] == 1  # other types untouched


def test_terminate_groups_pods_by_deployment_and_skips_ids_already_gone(k8s):
    c, provider = k8s
    provider.terminate_nodes(["w-a", "w-b", "g-a", "w-old", "no-such-pod"])
    assert c.deployments["orrery-worker"]["replicas"] == 0
    assert c.deployments["orrery-gpu-worker"]["replicas"] == 0
    deleted = [a[0] for _, m, a, _ in c.calls if m == "delete_namespaced_pod"]
    assert deleted == ["w-a", "w-b", "g-a"]  # w-old is already terminating, no-such-pod never was


def test_a_pod_the_replicaset_removed_first_is_not_an_error(k8s):
    c, provider = k8s
    c.fail["delete_namespaced_pod"] = FakeApiError(404, 'pods "w-a" not found')
    provider.terminate_nodes(["w-a"])
    assert c.deployments["orrery-worker"]["replicas"] == 1


def test_other_api_errors_are_raised(k8s):
    c, provider = k8s
    c.fail["patch_namespaced_deployment"] = FakeApiError(403, "forbidden: cannot patch deployments")
    with pytest.raises(FakeApiError, match="403"):
        provider.create_nodes("cpu", 1)


def test_nothing_to_terminate_makes_no_calls(k8s):
    c, provider = k8s
    provider.terminate_nodes([])
    assert c.calls == []


def test_a_deployment_without_a_selector_is_reported(k8s):
    c, provider = k8s
    c.deployments["orrery-worker"]["labels"] = {}
    with pytest.raises(ValueError, match="orrery/orrery-worker has no spec.selector.matchLabels"):
        provider.non_terminated_nodes()


def test_built_from_the_cluster_config():
    c = FakeCluster()
    cfg = cluster_config_from_dict({
        "cluster_name": "orrery", "head_node_type": "head",
        "provider": {"type": "kubernetes", "namespace": NS},
        "available_node_types": {"head": {"resources": {"CPU": 1}, "max_workers": 0},
                                 "cpu": {"resources": {"CPU": 2}, "max_workers": 3}}})
    provider = KubernetesProvider.from_config(cfg, apps_api=FakeAppsV1Api(c), core_api=FakeCoreV1Api(c))
    assert (provider.namespace, provider.deployments) == (NS, {"cpu": "orrery-worker"})
    local = cluster_config_from_dict({"cluster_name": "x", "head_node_type": "h", "provider": {"type": "local"},
                                      "available_node_types": {"h": {"resources": {"CPU": 1}}}})
    with pytest.raises(ValueError, match="provider.type 'local', not 'kubernetes'"):
        KubernetesProvider.from_config(local)


def test_without_the_kubernetes_package_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # makes `import kubernetes` fail
    with pytest.raises(ImportError, match=r"pip install 'orrery\[kubernetes\]'"):
        KubernetesProvider(NS, {"cpu": "orrery-worker"})


def test_every_call_made_is_granted_by_api_permissions(k8s):
    c, provider = k8s
    provider.non_terminated_nodes()
    provider.create_nodes("cpu", 1)
    provider.terminate_nodes(["w-a"])
    verbs = {"read": "get", "list": "list", "patch": "patch", "delete": "delete"}
    used = set()
    for api, method, _, _ in c.calls:
        verb = verbs[method.split("_")[0]]
        resource = "deployments" if method.endswith("deployment") else "pods"
        used.add(("apps" if api == "apps" else "", resource, verb))
    assert used == set(API_PERMISSIONS)


def test_the_calls_fit_the_real_clients_signatures(k8s):
    """Guards the fake against drifting from the real client (skipped where it is not installed)."""
    client = pytest.importorskip("kubernetes.client")
    c, provider = k8s
    provider.non_terminated_nodes()
    provider.create_nodes("cpu", 1)
    provider.terminate_nodes(["w-a"])
    real = {"apps": client.AppsV1Api, "core": client.CoreV1Api}
    for api, method, args, kwargs in c.calls:
        inspect.signature(getattr(real[api], method)).bind(None, *args, **kwargs)
