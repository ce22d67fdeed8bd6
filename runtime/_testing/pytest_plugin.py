"""pytest fixtures for the runtime: leak checks and cluster fixtures.

Enable with `pytest_plugins = ["runtime._testing.pytest_plugin"]` in a conftest.

Fixtures:

- `orrery_leak_check` (autouse): after every test, within a bounded wait, no
  process started by the runtime during the test is left, and no
  `/dev/shm/orrery-*` entry created during the test is left. A leak *fails* the
  test (it is reported on the test itself, not as a teardown error), lists the
  leftover pids and command lines, and the leftovers are then removed so that
  one leak does not cascade into the following tests.
- `ray_start`: `runtime.init(num_cpus=2)`, or the init kwargs given as
  `request.param` (`@pytest.mark.parametrize("ray_start", [{...}], indirect=True)`);
  yields the context and shuts down afterwards.
- `shared_runtime`: one `runtime.init(num_cpus=2)` for the whole module, for
  cheap read-only tests. Its processes (and shared-memory entries) are tolerated
  by the per-test leak check and checked when the module ends.

How the runtime's processes are recognised: every process the runtime starts
has the environment variable `ORRERY_SESSION`. Of those, this run's are the
ones carrying this run's `ORRERY_TEST_RUN` marker (set in `os.environ` when the
plugin is configured, inherited by every child), the descendants of this
process, and any process of a session already seen to be this run's. Clusters
of other test runs on the same machine are ignored.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

SESSION_ENV = "ORRERY_SESSION"
RUN_MARKER_ENV = "ORRERY_TEST_RUN"
SHM_GLOB = "/dev/shm/orrery-*"
LEAK_WAIT_S = 10.0
DEFAULT_INIT_KWARGS: dict[str, Any] = {"num_cpus": 2}

_run_marker = ""
# Session ids known to belong to this test run / to other runs on the machine.
_our_sessions: set[str] = set()
_foreign_sessions: set[str] = set()
# Session ids whose processes the per-test leak check tolerates (shared_runtime).
_tolerated_sessions: set[str] = set()


# -- process and shared-memory census ----------------------------------------


@dataclass(frozen=True)
class _Proc:
    pid: int
    create_time: float
    session: str
    cmdline: str


def _is_descendant_of_us(proc: Any) -> bool:
    import psutil

    me = os.getpid()
    try:
        return any(parent.pid == me for parent in proc.parents())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def runtime_processes() -> dict[tuple[int, float], _Proc]:
    """This test run's live runtime processes, keyed by (pid, create_time)."""
    import psutil

    found: dict[tuple[int, float], _Proc] = {}
    me = os.getpid()
    own_session = os.environ.get(SESSION_ENV)
    if own_session:
        _our_sessions.add(own_session)
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            env = proc.environ()
            session = env.get(SESSION_ENV)
            if session is None:
                continue
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            ours = (
                env.get(RUN_MARKER_ENV) == _run_marker
                or session in _our_sessions
                or _is_descendant_of_us(proc)
            )
            if not ours:
                _foreign_sessions.add(session)
                continue
            _our_sessions.add(session)
            cmdline = " ".join(proc.cmdline()) or proc.name()
            found[(proc.pid, proc.create_time())] = _Proc(
                proc.pid, proc.create_time(), session, cmdline
            )
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        except OSError:
            continue
    return found


def _names_session(entry: str, sessions: set[str]) -> bool:
    """Whether a shm entry's name carries one of `sessions`.

    Entries are named after the session's random suffix
    (`session_<date>_<pid>_<suffix>` -> `/dev/shm/orrery-<suffix>-<node>`).
    """
    name = os.path.basename(entry)
    for session in sessions:
        suffix = session.rsplit("_", 1)[-1]
        if session in name or (len(suffix) >= 6 and f"-{suffix}" in name):
            return True
    return False


def shm_entries() -> set[str]:
    """`/dev/shm/orrery-*` entries, minus those named after another run's session."""
    return {e for e in glob.glob(SHM_GLOB) if not _names_session(e, _foreign_sessions)}


@dataclass
class _Census:
    procs: dict[tuple[int, float], _Proc] = field(default_factory=dict)
    shm: set[str] = field(default_factory=set)

    @classmethod
    def take(cls) -> _Census:
        return cls(runtime_processes(), shm_entries())


def _leftovers(
    before: _Census, *, tolerate_sessions: set[str], tolerate_new_shm: bool
) -> tuple[list[_Proc], list[str]]:
    now = _Census.take()
    procs = [
        p
        for key, p in now.procs.items()
        if key not in before.procs and p.session not in tolerate_sessions
    ]
    shm = [] if tolerate_new_shm else sorted(now.shm - before.shm)
    shm = [e for e in shm if not _names_session(e, tolerate_sessions)]
    return procs, shm


def wait_no_leaks(
    before: _Census,
    *,
    timeout: float = LEAK_WAIT_S,
    tolerate_sessions: set[str] | None = None,
    tolerate_new_shm: bool = False,
) -> tuple[list[_Proc], list[str]]:
    """Wait until nothing started after `before` is left; return what is left."""
    tolerate = set(tolerate_sessions or ())
    deadline = time.monotonic() + timeout
    interval = 0.02
    while True:
        procs, shm = _leftovers(
            before, tolerate_sessions=tolerate, tolerate_new_shm=tolerate_new_shm
        )
        if not procs and not shm:
            return [], []
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return procs, shm
        time.sleep(min(interval, remaining))
        interval = min(interval * 2, 0.5)


def _describe_leaks(procs: list[_Proc], shm: list[str], timeout: float) -> str:
    lines = [f"Runtime resources leaked by this test (still there {timeout:g} s after it ended):"]
    for p in procs:
        lines.append(f"  process pid={p.pid} session={p.session}: {p.cmdline}")
    for e in shm:
        lines.append(f"  shared memory: {e}")
    lines.append(
        "Likely cause: a cluster, actor or worker was not shut down, or a component "
        "does not exit when its owner goes away. The leftovers were removed."
    )
    return "\n".join(lines)


def _remove_leftovers(procs: list[_Proc], shm: list[str]) -> None:
    import psutil

    for p in procs:
        with contextlib.suppress(psutil.Error, OSError):
            proc = psutil.Process(p.pid)
            if proc.create_time() == p.create_time:
                proc.send_signal(signal.SIGKILL)
    for e in shm:
        with contextlib.suppress(OSError):
            if os.path.isdir(e) and not os.path.islink(e):
                shutil.rmtree(e)
            else:
                os.unlink(e)


class RuntimeLeakError(AssertionError):
    """A test left runtime processes or shared memory behind."""


# -- shared runtime state ----------------------------------------------------


@dataclass
class _SharedRuntime:
    module: str
    before: _Census
    ctx: Any = None
    active: bool = False
    sessions: set[str] = field(default_factory=set)


_shared: _SharedRuntime | None = None


def _stop_shared_runtime() -> None:
    """Shut the module's shared runtime down (a test needs a cluster of its own)."""
    import runtime

    if _shared is not None and _shared.active:
        _shared.active = False
        if runtime.is_initialized():
            runtime.shutdown()


# -- hooks -------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    global _run_marker
    _run_marker = uuid.uuid4().hex
    os.environ[RUN_MARKER_ENV] = _run_marker
    for line in (
        "slow: takes more than a few seconds (run in CI)",
        "fault: kills real processes to test recovery",
        "gpu: needs a GPU (skipped without one)",
    ):
        config.addinivalue_line("markers", line)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool:
    """Run the test as pytest does, but report a leak as the test's failure.

    The leak check can only run after every fixture (the cluster's included) has
    been torn down, which pytest would report as a teardown *error*. Here the
    reports are collected first; when the test body passed and the teardown
    failed only because of a leak, the failure is moved onto the call report.
    """
    from _pytest.runner import runtestprotocol

    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reports = runtestprotocol(item, nextitem=nextitem, log=False)
    leak = getattr(item, "_orrery_leak", None)
    if leak:
        by_when = {r.when: r for r in reports}
        call, teardown = by_when.get("call"), by_when.get("teardown")
        if call is not None and teardown is not None and call.passed and teardown.failed:
            call.outcome = "failed"
            call.longrepr = f"{RuntimeLeakError.__name__}: {leak}"
            teardown.outcome = "passed"
            teardown.longrepr = None
    for report in reports:
        ihook.pytest_runtest_logreport(report=report)
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


# -- fixtures ----------------------------------------------------------------


@pytest.fixture(autouse=True)
def orrery_leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if it leaves runtime processes or shared memory behind."""
    before = _Census.take()
    yield
    messages = []
    shared_active = _shared is not None and _shared.active
    try:
        import runtime

        is_initialized = getattr(runtime, "is_initialized", None)
        if is_initialized is not None and is_initialized() and not shared_active:
            messages.append(
                "The test left the runtime initialized; it was shut down here. "
                "Use the ray_start fixture or call runtime.shutdown()."
            )
            runtime.shutdown()
    except ImportError:
        pass
    procs, shm = wait_no_leaks(
        before,
        tolerate_sessions=_tolerated_sessions,
        tolerate_new_shm=shared_active,
    )
    if procs or shm:
        messages.append(_describe_leaks(procs, shm, LEAK_WAIT_S))
        _remove_leftovers(procs, shm)
    if messages:
        message = "\n".join(messages)
        request.node._orrery_leak = message
        raise RuntimeLeakError(message)


@contextlib.contextmanager
def start_runtime(**init_kwargs: Any) -> Iterator[Any]:
    """`runtime.init(**init_kwargs)` for one test, shut down on exit.

    For fixtures whose init kwargs depend on other fixtures (a `tmp_path`, say).
    A module's shared runtime, if up, is shut down first.
    """
    import runtime

    _stop_shared_runtime()
    ctx = runtime.init(**init_kwargs)
    try:
        yield ctx
    finally:
        runtime.shutdown()


@pytest.fixture
def ray_start(request: pytest.FixtureRequest, orrery_leak_check: None) -> Iterator[Any]:
    """An embedded cluster for one test: `runtime.init(num_cpus=2)` by default.

    Parametrize with init kwargs:
    `@pytest.mark.parametrize("ray_start", [{"num_cpus": 1}], indirect=True)`.
    """
    kwargs = dict(DEFAULT_INIT_KWARGS)
    kwargs.update(getattr(request, "param", None) or {})
    with start_runtime(**kwargs) as ctx:
        yield ctx


@pytest.fixture
def own_cluster(orrery_leak_check: None) -> Iterator[None]:
    """For a test that starts its own cluster itself (a magic, a Cluster): the module's shared
    runtime is shut down first, and whatever the test left initialized afterwards."""
    import runtime

    _stop_shared_runtime()
    yield
    if runtime.is_initialized():
        runtime.shutdown()


@pytest.fixture(scope="module")
def _orrery_shared_runtime_owner(request: pytest.FixtureRequest) -> Iterator[_SharedRuntime]:
    global _shared
    state = _SharedRuntime(module=request.node.nodeid, before=_Census.take())
    _shared = state
    try:
        yield state
    finally:
        _stop_shared_runtime()
        _shared = None
        procs, shm = wait_no_leaks(state.before)
        _tolerated_sessions.difference_update(state.sessions)
        if procs or shm:
            _remove_leftovers(procs, shm)
            raise RuntimeLeakError(
                "shared_runtime of this module: " + _describe_leaks(procs, shm, LEAK_WAIT_S)
            )


@pytest.fixture
def shared_runtime(
    _orrery_shared_runtime_owner: _SharedRuntime, orrery_leak_check: None
) -> Any:
    """One embedded cluster (`num_cpus=2`) shared by the tests of a module.

    For cheap tests that do not change cluster-wide state. A test that needs
    its own cluster uses `ray_start`, which shuts the shared one down first
    (the next `shared_runtime` test starts it again).
    """
    import runtime

    state = _orrery_shared_runtime_owner
    if state.active and runtime.is_initialized():
        return state.ctx
    before = runtime_processes()
    state.ctx = runtime.init(**DEFAULT_INIT_KWARGS)
    state.active = True
    sessions = set()
    own = os.environ.get(SESSION_ENV)
    if own:
        sessions.add(own)
    deadline = time.monotonic() + 5.0
    while True:
        sessions |= {p.session for k, p in runtime_processes().items() if k not in before}
        if sessions or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    state.sessions |= sessions
    _tolerated_sessions.update(sessions)
    return state.ctx
