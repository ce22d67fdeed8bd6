"""Runtime environments (Ray's `ray.runtime_env`): what a job, task or actor needs around it —
env_vars, a working_dir, py_modules, pip/uv packages. See docs/runtime_env.md.

`RuntimeEnv` is a dict, as Ray's is, so it goes wherever a runtime_env dict goes."""

from __future__ import annotations

from typing import Any

from .spec import validate


class RuntimeEnvConfig(dict):
    """Ray's RuntimeEnvConfig: setup_timeout_seconds (-1: no limit) and eager_install (accepted;
    environments are always made when the first worker needs them)."""

    def __init__(self, setup_timeout_seconds: int = 600, eager_install: bool = True,
                 log_files: list | None = None) -> None:
        super().__init__(setup_timeout_seconds=setup_timeout_seconds, eager_install=eager_install)


class RuntimeEnv(dict):
    def __init__(self, *, py_modules: list | None = None, py_executable: str | None = None,
                 working_dir: str | None = None, pip: Any = None, conda: Any = None, container: Any = None,
                 env_vars: dict | None = None, worker_process_setup_hook: Any = None, nsight: Any = None,
                 rocprof_sys: Any = None, config: dict | None = None, _validate: bool = True,
                 image_uri: str | None = None, uv: Any = None, **kwargs: Any) -> None:
        given = dict(py_modules=py_modules, working_dir=working_dir, pip=pip, conda=conda, container=container,
                     env_vars=env_vars, worker_process_setup_hook=worker_process_setup_hook, nsight=nsight,
                     config=dict(config) if config is not None else None, image_uri=image_uri, uv=uv, **kwargs)
        if py_executable is not None or rocprof_sys is not None:
            raise ValueError("runtime_env 'py_executable' and 'rocprof_sys' are not supported here.")
        super().__init__({k: v for k, v in given.items() if v is not None})
        if _validate:
            validate(dict(self))


__all__ = ["RuntimeEnv", "RuntimeEnvConfig"]
