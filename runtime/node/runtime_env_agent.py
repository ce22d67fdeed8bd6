"""A node's runtime environments (Ray's runtime env agent): before a worker starts for a
resolved runtime_env (runtime/runtime_env/spec.py), its packages are fetched from the head
and unpacked, and its pip/uv packages installed, once per node into a cache; every later
worker of that environment starts from the cache.

Layout, under `<session>/runtime_resources/<node id>/`:
    packages/<name>/      an unpacked working_dir or py_module (a wheel is unpacked too)
    pip/<spec hash>/      the packages a pip/uv spec adds, installed with `--target`
    pip/<spec hash>.log   the installer's output (a cached spec is never installed again)

A pip environment is a layer in front of the runtime's own interpreter and site-packages,
not a separate virtualenv: a virtualenv made from our virtualenv could not see our packages
(its "system site-packages" are the base interpreter's), so `runtime` and its dependencies
would have to be installed into every one. Only what the runtime's environment lacks (or has
at another version) is installed: uv resolves the spec against the runtime's environment
first (`--dry-run`), then installs just those pins without dependencies.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from .._core.private_files import make_private_dir, make_pycache_dirs, make_tree_private, open_private
from ..exceptions import RuntimeEnvSetupError
from ..runtime_env.packaging import unpack
from ..runtime_env.spec import env_hash

logger = logging.getLogger(__name__)
_PIN = re.compile(r"^ \+ ([A-Za-z0-9_.\-\[\]]+)==(\S+)$")
FAILURE_CACHE_S = 30.0  # a failed setup is answered from memory this long, then tried again


@dataclass
class Entry:
    kind: str  # "working_dir" | "py_modules" | "pip"
    key: str
    path: str
    size: int = 0
    users: int = 0  # live workers using it
    last_used: float = field(default_factory=time.time)
    detail: str = ""


def uv_binary() -> str | None:
    try:
        import uv
        return uv.find_uv_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def _dir_size(path: str) -> int:
    total = 0
    for dirpath, _dirs, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_size
            except OSError:
                pass
    return total


def _top_level_modules(target: str) -> list[str]:
    """Importable names a pip layer provides: what it could shadow in the zygote."""
    names = set()
    for entry in os.listdir(target):
        if entry.endswith((".dist-info", ".egg-info", ".data")) or entry in ("bin", "__pycache__"):
            continue
        full = os.path.join(target, entry)
        if os.path.isdir(full):
            names.add(entry)
        elif entry.endswith((".py", ".so", ".pyd")):
            names.add(entry.split(".")[0])
    return sorted(names)


class RuntimeEnvAgent:
    def __init__(self, root: str, fetch: Callable[[str], Awaitable[bytes]], config: Any) -> None:
        """`fetch(name)`: a package's bytes from the head's package store."""
        self.root = root
        self.fetch = fetch
        self.config = config
        self.entries: dict[str, Entry] = {}
        self.pending: dict[str, asyncio.Future] = {}  # key -> setup in progress (or failed recently)
        self.failed_at: dict[str, float] = {}

    # -- setting up ------------------------------------------------------------------
    @staticmethod
    def needs_setup(env: dict) -> bool:
        return bool(env.get("working_dir") or env.get("py_modules") or env.get("pip"))

    async def setup(self, env: dict) -> dict:
        """What a worker of `env` starts with: {"cwd", "paths", "env_vars", "shadows", "keys",
        "runtime_env"}. Raises RuntimeEnvSetupError saying what failed."""
        timeout = (env.get("config") or {}).get("setup_timeout_seconds", 600)
        try:
            return await asyncio.wait_for(self._setup(env), None if timeout == -1 else timeout)
        except asyncio.TimeoutError:
            raise RuntimeEnvSetupError(
                f"Setting up the runtime_env took longer than {timeout} s (runtime_env config "
                "setup_timeout_seconds); raise it, or make the environment smaller.") from None

    async def _setup(self, env: dict) -> dict:
        ctx: dict[str, Any] = {"env_vars": dict(env.get("env_vars") or {}), "cwd": None, "paths": [],
                               "shadows": [], "keys": [], "runtime_env": env, "bin": []}
        if env.get("working_dir"):
            path = await self._once(env["working_dir"], "working_dir", self._unpack, env["working_dir"])
            ctx["cwd"] = path
            ctx["paths"].append(path)
            ctx["keys"].append(env["working_dir"])
        for uri in env.get("py_modules") or []:
            ctx["paths"].append(await self._once(uri, "py_modules", self._unpack, uri))
            ctx["keys"].append(uri)
        if env.get("pip"):
            key = "pip:" + env_hash(env["pip"])
            path = await self._once(key, "pip", self._install, env["pip"], key)
            ctx["paths"].append(path)
            ctx["keys"].append(key)
            if os.path.isdir(os.path.join(path, "bin")):
                ctx["bin"].append(os.path.join(path, "bin"))
            with open(os.path.join(path, ".orrery-layer.json")) as f:
                ctx["shadows"] = json.load(f)["modules"]
        return ctx

    async def _once(self, key: str, kind: str, make: Callable[..., Awaitable[tuple[str, str]]], *args: Any) -> str:
        """Each cache entry is made once, however many workers ask at the same time; a failure
        is remembered for FAILURE_CACHE_S so a queue of tasks fails fast, not one install each."""
        entry = self.entries.get(key)
        if entry is not None and os.path.isdir(entry.path):
            entry.last_used = time.time()
            return entry.path
        fut = self.pending.get(key)
        if fut is not None and fut.done() and fut.exception() is not None and \
                time.monotonic() - self.failed_at.get(key, 0) > FAILURE_CACHE_S:
            fut = None
        if fut is None:
            fut = self.pending[key] = asyncio.get_running_loop().create_future()
            try:
                path, detail = await make(*args)
            except BaseException as e:
                cancelled = isinstance(e, asyncio.CancelledError)  # the setup timed out
                err = e if isinstance(e, RuntimeEnvSetupError) else RuntimeEnvSetupError(
                    f"Setting up runtime_env {kind} {key} timed out." if cancelled else
                    f"Could not set up runtime_env {kind} {key}: {type(e).__name__}: {e}")
                self.failed_at[key] = time.monotonic()
                fut.set_exception(err)
                fut.exception()  # retrieved: no "never retrieved" warning for a failure nobody awaits
                if cancelled:
                    raise
                raise err from None
            self.entries[key] = Entry(kind, key, path, _dir_size(path), detail=detail)
            self.pending.pop(key, None)
            fut.set_result(path)
            return path
        return await asyncio.shield(fut)

    async def _unpack(self, uri: str) -> tuple[str, str]:
        from ..gcs.packages import name_of_uri
        name = name_of_uri(uri)
        target = os.path.join(self.root, "packages", name.rsplit(".", 1)[0])
        if not os.path.isdir(target):  # left by an earlier worker start of this node
            data = await self.fetch(name)
            make_private_dir(os.path.dirname(target), parents=True)
            await asyncio.to_thread(unpack, data, target)
        return target, uri

    async def _install(self, spec: dict, key: str) -> tuple[str, str]:
        target = os.path.join(self.root, "pip", key.split(":", 1)[1])
        log_path = target + ".log"
        if os.path.exists(os.path.join(target, ".orrery-layer.json")):
            return target, " ".join(spec["packages"])
        make_private_dir(os.path.dirname(target), parents=True)
        tmp = f"{target}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        make_private_dir(tmp)
        with open_private(log_path, "ab") as log:
            log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} installing {spec}\n".encode())
            try:
                await self._run_installer(spec, tmp, log)
                if spec.get("check"):
                    await _run([sys.executable, "-m", "pip", "check"], log, "pip check",
                               env={**os.environ, "PYTHONPATH": os.pathsep.join([tmp] + sys.path[1:])})
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        with open_private(os.path.join(tmp, ".orrery-layer.json"), "w") as f:
            json.dump({"spec": spec, "modules": _top_level_modules(tmp), "installed_at": time.time()}, f)
        make_pycache_dirs(tmp)  # workers run with the user's umask: their byte-code caches go in these
        make_tree_private(tmp)  # the installer's modes (a wheel's, uv's) are the cluster user's only
        os.replace(tmp, target)
        return target, " ".join(spec["packages"])

    async def _run_installer(self, spec: dict, target: str, log: Any) -> None:
        packages, options = spec["packages"], spec.get("install_options") or []
        uv = uv_binary()
        if uv is None and spec.get("installer") == "uv":
            raise RuntimeEnvSetupError("runtime_env 'uv' needs uv on every node; `pip install uv` into the "
                                       "runtime's environment, or use 'pip' instead.")
        if uv is None:  # pip alone: everything the spec needs goes into the layer
            await _run([sys.executable, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
                        "--target", target, *options, *packages], log, "pip install")
            return
        # What the runtime's own environment lacks, or has at another version...
        out = await _run([uv, "pip", "install", "--dry-run", "--python", sys.executable, *options, *packages],
                         log, "uv pip install --dry-run")
        lines = out.splitlines()
        pins = [f"{m.group(1)}=={m.group(2)}" for ln in lines if (m := _PIN.match(ln))]
        odd = [ln for ln in lines if ln.startswith(" + ") and not _PIN.match(ln)]
        if odd:  # URLs, local paths: install the spec as given, with its dependencies
            await _run([uv, "pip", "install", "--python", sys.executable, "--target", target, *options, *packages],
                       log, "uv pip install")
        elif pins:  # ...is all that goes into the layer
            await _run([uv, "pip", "install", "--python", sys.executable, "--no-deps", "--target", target,
                        *options, *pins], log, "uv pip install")

    # -- workers come and go ---------------------------------------------------------
    def acquire(self, keys: list[str]) -> None:
        for k in keys:
            if k in self.entries:
                self.entries[k].users += 1
                self.entries[k].last_used = time.time()

    def release(self, keys: list[str]) -> None:
        for k in keys:
            if k in self.entries:
                self.entries[k].users = max(0, self.entries[k].users - 1)
                self.entries[k].last_used = time.time()

    # -- garbage collection ----------------------------------------------------------
    def sweep(self, now: float | None = None) -> list[str]:
        """Remove entries no live worker uses: those idle past the TTL, then the least recently
        used while the cache is over its size limit."""
        now = time.time() if now is None else now
        ttl, limit = self.config.runtime_env_cache_ttl_s, self.config.runtime_env_cache_max_mb << 20
        idle = sorted((e for e in self.entries.values() if e.users == 0), key=lambda e: e.last_used)
        total = sum(e.size for e in self.entries.values())
        removed = []
        for e in idle:
            if now - e.last_used > ttl or total > limit:
                shutil.rmtree(e.path, ignore_errors=True)
                if e.kind == "pip":
                    try:
                        os.remove(e.path + ".log")
                    except OSError:
                        pass
                self.entries.pop(e.key, None)
                total -= e.size
                removed.append(e.key)
        return removed

    def describe(self) -> list[dict]:
        return [{"kind": e.kind, "uri": e.key, "path": e.path, "bytes": e.size, "workers": e.users,
                 "idle_s": round(time.time() - e.last_used, 1) if e.users == 0 else 0.0, "detail": e.detail}
                for e in sorted(self.entries.values(), key=lambda e: (e.kind, e.key))]


_EXIT_MARK = "__orrery_installer_exit__="


async def _run(argv: list[str], log: Any, what: str, env: dict | None = None) -> str:
    # The exit code comes back on stdout: the node manager reaps every child it has (it is the
    # workers' subreaper), which can take the installer's status before asyncio sees it.
    shell = ["/bin/sh", "-c", f'"$@"; echo "{_EXIT_MARK}$?"', "sh", *argv]
    proc = await asyncio.create_subprocess_exec(*shell, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                env=env)
    try:
        out, _ = await proc.communicate()
    except asyncio.CancelledError:  # the setup timed out: the installer goes too
        proc.kill()
        raise
    text = out.decode(errors="replace")
    code = proc.returncode
    head, mark, tail_code = text.rpartition(_EXIT_MARK)
    if mark:
        text, code = head, int(tail_code.strip() or 1)
    log.write(f"$ {' '.join(argv)}\n{text}\n".encode())
    log.flush()
    if code != 0:
        tail = "\n".join(text.strip().splitlines()[-15:])
        raise RuntimeEnvSetupError(f"Installing the runtime_env's packages failed ({what} exited with "
                                   f"{code}). Its last lines:\n{tail}")
    return text
