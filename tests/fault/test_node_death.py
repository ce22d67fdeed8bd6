"""A node manager that stops answering (SIGSTOP: its socket stays open) is declared dead by the
control store within `node_death_timeout_s`, from missed heartbeats alone."""

from __future__ import annotations

import os
import signal
import time

import pytest

import runtime
from runtime._core import api_state
from runtime._testing.sync import wait_for
from runtime.util import state

pytestmark = pytest.mark.fault

TIMEOUT_S = 1.0
HEARTBEAT_S = 0.2


@pytest.mark.parametrize("ray_start", [{"num_cpus": 1, "_system_config": {
    "node_death_timeout_s": TIMEOUT_S, "heartbeat_interval_s": HEARTBEAT_S}}], indirect=True)
def test_a_hung_node_is_declared_dead_within_the_timeout(ray_start):
    node_pid = api_state.cluster.procs["node"].pid
    node_id = runtime.get_runtime_context().get_node_id()
    assert state.list_nodes(filters=[("node_id", "=", node_id)])[0]["state"] == "ALIVE"
    os.kill(node_pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        row = wait_for(lambda: [n for n in state.list_nodes(filters=[("node_id", "=", node_id)]) if n["state"] == "DEAD"],
                       timeout=TIMEOUT_S + 10, what="the stopped node declared dead")[0]
        detected_after = time.monotonic() - stopped
    finally:
        os.kill(node_pid, signal.SIGCONT)  # it finds its control-store connection gone and exits
    assert "no heartbeat" in row["death_reason"] and "node_death_timeout_s=1" in row["death_reason"]
    # Never early: its last heartbeat was at most one interval before the stop.
    assert detected_after >= TIMEOUT_S - HEARTBEAT_S, detected_after
    wait_for(lambda: api_state.cluster.procs["node"].poll() is not None, timeout=20,
             what="the resumed node manager to exit, its control store having dropped it")
