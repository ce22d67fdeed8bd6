"""Capturing an exception raised by user code so it can cross processes."""

from __future__ import annotations

import pickle
import traceback

import cloudpickle

from ..exceptions import TaskError

# Frames from these files are the runtime's own plumbing, not the user's code.
_INTERNAL = ("/runtime/worker/", "/runtime/_core/", "/runtime/serialization/")


def capture_task_error(exc: BaseException, function_name: str, pid: int, node: str) -> TaskError:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not any(p in f.filename for p in _INTERNAL)]
    tb = "Traceback (most recent call last):\n" + "".join(traceback.format_list(frames))
    tb += "".join(traceback.format_exception_only(type(exc), exc))
    if isinstance(exc, TaskError):  # a nested task's error: keep the inner traceback too
        cause = exc.cause
        tb = tb + "\n" + exc.traceback_str
    else:
        cause = exc
    try:
        pickle.loads(cloudpickle.dumps(cause))
    except Exception:
        cause = RuntimeError(f"{type(exc).__name__}: {exc} (the original exception could not be pickled)")
    cause.__traceback__ = None
    return TaskError(function_name, tb, cause, pid, node)
