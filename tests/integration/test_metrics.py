"""Application and system metrics through real Prometheus endpoints: each node's
(`metrics_export_port`), the dashboard's merged `/metrics`, and the service-discovery file.
The book's chapter 12 examples (the bank-account actor, the FailureCounter singleton) are the
workload. tests/integration/test_prometheus.py has a real Prometheus scrape them."""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.request

import cloudpickle
import pytest
from prometheus_client.parser import text_string_to_metric_families

import runtime
from runtime._testing.sync import wait_for

pytestmark = pytest.mark.timeout(120)
# The book's classes below live at module level, as in the book; workers cannot import this test
# module by name (pytest put tests/ on the driver's path), so they travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def scrape(address: str) -> list:
    """Every sample served at http://address/metrics, as (name, labels, value)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def values(samples: list, name: str, **labels: str) -> list[float]:
    return [v for n, lab, v in samples if n == name and all(lab.get(k) == w for k, w in labels.items())]


class FailureCounter:  # the book's Example 12-2: a lazy singleton per process
    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
            from runtime.util.metrics import Counter
            cls._instance.counter = Counter("failure", description="Number of failures (goes up only).")
        return cls._instance


@runtime.remote
def remote_fun(x):
    try:
        return 10 / x
    except ZeroDivisionError:
        FailureCounter().counter.inc()
        return None


@runtime.remote
class MySpecialActor:  # the book's Example 12-1
    def __init__(self, name):
        self.total = 0
        from runtime.util.metrics import Counter, Gauge
        self.failed_withdrawls = Counter("failed_withdrawls", description="Number of failed withdrawls.",
                                         tag_keys=("actor_name",))
        self.failed_withdrawls.set_default_tags({"actor_name": name})
        self.total_guage = Gauge("money", description="How much money we have in total.", tag_keys=("actor_name",))
        self.total_guage.set_default_tags({"actor_name": name})
        self.accounts = {}

    def deposit(self, account, amount):
        self.accounts[account] = self.accounts.get(account, 0) + amount
        self.total += amount
        self.total_guage.set(self.total)

    def withdrawl(self, account, amount):
        if self.accounts.get(account, 0) < amount:
            self.failed_withdrawls.inc()
            raise Exception("Not enough money")
        self.accounts[account] -= amount
        self.total -= amount
        self.total_guage.set(self.total)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_book_metrics_and_system_metrics_on_the_node_endpoint(own_cluster):
    port = _free_port()
    ctx = runtime.init(num_cpus=2, _metrics_export_port=port)
    assert ctx.address_info["metrics_export_port"] == port
    assert runtime.get([remote_fun.remote(x) for x in (0, 1, 0, 2, 0)]) == [None, 10.0, None, 5.0, None]
    bank = MySpecialActor.remote("bank1")
    runtime.get([bank.deposit.remote("a", 100), bank.deposit.remote("b", 20)])
    for _ in range(2):
        with pytest.raises(runtime.exceptions.RayTaskError):
            runtime.get(bank.withdrawl.remote("b", 50))
    runtime.get(bank.withdrawl.remote("a", 30))
    from runtime.util.metrics import Histogram
    Histogram("driver_seconds", "driver timings", boundaries=[1, 10]).observe(4)

    def served():
        s = scrape(f"127.0.0.1:{port}")
        done = (sum(values(s, "ray_failure_total")) == 3 and values(s, "ray_money", actor_name="bank1") == [90.0]
                and values(s, "ray_failed_withdrawls_total", actor_name="bank1") == [2.0]
                and values(s, "ray_driver_seconds_count") == [1.0])
        return s if done else None

    s = wait_for(served, timeout=30, what="the book's metrics on the node's endpoint")
    session = os.path.basename(ctx.address_info["session_dir"])
    [(_, labels, _)] = [x for x in s if x[0] == "ray_money"]
    assert labels["SessionName"] == session and labels["NodeAddress"] == "127.0.0.1"
    assert labels["Component"] == "core_worker" and len(labels["WorkerId"]) == 32
    assert values(s, "ray_driver_seconds_bucket", le="10.0", Component="driver") == [1.0]
    assert values(s, "ray_driver_seconds_sum") == [4.0]
    # System metrics beside them; the head's cluster counts.
    assert values(s, "ray_resources", Name="CPU", State="AVAILABLE") + values(s, "ray_resources", Name="CPU",
                                                                               State="USED") != []
    assert sum(values(s, "ray_resources", Name="CPU")) == 2.0
    assert values(s, "ray_object_store_capacity_bytes")[0] > 0
    assert values(s, "ray_node_mem_total")[0] > 0
    assert values(s, "ray_workers", State="ACTOR") == [1.0]
    tasks = wait_for(lambda: (lambda s: s if values(s, "ray_tasks", Name="remote_fun", State="FINISHED") == [5.0]
                              else None)(scrape(f"127.0.0.1:{port}")), timeout=30, what="ray_tasks of remote_fun")
    assert values(tasks, "ray_tasks", Name="MySpecialActor.withdrawl", State="FAILED") == [2.0]
    assert values(tasks, "ray_actors", Name="MySpecialActor", State="ALIVE") == [1.0]
    assert values(tasks, "ray_cluster_nodes", State="ALIVE") == [1.0]
    assert values(tasks, "ray_jobs", State="RUNNING") == [1.0]


def test_dashboard_merges_every_node_and_discovery_follows_nodes(make_cluster):
    cluster = make_cluster(head={"num_cpus": 1}, workers=[{"num_cpus": 1}])
    session_dir = runtime._core.api_state.context.address_info["session_dir"]
    sd_path = os.path.join(session_dir, "prom_metrics_service_discovery.json")
    nodes = [n for n in runtime.nodes() if n["Alive"]]
    expected = sorted(f"127.0.0.1:{n['MetricsExportPort']}" for n in nodes)
    assert json.load(open(sd_path)) == [{"labels": {"job": "ray"}, "targets": expected}]

    @runtime.remote(num_cpus=1)
    def tick(i):
        from runtime.util.metrics import Counter
        Counter("ticks", tag_keys=("i",)).inc(tags={"i": str(i)})
        return runtime.get_runtime_context().get_node_id()

    # One task per node (each takes the node's only CPU and they run at once).
    from runtime.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    ran = runtime.get([tick.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                       .remote(i) for i, n in enumerate(nodes)])
    assert sorted(ran) == sorted(n["NodeID"] for n in nodes)
    dashboard = runtime._core.api_state.context.dashboard_url

    def merged():
        s = scrape(dashboard)
        return s if len(values(s, "ray_ticks_total")) == 2 else None

    s = wait_for(merged, timeout=30, what="both nodes' counters at the dashboard's /metrics")
    assert sorted(lab["instance"] for n, lab, v in s if n == "ray_ticks_total") == expected
    assert sorted(lab["instance"] for n, lab, v in s if n == "ray_node_cpu_count") == expected
    assert values(s, "ray_dashboard_unreachable_nodes") == [0.0]

    worker = next(h for h in cluster.list_all_nodes() if h is not cluster.head_node)
    cluster.remove_node(worker)
    head_target = [f"127.0.0.1:{n['MetricsExportPort']}" for n in nodes if n["NodeID"] != worker.node_id]
    wait_for(lambda: json.load(open(sd_path))[0]["targets"] == head_target, timeout=30,
             what="the dead node leaves the service discovery file")
    s = wait_for(lambda: (lambda s: s if values(s, "ray_cluster_nodes", State="DEAD") == [1.0] else None)(
        scrape(dashboard)), timeout=30, what="the dead node counted")
    assert len(values(s, "ray_node_cpu_count")) == 1


def test_cli_metrics_port_discovery_file_and_a_taken_port(cli):
    port = _free_port()
    cli.run("start", "--head", "--port", "0", "--num-cpus", "1", "--client-server-port", "0",
            "--include-dashboard", "false", "--metrics-export-port", str(port))
    root_sd = os.path.join(cli.tmpdir, "orrery", "prom_metrics_service_discovery.json")
    assert json.load(open(root_sd))[0]["targets"] == [f"127.0.0.1:{port}"]
    assert values(scrape(f"127.0.0.1:{port}"), "ray_cluster_nodes", State="ALIVE") == [1.0]
    taken = cli.run("start", "--address", "auto", "--num-cpus", "1", "--metrics-export-port", str(port), check=False)
    assert taken.returncode == 1
    assert f"The metrics export port 127.0.0.1:{port} is taken" in taken.stderr and "--metrics-export-port" in taken.stderr
    cli.run("stop")
    assert not os.path.exists(root_sd)
