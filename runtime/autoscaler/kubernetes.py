"""`KubernetesProvider`: worker nodes are the pods of one Deployment per node type.

A thin layer: `policy.decide()` chooses, this only carries it out through the official
`kubernetes` client (`pip install 'orrery[kubernetes]'`), which is imported when a provider is
built without injected API objects, so nothing else needs it.

- list: the pods matching each worker Deployment's selector, less those already terminating.
- create: raise the Deployment's `spec.replicas`.
- terminate: mark the chosen pods with a very low `controller.kubernetes.io/pod-deletion-cost`,
  lower `spec.replicas` by as many, then delete the chosen pods. The ReplicaSet picks which
  pods go when replicas drop, and it prefers pending and not-ready pods over the deletion cost,
  so the cost alone could remove a starting pod instead of the idle one. Deleting the chosen
  pods as well makes sure they are the ones that go; in the common case the ReplicaSet has
  already removed them (a 404, skipped), and otherwise it replaces a pod it removed on its own,
  which holds no work since the cost makes it prefer idle-marked ones among running pods.

The API calls used, and so the RBAC the head's service account needs, are in `API_PERMISSIONS`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from .provider import NodeProvider, ProviderNode

logger = logging.getLogger("runtime.autoscaler")

DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
# The annotation is an int32; any value below the default 0 makes a pod go first among equals.
CHOSEN_DELETION_COST = str(-(2**31))

# (API group, resource, verb) for every call below; deploy/kubernetes/rbac.yaml grants these.
API_PERMISSIONS = (
    ("apps", "deployments", "get"),
    ("apps", "deployments", "patch"),
    ("", "pods", "list"),
    ("", "pods", "patch"),
    ("", "pods", "delete"),
)


def _kubernetes_clients() -> tuple[Any, Any]:
    try:
        from kubernetes import client, config
    except ImportError as e:
        raise ImportError("The Kubernetes provider needs the kubernetes client: "
                          "pip install 'orrery[kubernetes]' (or pip install kubernetes).") from e
    try:
        config.load_incluster_config()  # inside a pod: its service account
    except config.ConfigException:
        config.load_kube_config()  # elsewhere: ~/.kube/config or $KUBECONFIG
    return client.AppsV1Api(), client.CoreV1Api()


def _status_code(e: BaseException) -> int | None:
    # kubernetes.client.ApiException carries the HTTP status; matched by attribute so that the
    # module stays importable without the client.
    return getattr(e, "status", None)


class KubernetesProvider(NodeProvider):
    """Scales one worker Deployment per node type in one namespace.

    deployments: node type -> Deployment name (`ProviderConfig.worker_deployments`).
    apps_api, core_api: `kubernetes.client.AppsV1Api` / `CoreV1Api` instances; built from the
        in-cluster service account (else the kubeconfig) when not given.
    """

    def __init__(self, namespace: str, deployments: Mapping[str, str], *, apps_api: Any = None,
                 core_api: Any = None) -> None:
        if not deployments:
            raise ValueError("KubernetesProvider needs at least one node type -> Deployment name.")
        self.namespace = namespace
        self.deployments = dict(deployments)
        if apps_api is None or core_api is None:
            built_apps, built_core = _kubernetes_clients()
            apps_api = apps_api if apps_api is not None else built_apps
            core_api = core_api if core_api is not None else built_core
        self.apps = apps_api
        self.core = core_api

    @classmethod
    def from_config(cls, cluster: Any, **api: Any) -> KubernetesProvider:
        """From a `config.ClusterConfig` whose provider.type is kubernetes."""
        p = cluster.provider
        if p.type != "kubernetes":
            raise ValueError(f"cluster {cluster.cluster_name!r} has provider.type {p.type!r}, not 'kubernetes'.")
        return cls(p.namespace, p.worker_deployments, **api)

    # -- NodeProvider ------------------------------------------------------------------------

    def non_terminated_nodes(self) -> list[ProviderNode]:
        nodes = []
        for node_type in sorted(self.deployments):
            nodes += [self._node(pod, node_type) for pod in self._pods(node_type)]
        return nodes

    def create_nodes(self, node_type: str, count: int) -> None:
        if count <= 0:
            return
        name = self._deployment_name(node_type)
        replicas = self._replicas(name)
        self._set_replicas(name, replicas + count)
        logger.info("scaled Deployment %s/%s from %d to %d replicas (%d x %s)",
                    self.namespace, name, replicas, replicas + count, count, node_type)

    def terminate_nodes(self, node_ids: Sequence[str]) -> None:
        wanted = set(node_ids)
        if not wanted:
            return
        by_type: dict[str, list[str]] = {}
        for node_type in sorted(self.deployments):
            for pod in self._pods(node_type):
                if pod.metadata.name in wanted:
                    by_type.setdefault(node_type, []).append(pod.metadata.name)
        gone = wanted - {p for pods in by_type.values() for p in pods}
        if gone:
            logger.info("not terminating %s: no such running worker pod (already gone)", ", ".join(sorted(gone)))
        for node_type, pods in sorted(by_type.items()):
            name = self.deployments[node_type]
            for pod in pods:
                self._ignore_missing(self.core.patch_namespaced_pod, pod, self.namespace,
                                     {"metadata": {"annotations": {DELETION_COST_ANNOTATION: CHOSEN_DELETION_COST}}})
            replicas = self._replicas(name)
            self._set_replicas(name, max(0, replicas - len(pods)))
            for pod in pods:
                self._ignore_missing(self.core.delete_namespaced_pod, pod, self.namespace)
            logger.info("scaled Deployment %s/%s from %d to %d replicas, removing %s",
                        self.namespace, name, replicas, max(0, replicas - len(pods)), ", ".join(pods))

    # -- the API calls -----------------------------------------------------------------------

    def _deployment_name(self, node_type: str) -> str:
        try:
            return self.deployments[node_type]
        except KeyError:
            raise ValueError(f"No worker Deployment for node type {node_type!r}; provider.worker_deployment "
                             f"maps {', '.join(map(repr, sorted(self.deployments)))}.") from None

    def _replicas(self, name: str) -> int:
        return self.apps.read_namespaced_deployment(name, self.namespace).spec.replicas or 0

    def _set_replicas(self, name: str, replicas: int) -> None:
        self.apps.patch_namespaced_deployment(name, self.namespace, {"spec": {"replicas": replicas}})

    def _pods(self, node_type: str) -> list[Any]:
        # The Deployment's own selector, so the pods listed are exactly the ones it scales.
        dep = self.apps.read_namespaced_deployment(self.deployments[node_type], self.namespace)
        labels = dep.spec.selector.match_labels or {}
        if not labels:
            raise ValueError(f"Deployment {self.namespace}/{self.deployments[node_type]} has no "
                             "spec.selector.matchLabels; the provider finds its pods by them.")
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        # Being deleted (deletion_timestamp set) or finished: no longer a node of the cluster.
        return [p for p in pods if p.metadata.deletion_timestamp is None
                and (p.status.phase if p.status else None) not in ("Succeeded", "Failed")]

    @staticmethod
    def _node(pod: Any, node_type: str) -> ProviderNode:
        status = pod.status
        ready = status is not None and status.phase == "Running" and any(
            c.type == "Ready" and c.status == "True" for c in (status.conditions or []))
        return ProviderNode(pod.metadata.name, node_type, "running" if ready else "pending",
                            status.pod_ip if status is not None else None)

    @staticmethod
    def _ignore_missing(call: Any, *args: Any) -> None:
        try:
            call(*args)
        except Exception as e:
            if _status_code(e) != 404:  # 404: the ReplicaSet removed it first; that was the goal
                raise
