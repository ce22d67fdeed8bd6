"""Remote functions: `@runtime.remote def f(...)`, then `f.remote(...)` submits a task."""

from __future__ import annotations

import hashlib
from typing import Any

import cloudpickle

from . import api_state
from .ids import TaskID
from ..runtime_env.spec import require_uploaded
from .session import ensure_initialized
from .options import TASK_OPTIONS, demand_of, env_of, resolve_placement, sched_key, shared_demand, strategy_of, validate
from .task_spec import TaskSpec, kind_of, return_ids, unpack_refs


class RemoteFunction:
    def __init__(self, function: Any, options: dict) -> None:
        self._function = function
        self._options = validate(dict(options), TASK_OPTIONS, f"remote function {function.__qualname__}")
        self._blob: bytes | None = None
        self._fid: bytes | None = None
        self.__name__ = getattr(function, "__name__", "remote_function")
        self.__qualname__ = getattr(function, "__qualname__", self.__name__)
        self.__doc__ = getattr(function, "__doc__", None)
        self.__module__ = getattr(function, "__module__", None)
        self.__wrapped__ = function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"Remote function `{self.__name__}` cannot be called directly. Use "
                        f"`{self.__name__}.remote(...)` to run it as a task, or `{self.__name__}._function(...)` "
                        "to call the plain Python function.")

    def __repr__(self) -> str:
        return f"RemoteFunction({self.__qualname__})"

    def options(self, **options: Any) -> _BoundOptions:
        validate(dict(options), TASK_OPTIONS, f"{self.__name__}.options()")
        return _BoundOptions(self, {**self._options, **options})

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._submit(args, kwargs, self._options)

    def _function_blob(self) -> tuple[bytes, bytes]:
        if self._blob is None:
            self._blob = cloudpickle.dumps(self._function, protocol=5)
            self._fid = hashlib.sha1(self._blob).digest()[:16]
        return self._fid, self._blob  # type: ignore[return-value]

    def _submit(self, args: tuple, kwargs: dict, options: dict, task_id: bytes | None = None) -> Any:
        cw = ensure_initialized()
        fid, blob = self._function_blob()
        num_returns = options.get("num_returns", 1)
        if cw.is_client:  # a thin client: the head's proxy submits it (runtime/client)
            require_uploaded(options.get("runtime_env"))
            return unpack_refs(cw.submit_function(fid, blob, args, kwargs, options), num_returns)
        so, deps = cw.prepare_args(args, kwargs, f"`{self.__name__}`")
        task_id = bytes(task_id) if task_id else TaskID.new_bytes()  # a thin client's proxy passes the client's
        demand, pg_inherit = resolve_placement(options, demand_of(options, 1), cw)
        demand = shared_demand(demand)
        env = env_of(options, api_state.job_runtime_env, cw)
        max_retries = options.get("max_retries")
        strategy = strategy_of(options)
        kind = kind_of(name=options.get("name") or self.__qualname__, fid=fid, fn_blob=blob, demand=demand, env=env, strategy=strategy,
                       sched_key=sched_key(demand, env, strategy),
                       retry_exceptions=options.get("retry_exceptions") or False)
        spec = TaskSpec(task_id=task_id, kind=kind, return_ids=return_ids(task_id, num_returns),
                        max_retries=3 if max_retries is None else max_retries)
        spec.parent = cw.current_task_id if cw.mode == "worker" else None
        spec.pg = pg_inherit
        refs = cw.submit_task(spec, so, deps)
        return unpack_refs(refs, num_returns)


class _BoundOptions:
    def __init__(self, rf: RemoteFunction, options: dict) -> None:
        self._rf, self._options = rf, options

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._rf._submit(args, kwargs, self._options)

