"""components/postgres/start.sh with a real PostgreSQL: instances on 127.0.0.1 started the way
their pods start them (the script, then the e2e image's entrypoint, which keeps the official
image's contract), with the stack's hba_file and synchronous commit on one standby.

The tests run in order on one pair of instances: a standby's copy and stream, its restart, a
primary refusing a standby's data, the failover the README describes, and a former primary's
data kept when the primary was not promoted after it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from components import database
from tests.services.support import free_port, postgres_bindir

ROOT = Path(__file__).resolve().parents[2]
START = ROOT / "components" / "postgres" / "start.sh"
HBA = ROOT / "components" / "postgres" / "pg_hba.conf"
ENTRYPOINT = ROOT / "e2e" / "postgres" / "entrypoint.sh"
# Every character a password file (':' and '\\'), a connection string (' and '\\'), a URL or
# psql's variables give a meaning to: any character may be in the stack's secrets.
PASSWORD = "super/user@pass:word%2F+=?#'\\ for tests"
REPLICATION_PASSWORD = "replication/pass@word:%41+=?#'\\ for tests"


def _run_as() -> tuple[list[str], pwd.struct_passwd | None]:
    """initdb and postgres refuse root: as root, run them as the postgres user."""
    if os.geteuid() != 0:
        return [], None
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and no postgres user to run PostgreSQL as")
    return ["runuser", "-u", "postgres", "--"], user


@dataclass
class Instance:
    """One instance: its folder (PGDATA, socket, password files), its port and its process."""

    name: str
    base: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def pgdata(self) -> Path:
        return self.base / "pgdata"

    @property
    def socket_dir(self) -> Path:
        return self.base / "socket"

    @property
    def log(self) -> Path:
        return self.base / "start.log"

    def psql(self, sql: str, user: str = database.USER) -> list[str]:
        runas, _ = _run_as()
        result = subprocess.run(
            [*runas, str(postgres_bindir() / "psql"),
             "--host", str(self.socket_dir), "--port", str(self.port),
             "--username", user, "--dbname", database.DB_NAME,
             "--no-psqlrc", "--no-align", "--tuples-only", "--quiet",
             "--set", "ON_ERROR_STOP=1", "--command", sql],
            capture_output=True, text=True, check=False, timeout=60, cwd=self.base,
        )  # fmt: skip
        assert result.returncode == 0, f"{self.name}: {sql}: {result.stderr}"
        return result.stdout.splitlines()

    def value(self, sql: str) -> str:
        (line,) = self.psql(sql)
        return line

    def pg_ctl(self, *args: str) -> None:
        runas, _ = _run_as()
        result = subprocess.run(
            [*runas, str(postgres_bindir() / "pg_ctl"), "--pgdata", str(self.pgdata), *args],
            capture_output=True, text=True, check=False, timeout=120, cwd=self.base,
        )  # fmt: skip
        assert result.returncode == 0, f"{self.name}: pg_ctl {args}: {result.stdout}{result.stderr}"


class Cluster:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mlstack-start-"))
        self.runas, self.user = _run_as()
        self.bin = self.root / "bin"
        self.bin.mkdir()
        # Copies the postgres user can read wherever the work tree is (a clone in a folder
        # only root may enter, say).
        shutil.copy(ENTRYPOINT, self.bin / "docker-entrypoint.sh")
        self.start_script = shutil.copy(START, self.root / "start.sh")
        self.secrets = self.root / "secrets"
        self.secrets.mkdir()
        (self.secrets / "password").write_text(PASSWORD)
        (self.secrets / "replication").write_text(REPLICATION_PASSWORD)
        shutil.copy(HBA, self.root / "pg_hba.conf")
        self.instances: list[Instance] = []
        self._own(self.root)

    def _own(self, *paths: Path) -> None:
        if self.user is None:
            return
        for path in paths:
            for item in [path, *path.rglob("*")]:
                os.lchown(item, self.user.pw_uid, self.user.pw_gid)

    def instance(self, name: str) -> Instance:
        base = self.root / name
        base.mkdir()
        (base / "socket").mkdir()
        self._own(base)
        found = Instance(name, base)
        self.instances.append(found)
        return found

    def start(
        self, instance: Instance, role: str, primary: Instance, wait: bool = True
    ) -> subprocess.Popen[bytes]:
        settings = database.server_settings(2, "on", 2**30)
        settings["hba_file"] = str(self.root / "pg_hba.conf")
        settings["unix_socket_directories"] = str(instance.socket_dir)
        env = {
            "PATH": f"{self.bin}:{postgres_bindir()}:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "HOSTNAME": f"{instance.name}-0",
            "PGDATA": str(instance.pgdata),
            "PGPORT": str(instance.port),
            "PGHOST": str(instance.socket_dir),
            "POSTGRES_USER": database.USER,
            "POSTGRES_DB": database.DB_NAME,
            "POSTGRES_PASSWORD_FILE": str(self.secrets / "password"),
            "DATABASE_ROLE": role,
            "DATABASE_PRIMARY_HOST": "127.0.0.1",
            "DATABASE_PORT": str(primary.port),
            "DATABASE_REPLICATION_USER": database.REPLICATION_USER,
            "DATABASE_REPLICATION_PASSWORD_FILE": str(self.secrets / "replication"),
            "DATABASE_PASSFILE": str(instance.base / "pgpass"),
            "DATABASE_PRIMARY_WAIT_SECONDS": "60",
        }
        args = ["postgres"]
        for name, value in settings.items():
            args += ["-c", f"{name}={value}"]
        with instance.log.open("ab") as log:
            process = subprocess.Popen(
                [*self.runas, "env", "-i", *(f"{k}={v}" for k, v in env.items()),
                 "bash", str(self.start_script), *args],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=instance.base,
            )  # fmt: skip
        instance.process = process
        if wait:
            self.wait_ready(instance)
        return process

    def wait_ready(self, instance: Instance, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probe = subprocess.run(
                [str(postgres_bindir() / "pg_isready"), "--host", "127.0.0.1",
                 "--port", str(instance.port), "--quiet"],
                check=False,
            )  # fmt: skip
            if probe.returncode == 0:
                return
            assert instance.process is not None
            if instance.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"{instance.name} did not start:\n{instance.log.read_text()}")

    def stop(self, instance: Instance) -> None:
        instance.pg_ctl("stop", "--mode", "fast", "--wait")
        assert instance.process is not None
        instance.process.wait(timeout=60)

    def destroy(self) -> None:
        for instance in self.instances:
            if instance.process is not None and instance.process.poll() is None:
                os.killpg(instance.process.pid, signal.SIGQUIT)
                instance.process.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


def wait_for(what: str, check: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    found = Cluster()
    try:
        yield found
    finally:
        found.destroy()


@pytest.fixture(scope="module")
def first(cluster: Cluster) -> Instance:
    return cluster.instance("database")


@pytest.fixture(scope="module")
def second(cluster: Cluster) -> Instance:
    return cluster.instance("database-1")


def rows(instance: Instance) -> list[str]:
    return instance.psql("SELECT note FROM notes ORDER BY id")


def test_a_standby_copies_the_primary_and_its_commits_wait_for_it(
    cluster: Cluster, first: Instance, second: Instance
) -> None:
    # The primary initialises its database although its settings name a synchronous standby.
    cluster.start(first, "primary", first)
    cluster.start(second, "standby", first)
    # A commit waits for the standby from now on.
    first.psql("CREATE TABLE notes (id int GENERATED ALWAYS AS IDENTITY, note text)")
    assert second.value("SELECT pg_is_in_recovery()") == "t"
    assert (second.pgdata / "standby.signal").is_file()
    assert not (second.base / "pgdata.partial").exists()
    replication = first.value(
        "SELECT application_name || ' ' || state || ' ' || sync_state FROM pg_stat_replication"
    )
    assert replication == "database-1-0 streaming quorum"
    assert first.value(
        f"SELECT rolreplication FROM pg_roles WHERE rolname = '{database.REPLICATION_USER}'"
    ) == ("t")
    first.psql("INSERT INTO notes (note) VALUES ('one'), ('two')")
    # Acknowledged with synchronous_commit on: flushed on the standby too.
    wait_for("the rows on the standby", lambda: rows(second) == ["one", "two"])
    assert oct((second.base / "pgpass").stat().st_mode & 0o777) == "0o600"


def test_a_restarted_standby_follows_again_from_its_own_data(
    cluster: Cluster, first: Instance, second: Instance
) -> None:
    marker = second.pgdata / "mlstack-test-marker"
    marker.write_text("kept")
    cluster.stop(second)
    cluster.start(second, "standby", first)
    assert marker.is_file(), "a standby with its data is not copied again"
    first.psql("INSERT INTO notes (note) VALUES ('three')")
    wait_for("the row on the standby", lambda: rows(second) == ["one", "two", "three"])
    marker.unlink()


def test_a_configured_primary_refuses_a_standby_s_data(
    cluster: Cluster, first: Instance, second: Instance
) -> None:
    cluster.stop(second)
    refused = cluster.start(second, "primary", first, wait=False)
    assert refused.wait(timeout=60) == 1
    assert "holds a standby's data but this instance is the configured primary" in (
        second.log.read_text()
    )
    assert (second.pgdata / "standby.signal").is_file()
    cluster.start(second, "standby", first)


def test_failover_keeps_every_row_and_the_former_primary_becomes_a_copy(
    cluster: Cluster, first: Instance, second: Instance
) -> None:
    # Planned: the primary stops (its last WAL goes to the standby), the standby is promoted.
    cluster.stop(first)
    second.pg_ctl("promote", "--wait")
    assert second.value("SELECT pg_is_in_recovery()") == "f"
    assert rows(second) == ["one", "two", "three"]
    # The former primary starts as a standby of the new one: its data is replaced by a copy.
    cluster.start(first, "standby", second)
    assert "replacing it with a copy" in first.log.read_text()
    assert first.value("SELECT pg_is_in_recovery()") == "t"
    second.psql("INSERT INTO notes (note) VALUES ('four')")
    wait_for("the row on the former primary", lambda: len(rows(first)) == 4)
    assert rows(first) == ["one", "two", "three", "four"]


def test_a_former_primary_s_data_is_kept_unless_the_primary_was_promoted_after_it(
    cluster: Cluster, first: Instance, second: Instance
) -> None:
    # The copy runs on the primary's timeline; without standby.signal it looks like a primary
    # that was never superseded.
    cluster.stop(first)
    (first.pgdata / "standby.signal").unlink()
    refused = cluster.start(first, "standby", second, wait=False)
    assert refused.wait(timeout=90) == 1
    log = first.log.read_text()
    assert "it was not promoted after this data, so this data is kept" in log
    assert (first.pgdata / "PG_VERSION").is_file()
