"""Actor classes and handles: `@runtime.remote class C`, `C.remote()`, `handle.method.remote()`."""

from __future__ import annotations

import inspect
from typing import Any

import cloudpickle

from . import api_state, worker_state
from .ids import ActorID, TaskID
from ..runtime_env.spec import require_uploaded
from .session import ensure_initialized
from .options import ACTOR_OPTIONS, METHOD_OPTIONS, demand_of, env_of, resolve_placement, strategy_of, validate
from .task_spec import ActorTaskSpec, kind_of, return_ids, unpack_refs


def method(*, num_returns: int = 1, **other: Any) -> Any:
    """Decorator for actor methods: `@runtime.method(num_returns=2)`."""
    validate({"num_returns": num_returns, **other}, METHOD_OPTIONS, "runtime.method")

    def deco(fn: Any) -> Any:
        fn.__runtime_num_returns__ = num_returns
        return fn

    return deco


def _class_meta(cls: type) -> dict:
    methods = {}
    is_async = False
    for name, member in inspect.getmembers(cls):
        if name.startswith("__") or not callable(member):
            continue
        methods[name] = {"num_returns": getattr(member, "__runtime_num_returns__", 1)}
        if inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member):
            is_async = True
    return {"class_name": cls.__qualname__, "methods": methods, "is_async": is_async}


class ActorClass:
    def __init__(self, cls: type, options: dict) -> None:
        self._cls = cls
        self._options = validate(dict(options), ACTOR_OPTIONS, f"actor class {cls.__qualname__}")
        self._blob: bytes | None = None
        self._meta = _class_meta(cls)
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__
        self.__module__ = cls.__module__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"Actor class `{self.__name__}` cannot be instantiated directly. Use "
                        f"`{self.__name__}.remote(...)` to create an actor.")

    def __repr__(self) -> str:
        return f"ActorClass({self.__qualname__})"

    def options(self, **options: Any) -> _BoundActorOptions:
        validate(dict(options), ACTOR_OPTIONS, f"{self.__name__}.options()")
        return _BoundActorOptions(self, {**self._options, **options})

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        return self._create(args, kwargs, self._options)

    def _create(self, args: tuple, kwargs: dict, options: dict) -> ActorHandle:
        cw = ensure_initialized()
        if self._blob is None:
            self._blob = cloudpickle.dumps(self._cls, protocol=5)
        if cw.is_client:  # a thin client: the head's proxy creates it (runtime/client)
            require_uploaded(options.get("runtime_env"))
            actor_id, meta, owned = cw.create_actor(self._blob, args, kwargs, options)
            return ActorHandle(actor_id, meta, owned=owned)
        so, deps = cw.prepare_args(args, kwargs, f"`{self.__name__}.__init__`")
        for r in [*deps, *so.nested_refs]:  # pinned for the actor's life (restarts re-read them)
            cw.refs.add_submitted(r._id, r._owner)
        spec = {"nb": len(so.buffers), "a": so.meta, "d": [["r", r._id, r._owner, None, 0] for r in deps],
                "is_async": self._meta["is_async"], "max_concurrency": options.get("max_concurrency"),
                "demand": demand_of(options, 0)}
        spec["demand"], spec["pg"] = resolve_placement(options, spec["demand"], cw)
        bufs = [self._blob, *so.buffers]
        if so.total_bytes >= cw.config.max_inline_bytes and so.buffers:
            args_ref = cw.put_args(so)
            cw.refs.add_submitted(args_ref._id, args_ref._owner)
            spec.update(nb=0, a=b"", ar=[args_ref._id, cw.address])
            bufs = [self._blob]
        name = options.get("name") or ""
        namespace = options.get("namespace") or cw.namespace
        detached = options.get("lifetime") == "detached"
        max_task_retries = options.get("max_task_retries") or 0
        meta = {**self._meta, "max_task_retries": max_task_retries}
        msg = {"op": "create_actor", "actor_id": ActorID.new().hex(), "name": name, "namespace": namespace,
               "class_name": self.__qualname__, "meta": meta, "spec": spec, "demand": spec["demand"],
               "env": env_of(options, api_state.job_runtime_env, cw), "max_restarts": options.get("max_restarts") or 0,
               "detached": detached, "get_if_exists": bool(options.get("get_if_exists")), "job_id": cw.job_id,
               "cell": cw.current_cell, "strategy": strategy_of(options)}
        reply, _ = cw.run_sync(cw.gcs_request(msg, bufs))
        meta = reply.get("meta") or meta
        owned = not reply.get("existing") and not name and not detached
        handle = ActorHandle(reply["actor_id"], meta, owned=owned)
        cw.subscribe_actor_nowait(reply["actor_id"], meta.get("max_task_retries", 0))
        return handle


class _BoundActorOptions:
    def __init__(self, ac: ActorClass, options: dict) -> None:
        self._ac, self._options = ac, options

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        return self._ac._create(args, kwargs, self._options)


class ActorHandle:
    """A reference to an actor; picklable, so it can be passed to tasks and other actors."""

    def __init__(self, actor_id: str, meta: dict, owned: bool = False) -> None:
        self._actor_id = actor_id
        self._meta = meta
        self._owned = owned
        self._serialized = False

    def __getattr__(self, name: str) -> ActorMethod:
        if name.startswith("__") or name in ("_actor_id", "_meta", "_owned", "_serialized"):
            raise AttributeError(name)
        info = self._meta["methods"].get(name)
        if info is None:
            raise AttributeError(f"Actor `{self._meta['class_name']}` has no method `{name}`.")
        return ActorMethod(self, name, info["num_returns"])

    def __reduce__(self) -> tuple:
        self._serialized = True  # copies exist elsewhere: no longer safe to kill on scope exit
        return _rebuild_handle, (self._actor_id, self._meta)

    def __del__(self) -> None:
        if self._owned and not self._serialized:
            cw = worker_state.current_or_none()
            if cw is not None:
                try:
                    cw.handle_out_of_scope(self._actor_id)
                except Exception:  # noqa: BLE001 - never raise from __del__
                    pass

    def __repr__(self) -> str:
        return f"Actor({self._meta['class_name']}, {self._actor_id[:12]})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)


def _rebuild_handle(actor_id: str, meta: dict) -> ActorHandle:
    cw = worker_state.current_or_none()
    if cw is not None:
        cw.subscribe_actor_nowait(actor_id, meta.get("max_task_retries", 0))
    return ActorHandle(actor_id, meta)


class ActorMethod:
    def __init__(self, handle: ActorHandle, name: str, num_returns: int) -> None:
        self._handle, self._name, self._num_returns = handle, name, num_returns

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"Actor methods cannot be called directly. Use `actor.{self._name}.remote(...)`.")

    def options(self, **options: Any) -> _BoundMethodOptions:
        validate(dict(options), METHOD_OPTIONS, f"{self._name}.options()")
        return _BoundMethodOptions(self, options.get("num_returns", self._num_returns), options.get("name"))

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._submit(args, kwargs, self._num_returns)

    def _submit(self, args: tuple, kwargs: dict, num_returns: int, task_id: bytes | None = None,
                name: str | None = None) -> Any:
        cw = ensure_initialized()
        h = self._handle
        if cw.is_client:  # a thin client: the head's proxy submits it (runtime/client)
            return unpack_refs(cw.call_actor(h, self._name, args, kwargs, num_returns), num_returns)
        so, deps = cw.prepare_args(args, kwargs, f"`{h._meta['class_name']}.{self._name}`")
        task_id = bytes(task_id) if task_id else TaskID.new_bytes()  # a thin client's proxy passes the client's
        spec = ActorTaskSpec(task_id=task_id, kind=kind_of(name=name or f"{h._meta['class_name']}.{self._name}"),
                             return_ids=return_ids(task_id, num_returns),
                             actor_id=h._actor_id, method=self._name,
                             parent=cw.current_task_id if cw.mode == "worker" else None)
        refs = cw.submit_actor_task(spec, so, deps, h._meta.get("max_task_retries", 0))
        return unpack_refs(refs, num_returns)


class _BoundMethodOptions:
    def __init__(self, m: ActorMethod, num_returns: int, name: str | None = None) -> None:
        self._m, self._num_returns, self._name = m, num_returns, name

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._m._submit(args, kwargs, self._num_returns, name=self._name)
