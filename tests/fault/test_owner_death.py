"""A driver SIGKILLed while an object it owns is borrowed: the borrower gets OwnerDiedError (the
value cannot be trusted to exist any more), while the detached actor the driver created
outlives it and still answers by name."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

import runtime
from runtime._testing.sync import wait_for

pytestmark = [pytest.mark.fault, pytest.mark.slow]

OWNER = """
import sys
import numpy as np
import runtime

runtime.init(address=sys.argv[1], namespace="own")

@runtime.remote
class Keeper:
    def keep(self, refs):
        self.ref = refs[0]  # a borrowed ref: the driver owns the value
        return True

    def read(self):
        try:
            return float(runtime.get(self.ref, timeout=30).sum())
        except Exception as e:
            return f"{type(e).__name__}: {e}"

keeper = Keeper.options(name="keeper", lifetime="detached").remote()
ref = runtime.put(np.ones(1_000_000))
assert runtime.get(keeper.keep.remote([ref]))  # it has not read the value yet
print("READY", flush=True)
sys.stdin.read()  # until killed
"""


def test_borrowers_get_owner_died_and_detached_actors_outlive_their_driver(make_cluster):
    c = make_cluster(head={"num_cpus": 2})
    owner = subprocess.Popen([sys.executable, "-c", textwrap.dedent(OWNER), c.address], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "READY", owner.stderr.read()
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        wait_for(lambda: any(j["status"] == "FINISHED" and j["driver_pid"] == owner.pid
                             for j in runtime.util.state.list_jobs() if j.get("type") == "DRIVER"),
                 timeout=20, what="the killed driver's job seen as finished")
        keeper = runtime.get_actor("keeper", namespace="own")
        answer = runtime.get(keeper.read.remote(), timeout=60)
        assert answer.startswith("OwnerDiedError"), answer
        runtime.kill(keeper)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(10)
