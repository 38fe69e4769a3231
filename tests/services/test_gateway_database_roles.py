"""The gateway serving as a role that may only read and add rows: the roles made as the database
image makes them (services/database/roles.sql, run by psql as the superuser, the passwords from
files), the schema brought up to date beforehand by ``python -m mlstack_gateway.migrate`` as the
owner (the stack's migrations Job), then the gateway with DATABASE_MIGRATE=false, its
reads from a standby bounded by the replay lag roles.sql's function tells it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from mlstack_gateway.stores import postgres as store_postgres

from components import database
from harness.http import request
from harness.poll import eventually
from harness.ports import free_port
from harness.postgres import PostgresServer, on_connection, query
from harness.program import ROOT
from harness.services import (
    GATEWAY_SRC,
    SETOSA,
    GatewayProcess,
    ServiceProcess,
    Wait,
    start_gateway,
)
from tests.services.support import (
    history,
    listed,
    metric,
    new_prediction,
    predict,
    read_until_listed,
    stored,
    throwaway_postgres,
)

ROLES_SQL = ROOT / "services" / "database" / "roles.sql"
OWNER = "mlstack"
GATEWAY = "mlstack_gateway"
DBNAME = "mlstack"
# Each with every character a URL, a psql variable or an SQL literal gives a meaning to.
OWNER_PASSWORD = "Ow/n@e:r%2F+x=y?z'q\"#\\1"
GATEWAY_PASSWORD = "Ga/t@e:w%40+a=y?'s\"#\\2"
MIGRATE = "mlstack_gateway.migrate"
PREFIX = "mlstack gateway migrate: "


@dataclass
class Cluster:
    """A PostgreSQL of its own (roles.sql changes the whole cluster), its roles made by
    roles.sql, and the files their passwords are read from."""

    server: PostgresServer
    secrets: Path

    def run_roles_sql(
        self,
        owner_password: str = OWNER_PASSWORD,
        gateway_password: str = GATEWAY_PASSWORD,
        dbname: str = DBNAME,
    ) -> None:
        """roles.sql as the image runs it: psql as the superuser on the local socket, the
        passwords in files (a Secret's keys, no newline at the end)."""
        owner_file, gateway_file = self.secrets / "owner-password", self.secrets / "gateway"
        owner_file.write_text(owner_password)
        gateway_file.write_text(gateway_password)
        result = subprocess.run(
            [
                str(self.server.bindir / "psql"),
                "-v", f"owner={OWNER}",
                "-v", f"gateway={GATEWAY}",
                "-v", f"dbname={dbname}",
                "-v", f"owner_password_file={owner_file}",
                "-v", f"gateway_password_file={gateway_file}",
                "-f", str(ROLES_SQL),
            ],
            env={
                **os.environ,
                "PGHOST": str(self.server.socket_dir),
                "PGPORT": str(self.server.port),
                "PGUSER": "postgres",
                "PGDATABASE": "postgres",
                "PSQLRC": os.devnull,
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        for password in (owner_password, gateway_password):
            assert password not in result.stdout + result.stderr

    def url(
        self, role: str, password: str, dbname: str = DBNAME, server: PostgresServer | None = None
    ) -> str:
        """The URL as the program writes it (every part percent-encoded), to `server` (by
        default the cluster's own)."""
        port = (server or self.server).port
        return database.connection_url("127.0.0.1", password, port=port, user=role, dbname=dbname)

    def url_file(
        self, role: str, password: str, dbname: str = DBNAME, server: PostgresServer | None = None
    ) -> Path:
        """A file holding that URL, as the Secret mounts it."""
        port = (server or self.server).port
        path = self.secrets / f"url-{role}-{dbname}-{port}-{abs(hash(password))}"
        path.write_text(self.url(role, password, dbname, server))
        return path

    def owner_url_file(self, dbname: str = DBNAME) -> Path:
        return self.url_file(OWNER, OWNER_PASSWORD, dbname)

    def gateway_url_file(self, dbname: str = DBNAME, server: PostgresServer | None = None) -> Path:
        return self.url_file(GATEWAY, GATEWAY_PASSWORD, dbname, server)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with throwaway_postgres() as server:
        server.require_password(OWNER, GATEWAY)
        cluster = Cluster(server, tmp_path_factory.mktemp("database-secrets"))
        cluster.run_roles_sql()
        yield cluster


def start_migrate(log_dir: Path, url_file: Path, **env: str) -> ServiceProcess:
    """The migrate command, started as the migrations Job runs it: the module, on the image's
    import path, the URL from a file. (The port it is given goes unused.)"""
    command = ServiceProcess(
        MIGRATE, GATEWAY_SRC, {"DATABASE_URL_FILE": str(url_file), **env}, free_port(), log_dir
    )
    return command.start()


def run_migrate(log_dir: Path, url_file: Path, **env: str) -> tuple[int, str]:
    """The migrate command's exit status and output, once it has ended."""
    command = start_migrate(log_dir, url_file, **env)
    return command.wait_for_exit(60), command.log_path.read_text()


@pytest.fixture(scope="module")
def migrated(cluster: Cluster, log_dir: Path) -> Cluster:
    status, output = run_migrate(log_dir, cluster.owner_url_file())
    assert status == 0, output
    return cluster


def start_gateway_as_its_role(
    cluster: Cluster,
    model_server: ServiceProcess,
    log_dir: Path,
    dbname: str = DBNAME,
    wait: Wait | None = "ready",
    **env: str,
) -> GatewayProcess:
    """The gateway as the stack runs it: as its role in `dbname`, the URL from a file, leaving
    the schema to the migrate command (DATABASE_MIGRATE=false); `env` adds settings."""
    return start_gateway(
        model_server.url,
        log_dir,
        wait=wait,
        DATABASE_URL_FILE=str(cluster.gateway_url_file(dbname)),
        DATABASE_MIGRATE="false",
        **env,
    )


@pytest.fixture(scope="module")
def standby(migrated: Cluster) -> Iterator[PostgresServer]:
    """A hot standby of the cluster, with its roles, databases and schema (and pg_hba.conf)."""
    server = migrated.server.standby()
    yield server
    server.destroy()


def connect(cluster: Cluster, role: str, password: str, dbname: str = DBNAME) -> str:
    """Connect as `role` with `password`; whom the server says it is."""

    user: str = on_connection(
        cluster.url(role, password, dbname), lambda conn: conn.fetchval("SELECT current_user")
    )
    return user


def run_as(
    cluster: Cluster, statement: str, role: str = GATEWAY, password: str = GATEWAY_PASSWORD
) -> None:
    """Run `statement` in the application's database as `role` (the gateway's by default)."""

    on_connection(cluster.url(role, password), lambda conn: conn.execute(statement))


def password_pieces(text: str) -> list[str]:
    """Every 4-character piece of either password that is in `text`."""
    return [
        password[start : start + 4]
        for password in (OWNER_PASSWORD, GATEWAY_PASSWORD)
        for start in range(len(password) - 3)
        if password[start : start + 4] in text
    ]


def test_roles_sql_runs_again_and_a_changed_password_takes_effect(cluster: Cluster) -> None:
    cluster.run_roles_sql()
    assert connect(cluster, GATEWAY, GATEWAY_PASSWORD) == GATEWAY
    new_owner, new_gateway = OWNER_PASSWORD[::-1], GATEWAY_PASSWORD[::-1]
    cluster.run_roles_sql(new_owner, new_gateway)
    try:
        for role, old, new in (
            (OWNER, OWNER_PASSWORD, new_owner),
            (GATEWAY, GATEWAY_PASSWORD, new_gateway),
        ):
            with pytest.raises(asyncpg.InvalidPasswordError):
                connect(cluster, role, old)
            assert connect(cluster, role, new) == role
    finally:
        cluster.run_roles_sql()
    assert connect(cluster, OWNER, OWNER_PASSWORD) == OWNER
    assert connect(cluster, GATEWAY, GATEWAY_PASSWORD) == GATEWAY
    rows = query(
        cluster.server.dsn(),
        "SELECT rolname, rolsuper, rolinherit, rolcreatedb, rolcreaterole, rolreplication,"
        " rolbypassrls FROM pg_roles WHERE rolname = ANY($1::text[]) ORDER BY rolname",
        [OWNER, GATEWAY],
    )
    assert [tuple(row) for row in rows] == [
        (OWNER, False, True, False, False, False, False),
        (GATEWAY, False, False, False, False, False, False),
    ]


def test_the_migrate_command_waits_for_the_server(cluster: Cluster, log_dir: Path) -> None:
    cluster.server.stop()
    try:
        command = start_migrate(log_dir, cluster.owner_url_file())
        command.wait_for(
            "waiting for PostgreSQL",
            lambda: "PostgreSQL unavailable (" in command.log_path.read_text(),
            timeout=30,
        )
    finally:
        cluster.server.start()
    assert command.wait_for_exit(60) == 0, command.log_tail()
    status, output = run_migrate(log_dir, cluster.owner_url_file())
    assert status == 0, output
    assert "schema up to date: no migration to apply" in output
    owners = query(
        cluster.server.dsn(DBNAME),
        "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    )
    assert [tuple(row) for row in owners] == [
        ("predictions", OWNER),
        ("schema_migrations", OWNER),
    ]
    assert not password_pieces(command.log_path.read_text() + output)


def test_the_migrate_command_stops_at_once_on_an_error(cluster: Cluster, log_dir: Path) -> None:
    dbname = "mlstack_refused"
    cluster.run_roles_sql(dbname=dbname)
    # The gateway's role may not create tables: a real error, not one to wait out.
    status, output = run_migrate(
        log_dir, cluster.gateway_url_file(dbname), DATABASE_MIGRATE_TIMEOUT_SECONDS="60"
    )
    assert status == 1, output
    assert output.splitlines()[-1].startswith(f"{PREFIX}migration failed: permission denied")
    assert [line for line in output.splitlines() if line.startswith(PREFIX)] == [
        output.splitlines()[-1]
    ]
    assert not password_pieces(output)


def test_the_migrate_command_gives_up_after_its_timeout(cluster: Cluster, log_dir: Path) -> None:
    wrong = cluster.url_file(OWNER, GATEWAY_PASSWORD)
    status, output = run_migrate(log_dir, wrong, DATABASE_MIGRATE_TIMEOUT_SECONDS="1")
    assert status == 1, output
    assert output.splitlines()[-1] == (
        f"{PREFIX}schema not brought up to date within 1 s; PostgreSQL's last answer: "
        f'password authentication failed for user "{OWNER}"'
    )
    assert not password_pieces(output)


def test_the_gateway_serves_as_its_role_without_migrating(
    migrated: Cluster, model_server: ServiceProcess, log_dir: Path
) -> None:
    gateway = start_gateway_as_its_role(migrated, model_server, log_dir)
    try:
        request_id = new_prediction(gateway)
        assert request_id in listed(gateway)
    finally:
        gateway.stop()
    assert stored(migrated.server.dsn(DBNAME), [request_id]) == 1
    assert "applied migration" not in gateway.log_path.read_text()


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE public.extra (id int)",
        "CREATE TEMPORARY TABLE extra (id int)",
        "CREATE SCHEMA extra",
        "DROP TABLE predictions",
        "ALTER TABLE predictions ADD COLUMN extra int",
        "TRUNCATE predictions",
        "UPDATE predictions SET latency_ms = 0",
        "DELETE FROM predictions",
        "DROP TABLE schema_migrations",
    ],
)
def test_the_gateway_role_may_not(migrated: Cluster, statement: str) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        run_as(migrated, statement)


@pytest.mark.parametrize("dbname", ["postgres", "template1"])
def test_the_gateway_role_may_not_connect_to_another_database(
    cluster: Cluster, dbname: str
) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for database"):
        connect(cluster, GATEWAY, GATEWAY_PASSWORD, dbname)


def test_roles_sql_tells_the_lag_as_the_gateway_measures_it() -> None:
    # The function's body is the gateway's own query (kept alike, as both say).
    assert store_postgres._LAG in ROLES_SQL.read_text()


def test_only_the_gateway_role_is_told_a_standbys_replay_lag(
    migrated: Cluster, standby: PostgresServer
) -> None:
    gateway = migrated.url(GATEWAY, GATEWAY_PASSWORD, server=standby)
    # The gateway may not see the WAL receiver's state itself...
    eventually(
        lambda: bool(query(gateway, "SELECT FROM pg_stat_wal_receiver")),
        "a WAL receiver",
        30,
        interval=0.05,
    )
    assert query(gateway, "SELECT status FROM pg_stat_wal_receiver")[0][0] is None
    # ...but is told the lag it bounds its reads by.
    lag = "SELECT mlstack_monitor.replay_lag_seconds()"
    eventually(
        lambda: query(gateway, lag)[0][0] is not None, "the standby streaming", 30, interval=0.05
    )
    assert query(gateway, lag)[0][0] >= 0.0
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        query(migrated.url(OWNER, OWNER_PASSWORD, server=standby), lag)
    # On the primary, nothing behind; and the owner cannot put another function in its place.
    assert query(migrated.url(GATEWAY, GATEWAY_PASSWORD), lag)[0][0] == 0.0
    for statement in (
        "DROP FUNCTION mlstack_monitor.replay_lag_seconds()",
        "CREATE FUNCTION mlstack_monitor.replay_lag_seconds(x int) RETURNS float8"
        " LANGUAGE sql AS 'SELECT 0.0::float8'",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            run_as(migrated, statement, OWNER, OWNER_PASSWORD)


def test_the_gateway_role_reads_from_a_standby_within_the_lag_bound(
    migrated: Cluster, standby: PostgresServer, model_server: ServiceProcess, log_dir: Path
) -> None:
    gateway = start_gateway_as_its_role(
        migrated,
        model_server,
        log_dir,
        DATABASE_READ_URL_FILE=str(migrated.gateway_url_file(server=standby)),
    )
    try:
        # Without the lag, every read would go to the primary as `unknown_lag`.
        read_until_listed(
            gateway, new_prediction(gateway), "mlstack_gateway_db_reads_total", source="replica"
        )
    finally:
        gateway.stop()
    log = gateway.log_path.read_text()
    assert "read URL connected, replay lag from mlstack_monitor.replay_lag_seconds()" in log


def test_an_unmigrated_database_answers_503_until_the_migrate_command_has_run(
    cluster: Cluster, model_server: ServiceProcess, log_dir: Path
) -> None:
    dbname = "mlstack_unmigrated"
    cluster.run_roles_sql(dbname=dbname)
    gateway = start_gateway_as_its_role(cluster, model_server, log_dir, dbname)
    try:
        # A new stack's database: no version of the gateway could serve it yet, so this one
        # stays in the endpoints, answering 503 with Retry-After until the migrations have run.
        assert request("GET", f"{gateway.url}/readyz").status == 200
        refused = predict(gateway.url, [SETOSA])
        assert refused.refused_with_retry_after, (refused.status, refused.body)
        read = history(gateway)
        assert read.refused_with_retry_after, (read.status, read.body)
        status, output = run_migrate(log_dir, cluster.owner_url_file(dbname))
        assert status == 0, output
        assert "applied migrations [1]" in output
        gateway.wait_for(
            "storing a prediction", lambda: predict(gateway.url, [SETOSA]).status == 200, 30
        )
    finally:
        gateway.stop()
    log = gateway.log_path.read_text()
    assert "schema migrations [1] not applied, and DATABASE_MIGRATE=false" in log
    assert "Traceback" not in log


def test_an_older_schema_keeps_the_gateway_unready_until_its_migrations_have_run(
    cluster: Cluster, model_server: ServiceProcess, log_dir: Path
) -> None:
    """A rollout whose migrations Job has not run yet: the database holds a schema, without the
    migrations this gateway needs. The new gateway takes no traffic (the version before still
    serves it) until they are applied, then it is ready and stores predictions."""
    dbname = "mlstack_older_schema"
    cluster.run_roles_sql(dbname=dbname)
    owner = cluster.url(OWNER, OWNER_PASSWORD, dbname)
    # What a gateway of an earlier version's migrations left: their table, without this
    # version's own.
    query(owner, "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                 "applied_at TEXT NOT NULL)")  # fmt: skip
    gateway = start_gateway_as_its_role(cluster, model_server, log_dir, dbname, wait="live")
    try:
        gateway.wait_for_url(gateway.url + "/readyz", status=503)
        unready = request("GET", f"{gateway.url}/readyz")
        assert unready.json() == {
            "ready": False,
            "reason": "the database's schema is older than this gateway's",
        }
        status, output = run_migrate(log_dir, cluster.owner_url_file(dbname))
        assert status == 0, output
        gateway.wait_ready()
        reply = predict(gateway.url, [SETOSA])
        assert reply.status == 200, reply.body
    finally:
        gateway.stop()
    log = gateway.log_path.read_text()
    assert "schema migrations [1] not applied, and DATABASE_MIGRATE=false" in log
    assert "Traceback" not in log


@pytest.mark.parametrize(
    "recreated",
    [
        # The owner's tables dropped: the schema is gone, the database and roles are there.
        "schema",
        # The database dropped (its connections ended): a recreated primary before roles.sql
        # has made it again answers every new connection "database does not exist".
        "database",
    ],
)
def test_a_database_recreated_empty_under_a_running_gateway_answers_503_until_migrated(
    cluster: Cluster, model_server: ServiceProcess, log_dir: Path, recreated: str
) -> None:
    """A gateway that has served finds its database recreated empty (not restored): what needs
    the database gets 503 with Retry-After, never a 500, and the gateway stays ready (the
    database holds no schema: no version could serve it) until roles.sql and the migrations Job
    have run again; then it stores predictions again, without a restart."""
    dbname = f"mlstack_recreated_{recreated}"
    cluster.run_roles_sql(dbname=dbname)
    status, output = run_migrate(log_dir, cluster.owner_url_file(dbname))
    assert status == 0, output
    gateway = start_gateway_as_its_role(cluster, model_server, log_dir, dbname)
    try:
        new_prediction(gateway)
        if recreated == "schema":
            owner = cluster.url(OWNER, OWNER_PASSWORD, dbname)
            query(owner, "DROP TABLE predictions, schema_migrations")
        else:
            query(cluster.server.dsn(), f"DROP DATABASE {dbname} WITH (FORCE)")
        for reply in (predict(gateway.url, [SETOSA]), history(gateway), history(gateway)):
            assert reply.refused_with_retry_after, (reply.status, reply.headers, reply.body)
        assert request("GET", f"{gateway.url}/readyz").status == 200
        if recreated == "database":
            cluster.run_roles_sql(dbname=dbname)
        status, output = run_migrate(log_dir, cluster.owner_url_file(dbname))
        assert status == 0, output
        assert "applied migrations [1]" in output
        gateway.wait_for(
            "storing a prediction again", lambda: predict(gateway.url, [SETOSA]).status == 200, 30
        )
        assert (
            metric(gateway, "mlstack_gateway_requests_total", endpoint="predict", status="500") == 0
        )
    finally:
        gateway.stop()
    log = gateway.log_path.read_text()
    assert "Traceback" not in log
    if recreated == "schema":
        assert "schema migrations [1] not applied, and DATABASE_MIGRATE=false" in log
