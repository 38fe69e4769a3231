"""GET /api/v1/predictions answers a page bounded in rows (limit) and in bytes
(HISTORY_MAX_BYTES), with a cursor for the next one, in both database modes."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.app import GATEWAY_RESOURCES
from harness.http import Reply
from harness.postgres import PostgresServer
from harness.services import API_KEY, ServiceProcess, start_gateway
from tests.services.hostile import Raw, burst, memory_limit_mib, memory_mib, raw_request
from tests.services.support import error_of, fill_with_copies, history, predict

POD_MEMORY_LIMIT_MIB = memory_limit_mib(GATEWAY_RESOURCES)
SMALL_BUDGET = 64 * 1024
DEFAULT_BUDGET = 512 * 1024
MAX_LIMIT = 1000


def maximal_instances() -> list[list[float]]:
    """A full batch (MAX_BATCH_ROWS, 1,024 rows of the model's 4 features) of numbers that take
    the most room as the gateway keeps them: 17 digits and an exponent each, or a power of ten
    that PostgreSQL's jsonb would write out in full. Model v1 takes them (FP64); the newest
    refuses any beyond float32's range."""
    return [
        [-1.2345678901234567e-300, 1e300, -9.876543210987654e-200, -2.2222222222222222e-222]
    ] * 1024


def empty_database(request: pytest.FixtureRequest, log_dir: Path) -> dict[str, str]:
    """The environment that points a gateway at an empty database of the mode
    ``request.param`` names."""
    name = f"history_{uuid.uuid4().hex[:8]}"
    if request.param == "sqlite":
        return {"DATA_DIR": str(log_dir / name)}
    postgres: PostgresServer = request.getfixturevalue("postgres")
    return {"DATABASE_URL": postgres.create_database(name)}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, log_dir: Path) -> dict[str, str]:
    return empty_database(request, log_dir)


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_database(request: pytest.FixtureRequest, log_dir: Path) -> dict[str, str]:
    """A database of the test's own, for the tests that add rows."""
    return empty_database(request, log_dir)


@pytest.fixture(scope="module")
def paged(
    model_server: ServiceProcess, log_dir: Path, database: dict[str, str]
) -> Iterator[tuple[ServiceProcess, list[str]]]:
    """A gateway whose pages hold 64 KiB, and the request ids it answered, oldest first: batches
    of 1 to 200 rows, several pages' worth."""
    gateway = start_gateway(
        model_server.url, log_dir, "ready", HISTORY_MAX_BYTES=str(SMALL_BUDGET), **database
    )
    ids = []
    for i in range(40):
        rows = [[5.0 + i / 7, 3.1 + i / 13, 1.5 + i / 17, 0.2 + i / 19]] * (1 + (i * 37) % 200)
        reply = predict(gateway.url, rows)
        assert reply.status == 200, reply.body
        ids.append(reply.json()["request_id"])
    yield gateway, ids
    gateway.stop()


def all_pages(gateway: ServiceProcess, limit: int) -> list[Reply]:
    pages = [history(gateway, f"?limit={limit}")]
    while (cursor := pages[-1].json()["next_cursor"]) is not None:
        pages.append(history(gateway, f"?limit={limit}&cursor={cursor}"))
        assert len(pages) < 1000
    return pages


def test_paging_with_cursors_lists_every_prediction_once_newest_first(
    paged: tuple[ServiceProcess, list[str]],
) -> None:
    gateway, ids = paged
    pages = all_pages(gateway, MAX_LIMIT)
    assert all(page.status == 200 for page in pages)
    listed = [item["request_id"] for page in pages for item in page.json()["items"]]
    assert listed == ids[::-1]
    # The bytes, not the limit, ended every page but the last.
    assert len(pages) > 2
    assert all(len(page.json()["items"]) < MAX_LIMIT for page in pages)


def test_a_page_never_exceeds_the_byte_budget(paged: tuple[ServiceProcess, list[str]]) -> None:
    gateway, _ = paged
    sizes = [len(page.body) for page in all_pages(gateway, MAX_LIMIT)]
    print(f"64 KiB pages: {sizes}")
    assert max(sizes) <= SMALL_BUDGET
    # Full pages come close to the budget: a page is cut by its bytes, not by a guess.
    assert max(sizes) > SMALL_BUDGET * 0.75


def test_the_limit_still_bounds_a_page_and_the_cursor_continues_it(
    paged: tuple[ServiceProcess, list[str]],
) -> None:
    gateway, ids = paged
    first = history(gateway, "?limit=3").json()
    assert [item["request_id"] for item in first["items"]] == ids[:-4:-1]
    assert first["limit"] == 3
    second = history(gateway, f"?limit=3&cursor={first['next_cursor']}").json()
    assert [item["request_id"] for item in second["items"]] == ids[-4:-7:-1]


def test_the_last_page_has_no_next_cursor(paged: tuple[ServiceProcess, list[str]]) -> None:
    gateway, ids = paged
    pages = all_pages(gateway, 7)
    assert pages[-1].json()["next_cursor"] is None
    assert sum(len(page.json()["items"]) for page in pages) == len(ids)


BAD_CURSORS = ["abc", "0", "-1", "1.5", "9" * 30, "", "%C2%B2", "0x10", "1e3", "null"]


@pytest.mark.parametrize("cursor", BAD_CURSORS, ids=lambda v: v[:12] or "empty")
def test_a_bad_cursor_is_400_with_a_json_error(
    paged: tuple[ServiceProcess, list[str]], cursor: str
) -> None:
    gateway, _ = paged
    reply = history(gateway, f"?limit=5&cursor={cursor}")
    assert reply.status == 400
    assert "cursor must be the next_cursor of a previous page" in error_of(reply)


def test_a_prediction_larger_than_the_budget_is_a_page_of_its_own(
    model_v1: ServiceProcess, log_dir: Path, fresh_database: dict[str, str]
) -> None:
    gateway = start_gateway(
        model_v1.url, log_dir, "ready", HISTORY_MAX_BYTES=str(SMALL_BUDGET), **fresh_database
    )
    try:
        check_a_large_prediction_alone_on_its_page(gateway)
    finally:
        gateway.stop()


def check_a_large_prediction_alone_on_its_page(gateway: ServiceProcess) -> None:
    large = predict(gateway.url, maximal_instances())
    assert large.status == 200
    small = predict(gateway.url, [[5.1, 3.5, 1.4, 0.2]])
    first = history(gateway, f"?limit={MAX_LIMIT}").json()
    assert [item["request_id"] for item in first["items"]] == [small.json()["request_id"]]
    second = history(gateway, f"?limit={MAX_LIMIT}&cursor={first['next_cursor']}")
    print(f"a full batch of the longest numbers: {len(second.body)} bytes")
    assert [item["request_id"] for item in second.json()["items"]] == [large.json()["request_id"]]
    assert second.json()["items"][0]["instances"] == maximal_instances()
    assert second.json()["next_cursor"] is None


# -- many concurrent maximal reads against the pod's memory limit --------------------------------


def test_many_concurrent_reads_of_maximal_rows_stay_under_the_pod_memory_limit(
    model_v1: ServiceProcess, log_dir: Path, fresh_database: dict[str, str]
) -> None:
    database = fresh_database
    filler = start_gateway(model_v1.url, log_dir, "ready", **database)
    try:
        assert predict(filler.url, maximal_instances()).status == 200
    finally:
        filler.stop()
    # A thousand (the largest limit) predictions of a full batch each: about 100 MB to list.
    fill_with_copies(database, MAX_LIMIT)
    # A fresh process with the defaults, so that its memory peak is this test's.
    gateway = start_gateway(model_v1.url, log_dir, "ready", **database)
    try:
        head = raw_request(
            "GET", f"/api/v1/predictions?limit={MAX_LIMIT}", [("X-API-Key", API_KEY)]
        )
        answers: list[Raw] = []
        for _ in range(3):
            answers += asyncio.run(asyncio.wait_for(burst(gateway.port, head, b"", 100), 300))
        memory = memory_mib(gateway.pid)
        statuses = [answer.status for answer in answers]
        served = [answer for answer in answers if answer.status == 200]
        print(
            f"3 x 100 concurrent reads of limit={MAX_LIMIT} over maximal rows: "
            f"{len(served)} served, largest answer {max(len(a.body) for a in served)} bytes, "
            f"{memory}"
        )
        assert set(statuses) <= {200, 503}
        assert served
        for answer in served:
            page: dict[str, Any] = json.loads(answer.body)
            assert len(answer.body) <= DEFAULT_BUDGET
            assert page["next_cursor"] is not None
        assert memory["VmHWM"] < POD_MEMORY_LIMIT_MIB * 0.875
    finally:
        gateway.stop()
