"""Embedded SQLite store for running without a database server (``make serve``, laptops).

sqlite3 blocks, so nothing here runs on the event loop. One writer thread owns the write
connection and does group commit by itself: it takes every row queued so far, inserts them in
one transaction, commits, hands the verdict back to the event loop, and goes straight on to the
rows that queued meanwhile (no round trip through the loop between two commits). Reads (history,
probes) use a second connection on a thread of their own; WAL mode lets them run beside a commit.

Durability: WAL mode with ``synchronous=FULL``, so every COMMIT syncs the WAL to disk
(``fdatasync``) before the writer reports it, and a caller answers 200 only after that. With
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
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from mlstack_gateway.metrics import GatewayMetrics
from mlstack_gateway.migrations import MIGRATIONS_TABLE, SQLITE_MIGRATIONS
from mlstack_gateway.settings import GatewaySettings
from mlstack_gateway.store import PredictionRecord, StoreUnavailableError

log = logging.getLogger("mlstack_gateway.store")

_INSERT = """
INSERT OR IGNORE INTO predictions
    (request_id, model_name, model_version, instances, predictions, latency_ms)
VALUES """
_RECENT = """
SELECT request_id, created_at, model_name, model_version, instances, predictions, latency_ms
FROM predictions ORDER BY id DESC LIMIT ?
"""
# Rows per transaction at most: bounds one commit's time when a burst queues many.
MAX_BATCH = 512

T = TypeVar("T")
_Pending = tuple[PredictionRecord, asyncio.Future[None]]


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: autocommit, so each statement is its own transaction unless it is
    # inside an explicit BEGIN ... COMMIT. One prepared INSERT per batch size is kept.
    conn = sqlite3.connect(
        path,
        isolation_level=None,
        check_same_thread=False,
        timeout=10,
        cached_statements=MAX_BATCH + 16,
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    # BEGIN IMMEDIATE takes the write lock: gateways sharing the file migrate one at a time.
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(MIGRATIONS_TABLE)
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, statement in SQLITE_MIGRATIONS:
            if version not in applied:
                conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) "
                    "VALUES (?, datetime('now'))",
                    (version,),
                )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


@functools.lru_cache(maxsize=MAX_BATCH)
def _insert_sql(rows: int) -> str:
    return _INSERT + ", ".join(["(?, ?, ?, ?, ?, ?)"] * rows)


def _insert_batch(conn: sqlite3.Connection, records: list[PredictionRecord]) -> None:
    """One statement for the whole batch, run in autocommit mode: SQLite makes it one
    transaction, committed (the WAL synced) before the call returns. One statement rather than
    BEGIN, an INSERT per row and COMMIT, because sqlite3 lets go of the GIL around every
    statement: the writer thread would have to win it back from the event loop once per row."""
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
    conn.execute(_insert_sql(len(records)), params)


class _Writer:
    """The thread that owns the write connection and commits queued rows in groups."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        loop: asyncio.AbstractEventLoop,
        on_commit: Callable[[int, float], None],
        on_failure: Callable[[], None],
    ) -> None:
        self._conn = conn
        self._loop = loop
        self._on_commit = on_commit
        self._on_failure = on_failure
        # None is the signal to stop, after every row queued before it is written.
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="sqlite-writer", daemon=True)
        self._thread.start()

    def submit(self, record: PredictionRecord) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self._loop.create_future()
        self._queue.put((record, future))
        return future

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            started = time.perf_counter()
            error: Exception | None = None
            try:
                _insert_batch(self._conn, [record for record, _ in batch])
            except Exception as exc:  # every waiter learns the commit failed
                log.warning("SQLite commit of %d rows failed: %s", len(batch), exc)
                error = exc
            elapsed = time.perf_counter() - started
            self._loop.call_soon_threadsafe(self._settle, batch, error, elapsed)

    def _settle(self, batch: list[_Pending], error: Exception | None, elapsed: float) -> None:
        """On the event loop: wake every caller whose row was in ``batch``."""
        if error is None:
            self._on_commit(len(batch), elapsed)
            for _, future in batch:
                if not future.done():
                    future.set_result(None)
            return
        self._on_failure()
        for _, future in batch:
            if not future.done():
                future.set_exception(StoreUnavailableError(f"database write failed: {error}"))

    def stop(self) -> None:
        """Write what is queued, then end the thread (blocks: call it off the event loop)."""
        self._queue.put(None)
        self._thread.join()


class SqliteStore:
    kind = "sqlite"

    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        self.path: Path = settings.sqlite_path
        self._metrics = metrics
        # Reads, probes, opening and closing: one thread, so the read connection has one user.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-read")
        self._reader: sqlite3.Connection | None = None
        self._writer: _Writer | None = None
        self._write_conn: sqlite3.Connection | None = None

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    @property
    def reader(self) -> sqlite3.Connection:
        if self._reader is None:
            raise StoreUnavailableError("SQLite store is not open")
        return self._reader

    async def open(self) -> None:
        write_conn, self._reader = await self._run(self._open_sync)
        self._write_conn = write_conn
        metrics = self._metrics

        def committed(rows: int, seconds: float) -> None:
            metrics.commit_rows.observe(rows)
            metrics.commit_seconds.observe(seconds)

        self._writer = _Writer(
            write_conn, asyncio.get_running_loop(), committed, metrics.db_failures.inc
        )

    def _open_sync(self) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writer = _connect(self.path)
        try:
            _migrate(writer)
        except BaseException:
            writer.close()
            raise
        return writer, _connect(self.path)

    async def save(self, record: PredictionRecord) -> None:
        if self._writer is None:
            raise StoreUnavailableError("SQLite store is not open")
        await self._writer.submit(record)

    def _recent_sync(self, limit: int) -> list[dict[str, Any]]:
        return [
            {
                "request_id": row[0],
                "created_at": row[1],
                "model_name": row[2],
                "model_version": row[3],
                "instances": orjson.Fragment(row[4]),
                "predictions": orjson.Fragment(row[5]),
                "latency_ms": row[6],
            }
            for row in self.reader.execute(_RECENT, (limit,))
        ]

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        try:
            return await self._run(self._recent_sync, limit)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"database read failed: {exc}") from exc

    def _ping_sync(self) -> bool:
        return bool(self.reader.execute("SELECT 1").fetchone()[0] == 1)

    async def ping(self) -> bool:
        try:
            return await self._run(self._ping_sync)
        except (sqlite3.Error, StoreUnavailableError):
            return False

    def _close_sync(self) -> None:
        if self._writer is not None:
            self._writer.stop()
            self._writer = None
        for conn in (self._write_conn, self._reader):
            if conn is not None:
                conn.close()
        self._write_conn = self._reader = None

    async def close(self) -> None:
        # The writer finishes the rows still queued (their callers are waiting for them).
        await self._run(self._close_sync)
        self._executor.shutdown(wait=True)
