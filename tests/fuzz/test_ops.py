"""Every op every RPC server handles, with the cluster's token and messages made by
hypothesis: the fields the op's handler reads (found in its source) with values of any type,
other keys, with and without a request id, with buffers. The op tables come from the real
server objects (control store, node manager, core worker plus executor, client proxy).

After each message a probe request on the same connection must be answered (so the server
read and dispatched the message and its loop still runs) or the connection closed. At the
end every server is alive and answers, its fds, memory and processes are back near where
they were, the HTTP endpoints still serve (nothing the fuzzer stored broke them), nothing was
written outside the servers' directories, and tasks run on both nodes.
"""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings

from . import strategies, support
from .conftest import SCALE, deadline_s
from .support import RPC

# Ops whose documented effect is to stop the server: sent, they would end the test, not find a bug.
STOPS_THE_SERVER = {"gcs": {"shutdown_cluster"}, "node": {"shutdown"}}
EXAMPLES = max(1, int(8 * SCALE))  # per op and server
CLIENT_EXAMPLES = max(1, int(5 * SCALE))  # a proxy is a driver: its ops run real API calls
OPS = settings(deadline=None, derandomize=True, database=None, print_blob=False,
               suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def tables() -> support.OpTables:
    return support.op_tables()


def test_the_op_tables_are_found_and_the_skipped_ops_exist(tables):
    for server, ops in STOPS_THE_SERVER.items():
        assert ops <= set(getattr(tables, server)), (server, ops)
    for server in ("gcs", "node", "worker", "client"):
        table = getattr(tables, server)
        assert len(table) >= 10, (server, sorted(table))
        # Most handlers read fields: if none were found, fields_read lost track of the source.
        assert sum(1 for h in table.values() if support.fields_read(h)) >= len(table) // 2, server


class _Conn:
    """One authenticated connection to a listener, opened again when the server closed it.
    `first`: a frame sent after the hello on every new connection (a proxy's `init`)."""

    def __init__(self, lst: support.Listener, token: str, first: bytes = b"") -> None:
        self.lst, self.token, self.first, self.sock, self.probes = lst, token, first, None, 1 << 40

    def send(self, data: bytes, info: dict) -> str:
        if self.sock is None:
            self.sock = support.connect(self.lst)
            data = support.hello(self.token, info) + self.first + data
        self.probes += 1
        outcome = support.exchange(self.sock, data, self.probes, deadline_s())
        if outcome != "answered":
            self.close()
        return outcome

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _fuzz_op(conn: _Conn, op: str, fields: set, examples: int, fresh: bool) -> None:
    lst, token = conn.lst, conn.token

    @settings(OPS, max_examples=examples)
    @given(msg=strategies.message(op, fields), bufs=strategies.buffers(), info=strategies.hello_info())
    def one(msg: dict, bufs: list, info: dict) -> None:
        if fresh:
            conn.close()
        outcome = conn.send(support.frame(msg, bufs), info)
        assert outcome in ("answered", "closed"), f"{lst}: no answer to a probe after {msg!r}: {outcome}"
        if outcome == "closed" and lst.role == RPC:
            assert support.rpc_alive(lst, token), f"{lst} stopped answering after {msg!r}"

    one()


def _by_server(listeners: list) -> dict:
    """The RPC listeners to fuzz, one per server and node (a node manager's Unix and TCP sockets
    take turns by op), and the client server's."""
    out: dict[tuple, list] = {}
    for lst in listeners:
        if lst.role in (RPC, "client"):
            out.setdefault((lst.server, lst.node), []).append(lst)
    return out


@pytest.mark.slow
def test_every_op_of_every_rpc_server_with_malformed_fields(driver, tables):
    cluster = driver
    shutil.rmtree(strategies.ESCAPE_DIR, ignore_errors=True)
    # The driver fixture's actors' workers are fuzzed too.
    before = cluster.usage()
    groups = _by_server(cluster.listeners())
    assert {k[0] for k in groups} >= {"gcs", "node", "worker", "client"}, groups
    for (server, node), listeners in sorted(groups.items()):
        table = getattr(tables, server)
        skipped = STOPS_THE_SERVER.get(server, set())
        ops = sorted(set(table) - skipped - {"hello"}) + ["_r"]  # "_r": a reply to nothing
        # A proxy is a process per connection: one for all its ops, made a driver first
        # (`init`), so that the ops after it reach the cluster.
        proxy = _Conn(listeners[0], cluster.token, support.frame({"op": "init", "id": 1}))
        try:
            for i, op in enumerate(ops):
                fields = support.fields_read(table[op]) if op in table else {"ok", "err"}
                if server == "client":
                    _fuzz_op(proxy, op, fields, CLIENT_EXAMPLES, fresh=False)
                else:
                    conn = _Conn(listeners[i % len(listeners)], cluster.token)
                    try:
                        _fuzz_op(conn, op, fields, EXAMPLES, fresh=True)
                    finally:
                        conn.close()
        finally:
            proxy.close()
    cluster.assert_alive()
    for lst in cluster.listeners():
        if lst.role == RPC:
            assert support.rpc_alive(lst, cluster.token), f"{lst} does not answer after the fuzzing"
    assert not os.path.exists(strategies.ESCAPE_DIR), "a server wrote outside its directories"
    _assert_http_serves(cluster)
    cluster.assert_back_to(before, "every op with malformed fields")
    cluster.check_tasks()


def _assert_http_serves(cluster) -> None:
    """Every GET endpoint without parameters of the dashboard, and each node's metrics, answer
    200: no value the fuzzer left in the tables they render breaks them."""
    from runtime._core import ray_state
    paths = ["/api/jobs/", "/api/version", "/metrics", "/api/orrery/overview", "/api/v0/tasks/timeline"]
    paths += [f"/api/v0/{r}" for r in ray_state.RESOURCES] + [f"/api/v0/{r}/summarize" for r in ("tasks", "actors")]
    for lst in cluster.listeners():
        if lst.server == "dashboard":
            bad = {p: s for p in paths if (s := support.http_alive(lst, p)) != 200}
            assert not bad, f"dashboard endpoints failing after the fuzzing: {bad}"
        elif lst.server == "metrics":
            assert support.http_alive(lst, "/metrics") == 200, f"{lst}: /metrics fails after the fuzzing"
