"""What a runtime_env may say, checked where it is written (the driver), and the one form that
travels with tasks: local paths replaced by uploaded package URIs, pip/uv specs as a package
list. The node side (runtime/node/runtime_env_agent.py) only ever sees that resolved form.

Resolved form (every key optional; {} means "the node's own environment"):
    {"env_vars": {str: str}, "working_dir": "gcs://_ray_pkg_<hash>.zip",
     "py_modules": ["gcs://..."], "pip": {"packages": [...], "check": bool, "installer": "uv"|"pip",
     "install_options": [...]}, "config": {"setup_timeout_seconds": int}}
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable

KEYS = {"env_vars", "working_dir", "py_modules", "pip", "uv", "excludes", "config"}
# Ray's keys that need something this runtime does not have; each gets its own explanation.
UNSUPPORTED = {
    "conda": "conda environments need conda on every node; use 'pip' or 'uv' (a virtualenv per spec) instead",
    "container": "containers need a container runtime (podman) on every node; use 'pip' or 'uv' instead",
    "image_uri": "image_uri needs a container runtime (podman) on every node; use 'pip' or 'uv' instead",
    "java_jars": "there are no Java workers here",
    "nsight": "Nsight profiling is not built in; run the task under nsys yourself",
    "worker_process_setup_hook": "there is no setup hook yet; do the setup at the top of the task or in an "
                                 "actor's __init__",
}
PACKAGE_URI_PREFIX = "gcs://_ray_pkg_"


def is_package_uri(value: Any) -> bool:
    return isinstance(value, str) and "://" in value


def validate(env: Any) -> None:
    """Raise TypeError/ValueError naming what is wrong with a user's runtime_env."""
    if env is None:
        return
    if not isinstance(env, dict):
        raise TypeError(f"runtime_env must be a dict, got {type(env).__name__}.")
    for key in env:
        if isinstance(key, str) and key.startswith("_"):
            continue  # Ray's internal keys (its client adds `_ray_commit`): accepted, unused
        if key in UNSUPPORTED:
            raise ValueError(f"runtime_env key {key!r} is not supported: {UNSUPPORTED[key]}.")
        if key not in KEYS:
            raise ValueError(f"Unknown runtime_env key {key!r}; the keys are {sorted(KEYS)}.")
    ev = env.get("env_vars") or {}
    if not isinstance(ev, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in ev.items()):
        raise TypeError("runtime_env['env_vars'] must be a dict of str to str.")
    wd = env.get("working_dir")
    if wd is not None and not isinstance(wd, (str, os.PathLike)):
        raise TypeError(f"runtime_env['working_dir'] must be a path or a package URI, got {type(wd).__name__}.")
    mods = env.get("py_modules")
    if mods is not None and not isinstance(mods, (list, tuple)):
        raise TypeError("runtime_env['py_modules'] must be a list of directories, .py files, wheels, "
                        "modules or package URIs.")
    ex = env.get("excludes")
    if ex is not None and (not isinstance(ex, (list, tuple)) or not all(isinstance(p, str) for p in ex)):
        raise TypeError("runtime_env['excludes'] must be a list of gitignore-style patterns (strings).")
    if env.get("pip") is not None and env.get("uv") is not None:
        raise ValueError("runtime_env can have 'pip' or 'uv', not both: they fill the same environment.")
    for key in ("pip", "uv"):
        if env.get(key) is not None:
            installer_spec(key, env[key])
    cfg = env.get("config")
    if cfg is not None:
        if not isinstance(cfg, dict) or set(cfg) - {"setup_timeout_seconds", "eager_install"}:
            raise ValueError("runtime_env['config'] takes 'setup_timeout_seconds' and 'eager_install'.")
        t = cfg.get("setup_timeout_seconds", 600)
        if not isinstance(t, int) or isinstance(t, bool) or (t <= 0 and t != -1):
            raise ValueError("runtime_env config setup_timeout_seconds must be a positive int or -1 (no limit).")


def _requirements(path: str, key: str) -> list[str]:
    if not os.path.isfile(path):
        raise ValueError(f"runtime_env {key!r} names the requirements file {path!r}, which does not exist "
                         f"(relative paths are taken from {os.getcwd()!r}).")
    with open(path, encoding="utf-8") as f:
        lines = [ln.split(" #")[0].strip() for ln in f]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def require_uploaded(env: dict | None) -> None:
    """A thin client's runtime_env is resolved on the head, where its local paths do not exist."""
    for path in [(env or {}).get("working_dir")] + list((env or {}).get("py_modules") or []):
        if path is not None and not is_package_uri(os.fspath(path) if isinstance(path, (str, os.PathLike)) else ""):
            raise ValueError(f"A thin client (client://) cannot ship the local path {path!r} in a runtime_env: "
                             "upload it with the job client (runtime job submit --working-dir), pass its gcs:// "
                             "URI, or run the driver on the cluster.")


def installer_spec(key: str, value: Any) -> dict:
    """Ray's pip/uv forms: a list, a requirements file path, or a dict with packages and options."""
    check_key, opts = ("pip_check", "pip_install_options") if key == "pip" else ("uv_check", "uv_pip_install_options")
    check, options = False, []
    if isinstance(value, dict):
        unknown = set(value) - {"packages", check_key, opts, f"{key}_version"}
        if unknown:
            raise ValueError(f"runtime_env[{key!r}] has unknown field(s) {sorted(unknown)}; it takes 'packages', "
                             f"{check_key!r}, {opts!r} and '{key}_version'.")
        check, options = bool(value.get(check_key, False)), list(value.get(opts) or [])
        value = value.get("packages")
    if isinstance(value, (str, os.PathLike)):
        packages = _requirements(os.fspath(value), key)
    elif isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value):
        packages = list(value)
    else:
        raise TypeError(f"runtime_env[{key!r}] must be a list of requirement strings, a requirements file path, "
                        f"or {{'packages': [...], {check_key!r}: bool}}; got {type(value).__name__}.")
    if not all(isinstance(o, str) for o in options):
        raise TypeError(f"runtime_env[{key!r}][{opts!r}] must be a list of strings.")
    return {"packages": packages, "check": check, "installer": key, "install_options": options}


def merge(job_env: dict | None, task_env: dict | None) -> dict:
    """Ray's rule: a task's or actor's runtime_env overrides the job's key by key, except
    env_vars, which are merged (the task's win)."""
    out = dict(job_env or {})
    for key, value in (task_env or {}).items():
        if key == "env_vars":
            out["env_vars"] = {**(out.get("env_vars") or {}), **(value or {})}
        else:
            out[key] = value
    return {k: v for k, v in out.items() if v not in (None, {}, [])}


def env_hash(resolved: dict) -> str:
    """One name for one environment (the worker pool key, the cache directory)."""
    return hashlib.sha1(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16] if resolved else ""


def module_path(mod: Any) -> str:
    import types
    if isinstance(mod, types.ModuleType):
        paths = list(getattr(mod, "__path__", []) or [])
        if paths:
            return paths[0]
        if getattr(mod, "__file__", None):
            return mod.__file__
        raise ValueError(f"runtime_env py_modules: module {mod.__name__!r} has no file to ship.")
    return os.fspath(mod)


def resolve(env: dict | None, upload: Callable[[str, bytes], None], max_bytes: int) -> dict:
    """The travelling form of a validated runtime_env: local directories, files and wheels are
    packed and handed to `upload(name, data)` (which skips names the head already has)."""
    from .packaging import pack
    if not env:
        return {}
    out: dict[str, Any] = {}
    if env.get("env_vars"):
        out["env_vars"] = dict(env["env_vars"])
    excludes = list(env.get("excludes") or [])
    wd = env.get("working_dir")
    if wd is not None:
        wd = os.fspath(wd)
        if is_package_uri(wd):
            out["working_dir"] = wd
        elif wd.endswith(".zip") and os.path.isfile(wd):
            out["working_dir"] = _upload(upload, _without_top_directory(wd), ".zip")
        else:
            out["working_dir"] = _upload(upload, pack(wd, excludes, max_bytes=max_bytes, what="working_dir")[0], ".zip")
    mods = []
    for mod in env.get("py_modules") or []:
        path = module_path(mod)
        if is_package_uri(path):
            mods.append(path)
        elif path.endswith(".whl") and os.path.isfile(path):
            with open(path, "rb") as f:
                mods.append(_upload(upload, f.read(), ".whl"))
        else:
            prefix = os.path.basename(os.path.normpath(path)) + "/" if os.path.isdir(path) else ""
            data = pack(path, excludes, prefix=prefix, max_bytes=max_bytes, what="py_modules entry")[0]
            mods.append(_upload(upload, data, ".zip"))
    if mods:
        out["py_modules"] = mods
    for key in ("pip", "uv"):
        if env.get(key) is not None:
            spec = installer_spec(key, env[key])
            if spec["packages"]:
                out["pip"] = spec
    if env.get("config"):
        out["config"] = dict(env["config"])
    return out


def _without_top_directory(path: str) -> bytes:
    """A user's .zip working_dir, as Ray reads it: when everything is under one top-level
    directory, that directory is the working_dir."""
    import io
    import zipfile
    with open(path, "rb") as f:
        data = f.read()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        infos = [i for i in z.infolist() if i.filename.strip("/")]
        tops = {i.filename.split("/", 1)[0] for i in infos}
        if len(tops) != 1 or not any(i.filename.startswith(next(iter(tops)) + "/") for i in infos):
            return data
        prefix = next(iter(tops)) + "/"
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as out:
            for i in infos:
                name = i.filename[len(prefix):]
                if name and not i.is_dir():
                    i2 = zipfile.ZipInfo(name, i.date_time)
                    i2.external_attr = i.external_attr
                    out.writestr(i2, z.read(i), zipfile.ZIP_DEFLATED)
        return buf.getvalue()


def _upload(upload: Callable[[str, bytes], None], data: bytes, suffix: str) -> str:
    """Name a package by its content (packaging.pack makes zips deterministic) and upload it."""
    name = f"_ray_pkg_{hashlib.sha1(data).hexdigest()[:16]}{suffix}"
    upload(name, data)
    return f"gcs://{name}"
