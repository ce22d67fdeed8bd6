"""Every listening socket of a head and a joined node, found from their processes, gets bytes
that are not what it speaks: random bytes, truncated frames, a 4 GB length prefix, a hello
with a wrong token, a valid hello then undecodable headers, an unauthenticated first frame
too big to be a hello, 500 idle connections and frames sent a byte at a time. Each
connection must be closed by the server (at once, or after hello_timeout_s), and afterwards
every server is alive, its fds and memory are back near where they were, and tasks run.
"""

from __future__ import annotations

import socket
import struct
import time

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime._testing.sync import wait_for

from . import support
from .conftest import HELLO_TIMEOUT_S, SCALE, deadline_s
from .support import CLIENT, HTTP, RPC, TRANSFER

FUZZ = settings(max_examples=max(1, int(25 * SCALE)), deadline=None, derandomize=True, database=None,
                print_blob=False, suppress_health_check=list(HealthCheck))
# A client-server connection starts a proxy process (about 0.15 s of CPU): fewer examples there.
FEW = settings(FUZZ, max_examples=max(1, int(6 * SCALE)))
FRAMED = (RPC, CLIENT)
EXPECTED = {("gcs", "head"), ("client", "head"), ("dashboard", "head"), ("node", "head"), ("node", "joined"),
            ("metrics", "head"), ("metrics", "joined"), ("transfer", "head"), ("transfer", "joined"),
            ("worker", "head"), ("worker", "joined")}


def _settings_for(lst):
    return FEW if lst.role == CLIENT else FUZZ


def test_every_listening_socket_is_found_and_known(driver):
    found = driver.listeners()
    assert {(lst.server, lst.node) for lst in found} >= EXPECTED, found
    # Nothing listens beyond loopback.
    assert all(lst.address.startswith("unix:") or lst.address.startswith("tcp:127.") for lst in found), found


@pytest.mark.slow
def test_random_bytes_and_truncated_frames_close_only_that_connection(driver):
    cluster = driver
    before = cluster.usage()
    hello = support.hello(cluster.token)
    for lst in cluster.listeners():
        @_settings_for(lst)
        @given(data=st.binary(max_size=600))
        def random_bytes(data: bytes) -> None:
            # The peer says it is done: whatever the server made of the bytes, it closes.
            assert not support.left_open([(lst, data, True)], deadline_s()), f"{lst} kept {data!r} open"

        random_bytes()
    cases = []
    for lst in cluster.listeners():
        if lst.role in FRAMED:
            cuts = range(len(hello)) if lst.role == RPC else (0, 3, 4, 7, 8, len(hello) // 2, len(hello) - 1)
            cases += [(lst, hello[:cut], True) for cut in cuts]
    assert not support.left_open(cases, deadline_s())
    _assert_all_answer(cluster)
    cluster.assert_back_to(before, "random bytes and truncated frames")
    cluster.check_tasks()


def _assert_all_answer(cluster) -> None:
    for lst in cluster.listeners():
        if lst.role == RPC:
            assert support.rpc_alive(lst, cluster.token), f"{lst} does not answer"
        elif lst.role == HTTP:
            assert support.http_alive(lst, "/api/version" if lst.server == "dashboard" else "/metrics") == 200, lst


def test_a_4gb_length_prefix_a_wrong_token_and_a_huge_first_frame_are_refused(driver):
    cluster = driver
    before = cluster.usage()
    cases = []
    for lst in cluster.listeners():
        # 4 GB (and 1 GiB + 1): past the frame limit, closed at once (a data stream after its timeout).
        for prefix in (0xFFFFFFFF, (1 << 30) + 1):
            cases.append((lst, struct.pack("<II", prefix, 8) + b"\x81\xa2op\xa5hello", False))
        if lst.role in FRAMED:
            cases += [(lst, support.hello("0" * len(cluster.token)), False),  # a wrong token
                      (lst, support.frame({"op": "hello"}), False),  # none
                      (lst, support.frame({"op": "list_nodes", "id": 1, "token": cluster.token}), False)]
        if lst.role == TRANSFER:
            cases += [(lst, struct.pack("<32s20sQQQ", b"0" * 32, b"\x01" * 20, 0, 1 << 40, 0), False),
                      (lst, struct.pack("<32s20sQQQ", cluster.token.encode(), b"\x01" * 20, (1 << 64) - 1,
                                        (1 << 64) - 1, 0), False)]  # the right token, no such object
    assert not support.left_open(cases, deadline_s())
    for lst in cluster.listeners():
        if lst.role == RPC:
            # A legal length (512 MiB) from a peer that has not said hello: the server must not
            # buffer it. It closes the connection long before the 8 MiB sent here are all in.
            assert _refuses_to_buffer(lst), f"{lst} buffers an unauthenticated frame"
    _assert_all_answer(cluster)
    cluster.assert_back_to(before, "oversized prefixes and wrong tokens")
    cluster.check_tasks()


def _refuses_to_buffer(lst) -> bool:
    """A peer that has not said hello announces a 512 MiB frame and sends 32 MiB of it: the
    server must close the connection before taking it all, whether the prefix comes in one
    piece or (over TCP, where we can see the server read the first piece) in two."""
    prefix = struct.pack("<II", 512 << 20, 16)
    for cut in (8, 2) if lst.family == socket.AF_INET else (8,):
        with support.connect(lst) as s:
            s.settimeout(deadline_s())
            try:
                s.sendall(prefix[:cut])
                if cut < len(prefix):
                    wait_for(lambda s=s: support.server_read_all(s), timeout=10, what="the server to read 2 bytes")
                s.sendall(prefix[cut:])
                chunk = b"\0" * (1 << 16)
                for _ in range(512):
                    s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                continue
            return False
    return True


@pytest.mark.slow
def test_undecodable_headers_after_a_valid_hello_close_that_connection(driver):
    """Valid token, then a frame that is not a msgpack map with a string op."""
    cluster = driver
    before = cluster.usage()
    hello = support.hello(cluster.token)
    fixed = [b"\xc1", b"\x81", b"\x92\x01\x02", msgpack.packb({"op": 5}), msgpack.packb({"no": "op"}),
             msgpack.packb({"op": "x", "_b": "nope"}), msgpack.packb({"op": "x", "_b": [10 ** 6]}),
             msgpack.packb("a string")]
    for lst in cluster.listeners():
        if lst.role not in FRAMED:
            continue
        heads = fixed if lst.role == RPC else fixed[:3]
        cases = [(lst, hello + support.raw_frame(head), False) for head in heads]
        cases.append((lst, hello + support.raw_frame(msgpack.packb({"op": "x"}), b"trailing"), False))
        assert not support.left_open(cases, deadline_s())

        @_settings_for(lst)
        @given(head=st.binary(max_size=200))
        def garbage_header(head: bytes) -> None:
            with support.connect(lst) as s:
                outcome = support.exchange(s, hello + support.raw_frame(head), 7, deadline_s())
            # Closed, or (bytes that happen to be a map with a string op) answered: never hung.
            assert outcome in ("closed", "answered"), (lst, head, outcome)

        garbage_header()
    _assert_all_answer(cluster)
    cluster.assert_back_to(before, "undecodable headers")
    cluster.check_tasks()


def _proxies(cluster) -> list:
    import psutil
    out = []
    for p in psutil.Process(cluster.server_pids["gcs"]).children():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "runtime.client.proxy" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            continue
    return out


@pytest.mark.slow
def test_500_idle_connections_to_every_socket_are_closed_after_the_hello_timeout(driver):
    import psutil
    from runtime.client.server import MAX_UNAUTHENTICATED_PROXIES

    cluster = driver
    before = cluster.usage()
    listeners = cluster.listeners()
    started = time.monotonic()
    socks = support.open_idle(listeners, 500, deadline_s())
    proxies = _proxies(cluster)
    assert len(proxies) <= MAX_UNAUTHENTICATED_PROXIES, f"{len(proxies)} proxies for idle connections"
    left = {lst: support.wait_all_closed(s, deadline_s() + (time.monotonic() - started)) for lst, s in socks.items()}
    for group in socks.values():
        for s in group:
            s.close()
    assert not any(left.values()), {str(lst): len(s) for lst, s in left.items() if s}
    opened = {str(lst): len(s) for lst, s in socks.items() if len(s) < 500}
    assert not opened, f"connections refused (not accepted and held until the timeout): {opened}"
    cluster.assert_back_to(before, "500 idle connections per socket")
    gone, alive = psutil.wait_procs(proxies, timeout=deadline_s())
    assert not alive, f"proxies of idle connections still running: {alive}"
    _assert_all_answer(cluster)
    cluster.check_tasks()


@pytest.mark.slow
def test_frames_sent_a_byte_at_a_time_are_closed_after_the_hello_timeout(driver):
    """Slowloris: a hello (an HTTP request line and headers, a data stream request) trickled
    one byte every 0.2 s never completes within the hello timeout; the server closes it."""
    cluster = driver
    before = cluster.usage()
    payload = {RPC: support.hello(cluster.token), CLIENT: support.hello(cluster.token),
               HTTP: b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n",
               TRANSFER: struct.pack("<32s20sQQQ", cluster.token.encode(), b"\x01" * 20, 0, 1, 0)}
    slow = []
    for lst in cluster.listeners():
        for _ in range(3 if lst.role != CLIENT else 1):
            slow.append((lst, support.connect(lst), payload[lst.role]))
    assert all(len(data) * 0.2 > HELLO_TIMEOUT_S * 3 for _, _, data in slow)
    started = time.monotonic()
    sent = {id(s): 0 for _, s, _ in slow}
    open_ = list(slow)
    while open_ and time.monotonic() - started < deadline_s():
        for entry in list(open_):
            lst, s, data = entry
            try:
                s.sendall(data[sent[id(s)]:sent[id(s)] + 1])
                sent[id(s)] += 1
            except OSError:
                open_.remove(entry)
                continue
            if sent[id(s)] >= len(data):
                raise AssertionError(f"{lst}: the whole slow frame went through without a close")
        # Pacing of the stimulus, and the wait for the closes: the server's EOF ends it early.
        for entry in list(open_):
            if support.wait_closed(entry[1], 0.2 / max(1, len(open_))):
                open_.remove(entry)
    for _, s, _ in slow:
        s.close()
    assert not open_, [str(lst) for lst, _, _ in open_]
    assert time.monotonic() - started >= HELLO_TIMEOUT_S * 0.9
    cluster.assert_back_to(before, "slow partial frames")
    cluster.check_tasks()
