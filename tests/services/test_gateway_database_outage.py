"""The gateway while its PostgreSQL is killed (SIGKILL of all its processes, as when the node
loses the pod) or refuses writes (as a demoted primary does during a switchover) under concurrent
predictions and history reads, then back: every answer is 200 or 503 with Retry-After, never a
500; every 200 prediction is stored; the outage is one warning line in the gateway's log, not a
traceback per retry or a line per request."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.http import refused_with_retry_after
from harness.postgres import PostgresServer, query
from harness.processes import children, exists
from harness.services import SETOSA, ServiceProcess, start_gateway
from tests.services.support import history, predict, stored, throwaway_postgres

PREDICTORS = 12
READERS = 4


@dataclass(frozen=True)
class Answer:
    endpoint: str  # "predict" | "history"
    at: float  # time.monotonic() when the answer came
    status: int  # 0: no HTTP answer at all (the connection failed)
    retry_after: str | None
    detail: str  # the request id of a 200 prediction, the body (or error) otherwise


class Traffic:
    """Clients on threads sending predictions and history reads back to back, each answer kept."""

    def __init__(self, gateway: ServiceProcess) -> None:
        self._gateway = gateway
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.answers: list[Answer] = []
        self._pool = ThreadPoolExecutor(max_workers=PREDICTORS + READERS)

    def __enter__(self) -> Traffic:
        for _ in range(PREDICTORS):
            self._pool.submit(self._loop, "predict", self._predict)
        for _ in range(READERS):
            self._pool.submit(self._loop, "history", self._history)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True)

    def _predict(self) -> tuple[int, str | None, str]:
        reply = predict(self._gateway.url, [SETOSA])
        detail = reply.json()["request_id"] if reply.status == 200 else reply.body.decode()
        return reply.status, reply.headers.get("retry-after"), detail

    def _history(self) -> tuple[int, str | None, str]:
        reply = history(self._gateway, "?limit=5")
        detail = "" if reply.status == 200 else reply.body.decode()
        return reply.status, reply.headers.get("retry-after"), detail

    def _loop(self, endpoint: str, send: Callable[[], tuple[int, str | None, str]]) -> None:
        while not self._stop.is_set():
            try:
                status, retry_after, detail = send()
            except (OSError, ValueError, KeyError) as exc:
                # No HTTP answer, or a 200 whose body is not the answer: a failure to count,
                # not an error that would end this client's thread unseen.
                status, retry_after, detail = 0, None, repr(exc)
            with self._lock:
                self.answers.append(Answer(endpoint, time.monotonic(), status, retry_after, detail))

    def answered(self, endpoint: str, status: int, since: float) -> Callable[[], bool]:
        """A check: whether ``endpoint`` has answered ``status`` after ``since``."""

        def check() -> bool:
            with self._lock:
                return any(
                    a.endpoint == endpoint and a.status == status and a.at > since
                    for a in self.answers
                )

        return check


@contextlib.contextmanager
def under_traffic(
    model_server: ServiceProcess, log_dir: Path, **env: str
) -> Iterator[tuple[ServiceProcess, Traffic]]:
    """A gateway on the database `env` names, under Traffic from the moment it answers
    predictions; stopped on the way out, its log left to read. Many idle pool connections when
    the server goes: each one the server tells it is ending is one that a request may be given
    before the socket's close is seen. An outage outlasts the write timeout, so that predictions
    are refused during it."""
    gateway = start_gateway(
        model_server.url, log_dir, "ready", DB_POOL_SIZE="8", DB_WRITE_TIMEOUT_SECONDS="1", **env
    )
    try:
        with Traffic(gateway) as traffic:
            gateway.wait_for("answering predictions", traffic.answered("predict", 200, 0.0))
            time.sleep(0.5)
            yield gateway, traffic
    finally:
        gateway.stop()


@pytest.fixture
def database() -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own: killing it leaves the other tests' server alone."""
    with throwaway_postgres() as server:
        yield server


def test_a_killed_database_leaves_none_of_its_processes(database: PostgresServer) -> None:
    """What the tests here kill: the postmaster and every backend and worker at once (each a
    session of its own), all gone when kill() returns, and a server that starts again."""
    family = [database.pid, *children(database.pid)]
    assert len(family) > 1, "the server was to have workers"
    database.kill()
    assert [pid for pid in family if exists(pid)] == []
    database.start()
    assert query(database.dsn(), "SELECT 1")[0][0] == 1


@pytest.mark.parametrize("read_url", [False, True], ids=["primary", "and-read-url"])
def test_killed_database_costs_503s_with_retry_after_and_no_500(
    read_url: bool, database: PostgresServer, model_server: ServiceProcess, log_dir: Path
) -> None:
    dsn = database.dsn()
    # With a read URL on the same server, a history read tries it first, then the primary.
    read_env = {"DATABASE_READ_URL": dsn if read_url else ""}
    with under_traffic(model_server, log_dir, DATABASE_URL=dsn, **read_env) as (gateway, traffic):
        killed = time.monotonic()
        database.kill()
        for endpoint in ("predict", "history"):
            gateway.wait_for(f"refusing {endpoint}", traffic.answered(endpoint, 503, killed))
        database.start()
        restarted = time.monotonic()
        for endpoint in ("predict", "history"):
            gateway.wait_for(
                f"answering {endpoint} again", traffic.answered(endpoint, 200, restarted)
            )
    answers = traffic.answers

    assert_only_200s_and_503s_with_retry_after(answers)
    assert_every_200_stored(answers, dsn)
    assert_refusals_name_nothing_of_the_database(answers, database)
    went_away = outage_lines(gateway)
    # One outage: one line for the primary (and one for the read URL, when there is one), and
    # one when the primary answers again (the read URL's may come after the traffic stopped).
    servers = sorted(line.split(" unavailable (")[0].rpartition(": ")[2] for line in went_away)
    expected = ["PostgreSQL", "PostgreSQL read URL"] if read_url else ["PostgreSQL"]
    assert servers == expected, "\n".join(went_away[:20])
    again = answered_again(gateway)
    assert again.count("PostgreSQL") == 1 and set(again) <= set(expected), gateway.log_tail()


def test_database_refusing_writes_costs_503s_with_retry_after_and_no_500(
    database: PostgresServer, model_server: ServiceProcess, log_dir: Path
) -> None:
    """A switchover's former primary: read-only (in recovery, or demoted by configuration), it
    fails each INSERT with "cannot execute INSERT in a read-only transaction" (25006) on the
    connections the gateway opens again after the server ended its old ones. Predictions are
    refused with 503 until the server takes writes again; history reads go on."""
    dsn = database.dsn()
    with under_traffic(model_server, log_dir, DATABASE_URL=dsn) as (gateway, traffic):
        demoted = time.monotonic()
        set_read_only(database, True)
        gateway.wait_for("refusing predictions", traffic.answered("predict", 503, demoted))
        gateway.wait_for("answering history", traffic.answered("history", 200, demoted))
        set_read_only(database, False)
        lifted = time.monotonic()
        gateway.wait_for("answering predictions again", traffic.answered("predict", 200, lifted))
    answers = traffic.answers

    assert_only_200s_and_503s_with_retry_after(answers)
    assert_every_200_stored(answers, dsn)
    refused = [line for line in outage_lines(gateway) if "read-only" in line]
    assert len(refused) == 1, "\n".join(outage_lines(gateway)[:20])


def set_read_only(database: PostgresServer, read_only: bool) -> None:
    """Make the server refuse writes (or take them again) in every session, as one in recovery
    does, and end its clients' connections, as Patroni's demotion of the old primary does."""
    # A superuser's session of its own that may write: ALTER SYSTEM is not allowed in a
    # read-only transaction.
    admin = database.dsn() + "?options=-c%20default_transaction_read_only%3Doff"
    if read_only:
        query(admin, "ALTER SYSTEM SET default_transaction_read_only = on")
    else:
        query(admin, "ALTER SYSTEM RESET default_transaction_read_only")
    query(admin, "SELECT pg_reload_conf()")
    if read_only:
        query(
            admin,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )


def assert_only_200s_and_503s_with_retry_after(answers: list[Answer]) -> None:
    wrong = [
        a
        for a in answers
        if a.status != 200 and not refused_with_retry_after(a.status, a.retry_after)
    ]
    counts = {
        (endpoint, status): sum(a.endpoint == endpoint and a.status == status for a in answers)
        for endpoint in ("predict", "history")
        for status in sorted({a.status for a in answers})
    }
    assert not wrong, f"{len(wrong)} answers neither 200 nor 503+Retry-After {counts}: {wrong[:5]}"


def assert_refusals_name_nothing_of_the_database(
    answers: list[Answer], database: PostgresServer
) -> None:
    """What a client reads of a refusal is the gateway's words, not the driver's or the server's,
    which can name the database's address ("Connect call failed ('10.42.0.7', 5432)"), its
    files or its state (the gateway's log has them)."""
    said = {json.loads(a.detail)["error"] for a in answers if a.status == 503}
    assert said
    driver_words = ("Errno", "Connect call", "DETAIL", "database system", "127.0.0.1")
    telling = [
        text
        for text in said
        if any(words in text for words in driver_words) or str(database.port) in text
    ]
    assert not telling, telling


def assert_every_200_stored(answers: list[Answer], dsn: str) -> None:
    acknowledged = [a.detail for a in answers if a.endpoint == "predict" and a.status == 200]
    assert stored(dsn, acknowledged) == len(acknowledged)


def answered_again(gateway: ServiceProcess) -> list[str]:
    """The servers the gateway's log says answer again, a line each."""
    log = gateway.log_path.read_text(errors="replace")
    # Not the outage lines' "... until it answers again".
    said = (
        re.fullmatch(r"\w+ mlstack_gateway\.store: ([^;()]+) answers again", line)
        for line in log.splitlines()
    )
    return [match[1] for match in said if match]


def outage_lines(gateway: ServiceProcess) -> list[str]:
    """The gateway log's lines saying that a server went away, once the log has no traceback."""
    log = gateway.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]
    return [line for line in log.splitlines() if " unavailable (" in line]
