"""Submitting jobs to a cluster's job server (Ray's `JobSubmissionClient`, over our own RPC).

    client = JobSubmissionClient("127.0.0.1:6379")     # or None: RUNTIME_ADDRESS, else "auto"
    job_id = client.submit_job(entrypoint="python train.py")
    client.get_job_status(job_id), client.get_job_logs(job_id), client.stop_job(job_id)
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from ..rpc.connection import connect
from .manager import TERMINAL


class JobStatus:
    PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED = "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED"


class JobSubmissionClient:
    def __init__(self, address: str | None = None) -> None:
        from .._core.api import _find_cluster
        from ..config import cluster_address_from_env
        address = address or cluster_address_from_env() or "auto"
        info = _find_cluster(address)
        self.address, self._token = info["gcs_address"], info["token"]

    def _call(self, msg: dict, bufs: list | tuple = (), timeout: float = 60.0) -> tuple[dict, list]:
        async def go() -> tuple[dict, list]:
            conn = await connect(self.address, {}, self._token, info={"kind": "job-client"}, timeout=10,
                                 name="job-client")
            try:
                return await conn.request(msg, bufs, timeout=timeout)
            finally:
                conn.close()
        return asyncio.run(go())

    def submit_job(self, *, entrypoint: str = "", submission_id: str | None = None, runtime_env: dict | None = None,
                   metadata: dict | None = None, files: dict[str, bytes] | None = None, artifact: str = "",
                   working_dir: str | None = None, notebook: str | None = None,
                   parameters: list[tuple[str, str]] | None = None) -> str:
        """Run `entrypoint` (a shell command) on the head node. `files` are written into the job's
        directory first; `artifact` names one of its files to keep as the job's result.
        `notebook` names a file in `files` to run as a notebook job (runtime/jobs/notebook.py)
        with `parameters` [(name, value), ...]; the executed notebook becomes the artifact."""
        env = dict((runtime_env or {}).get("env_vars") or {})
        files = files or {}
        reply, _ = self._call({"op": "submit_job", "entrypoint": entrypoint, "submission_id": submission_id,
                               "metadata": metadata, "env": env, "files": list(files), "artifact": artifact,
                               "working_dir": working_dir or os.getcwd(), "notebook": notebook,
                               "parameters": [list(p) for p in parameters or []]}, list(files.values()))
        return reply["job_id"]

    def get_job_info(self, job_id: str) -> dict:
        reply, _ = self._call({"op": "job_status", "job_id": job_id})
        return {k: v for k, v in reply.items() if k not in ("op", "id", "ok")}

    def get_job_status(self, job_id: str) -> str:
        return self.get_job_info(job_id)["status"]

    def get_job_logs(self, job_id: str) -> str:
        return self.tail_job_logs_once(job_id, 0)[0]

    def tail_job_logs_once(self, job_id: str, offset: int) -> tuple[str, int, str]:
        """(new text, next offset, job status)."""
        reply, bufs = self._call({"op": "job_logs", "job_id": job_id, "offset": offset})
        return bytes(bufs[0]).decode(errors="replace"), reply["offset"], reply["status"]

    def get_job_artifact(self, job_id: str) -> tuple[str, bytes]:
        reply, bufs = self._call({"op": "job_artifact", "job_id": job_id})
        return reply["name"], bytes(bufs[0])

    def stop_job(self, job_id: str) -> bool:
        reply, _ = self._call({"op": "stop_job", "job_id": job_id})
        return bool(reply["stopped"])

    def list_jobs(self) -> list[dict]:
        reply, _ = self._call({"op": "list_jobs"})
        return reply["jobs"]

    def wait_until_finished(self, job_id: str, timeout: float | None = None, on_output: Any = None,
                            poll: float = 0.2) -> str:
        """Follow the job's log (to `on_output(text)`) until it ends; returns its final status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        offset = 0
        while True:
            text, offset, status = self.tail_job_logs_once(job_id, offset)
            if text and on_output is not None:
                on_output(text)
            if status in TERMINAL and not text:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"Job {job_id} is still {status} after {timeout} s.")
            if not text:
                time.sleep(poll)  # polling a log file's growth; not a test synchronisation
