"""A real Prometheus (Debian's) scrapes a cluster through deploy/prometheus/: every node is an
`up` target found through the service-discovery file, an application counter incremented by a
task is there, and every expression of the shipped alert rules and Grafana dashboard is valid
PromQL over metric names we really export."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from runtime._testing.debian import require_debian_program
from runtime._testing.sync import wait_for

pytestmark = pytest.mark.timeout(240)
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _prometheus(prometheus: str, tmp_path: Path, config: dict) -> Iterator[str]:
    """Debian's Prometheus with `config`, on a free port; yields its base URL."""
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _api(base: str, path: str, **params: str) -> dict:
    url = f"{base}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:  # a bad query is a 400 with Prometheus's error
        return json.loads(e.read())


def _expressions() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dash = json.loads((DEPLOY / "grafana" / "orrery-cluster.json").read_text())
    return exprs + [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_alert_rules_are_valid_and_fire_on_what_they_watch():
    promtool = require_debian_program("promtool", "prometheus")
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=DEPLOY / "prometheus")
        assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


@pytest.mark.slow
def test_real_prometheus_scrapes_every_node_and_an_application_counter(tmp_path, cli):
    prometheus = require_debian_program("prometheus", "prometheus")

    cli.run("start", "--head", "--port", "0", "--num-cpus", "1", "--client-server-port", "0",
            "--include-dashboard", "false")
    cli.run("start", "--address", "auto", "--num-cpus", "1")
    cli.driver("""
        import runtime
        runtime.init(address="auto")

        from runtime.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        @runtime.remote
        def work(i):
            from runtime.util.metrics import Counter
            Counter("orders_processed", "orders", tag_keys=("shop",)).inc(i, tags={"shop": "north"})

        nodes = [n["NodeID"] for n in runtime.nodes() if n["Alive"]]
        runtime.get([work.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(i)
                     for n, i in zip(nodes, (2, 3))])  # one on each node
        runtime.shutdown()
    """)
    sd_file = Path(cli.tmpdir) / "orrery" / "prom_metrics_service_discovery.json"
    targets = json.loads(sd_file.read_text())[0]["targets"]
    assert len(targets) == 2

    # The shipped config, with a short interval and this test's discovery file.
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(DEPLOY / "prometheus" / "alerts.yml")]
    config["scrape_configs"][0]["file_sd_configs"][0]["files"] = [str(sd_file)]
    with _prometheus(prometheus, tmp_path, config) as base:
        def all_up():
            active = _api(base, "targets")["data"]["activeTargets"]
            up = sorted(t["labels"]["instance"] for t in active if t["health"] == "up")
            return up if up == sorted(targets) else None

        # (Connection errors while Prometheus starts count as "not yet".)
        wait_for(all_up, timeout=90, what="Prometheus sees every node as an up target")

        def counted():
            result = _api(base, "query", query='sum(ray_orders_processed_total{shop="north"})')["data"]["result"]
            return result and float(result[0]["value"][1]) == 5.0

        wait_for(counted, timeout=60, what="the application counter in Prometheus (2 + 3)")

        # Names the head declares (families without samples, no actors say, are declared too).
        with urllib.request.urlopen(f"http://{targets[0]}/metrics", timeout=10) as resp:
            head_text = resp.read().decode()
        with urllib.request.urlopen(f"http://{targets[1]}/metrics", timeout=10) as resp:
            head_text += resp.read().decode()
        declared = set(re.findall(r"^# TYPE (\S+) (\S+)", head_text, re.M))
        exported = ({n for n, _ in declared} | {n + "_total" for n, kind in declared if kind == "counter"}
                    | set(re.findall(r"^(ray_\w+)[{ ]", head_text, re.M)))
        for expr in _expressions():
            answer = _api(base, "query", query=expr)
            assert answer["status"] == "success", f"{expr!r}: {answer.get('error')}"
            for name in set(re.findall(r"\bray_[a-z_]+", expr)):
                assert name in exported, f"{name} (used in {expr!r}) is not exported"
        stored = set(_api(base, "label/__name__/values")["data"])
        assert {"ray_tasks", "ray_cluster_nodes", "ray_resources", "ray_orders_processed_total"} <= stored



@pytest.mark.slow
def test_real_prometheus_scrapes_a_tls_cluster_with_its_certificate(tmp_path, cli):
    """Under mutual TLS the metrics endpoints are HTTPS and want a client certificate:
    Prometheus scrapes them with `scheme: https` and a `tls_config` (docs/security.md)."""
    from runtime._testing import tls as certs
    prometheus = require_debian_program("prometheus", "prometheus")
    env = certs.tls_env(str(tmp_path))
    cli.env.update(env)
    cli.run("start", "--head", "--port", "0", "--num-cpus", "1", "--client-server-port", "-1",
            "--include-dashboard", "false")
    sd_file = Path(cli.tmpdir) / "orrery" / "prom_metrics_service_discovery.json"
    (target,) = json.loads(sd_file.read_text())[0]["targets"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config.pop("rule_files", None)
    job = config["scrape_configs"][0]
    job["file_sd_configs"][0]["files"] = [str(sd_file)]
    job["scheme"] = "https"
    job["tls_config"] = {"ca_file": env["RUNTIME_TLS_CA_CERT"], "cert_file": env["RUNTIME_TLS_SERVER_CERT"],
                         "key_file": env["RUNTIME_TLS_SERVER_KEY"]}
    with _prometheus(prometheus, tmp_path, config) as base:
        def health():
            active = _api(base, "targets")["data"]["activeTargets"]
            return [(t["labels"]["instance"], t["health"], t.get("lastError")) for t in active
                    if t["health"] != "unknown"] or None

        assert wait_for(health, timeout=90, what="Prometheus scraped the TLS node") == [(target, "up", "")]
        with pytest.raises(OSError):  # plain HTTP is refused (URLError, or the connection closed)
            urllib.request.urlopen(f"http://{target}/metrics", timeout=10)
