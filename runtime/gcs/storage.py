"""Table storage for the control store, so that a restarted head recovers its tables.

The control store keeps its tables (nodes, jobs, actors, named actors, KV, placement groups,
submitted jobs) in memory and writes every change through to a `TableStorage`: a flat
`table -> key -> bytes` store with atomic batches. Two backends:

- `SQLiteStorage`: one file, `<session_dir>/gcs.sqlite3` by default (the default backend).
- `RedisStorage`: one Redis hash per table, `orrery:<cluster>:<table>`, so several clusters can
  share one Redis (Ray's external-Redis GCS fault tolerance, without Ray's key layout).

`open_storage(spec, session_dir)` picks one from a `--storage` string. Rows are encoded with
`encode` / `decode` (msgpack). `TickWriter` coalesces the changes made in one event-loop
tick into one transaction.

Durability: a write is durable once `write` / `put` / the outermost `batch()` returned (or a
`TickWriter`'s `drain()` returned). With SQLite (WAL, synchronous=NORMAL) a committed
transaction survives the head process being killed; only an operating-system crash or power
loss can lose the last transactions (never corrupt the file). With Redis it is as durable as
the Redis server is configured to be: `appendonly yes` to survive a Redis restart, and
`appendfsync always` to survive Redis being killed (with the default `everysec` Redis may
acknowledge a write up to about 2 s before it reaches the AOF file).

Why SQLite writes run inline on the event loop: in WAL mode with synchronous=NORMAL a commit
appends to the WAL file and does not fsync, so a commit costs about 20-100 us for one row and
about 4-6 ms for 1000 rows of ~280 bytes (measured on a 2-core VM; test_sqlite_write_figure
prints it), less than or about what a hop to a thread and back would add. The fsyncs happen
in checkpoints, which SQLiteStorage runs on a thread of its own (wal_autocheckpoint=0) rather
than inside whichever commit crosses SQLite's ~1000-page threshold. Redis writes are a network
round trip and can block for the connection timeout while Redis is down, so a `TickWriter`
sends them from a thread of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import re
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import msgpack

logger = logging.getLogger("runtime.gcs.storage")

__all__ = [
    "DEFAULT_SQLITE_NAME", "RedisStorage", "SQLiteStorage", "StorageError", "TableStorage", "TickWriter",
    "decode", "encode", "open_storage",
]

DEFAULT_SQLITE_NAME = "gcs.sqlite3"
SCHEMA_VERSION = 1
CHECKPOINT_BYTES = 4 << 20  # about SQLite's default of 1000 pages
WAL_BOUND_PAGES = 4000  # about 16 MB: past this a checkpoint briefly holds writes off to finish
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

class StorageError(RuntimeError):
    """The storage backend failed (unreachable Redis, unwritable file, ...); the message says
    which store and what to check."""


# --------------------------------------------------------------------------------------------
# Row encoding


_EXT_TUPLE, _EXT_SET = 1, 2


def _default(obj: Any) -> Any:
    # strict_types: tuples, sets and subclasses of the built-in types come here.
    if isinstance(obj, tuple):
        return msgpack.ExtType(_EXT_TUPLE, encode(list(obj)))
    if isinstance(obj, (set, frozenset)):
        return msgpack.ExtType(_EXT_SET, encode(list(obj)))
    for base in (bool, int, float, str, bytes, dict, list):  # IntEnum, OrderedDict, defaultdict, ...
        if isinstance(obj, base):
            return base(obj)
    raise TypeError(f"cannot store a {type(obj).__module__}.{type(obj).__qualname__} in a control-store "
                    "row: rows hold None, bool, int, float, str, bytes, list, tuple, set and dict")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_TUPLE:
        return tuple(decode(data))
    if code == _EXT_SET:
        return set(decode(data))
    return msgpack.ExtType(code, data)


def encode(obj: Any) -> bytes:
    """A row (typically a dict) as bytes. Bytes stay bytes (bytearray and memoryview become bytes),
    tuples stay tuples and sets stay sets (frozensets come back as sets)."""
    return msgpack.packb(obj, use_bin_type=True, strict_types=True, default=_default)


def decode(data: bytes) -> Any:
    """The inverse of `encode`."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext_hook)


# --------------------------------------------------------------------------------------------
# The interface


def _check_table(table: str) -> str:
    if not isinstance(table, str) or not _NAME_RE.match(table):
        raise ValueError(f"table names are non-empty strings of letters, digits, '_', '.' and '-': {table!r}")
    return table


def _check_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"row keys are str, not {type(key).__name__}: {key!r}")
    return key


def _check_value(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"row values are bytes (use storage.encode(row)), not {type(value).__name__}")


class TableStorage:
    """`table -> key -> bytes`, with atomic batches. The methods may be called from several
    threads; a `batch()` buffers the writes of the thread that opened it only.

    Inside `with storage.batch():` puts and deletes are buffered and committed as one transaction
    when the outermost batch exits; a batch left by an exception drops its own changes (an inner
    one only its own). `load` sees committed rows only."""

    #: Whether a write can block for long (a network round trip, a dead server's timeout):
    #: `TickWriter` then writes from a thread.
    blocking_io = False

    def __init__(self) -> None:
        self._batch: dict[tuple[str, str], bytes | None] | None = None
        self._batch_depth = 0
        self._batch_thread = 0  # batch() buffers only the writes of the thread that opened it
        self._closed = False

    # -- what a backend implements
    def _write(self, changes: dict[tuple[str, str], bytes | None]) -> None:
        raise NotImplementedError

    def load(self, table: str) -> dict[str, bytes]:
        """Every committed row of `table` (an empty dict for a table never written)."""
        raise NotImplementedError

    def clear(self) -> None:
        """Delete every row of every table of this store (this cluster's, for Redis)."""
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    # -- the interface
    def write(self, changes: Mapping[tuple[str, str], bytes | None]) -> None:
        """Apply `{(table, key): value or None (delete)}` as one transaction."""
        checked = {(_check_table(t), _check_key(k)): None if v is None else _check_value(v)
                   for (t, k), v in changes.items()}
        if self._batch is not None and threading.get_ident() == self._batch_thread:
            self._batch.update(checked)
        elif checked:
            self._check_open()
            self._write(checked)

    def put(self, table: str, key: str, value: bytes) -> None:
        self.write({(table, key): _check_value(value)})

    def delete(self, table: str, key: str) -> None:
        """Delete a row; deleting a missing row is not an error."""
        self.write({(table, key): None})

    def put_many(self, table: str, items: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> None:
        """Put several rows of one table in one transaction."""
        pairs = items.items() if isinstance(items, Mapping) else items
        self.write({(table, k): _check_value(v) for k, v in pairs})

    def delete_many(self, table: str, keys: Iterable[str]) -> None:
        self.write({(table, k): None for k in keys})

    @contextlib.contextmanager
    def batch(self) -> Iterator[TableStorage]:
        """Buffer the puts and deletes made inside and commit them as one transaction at the end
        of the outermost batch; nothing is written if the block raises."""
        self._check_open()
        if self._batch is None:
            self._batch, self._batch_thread = {}, threading.get_ident()
        elif threading.get_ident() != self._batch_thread:
            raise StorageError("batch() is open in another thread; batches belong to one thread")
        saved = dict(self._batch) if self._batch_depth else None  # an inner batch undoes only its own
        self._batch_depth += 1
        try:
            yield self
        except BaseException:
            self._batch_depth -= 1
            self._batch = saved
            raise
        self._batch_depth -= 1
        if self._batch_depth == 0:
            changes, self._batch = self._batch, None
            if changes:
                self._write(changes)

    def close(self) -> None:
        """Release the file or connection; idempotent. Everything written is already durable."""
        if self._closed:
            return
        if self._batch is not None:
            raise StorageError("close() inside a batch(): leave the batch first")
        self._closed = True
        self._close()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"{self!r} is closed")

    def __enter__(self) -> TableStorage:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# SQLite


class SQLiteStorage(TableStorage):
    """One SQLite file: WAL journal, synchronous=NORMAL, one table
    `rows(tbl TEXT, key TEXT, value BLOB, PRIMARY KEY (tbl, key))`."""

    def __init__(self, path: str, *, busy_timeout_s: float = 2.0) -> None:
        super().__init__()
        self.path = os.path.abspath(os.path.expanduser(path))
        self._lock = threading.Lock()
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            # isolation_level=None: no implicit transactions; each write is an explicit BEGIN..COMMIT.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=busy_timeout_s)
        except (OSError, sqlite3.Error) as e:
            raise StorageError(f"cannot open the control store's SQLite file {self.path}: {e}; check that its "
                               "directory exists and is writable (and is on a local file system)") from e
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StorageError(f"{self.path} was written by a newer version (schema {version}, this one "
                                   f"reads {SCHEMA_VERSION}); upgrade, or start with a fresh session directory")
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                logger.warning("%s: SQLite refused WAL mode (journal_mode=%s; a network file system?); "
                               "writes will be slower", self.path, mode)
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS rows (tbl TEXT NOT NULL, key TEXT NOT NULL, "
                             "value BLOB NOT NULL, PRIMARY KEY (tbl, key)) WITHOUT ROWID")
            if version < SCHEMA_VERSION:
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            if mode.lower() == "wal":
                # Commits append to the WAL without fsync; checkpoints (which fsync) run on a
                # thread of their own instead of inside whichever commit crosses ~1000 pages.
                self._db.execute("PRAGMA wal_autocheckpoint=0")
        except sqlite3.Error as e:
            self._db.close()
            raise StorageError(f"cannot use {self.path} as the control store's SQLite file: {e}") from e
        except BaseException:
            self._db.close()
            raise
        self.checkpoints = 0  # completed background checkpoints
        self._unchecked_bytes = 0  # roughly, what went into the WAL since the last checkpoint request
        self._wake = threading.Event()
        self._stopping = False
        self._checkpointer: threading.Thread | None = None
        if mode.lower() == "wal":
            self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="gcs-sqlite-checkpoint",
                                                  daemon=True)
            self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            logger.error("%s: cannot open a connection for checkpoints, the WAL will grow: %s", self.path, e)
            return
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                try:  # PASSIVE: copies what it can without ever blocking the writer
                    ((_busy, log, _copied),) = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    if log >= WAL_BOUND_PAGES:
                        # The WAL starts over from its beginning only when a write finds all of it
                        # copied, which never happens while writes keep coming during
                        # checkpoints. Bound its size: copy the rest with writes held off (this
                        # can delay a write by about one fsync, once per ~16 MB written).
                        with self._lock:
                            if not self._closed:
                                db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    self.checkpoints += 1
                except sqlite3.Error as e:
                    logger.warning("%s: checkpoint failed (the WAL keeps growing until one succeeds): %s",
                                   self.path, e)
        finally:
            db.close()

    def __repr__(self) -> str:
        return f"SQLiteStorage({self.path!r})"

    def _write(self, changes: dict[tuple[str, str], bytes | None]) -> None:
        puts = [(t, k, v) for (t, k), v in changes.items() if v is not None]
        dels = [(t, k) for (t, k), v in changes.items() if v is None]
        with self._lock:
            self._check_open()
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                if puts:
                    db.executemany("INSERT OR REPLACE INTO rows (tbl, key, value) VALUES (?, ?, ?)", puts)
                if dels:
                    db.executemany("DELETE FROM rows WHERE tbl = ? AND key = ?", dels)
                db.execute("COMMIT")
                if self._checkpointer is not None:
                    self._unchecked_bytes += 4096 + 2 * sum(len(v) + len(k) + 32 for _, k, v in puts) + 64 * len(dels)
                    if self._unchecked_bytes >= CHECKPOINT_BYTES:
                        self._unchecked_bytes = 0
                        self._wake.set()
            except BaseException as e:
                if db.in_transaction:
                    db.rollback()
                if isinstance(e, sqlite3.Error):
                    raise StorageError(f"writing to {self.path} failed, nothing of this batch was "
                                       f"written: {e}") from e
                raise

    def load(self, table: str) -> dict[str, bytes]:
        _check_table(table)
        with self._lock:
            self._check_open()
            try:
                rows = self._db.execute("SELECT key, value FROM rows WHERE tbl = ?", (table,)).fetchall()
            except sqlite3.Error as e:
                raise StorageError(f"reading table {table!r} from {self.path} failed: {e}") from e
        return {k: bytes(v) for k, v in rows}

    def clear(self) -> None:
        with self._lock:
            self._check_open()
            self._db.execute("DELETE FROM rows")

    def _close(self) -> None:
        if self._checkpointer is not None:
            self._stopping = True
            self._wake.set()
            self._checkpointer.join()
        with self._lock:
            self._db.close()  # the last connection to close checkpoints and removes the WAL


# --------------------------------------------------------------------------------------------
# Redis


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class RedisStorage(TableStorage):
    """One Redis hash per table, `orrery:<cluster>:<table>`; a batch is one MULTI/EXEC.

    `url` is `redis://[[USER]:PASSWORD@]HOST:PORT[/DB]` (or `rediss://` for TLS). The client
    reconnects by itself after Redis restarts; a write that cannot reach Redis raises
    `StorageError` after a couple of quick retries."""

    blocking_io = True

    def __init__(self, url: str, cluster: str = "default", *, connect_timeout_s: float = 5.0,
                 timeout_s: float = 10.0) -> None:
        super().__init__()
        if not isinstance(cluster, str) or not _NAME_RE.match(cluster):
            raise ValueError(f"cluster names are non-empty strings of letters, digits, '_', '.' and '-': "
                             f"{cluster!r}")
        self.url = url
        self.cluster = cluster
        self.prefix = f"orrery:{cluster}:"
        try:
            import redis
            from redis.backoff import ExponentialBackoff
            from redis.retry import Retry
        except ImportError as e:
            raise StorageError("the Redis storage needs the redis package: pip install redis") from e
        self._redis_errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        self._redis_error = redis.exceptions.RedisError
        try:
            self._client = redis.Redis.from_url(
                url, socket_connect_timeout=connect_timeout_s, socket_timeout=timeout_s,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2), decode_responses=False)
        except ValueError as e:
            raise ValueError(f"not a Redis URL: {_redacted(url)!r} ({e}); expected "
                             "redis://[:PASSWORD@]HOST:PORT[/DB]") from e
        try:
            self._call(self._client.ping)  # fail now, at head start, rather than at the first write
        except BaseException:
            self._client.close()
            raise

    def __repr__(self) -> str:
        return f"RedisStorage({_redacted(self.url)!r}, cluster={self.cluster!r})"

    def _call(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except self._redis_errors as e:
            raise StorageError(
                f"cannot reach Redis at {_redacted(self.url)} ({type(e).__name__}: {e}). Check that redis-server "
                "is running and listening on that host and port (redis-cli -h HOST -p PORT ping), that no "
                "firewall is in the way, and, if it needs a password, that the URL carries it "
                "(redis://:PASSWORD@HOST:PORT)") from e
        except self._redis_error as e:
            raise StorageError(f"Redis at {_redacted(self.url)} refused the request: {type(e).__name__}: {e}") from e

    def _key(self, table: str) -> str:
        return self.prefix + table

    def _write(self, changes: dict[tuple[str, str], bytes | None]) -> None:
        self._check_open()
        puts: dict[str, dict[str, bytes]] = {}
        dels: dict[str, list[str]] = {}
        for (t, k), v in changes.items():
            if v is None:
                dels.setdefault(t, []).append(k)
            else:
                puts.setdefault(t, {})[k] = v

        def run() -> None:
            pipe = self._client.pipeline(transaction=True)  # MULTI ... EXEC: one round trip, all or nothing
            for t, mapping in puts.items():
                pipe.hset(self._key(t), mapping=mapping)
            for t, keys in dels.items():
                pipe.hdel(self._key(t), *keys)
            pipe.execute()

        self._call(run)

    def load(self, table: str) -> dict[str, bytes]:
        _check_table(table)
        self._check_open()
        rows = self._call(self._client.hgetall, self._key(table))
        return {k.decode(): bytes(v) for k, v in rows.items()}

    def clear(self) -> None:
        self._check_open()

        def run() -> None:
            keys = list(self._client.scan_iter(match=self.prefix + "*", count=1000))
            for i in range(0, len(keys), 1000):
                self._client.delete(*keys[i:i + 1000])

        self._call(run)

    def _close(self) -> None:
        self._client.close()


# --------------------------------------------------------------------------------------------
# Choosing a backend


def open_storage(spec: str, session_dir: str, *, cluster: str = "default") -> TableStorage:
    """The storage named by a `--storage` value:

    - `""` or `"sqlite"`: SQLite in `<session_dir>/gcs.sqlite3`;
    - `"sqlite:///ABSOLUTE/PATH"`: that SQLite file;
    - `"redis://HOST:PORT[/DB]"` (or `rediss://`): Redis, keys under `orrery:<cluster>:`.
    """
    spec = (spec or "").strip()
    if spec in ("", "sqlite"):
        return SQLiteStorage(os.path.join(session_dir, DEFAULT_SQLITE_NAME))
    if spec.startswith("sqlite://"):
        path = spec[len("sqlite://"):]
        if not path.startswith("/") or path.strip("/") == "":
            raise ValueError(f"bad storage {spec!r}: a SQLite file is given by its absolute path, "
                             "sqlite:///ABSOLUTE/PATH (three slashes)")
        return SQLiteStorage(path)
    if spec.startswith(("redis://", "rediss://")):
        return RedisStorage(spec, cluster=cluster)
    raise ValueError(f"unknown control-store storage {_redacted(spec)!r}; use '' or 'sqlite' (SQLite in the "
                     "session directory), 'sqlite:///ABSOLUTE/PATH' (that SQLite file) or "
                     "'redis://HOST:PORT[/DB]' (Redis)")


# --------------------------------------------------------------------------------------------
# One transaction per event-loop tick


class TickWriter:
    """Write-behind for the control store: `put` / `delete` from the event loop's thread are
    coalesced (last write per row wins) and written as ONE transaction at the start of the next
    loop iteration, i.e. everything one tick changed commits together.

    At most one write is in flight; changes made meanwhile go into the next one. When a write
    fails (Redis down, disk full) its changes are kept, the error is logged and the write is
    retried with a backoff (0.1 s doubling to 5 s) until it succeeds; `last_error` holds the
    failure meanwhile. `await drain()` returns once everything put before the call is written;
    `flush()` writes everything now (blocking; for shutdown); `close()` flushes and stops the
    writer thread but does not close the storage.

    Writes run on the loop's thread, or on a thread of the writer's own when `offload` (the
    default for storage whose writes can block for long: Redis). Outside a running loop
    (recovery, tests) `put` / `delete` write at once."""

    def __init__(self, storage: TableStorage, *, offload: bool | None = None) -> None:
        self.storage = storage
        self._offload = storage.blocking_io if offload is None else offload
        self._executor = (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gcs-storage")
                          if self._offload else None)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[tuple[str, str], bytes | None] = {}
        self._queued = 0  # sequence number of the latest change
        self._written = 0  # every change up to this one is written
        self._inflight: tuple[dict, int] | None = None
        self._inflight_fut: concurrent.futures.Future | None = None
        self._handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._backoff = 0.0
        self._waiters: list[tuple[int, asyncio.Future]] = []
        self.last_error: BaseException | None = None
        self._closed = False

    def put(self, table: str, key: str, value: bytes) -> None:
        self._change(_check_table(table), _check_key(key), _check_value(value))

    def delete(self, table: str, key: str) -> None:
        self._change(_check_table(table), _check_key(key), None)

    @property
    def pending(self) -> int:
        """Rows changed but not written yet (in flight included)."""
        return len(self._pending) + (len(self._inflight[0]) if self._inflight else 0)

    def _change(self, table: str, key: str, value: bytes | None) -> None:
        if self._closed:  # the control store is shutting down: what it changes now (nodes whose
            logger.debug("control store closed; not stored: %s/%s", table, key)  # connections
            return  # close as it stops) is not state to recover, and the storage may be closed
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:  # no loop: write through, after whatever is queued
            self._pending[(table, key)] = value
            self._queued += 1
            self.flush()
            return
        if self._loop is None or self._loop.is_closed():
            self._loop = loop
        self._pending[(table, key)] = value
        self._queued += 1
        self._schedule(0.0)

    def _schedule(self, delay: float) -> None:
        if self._handle is not None or self._loop is None or self._loop.is_closed():
            return  # a flush is queued already (or a retry is waiting out its backoff)
        if delay:
            self._handle = self._loop.call_later(delay, self._tick)
        else:
            self._handle = self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        self._handle = None
        if self._inflight is not None or not self._pending:
            return  # the in-flight write reschedules when it completes
        ops, self._pending = self._pending, {}
        self._inflight = (ops, self._queued)
        if self._executor is None:
            try:
                self.storage.write(ops)
            except Exception as e:  # noqa: BLE001 - whatever failed, the changes are kept and retried
                self._complete(e)
            else:
                self._complete(None)
            return
        fut = self._executor.submit(self.storage.write, ops)
        self._inflight_fut = fut
        loop = self._loop

        def done(f: concurrent.futures.Future) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: flush() handles it
                loop.call_soon_threadsafe(self._thread_done, f)

        fut.add_done_callback(done)

    def _thread_done(self, fut: concurrent.futures.Future) -> None:
        if fut is not self._inflight_fut:
            return  # flush() already took care of it
        self._inflight_fut = None
        self._complete(fut.exception())

    def _complete(self, error: BaseException | None) -> None:
        ops, seq = self._inflight
        self._inflight = None
        if error is None:
            if self.last_error is not None:
                logger.warning("control-store storage %r works again; the changes kept meanwhile are written",
                               self.storage)
            self.last_error = None
            self._backoff = 0.0
            self._written = seq
            self._wake()
            if self._pending:
                self._schedule(0.0)
            return
        merged = dict(ops)
        merged.update(self._pending)  # newer changes win
        self._pending = merged
        self._backoff = min(5.0, self._backoff * 2 or 0.1)
        if self.last_error is None:
            logger.error("control-store storage %r failed; keeping %d changed rows and retrying every "
                         "<= 5 s: %s", self.storage, len(merged), error)
        self.last_error = error
        self._schedule(self._backoff)

    def _wake(self) -> None:
        keep = []
        for seq, fut in self._waiters:
            if seq <= self._written:
                if not fut.done():
                    with contextlib.suppress(RuntimeError):
                        fut.set_result(None)
            else:
                keep.append((seq, fut))
        self._waiters = keep

    async def drain(self) -> None:
        """Return once every change made before this call is written (waits through retries;
        bound it with asyncio.wait_for)."""
        target = self._queued
        if self._written >= target:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((target, fut))
        await fut

    def flush(self) -> None:
        """Write everything now, from this thread; raises if the storage fails (the changes stay
        queued). For shutdown and for use outside the loop."""
        if self._inflight_fut is not None:
            fut, self._inflight_fut = self._inflight_fut, None
            concurrent.futures.wait([fut])
            self._complete(fut.exception())
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._inflight is None and self._pending:
            ops, self._pending = self._pending, {}
            self._inflight = (ops, self._queued)
            try:
                self.storage.write(ops)
            except Exception as e:
                self._complete(e)
                raise
            self._complete(None)
        if self.last_error is not None:
            raise StorageError(f"control-store storage {self.storage!r} is failing: {self.last_error}") \
                from self.last_error

    def close(self) -> None:
        """Flush, and stop the writer thread; later changes are dropped. The storage stays open."""
        try:
            self.flush()
        finally:
            self._closed = True
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None
            if self._executor is not None:
                self._executor.shutdown(wait=True)
