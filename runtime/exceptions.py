"""Public errors of the runtime. Every error derives from `ClusterError` (alias `RayError`).

    ClusterError (RayError)
    ├── TaskError (RayTaskError)        the task raised; also an instance of the user's class
    ├── ActorError (RayActorError)
    │   ├── ActorDiedError              the actor is dead (killed, crashed, __init__ failed)
    │   └── ActorUnavailableError
    ├── WorkerCrashedError              the worker process died while running the task
    ├── NodeDiedError
    ├── ObjectLostError
    │   ├── OwnerDiedError
    │   └── ObjectReconstructionFailedError
    ├── GetTimeoutError                 (also a TimeoutError)
    ├── TaskCancelledError
    ├── OutOfMemoryError
    ├── ObjectStoreFullError
    ├── RuntimeEnvSetupError
    └── PlacementGroupError

Messages are built in `__str__` from `args` so every error pickles and crosses processes.
"""

from __future__ import annotations


class ClusterError(Exception):
    """Base class of every runtime error."""


class TaskError(ClusterError):
    """A task raised an exception.

    `runtime.get` raises an instance that is *also* an instance of the user's exception
    class (built by `as_instanceof_cause`), so `except ValueError:` catches it.
    """

    def __init__(self, function_name: str, traceback_str: str, cause: BaseException | None = None,
                 pid: int | None = None, node: str | None = None) -> None:
        super().__init__(function_name, traceback_str, cause, pid, node)
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        self.node = node

    def __str__(self) -> str:
        where = f" (pid={self.pid}" + (f", node={self.node[:8]}" if self.node else "") + ")" if self.pid else ""
        return f"{type(self.cause).__name__ if self.cause else 'Error'} in `{self.function_name}`{where}:\n{self.traceback_str.rstrip()}"

    def as_instanceof_cause(self) -> TaskError:
        """Return an error that is an instance of both TaskError and the cause's class."""
        cause_cls = type(self.cause) if self.cause is not None else None
        if cause_cls is None or issubclass(cause_cls, TaskError) or not _subclassable(cause_cls):
            return self
        name = f"TaskError({cause_cls.__name__})"
        try:
            cls = _DUAL_CLASSES.get(cause_cls)
            if cls is None:
                cls = type(name, (TaskError, cause_cls), {"__init__": _dual_init, "__str__": TaskError.__str__,
                                                          "__reduce__": _dual_reduce})
                _DUAL_CLASSES[cause_cls] = cls
            err = cls.__new__(cls)
            _dual_init(err, self.function_name, self.traceback_str, self.cause, self.pid, self.node)
            return err
        except TypeError:
            return self


_DUAL_CLASSES: dict[type, type] = {}


def _subclassable(cls: type) -> bool:
    try:
        type("probe", (TaskError, cls), {})
        return True
    except TypeError:
        return False


def _dual_init(self, function_name, traceback_str, cause, pid=None, node=None):  # noqa: ANN001
    Exception.__init__(self, function_name, traceback_str, cause, pid, node)
    self.function_name = function_name
    self.traceback_str = traceback_str
    self.cause = cause
    self.pid = pid
    self.node = node


def _dual_reduce(self):  # noqa: ANN001
    return (_rebuild_task_error, (self.function_name, self.traceback_str, self.cause, self.pid, self.node))


def _rebuild_task_error(function_name, traceback_str, cause, pid, node):  # noqa: ANN001
    return TaskError(function_name, traceback_str, cause, pid, node).as_instanceof_cause()


class ActorError(ClusterError):
    """An actor call failed because of the actor, not the method."""


class ActorDiedError(ActorError):
    def __init__(self, actor_id: str = "", reason: str = "The actor died unexpectedly.") -> None:
        super().__init__(actor_id, reason)
        self.actor_id = actor_id
        self.reason = reason

    def __str__(self) -> str:
        return f"Actor {self.actor_id[:8] or '?'} is dead: {self.reason}"


class ActorUnavailableError(ActorError):
    pass


class WorkerCrashedError(ClusterError):
    def __init__(self, task: str = "", detail: str = "") -> None:
        super().__init__(task, detail)
        self.task, self.detail = task, detail

    def __str__(self) -> str:
        return (f"The worker running `{self.task}` died unexpectedly{': ' + self.detail if self.detail else ''}. "
                "The task ran out of retries; raise `max_retries` in @runtime.remote to retry more.")


class NodeDiedError(ClusterError):
    pass


class ObjectLostError(ClusterError):
    def __init__(self, object_id: str = "", detail: str = "") -> None:
        super().__init__(object_id, detail)
        self.object_id, self.detail = object_id, detail

    def __str__(self) -> str:
        return f"Object {self.object_id[:16]} was lost: {self.detail}"


class OwnerDiedError(ObjectLostError):
    pass


class ObjectReconstructionFailedError(ObjectLostError):
    pass


class GetTimeoutError(ClusterError, TimeoutError):
    pass


class TaskCancelledError(ClusterError):
    def __init__(self, task_id: str = "") -> None:
        super().__init__(task_id)
        self.task_id = task_id

    def __str__(self) -> str:
        return f"Task {self.task_id[:16]} was cancelled by `runtime.cancel` before it finished."


class OutOfMemoryError(ClusterError):
    pass


class ObjectStoreFullError(ClusterError):
    pass


class RuntimeEnvSetupError(ClusterError):
    pass


class PlacementGroupError(ClusterError):
    pass


# Ray's names, so `except ray.exceptions.RayTaskError` keeps working.
RayError = ClusterError
RayTaskError = TaskError
RayActorError = ActorError

__all__ = [
    "ActorDiedError", "ActorError", "ActorUnavailableError", "ClusterError", "GetTimeoutError",
    "NodeDiedError", "ObjectLostError", "ObjectReconstructionFailedError", "ObjectStoreFullError",
    "OutOfMemoryError", "OwnerDiedError", "PlacementGroupError", "RayActorError", "RayError",
    "RayTaskError", "RuntimeEnvSetupError", "TaskCancelledError", "TaskError", "WorkerCrashedError",
]
