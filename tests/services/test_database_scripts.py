"""The database image's scripts (services/database/bin) against a real PostgreSQL and its hot
standby. `mlstack-database --is-primary` and `--psql` are the one way the roles script and the
backups container ask the local server whether it is the primary and talk to it as the superuser;
the roles script makes the roles the program names, after the bootstrap and on a promotion; the
pg_hba the entrypoint writes admits each of them where it needs to be, and nowhere else. A new
password in the Secret's files reaches a primary that keeps running (the entrypoint's password
watch), and a standby restarted with it streams. The backups container takes its backups where
the primary runs, and tells a WAL archive that fails.

Each script runs as in the image: Patroni's settings (the image's, their socket folder and port
the test server's) beside roles.sql, the Secret's passwords in files, the server's programs first
on PATH."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import asyncpg
import pytest

from components import database
from harness.http import request
from harness.metrics import metric_value
from harness.poll import eventually
from harness.ports import free_port
from harness.postgres import PostgresServer, on_connection, postgres_bindir, query
from harness.processes import LocalProcess, group_alive
from tests.database_image import (
    BIN,
    PASSWORDS,
    Image,
    backups_container,
    backups_own_env,
    entrypoint_module,
    image_for,
    pod_variables,
    write_secret_volume,
)
from tests.services.support import throwaway_postgres
from tests.stand_ins import stand_in

# What PostgreSQL tells a client no line of pg_hba admits.
NO_ENTRY: Final = r"no pg_hba\.conf entry"
# Patroni's two roles, as patroni.yml names them and Patroni makes them after the bootstrap.
PATRONI_ROLES: Final = {
    "replication": ("replicator", database.REPLICATION_PASSWORD_KEY, "REPLICATION LOGIN"),
    "rewind": ("rewind", database.REWIND_PASSWORD_KEY, "LOGIN"),
}


def use_image_pg_hba(server: PostgresServer, image: Image) -> None:
    """The pg_hba the entrypoint writes, on `server` (the superuser's `peer` trusted: the test is
    not the postgres user of the machine)."""
    lines = entrypoint_module()["pg_hba"](image.settings())
    local_superuser = "local all postgres peer"
    assert lines[0] == local_superuser
    hba = [local_superuser.replace("peer", "trust"), *lines[1:]]
    (server.data / "pg_hba.conf").write_text("".join(f"{line}\n" for line in hba))
    server.reload()


def make_patroni_roles(server: PostgresServer) -> None:
    """Patroni's replication and rewind roles, as Patroni makes them after the bootstrap: without
    the stack's passwords yet."""

    async def create(conn: asyncpg.Connection) -> None:
        for name, _, options in PATRONI_ROLES.values():
            await conn.execute(f"CREATE ROLE {name} WITH {options}")

    on_connection(server.dsn(), create)


def connect_as(server: PostgresServer, user: str, password: str, dbname: str) -> str:
    """Connect over TCP as `user`; the user the server says it is."""
    url = database.connection_url("127.0.0.1", password, user=user, port=server.port, dbname=dbname)
    return str(on_connection(url, lambda conn: conn.fetchval("SELECT current_user")))


@pytest.fixture(scope="module")
def primary() -> Iterator[PostgresServer]:
    with throwaway_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def standby(primary: PostgresServer) -> Iterator[PostgresServer]:
    server = primary.standby()
    yield server
    server.destroy()


# --- is this the primary --------------------------------------------------------------------------


def test_is_primary_tells_the_primary_from_a_standby_and_from_no_server(
    primary: PostgresServer, standby: PostgresServer, tmp_path: Path
) -> None:
    answers = {
        name: image_for(tmp_path / name, server).entrypoint("--is-primary")
        for name, server in (("primary", primary), ("standby", standby))
    }
    nothing = tmp_path / "no-server"
    nothing.mkdir()
    answers["none"] = Image(tmp_path / "none", nothing, free_port()).entrypoint("--is-primary")
    assert {name: done.returncode for name, done in answers.items()} == {
        "primary": 0,
        "standby": 1,
        "none": 1,
    }
    # A yes or no, nothing printed: the roles script asks it every second while it waits.
    for name, done in answers.items():
        assert done.stdout + done.stderr == "", name


def test_the_superuser_s_psql_has_the_image_s_names(
    primary: PostgresServer, tmp_path: Path
) -> None:
    assert image_for(tmp_path, primary).sql(
        "SELECT current_user, current_database()",
        "\\echo :owner :gateway :dbname :replication_role :rewind_role",
    ) == [
        "postgres|postgres",
        f"{database.OWNER} {database.GATEWAY_USER} {database.DB_NAME} replicator rewind",
    ]


# --- the roles, and who may connect --------------------------------------------------------------


@dataclass
class Cluster:
    server: PostgresServer
    image: Image


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A new cluster as Patroni makes it: the roles script after the bootstrap (given the
    connection string), Patroni's own roles, the callback as the instance starts as the primary;
    then the pg_hba the entrypoint writes."""
    with throwaway_postgres() as server:
        image = image_for(tmp_path_factory.mktemp("bootstrapped"), server)
        bootstrap(image, server)
        use_image_pg_hba(server, image)
        yield Cluster(server, image)


def bootstrap(image: Image, server: PostgresServer) -> None:
    """The roles as Patroni's bootstrap leaves them on a new cluster: the roles script after the
    bootstrap (given the connection string), Patroni's own roles, the callback as the instance
    starts as the primary."""
    done = image.roles(f"dbname=postgres host={server.socket_dir} port={server.port}")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "mlstack-database-roles: roles and passwords set on the primary\n"
    make_patroni_roles(server)
    done = image.roles("on_start", "primary", database.SCOPE)
    assert done.returncode == 0, done.stderr


def test_the_roles_script_makes_the_roles_the_program_names(bootstrapped: Cluster) -> None:
    roles = bootstrapped.image.sql(
        "SELECT rolname, rolcanlogin, rolsuper, rolreplication FROM pg_roles"
        " WHERE rolname NOT LIKE 'pg\\_%'"
    )
    assert sorted(roles) == sorted(
        [
            "postgres|t|t|t",
            f"{database.OWNER}|t|f|f",
            f"{database.GATEWAY_USER}|t|f|f",
            "replicator|t|f|t",
            "rewind|t|f|f",
        ]
    )
    assert bootstrapped.image.sql(
        f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{database.DB_NAME}'"
    ) == [database.OWNER]


@pytest.mark.parametrize(
    ("user", "key"),
    [
        (database.OWNER, database.OWNER_PASSWORD_KEY),
        (database.GATEWAY_USER, database.GATEWAY_PASSWORD_KEY),
    ],
)
def test_the_program_s_roles_reach_its_database_alone_with_their_passwords(
    bootstrapped: Cluster, user: str, key: str
) -> None:
    assert connect_as(bootstrapped.server, user, PASSWORDS[key], database.DB_NAME) == user
    with pytest.raises(asyncpg.InvalidPasswordError):
        connect_as(bootstrapped.server, user, "not-the-password", database.DB_NAME)
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match=NO_ENTRY):
        connect_as(bootstrapped.server, user, PASSWORDS[key], "postgres")


def test_rewind_reaches_the_postgres_database_with_its_password(
    bootstrapped: Cluster,
) -> None:
    """pg_rewind reads the new primary there: pg_hba admits it, and the callback gave it the
    CONNECT that roles.sql takes from everyone else."""
    name, key, _ = PATRONI_ROLES["rewind"]
    assert connect_as(bootstrapped.server, name, PASSWORDS[key], "postgres") == name
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match=NO_ENTRY):
        connect_as(bootstrapped.server, name, PASSWORDS[key], database.DB_NAME)


def test_replication_is_for_the_replication_role_with_its_password(
    bootstrapped: Cluster,
) -> None:
    name, key, _ = PATRONI_ROLES["replication"]

    def identify(user: str, password: str) -> subprocess.CompletedProcess[str]:
        """A replication connection's first command, as a standby's."""
        return subprocess.run(
            [str(postgres_bindir() / "psql"),
             f"host=127.0.0.1 port={bootstrapped.server.port} user={user} replication=true",
             "--no-psqlrc", "--tuples-only", "--no-align", "--command=IDENTIFY_SYSTEM"],
            env={**os.environ, "PGPASSWORD": password}, capture_output=True, text=True,
            timeout=30, check=False,
        )  # fmt: skip

    assert identify(name, PASSWORDS[key]).returncode == 0
    assert "password authentication failed" in identify(name, "not-the-password").stderr
    for user, key_ in (
        (database.OWNER, database.OWNER_PASSWORD_KEY),
        ("rewind", database.REWIND_PASSWORD_KEY),
    ):
        assert "no pg_hba.conf entry" in identify(user, PASSWORDS[key_]).stderr, user


def test_the_superuser_is_refused_over_tcp(bootstrapped: Cluster) -> None:
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="rejects"):
        connect_as(bootstrapped.server, "postgres", "", "postgres")


def test_each_password_is_the_one_its_client_sends_a_final_line_break_included(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any character may be in a password, a final line break too. The gateway's and the
    migrations' URLs carry the Secret's value whole; Patroni reads its roles' files without their
    final line breaks (the entrypoint). Each role's password is what its client sends."""
    passwords = {
        database.OWNER_PASSWORD_KEY: "owner password, then two line breaks\n\n",
        database.GATEWAY_PASSWORD_KEY: "gateway password, then a line break\n",
        database.REPLICATION_PASSWORD_KEY: "replication password, then two line breaks\n\n",
        database.REWIND_PASSWORD_KEY: "rewind password, then two line breaks\n\n",
    }
    with throwaway_postgres() as server:
        image = image_for(tmp_path, server)
        for key, value in passwords.items():
            (tmp_path / "secrets" / key).write_text(value)
        make_patroni_roles(server)
        done = image.roles("on_start", "primary", database.SCOPE)
        assert done.returncode == 0, done.stderr
        rewind, rewind_key, _ = PATRONI_ROLES["rewind"]
        server.require_password(database.OWNER, database.GATEWAY_USER, rewind)
        for user, key in (
            (database.OWNER, database.OWNER_PASSWORD_KEY),
            (database.GATEWAY_USER, database.GATEWAY_PASSWORD_KEY),
        ):
            assert connect_as(server, user, passwords[key], database.DB_NAME) == user
        # What Patroni is given for its rewind role (the replication role's, set by the same
        # statement, alike).
        for variable, path in image.env.items():
            monkeypatch.setenv(variable, path)
        patroni = entrypoint_module()["_password"]("DATABASE_REWIND_PASSWORD_FILE")
        assert patroni == passwords[rewind_key].rstrip("\n")
        assert connect_as(server, rewind, patroni, "postgres") == rewind


# Passwords the program takes for the owner and the gateway (any character but NUL), of each kind
# that a URL, SASLprep or psql could change: each must be what its client sends.
ANY_CHARACTER: Final = {
    "a line break inside": "first line\nsecond line",
    "a carriage return inside and at the end": "first line\r\nsecond line\r",
    "spaces and tabs at the ends": " \tspaced password\t ",
    "non-ASCII": "pässwörd, clé",
    "an emoji (unassigned in SASLprep's Unicode)": "emoji \U0001f600 password",
    "characters NFKC changes": "\ufb01 ligature \uff26\uff55\uff4c\uff4c width",
    "NFKC and an emoji": "\ufb01 \U0001f600 both",
    "control characters": "\x01\x1b[0m\x7f",
    "dollar quotes": "pa$$word $1 $$",
    "4 KiB": ("Ab/+=%:@?#'\"\\ \u00e9\U0001f600" * 300)[:4096],
}


def test_the_program_s_roles_take_any_password_it_accepts(tmp_path: Path) -> None:
    """The owner's and the gateway's passwords, whatever they hold, set by roles.sql and sent by
    asyncpg from the URL the program writes (both sides apply SASLprep alike)."""
    with throwaway_postgres() as server:
        image = image_for(tmp_path, server)
        server.require_password(database.OWNER, database.GATEWAY_USER)
        failed = []
        for kind, password in ANY_CHARACTER.items():
            for key in (database.OWNER_PASSWORD_KEY, database.GATEWAY_PASSWORD_KEY):
                # As the kubelet writes a Secret's value: its UTF-8 bytes, nothing translated.
                (tmp_path / "secrets" / key).write_bytes(password.encode())
            done = image.roles("on_start", "primary", database.SCOPE)
            assert done.returncode == 0, done.stderr
            for user in (database.OWNER, database.GATEWAY_USER):
                try:
                    connect_as(server, user, password, database.DB_NAME)
                except asyncpg.InvalidPasswordError:
                    failed.append(f"{user}: {kind}")
        assert failed == []


@pytest.mark.parametrize("key", sorted(PASSWORDS))
def test_a_password_file_that_cannot_be_read_changes_no_password(
    bootstrapped: Cluster, tmp_path: Path, key: str
) -> None:
    """Read as empty, it would clear the role's password (no login at all) while the script
    said it had set them: it fails instead, and every role keeps its password."""
    image = image_for(tmp_path, bootstrapped.server)
    missing = tmp_path / "secrets" / key
    missing.unlink()
    done = image.roles("on_start", "primary", database.SCOPE)
    assert done.returncode != 0
    assert f"cannot read {missing}" in done.stderr
    without_password = bootstrapped.image.sql(
        "SELECT rolname FROM pg_authid WHERE rolcanlogin AND rolpassword IS NULL"
        " AND rolname <> 'postgres'"
    )
    assert without_password == []


# --- the roles callback on a promotion -----------------------------------------------------------


def test_a_standby_s_callback_does_nothing(tmp_path: Path) -> None:
    nothing = tmp_path / "no-server"
    nothing.mkdir()
    image = Image(tmp_path / "image", nothing, free_port())
    done = image.roles("on_role_change", "replica", database.SCOPE)
    # A callback that waited for a promotion would give up after 60 s, with status 1 and why.
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_the_callback_waits_for_the_promotion_then_sets_the_roles(
    primary: PostgresServer, tmp_path: Path
) -> None:
    """Patroni calls on_role_change (mlstack-database-callback, which runs the roles script) as
    it promotes: the server may still be a standby. Without backups, that is all it does."""
    server = primary.standby()
    try:
        image = image_for(tmp_path, server)
        callback = LocalProcess(
            "mlstack-database-callback",
            ["bash", str(BIN / "mlstack-database-callback"), "on_role_change", "primary",
             database.SCOPE],
            tmp_path / "roles.log",
            env=image.env,
        ).start()  # fmt: skip
        try:
            time.sleep(3)
            assert callback.process is not None and callback.process.poll() is None, (
                callback.log_tail()
            )
            on_connection(server.dsn(), lambda conn: conn.execute("SELECT pg_promote()"))
            status = callback.wait_for_exit(30)
        finally:
            callback.stop()
        log = callback.log_path.read_text()
        assert status == 0, log
        assert log == "mlstack-database-roles: roles and passwords set on the primary\n"
        server.require_password(database.GATEWAY_USER)
        gateway = PASSWORDS[database.GATEWAY_PASSWORD_KEY]
        assert connect_as(server, database.GATEWAY_USER, gateway, database.DB_NAME) == (
            database.GATEWAY_USER
        )
    finally:
        server.destroy()


# --- a new password on a running primary ---------------------------------------------------------

# The Secret's passwords after a rotation (`pulumi config set --secret`, then `pulumi up`).
ROTATED: Final = {key: f"{value} rotated" for key, value in PASSWORDS.items()}
# What the password watch says once it has read the files it watches.
WATCHING: Final = "mlstack-database: watching the Secret's password files"


def test_two_runs_at_once_both_set_the_roles(bootstrapped: Cluster) -> None:
    """A callback of Patroni's and the password watch may start the script together: one waits
    for the other, and neither fails (at once, their catalog updates would fail each other's:
    "tuple concurrently updated")."""
    command = ["bash", str(BIN / "mlstack-database-roles"), "on_start", "primary", database.SCOPE]
    for _ in range(10):
        runs = [
            subprocess.Popen(command, env=bootstrapped.image.env, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        errors = [run.communicate(timeout=90)[1] for run in runs]
        assert [run.returncode for run in runs] == [0, 0], errors


def start_instance(image: Image, root: Path) -> LocalProcess:
    """The image's entrypoint as the pod starts it, Patroni a stand-in that only waits, in a
    session of its own (shared with what it leaves running); the password watch checks the
    Secret's files every 0.2 s."""
    stand_in(image.stand_ins, "patroni", "#!/bin/sh\nexec sleep 600\n")
    env = {
        **image.env,
        **pod_variables(database.pod_name(0), "127.0.0.1", 2**30),
        "PATRONICTL_CONFIG_FILE": str(root / "patroni" / "patroni.yml"),
        "DATABASE_SECRETS_CHECK_SECONDS": "0.2",
    }
    return LocalProcess(
        "mlstack-database",
        [str(image.stand_ins / "mlstack-database")],
        root / "mlstack-database.log",
        env=env,
        new_session=True,
    ).start()


def follow_as_replicator(standby: PostgresServer, primary: PostgresServer, password: str) -> None:
    """The standby's WAL receiver sent to `primary` as Patroni's replication role with
    `password`, as Patroni gives a standby its primary_conninfo (a reload applies it)."""
    quoted = password.replace("\\", "\\\\").replace("'", "\\'")
    conninfo = (
        f"host=127.0.0.1 port={primary.port} user={PATRONI_ROLES['replication'][0]}"
        f" password='{quoted}' application_name={database.pod_name(1)}"
    )

    async def follow(conn: asyncpg.Connection) -> None:
        # ALTER SYSTEM takes no parameters: format() quotes the value server-side.
        quote = "SELECT format('ALTER SYSTEM SET primary_conninfo = %L', $1::text)"
        await conn.execute(await conn.fetchval(quote, conninfo))

    on_connection(standby.dsn(), follow)
    standby.reload()


def test_a_new_password_reaches_the_running_primary_and_the_restarted_standby_streams(
    tmp_path: Path,
) -> None:
    """A `pulumi up` of new passwords restarts a standby first, with the new replication password
    (here: the standby's WAL receiver given it), while the primary runs on with the passwords
    its start set: the standby is refused. Once the kubelet has written the Secret's new values
    into the primary's pod, the primary's password watch sets every role's new password there,
    and the standby streams: Patroni calls it ready, and the StatefulSet's roll goes on. The
    watch ends with the Patroni it was started beside."""
    replicator = PATRONI_ROLES["replication"][0]

    def streaming(image: Image) -> bool:
        return image.sql(
            "SELECT count(*) FROM pg_stat_replication"
            f" WHERE usename = '{replicator}' AND state = 'streaming'"
        ) == ["1"]

    with throwaway_postgres() as server:
        # Copied before the image's pg_hba is the server's: initdb's trusts the copy.
        standby = server.standby()
        try:
            image = image_for(tmp_path, server)
            bootstrap(image, server)
            use_image_pg_hba(server, image)
            instance = start_instance(image, tmp_path)
            try:
                instance.wait_for("watching", lambda: WATCHING in instance.log_path.read_text())
                follow_as_replicator(standby, server, ROTATED[database.REPLICATION_PASSWORD_KEY])
                refused = f'password authentication failed for user "{replicator}"'
                eventually(lambda: refused in standby.log.read_text(), "the standby refused", 30)
                assert not streaming(image)

                write_secret_volume(image.secrets, ROTATED)
                eventually(lambda: streaming(image), "the standby streaming", 30)
                log = instance.log_path.read_text()
                assert "mlstack-database-roles: roles and passwords set on the primary\n" in log
                for value in (*PASSWORDS.values(), *ROTATED.values()):
                    assert value not in log
                rewind = PATRONI_ROLES["rewind"][0]
                for user, key, dbname in (
                    (database.OWNER, database.OWNER_PASSWORD_KEY, database.DB_NAME),
                    (database.GATEWAY_USER, database.GATEWAY_PASSWORD_KEY, database.DB_NAME),
                    (rewind, database.REWIND_PASSWORD_KEY, "postgres"),
                ):
                    assert connect_as(server, user, ROTATED[key], dbname) == user
                    with pytest.raises(asyncpg.InvalidPasswordError):
                        connect_as(server, user, PASSWORDS[key], dbname)

                # Patroni gone (the container's first process), the watch goes too.
                instance.signal(signal.SIGTERM)
                instance.wait(10)
                eventually(
                    lambda: not group_alive(instance.pid), "the watch ended with Patroni", 10
                )
            finally:
                instance.stop()
        finally:
            standby.destroy()


# --- the backups container ------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["primary", "standby"])
def test_the_backups_container_backs_up_where_the_primary_runs(
    where: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """It asks the local server in each round (here every 0.2 s), and reads the repository with
    one `info` (mlstack-database-repository status tells it the backups of the primary's
    timeline from it too): on the primary it makes the stanza once and takes a full backup (the
    repository holds none, every round here), then reads the repository again; on a standby it
    only reads the repository."""
    server: PostgresServer = request.getfixturevalue(where)
    image = image_for(tmp_path, server)
    calls = tmp_path / "pgbackrest-calls"
    stand_in(
        image.stand_ins,
        "pgbackrest",
        f'#!/bin/sh\necho "$*" >> "{calls}"\n[ "$1" != info ] || echo "[]"\n',
    )
    backups = LocalProcess(
        "mlstack-database-backups",
        [sys.executable, str(BIN / "mlstack-database-backups")],
        tmp_path / "backups.log",
        env={
            **image.env,
            **backups_own_env(),
            "METRICS_PORT": str(free_port()),
            "DATABASE_BACKUP_CHECK_SECONDS": "0.2",
        },
    ).start()

    def logged() -> list[str]:
        return calls.read_text().splitlines() if calls.exists() else []

    try:
        eventually(lambda: len(logged()) >= 7, "seven calls of pgBackRest", 60)
        backups.signal(signal.SIGTERM)
        assert backups.wait_for_exit(10) == 0, backups.log_tail()
    finally:
        backups.stop()
    if where == "primary":
        assert logged()[:7] == [
            "info --output=json",
            "stanza-create",
            "backup --type=full",
            "info --output=json",
            "info --output=json",
            "backup --type=full",
            "info --output=json",
        ]
    else:
        assert set(logged()) == {"info --output=json"}


def archive_metrics(port: int) -> dict[str, float | None]:
    """The backups container's mlstack_database_wal_archive_* samples (None: absent), by the
    part of the name after that prefix."""
    text = request("GET", f"http://127.0.0.1:{port}/metrics").body.decode()
    return {
        name: metric_value(text, f"mlstack_database_wal_archive_{name}")
        for name in ("failures_total", "pending_bytes", "pending_age_seconds")
    }


def test_the_backups_container_shows_a_failing_wal_archive(tmp_path: Path) -> None:
    """archive_command failing (here `false`, as pgBackRest's archive-push to a repository that
    is away or full): PostgreSQL keeps every segment not archived, whatever the WAL limits, until
    its volume is full. The metrics show the failures, the WAL waiting and for how long; once
    the archive works again, the WAL waiting goes, and the failures stay counted."""
    with throwaway_postgres() as server:
        for name, value in (("archive_mode", "on"), ("archive_command", "false")):
            query(server.dsn(), f"ALTER SYSTEM SET {name} = '{value}'")
        # archive_mode: at a start only.
        server.stop()
        server.start()
        image = image_for(tmp_path, server)
        stand_in(image.stand_ins, "pgbackrest", '#!/bin/sh\n[ "$1" != info ] || echo "[]"\n')
        for _ in range(3):
            server.next_wal_segment()
        backups, port = backups_container(image, tmp_path / "backups.log")
        try:
            backups.start().wait_ready()
            eventually(
                lambda: (archive_metrics(port)["pending_age_seconds"] or 0) >= 2,
                "the oldest segment waiting two seconds",
                30,
            )
            failing = archive_metrics(port)
            assert (failing["failures_total"] or 0) >= 1, failing
            # The three segments switched from, at least: each waits, whole.
            assert (failing["pending_bytes"] or 0) >= 3 * 16 * 2**20, failing

            query(server.dsn(), "ALTER SYSTEM SET archive_command = 'true'")
            query(server.dsn(), "SELECT pg_reload_conf()")
            eventually(
                lambda: archive_metrics(port)["pending_bytes"] == 0,
                "the WAL waiting archived",
                90,
            )
            archived = archive_metrics(port)
        finally:
            backups.stop()
    assert archived["pending_age_seconds"] == 0, archived
    assert (archived["failures_total"] or 0) >= (failing["failures_total"] or 0), archived
