"""Embedded SQLite store for running without a database server (``make serve``, laptops).

sqlite3 blocks, so every call runs on one dedicated thread that owns the connection. WAL mode
with synchronous=FULL: a commit is on disk before the caller answers 200.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from mlstack_gateway.group_commit import GroupCommitter
from mlstack_gateway.metrics import GatewayMetrics
from mlstack_gateway.migrations import MIGRATIONS_TABLE, SQLITE_MIGRATIONS
from mlstack_gateway.settings import GatewaySettings
from mlstack_gateway.store import PredictionRecord, StoreUnavailableError

_INSERT = """
INSERT OR IGNORE INTO predictions
    (request_id, model_name, model_version, instances, predictions, latency_ms)
VALUES (?, ?, ?, ?, ?, ?)
"""
_RECENT = """
SELECT request_id, created_at, model_name, model_version, instances, predictions, latency_ms
FROM predictions ORDER BY id DESC LIMIT ?
"""


class SqliteStore:
    kind = "sqlite"

    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        self.path: Path = settings.sqlite_path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None

        def committed(rows: int, seconds: float) -> None:
            metrics.commit_rows.observe(rows)
            metrics.commit_seconds.observe(seconds)

        self._metrics = metrics
        self._committer: GroupCommitter[PredictionRecord] = GroupCommitter(
            self._write_batch, on_commit=committed
        )

    async def _run(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailableError("SQLite store is not open")
        return self._conn

    async def open(self) -> None:
        await self._run(self._open_sync)

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (BEGIN ... COMMIT) below.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
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
            conn.close()
            raise
        self._conn = conn

    def _write_sync(self, records: list[PredictionRecord]) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                _INSERT,
                [
                    (
                        r.request_id,
                        r.model_name,
                        r.model_version,
                        r.instances_json,
                        r.predictions_json,
                        r.latency_ms,
                    )
                    for r in records
                ],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def _write_batch(self, records: list[PredictionRecord]) -> None:
        try:
            await self._run(self._write_sync, records)
        except sqlite3.Error as exc:
            self._metrics.db_failures.inc()
            raise StoreUnavailableError(f"database write failed: {exc}") from exc

    async def save(self, record: PredictionRecord) -> None:
        await self._committer.submit(record)

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
            for row in self.conn.execute(_RECENT, (limit,))
        ]

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        try:
            result: list[dict[str, Any]] = await self._run(self._recent_sync, limit)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"database read failed: {exc}") from exc
        return result

    def _ping_sync(self) -> bool:
        return bool(self.conn.execute("SELECT 1").fetchone()[0] == 1)

    async def ping(self) -> bool:
        try:
            return bool(await self._run(self._ping_sync))
        except (sqlite3.Error, StoreUnavailableError):
            return False

    async def close(self) -> None:
        await self._committer.close()
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)
