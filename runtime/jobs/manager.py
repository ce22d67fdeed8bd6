"""The job server, hosted by the control store on the head node (minimal: run, status, logs, stop).

A submitted job is a shell entrypoint run as its own process group with RUNTIME_ADDRESS set, so
whatever it starts joins this cluster. Its stdout and stderr go to `<session>/jobs/<id>/job.log`.
A notebook job's entrypoint is `python -m runtime.jobs.notebook`, which keeps the executed
notebook in the job's directory as the job's artifact.

Job states (as Ray's): PENDING -> RUNNING -> SUCCEEDED | FAILED | STOPPED.

Jobs outlive the control store: the shell that runs the entrypoint writes its exit code to
`<job dir>/exit_code`, every change of a job is persisted (`persist`), and a restarted control
store adopts the jobs that were running: it watches their process by pid and reads the exit
code from the file when it ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shlex
import signal
import sys
import time
from typing import Any

from .._core.private_files import make_private_dir, open_private

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class JobManager:
    def __init__(self, session_dir: str, gcs_address: str, persist: Any = None,
                 recovered: dict[str, dict] | None = None, forget: Any = None, reserve: Any = None,
                 runtime_envs: Any = None, entrypoint_umask: int | None = None) -> None:
        """`reserve(job_id, demand)`: an async function that holds `demand` (Ray's entrypoint
        resources) for the job and returns an async release function; the control store's
        placement groups (server.py). Without it entrypoint resources are refused.
        `runtime_envs`: a RuntimeEnvAgent (runtime/node/runtime_env_agent.py) that makes a job's
        runtime_env ready on the head for its entrypoint. `entrypoint_umask`: the umask the
        entrypoints run with (the user's: the control store's own is 077); None: this process's."""
        self.root = os.path.join(session_dir, "jobs")
        self.gcs_address = gcs_address
        self.persist = persist or (lambda job: None)  # called with a job whenever it changes
        self.forget = forget or (lambda job_id: None)  # called with a deleted job's id
        self.jobs: dict[str, dict] = dict(recovered or {})
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.reserve = reserve
        self.runtime_envs = runtime_envs
        self.entrypoint_umask = -1 if entrypoint_umask is None else entrypoint_umask  # Popen's "unchanged"
        self.releases: dict[str, Any] = {}  # job id -> release of its entrypoint resources
        self.waiting: dict[str, asyncio.Task] = {}  # jobs waiting for their entrypoint resources
        for job_id, job in self.jobs.items():  # running when the previous control store died
            if job["status"] in ("PENDING", "RUNNING"):
                asyncio.get_running_loop().create_task(self._adopt(job_id))

    async def _adopt(self, job_id: str) -> None:
        job = self.jobs[job_id]
        pid = job.get("driver_pid")
        while pid and _alive(pid):
            await asyncio.sleep(0.5)  # not our child any more: poll its pid
        self._finished(job_id, None)

    def job_dir(self, job_id: str) -> str:
        return os.path.join(self.root, job_id)

    async def submit(self, msg: dict, bufs: list) -> dict:
        job_id = msg["submission_id"] = msg.get("submission_id") or f"job_{secrets.token_hex(6)}"
        if not isinstance(job_id, str) or os.path.basename(job_id) != job_id or job_id in (".", ".."):
            raise ValueError(f"A submission id is a plain name (it names the job's directory), not {job_id!r}.")
        if job_id in self.jobs:
            raise ValueError(f"A job with submission id {job_id!r} already exists; pick another id.")
        demand = entrypoint_demand(msg)
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
        make_private_dir(self.root)
        os.mkdir(jdir, 0o700)  # fails if it exists
        for name, data in zip(msg.get("files", []), bufs):  # e.g. the notebook, shipped by the client
            if os.path.basename(name) != name:
                raise ValueError(f"Job file names must be plain names, not paths: {name!r}.")
            with open_private(os.path.join(jdir, name), "wb") as f:
                f.write(data)
        cwd = msg.get("working_dir") or jdir
        if not os.path.isdir(cwd):
            cwd = jdir  # submitted from another machine: its directory does not exist here
        job = {"job_id": job_id, "submission_id": job_id, "type": "SUBMISSION", "entrypoint": entrypoint,
               "status": "PENDING", "message": "", "start_time": time.time(), "end_time": None,
               "metadata": msg.get("metadata") or {}, "runtime_env": msg.get("runtime_env") or {}, "job_dir": jdir, "log_path": os.path.join(jdir, "job.log"),
               "artifact": msg.get("artifact") or "", "driver_pid": None}
        self.jobs[job_id] = job
        # The head's own interpreter comes first on PATH, so `python` in an entrypoint is the one
        # the cluster runs on (a head started from an unactivated venv has the system's first).
        path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
        renv = msg.get("runtime_env") or {}
        env = {**os.environ, "PATH": path, **(renv.get("env_vars") or {}),
               "RUNTIME_ADDRESS": self.gcs_address.removeprefix("tcp:"),
               "RUNTIME_JOB_ID": job_id, "RUNTIME_JOB_DIR": jdir, "KERNEL_EXT_NONINTERACTIVE": "1",
               "PYTHONUNBUFFERED": "1"}
        if renv:  # the job's driver applies it to every task (runtime/_core/api.py _job_runtime_env)
            env["RUNTIME_JOB_RUNTIME_ENV"] = json.dumps(renv)
        needs_setup = self.runtime_envs is not None and self.runtime_envs.needs_setup(renv)
        if demand and self.reserve is None:
            raise ValueError("This job server cannot reserve entrypoint resources.")
        if demand or needs_setup:
            job["message"] = (f"waiting for the entrypoint resources {demand}" if demand else
                              "setting up the runtime_env")
            self.persist(job)
            task = self.waiting[job_id] = asyncio.get_running_loop().create_task(
                self._start_when_ready(job_id, demand, renv if needs_setup else {}, entrypoint, cwd, env))
            task.add_done_callback(lambda _t: self.waiting.pop(job_id, None))
            return {"job_id": job_id}
        await self._start(job_id, entrypoint, cwd, env)
        return {"job_id": job_id}

    async def _start_when_ready(self, job_id: str, demand: dict, renv: dict, entrypoint: str, cwd: str,
                                env: dict) -> None:
        """The job stays PENDING while its runtime_env is made ready on the head (its
        working_dir becomes the entrypoint's cwd, py_modules and pip packages go on its
        PYTHONPATH) and until Ray's entrypoint resources are held for it (a placement group of
        one bundle, so no task can take them; released when it ends)."""
        if renv:
            try:
                ctx = await self.runtime_envs.setup(renv)
            except Exception as e:  # noqa: BLE001 - the job fails, saying why; the server carries on
                job = self.jobs[job_id]
                job.update(status="FAILED", message=f"runtime_env setup failed: {e}", end_time=time.time())
                self.persist(job)
                return
            cwd = ctx["cwd"] or cwd
            env["PYTHONPATH"] = os.pathsep.join(ctx["paths"] + [p for p in [env.get("PYTHONPATH")] if p])
            env["PATH"] = os.pathsep.join(ctx["bin"] + [env["PATH"]])
        if not demand:
            self.jobs[job_id]["message"] = ""
            await self._start(job_id, entrypoint, cwd, env)
            return
        try:
            self.releases[job_id] = await self.reserve(job_id, demand)
        except Exception as e:  # noqa: BLE001 - e.g. resources no node has: the job fails, saying so
            job = self.jobs[job_id]
            job.update(status="FAILED", message=f"could not reserve the entrypoint resources {demand}: {e}",
                       end_time=time.time())
            self.persist(job)
            return
        job = self.jobs[job_id]
        job["message"] = ""
        await self._start(job_id, entrypoint, cwd, env)

    async def _start(self, job_id: str, entrypoint: str, cwd: str, env: dict) -> None:
        job = self.jobs[job_id]
        jdir = job["job_dir"]
        log = open_private(job["log_path"], "ab")
        exit_file = shlex.quote(os.path.join(jdir, "exit_code"))
        # The entrypoint runs with the user's umask: the shell's `>` keeps this file's mode, 0600.
        open_private(os.path.join(jdir, "exit_code"), "wb").close()
        try:
            proc = await asyncio.create_subprocess_shell(f"{entrypoint}\nprintf %s $? > {exit_file}",
                                                         stdin=asyncio.subprocess.DEVNULL, stdout=log,
                                                         stderr=asyncio.subprocess.STDOUT, cwd=cwd, env=env,
                                                         start_new_session=True, umask=self.entrypoint_umask)
        except OSError as e:
            job.update(status="FAILED", message=f"could not start the entrypoint: {e}", end_time=time.time())
            self.persist(job)
            self._release(job_id)
            return
        finally:
            log.close()
        job.update(status="RUNNING", driver_pid=proc.pid)
        self.persist(job)
        self.procs[job_id] = proc
        asyncio.get_running_loop().create_task(self._wait(job_id, proc))

    def _release(self, job_id: str) -> None:
        release = self.releases.pop(job_id, None)
        if release is not None:
            asyncio.get_running_loop().create_task(release())

    async def _wait(self, job_id: str, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self.procs.pop(job_id, None)
        self._finished(job_id, code)

    def _finished(self, job_id: str, shell_code: int | None) -> None:
        self._release(job_id)
        job = self.jobs[job_id]
        try:
            with open(os.path.join(job["job_dir"], "exit_code")) as f:
                code: int | None = int(f.read().strip())
        except (OSError, ValueError):
            code = shell_code if shell_code else None  # the shell was killed before it could write
        job["exit_code"] = code
        if job["status"] == "STOPPED":
            pass
        elif code == 0:
            job["status"], job["message"] = "SUCCEEDED", "the entrypoint exited with code 0"
        else:
            job["status"] = "FAILED"
            job["message"] = self._failure_message(job) or (
                f"the entrypoint exited with code {code}" if code is not None else
                "the entrypoint's shell was killed before it could report an exit code")
        job["end_time"] = time.time()
        self.persist(job)

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
        waiting = self.waiting.get(job_id)
        if waiting is not None and not job.get("driver_pid"):  # still waiting for its resources
            waiting.cancel()
            job.update(status="STOPPED", message="stopped by request while waiting for its entrypoint resources",
                       end_time=time.time())
            self.persist(job)
            self._release(job_id)
            return True
        if job["status"] in TERMINAL or not job.get("driver_pid"):
            return False
        job["status"], job["message"] = "STOPPED", "stopped by request"
        self.persist(job)
        _kill_group(job["driver_pid"], signal.SIGTERM)
        return True

    def delete(self, job_id: str) -> bool:
        """Forget a finished job and remove its directory (Ray's `delete_job`)."""
        job = self.get(job_id)
        if job["status"] not in TERMINAL:
            raise ValueError(f"Job {job_id} is {job['status']}; only a finished job can be deleted. Stop it first "
                             f"(`runtime job stop {job_id}`).")
        import shutil
        del self.jobs[job_id]
        self.forget(job_id)
        shutil.rmtree(job["job_dir"], ignore_errors=True)
        return True

    def stop_all(self) -> None:
        for job in self.jobs.values():
            if job["status"] not in TERMINAL and job.get("driver_pid"):
                _kill_group(job["driver_pid"], signal.SIGKILL)

    def list(self) -> list[dict]:
        return list(self.jobs.values())


def entrypoint_demand(msg: dict) -> dict[str, float]:
    """Ray's entrypoint_num_cpus / _num_gpus / _memory / _resources as one resource demand;
    a ValueError for negative or non-numeric amounts."""
    demand: dict[str, float] = {}
    for key, name in (("entrypoint_num_cpus", "CPU"), ("entrypoint_num_gpus", "GPU"), ("entrypoint_memory", "memory")):
        if msg.get(key) is not None:
            demand[name] = msg[key]
    for name, amount in (msg.get("entrypoint_resources") or {}).items():
        demand[str(name)] = amount
    for name, amount in demand.items():
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise ValueError(f"Entrypoint resource {name} must be a non-negative number, got {amount!r}.")
    return {k: float(v) for k, v in demand.items() if v > 0}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not running
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _kill_group(pid: int, sig: int) -> Any:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
