"""The gateway's PostgreSQL store in-process, on a real PostgreSQL: what its log says of an
outage whose requests end out of order, or whose writes are tried again; what a keyed retry's
look-up of its stored answer gets when the synchronous standby does not confirm it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import asyncpg
import pytest
from mlstack_gateway.history import NEWEST
from mlstack_gateway.ids import new_request_id
from mlstack_gateway.metrics import GatewayMetrics
from mlstack_gateway.settings import GatewaySettings
from mlstack_gateway.stores import postgres as postgres_store
from mlstack_gateway.stores.base import PredictionRecord, StoredPrediction, StoreUnavailableError
from mlstack_gateway.stores.postgres import PostgresStore

from harness.poll import eventually_async
from harness.postgres import PostgresServer, query
from tests.services.support import (
    GATEWAY_REQUIRED,
    WAITING_FOR_STANDBY,
    prediction_record,
    stored,
    synchronous_pair,
)


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


def test_a_table_dropped_under_recorded_migrations_is_waited_out_not_reconnected_each_time(
    postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The predictions table dropped by hand, schema_migrations kept: the migrations would not
    make it again. Each write is a 503, and the store, once connected again, waits for the table
    with one line, rather than connecting again at every write that finds it missing."""
    dsn = postgres.create_database("store_table_dropped")

    async def scenario(store: PostgresStore) -> None:
        assert await store.save(prediction_record()) is None
        await asyncio.to_thread(query, dsn, "DROP TABLE predictions")
        for _ in range(6):
            with pytest.raises(StoreUnavailableError):
                await store.save(prediction_record())
            await asyncio.sleep(0.3)

    with caplog.at_level(logging.INFO, logger="mlstack_gateway.store"):
        on_store(dsn, scenario)
    lines = [record.getMessage() for record in caplog.records]
    missing = [line for line in lines if "the table predictions is missing" in line]
    assert len(missing) == 1, lines
    assert lines.count("PostgreSQL connected, schema up to date") == 1, lines


def test_a_keyed_look_up_in_a_database_recreated_empty_is_no_answer_and_sets_it_up_again(
    postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A keyed retry's look-up (while the model is away) in a database whose tables are gone:
    StoreUnavailableError, and the store connects again as at start, here with
    DATABASE_MIGRATE=true, migrating: it stores and finds predictions again."""
    dsn = postgres.create_database("store_recreated_empty")

    async def scenario(store: PostgresStore) -> None:
        record = keyed_record()
        assert await store.save(record) is None
        await asyncio.to_thread(query, dsn, "DROP TABLE predictions, schema_migrations")
        with pytest.raises(StoreUnavailableError, match="not set up"):
            await store.stored(record.request_id, record.instances_json)

        async def stores() -> bool:
            with contextlib.suppress(StoreUnavailableError):
                return await store.save(record) is None
            return False

        await eventually_async(stores, "the store to store predictions again", 30)
        found = await store.stored(record.request_id, record.instances_json)
        assert found == StoredPrediction(record.model_version, record.predictions_json, True)
        assert not store.awaiting_migrations()

    with caplog.at_level(logging.INFO, logger="mlstack_gateway.store"):
        on_store(dsn, scenario)
    lines = [record.getMessage() for record in caplog.records]
    assert [line for line in lines if " unavailable (" in line] == [
        'PostgreSQL unavailable (relation "predictions" does not exist); '
        "predictions and history reads answer 503 until it answers again"
    ], lines
    assert lines.count("applied migration 1") == 2, lines


def gone(store: PostgresStore) -> Callable[[], Awaitable[bool]]:
    """A check: whether ``store`` holds its primary for gone."""

    async def check() -> bool:
        return not store.reachable()["database"]

    return check


def on_store(dsn: str, scenario: Callable[[PostgresStore], Awaitable[None]], **env: str) -> None:
    """``scenario`` against a store open on ``dsn`` (settings ``env`` besides)."""
    settings = GatewaySettings.from_env({**GATEWAY_REQUIRED, "DATABASE_URL": dsn, **env})

    async def run() -> None:
        store = PostgresStore(settings, GatewayMetrics())
        await store.open()
        try:
            await scenario(store)
        finally:
            await store.close()

    asyncio.run(run())


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

    async def with_admin(store: PostgresStore) -> None:
        admin = await asyncpg.connect(dsn)
        try:
            await scenario(store, admin, dsn)
        finally:
            await admin.close()

    with caplog.at_level(logging.INFO, logger="mlstack_gateway.store"):
        on_store(dsn, with_admin, DB_WRITE_TIMEOUT_SECONDS=write_timeout)
    return [record.getMessage() for record in caplog.records]


@contextlib.asynccontextmanager
async def replay_paused(standby: PostgresServer) -> AsyncIterator[None]:
    """PostgresServer.replay_paused inside an event loop (its queries run loops of their own)."""
    paused = standby.replay_paused()
    await asyncio.to_thread(paused.__enter__)
    try:
        yield
    finally:
        await asyncio.to_thread(paused.__exit__, None, None, None)


def keyed_record() -> PredictionRecord:
    return dataclasses.replace(prediction_record(), keyed=True)


@pytest.mark.parametrize("stall", [0.0, 0.3], ids=["on-time", "event-loop-late"])
def test_a_stored_row_the_standby_does_not_confirm_in_time_is_no_answer_and_no_outage(
    caplog: pytest.LogCaptureFixture, stall: float
) -> None:
    """A keyed retry's look-up (while the model is away) finds the row, whose confirmation
    waits for a standby that does not replay: StoreUnavailableError once its time is out, the
    primary still answering, and no backend left waiting for the standby (the wait is cancelled
    on the server before the connection is closed), even when the event loop is late as the
    time runs out (a CPU limit's throttling, a collection). Once the standby replays, the row is
    the answer."""
    with synchronous_pair() as (dsn, standby):

        async def scenario(store: PostgresStore) -> None:
            record = keyed_record()
            assert await store.save(record) is None
            watch = await asyncpg.connect(dsn)
            try:
                async with replay_paused(standby):
                    loop = asyncio.get_running_loop()
                    if stall:
                        loop.call_later(postgres_store._LOOKUP_SECONDS - 0.05, time.sleep, stall)
                    lookup = store.stored(record.request_id, record.instances_json)
                    refused = await refused_and_not_left_waiting(watch, lookup, "the confirmation")
                    assert str(refused) == "stored prediction not found and confirmed within 0.5 s"
                    assert store.reachable()["database"]
            finally:
                await watch.close()
            found = await store.stored(record.request_id, record.instances_json)
            assert found == StoredPrediction(
                record.model_version, record.predictions_json, same_instances=True
            )
            assert await store.stored(new_request_id(), record.instances_json) is None

        with caplog.at_level(logging.INFO, logger="mlstack_gateway.store"):
            on_store(dsn, scenario)
    assert not [r for r in caplog.records if " unavailable (" in r.getMessage()], caplog.text


def test_a_write_the_standby_does_not_confirm_in_time_leaves_no_backend_waiting() -> None:
    """A write whose commit waits for a standby that does not replay is answered 503 once
    DB_WRITE_TIMEOUT_SECONDS are out, and its backend stops waiting: the connection is closed
    only once asyncpg's cancel of the commit has reached the server. A closed connection alone
    would leave the backend waiting (and its connection slot taken) until the standby replays
    or Patroni drops it, one more for each write that times out meanwhile."""
    with synchronous_pair() as (dsn, standby):

        async def scenario(store: PostgresStore) -> None:
            watch = await asyncpg.connect(dsn)
            try:
                async with replay_paused(standby):
                    write = store.save(prediction_record())
                    await refused_and_not_left_waiting(watch, write, "the commit")
            finally:
                await watch.close()
            assert await store.save(prediction_record()) is None

        on_store(dsn, scenario, DB_WRITE_TIMEOUT_SECONDS="0.5")


def test_a_resent_write_that_finds_its_rows_is_confirmed_by_the_standby() -> None:
    """A write (without Idempotency-Keys) whose commit waits for the synchronous standby, and
    whose backend is ended meanwhile (as a restart in place ends it): its rows are committed on
    the primary, and its connection is lost. The resend finds them and inserts none; it then
    writes a commit record of its own, whose wait for the standby confirms them (as a keyed
    batch's does): stored once and answered, not a 503 whose client would send the prediction
    again and have it stored twice."""
    with synchronous_pair() as (dsn, standby):

        async def scenario(store: PostgresStore) -> None:
            record = prediction_record()
            watch = await asyncpg.connect(dsn)

            async def waiting() -> set[int]:
                return {row[0] for row in await watch.fetch(WAITING_FOR_STANDBY)}

            try:
                async with replay_paused(standby):
                    write = asyncio.create_task(store.save(record))
                    await eventually_async(waiting, "the commit waiting for the standby", 10)
                    ended = await waiting()
                    await watch.execute(
                        "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", ended
                    )

                    async def resend_waits_or_write_ended() -> bool:
                        return write.done() or bool(await waiting() - ended)

                    await eventually_async(
                        resend_waits_or_write_ended, "the resend waiting for the standby", 10
                    )
                    assert not write.done(), write.exception()
                assert await write is None
            finally:
                await watch.close()
            assert await asyncio.to_thread(stored, dsn, [record.request_id]) == 1

        on_store(dsn, scenario, DB_WRITE_TIMEOUT_SECONDS="30")


async def refused_and_not_left_waiting(
    watch: asyncpg.Connection, call: Coroutine[Any, Any, object], what: str
) -> StoreUnavailableError:
    """``call`` (the store's) run until ``what``, its commit, waits for the standby; then its
    StoreUnavailableError once its time is out (returned), and no backend left waiting for the
    standby."""
    task = asyncio.create_task(call)
    await eventually_async(lambda: watch.fetch(WAITING_FOR_STANDBY), f"{what} waiting", 10)
    with pytest.raises(StoreUnavailableError) as refused:
        await task

    async def none_waits() -> bool:
        return not await watch.fetch(WAITING_FOR_STANDBY)

    await eventually_async(none_waits, f"{what}'s backend to stop waiting for the standby", 10)
    return refused.value


def test_a_stored_row_whose_standby_wait_is_cut_short_is_no_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The confirmation's wait cancelled on the server (pg_cancel_backend, as an operator or a
    shutdown might): the commit is local only, and confirms nothing."""
    monkeypatch.setattr(postgres_store, "_LOOKUP_SECONDS", 30.0)
    with synchronous_pair() as (dsn, standby):

        async def scenario(store: PostgresStore) -> None:
            record = keyed_record()
            assert await store.save(record) is None
            async with replay_paused(standby):
                lookup = asyncio.create_task(store.stored(record.request_id, record.instances_json))
                watch = await asyncpg.connect(dsn)
                try:
                    await eventually_async(
                        lambda: watch.fetch(WAITING_FOR_STANDBY), "the confirmation waiting", 20
                    )
                    await watch.execute(
                        f"SELECT pg_cancel_backend(pid) FROM ({WAITING_FOR_STANDBY}) w"
                    )
                finally:
                    await watch.close()
                with pytest.raises(StoreUnavailableError, match="cut short"):
                    await lookup

        on_store(dsn, scenario)


def test_a_stored_row_on_a_server_in_recovery_is_no_answer_and_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failover's former primary, a standby again (in recovery), finds the row but can write
    no confirmation: StoreUnavailableError, and the writes' outage in the log."""
    with synchronous_pair() as (dsn, standby):
        record = keyed_record()

        async def save(store: PostgresStore) -> None:
            assert await store.save(record) is None

        on_store(dsn, save)

        async def scenario(store: PostgresStore) -> None:
            # The standby has replayed the row: the primary's commit waited for that.
            with pytest.raises(StoreUnavailableError, match="writes nothing"):
                await store.stored(record.request_id, record.instances_json)
            assert store.reachable()["database"]

        with caplog.at_level(logging.INFO, logger="mlstack_gateway.store"):
            on_store(standby.dsn(), scenario, DATABASE_MIGRATE="false")
    assert any(
        r.getMessage().startswith("PostgreSQL for writes unavailable") for r in caplog.records
    ), caplog.text
