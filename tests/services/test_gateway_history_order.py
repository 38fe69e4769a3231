"""The history's order is the order in which predictions were committed, across gateways.

Two gateways (two pods) write to one PostgreSQL. A client that has read the history and reads
it again later finds every prediction committed since above what it read before: none lands
below a page it has already passed, where paging on from its cursor, or reading from the top
down to the newest prediction it knows, would never reach it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from harness.http import Reply
from harness.poll import eventually
from harness.postgres import PostgresServer, on_connection, query
from harness.services import ServiceProcess, start_gateway
from tests.services.support import listed, predict

# The first feature of the rows whose commit the database holds back (the trigger below).
HELD = 7.25
ROWS = [[5.1, 3.5, 1.4, 0.2]]

# A test-only trigger: a row whose first feature is HELD waits, after its insert (its id is
# taken) and before its commit, until the test opens the gate. That is a slow commit, as a large
# batch or a commit waiting for its synchronous standby makes one.
_HOLD_BACK = f"""
CREATE TABLE commit_gate (open BOOLEAN NOT NULL);
INSERT INTO commit_gate VALUES (false);
CREATE FUNCTION wait_for_gate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WHILE NOT (SELECT open FROM commit_gate) LOOP
        PERFORM pg_sleep(0.01);
    END LOOP;
    RETURN NULL;
END $$;
CREATE TRIGGER hold_back AFTER INSERT ON predictions FOR EACH ROW
    WHEN ((NEW.instances -> 0 ->> 0)::float8 = {HELD}) EXECUTE FUNCTION wait_for_gate();
"""


@pytest.fixture
def two_gateways(
    model_server: ServiceProcess, log_dir: Path, postgres: PostgresServer
) -> Iterator[tuple[ServiceProcess, ServiceProcess, str]]:
    """Two gateways on one new database (the schema theirs), with the trigger; and its URL."""
    dsn = postgres.create_database(f"order_{uuid.uuid4().hex[:8]}")

    def gateway() -> ServiceProcess:
        return start_gateway(
            model_server.url, log_dir, DATABASE_URL=dsn, DB_WRITE_TIMEOUT_SECONDS="30"
        )

    first = gateway()
    try:
        second = gateway()
    except BaseException:
        first.stop()
        raise
    try:
        on_connection(dsn, lambda conn: conn.execute(_HOLD_BACK))
        yield first, second, dsn
    finally:
        second.stop()
        first.stop()


def open_the_gate(dsn: str) -> None:
    query(dsn, "UPDATE commit_gate SET open = true")


def waiting_backends(dsn: str, event: str) -> int:
    """Server processes of the database waiting on ``event`` (pg_stat_activity's wait_event)."""
    rows = query(
        dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event = $1",
        event,
    )
    return int(rows[0][0])


def answered_id(reply: Future[Reply]) -> str:
    done = reply.result(timeout=60)
    assert done.status == 200, done.body
    return str(done.json()["request_id"])


def test_a_prediction_committed_after_a_read_is_listed_above_what_that_read_listed(
    two_gateways: tuple[ServiceProcess, ServiceProcess, str],
) -> None:
    first, second, dsn = two_gateways
    assert predict(first.url, ROWS).status == 200
    with ThreadPoolExecutor(max_workers=2) as pool:
        try:
            # The first gateway's commit is held back once its row has an id...
            slow = pool.submit(predict, first.url, [[HELD, 3.0, 1.4, 0.2]])
            eventually(lambda: waiting_backends(dsn, "PgSleep") == 1, "the held commit", 30)
            # ...while the second gateway's request commits, or waits until it may.
            fast = pool.submit(predict, second.url, ROWS)
            eventually(
                lambda: fast.done() or waiting_backends(dsn, "advisory") == 1,
                "the second gateway's commit to end or to wait for the first's",
                30,
            )
            seen = listed(second, "?limit=100")
        finally:
            open_the_gate(dsn)
        slow_id, fast_id = answered_id(slow), answered_id(fast)
    now = listed(first, "?limit=100")
    assert sorted(now) == sorted(seen + [i for i in (slow_id, fast_id) if i not in seen])
    # Everything the first read listed is where it was, below whatever was committed since.
    assert now[len(now) - len(seen) :] == seen, (
        f"committed after the read: {slow_id} and {fast_id}; listed then {seen}, now {now}"
    )
