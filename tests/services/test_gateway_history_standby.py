"""Paging the history through gateways that read from a hot standby (DATABASE_READ_URL).

A client's pages may come from different servers: one gateway reads from the primary (it has
no standby, or its standby was past the lag bound), another from a standby within the bound
but behind the page the client has just read. Paging on from the cursor still lists every
older prediction: a server that has not replayed the page's last row does not answer the next.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.poll import eventually
from harness.postgres import PostgresServer
from harness.services import ServiceProcess, start_gateway
from tests.services.support import listed_page, new_prediction, stored

DATABASE = "history_standby"
# Far above the standby's lag in this test: it serves the reads, behind as it is.
MAX_LAG = 60


@pytest.fixture(scope="module")
def on_primary(
    model_server: ServiceProcess, log_dir: Path, primary_dsn: str
) -> Iterator[ServiceProcess]:
    """A gateway that reads from the primary."""
    service = start_gateway(model_server.url, log_dir, DATABASE_URL=primary_dsn)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def on_standby(
    model_server: ServiceProcess,
    log_dir: Path,
    primary_dsn: str,
    standby: PostgresServer,
    on_primary: ServiceProcess,  # the schema made first
) -> Iterator[ServiceProcess]:
    """A gateway that reads from the standby."""
    service = start_gateway(
        model_server.url,
        log_dir,
        DATABASE_URL=primary_dsn,
        DATABASE_READ_URL=standby.dsn(DATABASE),
        DATABASE_READ_MAX_LAG_SECONDS=str(MAX_LAG),
    )
    yield service
    service.stop()


def replayed(standby: PostgresServer, request_id: str) -> bool:
    return stored(standby.dsn(DATABASE), [request_id]) == 1


def test_the_next_page_from_a_standby_behind_the_cursor_lists_every_older_prediction(
    on_primary: ServiceProcess, on_standby: ServiceProcess, standby: PostgresServer
) -> None:
    replayed_ids = [new_prediction(on_primary) for _ in range(3)]
    eventually(lambda: replayed(standby, replayed_ids[-1]), "the standby replayed them", 30)
    with standby.replay_paused(DATABASE):
        newer_ids = [new_prediction(on_primary) for _ in range(3)]
        first, cursor = listed_page(on_primary, "?limit=2")
        assert first == newer_ids[:0:-1]
        assert cursor is not None
        rest, _ = listed_page(on_standby, f"?limit=100&cursor={cursor}")
    assert rest == [newer_ids[0], *reversed(replayed_ids)]
