"""Bad input on a real embedded cluster: misuse of the API gets clear errors,
malformed network input leaves the servers serving, and a driver killed with
SIGKILL takes its embedded cluster with it."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading

import cloudpickle
import msgpack
import psutil
import pytest

import runtime
from runtime._testing.sync import wait_for

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@runtime.remote
def echo(x):
    return x


@runtime.remote
class Plain:
    def ping(self):
        return "pong"


class LockHolder:
    def __init__(self):
        self.label = "holder"
        self.guard = threading.Lock()


# -- API misuse ------------------------------------------------------------------


def test_unpicklable_argument_raises_error_naming_argument_and_member(shared_runtime):
    @runtime.remote
    def use_holder(holder):
        return holder.label

    with pytest.raises(Exception) as info:  # noqa: B017 - the type is not specified
        runtime.get(use_holder.remote(LockHolder()), timeout=30)
    text = str(info.value)
    assert "guard" in text, f"the unpicklable member is not named: {text}"
    assert "holder" in text or "LockHolder" in text, f"the argument is not named: {text}"


def test_calling_remote_function_directly_raises_type_error(shared_runtime):
    with pytest.raises(TypeError) as info:
        echo(1)
    text = str(info.value)
    assert ".remote(" in text, text
    assert text.rstrip().endswith("."), f"not a sentence: {text!r}"


def test_instantiating_actor_class_directly_raises_type_error(shared_runtime):
    with pytest.raises(TypeError) as info:
        Plain()
    assert ".remote(" in str(info.value)


@pytest.mark.parametrize("not_a_ref", [1, "ref", [1, 2], None])
def test_get_raises_type_error_when_given_non_ref(shared_runtime, not_a_ref):
    with pytest.raises(TypeError):
        runtime.get(not_a_ref)


def test_wait_raises_type_error_when_given_non_refs(shared_runtime):
    with pytest.raises(TypeError):
        runtime.wait([1, 2])


def test_init_twice_raises_runtime_error_unless_ignore_reinit(shared_runtime):
    with pytest.raises(RuntimeError):
        runtime.init(num_cpus=2)
    runtime.init(num_cpus=2, ignore_reinit_error=True)
    assert runtime.is_initialized()
    assert runtime.get(echo.remote("still works"), timeout=30) == "still works"


def test_unknown_option_raises_value_error_naming_option(shared_runtime):
    with pytest.raises(ValueError, match="bogus_option"):
        echo.options(bogus_option=1)
    with pytest.raises(ValueError, match="bogus_option"):
        runtime.remote(bogus_option=1)(lambda: None)
    with pytest.raises(ValueError, match="bogus_option"):
        Plain.options(bogus_option=1)


def test_invalid_option_value_raises_error(shared_runtime):
    with pytest.raises((ValueError, TypeError)):
        echo.options(num_returns=-1).remote(1)
    with pytest.raises((ValueError, TypeError)):
        echo.options(num_cpus=-1).remote(1)


# -- malformed network input ------------------------------------------------------


def _frame(header_bytes, body=b""):
    # The wire format: u32 body_len | u32 header_len | header | buffers (little endian).
    return struct.pack("<II", 4 + len(header_bytes) + len(body), len(header_bytes)) + header_bytes + body


MALFORMED_INPUTS = {
    "garbage": os.urandom(64) + b"\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    "zero_length": b"\x00\x00\x00\x00" + b"junk" * 4,
    "truncated": struct.pack("<II", 1000, 10) + b"0123456789",
    "huge_length": b"\xff\xff\xff\xff\xff\xff\xff\x7f" + b"x" * 16,
    "header_longer_than_frame": struct.pack("<II", 8, 500) + b"abcd",
    "not_msgpack_header": _frame(b"\xc1\xc1\xc1\xc1"),
    "unknown_op": _frame(msgpack.packb({"op": "no_such_op", "id": 1, "garbage": [1, 2]})),
    "header_not_a_map": _frame(msgpack.packb([1, 2, 3])),
}


def _send_and_close(address, payload):
    """Send bytes, then return what the server did: 'closed', 'replied' or 'open'."""
    with socket.create_connection(address, timeout=3) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            data = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return "closed"
        except TimeoutError:
            return "open"
        return "replied" if data else "closed"


def _addresses():
    addresses = runtime._core.api._internal_addresses()
    return {"gcs": tuple(addresses["gcs"]), "node_manager": tuple(addresses["node_manager"])}


def test_internal_addresses_are_tcp_host_port_pairs(shared_runtime):
    for role, (host, port) in _addresses().items():
        assert isinstance(host, str) and host, role
        assert isinstance(port, int) and port > 0, role
        with socket.create_connection((host, port), timeout=5):
            pass


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", sorted(MALFORMED_INPUTS))
def test_servers_keep_serving_when_sent_malformed_frame(shared_runtime, kind):
    for role, address in _addresses().items():
        _send_and_close(address, MALFORMED_INPUTS[kind])
        # The server accepts a new connection afterwards.
        with socket.create_connection(address, timeout=5):
            pass
    assert runtime.get(echo.remote(kind), timeout=30) == kind
    assert runtime.cluster_resources()["CPU"] == 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["huge_length", "zero_length", "header_longer_than_frame"])
def test_servers_close_connection_when_frame_length_invalid(shared_runtime, kind):
    for role, address in _addresses().items():
        with socket.create_connection(address, timeout=5) as sock:
            sock.sendall(MALFORMED_INPUTS[kind])
            try:
                data = sock.recv(65536)
                while data:  # an error reply before closing is fine
                    data = sock.recv(65536)
            except ConnectionResetError:
                pass
            except TimeoutError:
                pytest.fail(f"{role} kept the connection open after a {kind} frame")


# -- driver death ------------------------------------------------------------------

_DRIVER = textwrap.dedent(
    """
    import os, sys
    import runtime

    runtime.init(num_cpus=1)

    @runtime.remote
    def worker_pid():
        return os.getpid()

    print(os.getpid(), runtime.get(worker_pid.remote(), timeout=60), flush=True)
    sys.stdin.read()
    """
)


def _sessions_of(pids):
    sessions = set()
    for pid in pids:
        try:
            session = psutil.Process(pid).environ().get("ORRERY_SESSION")
        except psutil.Error:
            continue
        if session:
            sessions.add(session)
    return sessions


def _live_processes_of_sessions(sessions):
    live = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("ORRERY_SESSION") in sessions:
                live.append((proc.pid, " ".join(proc.cmdline())))
        except psutil.Error:
            continue
    return live


@pytest.mark.timeout(90)
def test_embedded_cluster_exits_when_driver_sigkilled():
    proc = subprocess.Popen(
        [sys.executable, "-c", _DRIVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line, "the driver subprocess exited before printing its pid"
        driver_pid, worker_pid = (int(x) for x in line.split())
        assert driver_pid == proc.pid
        cluster = [c.pid for c in psutil.Process(driver_pid).children(recursive=True)]
        sessions = _sessions_of([worker_pid, *cluster])
        assert sessions, "no process of the embedded cluster carries ORRERY_SESSION"
        assert _live_processes_of_sessions(sessions)

        os.kill(driver_pid, signal.SIGKILL)
        proc.wait(timeout=10)
        try:
            wait_for(lambda: not _live_processes_of_sessions(sessions), timeout=10,
                     what="every process of the killed driver's cluster exited")
        except AssertionError as exc:
            left = _live_processes_of_sessions(sessions)
            pytest.fail(f"{exc}\nStill running: {left}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
