"""The gateway's SQLite store in-process: group commit, migrations, failures, close."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from mlstack_gateway.metrics import GatewayMetrics
from mlstack_gateway.settings import GatewaySettings
from mlstack_gateway.stores.base import StoredPrediction, StoreUnavailableError
from mlstack_gateway.stores.migrations import migrate
from mlstack_gateway.stores.sqlite import MIGRATIONS, SqliteConnection, SqliteStore

from tests.services.support import GATEWAY_REQUIRED, prediction_record, sqlite_file


async def open_store(data_dir: Path, **env: str) -> tuple[SqliteStore, GatewayMetrics]:
    """A store on `data_dir` with `env` over the required settings, opened (which applies its
    migrations), and its metrics."""
    settings = GatewaySettings.from_env({**GATEWAY_REQUIRED, "DATA_DIR": str(data_dir), **env})
    metrics = GatewayMetrics()
    store = SqliteStore(settings, metrics)
    await store.open()
    return store, metrics


async def connect_after_a_store(data_dir: Path) -> SqliteConnection:
    """A connection of the test's own to the file of a store that has been opened (applying
    version 1) and closed."""
    store, _ = await open_store(data_dir)
    await store.close()
    conn = SqliteConnection("test")
    await conn.open(sqlite_file(data_dir), busy_timeout=5)
    return conn


def stored_ids(data_dir: Path) -> set[str]:
    with sqlite3.connect(sqlite_file(data_dir)) as db:
        return {row[0] for row in db.execute("SELECT request_id FROM predictions")}


def test_concurrent_saves_share_commits_and_all_land(tmp_path: Path) -> None:
    records = [prediction_record() for _ in range(200)]

    async def run() -> float:
        store, metrics = await open_store(tmp_path)
        await asyncio.gather(*(store.save(r) for r in records))
        commits = metrics.registry.get_sample_value("mlstack_gateway_db_commit_rows_count")
        await store.close()
        return commits or 0.0

    commits = asyncio.run(run())
    assert stored_ids(tmp_path) == {r.request_id for r in records}
    assert 1 <= commits < 200


def test_save_returns_only_once_its_row_is_readable_from_another_connection(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        store, _ = await open_store(tmp_path)
        for _ in range(5):
            saved = prediction_record()
            await store.save(saved)
            assert saved.request_id in stored_ids(tmp_path)
        await store.close()

    asyncio.run(run())


def test_a_failed_commit_fails_every_caller_in_it(tmp_path: Path) -> None:
    async def run() -> tuple[list[StoredPrediction | BaseException | None], float]:
        store, metrics = await open_store(tmp_path)
        with sqlite3.connect(sqlite_file(tmp_path)) as db:
            db.execute("DROP TABLE predictions")
        results = await asyncio.gather(
            *(store.save(prediction_record()) for _ in range(5)), return_exceptions=True
        )
        failures = metrics.registry.get_sample_value("mlstack_gateway_db_failures_total")
        await store.close()
        return results, failures or 0.0

    results, failures = asyncio.run(run())
    assert all(isinstance(r, StoreUnavailableError) for r in results)
    # The client's words; the file's stay in the log (and the cause).
    failure = results[0]
    assert isinstance(failure, StoreUnavailableError)
    assert str(failure) == "database write failed"
    assert "no such table" in str(failure.__cause__)
    assert failures >= 1


def test_a_closed_store_refuses_saves(tmp_path: Path) -> None:
    async def run() -> None:
        store, _ = await open_store(tmp_path)
        await store.close()
        with pytest.raises(StoreUnavailableError):
            await store.save(prediction_record())

    asyncio.run(run())


def test_a_write_waits_no_longer_than_the_write_timeout_for_a_locked_file(
    tmp_path: Path,
) -> None:
    """Another process holds the file's write lock until the save has failed: the save gives up,
    no sooner than the write timeout. No upper bound on the seconds is asserted (a busy machine
    may run late); a save still waiting after 30 s fails the test."""

    async def run() -> float:
        store, _ = await open_store(tmp_path, DB_WRITE_TIMEOUT_SECONDS="0.3")
        # Another process holding the file's write lock.
        other = sqlite3.connect(sqlite_file(tmp_path), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        try:
            save = asyncio.create_task(store.save(prediction_record()))
            done, _ = await asyncio.wait({save}, timeout=30)
            if save not in done:
                save.cancel()
                pytest.fail("a save with a 0.3 s write timeout still waiting after 30 s")
            with pytest.raises(StoreUnavailableError):
                save.result()
            return time.monotonic() - started
        finally:
            other.execute("ROLLBACK")
            other.close()
            await store.close()

    assert asyncio.run(run()) >= 0.3


def test_migrations_apply_once_in_order(tmp_path: Path) -> None:
    migrations = [*MIGRATIONS, (2, "CREATE INDEX by_model ON predictions (model_name)")]

    async def run() -> tuple[list[int], list[int]]:
        conn = await connect_after_a_store(tmp_path)
        applied_then = await migrate(conn, migrations)
        applied_again = await migrate(conn, migrations)
        await conn.close()
        return applied_then, applied_again

    assert asyncio.run(run()) == ([2], [])
    with sqlite3.connect(sqlite_file(tmp_path)) as db:
        versions = [row[0] for row in db.execute("SELECT version FROM schema_migrations")]
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert versions == [1, 2]
    assert "by_model" in indexes


def test_a_failing_migration_leaves_the_schema_as_it_was(tmp_path: Path) -> None:
    migrations = [
        *MIGRATIONS,
        (2, "CREATE TABLE extra (id INTEGER)"),
        (3, "CREATE INDEX broken ON no_such_table (x)"),
    ]

    async def run() -> None:
        conn = await connect_after_a_store(tmp_path)
        with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
            await migrate(conn, migrations)
        await conn.close()

    asyncio.run(run())
    with sqlite3.connect(sqlite_file(tmp_path)) as db:
        versions = [row[0] for row in db.execute("SELECT version FROM schema_migrations")]
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert versions == [1]
    assert "extra" not in tables
