"""The gateway's SQLite store in-process: group commit on its writer thread, failures, close."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from mlstack_gateway.ids import new_request_id
from mlstack_gateway.metrics import GatewayMetrics
from mlstack_gateway.settings import GatewaySettings
from mlstack_gateway.store import PredictionRecord, StoreUnavailableError
from mlstack_gateway.store_sqlite import SqliteStore


def record() -> PredictionRecord:
    return PredictionRecord(new_request_id(), "iris", "v2", "[[5.1,3.5,1.4,0.2]]", "[0]", 1.0)


def open_store(data_dir: Path) -> tuple[SqliteStore, GatewayMetrics]:
    settings = GatewaySettings.from_env({"MLSTACK_API_KEY": "k", "DATA_DIR": str(data_dir)})
    metrics = GatewayMetrics()
    return SqliteStore(settings, metrics), metrics


def stored_ids(data_dir: Path) -> set[str]:
    with sqlite3.connect(data_dir / "predictions.sqlite3") as db:
        return {row[0] for row in db.execute("SELECT request_id FROM predictions")}


def test_concurrent_saves_share_commits_and_all_land(tmp_path: Path) -> None:
    records = [record() for _ in range(200)]

    async def run() -> float:
        store, metrics = open_store(tmp_path)
        await store.open()
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
        store, _ = open_store(tmp_path)
        await store.open()
        for _ in range(5):
            saved = record()
            await store.save(saved)
            assert saved.request_id in stored_ids(tmp_path)
        await store.close()

    asyncio.run(run())


def test_a_failed_commit_fails_every_caller_in_it(tmp_path: Path) -> None:
    async def run() -> tuple[list[BaseException | None], float]:
        store, metrics = open_store(tmp_path)
        await store.open()
        with sqlite3.connect(tmp_path / "predictions.sqlite3") as db:
            db.execute("DROP TABLE predictions")
        results = await asyncio.gather(
            *(store.save(record()) for _ in range(5)), return_exceptions=True
        )
        failures = metrics.registry.get_sample_value("mlstack_gateway_db_failures_total")
        await store.close()
        return results, failures or 0.0

    results, failures = asyncio.run(run())
    assert all(isinstance(r, StoreUnavailableError) for r in results)
    assert "no such table" in str(results[0])
    assert failures >= 1


def test_a_closed_store_refuses_saves(tmp_path: Path) -> None:
    async def run() -> None:
        store, _ = open_store(tmp_path)
        await store.open()
        await store.close()
        with pytest.raises(StoreUnavailableError):
            await store.save(record())

    asyncio.run(run())
