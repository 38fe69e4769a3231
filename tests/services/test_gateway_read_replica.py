"""History reads from a hot standby (DATABASE_READ_URL): served there while it is within
DATABASE_READ_MAX_LAG_SECONDS of the primary, and by the primary when it falls behind, stops
streaming, stops or hangs; every read answers 200 as long as the primary does."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.poll import eventually
from harness.postgres import PostgresServer, query
from harness.services import ServiceProcess, start_gateway
from tests.services.support import (
    FreezableProxy,
    listed,
    metric,
    new_prediction,
    read_until_listed,
    stored,
)

DATABASE = "read_replica"
MAX_LAG = 0.5
READS = "mlstack_gateway_db_reads_total"
FALLBACKS = "mlstack_gateway_db_read_fallbacks_total"
LAG = "mlstack_gateway_db_read_lag_seconds"


def start_read_gateway(
    model_server: ServiceProcess, log_dir: Path, primary_dsn: str, read_dsn: str
) -> ServiceProcess:
    return start_gateway(
        model_server.url,
        log_dir,
        DATABASE_URL=primary_dsn,
        DATABASE_READ_URL=read_dsn,
        DATABASE_READ_MAX_LAG_SECONDS=str(MAX_LAG),
    )


@pytest.fixture(scope="module")
def gateway(
    model_server: ServiceProcess, log_dir: Path, primary_dsn: str, standby: PostgresServer
) -> Iterator[ServiceProcess]:
    service = start_read_gateway(model_server, log_dir, primary_dsn, standby.dsn(DATABASE))
    yield service
    service.stop()


def on_standby(standby: PostgresServer, request_id: str) -> bool:
    return stored(standby.dsn(DATABASE), [request_id]) == 1


def test_an_empty_history_is_read_from_the_standby(gateway: ServiceProcess) -> None:
    """The module's first test, on purpose: its gateway and database are the module's, and the
    tests after it write predictions into them."""
    lists: list[list[str]] = []

    def read_from_standby() -> bool:
        before = metric(gateway, READS, source="replica")
        lists.append(listed(gateway))
        return metric(gateway, READS, source="replica") == before + 1

    eventually(read_from_standby, "a read served by the standby", 30, interval=0.05)
    assert lists[-1] == []
    assert 0.0 <= metric(gateway, LAG) <= MAX_LAG


def test_a_prediction_is_listed_from_the_standby(
    gateway: ServiceProcess, standby: PostgresServer
) -> None:
    request_id = new_prediction(gateway)
    read_until_listed(gateway, request_id, READS, source="replica")
    lag = metric(gateway, LAG)
    assert 0.0 <= lag <= MAX_LAG
    assert on_standby(standby, request_id)


def test_a_standby_behind_by_more_than_the_bound_is_not_read(
    gateway: ServiceProcess, standby: PostgresServer
) -> None:
    with standby.replay_paused(DATABASE):
        request_id = new_prediction(gateway)
        # Served by the primary once the standby is MAX_LAG behind: the newest row included.
        read_until_listed(gateway, request_id, FALLBACKS, reason="lag")
        assert metric(gateway, LAG) > MAX_LAG
        assert not on_standby(standby, request_id)
    # Caught up, it serves reads again.
    read_until_listed(gateway, request_id, READS, source="replica")


def test_a_standby_behind_that_has_replayed_no_transaction_since_it_started_is_not_read(
    gateway: ServiceProcess,
    postgres: PostgresServer,
    primary_dsn: str,
    model_server: ServiceProcess,
    log_dir: Path,
) -> None:
    """A new copy (or a restarted standby) knows no replayed transaction's time until it has
    replayed one: behind the primary, its lag is unknown, not 0, and the primary answers.
    (`gateway` first: the schema is on the primary before the copy is made.)"""
    fresh = postgres.standby()
    fresh_dsn = fresh.dsn(DATABASE)
    try:
        with fresh.replay_paused(DATABASE):
            assert query(fresh_dsn, "SELECT pg_last_xact_replay_timestamp()")[0][0] is None
            reader = start_read_gateway(model_server, log_dir, primary_dsn, fresh_dsn)
            try:
                request_id = new_prediction(reader)
                read_until_listed(reader, request_id, FALLBACKS, reason="unknown_lag")
                assert math.isnan(metric(reader, LAG))
                assert not on_standby(fresh, request_id)
            finally:
                reader.stop()
    finally:
        fresh.destroy()


def test_a_standby_that_stops_streaming_is_not_read(
    gateway: ServiceProcess, standby: PostgresServer
) -> None:
    standby_dsn = standby.dsn(DATABASE)

    def set_primary_conninfo(value: str) -> None:
        query(
            standby_dsn, "ALTER SYSTEM SET primary_conninfo = '{}'".format(value.replace("'", "''"))
        )
        standby.reload()

    def streaming() -> bool:
        return bool(
            query(standby_dsn, "SELECT FROM pg_stat_wal_receiver WHERE status = 'streaming'")
        )

    conninfo: str = query(standby_dsn, "SHOW primary_conninfo")[0][0]
    set_primary_conninfo("")  # as if it had lost its primary: no WAL receiver
    try:
        eventually(lambda: not streaming(), "the standby's WAL receiver stopped", 30, interval=0.05)
        request_id = new_prediction(gateway)
        read_until_listed(gateway, request_id, FALLBACKS, reason="unknown_lag")
        assert math.isnan(metric(gateway, LAG))
    finally:
        set_primary_conninfo(conninfo)
    eventually(streaming, "the standby streaming again", 30, interval=0.05)
    read_until_listed(gateway, request_id, READS, source="replica")


def test_a_stopped_standby_leaves_reads_to_the_primary(
    gateway: ServiceProcess, standby: PostgresServer
) -> None:
    standby.stop()
    try:
        request_id = new_prediction(gateway)
        errors = metric(gateway, FALLBACKS, reason="error")
        from_primary = metric(gateway, READS, source="primary")
        assert request_id in listed(gateway)
        assert metric(gateway, FALLBACKS, reason="error") == errors + 1
        assert metric(gateway, READS, source="primary") == from_primary + 1
    finally:
        standby.start()
    # The read pool connects again once the standby is back.
    read_until_listed(gateway, new_prediction(gateway), READS, source="replica")


def test_a_hung_standby_leaves_reads_to_the_primary(
    model_server: ServiceProcess, log_dir: Path, primary_dsn: str, standby: PostgresServer
) -> None:
    proxy = FreezableProxy(standby.port)
    proxy.freeze()  # hung from the start: the gateway has no read pool yet
    read_dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/{DATABASE}"
    gateway = start_read_gateway(model_server, log_dir, primary_dsn, read_dsn)
    try:
        read_until_listed(gateway, new_prediction(gateway), FALLBACKS, reason="error")
        proxy.thaw()
        read_until_listed(gateway, new_prediction(gateway), READS, source="replica")
        proxy.freeze()  # hung in the middle of a read, with the pool's connections open
        read_until_listed(gateway, new_prediction(gateway), FALLBACKS, reason="error")
        proxy.thaw()
        read_until_listed(gateway, new_prediction(gateway), READS, source="replica")
    finally:
        gateway.stop()
        proxy.close()
