"""The gateway on PostgreSQL when the server refuses it for want of resources or of a lock in
time, refuses its password (a rotation under way), or cannot confirm that a synchronous standby
has a write: what a client and an operator get is what they get for any database that is away
(503 with Retry-After, never a 500, never a 200 for a row that only the primary may have)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import asyncpg
import pytest
from mlstack_gateway.stores.postgres import COMMIT_ORDER_LOCK_KEY

from harness.http import Reply
from harness.poll import eventually
from harness.postgres import PostgresServer, on_connection, query
from harness.services import API_KEY, SETOSA, ServiceProcess, start_gateway
from tests.services.support import (
    history,
    metric,
    new_prediction,
    password_role_url,
    predict,
    throwaway_postgres,
)

# A login role of these tests' own on the session's PostgreSQL, owning a database named after it.
ROLE = "gateway_refusals"
PASSWORD = "audit-role-password-1"


@pytest.fixture(scope="module")
def role_url(postgres: PostgresServer) -> str:
    return password_role_url(postgres, ROLE, PASSWORD)


class Refusal(NamedTuple):
    # A login role of the test's own, the SQL that refuses it a new connection, the SQL that
    # admits it again ({role}, {password}: its name and password).
    role: str
    refuse: str
    admit: str


@pytest.mark.parametrize(
    "refusal",
    [
        # "too many connections" (SQLSTATE 53300) is what a server with every slot taken answers
        # a new connection, as after a failover when every gateway replica reconnects at once.
        Refusal("gateway_slots", "ALTER ROLE {role} CONNECTION LIMIT 0",
                "ALTER ROLE {role} CONNECTION LIMIT -1"),
        # A rotation of the stack's `databasePassword`: the primary takes the new password while
        # the gateway's pods that still have the old one drain. Their open connections go on; a
        # new one is refused. With the password they have again, they answer 200 again.
        Refusal("gateway_rotated", "ALTER ROLE {role} PASSWORD 'rotated-role-password-2'",
                "ALTER ROLE {role} PASSWORD '{password}'"),
    ],
    ids=["out-of-connection-slots", "password-rotated"],
)  # fmt: skip
def test_a_new_connection_refused_under_a_running_gateway_costs_503s_with_retry_after_not_500s(
    refusal: Refusal, model_server: ServiceProcess, postgres: PostgresServer, log_dir: Path
) -> None:
    """A gateway answers, then the server refuses its role a new connection (`refuse`, and the
    role's connections ended, so that the next request must open one): predictions and history
    reads are 503s with Retry-After, none a 500. Once the server admits it again (`admit`),
    predictions are answered 200 again."""
    role = refusal.role
    password = f"{role}-password-1"
    url = password_role_url(postgres, role, password)
    gateway = start_gateway(
        model_server.url, log_dir, DATABASE_URL=url, DB_WRITE_TIMEOUT_SECONDS="1"
    )
    admin = postgres.dsn()
    admitted = refusal.admit.format(role=role, password=password)
    try:
        new_prediction(gateway)
        query(admin, refusal.refuse.format(role=role))
        query(
            admin, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
        )
        for reply in (predict(gateway.url, [SETOSA]), history(gateway, "?limit=5")):
            assert reply.refused_with_retry_after, (reply.status, reply.headers, reply.body)
        assert (
            metric(gateway, "mlstack_gateway_requests_total", endpoint="predict", status="500") == 0
        )
        query(admin, admitted)
        gateway.wait_for(
            "predictions answered again", lambda: predict(gateway.url, [SETOSA]).status == 200
        )
    finally:
        query(admin, admitted)
        gateway.stop()


def test_a_write_whose_turn_outwaits_the_lock_timeout_costs_a_503_not_a_500(
    model_server: ServiceProcess, postgres: PostgresServer, log_dir: Path
) -> None:
    # Each write waits for its turn to commit (the history's order), a lock; a database whose
    # lock_timeout ends that wait refuses the write for now, as a statement_timeout would.
    dsn = postgres.create_database("refusals_lock_timeout")
    query(dsn, "ALTER DATABASE refusals_lock_timeout SET lock_timeout = '100ms'")
    gateway = start_gateway(
        model_server.url, log_dir, DATABASE_URL=dsn, DB_WRITE_TIMEOUT_SECONDS="1"
    )
    try:
        new_prediction(gateway)

        async def predict_while_another_commits(conn: asyncpg.Connection) -> Reply:
            await conn.execute("SELECT pg_advisory_lock($1)", COMMIT_ORDER_LOCK_KEY)
            return await asyncio.to_thread(predict, gateway.url, [SETOSA])

        reply = on_connection(dsn, predict_while_another_commits)
        assert reply.refused_with_retry_after, (reply.status, reply.body)
        assert (
            metric(gateway, "mlstack_gateway_requests_total", endpoint="predict", status="500") == 0
        )
        new_prediction(gateway)
    finally:
        gateway.stop()


def standby_wait_ended(
    model_server: ServiceProcess, log_dir: Path, end_wait: str, database_settings: str = ""
) -> None:
    """On a PostgreSQL of its own (given ``database_settings``, ALTER DATABASE's, first): a
    prediction whose commit waits for a synchronous standby that never comes, until
    ``end_wait`` ends the wait, must not be answered 200 (and later ones are, once no standby
    is awaited)."""
    # A commit waits for the synchronous standby after it is on the primary's disk. Its wait
    # ended before the standby confirmed, PostgreSQL warns that it "has already committed
    # locally, but might not have been replicated": the row is on the primary alone, and a 200
    # for it would be lost with the primary.
    with throwaway_postgres() as server:
        dsn = server.dsn()
        if database_settings:
            query(dsn, f"ALTER DATABASE postgres SET {database_settings}")
        gateway = start_gateway(
            model_server.url, log_dir, DATABASE_URL=dsn, DB_WRITE_TIMEOUT_SECONDS="10"
        )
        try:
            new_prediction(gateway)
            query(dsn, "ALTER SYSTEM SET synchronous_standby_names = 'absent_standby'")
            query(dsn, "SELECT pg_reload_conf()")
            with ThreadPoolExecutor(max_workers=1) as pool:
                # A resend that finds its rows waits for the standby again, until the write's
                # time (DB_WRITE_TIMEOUT_SECONDS) is up: longer than the client's default.
                answer = pool.submit(predict, gateway.url, [SETOSA], API_KEY, 30)
                waiting = "SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
                eventually(lambda: query(dsn, waiting), "a commit waiting for its standby", 10)
                query(dsn, f"SELECT {end_wait}(pid) FROM ({waiting}) AS w")
                reply = answer.result(timeout=30)
            stored = query(dsn, "SELECT count(*) FROM predictions")[0][0]
            assert stored == 2, "the commit was to be on the primary's disk"
            assert reply.refused_with_retry_after, (reply.status, reply.body)
            # With no synchronous standby to wait for, writes are answered 200 again.
            query(dsn, "ALTER SYSTEM RESET synchronous_standby_names")
            query(dsn, "SELECT pg_reload_conf()")
            new_prediction(gateway)
        finally:
            gateway.stop()
        # No listener was left on a connection going back to the pool (asyncpg warns of one).
        log = gateway.log_path.read_text(errors="replace")
        assert "listener" not in log, log[-3000:]


@pytest.mark.parametrize(
    "end_wait",
    [
        # Its backend ended (as a restart in place ends it): the connection is lost, and the
        # gateway sends the rows again.
        "pg_terminate_backend",
        # The wait cancelled (by an operator, or a statement_timeout): the COMMIT returns as a
        # success, with the warning only.
        "pg_cancel_backend",
    ],
)
def test_a_write_its_synchronous_standby_never_confirmed_is_not_answered_200(
    model_server: ServiceProcess, log_dir: Path, end_wait: str
) -> None:
    standby_wait_ended(model_server, log_dir, end_wait)


def test_a_cancelled_standby_wait_is_heard_from_a_database_that_sends_no_warnings(
    model_server: ServiceProcess, log_dir: Path
) -> None:
    # A database (or a role) may send its clients errors only (client_min_messages): the
    # warning that a commit's standby wait was cancelled must reach the gateway all the same.
    standby_wait_ended(model_server, log_dir, "pg_cancel_backend", "client_min_messages = error")
