"""The job server, hosted by the control store on the head node (minimal: run, status, logs, stop).

A submitted job is a shell entrypoint run as its own process group with RUNTIME_ADDRESS set, so
whatever it starts joins this cluster. Its stdout and stderr go to `<session>/jobs/<id>/job.log`.
A notebook job's entrypoint is `python -m runtime.jobs.notebook`, which keeps the executed
notebook in the job's directory as the job's artifact.

Job states (as Ray's): PENDING -> RUNNING -> SUCCEEDED | FAILED | STOPPED.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import signal
import sys
import time
from typing import Any

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class JobManager:
    def __init__(self, session_dir: str, gcs_address: str) -> None:
        self.root = os.path.join(session_dir, "jobs")
        self.gcs_address = gcs_address
        self.jobs: dict[str, dict] = {}
        self.procs: dict[str, asyncio.subprocess.Process] = {}

    def job_dir(self, job_id: str) -> str:
        return os.path.join(self.root, job_id)

    async def submit(self, msg: dict, bufs: list) -> dict:
        job_id = msg["submission_id"] = msg.get("submission_id") or f"job_{secrets.token_hex(6)}"
        if job_id in self.jobs:
            raise ValueError(f"A job with submission id {job_id!r} already exists; pick another id.")
        entrypoint = msg.get("entrypoint") or ""
        notebook = msg.get("notebook")
        if notebook:  # run with this machine's Python, which has the runner and the kernel
            executed = f"executed-{notebook}"
            entrypoint = " ".join(shlex.quote(a) for a in [
                sys.executable, "-m", "runtime.jobs.notebook", notebook, os.path.join(
                    self.job_dir(msg.get("submission_id") or ""), executed)] + [
                x for k, v in msg.get("parameters") or [] for x in ("-p", str(k), str(v))])
            msg["artifact"] = executed
        if not isinstance(entrypoint, str) or not entrypoint.strip():
            raise ValueError("A job needs an entrypoint: a shell command such as 'python script.py'.")
        jdir = self.job_dir(job_id)
        os.makedirs(jdir)
        for name, data in zip(msg.get("files", []), bufs):  # e.g. the notebook, shipped by the client
            if os.path.basename(name) != name:
                raise ValueError(f"Job file names must be plain names, not paths: {name!r}.")
            with open(os.path.join(jdir, name), "wb") as f:
                f.write(data)
        cwd = msg.get("working_dir") or jdir
        if not os.path.isdir(cwd):
            cwd = jdir  # submitted from another machine: its directory does not exist here
        job = {"job_id": job_id, "submission_id": job_id, "type": "SUBMISSION", "entrypoint": entrypoint,
               "status": "PENDING", "message": "", "start_time": time.time(), "end_time": None,
               "metadata": msg.get("metadata") or {}, "job_dir": jdir, "log_path": os.path.join(jdir, "job.log"),
               "artifact": msg.get("artifact") or "", "driver_pid": None}
        self.jobs[job_id] = job
        env = {**os.environ, **(msg.get("env") or {}), "RUNTIME_ADDRESS": self.gcs_address.removeprefix("tcp:"),
               "RUNTIME_JOB_ID": job_id, "RUNTIME_JOB_DIR": jdir, "KERNEL_EXT_NONINTERACTIVE": "1",
               "PYTHONUNBUFFERED": "1"}
        log = open(job["log_path"], "ab")
        try:
            proc = await asyncio.create_subprocess_shell(entrypoint, stdin=asyncio.subprocess.DEVNULL, stdout=log,
                                                         stderr=asyncio.subprocess.STDOUT, cwd=cwd, env=env,
                                                         start_new_session=True)
        except OSError as e:
            job.update(status="FAILED", message=f"could not start the entrypoint: {e}", end_time=time.time())
            return {"job_id": job_id}
        finally:
            log.close()
        job.update(status="RUNNING", driver_pid=proc.pid)
        self.procs[job_id] = proc
        asyncio.get_running_loop().create_task(self._wait(job_id, proc))
        return {"job_id": job_id}

    async def _wait(self, job_id: str, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self.procs.pop(job_id, None)
        job = self.jobs[job_id]
        if job["status"] == "STOPPED":
            pass
        elif code == 0:
            job["status"], job["message"] = "SUCCEEDED", "the entrypoint exited with code 0"
        else:
            job["status"] = "FAILED"
            job["message"] = self._failure_message(job) or f"the entrypoint exited with code {code}"
        job["end_time"] = time.time()

    def _failure_message(self, job: dict) -> str:
        """A notebook job writes which cell failed; that is the useful message."""
        try:
            with open(os.path.join(job["job_dir"], "failure.txt")) as f:
                return f.read().strip()
        except OSError:
            return ""

    def get(self, job_id: str) -> dict:
        job = self.jobs.get(job_id)
        if job is None:
            known = ", ".join(sorted(self.jobs)[-5:]) or "none yet"
            raise ValueError(f"No job {job_id!r} on this cluster (recent: {known}). List jobs with "
                             "`runtime job list`.")
        return job

    def logs(self, job_id: str, offset: int) -> tuple[dict, list]:
        job = self.get(job_id)
        try:
            with open(job["log_path"], "rb") as f:
                f.seek(offset)
                data = f.read(4 << 20)
        except OSError:
            data = b""
        return {"offset": offset + len(data), "status": job["status"]}, [data]

    def artifact(self, job_id: str) -> tuple[dict, list]:
        job = self.get(job_id)
        path = os.path.join(job["job_dir"], job["artifact"]) if job["artifact"] else ""
        if not path or not os.path.exists(path):
            raise ValueError(f"Job {job_id} has no artifact (only notebook jobs keep one, once they have run).")
        with open(path, "rb") as f:
            return {"name": job["artifact"], "path": path}, [f.read()]

    def stop(self, job_id: str) -> bool:
        job = self.get(job_id)
        proc = self.procs.get(job_id)
        if proc is None or job["status"] in TERMINAL:
            return False
        job["status"], job["message"] = "STOPPED", "stopped by request"
        _kill_group(proc.pid, signal.SIGTERM)
        return True

    def stop_all(self) -> None:
        for proc in list(self.procs.values()):
            _kill_group(proc.pid, signal.SIGKILL)

    def list(self) -> list[dict]:
        return list(self.jobs.values())


def _kill_group(pid: int, sig: int) -> Any:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
