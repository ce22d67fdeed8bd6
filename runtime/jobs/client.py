"""Submitting jobs to a cluster's job server (Ray's `JobSubmissionClient`).

    client = JobSubmissionClient("http://127.0.0.1:8265")  # the dashboard's job REST API, as Ray
    client = JobSubmissionClient("127.0.0.1:6379")         # or None: RUNTIME_ADDRESS, else "auto"
    job_id = client.submit_job(entrypoint="python train.py", runtime_env={"working_dir": "."})
    client.get_job_status(job_id), client.get_job_logs(job_id), client.stop_job(job_id)

An http(s):// address speaks Ray's job REST API (runtime/dashboard/jobs_api.py); any other
reaches the control store over our RPC, which also runs notebooks as jobs (`notebook=`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from ..rpc import tls
from ..rpc.connection import connect
from .manager import TERMINAL


def _max_package_bytes() -> int:
    from ..config import SystemConfig
    return SystemConfig.resolve().runtime_env_max_package_mb << 20


class JobStatus:
    PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED = "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED"


class JobDetails(dict):
    """A job's row: Ray's `JobDetails` fields as attributes (`info.status`), and a dict."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class JobSubmissionClient:
    def __init__(self, address: str | None = None, create_cluster_if_needed: bool = False,
                 cookies: dict | None = None, metadata: dict | None = None, headers: dict | None = None,
                 verify: Any = True, **kwargs: Any) -> None:
        """`create_cluster_if_needed` and `verify` are Ray's and unused (a job server is a running
        head's; an https dashboard is checked with the RUNTIME_TLS_* settings). `metadata` is
        added to every job's; `headers` and `cookies` go with every HTTP request, and
        RUNTIME_CLUSTER_TOKEN, when set, as the bearer token the dashboard may require."""
        from .._core.session import find_cluster
        from ..config import cluster_address_from_env
        address = address or cluster_address_from_env() or "auto"
        self._metadata = dict(metadata or {})
        self._http: HttpJobs | None = None
        if address.startswith(("http://", "https://")):
            headers = dict(headers or {})
            from .._core.launcher import dashboard_token
            token = os.environ.get("RUNTIME_CLUSTER_TOKEN") or dashboard_token(address)
            if token and not any(k.lower() == "authorization" for k in headers):
                headers["Authorization"] = f"Bearer {token}"  # a dashboard beyond loopback asks for it
            self._http = HttpJobs(address, headers, cookies or {})
            self.address = address
            return
        info = find_cluster(address)
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

    def submit_job(self, *, entrypoint: str = "", job_id: str | None = None, runtime_env: dict | None = None,
                   metadata: dict | None = None, submission_id: str | None = None,
                   entrypoint_num_cpus: float | None = None, entrypoint_num_gpus: float | None = None,
                   entrypoint_memory: int | None = None, entrypoint_resources: dict | None = None,
                   entrypoint_label_selector: dict | None = None, files: dict[str, bytes] | None = None,
                   artifact: str = "", working_dir: str | None = None, notebook: str | None = None,
                   parameters: list[tuple[str, str]] | None = None) -> str:
        """Run `entrypoint` (a shell command) on the head node. Ray's arguments: the entrypoint
        resources are held for the job while it runs (it is PENDING until they are free), so no
        task takes them; `entrypoint_label_selector` is accepted and unused. Ours, over RPC only: `files` written into the job's directory first,
        `artifact` (one of them kept as the job's result), `notebook` (a file in `files` run as
        a notebook job with `parameters` [(name, value), ...])."""
        metadata = {**self._metadata, **(metadata or {})}
        submission_id = submission_id or job_id
        resources = {k: v for k, v in (("entrypoint_num_cpus", entrypoint_num_cpus),
                                       ("entrypoint_num_gpus", entrypoint_num_gpus),
                                       ("entrypoint_memory", entrypoint_memory),
                                       ("entrypoint_resources", entrypoint_resources)) if v is not None}
        if self._http is not None:
            if files or notebook or artifact or working_dir:
                raise ValueError("Notebook jobs and job files go over the cluster address (HOST:PORT or 'auto'), "
                                 "not the dashboard's HTTP API; pass runtime_env={'working_dir': DIR} instead.")
            return self._http.submit(entrypoint, runtime_env, metadata, submission_id, resources)
        renv = self._resolve(runtime_env)
        files = files or {}
        reply, _ = self._call({"op": "submit_job", "entrypoint": entrypoint, "submission_id": submission_id,
                               "metadata": metadata, "files": list(files), "artifact": artifact,
                               "runtime_env": renv,
                               # Without a runtime_env working_dir, a job run from this machine
                               # starts in this directory (when the head is this machine).
                               "working_dir": None if renv.get("working_dir") else working_dir or os.getcwd(),
                               "notebook": notebook, "parameters": [list(p) for p in parameters or []],
                               **resources},
                              list(files.values()))
        return reply["job_id"]

    def _resolve(self, runtime_env: dict | None) -> dict:
        """Local working_dir and py_modules packed and uploaded to the head's package store."""
        from ..runtime_env.spec import resolve, validate
        validate(runtime_env)

        def upload(name: str, data: bytes) -> None:
            if not self._call({"op": "package_exists", "name": name})[0]["exists"]:
                self._call({"op": "put_package", "name": name}, [data], timeout=300)
        return resolve(runtime_env, upload, _max_package_bytes())

    def get_job_info(self, job_id: str) -> JobDetails:
        if self._http is not None:
            return JobDetails(self._http.get(f"/api/jobs/{job_id}"))
        reply, _ = self._call({"op": "job_status", "job_id": job_id})
        return JobDetails({k: v for k, v in reply.items() if k not in ("op", "id", "ok")},
                          submission_id=reply.get("job_id"))

    def get_job_status(self, job_id: str) -> str:
        return self.get_job_info(job_id)["status"]

    def get_job_logs(self, job_id: str) -> str:
        if self._http is not None:
            return self._http.get(f"/api/jobs/{job_id}/logs")["logs"]
        return self.tail_job_logs_once(job_id, 0)[0]

    async def tail_job_logs(self, job_id: str) -> AsyncIterator[str]:
        """The job's output as it is written, until the job has ended (as Ray's)."""
        if self._http is not None:
            async for text in self._http.tail(job_id):
                yield text
            return
        offset = 0
        while True:
            text, offset, status = await asyncio.to_thread(self.tail_job_logs_once, job_id, offset)
            if text:
                yield text
            elif status in TERMINAL:
                return
            else:
                await asyncio.sleep(0.2)  # the log file's growth is polled

    def tail_job_logs_once(self, job_id: str, offset: int) -> tuple[str, int, str]:
        """(new text, next offset, job status)."""
        reply, bufs = self._call({"op": "job_logs", "job_id": job_id, "offset": offset})
        return bytes(bufs[0]).decode(errors="replace"), reply["offset"], reply["status"]

    def get_job_artifact(self, job_id: str) -> tuple[str, bytes]:
        reply, bufs = self._call({"op": "job_artifact", "job_id": job_id})
        return reply["name"], bytes(bufs[0])

    def stop_job(self, job_id: str) -> bool:
        if self._http is not None:
            return bool(self._http.request("POST", f"/api/jobs/{job_id}/stop")["stopped"])
        reply, _ = self._call({"op": "stop_job", "job_id": job_id})
        return bool(reply["stopped"])

    def delete_job(self, job_id: str) -> bool:
        """Forget a finished job and its files (ValueError for one still running)."""
        if self._http is not None:
            return bool(self._http.request("DELETE", f"/api/jobs/{job_id}")["deleted"])
        reply, _ = self._call({"op": "delete_job", "job_id": job_id})
        return bool(reply["deleted"])

    def list_jobs(self) -> list[JobDetails]:
        if self._http is not None:
            return [JobDetails(j) for j in self._http.get("/api/jobs/")]
        reply, _ = self._call({"op": "list_jobs"})
        return [JobDetails(j) for j in reply["jobs"]]

    def _next_logs(self, job_id: str, offset: int) -> tuple[str, int, str]:
        """(new text, next offset, status) over either transport (HTTP reads the whole log)."""
        if self._http is None:
            return self.tail_job_logs_once(job_id, offset)
        status = self.get_job_status(job_id)  # first: a job that ends meanwhile still gets its last lines
        text = self.get_job_logs(job_id)
        return text[offset:], len(text), status

    def wait_until_finished(self, job_id: str, timeout: float | None = None, on_output: Any = None,
                            poll: float = 0.2) -> str:
        """Follow the job's log (to `on_output(text)`) until it ends; returns its final status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        offset = 0
        while True:
            text, offset, status = self._next_logs(job_id, offset)
            if text and on_output is not None:
                on_output(text)
            if status in TERMINAL and not text:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"Job {job_id} is still {status} after {timeout} s.")
            if not text:
                time.sleep(poll)  # polling a log file's growth; not a test synchronisation


class HttpJobs:
    """Ray's job REST API, from the client side (urllib for requests, aiohttp for the tail)."""

    def __init__(self, address: str, headers: dict, cookies: dict) -> None:
        self.base = address.rstrip("/")
        self.headers = dict(headers)
        if cookies:
            self.headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        # An https dashboard of a TLS cluster wants our certificate (runtime/rpc/tls.py); without
        # TLS settings here, the system's authorities check an https server as usual.
        self.ssl = tls.client_context() if self.base.startswith("https://") else None

    def request(self, method: str, path: str, body: Any = None, data: bytes | None = None,
                raw: bool = False) -> Any:
        """The JSON answer (the text with `raw`); ValueError for a 400/404, RuntimeError for other
        refusals (the server's message in both), ConnectionError when nothing answers."""
        import json
        import urllib.error
        import urllib.request
        if body is not None:
            data = json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=60, context=self.ssl) as resp:
                raw_bytes = resp.read()
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            try:
                answer = json.loads(text)
                text = answer.get("message") or answer.get("msg") or text  # job API / state API
            except (ValueError, AttributeError):
                pass
            raise (ValueError if e.code in (400, 404) else RuntimeError)(
                f"{method} {path} failed with HTTP {e.code}: {text}") from None
        except urllib.error.URLError as e:
            raise ConnectionError(f"No job server answers at {self.base} ({e.reason}). Is the head's dashboard "
                                  "on (runtime status prints its URL)?") from None
        if raw:
            return raw_bytes.decode(errors="replace")
        return json.loads(raw_bytes) if raw_bytes else None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def submit(self, entrypoint: str, runtime_env: dict | None, metadata: dict, submission_id: str | None,
               resources: dict | None = None) -> str:
        from ..runtime_env.spec import resolve, validate
        validate(runtime_env)
        env = resolve(runtime_env, self.upload, _max_package_bytes())
        if env.get("pip"):  # Ray's wire form of pip/uv
            spec = env.pop("pip")
            key = spec["installer"]
            env[key] = {"packages": spec["packages"], f"{key}_check": spec["check"]}
            if spec["install_options"]:
                env[key][f"{key}_pip_install_options" if key == "uv" else "pip_install_options"] = spec["install_options"]
        reply = self.request("POST", "/api/jobs/", {"entrypoint": entrypoint, "runtime_env": env or None,
                                                    "metadata": metadata or None, "submission_id": submission_id,
                                                    **(resources or {})})
        return reply["submission_id"]

    def upload(self, name: str, data: bytes) -> None:
        """Upload a package once by content hash (Ray's client asks first, then PUTs)."""
        try:
            self.request("GET", f"/api/packages/gcs/{name}")
        except ValueError:  # 404: not there yet
            self.request("PUT", f"/api/packages/gcs/{name}", data=data)

    async def tail(self, job_id: str) -> AsyncIterator[str]:
        import aiohttp
        url = self.base.replace("http", "ws", 1) + f"/api/jobs/{job_id}/logs/tail"
        async with aiohttp.ClientSession(headers=self.headers) as session, \
                session.ws_connect(url, ssl=self.ssl or True) as ws:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    yield msg.data
