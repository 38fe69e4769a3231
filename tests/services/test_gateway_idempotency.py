"""POST /api/v1/predict with an Idempotency-Key: a client may send a request again (after a 503,
or a connection lost before the answer) without its prediction being stored twice, on either
store. A retry is answered from what the key's first request stored, once that is committed as
the server promises a commit: on PostgreSQL with a synchronous standby, once the standby has it;
and so while the model fails or is away too."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from mlstack_gateway.stores.postgres import COMMIT_ORDER_LOCK_KEY, migrate_database

from harness.http import Reply, request
from harness.poll import eventually
from harness.ports import free_port
from harness.postgres import PostgresServer, on_connection, query
from harness.services import (
    API_KEY,
    SETOSA,
    GatewayProcess,
    ServiceProcess,
    Wait,
    start_gateway,
)
from tests.services.hostile import PREDICT, exchange, raw_request
from tests.services.support import (
    WAITING_FOR_STANDBY,
    metric,
    predict,
    sqlite_file,
    synchronous_pair,
    throwaway_postgres,
)

VIRGINICA = [6.7, 3.0, 5.2, 2.3]
PREDICTED_ROWS = "mlstack_gateway_predicted_rows_total"
STORED_ANSWERS = "mlstack_gateway_stored_answers_total"


def keyed_predict(gateway: ServiceProcess, instances: Any, key: str) -> Reply:
    headers = {"X-API-Key": API_KEY, "Idempotency-Key": key}
    return request("POST", f"{gateway.url}/api/v1/predict", {"instances": instances}, headers)


def gateway_role(dsn: str) -> str:
    """The URL of a role of `dsn`'s database that may do what services/database/roles.sql lets
    the gateway's role do, and no more: read and insert rows (no UPDATE), use the sequences;
    the schema migrated beforehand by the superuser, as the migrations Job does."""
    asyncio.run(migrate_database(dsn, 30))
    role = "idempotency_gateway"
    query(
        dsn,
        f"""DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                CREATE ROLE {role} LOGIN;
            END IF;
        END $$""",
    )
    for grant in (
        f"GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO {role}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
    ):
        query(dsn, grant)
    user, _, rest = dsn.removeprefix("postgresql://").partition("@")
    assert user == "postgres", dsn
    return f"postgresql://{role}@{rest}"


def nothing_listens() -> str:
    """A model URL with no model behind it: every call is refused."""
    return f"http://127.0.0.1:{free_port()}"


def gateway_as_its_role(
    model_url: str, log_dir: Path, dsn: str, write_timeout: float, wait: Wait = "ready"
) -> ServiceProcess:
    """A gateway on `dsn`'s database as the gateway's role (gateway_role) would run it, its
    writes given `write_timeout` seconds (waited for only until live, for one whose model is
    away)."""
    return start_gateway(
        model_url,
        log_dir,
        wait,
        DATABASE_URL=gateway_role(dsn),
        DATABASE_MIGRATE="false",
        DB_WRITE_TIMEOUT_SECONDS=f"{write_timeout:g}",
    )


@dataclass
class SharedStore:
    """Gateways on one database: ``new`` in front of the newest model, ``old`` in front of v1
    (as during a model rollout), ``away`` in front of no model at all; ``count`` says how many
    rows a request_id has."""

    new: GatewayProcess
    old: GatewayProcess
    away: GatewayProcess
    count: Callable[[str], int]
    # While in it, a write cannot commit: it waits for its lock.
    writes_held: Callable[[], contextlib.AbstractContextManager[None]]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shared(
    request: pytest.FixtureRequest,
    model_server: ServiceProcess,
    model_v1: ServiceProcess,
    log_dir: Path,
) -> Iterator[SharedStore]:
    if request.param == "sqlite":
        data_dir = tempfile.mkdtemp(prefix="gateway-idempotency-", dir=log_dir)
        env = {"DATA_DIR": data_dir}
        path = sqlite_file(Path(data_dir))

        def count(request_id: str) -> int:
            with contextlib.closing(sqlite3.connect(path)) as conn:
                sql = "SELECT count(*) FROM predictions WHERE request_id = ?"
                return int(conn.execute(sql, (request_id,)).fetchone()[0])

        @contextlib.contextmanager
        def writes_held() -> Iterator[None]:
            # The file's write lock, which the gateway's write waits for (its busy timeout).
            with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield
                finally:
                    conn.execute("ROLLBACK")

    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        dsn = postgres.create_database("gateway_idempotency")
        env = {"DATABASE_URL": gateway_role(dsn), "DATABASE_MIGRATE": "false"}

        def count(request_id: str) -> int:
            sql = "SELECT count(*) FROM predictions WHERE request_id = $1::uuid"
            return int(query(dsn, sql, request_id)[0][0])

        @contextlib.contextmanager
        def writes_held() -> Iterator[None]:
            # The commit-order lock, which every write takes before its rows are inserted.
            release = asyncio.Event()
            held = ThreadPoolExecutor(max_workers=1)
            taken = asyncio.Event()

            async def hold(conn: asyncpg.Connection) -> None:
                await conn.execute("SELECT pg_advisory_lock($1)", COMMIT_ORDER_LOCK_KEY)
                taken.set()
                while not release.is_set():
                    await asyncio.sleep(0.02)

            future = held.submit(on_connection, dsn, hold)
            try:
                eventually(taken.is_set, "the commit-order lock taken", 10)
                yield
            finally:
                release.set()
                future.result(timeout=10)
                held.shutdown()

    new = start_gateway(model_server.url, log_dir, "ready", DB_WRITE_TIMEOUT_SECONDS="10", **env)
    old = start_gateway(model_v1.url, log_dir, "ready", DB_WRITE_TIMEOUT_SECONDS="10", **env)
    away = start_gateway(nothing_listens(), log_dir, "live", **env)
    try:
        yield SharedStore(new, old, away, count, writes_held)
    finally:
        new.stop()
        old.stop()
        away.stop()


def test_a_retry_with_the_key_gets_the_same_answer_and_stores_nothing_more(
    shared: SharedStore,
) -> None:
    key = str(uuid.uuid4())
    first = keyed_predict(shared.new, [SETOSA, VIRGINICA], key)
    assert first.status == 200, first.body
    assert first.json()["request_id"] == key
    predicted = metric(shared.new, PREDICTED_ROWS)
    again = keyed_predict(shared.new, [SETOSA, VIRGINICA], key)
    assert (again.status, again.json()) == (200, first.json())
    assert shared.count(key) == 1
    # The rows predicted and stored: the retry stored none.
    assert metric(shared.new, PREDICTED_ROWS) == predicted


def test_a_retry_gets_what_was_stored_not_what_the_model_answers_now(shared: SharedStore) -> None:
    # A model rollout between a request and its retry: the retry gets the stored prediction.
    key = str(uuid.uuid4())
    first = keyed_predict(shared.new, [SETOSA], key)
    assert first.status == 200, first.body
    retry = keyed_predict(shared.old, [SETOSA], key)
    assert retry.status == 200, retry.body
    assert retry.json() == first.json()
    assert retry.json()["model_version"] != "v1"
    assert predict(shared.old.url, [SETOSA]).json()["model_version"] == "v1"
    assert shared.count(key) == 1


def test_the_key_of_another_request_is_refused_with_422(shared: SharedStore) -> None:
    key = str(uuid.uuid4())
    assert keyed_predict(shared.new, [SETOSA], key).status == 200
    other = keyed_predict(shared.new, [VIRGINICA], key)
    assert other.status == 422, other.body
    assert "was used for another request" in other.json()["error"]
    assert shared.count(key) == 1
    # The same numbers written otherwise are the same request.
    assert keyed_predict(shared.new, [[float(v) for v in SETOSA]], key).status == 200


def test_a_retry_the_model_does_not_answer_gets_the_stored_answer(shared: SharedStore) -> None:
    key = str(uuid.uuid4())
    first = keyed_predict(shared.new, [SETOSA, VIRGINICA], key)
    assert first.status == 200, first.body
    answered = metric(shared.away, STORED_ANSWERS)
    retry = keyed_predict(shared.away, [SETOSA, VIRGINICA], key)
    assert (retry.status, retry.json()) == (200, first.json())
    assert shared.count(key) == 1
    assert metric(shared.away, PREDICTED_ROWS) == 0
    assert metric(shared.away, STORED_ANSWERS) == answered + 1
    # Other instances under the key: 422, as with a model that answers.
    other = keyed_predict(shared.away, [VIRGINICA], key)
    assert other.status == 422, other.body
    assert "was used for another request" in other.json()["error"]
    assert metric(shared.away, STORED_ANSWERS) == answered + 1


def test_a_key_nothing_is_stored_under_gets_the_model_s_503(shared: SharedStore) -> None:
    key = str(uuid.uuid4())
    reply = keyed_predict(shared.away, [SETOSA], key)
    assert reply.refused_with_retry_after, (reply.status, reply.body)
    assert reply.json()["error"].startswith("model unavailable"), reply.body
    assert shared.count(key) == 0
    # And nothing is stored for its retry to find: once the model answers, it is a new request.
    assert keyed_predict(shared.new, [SETOSA], key).status == 200
    assert shared.count(key) == 1


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not-a-uuid",
        "0190c3a27b1e7cde8f001234567890ab",  # no hyphens
        "{0190c3a2-7b1e-7cde-8f00-1234567890ab}",
        "urn:uuid:0190c3a2-7b1e-7cde-8f00-1234567890ab",
        "0190c3a2-7b1e-7cde-8f00-1234567890ab0",
        "0190c3a2-7b1e-7cde-8f00-1234567890ag",
        '"0190c3a2-7b1e-7cde-8f00-1234567890ab',
        "0190c3a2-7b1e-7cde-8f00-1234567890ab-and-more-after-it",
    ],
)
def test_a_key_that_is_not_a_uuid_is_refused_with_400(shared: SharedStore, value: str) -> None:
    reply = keyed_predict(shared.new, [SETOSA], value)
    assert reply.status == 400, reply.body
    error = reply.json()["error"]
    assert "Idempotency-Key" in error and "UUID" in error, error
    # The value as sent, cut after 40 characters.
    assert error.endswith(f"got {value[:40] + ('...' if len(value) > 40 else '')!r}"), error


def test_a_repeated_key_header_is_refused_with_400(shared: SharedStore) -> None:
    key = str(uuid.uuid4())
    headers = [*PREDICT.headers, ("Idempotency-Key", key), ("Idempotency-Key", key)]
    answer = exchange(shared.new.port, raw_request("POST", PREDICT.path, headers, PREDICT.one_row))
    assert answer.status == 400
    assert answer.error() == "repeated Idempotency-Key header: send it once"
    assert shared.count(key) == 0


def test_the_key_in_either_case_or_quoted_is_one_key(shared: SharedStore) -> None:
    key = str(uuid.uuid4())
    first = keyed_predict(shared.new, [SETOSA], key.upper())
    assert first.status == 200, first.body
    assert first.json()["request_id"] == key
    assert keyed_predict(shared.new, [SETOSA], f'"{key}"').json() == first.json()
    assert shared.count(key) == 1


def test_requests_in_flight_together_with_one_key_store_one_row(shared: SharedStore) -> None:
    # While the writes are held, the first request's write waits for its lock and the others
    # queue behind it: they are committed together, in the next batch, with the first's row
    # already there.
    key = str(uuid.uuid4())
    with ThreadPoolExecutor(max_workers=6) as pool, shared.writes_held():
        first = pool.submit(keyed_predict, shared.new, [SETOSA], key)
        eventually(lambda: waiting_writes(shared.new) >= 1, "the first write waiting", 10)
        others = [pool.submit(keyed_predict, shared.new, [SETOSA], key) for _ in range(4)]
        other = pool.submit(keyed_predict, shared.new, [VIRGINICA], key)
        eventually(lambda: waiting_writes(shared.new) >= 6, "every write waiting", 10)
    replies = [first.result(timeout=30), *(f.result(timeout=30) for f in others)]
    assert {r.status for r in replies} == {200}, [r.body for r in replies]
    assert all(r.json() == replies[0].json() for r in replies)
    assert other.result(timeout=30).status == 422
    assert shared.count(key) == 1


def waiting_writes(gateway: ServiceProcess) -> int:
    """Requests the gateway has in flight (its own gauge)."""
    return int(metric(gateway, "mlstack_gateway_requests_in_flight"))


def test_requests_without_a_key_are_each_stored(shared: SharedStore) -> None:
    first, second = (predict(shared.new.url, [SETOSA]) for _ in range(2))
    assert first.status == second.status == 200
    assert first.json()["request_id"] != second.json()["request_id"]
    assert shared.count(first.json()["request_id"]) == 1
    assert shared.count(second.json()["request_id"]) == 1


@contextlib.contextmanager
def absent_standby(dsn: str) -> Iterator[None]:
    """A server whose commits wait for a synchronous standby that never comes (none is named
    so); waiting no more on the way out, when every commit still waiting completes."""
    query(dsn, "ALTER SYSTEM SET synchronous_standby_names = 'absent_standby'")
    query(dsn, "SELECT pg_reload_conf()")
    try:
        yield
    finally:
        query(dsn, "ALTER SYSTEM RESET synchronous_standby_names")
        query(dsn, "SELECT pg_reload_conf()")


def test_a_retry_after_a_503_whose_commit_landed_later_gets_its_answer(
    model_server: ServiceProcess, log_dir: Path
) -> None:
    # The first request's commit waits for its standby past DB_WRITE_TIMEOUT_SECONDS: 503. Its
    # wait is then cancelled, and the commit stays local: the prediction is stored, under the
    # key the client sent, on the primary alone. Once no standby is named, a retry gets it.
    with throwaway_postgres() as server:
        dsn = server.dsn()
        gateway = gateway_as_its_role(model_server.url, log_dir, dsn, write_timeout=1)
        key = str(uuid.uuid4())
        try:
            with absent_standby(dsn):
                first = keyed_predict(gateway, [SETOSA, VIRGINICA], key)
                assert first.refused_with_retry_after, (first.status, first.body)
                eventually(lambda: stored_rows(dsn, key) == 1, "the first commit landed", 10)
                assert not query(dsn, WAITING_FOR_STANDBY)
            retry = keyed_predict(gateway, [SETOSA, VIRGINICA], key)
            assert retry.status == 200, retry.body
            answer = retry.json()
            assert answer["request_id"] == key
            row = query(dsn, "SELECT predictions::text FROM predictions WHERE request_id = $1", key)
            assert answer["predictions"] == [int(p) for p in row[0][0].strip("[]").split(",")]
            assert stored_rows(dsn, key) == 1
        finally:
            gateway.stop()


def stored_rows(dsn: str, request_id: str) -> int:
    sql = "SELECT count(*) FROM predictions WHERE request_id = $1::uuid"
    return int(query(dsn, sql, request_id)[0][0])


def test_a_row_found_on_the_primary_alone_is_answered_once_the_standby_has_it(
    model_server: ServiceProcess, log_dir: Path
) -> None:
    # A real synchronous standby, whose commits confirm once it has replayed them
    # (remote_apply), with its replay paused: a commit waits for it. The first request's wait is
    # cancelled (503): its row is on the primary alone. A retry with the key must not be
    # answered 200 while that is so, even by a gateway whose model is away; once the standby
    # replays again, it is, and the standby has the row the moment the retry is answered.
    with synchronous_pair() as (dsn, standby):
        gateway = gateway_as_its_role(model_server.url, log_dir, dsn, write_timeout=2)
        away = gateway_as_its_role(nothing_listens(), log_dir, dsn, 2, "live")
        key = str(uuid.uuid4())
        try:
            assert predict(gateway.url, [SETOSA]).status == 200  # the standby confirms
            with standby.replay_paused():
                with ThreadPoolExecutor(max_workers=1) as pool:
                    first = pool.submit(keyed_predict, gateway, [SETOSA], key)
                    eventually(lambda: query(dsn, WAITING_FOR_STANDBY), "a commit waiting", 10)
                    query(dsn, f"SELECT pg_cancel_backend(pid) FROM ({WAITING_FOR_STANDBY}) w")
                    reply = first.result(timeout=30)
                assert reply.refused_with_retry_after, (reply.status, reply.body)
                assert stored_rows(dsn, key) == 1, "the row was to be on the primary"
                # The retry's own commit waits for the standby, which does not replay.
                retry = keyed_predict(gateway, [SETOSA], key)
                assert retry.status != 200, retry.body
                assert retry.refused_with_retry_after, (retry.status, retry.body)
                retry = keyed_predict(away, [SETOSA], key)
                assert retry.refused_with_retry_after, (retry.status, retry.body)
                assert stored_rows(standby.dsn(), key) == 0
                # The gateways cancelled the waits that ran out of time: none is left.
                eventually(
                    lambda: not query(dsn, WAITING_FOR_STANDBY), "no commit left waiting", 10
                )
            retry = keyed_predict(away, [SETOSA], key)
            assert retry.status == 200, retry.body
            assert retry.json()["request_id"] == key
            assert stored_rows(standby.dsn(), key) == 1
            assert keyed_predict(gateway, [SETOSA], key).json() == retry.json()
            assert stored_rows(dsn, key) == 1
        finally:
            gateway.stop()
            away.stop()
