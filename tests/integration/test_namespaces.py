"""Namespaces between jobs. As Ray's: a named actor is looked up in the caller's namespace, and
one of another namespace only by naming that namespace. With `runtime start --head
--isolate-namespaces` (or `_system_config={"isolate_namespaces": True}`) a job cannot reach the
named actors or placement groups of another namespace at all, by get_actor, get_if_exists,
list_named_actors or the control store's own lookups; jobs of the same namespace still can,
also from their tasks, and across a restart of the control store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import runtime
from runtime._testing.sync import wait_for

pytestmark = pytest.mark.timeout(180)

COUNTER = """
import json
import runtime
from runtime.util import list_named_actors

@runtime.remote
class Counter:
    def __init__(self):
        self.n = 0
    def add(self):
        self.n += 1
        return self.n

def refused(fn):
    try:
        fn()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return ""
"""


def run_driver(script: str, env: dict | None = None) -> dict:
    """A driver of its own (a job of its own), in a fresh process; it prints one JSON line last."""
    result = subprocess.run([sys.executable, "-c", COUNTER + textwrap.dedent(script)], capture_output=True,
                            text=True, timeout=120, env=env)
    assert result.returncode == 0, f"driver exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_named_actor_of_another_job_needs_its_namespace(orrery_leak_check):
    """Without isolation (Ray's behaviour): not found without the namespace, reached with it."""
    address = runtime.init(num_cpus=2, namespace="team-a").address_info["address"]
    try:
        exec(COUNTER, scope := {})
        counter = scope["Counter"].options(name="counter").remote()
        assert runtime.get(counter.add.remote()) == 1
        seen = run_driver(f"""
            runtime.init(address={address!r}, namespace="team-b")
            plain = refused(lambda: runtime.get_actor("counter"))
            n = runtime.get(runtime.get_actor("counter", namespace="team-a").add.remote())
            print(json.dumps({{"plain": plain, "n": n, "mine": list_named_actors(),
                              "all": list_named_actors(all_namespaces=True)}}))
        """)
        assert seen["plain"].startswith("ValueError: Failed to look up actor with name 'counter' in namespace "
                                        "'team-b'"), seen
        assert seen["n"] == 2
        assert seen["mine"] == [] and {"name": "counter", "namespace": "team-a"} in seen["all"]
    finally:
        runtime.shutdown()


TEAM_A_CREATES = """
runtime.init(address="auto", namespace="team-a")
c = Counter.options(name="counter", lifetime="detached").remote()
assert runtime.get(c.add.remote()) == 1
from runtime.util import placement_group
pg = placement_group([{"CPU": 0.1}], name="pg-a", lifetime="detached")
runtime.get(pg.ready())
print(json.dumps({}))
"""

TEAM_B_TRIES = """
runtime.init(address="auto", namespace="team-b")
from runtime._core import worker_state
cw = worker_state.current()
mine = Counter.options(name=%(mine)r).remote()
runtime.get(mine.add.remote())

@runtime.remote
def from_a_task():
    return refused(lambda: runtime.get_actor("counter", namespace="team-a"))

print(json.dumps({
    "get_actor": refused(lambda: runtime.get_actor("counter", namespace="team-a")),
    "own_namespace": refused(lambda: runtime.get_actor("counter")),
    "get_if_exists": refused(lambda: Counter.options(name="counter", namespace="team-a",
                                                     get_if_exists=True).remote()),
    "task": runtime.get(from_a_task.remote()),
    "pg": refused(lambda: cw.run_sync(cw.gcs_request({"op": "get_pg", "name": "pg-a", "namespace": "team-a"}))),
    "all": list_named_actors(all_namespaces=True),
}))
"""

TEAM_A_AGAIN = """
runtime.init(address="auto", namespace="team-a")
from runtime.util import get_placement_group

@runtime.remote
def from_a_task():
    return runtime.get(runtime.get_actor("counter").add.remote())

n = runtime.get(runtime.get_actor("counter", namespace="team-a").add.remote())
print(json.dumps({"n": n, "task": runtime.get(from_a_task.remote()), "all": list_named_actors(all_namespaces=True),
                  "pg": get_placement_group("pg-a").bundle_specs}))
"""


def check_team_b_is_refused(seen: dict, mine: str) -> None:
    isolated = ("ValueError: This cluster isolates namespaces (--isolate-namespaces): the actor named 'counter' in "
                "namespace 'team-a' cannot be reached from a job in namespace 'team-b'.")
    assert seen["get_actor"].startswith(isolated), seen["get_actor"]
    assert "runtime.init(namespace='team-a')" in seen["get_actor"]  # says what to do
    assert seen["get_if_exists"].startswith(isolated), seen["get_if_exists"]
    assert isolated.removeprefix("ValueError: ") in seen["task"], seen["task"]  # a task of team-b's job
    assert "the placement group named 'pg-a' in namespace 'team-a' cannot be reached" in seen["pg"], seen["pg"]
    assert seen["own_namespace"].startswith("ValueError: Failed to look up actor"), seen["own_namespace"]
    assert seen["all"] == [{"name": mine, "namespace": "team-b"}]  # team-a's are not listed


def test_isolate_namespaces_refuses_other_namespaces_named_actors(cli):
    cli.run("start", "--head", "--port", "0", "--num-cpus", "2", "--isolate-namespaces", "--include-dashboard",
            "false")
    run_driver(TEAM_A_CREATES, cli.env)
    check_team_b_is_refused(run_driver(TEAM_B_TRIES % {"mine": "mine"}, cli.env), "mine")
    seen = run_driver(TEAM_A_AGAIN, cli.env)  # another job, started in team-a: it may
    assert seen["n"] == 2 and seen["task"] == 3 and seen["pg"] == [{"CPU": 0.1}]
    assert seen["all"] == [{"name": "counter", "namespace": "team-a"}]

    # The control store dies and comes back (`--restart`, without the flag): it still isolates.
    with open(os.path.join(cli.tmpdir, "orrery", "current_cluster.json")) as f:
        info = json.load(f)
    os.kill(info["pids"]["gcs"], signal.SIGKILL)
    wait_for(lambda: cli.run("status", check=False).returncode != 0, timeout=20, what="the cluster seen as down")
    cli.run("start", "--head", "--restart")
    seen = run_driver(TEAM_A_AGAIN, cli.env)
    assert seen["n"] == 4 and seen["task"] == 5
    # ("mine" ended with the job that made it.)
    check_team_b_is_refused(run_driver(TEAM_B_TRIES % {"mine": "mine-2"}, cli.env), "mine-2")


def test_isolate_namespaces_on_an_embedded_cluster_and_its_flag(cli, orrery_leak_check):
    """init(_system_config=...) sets it too; `runtime start` without --head refuses the flag."""
    ctx = runtime.init(num_cpus=1, namespace="team-a", _system_config={"isolate_namespaces": True})
    address = ctx.address_info["address"]
    try:
        exec(COUNTER, scope := {})
        counter = scope["Counter"].options(name="counter").remote()
        runtime.get(counter.add.remote())
        seen = run_driver(f"""
            runtime.init(address={address!r}, namespace="team-b")
            print(json.dumps({{"get_actor": refused(lambda: runtime.get_actor("counter", namespace="team-a")),
                              "all": list_named_actors(all_namespaces=True)}}))
        """, cli.env)
        assert "This cluster isolates namespaces" in seen["get_actor"] and seen["all"] == []
        assert runtime.get(runtime.get_actor("counter").add.remote()) == 2  # its own namespace
    finally:
        runtime.shutdown()
    joined = cli.run("start", "--address", "127.0.0.1:1", "--isolate-namespaces", check=False)
    assert joined.returncode == 2 and "--isolate-namespaces is a setting of the head" in joined.stderr
