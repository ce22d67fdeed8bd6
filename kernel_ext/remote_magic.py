"""`%%remote` / `%remote`: run a cell (or an expression) as a task in the cluster.

The notebook side: which names to ship, submitting, streaming the task's output into
this cell while it runs, interrupts (first: cancel, children included; second: kill),
binding the names the cell assigned, and showing remote errors at the cell's lines.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from typing import Any

from IPython.core.error import UsageError
from IPython.display import display

import runtime
from runtime.exceptions import TaskCancelledError, TaskError, WorkerCrashedError
from runtime.serialization.core import serialize
from runtime.worker.output import write_stream

from .cellcode import analyze, format_size, parse_size
from .output_router import DONE, router
from .remote_cell import run_cell

# Names a notebook always has that are never shipped: IPython's own history and helpers.
_NOT_SHIPPED = {"In", "Out", "get_ipython", "exit", "quit", "_ih", "_oh", "_dh", "_", "__", "___"}
DEFAULT_MAX_BYTES = 100 * 2**20
OUTPUT_SLICE_S = 0.2  # an --async cell's output area is updated at most this often (as ipykernel's streams)
# Frames of our own cell runner (the worker's path may differ from ours: match the tail).
_REMOTE_CELL_FILE = "kernel_ext/remote_cell.py"
_remote_cell_task = runtime.remote(run_cell)


def shippable_names(user_ns: dict, candidates: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The notebook values of `candidates` that exist; a clear error names any that can't be sent."""
    out = {}
    for name in candidates:
        if name in _NOT_SHIPPED or name not in user_ns or _is_history_name(name):
            continue
        value = user_ns[name]
        if _is_builtin_alias(name, value):
            continue
        try:
            serialize(value)
        except Exception as e:
            raise UsageError(
                f"Cannot send `{name}` to the cluster: {type(e).__name__}: {e}. Nothing was sent. "
                f"Create it inside the cell instead, or leave it out with -i (the names to send)."
            ) from None
        out[name] = value
    return out


def _is_history_name(name: str) -> bool:
    # _5, _i5, _ii, _iii: IPython's output/input history
    return name.startswith("_") and (name[1:].isdigit() or name.lstrip("_i").isdigit() or name in ("_i", "_ii", "_iii"))


def _is_builtin_alias(name: str, value: Any) -> bool:
    import builtins
    return getattr(builtins, name, None) is value


def task_options(args: Any, defaults: dict) -> dict:
    """Runtime `.options(...)` from the magic's arguments (falling back to %remote_config)."""
    def pick(key: str) -> Any:
        v = getattr(args, key, None)
        return v if v is not None else defaults.get(key)

    opts: dict[str, Any] = {"num_cpus": pick("num_cpus") if pick("num_cpus") is not None else 1}
    if pick("num_gpus") is not None:
        opts["num_gpus"] = pick("num_gpus")
    if pick("memory") is not None:
        opts["memory"] = _size_arg("--memory", pick("memory"))
    resources = pick("resources")
    if resources:
        opts["resources"] = _json_arg("--resources", resources)
    env = pick("env")
    if env:
        env_vars = _json_arg("--env", env)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()):
            raise UsageError("--env takes a JSON object of strings, like --env '{\"OMP_NUM_THREADS\": \"1\"}'.")
        opts["runtime_env"] = {"env_vars": env_vars}
    # --pip and --working-dir make the same runtime_env as runtime_env={"pip": [...], "working_dir": ...}.
    pip = pick("pip")
    if pip:
        opts.setdefault("runtime_env", {})["pip"] = [p.strip() for p in pip.split(",") if p.strip()]
    working_dir = pick("working_dir")
    if working_dir:
        if not os.path.isdir(os.path.expanduser(working_dir)):
            raise UsageError(f"--working-dir {working_dir!r} is not a directory here.")
        opts.setdefault("runtime_env", {})["working_dir"] = os.path.abspath(os.path.expanduser(working_dir))
    if pick("retries") is not None:
        opts["max_retries"] = pick("retries")
    if getattr(args, "pg", None):
        opts["scheduling_strategy"] = _pg_strategy(args.pg)
    return opts


def _pg_strategy(text: str) -> Any:
    """--pg NAME or NAME:BUNDLE -> a PlacementGroupSchedulingStrategy for the named group."""
    from runtime.util import get_placement_group
    from runtime.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    name, _, index = text.partition(":")
    try:
        bundle = int(index) if index else -1
    except ValueError:
        raise UsageError(f"--pg takes NAME or NAME:BUNDLE with a bundle number, not {text!r}.") from None
    try:
        pg = get_placement_group(name)
        return PlacementGroupSchedulingStrategy(pg, bundle, placement_group_capture_child_tasks=True)
    except ValueError as e:
        raise UsageError(f"--pg {text}: {e} Create it first with runtime.util.placement_group(..., name={name!r}).") \
            from None


def _json_arg(flag: str, text: str) -> dict:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]  # IPython's argument splitting keeps the quotes
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{flag} takes a JSON object, like {flag} '{{\"x\": 1}}'; could not read {text!r}: {e}.") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag} takes a JSON object (in braces), not {type(value).__name__}.")
    return value


def _size_arg(flag: str, text: Any) -> int:
    try:
        return parse_size(str(text))
    except ValueError as e:
        raise UsageError(f"{flag}: {e}") from None


def _names_arg(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if not n.isidentifier()]
    if bad:
        raise UsageError(f"Not a Python name: {', '.join(bad)}. Give names separated by commas, like -o x,y.")
    return names


def current_cell_number(shell: Any) -> int:
    """The n of the running cell's In[n]. The history holds the cell before it runs (IPython
    versions differ on when execution_count moves)."""
    hist = getattr(getattr(shell, "history_manager", None), "input_hist_raw", None)
    return len(hist) - 1 if hist and len(hist) > 1 else shell.execution_count


class RemoteCell:
    """One `%%remote` run: prepare, submit, follow, and bring the results back."""

    def __init__(self, shell: Any, args: Any, source: str, defaults: dict, first_line: int) -> None:
        self.shell = shell
        self.args = args
        self.count = current_cell_number(shell)
        self.label = args.name or f"cell In[{self.count}]"
        self.filename = f"<cell In[{self.count}]>"
        self.first_line = first_line
        try:
            self.code = analyze(source, self.filename, first_line)
        except SyntaxError as e:  # IPython would show our frames for a SyntaxError: say it plainly
            raise UsageError("\n".join(syntax_error_lines(e, self.count))) from None
        self.max_bytes = _size_arg("--max-bytes", args.max_bytes or defaults.get("max_bytes") or DEFAULT_MAX_BYTES)
        self.timeout = args.timeout if args.timeout is not None else defaults.get("timeout")
        reads = _names_arg(args.i)
        self.namespace = shippable_names(shell.user_ns, reads if reads is not None else self.code.reads)
        outs = _names_arg(args.o)
        self.pull = [] if args.no_pull else (outs if outs is not None else list(self.code.writes))
        self.options = task_options(args, defaults)

    def submit(self, value_apart: bool = False) -> Any:
        """The task's ref; with value_apart, two refs: (names, the cell's value)."""
        router().expect(self.label)
        try:
            return self._submit(value_apart)
        except BaseException:
            router().expected.discard(self.label)
            raise

    def _submit(self, value_apart: bool) -> Any:
        args = (self.code.source, self.filename, self.first_line, self.namespace, self.pull, self.code.last_expr,
                self.max_bytes, value_apart)
        returns = 2 if value_apart else 1
        if self.args.session:  # the session's actor runs it in its own namespace
            from . import sessions
            actor = sessions.get_or_create(self.args.session, self.options)
            return actor.run.options(name=self.label, num_returns=returns).remote(*args)
        return _remote_cell_task.options(name=self.label, num_returns=returns, **self.options).remote(*args)

    def run_spread(self, n: int) -> Any:
        from .spread import run_spread
        return run_spread(self, n, _remote_cell_task)

    # -- blocking -------------------------------------------------------------------------
    def run_blocking(self) -> Any:
        ref = self.submit()
        route = router().open(ref, self.label)
        try:
            self._follow(ref, route)
        finally:
            router().close(ref)
        return self.apply(self._result(ref))

    def _follow(self, ref: runtime.ObjectRef, route: queue.Queue) -> None:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        try:
            self._drain_until_done(route, deadline, ref)
        except KeyboardInterrupt:
            runtime.cancel(ref, recursive=True)
            print(f"Interrupted: cancelling the tasks of {self.label} (interrupt again to kill their workers).",
                  file=sys.stderr)
            try:
                self._drain_until_done(route, time.monotonic() + 30, ref)
            except KeyboardInterrupt:
                if self.args.session:  # an actor's call cannot be force-cancelled: end the session
                    from . import sessions
                    runtime.kill(sessions.find(self.args.session))
                    print(f"Killed session {self.args.session!r}; its namespace is gone.", file=sys.stderr)
                else:
                    runtime.cancel(ref, force=True, recursive=True)
                    print(f"Killed the worker running {self.label}.", file=sys.stderr)
            raise plain_error(KeyboardInterrupt(f"{self.label} was interrupted; its tasks were cancelled.")) from None

    def _drain_until_done(self, route: queue.Queue, deadline: float | None, ref: runtime.ObjectRef) -> None:
        while True:
            wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            try:
                item = route.get(timeout=wait)
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    runtime.cancel(ref, recursive=True)
                    raise UsageError(f"{self.label} ran past --timeout {self.timeout} s and was cancelled.") from None
                continue
            if item is DONE:
                return
            write_output(item)

    def _result(self, ref: runtime.ObjectRef) -> dict:
        try:
            return runtime.get(ref)
        except TaskCancelledError:
            raise plain_error(KeyboardInterrupt(f"{self.label} was cancelled.")) from None
        except WorkerCrashedError as e:
            raise plain_error(e, worker_crash_text(self.label, e, self.args.retries)) from None
        except TaskError as e:
            # IPython shows this instead of a local traceback (and so does ipykernel's error reply).
            e._render_traceback_ = lambda e=e: render_remote_traceback(e, self.filename, self.count, self.label)
            raise e from None

    # -- results ---------------------------------------------------------------------------
    def apply(self, result: dict) -> Any:
        for name, shipped in result["names"].items():
            value = self._unship(name, shipped)
            if value is not _UNSET:
                self.shell.user_ns[name] = value
        if "value" in result:
            value = self._unship("the result", result["value"])
            return None if value is _UNSET else value
        return None

    def _unship(self, name: str, shipped: tuple) -> Any:
        return unship(name, shipped, self.max_bytes)


def unship(name: str, shipped: tuple, max_bytes: int) -> Any:
    """A value sent back by `ship_back`: itself, an ObjectRef (with a note), or _UNSET."""
    kind = shipped[0]
    if kind == "value":
        return shipped[1]
    if kind == "ref":
        # A note, not a warning: stdout, so the notebook does not show it as an error (pink stderr).
        print(f"{name} stays in the cluster: {format_size(shipped[2])} is over --max-bytes "
              f"{format_size(max_bytes)}; it is bound to an ObjectRef (runtime.get({name}) fetches it).")
        return shipped[1]
    print(f"{name} could not come back from the cluster ({shipped[2]}); it is left unchanged here. "
          f"Value there: {shipped[1]}", file=sys.stderr)
    return _UNSET


_UNSET = object()


def plain_error(exc: BaseException, text: str | None = None) -> BaseException:
    """`exc`, shown by IPython (and in the kernel's error reply) as one explanation, without the
    frames of our magic: the user's code is not in them, and they hide what to do."""
    line = text or f"{type(exc).__name__}: {exc}"
    exc._render_traceback_ = lambda: line.splitlines()  # type: ignore[attr-defined]
    return exc


def worker_crash_text(label: str, e: WorkerCrashedError, retries: int | None) -> str:
    tried = f" after --retries {retries}" if retries is not None else ""
    return (f"WorkerCrashedError: the worker running {label} died unexpectedly{tried}"
            f"{' (' + e.detail + ')' if e.detail else ''}. Add `--retries N` to the %%remote line to retry "
            "it more, or see the node's log if it ran out of memory.")


def write_output(msg: dict) -> None:
    write_stream(msg["s"], msg["d"])


def render_remote_traceback(err: TaskError, filename: str, count: int, label: str) -> list[str]:
    """The remote traceback as IPython shows a local one: frames in the cell as `Cell In[n]`,
    without the frames of our own plumbing."""
    kept: list[str] = []
    skipping = False
    for line in err.traceback_str.splitlines():
        if line.startswith("  File "):
            skipping = _REMOTE_CELL_FILE in line  # runtime frames are dropped when captured
        elif not line.startswith("    "):
            skipping = False
        if not skipping:
            kept.append(line.replace(f'File "{filename}"', f"Cell In[{count}]"))
    where = f" (pid {err.pid})" if err.pid else ""
    cause = type(err.cause).__name__ if err.cause is not None else "Error"
    return [f"{cause} raised in the cluster by {label}{where}", "\n".join(kept)]


def syntax_error_lines(e: SyntaxError, count: int) -> list[str]:
    lines = [f"SyntaxError in Cell In[{count}], line {e.lineno}: {e.msg}. Nothing was sent to the cluster."]
    if e.text:
        lines.append("    " + e.text.rstrip("\n"))
        if e.offset:
            lines.append("    " + " " * (e.offset - 1) + "^")
    return lines


def run_async(cell: RemoteCell, as_name: str | None) -> runtime.ObjectRef:
    """Submit and return at once with the handle: an ObjectRef of the cell's value (get or await
    it). This cell's output area keeps following the work; the names the cell assigned are
    bound in the notebook when it is done."""
    names_ref, handle_ref = cell.submit(value_apart=True)
    lines: list[str] = []
    handle = display({"text/plain": f"[{cell.label}] running ..."}, raw=True, display_id=True)
    started = time.monotonic()
    lock = threading.Lock()
    timer: list[threading.Timer] = []
    finished: list[bool] = []

    def show(status: str) -> None:
        with lock:
            body = "".join(lines)
        handle.update({"text/plain": body + f"[{cell.label}] {status}"}, raw=True)

    def show_running() -> None:
        with lock:
            timer.clear()
            if finished:
                return
        show("running ...")

    def on_output(msg: dict) -> None:
        # One display update per time slice, not per line: a busy cell's lines would each be a
        # message and the IOPub rate limit would drop them.
        with lock:
            lines.append(msg["d"])
            if timer:
                return
            timer.append(threading.Timer(OUTPUT_SLICE_S, show_running))
            timer[0].daemon = True
            timer[0].start()

    def on_done() -> None:
        elapsed = time.monotonic() - started
        with lock:
            finished.append(True)
            if timer:
                timer.pop().cancel()
        try:
            result = runtime.get(names_ref, timeout=0)
        except TaskError as e:
            show(f"failed after {elapsed:.1f} s: {type(e.cause).__name__ if e.cause else 'Error'}: {e.cause}\n")
            return
        except Exception as e:  # noqa: BLE001 - cancelled, or the cluster went away
            show(f"failed after {elapsed:.1f} s: {type(e).__name__}: {e}\n")
            return
        names = [n for n, s in result["names"].items() if s[0] != "unpicklable"]
        for n in names:
            cell.shell.user_ns[n] = result["names"][n][1]
        show(f"done in {elapsed:.1f} s" + (f"; set {', '.join(names)}" if names else "") + "\n")

    router().follow(names_ref, on_output, on_done, cell.label)
    if as_name:
        cell.shell.user_ns[as_name] = handle_ref
    return handle_ref
