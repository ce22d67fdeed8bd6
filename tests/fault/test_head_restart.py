"""The control store (the head's central process) SIGKILLed and started again, in the same
session: it reads its tables back from storage (SQLite in the session directory by default,
Redis when asked), node managers and drivers reconnect by themselves, and nothing in flight
is lost: running tasks finish, detached and named actors answer with their state, placement
groups stay, jobs are listed, and new work can be submitted."""

from __future__ import annotations

import os
import sys

import cloudpickle
import pytest

import runtime
from runtime._testing.redis import RedisServer, free_port, require_redis_server
from runtime._testing.sync import wait_for, wait_for_path
from runtime.util import placement_group, placement_group_table, remove_placement_group

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.fault, pytest.mark.slow]


@runtime.remote
class Account:
    def __init__(self):
        self.balance = 0

    def deposit(self, n):
        self.balance += n
        return self.balance


def _kill_and_restart_midwork(c, tmp_path):
    go = tmp_path / "go"

    @runtime.remote
    def long_step(path):
        wait_for_path(path)
        return "done"

    account = Account.options(name="bank", lifetime="detached").remote()
    assert runtime.get(account.deposit.remote(10)) == 10
    pg = placement_group([{"CPU": 1}], name="kept", lifetime="detached")
    assert pg.wait(20)
    running = long_step.remote(str(go))

    c.kill_head()
    go.write_text("go")  # the task finishes while the control store is down
    c.restart_head()

    assert runtime.get(running, timeout=60) == "done"
    # The same actor process, with its state: it never stopped.
    assert runtime.get(account.deposit.remote(5), timeout=60) == 15
    assert runtime.get(runtime.get_actor("bank").deposit.remote(1), timeout=60) == 16
    assert placement_group_table(pg)["state"] == "CREATED"
    # New work after the restart: tasks, actors, groups.
    assert runtime.get(Account.remote().deposit.remote(3), timeout=60) == 3
    pg2 = placement_group([{"CPU": 1}])
    assert pg2.wait(20)
    remove_placement_group(pg2)
    remove_placement_group(pg)
    runtime.kill(account)
    jobs = [j for j in runtime.util.state.list_jobs() if j.get("type") == "DRIVER"]
    assert any(j["status"] == "RUNNING" for j in jobs), jobs


def test_a_restarted_control_store_recovers_from_sqlite_and_work_goes_on(make_cluster, tmp_path):
    c = make_cluster(head={"num_cpus": 2}, workers=[{"num_cpus": 1}])
    _kill_and_restart_midwork(c, tmp_path)
    assert os.path.exists(os.path.join(c._procs.session_dir, "gcs.sqlite3"))


def test_a_restarted_control_store_recovers_from_redis(make_cluster, tmp_path, redis_server_url):
    c = make_cluster(head={"num_cpus": 2}, workers=[{"num_cpus": 1}], gcs_storage=redis_server_url)
    _kill_and_restart_midwork(c, tmp_path)


def test_a_node_that_does_not_come_back_is_declared_dead_and_its_actor_fails_over(make_cluster):
    c = make_cluster(head={"num_cpus": 1}, workers=[{"num_cpus": 1}], node_death_timeout_s=2.0,
                     heartbeat_interval_s=0.2)
    from runtime.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    victim = c.worker_nodes[0]
    a = Account.options(max_restarts=1, max_task_retries=1,
                        scheduling_strategy=NodeAffinitySchedulingStrategy(victim.node_id, soft=True)).remote()
    assert runtime.get(a.deposit.remote(1)) == 1
    c.kill_head()
    c.remove_node(victim, allow_graceful=False)  # dies while the control store is down
    from runtime._core import launcher
    launcher.restart_gcs(c._procs)
    wait_for(lambda: not any(n["NodeID"] == victim.node_id and n["Alive"] for n in runtime.nodes()),
             timeout=30, what="the node that never reconnected declared dead")
    assert runtime.get(a.deposit.remote(1), timeout=60) == 1  # restarted on the head: fresh state


@pytest.fixture
def redis_server_url(tmp_path):
    server = RedisServer(require_redis_server(), tmp_path / "redis", free_port())
    server.start(appendonly=True)
    try:
        yield server.url
    finally:
        server.stop()


def test_runtime_start_head_restart_brings_the_control_store_back(cli):
    """`runtime start --head` cluster; its control store SIGKILLed; `runtime start --head --restart`."""
    import json
    import signal
    cli.run("start", "--head", "--port", "0", "--num-cpus", "1")
    cli.driver("""
        import runtime
        runtime.init(address="auto", namespace="shop")
        @runtime.remote
        class Keeper:
            def __init__(self):
                self.items = []
            def add(self, x):
                self.items.append(x)
                return len(self.items)
        k = Keeper.options(name="keeper", lifetime="detached").remote()
        assert runtime.get(k.add.remote("a")) == 1
    """)
    info = json.load(open(os.path.join(cli.tmpdir, "orrery", "current_cluster.json")))
    os.kill(info["pids"]["gcs"], signal.SIGKILL)
    wait_for(lambda: cli.run("status", check=False).returncode != 0, timeout=20, what="the cluster seen as down")
    restarted = cli.run("start", "--head", "--restart")
    assert "Restarted the control store" in restarted.stdout, restarted.stdout
    out = cli.driver("""
        import runtime, time
        runtime.init(address="auto", namespace="shop")
        print(runtime.get(runtime.get_actor("keeper").add.remote("b")))
    """)
    assert out.strip() == "2", out
    cli.run("stop")


def test_a_submitted_job_running_across_a_restart_is_adopted_and_finishes(make_cluster, tmp_path):
    from runtime.job_submission import JobSubmissionClient
    c = make_cluster(head={"num_cpus": 1})
    go = tmp_path / "go"
    client = JobSubmissionClient(c.address)
    job = client.submit_job(entrypoint=f"python -c \"from runtime._testing.sync import wait_for_path; "
                                       f"print('released', wait_for_path({str(go)!r}))\"")
    wait_for(lambda: client.get_job_status(job) == "RUNNING", timeout=30, what="the job running")
    c.kill_head()
    c.restart_head()
    assert JobSubmissionClient(c.address).get_job_status(job) == "RUNNING"  # adopted, not lost
    go.write_text("go")
    wait_for(lambda: client.get_job_status(job) == "SUCCEEDED", timeout=30, what="the adopted job to succeed")
    assert "released True" in client.get_job_logs(job)
