"""The control store's table storage (runtime/gcs/storage.py): SQLite and Redis backends,
crash recovery, atomic batches, and the one-transaction-per-tick writer.

The Redis tests start Debian's redis-server on 127.0.0.1 (a free port, data in tmp_path) and
skip when redis-server or the redis package is missing.
"""

from __future__ import annotations

import asyncio
import enum
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runtime._testing.redis import RedisServer, require_redis_server
from runtime._testing.redis import free_port as _free_port
from runtime.gcs.storage import (
    RedisStorage,
    SQLiteStorage,
    StorageError,
    TableStorage,
    TickWriter,
    decode,
    encode,
    open_storage,
)

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------
# Helpers


def _run_child(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for f in (proc.stdin, proc.stdout):
        if f:
            f.close()


class CountingSQLite(SQLiteStorage):
    """Records each transaction it commits."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.transactions: list[dict] = []

    def _write(self, changes: dict) -> None:
        super()._write(changes)
        self.transactions.append(dict(changes))


class MemoryStorage(TableStorage):
    """In memory; the first `fail` writes raise."""

    def __init__(self, fail: int = 0) -> None:
        super().__init__()
        self.rows: dict[tuple[str, str], bytes] = {}
        self.fail = fail
        self.attempts = 0

    def _write(self, changes: dict) -> None:
        self.attempts += 1
        if self.fail:
            self.fail -= 1
            raise StorageError("injected failure")
        for k, v in changes.items():
            if v is None:
                self.rows.pop(k, None)
            else:
                self.rows[k] = v

    def load(self, table: str) -> dict[str, bytes]:
        return {k: v for (t, k), v in self.rows.items() if t == table}

    def clear(self) -> None:
        self.rows.clear()

    def _close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------
# Encoding


class Color(enum.IntEnum):
    RED = 1


def test_encode_round_trips_rows():
    row = {"actor_id": "a1", "spec_bufs": [b"\x00\x01", bytearray(b"xy"), memoryview(b"z")],
           "meta": {"n": 1, "f": 0.5, "ok": True, "none": None}, "pair": ("ns", "name"),
           "nodes": {"n1", "n2"}, "frozen": frozenset({3}), 7: "int key", ("a", "b"): "tuple key",
           "color": Color.RED}
    back = decode(encode(row))
    assert back["spec_bufs"] == [b"\x00\x01", b"xy", b"z"] and all(type(b) is bytes for b in back["spec_bufs"])
    assert back["meta"] == row["meta"] and back["pair"] == ("ns", "name") and type(back["pair"]) is tuple
    assert back["nodes"] == {"n1", "n2"} and back["frozen"] == {3}
    assert back[7] == "int key" and back[("a", "b")] == "tuple key" and back["color"] == 1


def test_encode_names_what_it_cannot_store():
    with pytest.raises(TypeError, match="cannot store a .*object in a control-store row"):
        encode({"conn": object()})


# --------------------------------------------------------------------------------------------
# SQLite


def test_sqlite_round_trip_overwrite_delete(tmp_path):
    with SQLiteStorage(str(tmp_path / "gcs.sqlite3")) as s:
        assert s.load("actors") == {}
        s.put("actors", "a1", encode({"state": "ALIVE"}))
        s.put("actors", "a2", b"two")
        s.put("kv", "a1", b"same key, other table")
        assert decode(s.load("actors")["a1"]) == {"state": "ALIVE"}
        s.put("actors", "a1", b"overwritten")
        assert s.load("actors") == {"a1": b"overwritten", "a2": b"two"}
        s.delete("actors", "a2")
        s.delete("actors", "never-there")  # not an error
        assert s.load("actors") == {"a1": b"overwritten"}
        assert s.load("kv") == {"a1": b"same key, other table"}
        s.put_many("kv", {"x": b"1", "y": bytearray(b"2")})
        s.put_many("kv", [("z", b"3")])
        s.delete_many("kv", ["x", "a1"])
        assert s.load("kv") == {"y": b"2", "z": b"3"}
        s.put("kv", "empty", b"")
        assert s.load("kv")["empty"] == b""


def test_sqlite_settings(tmp_path):
    path = tmp_path / "gcs.sqlite3"
    with SQLiteStorage(str(path)) as s:
        assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        s.put("t", "k", b"v")
        raw = sqlite3.connect(path)
        try:
            cols = [(r[1], r[2], r[5]) for r in raw.execute("PRAGMA table_info(rows)")]
            assert cols == [("tbl", "TEXT", 1), ("key", "TEXT", 2), ("value", "BLOB", 0)]
            assert raw.execute("SELECT tbl, key, value FROM rows").fetchall() == [("t", "k", b"v")]
        finally:
            raw.close()


def test_sqlite_rejects_bad_input(tmp_path):
    with SQLiteStorage(str(tmp_path / "gcs.sqlite3")) as s:
        with pytest.raises(TypeError, match="row values are bytes"):
            s.put("t", "k", "not bytes")
        with pytest.raises(TypeError, match="row keys are str"):
            s.put("t", 1, b"v")
        with pytest.raises(ValueError, match="table names"):
            s.put("bad table", "k", b"v")
    with pytest.raises(StorageError, match="is closed"):
        s.put("t", "k", b"v")
    s.close()  # idempotent


def test_sqlite_reopen_after_close_recovers_everything(tmp_path):
    path = str(tmp_path / "session" / "gcs.sqlite3")  # the directory is created
    rows = {f"actor-{i}": encode({"i": i, "spec_bufs": [os.urandom(64)]}) for i in range(200)}
    s = SQLiteStorage(path)
    s.put_many("actors", rows)
    s.put("kv", "k", b"v")
    s.delete("actors", "actor-0")
    s.close()
    del rows["actor-0"]
    with SQLiteStorage(path) as again:
        assert again.load("actors") == rows and again.load("kv") == {"k": b"v"}


def test_sqlite_committed_writes_survive_sigkill(tmp_path):
    path = str(tmp_path / "gcs.sqlite3")
    child = _run_child("""
        import sys
        from runtime.gcs.storage import SQLiteStorage, encode
        s = SQLiteStorage(sys.argv[1])                      # never closed: the process is killed
        s.put_many("actors", {f"a{i}": encode({"i": i}) for i in range(1000)})
        with s.batch():
            s.put("jobs", "j1", b"job")
            s.delete("actors", "a0")
        print("committed", flush=True)
        sys.stdin.readline()                                # wait here to be killed
    """, path)
    try:
        assert child.stdout.readline().strip() == "committed"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        _kill(child)
    assert child.returncode == -signal.SIGKILL
    with SQLiteStorage(path) as s:
        actors = s.load("actors")
        assert len(actors) == 999 and "a0" not in actors and decode(actors["a999"]) == {"i": 999}
        assert s.load("jobs") == {"j1": b"job"}


def test_sqlite_sigkill_inside_a_transaction_writes_none_of_it(tmp_path):
    path = str(tmp_path / "gcs.sqlite3")
    # The child pauses inside its transaction (a temporary trigger calls back into Python after
    # the 500th row) and is killed there.
    child = _run_child("""
        import sys
        from runtime.gcs.storage import SQLiteStorage
        s = SQLiteStorage(sys.argv[1])
        s.put("actors", "before", b"committed earlier")
        def pause():
            print("inside", flush=True)
            sys.stdin.readline()
            return 0
        s._db.create_function("pause", 0, pause)
        s._db.execute("CREATE TEMP TRIGGER p AFTER INSERT ON main.rows WHEN NEW.key = 'k500' "
                      "BEGIN SELECT pause(); END")
        s.put_many("actors", {f"k{i}": b"x" * 100 for i in range(1000)})
    """, path)
    try:
        assert child.stdout.readline().strip() == "inside"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        _kill(child)
    with SQLiteStorage(path) as s:
        assert s.load("actors") == {"before": b"committed earlier"}


def test_sqlite_batches_are_atomic(tmp_path):
    path = str(tmp_path / "gcs.sqlite3")
    with SQLiteStorage(path) as s:
        s.put_many("t", {"old": b"1", "keep": b"2"})
        # A row that fails half-way through the transaction (the trigger aborts its INSERT).
        raw = sqlite3.connect(path)
        raw.execute("CREATE TRIGGER boom BEFORE INSERT ON rows WHEN NEW.key = 'poison' "
                    "BEGIN SELECT RAISE(ABORT, 'poisoned row'); END")
        raw.commit()
        raw.close()
        with pytest.raises(StorageError, match="nothing of this batch was written.*poisoned row"), s.batch():
            s.put("t", "a", b"new")
            s.put("u", "b", b"new")
            s.delete("t", "old")
            s.put("t", "poison", b"!")
        assert s.load("t") == {"old": b"1", "keep": b"2"} and s.load("u") == {}
        with pytest.raises(StorageError, match="poisoned row"):
            s.put_many("t", {"a": b"new", "poison": b"!", "z": b"new"})
        assert s.load("t") == {"old": b"1", "keep": b"2"}

        # Nothing is written before the outermost batch ends, nothing if it raises.
        with s.batch():
            s.put("t", "a", b"A")
            with s.batch():
                s.delete("t", "old")
            assert s.load("t") == {"old": b"1", "keep": b"2"}
        assert s.load("t") == {"a": b"A", "keep": b"2"}
        with pytest.raises(KeyError), s.batch():
            s.put("t", "never", b"!")
            raise KeyError("the handler failed")
        assert "never" not in s.load("t")
        with s.batch():
            s.put("t", "outer", b"1")
            with pytest.raises(KeyError), s.batch():
                s.put("t", "inner", b"!")
                raise KeyError("an inner step failed")
        assert s.load("t")["outer"] == b"1" and "inner" not in s.load("t")


def test_sqlite_write_figure(tmp_path):
    """1000 puts in one transaction (the figure for the report), and single-row commits."""
    path = str(tmp_path / "gcs.sqlite3")
    with SQLiteStorage(path) as s:
        row = encode({"actor_id": "x" * 32, "state": "ALIVE", "meta": {"a": 1}, "spec_bufs": [b"\0" * 200]})
        times = []
        for r in range(5):
            rows = {f"a{r}-{i}": row for i in range(1000)}
            t0 = time.perf_counter()
            s.put_many("actors", rows)
            times.append(time.perf_counter() - t0)
        one = []
        for i in range(200):
            t0 = time.perf_counter()
            s.put("kv", f"k{i}", row)
            one.append(time.perf_counter() - t0)
        assert len(s.load("actors")) == 5000
    best, median = min(times), sorted(times)[2]
    one.sort()
    print(f"\nSQLite, {len(row)}-byte rows: 1000 puts in one transaction: median {median * 1e3:.2f} ms "
          f"(best {best * 1e3:.2f} ms); one put per transaction: median {one[100] * 1e6:.0f} us, "
          f"p99 {one[198] * 1e6:.0f} us")
    assert median < 1.0  # generous: a 2-core CI machine takes a few ms


def test_sqlite_checkpoints_in_the_background(tmp_path):
    path = tmp_path / "gcs.sqlite3"
    with SQLiteStorage(str(path)) as s:
        assert s._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # not inside commits
        big = os.urandom(50_000)
        for i in range(120):  # ~6 MB: past the 4 MB that wakes the checkpointer
            s.put("blobs", f"b{i}", big)
        deadline = time.monotonic() + 60
        while s.checkpoints == 0:
            assert time.monotonic() < deadline, "no checkpoint ran"
            time.sleep(0.01)
        # Rows were copied into the database file (empty, it is a few KB). The checkpointer wakes
        # when its estimate (twice the bytes put) passes 4 MB, after about 2 MB of rows: a bound
        # of 2 MiB here failed when the checkpoint ran at once (2,068,480 bytes, 2026-12-05).
        assert path.stat().st_size > 1 << 20
    assert not Path(f"{path}-wal").exists()  # closing checkpointed the rest and removed the WAL
    with SQLiteStorage(str(path)) as s:
        assert len(s.load("blobs")) == 120 and s.load("blobs")["b119"] == big


def test_open_storage_specs(tmp_path):
    for spec in ("", "sqlite", "  sqlite "):
        with open_storage(spec, str(tmp_path)) as s:
            assert isinstance(s, SQLiteStorage) and s.path == str(tmp_path / "gcs.sqlite3")
    other = tmp_path / "elsewhere" / "store.db"
    with open_storage(f"sqlite://{other}", str(tmp_path)) as s:
        assert s.path == str(other)
        s.put("t", "k", b"v")
    assert other.exists()
    with pytest.raises(ValueError, match="absolute path"):
        open_storage("sqlite://relative.db", str(tmp_path))
    with pytest.raises(ValueError, match=r"use '' or 'sqlite'.*sqlite:///ABSOLUTE/PATH.*redis://HOST:PORT"):
        open_storage("postgres://db", str(tmp_path))
    with pytest.raises(ValueError, match=r"\*\*\*"):  # no password in the message
        open_storage("mysql://u:secret@h/db", str(tmp_path))


def test_sqlite_unwritable_location_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="cannot open the control store's SQLite file"):
        SQLiteStorage(str(blocker / "gcs.sqlite3"))


# --------------------------------------------------------------------------------------------
# TickWriter


def test_tick_writer_commits_one_transaction_per_tick(tmp_path):
    s = CountingSQLite(str(tmp_path / "gcs.sqlite3"))

    async def main() -> None:
        w = TickWriter(s)
        assert not w._offload  # SQLite writes inline
        for i in range(100):
            w.put("actors", f"a{i}", b"v1")
        w.put("actors", "a0", b"v2")  # last write wins
        w.delete("actors", "a1")
        assert s.transactions == [] and w.pending == 100  # nothing before the tick ends
        await w.drain()
        assert len(s.transactions) == 1 and len(s.transactions[0]) == 100
        assert s.transactions[0][("actors", "a1")] is None

        await asyncio.gather(*(asyncio.sleep(0) for _ in range(3)))
        w.put("kv", "k", b"1")
        w.put("kv", "k", b"2")
        await w.drain()
        await w.drain()  # nothing left: returns at once
        assert len(s.transactions) == 2 and s.transactions[1] == {("kv", "k"): b"2"}
        w.close()

    asyncio.run(main())
    assert s.load("actors")["a0"] == b"v2" and "a1" not in s.load("actors") and len(s.load("actors")) == 99
    s.close()


def test_tick_writer_offloaded_coalesces_while_a_write_is_in_flight(tmp_path):
    s = CountingSQLite(str(tmp_path / "gcs.sqlite3"))

    async def main() -> None:
        w = TickWriter(s, offload=True)
        w.put("t", "a", b"1")
        await asyncio.sleep(0)  # the tick ends: the first write goes to the thread
        for i in range(10):  # meanwhile (or after): these form the next write(s)
            w.put("t", f"b{i}", b"2")
        await w.drain()
        assert sum(len(t) for t in s.transactions) == 11
        w.put("t", "late", b"3")
        w.close()  # flushes

    asyncio.run(main())
    assert len(s.load("t")) == 12
    s.close()


def test_tick_writer_keeps_changes_and_retries_when_the_store_fails():
    s = MemoryStorage(fail=2)

    async def main() -> None:
        w = TickWriter(s)
        w.put("t", "a", b"1")
        w.delete("t", "gone")
        await asyncio.wait_for(w.drain(), 30)  # retried after 0.1 s and 0.2 s
        assert s.attempts == 3 and w.last_error is None
        w.close()

    asyncio.run(main())
    assert s.load("t") == {"a": b"1"}


def test_tick_writer_outside_a_loop_writes_through(tmp_path):
    s = CountingSQLite(str(tmp_path / "gcs.sqlite3"))
    w = TickWriter(s)
    w.put("t", "a", b"1")
    assert s.load("t") == {"a": b"1"}
    w.close()
    failing = TickWriter(MemoryStorage(fail=1))
    with pytest.raises(StorageError, match="injected failure"):
        failing.put("t", "a", b"1")
    assert failing.pending == 1  # kept for the next try
    failing.close()
    assert failing.storage.load("t") == {"a": b"1"}
    s.close()


# --------------------------------------------------------------------------------------------
# Redis


@pytest.fixture
def redis_servers(tmp_path):
    """Starts redis-servers (`start(appendonly=...)`); stops every one of them by PID at the end."""
    exe = require_redis_server()
    started: list[RedisServer] = []

    def start(appendonly: bool = False) -> RedisServer:
        server = RedisServer(exe, tmp_path / f"redis{len(started)}", _free_port())
        started.append(server)
        server.start(appendonly=appendonly)
        return server

    yield start
    for server in started:
        server.stop()
    assert all(s.proc is None or s.proc.poll() is not None for s in started), "a redis-server is still running"


@pytest.fixture
def redis_server(redis_servers):
    return redis_servers()


def test_redis_round_trip_overwrite_delete_reopen(redis_server):
    s = RedisStorage(redis_server.url, cluster="c1")
    assert s.load("actors") == {}
    s.put("actors", "a1", encode({"state": "ALIVE", "spec_bufs": [b"\xff\x00"]}))
    s.put("actors", "a2", b"two")
    s.put("kv", "a1", b"other table")
    s.put("actors", "a2", b"overwritten")
    s.delete("actors", "missing")
    assert decode(s.load("actors")["a1"])["spec_bufs"] == [b"\xff\x00"]
    assert s.load("actors")["a2"] == b"overwritten"
    s.put_many("kv", {"x": b"1", "y": b"2"})
    s.delete_many("kv", ["x", "a1"])
    assert s.load("kv") == {"y": b"2"}
    s.delete("actors", "a2")
    s.close()
    with RedisStorage(redis_server.url, cluster="c1") as again:  # a restarted head
        assert set(again.load("actors")) == {"a1"} and again.load("kv") == {"y": b"2"}

    import redis
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert sorted(client.keys("*")) == [b"orrery:c1:actors", b"orrery:c1:kv"]
        assert client.type("orrery:c1:actors") == b"hash"
    finally:
        client.close()


def test_redis_batches_are_one_transaction(redis_server):
    with RedisStorage(redis_server.url) as s:
        s.put("t", "old", b"1")
        with pytest.raises(KeyError), s.batch():
            s.put("t", "never", b"!")
            raise KeyError("the handler failed")
        assert s.load("t") == {"old": b"1"}

        import redis
        client = redis.Redis.from_url(redis_server.url)
        try:
            client.config_resetstat()
            with s.batch():
                for i in range(100):
                    s.put("t", f"k{i}", b"v")
                s.put("u", "x", b"y")
                s.delete("t", "old")
                assert s.load("t") == {"old": b"1"}  # nothing sent yet
            stats = client.info("commandstats")
            # One MULTI ... EXEC: one HSET per table, one HDEL.
            assert stats["cmdstat_multi"]["calls"] == 1 and stats["cmdstat_exec"]["calls"] == 1
            assert stats["cmdstat_hset"]["calls"] == 2 and stats["cmdstat_hdel"]["calls"] == 1
        finally:
            client.close()
        assert len(s.load("t")) == 100 and s.load("u") == {"x": b"y"}


def test_redis_clusters_sharing_one_redis_are_separate(redis_server):
    with RedisStorage(redis_server.url, cluster="a") as a, RedisStorage(redis_server.url, cluster="b") as b:
        a.put("kv", "k", b"from a")
        b.put("kv", "k", b"from b")
        assert a.load("kv") == {"k": b"from a"} and b.load("kv") == {"k": b"from b"}
        a.clear()
        assert a.load("kv") == {} and b.load("kv") == {"k": b"from b"}
    with pytest.raises(ValueError, match="cluster names"):
        RedisStorage(redis_server.url, cluster="a:b")


def test_open_storage_redis(redis_server, tmp_path):
    with open_storage(redis_server.url, str(tmp_path), cluster="x") as s:
        assert isinstance(s, RedisStorage) and s.prefix == "orrery:x:"
        s.put("t", "k", b"v")
    assert not (tmp_path / "gcs.sqlite3").exists()


def test_redis_unreachable_is_a_clear_error(redis_servers):
    url = f"redis://:hunter2@127.0.0.1:{_free_port()}/0"  # nothing listens there
    with pytest.raises(StorageError) as info:
        RedisStorage(url, connect_timeout_s=2)
    message = str(info.value)
    assert f"cannot reach Redis at redis://:***@127.0.0.1:{url.rsplit(':', 1)[1]}" in message
    assert "redis-server is running and listening" in message and "hunter2" not in message


def test_redis_data_survives_a_redis_restart_with_appendonly(redis_servers):
    server = redis_servers(appendonly=True)
    s = RedisStorage(server.url, cluster="head")
    rows = {f"a{i}": encode({"i": i}) for i in range(500)}
    s.put_many("actors", rows)
    with s.batch():
        s.put("jobs", "j1", b"job")
        s.delete("actors", "a0")
    del rows["a0"]

    server.kill()  # SIGKILL right after the replies: the AOF was written before them
    with pytest.raises(StorageError, match="cannot reach Redis"):
        s.put("kv", "while down", b"!")
    server.start(appendonly=True)  # same port, same directory

    with RedisStorage(server.url, cluster="head") as fresh:
        assert fresh.load("actors") == rows and fresh.load("jobs") == {"j1": b"job"}
        assert fresh.load("kv") == {}
    s.put("kv", "after", b"restart")  # the old client reconnects by itself
    assert s.load("kv") == {"after": b"restart"}
    s.close()


def test_tick_writer_rides_out_a_redis_restart(redis_servers):
    server = redis_servers(appendonly=True)
    s = RedisStorage(server.url)

    async def main() -> None:
        w = TickWriter(s)
        assert w._offload  # Redis writes go to the writer's thread
        w.put("t", "before", b"1")
        await w.drain()
        server.kill()
        w.put("t", "during", b"2")
        deadline = time.monotonic() + 30
        while w.last_error is None:  # the write fails and is kept for a retry
            assert time.monotonic() < deadline, "the write to a dead Redis did not fail"
            await asyncio.sleep(0.01)
        assert isinstance(w.last_error, StorageError)
        server.start(appendonly=True)
        await asyncio.wait_for(w.drain(), 30)
        assert w.last_error is None
        w.close()

    asyncio.run(main())
    assert s.load("t") == {"before": b"1", "during": b"2"}
    s.close()
