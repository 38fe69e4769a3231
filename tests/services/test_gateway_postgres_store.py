"""The gateway's PostgreSQL store in-process, on a real PostgreSQL: what its log says of an
outage whose requests end out of order, or whose writes are tried again."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from mlstack_gateway.history import NEWEST
from mlstack_gateway.metrics import GatewayMetrics
from mlstack_gateway.settings import GatewaySettings
from mlstack_gateway.stores.base import StoreUnavailableError
from mlstack_gateway.stores.postgres import PostgresStore

from harness.poll import eventually_async
from harness.postgres import PostgresServer
from tests.services.support import GATEWAY_REQUIRED, prediction_record


def test_a_request_sent_before_the_database_answered_again_that_fails_after_is_no_new_outage(
    postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A request that waited through an outage and fails once the server answers again (a
    connect made while the server was still recovering from a crash, refused or timed out
    only after another request's answer) says nothing of the server now: the outage stays one
    warning line. Here the requests wait on a lock of the predictions table: a read is sent,
    then a write times out (the outage begins), a ping answers (it ends), and the read, sent
    before both, times out after them."""

    async def scenario(store: PostgresStore, admin: asyncpg.Connection, _: str) -> None:
        async with admin.transaction():
            await admin.execute("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")
            read = asyncio.create_task(store.recent(5, NEWEST))
            with pytest.raises(StoreUnavailableError):
                await store.save(prediction_record())
            # The caller's wait may end just before the store sees its write fail.
            await eventually_async(gone(store), "the store to see the database gone", 30)
            assert await store.ping()
            assert store.reachable()["database"]
            with pytest.raises(StoreUnavailableError):
                await read

    lines = store_log(postgres, caplog, "store_outage_order", "0.5", scenario)
    went_away = [line for line in lines if " unavailable (" in line]
    assert len(went_away) == 1, lines
    assert any(line == "PostgreSQL answers again" for line in lines), lines


# The backends of the store's writes waiting for a lock.
_WAITING_WRITES = """
SELECT pid FROM pg_stat_activity
WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO predictions%'
  AND pid <> pg_backend_pid()
"""


def test_a_write_retry_that_runs_out_of_time_after_the_database_answered_again_is_no_outage(
    postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A write whose try failed is tried again with what is left of its DB_WRITE_TIMEOUT_SECONDS,
    as little as 0.1 s. A retry sent after the server answered again that times out (as one to
    a server back from a crash, still slow with its first connections and commits, may) says
    that the write ran out of time, not that the server went away again; a write given the
    whole time that times out does. Here the writes wait on a lock of the predictions table
    that lets pings through: the server ends a write's first try (the outage begins) and its
    second, sent before a ping answers (the outage ends); the third, sent after the ping,
    times out. Then another write waits the whole time."""

    async def scenario(store: PostgresStore, admin: asyncpg.Connection, dsn: str) -> None:
        watch = await asyncpg.connect(dsn)
        ended: set[int] = set()
        waiting: list[int] = []

        async def a_try_waits() -> bool:
            """Whether a try of the write waits for the lock (its backend in ``waiting``)."""
            waiting[:] = [
                row[0] for row in await watch.fetch(_WAITING_WRITES) if row[0] not in ended
            ]
            return bool(waiting)

        async def end_the_waiting_try() -> None:
            await eventually_async(a_try_waits, "a try of the write to wait for the lock", 30)
            ended.update(waiting)
            await watch.execute(
                "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", waiting
            )

        try:
            async with admin.transaction():
                await admin.execute("LOCK TABLE predictions IN SHARE MODE")
                write = asyncio.create_task(store.save(prediction_record()))
                await end_the_waiting_try()
                await eventually_async(gone(store), "the store to see the database gone", 30)
                await eventually_async(a_try_waits, "the write to be tried again", 30)
                assert await store.ping()
                assert store.reachable()["database"]
                await end_the_waiting_try()
                await eventually_async(a_try_waits, "the write to be tried a third time", 30)
                # A backend waiting for a lock does not see its client go: this one waits on.
                ended.update(waiting)
                with pytest.raises(StoreUnavailableError):
                    await write
                # Tried once the write before has ended, its third try timed out (one at a time).
                after = asyncio.create_task(store.save(prediction_record()))
                await eventually_async(a_try_waits, "the next write to be tried", 30)
            await after
            assert store.reachable()["database"]
            async with admin.transaction():
                await admin.execute("LOCK TABLE predictions IN SHARE MODE")
                with pytest.raises(StoreUnavailableError):
                    await store.save(prediction_record())
                await eventually_async(gone(store), "a write timing out to be an outage", 30)
        finally:
            await watch.close()

    lines = store_log(postgres, caplog, "store_retry_timeout", "5", scenario)
    went_away = [line for line in lines if " unavailable (" in line]
    # The first try's end, and the write given the whole time; not the third try's timeout.
    assert len(went_away) == 2, lines
    assert "(TimeoutError)" not in went_away[0], lines
    assert went_away[1].startswith("PostgreSQL unavailable (TimeoutError); "), lines
    assert lines.count("PostgreSQL answers again") == 1, lines


def gone(store: PostgresStore) -> Callable[[], Awaitable[bool]]:
    """A check: whether ``store`` holds its primary for gone."""

    async def check() -> bool:
        return not store.reachable()["database"]

    return check


def store_log(
    postgres: PostgresServer,
    caplog: pytest.LogCaptureFixture,
    database: str,
    write_timeout: str,
    scenario: Callable[[PostgresStore, asyncpg.Connection, str], Awaitable[None]],
) -> list[str]:
    """What the store's log says while ``scenario`` runs against a store, open on a new
    ``database`` with DB_WRITE_TIMEOUT_SECONDS ``write_timeout``, given a connection of its own
    to that database and its URL."""
    dsn = postgres.create_database(database)
    settings = GatewaySettings.from_env(
        {**GATEWAY_REQUIRED, "DATABASE_URL": dsn, "DB_WRITE_TIMEOUT_SECONDS": write_timeout}
    )

    async def run() -> None:
        store = PostgresStore(settings, GatewayMetrics())
        await store.open()
        admin = await asyncpg.connect(dsn)
        try:
            await scenario(store, admin, dsn)
        finally:
            await admin.close()
            await store.close()

    with caplog.at_level(logging.INFO, logger="mlstack_gateway.store"):
        asyncio.run(run())
    return [record.getMessage() for record in caplog.records]
