"""deploy/kubernetes/: kubectl accepts every object, and the pieces agree with each other.

No Kubernetes API server runs here. `kubectl apply --dry-run=client` still asks a server which
kinds exist (API discovery) and whether each object exists already, so the test serves a fake of
just that: the discovery documents of the API groups the manifests use, and 404 for every
object. With `--validate=false` kubectl checks no schema, so the test checks the wiring itself:
labels and selectors, the worker's head address, the RBAC the provider needs, and the cluster
YAML in the ConfigMap.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runtime.autoscaler.config import parse_cluster_yaml
from runtime.autoscaler.kubernetes import API_PERMISSIONS

yaml = pytest.importorskip("yaml")

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUBECTL = shutil.which("kubectl") or ("/usr/bin/kubectl" if Path("/usr/bin/kubectl").exists() else None)

# group/version -> (resource, kind, namespaced): what a real server lists for these kinds.
API_GROUPS = {
    "v1": [("namespaces", "Namespace", False), ("serviceaccounts", "ServiceAccount", True),
           ("configmaps", "ConfigMap", True), ("services", "Service", True), ("pods", "Pod", True)],
    "apps/v1": [("deployments", "Deployment", True)],
    "rbac.authorization.k8s.io/v1": [("roles", "Role", True), ("rolebindings", "RoleBinding", True)],
}


class _DiscoveryOnly(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"]})
        if path == "/apis":
            groups = []
            for gv in API_GROUPS:
                if "/" in gv:
                    group, version = gv.split("/")
                    entry = {"groupVersion": gv, "version": version}
                    groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
            return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        for gv, resources in API_GROUPS.items():
            if path == ("/api/v1" if gv == "v1" else f"/apis/{gv}"):
                return self._send(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                                        "resources": [{"name": r, "singularName": "", "namespaced": ns, "kind": k,
                                                       "verbs": ["create", "delete", "get", "list", "patch"]}
                                                      for r, k, ns in resources]})
        # Any object: not there yet, so apply would create it.
        self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})


@pytest.fixture
def kubeconfig(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DiscoveryOnly)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        # A token, so that kubectl does not prompt for a user name.
        "users": [{"name": "fake", "user": {"token": "not-a-real-token"}}],
    }))
    yield path
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def load_objects() -> list[dict]:
    objects = []
    for f in sorted(MANIFESTS.glob("*.yaml")):
        objects += [doc for doc in yaml.safe_load_all(f.read_text()) if doc]
    return objects


def find(objects, kind, name=None):
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert found, f"no {kind} {name or ''} in {MANIFESTS}"
    return found


def container(deployment) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def arg_after(command: list[str], flag: str) -> str:
    assert flag in command, f"{flag} missing from {command}"
    return command[command.index(flag) + 1]


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed, so the manifests cannot be dry-run")
def test_kubectl_client_dry_run_accepts_every_object(kubeconfig, tmp_path):
    result = subprocess.run(
        [KUBECTL, "apply", "--dry-run=client", "--validate=false", "-f", str(MANIFESTS), "-o", "name",
         "--cache-dir", str(tmp_path / "kube-cache")],
        env={"KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert result.returncode == 0, f"kubectl apply failed:\n{result.stderr}"
    accepted = set(result.stdout.split())
    expected = set()
    for o in load_objects():
        group = o["apiVersion"].rpartition("/")[0]
        expected.add(f"{o['kind'].lower()}{'.' + group if group else ''}/{o['metadata']['name']}")
    assert accepted == expected


def test_every_object_is_in_the_namespace_and_selectors_match_their_pods():
    objects = load_objects()
    (ns,) = find(objects, "Namespace")
    for o in objects:
        if o["kind"] != "Namespace":
            assert o["metadata"]["namespace"] == ns["metadata"]["name"], o["metadata"]["name"]
    for d in find(objects, "Deployment"):
        selector = d["spec"]["selector"]["matchLabels"]
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), d["metadata"]["name"]


def test_the_worker_command_joins_the_head_service():
    objects = load_objects()
    (service,) = find(objects, "Service")
    head = container(find(objects, "Deployment", "orrery-head")[0])
    worker = container(find(objects, "Deployment", "orrery-worker")[0])
    (gcs,) = [p for p in service["spec"]["ports"] if p["name"] == "gcs"]
    # The head listens where the Service sends: --port, the container port, the Service target.
    assert arg_after(head["command"], "--port") == str(gcs["port"])
    assert {"name": gcs["targetPort"], "containerPort": gcs["port"]} in head["ports"]
    head_pod_labels = find(objects, "Deployment", "orrery-head")[0]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= head_pod_labels.items()
    # The worker's --address is $(HEAD_SERVICE):port, HEAD_SERVICE being the Service's name.
    env = {e["name"]: e.get("value") for e in worker["env"]}
    address = arg_after(worker["command"], "--address")
    assert address == f"$(HEAD_SERVICE):{gcs['port']}"
    assert env["HEAD_SERVICE"] == service["metadata"]["name"]
    assert head["command"][:3] == ["runtime", "start", "--head"] and "--block" in head["command"]
    assert worker["command"][:2] == ["runtime", "start"] and "--block" in worker["command"]
    # Both pods listen on the pod's address and read the token and their TLS certificate from
    # the same Secrets, mounted as files only their user reads; no token in an environment.
    for name, c in (("orrery-head", head), ("orrery-worker", worker)):
        env = {e["name"]: e for e in c["env"]}
        assert arg_after(c["command"], "--node-ip") == "$(POD_IP)"
        assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert "RUNTIME_CLUSTER_TOKEN" not in env
        pod = find(objects, "Deployment", name)[0]["spec"]["template"]["spec"]
        secrets = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert secrets == {"token": {"secretName": "orrery-token", "defaultMode": 0o400},
                           "tls": {"secretName": "orrery-tls", "defaultMode": 0o400}}
        assert arg_after(c["command"], "--token-file") == mounts["token"] + "/token"
        for flag, key in (("--tls-cert", "tls.crt"), ("--tls-key", "tls.key"), ("--tls-ca", "ca.crt")):
            assert arg_after(c["command"], flag) == f"{mounts['tls']}/{key}"


def test_shm_is_memory_backed_and_resources_are_set():
    for d in find(load_objects(), "Deployment"):
        spec = d["spec"]["template"]["spec"]
        c = container(d)
        shm = [m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        assert shm, f"{d['metadata']['name']}: /dev/shm is not mounted"
        (volume,) = [v for v in spec["volumes"] if v["name"] == shm[0]]
        assert volume["emptyDir"]["medium"] == "Memory"
        assert set(c["resources"]["requests"]) == set(c["resources"]["limits"]) == {"cpu", "memory"}
        assert d["metadata"]["name"] and c["image"] == "orrery/runtime:latest"


def test_the_head_service_account_may_make_every_call_the_provider_makes():
    objects = load_objects()
    head = find(objects, "Deployment", "orrery-head")[0]
    account = head["spec"]["template"]["spec"]["serviceAccountName"]
    find(objects, "ServiceAccount", account)
    (binding,) = find(objects, "RoleBinding")
    assert {"kind": "ServiceAccount", "name": account, "namespace": head["metadata"]["namespace"]} in binding["subjects"]
    (role,) = find(objects, "Role", binding["roleRef"]["name"])
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    missing = set(API_PERMISSIONS) - granted
    assert not missing, f"the Role lacks {sorted(missing)}"


def test_the_cluster_yaml_in_the_configmap_matches_the_deployments():
    objects = load_objects()
    head = find(objects, "Deployment", "orrery-head")[0]
    head_c = container(head)
    (cm,) = [o for o in find(objects, "ConfigMap")
             if o["metadata"]["name"] in {v["configMap"]["name"] for v in head["spec"]["template"]["spec"]["volumes"]
                                          if "configMap" in v}]
    (mount,) = [m for m in head_c["volumeMounts"] if m["mountPath"] == "/etc/orrery"]
    (key,) = cm["data"]
    assert arg_after(head_c["command"], "--autoscaling-config") == f"{mount['mountPath']}/{key}"
    cfg = parse_cluster_yaml(cm["data"][key], source="ConfigMap orrery-cluster")
    (service,) = find(objects, "Service")
    assert cfg.provider.namespace == head["metadata"]["namespace"]
    assert cfg.provider.head_service == service["metadata"]["name"]
    for node_type, name in cfg.provider.worker_deployments.items():
        dep = find(objects, "Deployment", name)[0]
        c = container(dep)
        assert dep["spec"]["template"]["metadata"]["labels"]["orrery.io/node-type"] == node_type
        # What one pod offers: the type's CPUs, the worker's --num-cpus and its cpu limit agree.
        cpus = cfg.node_types[node_type].resources["CPU"]
        assert float(arg_after(c["command"], "--num-cpus")) == cpus == float(c["resources"]["limits"]["cpu"])
        assert int(arg_after(c["command"], "--object-store-memory")) == cfg.object_store_memory[node_type]
        # The autoscaler owns replicas; a Deployment starts with 1, which must not undercut min_workers.
        assert "replicas" not in dep["spec"] and cfg.node_types[node_type].min_workers >= 1
    assert float(arg_after(head_c["command"], "--num-cpus")) == cfg.node_types[cfg.head_node_type].resources["CPU"]
