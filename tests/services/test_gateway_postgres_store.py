"""The gateway's PostgreSQL store in-process, on a real PostgreSQL: what its log says of an
outage whose requests end out of order."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest
from mlstack_gateway.history import NEWEST
from mlstack_gateway.metrics import GatewayMetrics
from mlstack_gateway.settings import GatewaySettings
from mlstack_gateway.stores.base import StoreUnavailableError
from mlstack_gateway.stores.postgres import PostgresStore

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
    dsn = postgres.create_database("store_outage_order")
    settings = GatewaySettings.from_env(
        {**GATEWAY_REQUIRED, "DATABASE_URL": dsn, "DB_WRITE_TIMEOUT_SECONDS": "0.5"}
    )

    async def run() -> None:
        store = PostgresStore(settings, GatewayMetrics())
        await store.open()
        admin = await asyncpg.connect(dsn)
        try:
            async with admin.transaction():
                await admin.execute("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")
                read = asyncio.create_task(store.recent(5, NEWEST))
                with pytest.raises(StoreUnavailableError):
                    await store.save(prediction_record())
                # The caller's wait may end just before the store sees its write fail.
                async with asyncio.timeout(30):
                    while store.reachable()["database"]:
                        await asyncio.sleep(0.01)
                assert await store.ping()
                assert store.reachable()["database"]
                with pytest.raises(StoreUnavailableError):
                    await read
        finally:
            await admin.close()
            await store.close()

    with caplog.at_level(logging.INFO, logger="mlstack_gateway.store"):
        asyncio.run(run())
    lines = [record.getMessage() for record in caplog.records]
    went_away = [line for line in lines if " unavailable (" in line]
    assert len(went_away) == 1, lines
    assert any(line == "PostgreSQL answers again" for line in lines), lines
