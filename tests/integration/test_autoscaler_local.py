"""`runtime up cluster.yaml` with the local provider: the autoscaler starts worker nodes when
work waits for resources (tasks, placement groups, request_resources) and stops them when they
have been idle for idle_timeout_minutes; `runtime down` stops everything."""

from __future__ import annotations

import json
import textwrap

import pytest

import runtime
from runtime._testing.sync import wait_for, wait_for_path

pytestmark = pytest.mark.slow

CLUSTER_YAML = """
cluster_name: local-test
max_workers: 3
idle_timeout_minutes: 0.03   # about 2 s
provider:
  type: local
head_node_type: head
available_node_types:
  head:
    resources: {CPU: 1}
    max_workers: 0
  cpu:
    resources: {CPU: 1}
    min_workers: 0
    max_workers: 2
    object_store_memory: 100000000
  x86:
    resources: {CPU: 1, x86: 1}
    min_workers: 0
    max_workers: 1
    object_store_memory: 100000000
"""


def alive_nodes() -> list[dict]:
    return [n for n in runtime.nodes() if n["Alive"]]


def test_up_scales_out_for_waiting_work_and_back_in_when_idle(tmp_path, cli):
    config = tmp_path / "cluster.yaml"
    config.write_text(textwrap.dedent(CLUSTER_YAML))
    up = cli.run("up", str(config), "--port", "0")
    assert "is up" in up.stdout, up.stdout
    runtime.init(address="auto")
    try:
        assert len(alive_nodes()) == 1
        go = tmp_path / "go"

        @runtime.remote(num_cpus=1)
        def hold(path):
            wait_for_path(path)
            return runtime.get_runtime_context().get_node_id()

        @runtime.remote(resources={"x86": 1})
        def on_x86():
            return runtime.get_runtime_context().get_node_id()

        refs = [hold.remote(str(go)) for _ in range(3)]  # one CPU on the head: two must wait
        x86 = on_x86.remote()  # no node has x86: the x86 type is launched
        wait_for(lambda: len(alive_nodes()) >= 4, timeout=60, what="the autoscaler to start 3 worker nodes")

        def running_on() -> set:
            from runtime.util import state
            return {t["node_id"] for t in state.list_tasks() if t["name"].endswith("hold") and t["state"] == "RUNNING"}

        # The waiting tasks move to the new nodes (at the next heartbeat's spillback): let them
        # start there before releasing, or the head could run all three one after the other.
        wait_for(lambda: len(running_on()) >= 2, timeout=60, what="the held tasks running on two nodes or more")
        go.write_text("go")
        assert len(set(runtime.get(refs, timeout=60))) >= 2
        x86_node = runtime.get(x86, timeout=60)
        assert {n["NodeID"]: n for n in alive_nodes()}[x86_node]["Resources"].get("x86") == 1
        wait_for(lambda: len(alive_nodes()) == 1, timeout=60, what="idle worker nodes to be stopped")

        from runtime.autoscaler.sdk import request_resources
        request_resources(bundles=[{"CPU": 1}, {"CPU": 1}])  # head + one more CPU node
        wait_for(lambda: len(alive_nodes()) == 2, timeout=60, what="a node for request_resources")
        request_resources()
        wait_for(lambda: len(alive_nodes()) == 1, timeout=60, what="the requested node stopped once cleared")
    finally:
        runtime.shutdown()
    cli.run("down", str(config))
    log = json.dumps(cli.run("status", check=False).stdout)
    assert "No running cluster" in log


def test_up_rejects_a_bad_config_with_the_key_named(tmp_path, cli):
    config = tmp_path / "cluster.yaml"
    config.write_text(textwrap.dedent(CLUSTER_YAML).replace("max_workers: 3", "max_workers: lots"))
    bad = cli.run("up", str(config), check=False)
    assert bad.returncode == 2 and "max_workers" in bad.stderr, bad.stderr
    config.write_text("cluster_name: x\nprovider: {type: local}\n")
    bad = cli.run("up", str(config), check=False)
    assert bad.returncode == 2 and "available_node_types" in bad.stderr, bad.stderr
