"""PostgreSQL store: an asyncpg pool, group commit, and migrations under an advisory lock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from mlstack_gateway.group_commit import GroupCommitter
from mlstack_gateway.metrics import GatewayMetrics
from mlstack_gateway.migrations import migrate
from mlstack_gateway.settings import GatewaySettings
from mlstack_gateway.store import PredictionRecord, StoreUnavailableError, history_item

log = logging.getLogger("mlstack_gateway.store")

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE IF NOT EXISTS predictions (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            request_id UUID NOT NULL UNIQUE,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            model_name TEXT NOT NULL,
            model_version TEXT NOT NULL,
            instances JSONB NOT NULL,
            predictions JSONB NOT NULL,
            latency_ms DOUBLE PRECISION NOT NULL
        )
        """,
    ),
]
# The advisory-lock key every replica takes to migrate, so that one migrates at a time.
MIGRATION_LOCK_KEY = 0x6D6C737461636B  # "mlstack"

# One statement, one round trip, one commit for the whole group. ON CONFLICT makes a resend
# after an ambiguous failure (connection lost during COMMIT) harmless.
_INSERT = """
INSERT INTO predictions
    (request_id, model_name, model_version, instances, predictions, latency_ms)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[], $6::float8[])
ON CONFLICT (request_id) DO NOTHING
"""
_RECENT = """
SELECT request_id::text, created_at, model_name, model_version,
       instances::text, predictions::text, latency_ms
FROM predictions ORDER BY id DESC LIMIT $1
"""


def _is_transient(exc: BaseException) -> bool:
    """Errors a restart or failover causes, after which the same write may succeed."""
    if isinstance(exc, asyncpg.ClientConfigurationError):  # an InterfaceError, but permanent
        return False
    return isinstance(
        exc,
        OSError
        | TimeoutError
        | asyncpg.PostgresConnectionError
        | asyncpg.OperatorInterventionError
        | asyncpg.InterfaceError,
    )


class _Schema:
    """The migration runner's SchemaConnection over one pool connection."""

    def __init__(self, conn: asyncpg.pool.PoolConnectionProxy) -> None:
        self._conn = conn

    @asynccontextmanager
    async def locked_transaction(self) -> AsyncIterator[None]:
        async with self._conn.transaction():
            # Replicas starting together queue here; the lock goes with the transaction's end.
            await self._conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            yield

    async def execute(self, statement: str) -> None:
        await self._conn.execute(statement)

    async def column(self, query: str) -> list[Any]:
        return [row[0] for row in await self._conn.fetch(query)]


class PostgresStore:
    kind = "postgresql"

    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        assert settings.database_url is not None
        self._dsn = settings.database_url
        self._pool_size = settings.db_pool_size
        self._write_timeout = settings.db_write_timeout_seconds
        self._metrics = metrics
        self._pool: asyncpg.Pool | None = None
        self._connecting: asyncio.Task[None] | None = None
        # Several commits in flight at once (PostgreSQL flushes them together), one pool
        # connection left over for reads and probes.
        self._committer: GroupCommitter[PredictionRecord] = GroupCommitter(
            self._write_batch,
            metrics,
            timeout=self._write_timeout,
            max_in_flight=max(1, self._pool_size - 1),
        )

    async def open(self) -> None:
        # Connect in the background so the gateway starts (and reports not-ready) while the
        # database is still coming up; wait a little so a healthy start is ready at once.
        self._connecting = asyncio.create_task(self._connect_until_ready())
        try:
            await asyncio.wait_for(asyncio.shield(self._connecting), timeout=10)
        except TimeoutError:
            log.warning("PostgreSQL not reachable yet; still trying in the background")

    async def _connect_until_ready(self) -> None:
        delay = 0.2
        while True:
            pool: asyncpg.Pool | None = None
            try:
                pool = await asyncpg.create_pool(
                    self._dsn, min_size=1, max_size=self._pool_size, command_timeout=10
                )
                await self._migrate(pool)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("PostgreSQL connect/migrate failed (%s); retrying in %.1fs", exc, delay)
                if pool is not None:
                    pool.terminate()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._pool = pool
            log.info("PostgreSQL connected, schema up to date")
            return

    @staticmethod
    async def _migrate(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            await migrate(_Schema(conn), MIGRATIONS)

    async def _write_batch(self, take: Callable[[], list[PredictionRecord]]) -> None:
        records = take()
        if not records:
            return
        columns = (
            [r.request_id for r in records],
            [r.model_name for r in records],
            [r.model_version for r in records],
            [r.instances_json for r in records],
            [r.predictions_json for r in records],
            [r.latency_ms for r in records],
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._write_timeout
        delay = 0.05
        while True:
            pool = self._pool
            if pool is None:
                raise StoreUnavailableError("database not connected yet")
            try:
                await pool.execute(_INSERT, *columns, timeout=max(0.1, deadline - loop.time()))
                return
            except Exception as exc:
                if not _is_transient(exc):
                    raise
                self._metrics.db_failures.inc()
                if loop.time() + delay >= deadline:
                    raise StoreUnavailableError(f"database write failed: {exc}") from exc
                log.warning("database write failed (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    async def save(self, record: PredictionRecord) -> None:
        await self._committer.submit(record)

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        pool = self._pool
        if pool is None:
            raise StoreUnavailableError("database not connected yet")
        try:
            rows = await pool.fetch(_RECENT, limit, timeout=5)
        except Exception as exc:
            if _is_transient(exc):
                raise StoreUnavailableError(f"database read failed: {exc}") from exc
            raise
        return [history_item(row, row[1].isoformat()) for row in rows]

    async def ping(self) -> bool:
        pool = self._pool
        if pool is None:
            return False
        try:
            value = await pool.fetchval("SELECT 1", timeout=1)
        except Exception as exc:
            log.debug("database ping failed: %s", exc)
            return False
        return bool(value == 1)

    async def close(self) -> None:
        await self._committer.close()
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), timeout=5)
            except TimeoutError:
                self._pool.terminate()
            self._pool = None
