"""PostgreSQL store: the primary's asyncpg pool (group commit, migrations under an advisory lock,
the health ping) and, with DATABASE_READ_URL, a small pool on the hot standbys for history reads.

With DATABASE_MIGRATE=false the gateway changes no schema: it only checks that the migrations it
needs have been applied (by ``migrate_database``, ``python -m mlstack_gateway.migrate``), and
until they have, it treats the primary as not connected yet (503 with Retry-After).

A history read (``recent``) served by a standby sees what the standby has replayed. The read's
own statement also measures the standby's replay lag (one round trip, one snapshot), and the
read goes to the primary instead when that lag is above DATABASE_READ_MAX_LAG_SECONDS or unknown.
So while a standby streams from its primary, a history read it serves misses no transaction the
primary committed more than DATABASE_READ_MAX_LAG_SECONDS before the read, save WAL that has
not reached it: a standby that has replayed all it received counts as 0 behind, and one whose
stream stalls without breaking (a network that drops packets, a stopped WAL receiver) still
streams as far as it can tell, 0 behind, until wal_receiver_timeout ends the stream. A
standby that loses its primary stops streaming, its lag is unknown, and reads go to the primary.
A page after a cursor is read on a standby only if it has replayed the row the cursor names (the
last of a page the primary, or a standby further ahead, may have answered): else the primary
answers it, and paging lists every older prediction (see _recent_within_lag).
Read-your-writes holds only on the primary: a prediction just answered 200 may be missing from a
list a standby serves. The lag is the standby's clock minus the primary's commit time of the
last replayed transaction, so clocks out of step between the two hosts shift it.

Seeing the WAL receiver's state takes superuser or pg_read_all_stats (pg_monitor), which the
role the gateway serves as is not given: on a database made by services/database/roles.sql the
lag comes from mlstack_monitor.replay_lag_seconds() instead, a function that runs as the
superuser and tells only that. Where that function is not there (or the role may not call it),
the lag is measured by the read itself, and for a role with neither privilege it is unknown:
every read goes to the primary (counted as ``unknown_lag``).

A server that goes away costs requests a 503, never a 500 (see ``_on_connection``), and so does
one that answers but refuses writes, as a failover's former primary does, or refuses a new
connection the password it was given, as a primary that took a rotated one does (see
``_is_transient``); each costs the log one line when it stops answering (or writing) and one
when it does again, not a line per request or retry. So does one that lacks what this gateway
needs, a database recreated empty (``_not_set_up``): the gateway then connects again as at
start, and waits for its schema as at start (with DATABASE_MIGRATE=false, for the migrations).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import asyncpg
from mlstack_common.backoff import Backoff

from mlstack_gateway.breaker import CircuitBreaker
from mlstack_gateway.history import (
    NEWEST,
    ROW_OVERHEAD_BYTES,
    HistoryPage,
    PageBuilder,
    item_room,
)
from mlstack_gateway.metrics import GatewayMetrics
from mlstack_gateway.settings import GatewaySettings
from mlstack_gateway.stores.base import (
    PredictionRecord,
    StoredPrediction,
    StoreUnavailableError,
    history_item,
)
from mlstack_gateway.stores.group_commit import GroupCommitter, firsts, keyed_not_inserted
from mlstack_gateway.stores.migrations import APPLIED, migrate

log = logging.getLogger("mlstack_gateway.store")

R = TypeVar("R")

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE IF NOT EXISTS predictions (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            request_id UUID NOT NULL UNIQUE,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            model_name TEXT NOT NULL,
            model_version TEXT NOT NULL,
            instances JSONB NOT NULL,
            predictions JSONB NOT NULL,
            latency_ms DOUBLE PRECISION NOT NULL
        )
        """,
    ),
]
# The advisory-lock key every replica takes to migrate, so that one migrates at a time.
MIGRATION_LOCK_KEY = 0x6D6C737461636B  # "mlstack"

# The advisory lock each write takes before its rows get their ids, and holds until its
# commit: the history's order (by id) is then the order of the commits (see _INSERT).
COMMIT_ORDER_LOCK_KEY = MIGRATION_LOCK_KEY + 1
# One statement, one round trip, one commit for the whole group. ON CONFLICT makes a resend
# after an ambiguous failure (connection lost during COMMIT) harmless: no row twice (and see
# _insert for what such a resend confirms).
# The history is paged by id (history.py), so ids must be given in commit order: a row that
# became visible after a page was read, with an id below that page's cursor, would be listed
# below rows the client has already passed, and it would never see it. An identity column gives
# ids as rows are inserted, and writes of several gateways (each one commit at a time) overlap:
# one whose commit takes longer (a larger batch, a slower wait for the synchronous standby)
# commits ids below those of another that has already committed. So each write first takes
# COMMIT_ORDER_LOCK_KEY: every row is joined to ``turn`` before it is inserted, which takes the
# lock once, before the first id is drawn; PostgreSQL releases a transaction's locks once its
# commit is visible (to the standbys too, which replay commits in their WAL order). The cost:
# the gateways' commits, rather than each gateway's, are one at a time, each taking every row
# that arrived meanwhile.
_INSERT = f"""
WITH turn AS MATERIALIZED (SELECT pg_advisory_xact_lock({COMMIT_ORDER_LOCK_KEY}))
INSERT INTO predictions
    (request_id, model_name, model_version, instances, predictions, latency_ms)
SELECT rows.* FROM turn CROSS JOIN
    unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[], $6::float8[]) AS rows
ON CONFLICT (request_id) DO NOTHING
"""
# _INSERT for a batch that holds a keyed record (an Idempotency-Key's), whose request_id may be
# stored already, by an earlier request with the key: the same lock, one statement and one
# commit, as _INSERT (what follows in _upsert are statements of their own, so that the lock is
# never held while the server waits for the gateway). $7 says which rows are the first with
# their request_id in the batch (group_commit.firsts): only those are inserted, as one statement
# may not write a row twice. The answer names the rows inserted: the others were found.
_INSERT_FIRSTS = f"""
WITH turn AS MATERIALIZED (SELECT pg_advisory_xact_lock({COMMIT_ORDER_LOCK_KEY}))
INSERT INTO predictions
    (request_id, model_name, model_version, instances, predictions, latency_ms)
SELECT s.request_id, s.model_name, s.model_version, s.instances, s.predictions, s.latency_ms
FROM turn CROSS JOIN unnest(
    $1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[], $6::float8[], $7::bool[]
) AS s (request_id, model_name, model_version, instances, predictions, latency_ms, first)
WHERE s.first
ON CONFLICT (request_id) DO NOTHING
RETURNING request_id::text
"""
# A row found is confirmed only by a commit that waits for the synchronous standby. A row is
# found once it is visible, that is once its commit record is in the WAL (and on the primary's
# disk, but if its commit's synchronous_commit was off), whether or not its synchronous standby
# confirmed it: its wait may have been cancelled (_StandbyWait), or its backend ended (_insert).
# An insert that found a row and inserted none takes no transaction id, and PostgreSQL commits
# a transaction without one with no commit record and without waiting for any standby: it
# would confirm nothing. This transactional WAL message (which any role may write, and nothing
# reads), in a transaction of its own after the insert, takes a transaction id and writes WAL,
# so its commit writes a commit record, flushes the WAL to it and, with a synchronous standby,
# waits until the standby has it. The WAL is one sequence, written, flushed and streamed in
# order, and every row found was committed before the insert returned (it waits for one still
# being inserted): this commit's record comes after theirs, and the standby confirming it has
# those too. (The gateway's role may not UPDATE a row, services/database/roles.sql, so
# rewriting the rows found is no way to the same end.)
_WRITE_COMMIT_RECORD = "SELECT pg_logical_emit_message(true, 'mlstack', 'rows found')"
# What the keyed rows $1 hold, by their place in the batch ($3): whether they have the
# instances sent ($2; jsonb equality: numbers by value), and whether they are exactly the rows
# sent ($4 to $6 too, the latency included: a row a resend finds that its own lost try stored).
# A statement of its own after _INSERT_FIRSTS, so its snapshot holds every row that one found.
_FOUND = """
SELECT s.n, p.model_version, p.predictions::text, p.instances = s.instances,
       p.model_version = s.model_version AND p.predictions = s.predictions
           AND p.latency_ms = s.latency_ms AND p.instances = s.instances
FROM unnest($1::uuid[], $2::jsonb[], $3::int[], $4::text[], $5::jsonb[], $6::float8[])
    AS s (request_id, instances, n, model_version, predictions, latency_ms)
JOIN predictions AS p USING (request_id)
"""
# What one keyed request stored ($1), and whether it has the instances sent ($2), for a retry
# the model does not answer (_stored).
_STORED = """
SELECT model_version, predictions::text, instances = $2::jsonb
FROM predictions WHERE request_id = $1::uuid
"""
# A page of history: the rows below $1, newest first, at most $2 of them and (the first always)
# as many as $3 bytes of items hold, each weighing its text columns plus $4 (ROW_OVERHEAD_BYTES).
# ``sized`` walks the index one row at a time, measuring each row on the server, and stops at the
# first row that does not fit (or the one after $2): no row beyond it is read, and only the rows
# that fit are sent. ``older``: whether a row older than this one was found (a next page).
# {within_lag}: a further condition, for _recent_within_lag.
_SIZED = """
sized (id, n, bytes) AS (
    (SELECT id, 1, {size} FROM predictions WHERE id < $1 {within_lag} ORDER BY id DESC LIMIT 1)
    UNION ALL
    (SELECT older.id, sized.n + 1, sized.bytes + older.size
     FROM sized CROSS JOIN LATERAL (
         SELECT id, {size} AS size FROM predictions WHERE id < sized.id ORDER BY id DESC LIMIT 1
     ) AS older
     WHERE sized.n <= $2 AND (sized.n = 1 OR sized.bytes + sized.n * $4 <= $3))
)
""".replace(
    "{size}",
    "octet_length(instances::text) + octet_length(predictions::text)"
    " + octet_length(model_name) + octet_length(model_version)",
)
# The instances as compact JSON: jsonb keeps numbers as numeric, whose text has no exponent
# (1e300 is 301 digits), so a row's ``instances::text`` could weigh many times the body it came
# in; as float8 (what the gateway parsed them into) each number takes its shortest form. The
# rows' width is one per prediction, so the rows make a two-dimensional array. ``sized``
# measures ``instances::text``, mostly longer: the page builder measures what is sent, and ends
# the page where that would pass the budget.
_INSTANCES = """array_to_json(ARRAY(
    SELECT ARRAY(
        SELECT x::float8 FROM jsonb_array_elements_text(r.value) WITH ORDINALITY AS x(x, i)
        ORDER BY x.i
    ) FROM jsonb_array_elements(p.instances) WITH ORDINALITY AS r(value, i) ORDER BY r.i
))::text"""
_PAGE_ROWS = f"""
SELECT p.request_id::text, p.created_at, p.model_name, p.model_version,
       {_INSTANCES}, p.predictions::text, p.latency_ms, p.id AS id,
       sized.n < (SELECT max(n) FROM sized) AS older
FROM sized JOIN predictions AS p ON p.id = sized.id
WHERE sized.n <= $2 AND (sized.n = 1 OR sized.bytes + sized.n * $4 <= $3)
"""
_RECENT = f"WITH RECURSIVE {_SIZED.format(within_lag='')} {_PAGE_ROWS} ORDER BY p.id DESC"
# The server's replay lag in seconds (NULL: unknown). A primary is 0 behind itself; a standby
# whose WAL receiver is not streaming cannot say how far behind it is; one that has replayed all
# it received is behind by the WAL in flight only. Seen by superuser or pg_read_all_stats only:
# for any other role pg_stat_wal_receiver's status is NULL, and so is this.
_LAG = """CASE
        WHEN NOT pg_is_in_recovery() THEN 0.0
        WHEN NOT EXISTS (SELECT FROM pg_stat_wal_receiver WHERE status = 'streaming') THEN NULL
        WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0.0
        -- Behind, and no transaction replayed since it started: by how much cannot be told.
        WHEN pg_last_xact_replay_timestamp() IS NULL THEN NULL
        -- At least 0: a standby whose clock is behind the primary's may measure less.
        ELSE greatest(0.0, extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()))
    END::float8"""
# The same lag for any role roles.sql lets call it: _LAG in a function that runs as the
# superuser (services/database/roles.sql; the two are kept alike).
_LAG_FUNCTION = "mlstack_monitor.replay_lag_seconds()"
# Whether this server has that function and this role may call it.
_HAS_LAG_FUNCTION = """
SELECT EXISTS (
    SELECT FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
    WHERE n.nspname = 'mlstack_monitor' AND p.proname = 'replay_lag_seconds' AND p.pronargs = 0
      AND has_schema_privilege(n.oid, 'USAGE') AND has_function_privilege(p.oid, 'EXECUTE')
)
"""


def _recent_within_lag(lag: str) -> str:
    """_PAGE_ROWS's columns plus the server's replay lag in seconds as ``lag`` gives it and
    whether the server is behind the cursor $1, with rows only when that lag is at most $5 and it
    is not: one row of NULLs, the lag and ``behind`` otherwise, or when there are none. Both are
    measured while the statement runs, on the snapshot the rows come from.

    Behind the cursor: it has not replayed the row the cursor names, the last of a page that a
    server further ahead answered (the primary, or another standby). Ids follow the commits
    (_INSERT), so a server that has a row with an id at or above the cursor has every row below
    it, and one that has none may lack rows below it that the client has never seen; NEWEST
    (the first page) names no row."""
    return f"""
WITH RECURSIVE lag AS (
    SELECT {lag} AS seconds,
           $1 < {NEWEST} AND NOT EXISTS (SELECT FROM predictions WHERE id >= $1) AS behind
),
{_SIZED.format(within_lag="AND (SELECT seconds <= $5 AND NOT behind FROM lag)")}
SELECT page.*, lag.seconds, lag.behind
FROM lag LEFT JOIN LATERAL ({_PAGE_ROWS}) AS page ON true
ORDER BY page.id DESC
"""


_RECENT_WITHIN_LAG = _recent_within_lag(_LAG)
_RECENT_WITHIN_LAG_FROM_FUNCTION = _recent_within_lag(_LAG_FUNCTION)
# What one history read, or one readiness ping, may spend on the primary.
_READ_SECONDS = 5.0
_PING_SECONDS = 1.0
# Where _recent_within_lag's lag is, and whether the server is behind the cursor.
_LAG_COLUMN = 9
_BEHIND_COLUMN = 10
# What one history read may spend on the read URL (acquire, connect and query) before it goes
# to the primary: a standby that is down or unreachable costs a read this much at most.
READ_ATTEMPT_SECONDS = 1.0
# How long a keyed retry's look-up of what is stored may take while the model fails or is away
# (stored), its confirmation by the synchronous standby included: the model's error, when it
# stands, comes at most this long after MODEL_TIMEOUT_SECONDS (within a second at its 0.5 s).
_LOOKUP_SECONDS = 0.5
# What a connection whose operation failed is given, in the background, for asyncpg's cancel of
# a statement cut short to reach the server before the connection is closed (_on_connection).
_CANCEL_SECONDS = 2.0
# History reads are few and short.
_READ_POOL_SIZE = 2
# After this many read-URL failures in a row, reads skip it for _READ_PAUSE_SECONDS (then one
# trial read), so an unreachable standby does not add READ_ATTEMPT_SECONDS to every read.
_READ_FAILURES_BEFORE_PAUSE = 3
_READ_PAUSE_SECONDS = 5.0
# Between tries to open the first connections to a server that may still be starting (no
# bound: the caller's). A new stack's gateway is Ready before its database is, and takes
# requests once it has connected: a pause that had grown to seconds was time they got 503s.
_CONNECT_BACKOFF = Backoff(0.2, most=1.0)
# The same for the migrate command, which has nothing else to do: a new stack's migrations Job
# waits in it for the database to start.
_MIGRATE_CONNECT_BACKOFF = Backoff(0.2, most=0.5)
# Between checks of a schema found behind (DATABASE_MIGRATE=false): the migrations Job is
# applying what it lacks; a new stack's gateway serves, and a rollout's pod is Ready, at the
# next check after it has (before `pulumi up` has seen the Job end).
SCHEMA_RECHECK_SECONDS = 0.5
# Between tries of a write that failed on a connection the server lost (within
# DB_WRITE_TIMEOUT_SECONDS): short, as a failover's new primary answers within seconds.
_WRITE_BACKOFF = Backoff(0.05, most=0.5)


class SchemaBehindError(Exception):
    """The schema lacks migrations this gateway needs, and it may not apply them itself."""


class MigrationError(Exception):
    """``migrate_database`` failed; the message says why in one line (never the URL)."""


def _reason(exc: BaseException) -> str:
    """What went wrong, for the log (a timeout's message is empty)."""
    return str(exc) or type(exc).__name__


def _is_transient(exc: BaseException) -> bool:
    """Errors a restart or failover causes, after which the same write may succeed.

    A server shutting down, crashed or still starting ends or refuses connections (class 08,
    and class 57: admin_shutdown, crash_shutdown, cannot_connect_now, ...). One in recovery or
    read-only by configuration, as a failover's former primary is, takes connections and reads
    but fails each write with read_only_sql_transaction (25006), until the connection it is
    retried on reaches the new primary. One short of a resource (class 53: every connection slot
    taken, as when a failover's clients all reconnect at once, its disk or memory full) refuses
    this request, not the next one once the resource is free again. So does one whose
    lock_timeout ends a wait for a lock (lock_not_available, 55P03), as a statement_timeout's
    cancel (query_canceled, class 57) does: each write waits for its turn to commit (_INSERT),
    and a read for a migration's DDL; the statement did nothing. One that refuses the role's
    password on a new connection (invalid_password, 28P01) is in a rotation: the primary has
    the new password, and this process, which has the old one, is about to be replaced by one
    that has it (or the primary is about to take the one this process has).
    """
    if isinstance(exc, asyncpg.ClientConfigurationError):  # an InterfaceError, but permanent
        return False
    return _refuses_writes(exc) or isinstance(
        exc,
        OSError
        | TimeoutError
        | asyncpg.PostgresConnectionError
        | asyncpg.OperatorInterventionError
        | asyncpg.InsufficientResourcesError
        | asyncpg.LockNotAvailableError
        | asyncpg.InvalidPasswordError
        | asyncpg.InterfaceError,
    )


# What a server answers a role or a database it does not have (yet): a new primary makes them
# once it runs (services/database/roles.sql). InvalidPasswordError (28P01) is one of the first
# kind, but transient (_is_transient): checked first.
_ROLE_OR_DATABASE_MISSING = (asyncpg.InvalidAuthorizationSpecificationError,
                             asyncpg.InvalidCatalogNameError)  # fmt: skip


def _not_set_up(exc: BaseException) -> bool:
    """Whether ``exc`` says that the database lacks what this gateway needs, which a gateway
    that has connected finds when the database is recreated empty (not restored): the role or
    the database (roles.sql not run again yet), or the schema's tables (its migrations not run
    again). The store then treats the primary as not connected, and connects again as at start
    (PostgresStore._set_up_again), whose schema check finds what is missing. (A missing column
    in a schema whose migrations are all recorded is this gateway's bug, or a hand's: a 500.)"""
    return not _is_transient(exc) and isinstance(
        exc, (*_ROLE_OR_DATABASE_MISSING, asyncpg.UndefinedTableError)
    )


def _refuses_writes(exc: BaseException) -> bool:
    """Whether ``exc`` is a server's refusal to write: it answers, but is read-only."""
    return isinstance(exc, asyncpg.ReadOnlySQLTransactionError)


def _closed(conn: asyncpg.pool.PoolConnectionProxy) -> bool:
    """Whether asyncpg has closed ``conn``: one it closed on losing the socket is already back
    in the pool, and its proxy's methods raise InterfaceError."""
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        return True


# The connections _close_once_cancelled is closing, and the pools a store stopped using
# (PostgresStore._set_up_again) being closed: their tasks, held until they end.
_closing: set[asyncio.Task[None]] = set()


def _close_in_background(closing: Coroutine[Any, Any, None]) -> None:
    """Run `closing` on its own, its task held in _closing until it ends: the caller goes on."""
    task = asyncio.create_task(closing)
    _closing.add(task)
    task.add_done_callback(_closing.discard)


async def _close_once_cancelled(pool: asyncpg.Pool, conn: asyncpg.pool.PoolConnectionProxy) -> None:
    """Close ``conn``, whose operation failed, once the server has acknowledged asyncpg's cancel
    of the statement it cut short, if any, or after _CANCEL_SECONDS; then give its slot back.

    A statement cut short (out of time, or its task cancelled) is not over on the server until
    the cancel request asyncpg sends on a connection of its own arrives. Closing the connection
    first drops that request, and a backend does not see its client go while it waits: a commit
    waiting for a synchronous standby that does not confirm it would wait on, its connection slot
    taken, until the standby replays or Patroni drops it. asyncpg makes a statement wait for the
    connection's cancel to be acknowledged first; on a connection with none under way, it is a
    round trip."""
    try:
        with contextlib.suppress(Exception):
            await conn.fetchval("SELECT 1", timeout=_CANCEL_SECONDS)
    finally:
        if not _closed(conn):
            conn.terminate()
        with contextlib.suppress(asyncpg.InterfaceError):  # a pool terminated meanwhile
            await pool.release(conn)


async def _on_connection(
    pool: asyncpg.Pool,
    seconds: float,
    operation: Callable[[asyncpg.pool.PoolConnectionProxy], Awaitable[R]],
) -> R:
    """``operation``'s result on a pool connection of its own, acquired (perhaps connected) and
    used within ``seconds``.

    Only a connection whose operation completed goes back to the pool. One whose operation
    failed, timed out or was cancelled is closed, in the background, once the server has taken
    the cancel of what it cut short (_close_once_cancelled). asyncpg would give it out again
    once that cancel had been acknowledged, by a server that may be the one hanging or gone, and
    a retry on it would reach the same server (a failover's former primary, say) again.

    A server may end a connection at any moment: shutting down, or on its postmaster's death,
    each backend sends its client a FATAL error, then closes the socket. Between the two, asyncpg
    fails the next use of the connection (a query, or the reset that returns it to the pool)
    with InternalClientError "cannot switch to state N; another operation (2) is in progress",
    state 2 being its wait for the end of that error, not an operation of ours, and closes the
    connection. That failure is raised here as what it is, a lost connection
    (ConnectionDoesNotExistError); a reset that fails after the operation completed leaves its
    result standing.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    async with asyncio.timeout_at(deadline):
        conn = await pool.acquire()
    try:
        async with asyncio.timeout_at(deadline):
            result = await operation(conn)
    except BaseException as exc:
        closed = _closed(conn)
        if closed:
            await pool.release(conn)  # nothing to do for a closed one but give its slot back
        else:
            _close_in_background(_close_once_cancelled(pool, conn))
        if closed and isinstance(exc, asyncpg.InternalClientError):
            raise asyncpg.ConnectionDoesNotExistError(
                f"connection closed by the server (asyncpg: {exc})"
            ) from exc
        raise
    # A reset that fails or overruns closes the connection (asyncpg does), and that is all.
    with contextlib.suppress(Exception):
        await pool.release(conn, timeout=deadline - loop.time())
    return result


class _Reachability:
    """Whether a server answers, logged when that changes: one warning when it stops (with the
    first reason), one line when it answers again; nothing for each request or retry between.

    A request's outcome tells of the server as it was when the request was sent. One sent before
    the server went away may be answered after it did; one sent before it answered again may
    fail after it did (a connect made while a restarted server was still recovering, refused or
    timed out only after a later request's answer). Neither changes the state: the outage stays
    one warning line. Nor is a write's retry that times out reported at all (_write_batch): it
    had only what was left of the write's time."""

    def __init__(self, name: str, meanwhile: str) -> None:
        self.name = name
        self._meanwhile = meanwhile
        self._lost_at: float | None = None
        # When it last answered again after failing; before the first failure, never.
        self._back_at = -math.inf
        # What the last attempt to connect failed with (_open_pool), None before any failed.
        self.last_error: BaseException | None = None

    @property
    def answering(self) -> bool:
        """Whether the server answered since it last failed (True until it first fails)."""
        return self._lost_at is None

    def failed(self, exc: BaseException, asked_at: float) -> None:
        """A request sent at loop time ``asked_at`` failed with ``exc``."""
        if self._lost_at is None and asked_at >= self._back_at:
            self._lost_at = asyncio.get_running_loop().time()
            log.warning("%s unavailable (%s); %s", self.name, _reason(exc), self._meanwhile)

    def answered(self, asked_at: float) -> None:
        """A request sent at loop time ``asked_at`` was answered."""
        if self._lost_at is not None and asked_at > self._lost_at:
            self._lost_at = None
            self._back_at = asyncio.get_running_loop().time()
            log.info("%s answers again", self.name)


class _Schema:
    """The migration runner's SchemaConnection over one pool connection."""

    def __init__(self, conn: asyncpg.pool.PoolConnectionProxy) -> None:
        self._conn = conn

    @asynccontextmanager
    async def locked_transaction(self) -> AsyncIterator[None]:
        async with self._conn.transaction():
            # Replicas starting together queue here; the lock goes with the transaction's end.
            await self._conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            yield

    async def execute(self, statement: str) -> None:
        await self._conn.execute(statement)

    async def column(self, query: str) -> list[Any]:
        return [row[0] for row in await self._conn.fetch(query)]


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A connection's reset on its way back to the pool, beyond asyncpg's own (which rolls back
    a transaction left open): none. asyncpg's default sends RESET ALL, CLOSE ALL, UNLISTEN * and
    pg_advisory_unlock_all() at every release, a round trip that each group commit would wait
    for before its callers are answered (bench/results/profile.md). This store never changes a
    session: no SET, no cursor, no LISTEN, and its only advisory lock (the migrations') is
    transaction-scoped."""


# Every session's settings, sent in its startup packet, where no setting of the database, the
# role or the URL overrides them. client_min_messages: the server sends the session its
# warnings, which a write must hear (_StandbyWait); a database or role set to send errors only
# would keep from the gateway that a commit's standby wait was cancelled, and it would answer
# 200 for rows on the primary alone. default_transaction_isolation: each statement sees the
# rows committed before it starts (and an insert the rows committed while it waited for the
# commit-order lock), which a database or role set to repeatable read would turn into
# serialization failures.
_SESSION_SETTINGS = {
    "client_min_messages": "warning",
    "default_transaction_isolation": "read committed",
}


async def _open_pool(
    dsn: str,
    reachability: _Reachability,
    *,
    max_size: int,
    command_timeout: float,
    prepare: Callable[[asyncpg.Pool], Awaitable[object]],
    connect_timeout: float = 60.0,
    retry: Callable[[BaseException], bool] = lambda exc: True,
    backoff: Backoff = _CONNECT_BACKOFF,
    tried: asyncio.Event | None = None,
) -> asyncpg.Pool:
    """A pool on ``dsn`` once its server answers and ``prepare`` has run on it; until then,
    tries again with a growing pause (the server may still be starting), unless ``retry``
    says an error is not worth another try: that one is raised. A schema found behind is
    checked again every SCHEMA_RECHECK_SECONDS: its migrations are under way. ``tried`` is set
    once the first attempt has ended, either way."""
    retrying = backoff.start()
    # Whether the schema was found behind already (said once, not at every check).
    behind = False
    while True:
        asked_at = asyncio.get_running_loop().time()
        # min_size 0: connections are opened by the requests that need them, never by a task of
        # asyncpg's own, which would log a traceback for each of its retries while the server
        # is away.
        pool: asyncpg.Pool | None = None
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=0,
                max_size=max_size,
                command_timeout=command_timeout,
                timeout=connect_timeout,
                reset=_keep_session,
                server_settings=dict(_SESSION_SETTINGS),
            )
            await prepare(pool)
        except (
            OSError,
            TimeoutError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
            SchemaBehindError,
        ) as exc:
            if pool is not None:
                pool.terminate()
            if tried is not None:
                tried.set()
            if not retry(exc):
                raise
            reachability.last_error = exc
            if isinstance(exc, SchemaBehindError):
                if not behind:
                    log.warning("%s: %s; checking again every %gs", reachability.name, exc,
                                SCHEMA_RECHECK_SECONDS)  # fmt: skip
                behind = True
                await asyncio.sleep(SCHEMA_RECHECK_SECONDS)
                continue
            if _not_there_yet(exc):  # one line for the outage, not one per try
                reachability.failed(exc, asked_at)
            else:
                log.warning(
                    "%s not ready (%s); retrying in %.1fs", reachability.name, exc, retrying.step
                )
            await retrying.wait()
            continue
        if tried is not None:
            tried.set()
        reachability.answered(asked_at)
        return pool


def _all_in_use(pool: asyncpg.Pool) -> bool:
    """Whether every connection the pool may hold is taken: then a ping would only wait for
    one, and time out under load on a server that answers, while the requests holding them
    report what they see."""
    return pool.get_size() - pool.get_idle_size() >= pool.get_max_size()


async def _close_pool(pool: asyncpg.Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), timeout=5)
    except TimeoutError:
        pool.terminate()


async def _migrate(pool: asyncpg.Pool) -> list[int]:
    """Apply the migrations not applied yet on one of ``pool``'s connections; their versions."""
    async with pool.acquire() as conn:
        return await migrate(_Schema(conn), MIGRATIONS)


async def _check_tables(conn: asyncpg.pool.PoolConnectionProxy) -> None:
    """Raise SchemaBehindError when the predictions table is missing from a schema whose
    migrations are recorded (dropped by hand: the migrations would not make it again). Waited
    out as a schema behind is, with one line (_open_pool), rather than a store that connects
    again at every request that finds it missing."""
    if await conn.fetchval("SELECT to_regclass('predictions') IS NULL"):
        raise SchemaBehindError(
            "the table predictions is missing though schema_migrations records its migration: "
            "restore the database, or drop schema_migrations and run the migrations again"
        )


def _not_there_yet(exc: BaseException) -> bool:
    """Whether ``exc`` is what a database that is still being set up answers: no server yet
    (_is_transient), or one that refuses the role or does not have the database yet (a new
    primary makes them once it runs: services/database/roles.sql)."""
    return _is_transient(exc) or isinstance(exc, _ROLE_OR_DATABASE_MISSING)


async def migrate_database(dsn: str, timeout_seconds: float) -> list[int]:
    """Bring the schema of ``dsn`` up to date as the gateway does at start (MIGRATIONS, under
    the advisory lock): the versions applied now, none when it already was. What a server
    still being set up answers (_not_there_yet) is tried again, with the gateway's backoff,
    for ``timeout_seconds`` in all, migrations included (past it, what is under way is rolled
    back). Anything else, or the time running out, raises MigrationError."""
    reachability = _Reachability("PostgreSQL", "migrating once it answers")
    applied: list[int] = []

    async def run(pool: asyncpg.Pool) -> None:
        applied.extend(await _migrate(pool))

    try:
        async with asyncio.timeout(timeout_seconds):
            pool = await _open_pool(
                dsn,
                reachability,
                max_size=1,
                command_timeout=timeout_seconds,
                prepare=run,
                retry=_not_there_yet,
                backoff=_MIGRATE_CONNECT_BACKOFF,
            )
    except TimeoutError:
        last = reachability.last_error
        raise MigrationError(
            f"schema not brought up to date within {timeout_seconds:g} s"
            + ("" if last is None else f"; PostgreSQL's last answer: {_reason(last)}")
        ) from None
    except Exception as exc:
        raise MigrationError(f"migration failed: {_reason(exc)}") from None
    await _close_pool(pool)
    return applied


# What the server tells a client whose commit stopped waiting for its synchronous standby
# (PostgreSQL's src/backend/replication/syncrep.c): a WARNING from the function that waits (the
# notice's routine field) whose DETAIL says the transaction "has already committed locally, but
# might not have been replicated to the standby". A cancel (pg_cancel_backend, statement_timeout,
# a client's cancel request) gets "canceling wait for synchronous replication due to user
# request", SQLSTATE 01000, then the COMMIT's success; a termination (pg_terminate_backend, a
# fast shutdown) gets the "terminating connection" variant, SQLSTATE 57P01, then a lost
# connection (see _insert); the postmaster's death, no warning at all.
# SQLSTATE 01000 is that of any warning without a code of its own: it does not tell. The message
# and DETAIL are in lc_messages's language (a superuser's setting) where the server has that
# locale and a translation; the database image generates no locale but C.UTF-8, which is English.
# The routine's name is never translated, but is PostgreSQL's internal name (the same from 9.1
# to 17). Either recognises the warning: only a server with a translated lc_messages whose
# PostgreSQL renamed the routine would go unrecognised (its cancelled waits answered 200). The
# server sends it whatever client_min_messages it would give the session (_SESSION_SETTINGS).
_STANDBY_WAIT_ROUTINE = "SyncRepWaitForLSN"
_NOT_REPLICATED = (
    "The transaction has already committed locally, but might not have been replicated to the "
    "standby."
)


class _StandbyWait:
    """A log listener for one statement: whether the server said that the statement's commit
    stopped waiting for its synchronous standby (and so may be on the primary alone)."""

    __slots__ = ("cut_short",)

    def __init__(self) -> None:
        self.cut_short = False

    def __call__(self, con_ref: object, message: asyncpg.PostgresLogMessage) -> None:
        if (
            message.server_source_function == _STANDBY_WAIT_ROUTINE
            or message.detail == _NOT_REPLICATED
        ):
            self.cut_short = True


async def _heard(
    conn: asyncpg.pool.PoolConnectionProxy, statement: Callable[[], Awaitable[R]]
) -> tuple[R, bool]:
    """``statement``'s result, and whether its commit is confirmed as the server promises a
    commit: False if the server said that the commit's wait for its synchronous standby was cut
    short, and the rows may be on the primary alone.

    Such a commit returns as a success with a warning (_STANDBY_WAIT_ROUTINE). asyncpg calls a
    log listener through the event loop, in the order the server sent, so the warning, sent
    before the COMMIT's result, has been heard when the statement returns. The listener goes
    with the statement: asyncpg would warn about, then drop, one left on a connection going back
    to the pool."""
    standby_wait = _StandbyWait()
    conn.add_log_listener(standby_wait)
    try:
        result = await statement()
    finally:
        # A proxy asyncpg detached, on losing its connection, raises; the listeners went with
        # the connection.
        with contextlib.suppress(asyncpg.InterfaceError):
            conn.remove_log_listener(standby_wait)
    return result, not standby_wait.cut_short


async def _insert(
    conn: asyncpg.pool.PoolConnectionProxy, columns: tuple[list[Any], ...], resent: bool
) -> tuple[bool, dict[int, StoredPrediction]]:
    """_INSERT of ``columns``, ``resent`` after a try whose outcome is unknown; when it found a
    row, _WRITE_COMMIT_RECORD; whether every row is now committed as the server promises a
    commit (_heard), and no row found (_upsert's answer, for a batch without keyed records).

    A row a resend finds already there was committed by that try, at least on the primary's
    disk: a commit that waits for its synchronous standby and whose backend is ended meanwhile
    (terminated, the server stopping) "has already committed locally, but might not have been
    replicated" (and its connection is lost). The resend's insert, which then writes nothing,
    commits at once without waiting for the standby, and so confirms no more than the
    primary's copy; the commit record's commit waits for the standby, and confirms every row
    found, as _upsert's does. (Ids the gateway made are new: only a lost try of the same rows
    stored them.) So the rows are answered as stored when they are, and a client without an
    Idempotency-Key is not told to send again a prediction stored already."""
    status, confirmed = await _heard(conn, lambda: conn.execute(_INSERT, *columns))
    if not confirmed:
        return False, {}
    if int(status.rpartition(" ")[2]) < len(columns[0]):
        _, confirmed = await _heard(conn, lambda: conn.fetchval(_WRITE_COMMIT_RECORD))
    return confirmed, {}


async def _upsert(
    conn: asyncpg.pool.PoolConnectionProxy,
    columns: tuple[list[Any], ...],
    resent: bool,
    records: list[PredictionRecord],
    first: list[bool],
) -> tuple[bool, dict[int, StoredPrediction]]:
    """_INSERT_FIRSTS of ``columns`` (with its $7); when it found a row, _WRITE_COMMIT_RECORD;
    then what the keyed ``records`` not inserted hold (_FOUND). Each is a statement and a
    transaction of its own, so that the commit-order lock, taken and released within the first,
    is never held while the server waits for the gateway. Whether every row, inserted or found,
    is now committed as the server promises a commit, sent for the first time or ``resent``
    alike, and what each keyed row not inserted found, by its index in the batch: but on a
    resend, a row exactly as sent (its lost try's own; a resend's rows found that are not keyed
    are its own too)."""
    request_ids = columns[0]
    rows, confirmed = await _heard(conn, lambda: conn.fetch(_INSERT_FIRSTS, *columns))
    if not confirmed:
        return False, {}
    inserted = {row[0] for row in rows}
    if any(f and rid not in inserted for rid, f in zip(request_ids, first, strict=True)):
        _, confirmed = await _heard(conn, lambda: conn.fetchval(_WRITE_COMMIT_RECORD))
        if not confirmed:
            return False, {}
    asked = keyed_not_inserted(records, first, inserted)
    if not asked:
        return True, {}
    found_rows = await conn.fetch(
        _FOUND,
        *([column[index] for index in asked] for column in (request_ids, columns[3])),
        asked,
        *([column[index] for index in asked] for column in (columns[2], columns[4], columns[5])),
    )
    found = {
        row[0]: StoredPrediction(row[1], row[2], row[3])
        for row in found_rows
        if not (resent and row[4])
    }
    if len(found_rows) != len(asked):
        # No row is ever deleted: one found by the insert is there to read.
        raise RuntimeError(f"{len(asked) - len(found_rows)} keyed rows found were not read back")
    return True, found


class _UnconfirmedError(Exception):
    """A row _stored found is not confirmed as committed by the synchronous standby: its wait
    cut short, or a server in recovery, which writes nothing."""


async def _stored(
    conn: asyncpg.pool.PoolConnectionProxy, request_id: str, instances_json: str
) -> StoredPrediction | None:
    """_STORED; a row found is confirmed as _upsert confirms the rows it finds, by
    _WRITE_COMMIT_RECORD. A row whose confirmation is cut short, or refused but for a transient
    error (a server in recovery cannot write one): _UnconfirmedError. The caller bounds it: a
    confirmation out of time is cancelled on the server (_on_connection), which ends the
    commit's wait for the standby (the commit stays local, and confirms nothing)."""
    row = await conn.fetchrow(_STORED, request_id, instances_json)
    if row is None:
        return None
    try:
        _, confirmed = await _heard(conn, lambda: conn.fetchval(_WRITE_COMMIT_RECORD))
    except asyncpg.PostgresError as exc:
        if _is_transient(exc):
            raise
        raise _UnconfirmedError(f"the server writes nothing ({exc})") from exc
    if not confirmed:
        raise _UnconfirmedError("its wait for the synchronous standby was cut short")
    return StoredPrediction(row[0], row[1], row[2])


class PostgresStore:
    kind = "postgresql"

    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        assert settings.database_url is not None
        self._dsn = settings.database_url
        self._migrates = settings.database_migrate
        # Set once the first attempt to connect to the primary has ended, however: open() waits
        # for that, and no longer.
        self._primary_tried = asyncio.Event()
        # Whether the primary last answered with an older schema than this gateway's, which it
        # may not migrate (awaiting_migrations).
        self._schema_older = False
        self._read_dsn = settings.database_read_url
        self._max_lag = settings.database_read_max_lag_seconds
        self._history_max_bytes = settings.history_max_bytes
        self._pool_size = settings.db_pool_size
        self._write_timeout = settings.db_write_timeout_seconds
        self._metrics = metrics
        self._pool: asyncpg.Pool | None = None
        self._read_pool: asyncpg.Pool | None = None
        self._connecting: list[asyncio.Task[None]] = []
        self._read_breaker = CircuitBreaker(_READ_FAILURES_BEFORE_PAUSE, _READ_PAUSE_SECONDS)
        # Whether reads from the read URL take the lag from _LAG_FUNCTION (or measure it
        # themselves): found out once its server answers.
        self._lag_from_function = False
        self._primary = _Reachability(
            "PostgreSQL", "predictions and history reads answer 503 until it answers again"
        )
        self._replica = _Reachability(
            "PostgreSQL read URL", "history reads go to the primary until it answers again"
        )
        # A server that answers reads but refuses writes (read-only: a failover's former
        # primary) is an outage of its own: the reads it answers meanwhile do not end it.
        self._writes = _Reachability(
            "PostgreSQL for writes", "predictions answer 503 until it takes writes again"
        )
        # Every series at 0 from the start, so that rates work from the first scrape.
        metrics.db_reads.labels("primary")
        if self._read_dsn is not None:
            metrics.db_reads.labels("replica")
            for reason in ("lag", "unknown_lag", "error"):
                metrics.db_read_fallbacks.labels(reason)
        # One commit in flight at a time: the rows that arrive meanwhile make the next one. With
        # a writer per spare pool connection, each took the few rows that had arrived since the
        # last one started: smaller commits, and more of the gateway's and PostgreSQL's CPU per
        # row (bench/results/gateway.md). The other pool connections serve history reads and
        # probes.
        self._committer: GroupCommitter[PredictionRecord, StoredPrediction] = GroupCommitter(
            self._write_batch,
            metrics,
            timeout=self._write_timeout,
            max_in_flight=1,
        )

    async def open(self) -> None:
        # Connect in the background, so that the gateway starts while the database is away or
        # still coming up (what needs it answers 503 meanwhile). Wait for the first attempt to
        # end, so that a start beside a database that answers is connected once it takes
        # requests; a database that refuses (a new stack's, not there yet) ends it at once.
        primary = asyncio.create_task(self._connect_primary())
        self._connecting.append(primary)
        read = None
        if self._read_dsn is not None:
            read = asyncio.create_task(self._connect_read(self._read_dsn))
            self._connecting.append(read)
        tried = asyncio.create_task(self._primary_tried.wait())
        try:
            await asyncio.wait({primary, tried}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        finally:
            tried.cancel()
        if not primary.done():
            log.warning("PostgreSQL not ready yet; still trying in the background")
        if read is not None:
            # Reads go to the primary until the read URL answers, which gets no longer than a
            # read would give it.
            await asyncio.wait({read}, timeout=READ_ATTEMPT_SECONDS)

    async def _connect_primary(self) -> None:
        self._pool = await _open_pool(
            self._dsn,
            self._primary,
            max_size=self._pool_size,
            command_timeout=10,
            prepare=self._migrate_here if self._migrates else self._check_schema,
            tried=self._primary_tried,
        )
        log.info("PostgreSQL connected, schema up to date")

    def _set_up_again(
        self, pool: asyncpg.Pool, exc: BaseException, asked_at: float
    ) -> StoreUnavailableError:
        """The error for a request sent at loop time ``asked_at`` on ``pool`` that failed with
        ``exc``, which says that the database lacks what this gateway needs (_not_set_up); and,
        the first time, the primary treated as not connected: ``pool`` is closed in the
        background, and the store connects again as at start (_connect_primary), with its
        backoff while the role or the database are missing, then its schema check (or its
        migrations), again every SCHEMA_RECHECK_SECONDS while the schema is behind: what
        awaiting_migrations tells, and what the next requests wait for (503 until then)."""
        self._primary.failed(exc, asked_at)
        if self._pool is pool:  # not done already, by another request on the same pool
            self._pool = None
            _close_in_background(_close_pool(pool))
            self._connecting = [task for task in self._connecting if not task.done()]
            self._connecting.append(asyncio.create_task(self._connect_primary()))
        return StoreUnavailableError("database not set up (awaiting its roles or migrations)")

    async def _connect_read(self, dsn: str) -> None:
        self._read_pool = await _open_pool(
            dsn,
            self._replica,
            max_size=_READ_POOL_SIZE,
            command_timeout=READ_ATTEMPT_SECONDS,
            prepare=self._choose_lag,
            connect_timeout=READ_ATTEMPT_SECONDS,
        )
        log.info(
            "PostgreSQL read URL connected, replay lag from %s",
            _LAG_FUNCTION if self._lag_from_function else "pg_stat_wal_receiver",
        )

    @staticmethod
    async def _migrate_here(pool: asyncpg.Pool) -> None:
        """DATABASE_MIGRATE=true: the migrations applied, and their table found there."""
        await _migrate(pool)
        async with pool.acquire() as conn:
            await _check_tables(conn)

    async def _check_schema(self, pool: asyncpg.Pool) -> None:
        """Raise SchemaBehindError unless every migration of MIGRATIONS has been applied (a
        SELECT: DATABASE_MIGRATE=false changes nothing), and its table is there."""
        schema = True
        async with pool.acquire() as conn:
            try:
                applied = {row[0] for row in await conn.fetch(APPLIED)}
            except asyncpg.UndefinedTableError:  # no migration has ever run: a new database
                applied, schema = set(), False
            missing = [version for version, _ in MIGRATIONS if version not in applied]
            self._schema_older = schema and bool(missing)
            if missing:
                raise SchemaBehindError(
                    f"schema migrations {missing} not applied, and DATABASE_MIGRATE=false: "
                    "run python -m mlstack_gateway.migrate as the schema's owner"
                )
            await _check_tables(conn)

    async def _choose_lag(self, pool: asyncpg.Pool) -> None:
        """Read the lag from _LAG_FUNCTION where the read URL's server has it for this role."""
        self._lag_from_function = bool(
            await _on_connection(
                pool, READ_ATTEMPT_SECONDS, lambda conn: conn.fetchval(_HAS_LAG_FUNCTION)
            )
        )

    @staticmethod
    async def _answers(pool: asyncpg.Pool) -> None:
        await _on_connection(pool, READ_ATTEMPT_SECONDS, lambda conn: conn.fetchval("SELECT 1"))

    async def _write_batch(
        self, take: Callable[[], list[PredictionRecord]]
    ) -> dict[int, StoredPrediction] | None:
        records = take()
        if not records:
            return None
        columns: tuple[list[Any], ...] = (
            [r.request_id for r in records],
            [r.model_name for r in records],
            [r.model_version for r in records],
            [r.instances_json for r in records],
            [r.predictions_json for r in records],
            [r.latency_ms for r in records],
        )
        write: Callable[..., Awaitable[tuple[bool, dict[int, StoredPrediction]]]] = _insert
        if any(r.keyed for r in records):
            # A keyed record's row may be there already: _upsert, told which rows come first
            # with their request_id in the batch.
            first = firsts(records)
            write = functools.partial(_upsert, records=records, first=first)
            columns = (*columns, first)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._write_timeout
        retry = _WRITE_BACKOFF.start(deadline)
        resent = False
        while True:
            pool = self._pool
            if pool is None:
                raise StoreUnavailableError("database not connected yet")
            asked_at = loop.time()
            try:
                confirmed, found = await _on_connection(
                    pool,
                    max(0.1, deadline - asked_at),
                    functools.partial(write, columns=columns, resent=resent),
                )
            except Exception as exc:
                if _not_set_up(exc):
                    self._metrics.db_failures.inc()
                    raise self._set_up_again(pool, exc, asked_at) from exc
                if not _is_transient(exc):
                    raise
                self._metrics.db_failures.inc()
                # A retry has what is left of the write's time, as little as 0.1 s: its timeout
                # says that the write ran out of time, not that the server stopped answering (one
                # back from a crash, slow with its first connections and commits, answers the
                # next write, given the whole time). A try that times out is an outage only if it
                # had the whole time; a retry's other failures are, as any request's.
                if not (resent and isinstance(exc, TimeoutError)):
                    (self._writes if _refuses_writes(exc) else self._primary).failed(exc, asked_at)
                # The same rows again (ON CONFLICT: harmless if the lost commit happened), on
                # another connection (perhaps to the new primary, after a failover).
                if not await retry.wait():
                    # The driver's words stay in the log (failed() above): they can name the
                    # server's address or files, and the client reads this.
                    raise StoreUnavailableError("database write failed") from exc
                resent = True
                continue
            self._primary.answered(asked_at)
            self._writes.answered(asked_at)
            if not confirmed:
                log.warning(
                    "a write of %d rows interrupted in its commit is on the primary, but its "
                    "synchronous standby never confirmed it: answered 503",
                    len(records),
                )
                raise StoreUnavailableError(
                    "database write not confirmed by the synchronous standby"
                )
            return found

    async def save(self, record: PredictionRecord) -> StoredPrediction | None:
        return await self._committer.submit(record)

    async def stored(self, request_id: str, instances_json: str) -> StoredPrediction | None:
        pool = self._pool
        if pool is None or not self._primary.answering:
            # Keyed requests while the model is away ask no database that is away too.
            raise StoreUnavailableError("database not answering")
        asked_at = asyncio.get_running_loop().time()
        try:
            found = await _on_connection(
                pool, _LOOKUP_SECONDS, lambda conn: _stored(conn, request_id, instances_json)
            )
        except _UnconfirmedError as exc:
            self._primary.answered(asked_at)
            if isinstance(exc.__cause__, asyncpg.PostgresError):
                self._writes.failed(exc.__cause__, asked_at)
            raise StoreUnavailableError(f"stored prediction not confirmed: {exc}") from exc
        except Exception as exc:
            if _not_set_up(exc):
                raise self._set_up_again(pool, exc, asked_at) from exc
            if not (_is_transient(exc) or isinstance(exc, asyncpg.PostgresError)):
                raise
            if not _is_transient(exc):
                # Not the server's state but the store's (its role's rights, say).
                log.warning("looking up a stored prediction failed: %s", exc)
            elif isinstance(exc, TimeoutError):
                # Its time is short: running out of it says the server was slow, not gone.
                raise StoreUnavailableError(
                    f"stored prediction not found and confirmed within {_LOOKUP_SECONDS:g} s"
                ) from exc
            else:
                (self._writes if _refuses_writes(exc) else self._primary).failed(exc, asked_at)
            raise StoreUnavailableError("database read failed") from exc
        self._primary.answered(asked_at)
        if found is not None:
            self._writes.answered(asked_at)
        return found

    def _page_args(self, limit: int, before: int) -> tuple[int, int, int, int]:
        """_PAGE's parameters $1 to $4."""
        room = item_room(limit, self._history_max_bytes)
        return before, limit, room, ROW_OVERHEAD_BYTES

    def _page(self, rows: list[asyncpg.Record], limit: int) -> HistoryPage:
        page = PageBuilder(limit, self._history_max_bytes)
        for row in rows:
            if not page.add(row[7], history_item(row, row[1].isoformat())):
                return page.page()
        if rows and rows[-1][8]:
            page.older_rows_left()
        return page.page()

    async def recent(self, limit: int, before: int) -> HistoryPage:
        if self._read_dsn is not None:
            page = await self._recent_within_lag(limit, before)
            if page is not None:
                self._metrics.db_reads.labels("replica").inc()
                return page
        pool = self._pool
        if pool is None:
            raise StoreUnavailableError("database not connected yet")
        asked_at = asyncio.get_running_loop().time()
        try:
            rows = await _on_connection(
                pool,
                _READ_SECONDS,
                lambda conn: conn.fetch(_RECENT, *self._page_args(limit, before)),
            )
        except Exception as exc:
            if _is_transient(exc):
                self._primary.failed(exc, asked_at)
                raise StoreUnavailableError("database read failed") from exc
            if _not_set_up(exc):
                raise self._set_up_again(pool, exc, asked_at) from exc
            raise
        self._primary.answered(asked_at)
        self._metrics.db_reads.labels("primary").inc()
        return self._page(rows, limit)

    async def _recent_within_lag(self, limit: int, before: int) -> HistoryPage | None:
        """The page from the read URL if its server is within the lag bound; None (and the
        reason counted) when the primary must answer instead."""
        pool = self._read_pool
        if pool is None or not self._read_breaker.allow():
            self._fall_back("error")
            return None
        statement = (
            _RECENT_WITHIN_LAG_FROM_FUNCTION if self._lag_from_function else _RECENT_WITHIN_LAG
        )
        asked_at = asyncio.get_running_loop().time()
        try:
            rows = await _on_connection(
                pool,
                READ_ATTEMPT_SECONDS,
                lambda conn: conn.fetch(statement, *self._page_args(limit, before), self._max_lag),
            )
        except asyncio.CancelledError:
            self._read_breaker.release()
            raise
        except Exception as exc:
            # Whatever the read URL does wrong (down, slow, not yet replicated the schema), the
            # primary can still answer.
            self._read_breaker.record_failure()
            self._replica.failed(exc, asked_at)
            self._fall_back("error")
            return None
        self._read_breaker.record_success()
        self._replica.answered(asked_at)
        lag: float | None = rows[0][_LAG_COLUMN]
        self._metrics.db_read_lag.set(math.nan if lag is None else lag)
        if lag is None:
            self._fall_back("unknown_lag")
            return None
        if lag > self._max_lag or rows[0][_BEHIND_COLUMN]:
            self._fall_back("lag")
            return None
        # No predictions: the one row of NULLs (request_id is NOT NULL in the table).
        return self._page([row for row in rows if row[0] is not None], limit)

    def _fall_back(self, reason: str) -> None:
        self._metrics.db_read_fallbacks.labels(reason).inc()

    def awaiting_migrations(self) -> bool:
        return self._schema_older

    def reachable(self) -> dict[str, bool]:
        return {
            "database": self._pool is not None and self._primary.answering,
            **(
                {"database_read": self._read_pool is not None and self._replica.answering}
                if self._read_dsn is not None
                else {}
            ),
        }

    async def ping(self) -> bool:
        if self._read_pool is not None:
            answers, _ = await asyncio.gather(
                self._ping_primary(), self._ping_read(self._read_pool)
            )
            return answers
        return await self._ping_primary()

    async def _ping_read(self, pool: asyncpg.Pool) -> None:
        if _all_in_use(pool):
            return
        asked_at = asyncio.get_running_loop().time()
        try:
            await self._answers(pool)
        except Exception as exc:
            self._replica.failed(exc, asked_at)
            return
        self._replica.answered(asked_at)

    async def _ping_primary(self) -> bool:
        pool = self._pool
        if pool is None:
            return False
        if _all_in_use(pool):
            return self._primary.answering
        asked_at = asyncio.get_running_loop().time()
        try:
            value = await _on_connection(
                pool, _PING_SECONDS, lambda conn: conn.fetchval("SELECT 1")
            )
        except Exception as exc:
            if _is_transient(exc):
                self._primary.failed(exc, asked_at)
            log.debug("database ping failed: %s", exc)
            return False
        self._primary.answered(asked_at)
        return bool(value == 1)

    async def close(self) -> None:
        await self._committer.close()
        for task in self._connecting:
            task.cancel()
        for pool in (self._pool, self._read_pool):
            if pool is not None:
                await _close_pool(pool)
        self._pool = self._read_pool = None
