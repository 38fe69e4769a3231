"""Embedded SQLite store for running without a database server (``make serve``, laptops).

sqlite3 blocks, so nothing here runs on the event loop: each connection has a thread of its own.
The write connection's thread runs the group commits (group_commit.py) and the migrations; the
read connection's thread serves history and probes, and WAL mode lets a read run beside a commit.

Durability: WAL mode with ``synchronous=FULL``, so every COMMIT syncs the WAL to disk
(``fdatasync``) before the write returns, and a caller answers 200 only after that. With
``synchronous=NORMAL`` a commit would survive the gateway crashing but not the machine losing
power or the kernel crashing (the WAL is synced only at checkpoints): not acceptable for a store
that promises no acknowledged prediction is lost.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson

from mlstack_gateway.history import HistoryPage, PageBuilder
from mlstack_gateway.metrics import GatewayMetrics
from mlstack_gateway.settings import GatewaySettings
from mlstack_gateway.stores.base import (
    PredictionRecord,
    StoredPrediction,
    StoreUnavailableError,
    history_item,
)
from mlstack_gateway.stores.group_commit import GroupCommitter, firsts, keyed_not_inserted
from mlstack_gateway.stores.migrations import migrate

log = logging.getLogger("mlstack_gateway.store")

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE IF NOT EXISTS predictions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            request_id TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            model_name TEXT NOT NULL,
            model_version TEXT NOT NULL,
            instances TEXT NOT NULL,
            predictions TEXT NOT NULL,
            latency_ms REAL NOT NULL
        )
        """,
    ),
]
_INTO = """ INTO predictions
    (request_id, model_name, model_version, instances, predictions, latency_ms)
VALUES """
_INSERT = "INSERT OR IGNORE" + _INTO
# What the keyed rows of a batch hold that were not inserted (found stored by an earlier
# request with the key), by request_id: read in the batch's transaction (_upsert_batch), or
# one row for a retry the model does not answer (SqliteStore.stored).
_FOUND = (
    "SELECT request_id, model_version, instances, predictions FROM predictions WHERE request_id IN "
)
# One row more than a page may hold: if it comes, the page has a next one.
_RECENT = """
SELECT request_id, created_at, model_name, model_version, instances, predictions, latency_ms, id
FROM predictions WHERE id < ? ORDER BY id DESC LIMIT ? + 1
"""
# Rows per transaction at most: bounds one commit's time when a burst queues many.
MAX_BATCH = 512

T = TypeVar("T")
_Call = tuple[Callable[[], Any], asyncio.Future[Any], asyncio.AbstractEventLoop]


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    # isolation_level=None: autocommit, so each statement is its own transaction unless it is
    # inside an explicit BEGIN ... COMMIT. One prepared INSERT per batch size is kept.
    # ``timeout`` is how long a statement waits for another process's lock on the file.
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        path,
        isolation_level=None,
        check_same_thread=False,
        timeout=busy_timeout,
        cached_statements=MAX_BATCH + 16,
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


@functools.lru_cache(maxsize=MAX_BATCH)
def _insert_sql(rows: int) -> str:
    return _INSERT + _values(rows)


def _values(rows: int) -> str:
    return ", ".join(["(?, ?, ?, ?, ?, ?)"] * rows)


@functools.lru_cache(maxsize=MAX_BATCH)
def _insert_returning_sql(rows: int) -> str:
    """_INSERT for a keyed batch: passing over a request_id stored already, and no other row
    (OR IGNORE would pass over a row any constraint refuses), naming the rows it inserted."""
    return (
        "INSERT"
        + _INTO
        + _values(rows)
        + " ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
    )


def _params(records: list[PredictionRecord]) -> list[str | float]:
    params: list[str | float] = []
    for r in records:
        params += (
            r.request_id,
            r.model_name,
            r.model_version,
            r.instances_json,
            r.predictions_json,
            r.latency_ms,
        )
    return params


def _insert_batch(
    conn: sqlite3.Connection, records: list[PredictionRecord]
) -> dict[int, StoredPrediction] | None:
    """One statement for the whole batch, run in autocommit mode: SQLite makes it one
    transaction, committed (the WAL synced) before the call returns. One statement rather than
    BEGIN, an INSERT per row and COMMIT, because sqlite3 lets go of the GIL around every
    statement: the writer thread would have to win it back from the event loop once per row.
    What keyed records found stored, by their index in ``records`` (_upsert_batch)."""
    if not records:
        return None
    if any(r.keyed for r in records):
        return _upsert_batch(conn, records)
    conn.execute(_insert_sql(len(records)), _params(records))
    return None


def _same(stored: str, sent: str) -> bool:
    """Whether two JSON texts hold the same values (numbers by value: 1 is 1.0), as
    PostgreSQL's jsonb equality has it."""
    return stored == sent or bool(orjson.loads(stored) == orjson.loads(sent))


def _upsert_batch(
    conn: sqlite3.Connection, records: list[PredictionRecord]
) -> dict[int, StoredPrediction]:
    """The batch's rows, each request_id once (the first record with it), then what the keyed
    records not inserted find stored under their request_id, in one transaction that holds the
    file's write lock from its start (no other writer between the insert and the read); the
    keyed records not inserted, by their index, with what is stored and whether it has the same
    instances."""
    first = firsts(records)
    unique = [r for r, is_first in zip(records, first, strict=True) if is_first]
    conn.execute("BEGIN IMMEDIATE")
    try:
        # fetchall: the statement runs to its end (RETURNING names the rows it inserted).
        sql = _insert_returning_sql(len(unique))
        inserted = {row[0] for row in conn.execute(sql, _params(unique)).fetchall()}
        asked = keyed_not_inserted(records, first, inserted)
        stored: dict[str, tuple[str, str, str, str]] = {}
        if asked:
            ids = sorted({records[index].request_id for index in asked})
            sql = _FOUND + "(" + ", ".join("?" * len(ids)) + ")"
            stored = {row[0]: row for row in conn.execute(sql, ids).fetchall()}
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    found: dict[int, StoredPrediction] = {}
    for index in asked:
        r = records[index]
        _, model_version, instances, predictions = stored[r.request_id]
        found[index] = StoredPrediction(
            model_version, predictions, _same(instances, r.instances_json)
        )
    return found


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # its caller was cancelled
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class SqliteConnection:
    """An sqlite3 connection and the one thread that uses it.

    The thread takes calls from a queue and hands each result straight to the event loop.
    Not a ThreadPoolExecutor: its concurrent futures, chained to asyncio ones, cost more CPU
    than the commit of a single row (bench/results/gateway.md)."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=f"sqlite-{name}", daemon=True)
        self._thread.start()
        self._closed = False
        self._conn: sqlite3.Connection | None = None

    async def run(self, function: Callable[[], T]) -> T:
        if self._closed:
            raise StoreUnavailableError("SQLite store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((function, future, loop))
        return await future

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            function, future, loop = call
            try:
                result, error = function(), None
            except BaseException as exc:
                result, error = None, exc
            loop.call_soon_threadsafe(_settle, future, result, error)

    async def open(self, path: Path, busy_timeout: float) -> None:
        self._conn = await self.run(lambda: _connect(path, busy_timeout))

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailableError("SQLite store is not open")
        return self._conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self.run(conn.close)
        self._closed = True
        self._calls.put(None)
        await asyncio.to_thread(self._thread.join)

    # The migration runner's SchemaConnection.
    @asynccontextmanager
    async def locked_transaction(self) -> AsyncIterator[None]:
        # BEGIN IMMEDIATE takes the file's write lock: gateways sharing it migrate one at a time.
        await self.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            await self.execute("ROLLBACK")
            raise
        await self.execute("COMMIT")

    async def execute(self, statement: str) -> None:
        conn = self.conn
        await self.run(lambda: conn.execute(statement))

    async def column(self, query: str) -> list[Any]:
        conn = self.conn
        return await self.run(lambda: [row[0] for row in conn.execute(query)])


class SqliteStore:
    kind = "sqlite"

    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        self.path: Path = settings.sqlite_path
        self._history_max_bytes = settings.history_max_bytes
        # How long a statement waits for another process's lock on the file: a write waits no
        # longer than its caller does.
        self._busy_timeout = settings.db_write_timeout_seconds
        self._metrics = metrics
        self._writer = SqliteConnection("write")
        self._reader = SqliteConnection("read")
        # What the last ping found; a file the gateway opened at start answers until then.
        self._answering = True
        # Two writers for one thread: while one commits, the next waits in the thread and takes
        # its rows as soon as the thread is free (see group_commit.py).
        self._committer: GroupCommitter[PredictionRecord, StoredPrediction] = GroupCommitter(
            self._write_batch,
            metrics,
            timeout=settings.db_write_timeout_seconds,
            max_batch=MAX_BATCH,
            max_in_flight=2,
        )

    async def open(self) -> None:
        await self._writer.open(self.path, self._busy_timeout)
        try:
            await migrate(self._writer, MIGRATIONS)
        except BaseException:
            await self._writer.close()
            raise
        await self._reader.open(self.path, self._busy_timeout)

    async def _write_batch(
        self, take: Callable[[], list[PredictionRecord]]
    ) -> dict[int, StoredPrediction] | None:
        conn = self._writer.conn
        try:
            # The rows are taken on the writer thread, once it is free to write them.
            return await self._writer.run(lambda: _insert_batch(conn, take()))
        except sqlite3.Error as exc:
            self._metrics.db_failures.inc()
            log.warning("SQLite write of a batch failed: %s", exc)
            # The client reads this: the file's words stay in the log.
            raise StoreUnavailableError("database write failed") from exc

    async def save(self, record: PredictionRecord) -> StoredPrediction | None:
        return await self._committer.submit(record)

    def _stored_sync(self, request_id: str, instances_json: str) -> StoredPrediction | None:
        row = self._reader.conn.execute(_FOUND + "(?)", (request_id,)).fetchone()
        if row is None:
            return None
        # A row the reader sees is committed, and WAL-synced (synchronous=FULL).
        _, model_version, instances, predictions = row
        return StoredPrediction(model_version, predictions, _same(instances, instances_json))

    async def stored(self, request_id: str, instances_json: str) -> StoredPrediction | None:
        try:
            return await self._reader.run(lambda: self._stored_sync(request_id, instances_json))
        except sqlite3.Error as exc:
            log.warning("SQLite read of a stored prediction failed: %s", exc)
            raise StoreUnavailableError("database read failed") from exc

    def _recent_sync(self, limit: int, before: int) -> HistoryPage:
        page = PageBuilder(limit, self._history_max_bytes)
        # sqlite3 steps the statement as the cursor is iterated: one row in memory at a time,
        # and none read past the first that does not fit.
        rows = self._reader.conn.execute(_RECENT, (before, limit))
        try:
            for row in rows:
                if not page.add(row[7], history_item(row, row[1])):
                    break
        finally:
            rows.close()
        return page.page()

    async def recent(self, limit: int, before: int) -> HistoryPage:
        try:
            return await self._reader.run(lambda: self._recent_sync(limit, before))
        except sqlite3.Error as exc:
            log.warning("SQLite history read failed: %s", exc)
            raise StoreUnavailableError("database read failed") from exc

    def _ping_sync(self) -> bool:
        return bool(self._reader.conn.execute("SELECT 1").fetchone()[0] == 1)

    async def ping(self) -> bool:
        try:
            self._answering = await self._reader.run(self._ping_sync)
        except (sqlite3.Error, StoreUnavailableError):
            self._answering = False
        return self._answering

    def awaiting_migrations(self) -> bool:
        return False  # the gateway migrates its own file

    def reachable(self) -> dict[str, bool]:
        return {"database": self._answering}

    async def close(self) -> None:
        # Queued rows are written first: their callers are still waiting for them.
        await self._committer.close()
        await self._writer.close()
        await self._reader.close()
