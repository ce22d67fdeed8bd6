"""Ray's own job clients against our dashboard: `make compat-ray`.

Run with Ray's interpreter (.venv-ray) and the address of a head started by our runtime
(`runtime start --head --dashboard-port PORT`):

    .venv-ray/bin/python benchmarks/compat_ray.py http://127.0.0.1:PORT

It uses `ray.job_submission.JobSubmissionClient` (submit with a working_dir that Ray's client
packs and uploads, status, logs, tail_job_logs, list, stop, delete) and the `ray job` CLI
(submit, which follows the log over the websocket; status; logs; list), and exits non-zero
with the reason on the first mismatch. Nothing here is ours but the server it talks to.
"""

from __future__ import annotations

import asyncio
import os
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
    print("Ray 2.60's JobSubmissionClient and `ray job` CLI work against this dashboard.")


if __name__ == "__main__":
    main(sys.argv[1])
