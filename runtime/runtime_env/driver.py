"""The driver's side of runtime environments: resolve a user's runtime_env once (pack and
upload local paths to the head's package store) and reuse the result until the files change."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from .packaging import fingerprint
from .spec import is_package_uri, module_path, resolve, validate

_lock = threading.Lock()
_cache: dict[str, tuple[float, tuple, dict]] = {}  # spec -> (checked at, fingerprint, resolved)
_RECHECK_S = 1.0  # how often a spec's local files are looked at again for changes


def _local_paths(env: dict) -> list[str]:
    paths = []
    wd = env.get("working_dir")
    if wd is not None and not is_package_uri(os.fspath(wd)):
        paths.append(os.path.abspath(os.fspath(wd)))
    for mod in env.get("py_modules") or []:
        path = module_path(mod)
        if not is_package_uri(path):
            paths.append(os.path.abspath(path))
    for key in ("pip", "uv"):
        spec = env.get(key)
        spec = spec.get("packages") if isinstance(spec, dict) else spec
        if isinstance(spec, (str, os.PathLike)):
            paths.append(os.path.abspath(os.fspath(spec)))
    return paths


def resolve_env(cw: Any, env: dict | None) -> dict:
    """The travelling form of `env` (see spec.py), uploading what the head lacks."""
    if not env:
        return {}
    keys = set(env)
    if keys <= {"env_vars"}:  # the common case: nothing to pack
        return {"env_vars": dict(env["env_vars"])} if env.get("env_vars") else {}
    validate(env)
    key = json.dumps(env, sort_keys=True, default=lambda o: getattr(o, "__name__", repr(o)))
    paths = _local_paths(env)
    now = time.monotonic()
    with _lock:
        hit = _cache.get(key)
        if hit is not None and (not paths or now - hit[0] < _RECHECK_S):
            return hit[2]
    fp = tuple(fingerprint(p) if os.path.exists(p) else (p,) for p in paths)
    if hit is not None and hit[1] == fp:
        with _lock:
            _cache[key] = (now, fp, hit[2])
        return hit[2]
    resolved = resolve(env, lambda name, data: _upload(cw, name, data), cw.config.runtime_env_max_package_mb << 20)
    with _lock:
        _cache[key] = (now, fp, resolved)
    return resolved


def _upload(cw: Any, name: str, data: bytes) -> None:
    async def go() -> None:
        reply, _ = await cw.gcs_request({"op": "package_exists", "name": name})
        if not reply["exists"]:
            await cw.gcs_request({"op": "put_package", "name": name}, [data], timeout=max(60.0, len(data) / 20e6))
    cw.run_sync(go())
