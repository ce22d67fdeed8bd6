"""Ray's own job clients against our dashboard: `make compat-ray`.

Run with Ray's interpreter (.venv-ray) and the address of a head started by our runtime
(`runtime start --head --dashboard-port PORT`):

    .venv-ray/bin/python benchmarks/compat_ray.py http://127.0.0.1:PORT

It uses `ray.job_submission.JobSubmissionClient` (submit with a working_dir that Ray's client
packs and uploads, status, logs, tail_job_logs, list, stop, delete), the `ray job` CLI
(submit, which follows the log over the websocket; status; logs; list), Ray's state API
client (`ray.util.state.list_*`, `get_actor`, `summarize_tasks`) and state CLI (`ray list`,
`ray get`, `ray summary`), and exits non-zero with the
reason on the first mismatch. Nothing here is ours but the server it talks to.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
import tempfile
import time


def check(cond: bool, what: str) -> None:
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        sys.exit(1)


def wait_status(client, job_id: str, want: set, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = str(client.get_job_status(job_id))
        status = status.split(".")[-1]
        if status in want or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def main(address: str) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    with tempfile.TemporaryDirectory() as wd:
        with open(os.path.join(wd, "hello.py"), "w") as f:
            f.write("import os\nprint('hello from a Ray client, in', os.path.basename(os.getcwd()))\n"
                    "print('GREETING is', os.environ['GREETING'])\n")
        job_id = client.submit_job(entrypoint="python hello.py",
                                   runtime_env={"working_dir": wd, "env_vars": {"GREETING": "hi"}},
                                   metadata={"owner": "ci"})
    status = wait_status(client, job_id, {"SUCCEEDED", "FAILED", "STOPPED"})
    logs = client.get_job_logs(job_id)
    check(status == "SUCCEEDED", f"JobSubmissionClient.submit_job with a working_dir: {status}; logs: {logs!r}")
    check("hello from a Ray client" in logs and "GREETING is hi" in logs, "get_job_logs has the job's lines")
    info = client.get_job_info(job_id)
    check(info.status == JobStatus.SUCCEEDED and info.metadata == {"owner": "ci"} and info.entrypoint == "python hello.py",
          f"get_job_info gives Ray's JobDetails ({info.submission_id}, {info.status})")
    check(any(j.submission_id == job_id for j in client.list_jobs()), "list_jobs lists it")

    with tempfile.TemporaryDirectory() as root:  # py_modules as Ray's client uploads them
        os.makedirs(os.path.join(root, "wd"))
        os.makedirs(os.path.join(root, "shipped_mod"))
        with open(os.path.join(root, "shipped_mod", "__init__.py"), "w") as f:
            f.write("WHERE = 'py_modules'\n")
        with open(os.path.join(root, "wd", "main.py"), "w") as f:
            f.write("import shipped_mod, runtime\nruntime.init()\n@runtime.remote\ndef f():\n"
                    "    import shipped_mod\n    return shipped_mod.WHERE\n"
                    "print('module from', runtime.get(f.remote()))\n")
        mod_job = client.submit_job(entrypoint="python main.py", runtime_env={
            "working_dir": os.path.join(root, "wd"), "py_modules": [os.path.join(root, "shipped_mod")]})
    status = wait_status(client, mod_job, {"SUCCEEDED", "FAILED", "STOPPED"})
    logs = client.get_job_logs(mod_job)
    check(status == "SUCCEEDED" and "module from py_modules" in logs,
          f"submit_job with py_modules reaches the job's driver and its tasks: {status}; logs: {logs!r}")

    sleeper = client.submit_job(entrypoint="python -c \"import time; print('sleeping', flush=True); time.sleep(120)\"")
    check(wait_status(client, sleeper, {"RUNNING"}) == "RUNNING", "a second job runs")

    async def tail() -> str:
        seen = ""
        async for lines in client.tail_job_logs(sleeper):
            seen += lines
            if "sleeping" in seen:
                return seen
        return seen
    check("sleeping" in asyncio.run(asyncio.wait_for(tail(), 60)), "tail_job_logs streams its output")
    check(client.stop_job(sleeper) is True, "stop_job")
    check(wait_status(client, sleeper, {"STOPPED"}) == "STOPPED", "the stopped job is STOPPED")
    check(client.delete_job(sleeper) is True, "delete_job")
    check(all(j.submission_id != sleeper for j in client.list_jobs()), "the deleted job is gone from list_jobs")

    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    cli = subprocess.run([ray, "job", "submit", "--address", address, "--", "python", "-c",
                          "print('hello from ray job submit')"], capture_output=True, text=True, timeout=120)
    out = cli.stdout + cli.stderr
    check(cli.returncode == 0 and "hello from ray job submit" in out and "succeeded" in out,
          "`ray job submit` follows the log over the websocket and ends succeeded"
          + ("" if cli.returncode == 0 else f" (exit {cli.returncode}): {out[-600:]!r}"))
    listed = subprocess.run([ray, "job", "list", "--address", address], capture_output=True, text=True, timeout=60)
    check(listed.returncode == 0 and job_id in listed.stdout, "`ray job list` lists the jobs")
    status = subprocess.run([ray, "job", "status", "--address", address, job_id], capture_output=True, text=True,
                            timeout=60)
    check(status.returncode == 0 and "succeeded" in status.stdout + status.stderr, "`ray job status` says succeeded")
    logs = subprocess.run([ray, "job", "logs", "--address", address, job_id], capture_output=True, text=True,
                          timeout=60)
    check(logs.returncode == 0 and "hello from a Ray client" in logs.stdout + logs.stderr, "`ray job logs` prints the log")
    check_state_api(address, client, ray)
    print("Ray 2.60's JobSubmissionClient, `ray job` CLI, state API client and state CLI work against this "
          "dashboard.")


STATE_JOB = """
import runtime
runtime.init()

@runtime.remote
def compat_square(x):
    print("squaring", x)
    return x * x

@runtime.remote
class CompatCounter:
    def __init__(self):
        self.kept = runtime.put(b"x" * 200_000)  # an object that outlives the job, for list_objects

    def hello(self):
        print("hello from the compat actor")
        return 1

actor = CompatCounter.options(name="compat_counter", lifetime="detached").remote()
assert runtime.get(actor.hello.remote()) == 1
assert runtime.get([compat_square.remote(i) for i in range(3)]) == [0, 1, 4]
pg = runtime.util.placement_group([{"CPU": 0.1}], name="compat_pg", lifetime="detached")
runtime.get(pg.ready())
"""


def check_state_api(address: str, client, ray: str) -> None:
    """Ray's state API client (`ray.util.state`) and CLI (`ray list/get/summary/logs`): every row
    of every resource goes through Ray's own schema classes, which refuse a field they lack."""
    from ray.util import state

    job = client.submit_job(entrypoint=f"python -c {shlex.quote(STATE_JOB)}")
    status = wait_status(client, job, {"SUCCEEDED", "FAILED"})
    check(status == "SUCCEEDED", f"a job running tasks and an actor on our runtime: {status} "
          f"{client.get_job_logs(job)[-500:]!r}")
    for fn in (state.list_actors, state.list_tasks, state.list_nodes, state.list_workers, state.list_objects,
               state.list_jobs, state.list_placement_groups):
        rows = fn(address=address, detail=True, limit=10000)
        check(len(rows) >= 1, f"ray.util.state.{fn.__name__}(detail=True): {len(rows)} rows in Ray's schema")
    tasks = state.list_tasks(address=address, filters=[("func_or_class_name", "=", "compat_square")], detail=True)
    check(len(tasks) == 3 and all(t.state == "FINISHED" for t in tasks), "list_tasks with a filter finds the 3 tasks")
    [actor] = state.list_actors(address=address, filters=[("name", "=", "compat_counter")])
    check(actor.state == "ALIVE" and actor.class_name == "CompatCounter", "list_actors finds the named actor")
    check(state.get_actor(actor.actor_id, address=address).name == "compat_counter", "get_actor by id")
    summary = state.summarize_tasks(address=address)["cluster"]["summary"]
    check(summary["compat_square"]["state_counts"] == {"FINISHED": 3}, "summarize_tasks counts them by function")
    # Not here: Ray's log client (`list_logs`, `get_log`, `ray logs`) takes the bootstrap address
    # of Ray's own control store and asks it for the dashboard's; it cannot be pointed at ours.
    for args, want in ((["list", "actors"], "compat_counter"), (["list", "tasks", "--filter", "state=FINISHED"],
                                                                 "compat_square"),
                       (["summary", "tasks"], "compat_square"), (["get", "actors", actor.actor_id], "CompatCounter")):
        done = subprocess.run([ray, *args, "--address", address], capture_output=True, text=True, timeout=60)
        check(done.returncode == 0 and want in done.stdout, f"`ray {' '.join(args[:2])}` "
              + ("" if done.returncode == 0 else f"(exit {done.returncode}): {(done.stdout + done.stderr)[-600:]!r}"))



if __name__ == "__main__":
    main(sys.argv[1])
