"""services/database/bin/mlstack-database (the database image's entrypoint) and
mlstack-database-restore (Patroni's restore bootstrap), run here under an environment made up for
each test: the variables are those components/database.py gives the pods, the paths moved under
a folder of the test's own, and Patroni's settings are the image's patroni.yml.

The WAL the primary keeps (what a standby's slot holds back included) bounded by a share of the
stack's storageSize, read as the program reads it.

With backups: pgBackRest's secret options in a file of its own, mode 0600, never with a line
break (which would add an option of the Secret's choosing); the WAL archive in Patroni's settings.
With a restore request (`make restore`'s ConfigMap, mounted): the data moved aside once per
request, and Patroni's custom bootstrap from the backups; without one, nothing moves.

The start leaves the password watch beside Patroni: a change of the Secret's password files runs
the roles script on the primary, once, and again after a failure; on a standby, nothing
(tests/services/test_database_scripts.py runs it against a real PostgreSQL)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from components import database, pod
from components.backup_repository.common import SECRET_KEYS as BACKUP_SECRET_KEYS
from components.quantity import quantity_bytes
from harness.http import request
from harness.metrics import metric_value
from harness.poll import eventually
from harness.ports import free_port
from harness.processes import LocalProcess
from harness.program import run_program, stack_config
from tests.database_image import (
    BIN,
    TEMPLATE,
    backups_own_env,
    entrypoint_module,
    password_files,
    pod_variables,
    script_stand_in,
    write_secret_volume,
)
from tests.manifests import container, env
from tests.stand_ins import env_first_on_path, stand_in
from tests.unit.configs import with_fields

# The database Secret's key of each of pgBackRest's secret options, as the program passes them.
SECRET_KEYS: Final = {option: key for option, (key, _) in BACKUP_SECRET_KEYS.items()}
SECRETS: Final = {
    "backup-cipher-password": "cipher pass with spaces=and#signs",
    "backup-s3-access-key": "AKIAEXAMPLE",
    "backup-s3-secret-key": "s3cr3t/key+with=chars",
    "replication-password": "replication-password",
    "rewind-password": "rewind-password",
}
TARGET: Final = "2026-12-04 21:30:00.000000+00"


class Entrypoint:
    """The script's functions, and the folders that stand in for the pod's."""

    def __init__(self, root: Path, functions: dict[str, Any]) -> None:
        self.root = root
        self.functions = functions
        self.secrets = root / "secrets"
        self.restore = root / "restore"
        self.data = root / "data"
        self.pgdata = self.data / "pgdata"
        self.pgbackrest_conf = root / "tmp" / "pgbackrest" / "pgbackrest.conf"
        self.patroni_conf = root / "tmp" / "patroni" / "patroni.yml"

    def __getattr__(self, name: str) -> Callable[..., Any]:
        found: Callable[..., Any] = self.functions[name]
        return found

    def settings(self) -> dict[str, Any]:
        """The image's Patroni settings, the data folder moved under the test's."""
        found: dict[str, Any] = yaml.safe_load(TEMPLATE.read_text())
        found["postgresql"]["data_dir"] = str(self.pgdata)
        return found

    def request(self, request_id: str, target: str = TARGET) -> None:
        """`make restore`'s ConfigMap as the kubelet mounts it: a file per key."""
        (self.restore / "id").write_text(request_id)
        (self.restore / "target").write_text(target)


def local(path: str, root: Path) -> str:
    """A path of the pod moved under `root`."""
    for pod_folder, test_folder in ((pod.SECRETS_DIR, "secrets"), ("/tmp", "tmp")):
        if path.startswith(f"{pod_folder}/"):
            return str(root / test_folder / path.removeprefix(f"{pod_folder}/"))
    raise AssertionError(f"no stand-in for {path}")


@pytest.fixture
def entrypoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Entrypoint:
    """The entrypoint with the variables of a pod without backups."""
    for name in list(os.environ):
        if name.startswith(("PGBACKREST_", "DATABASE_", "PATRONI", "POD_")):
            monkeypatch.delenv(name)
    found = Entrypoint(tmp_path, entrypoint_module())
    found.secrets.mkdir()
    found.restore.mkdir()
    found.data.mkdir()
    for key, value in SECRETS.items():
        # As the Secret's files are often made: with a final line break.
        (found.secrets / key).write_text(f"{value}\n")
    # The template with the data folder under the test's (the restore moves it).
    template = tmp_path / "patroni-template.yml"
    template.write_text(yaml.safe_dump(found.settings()))
    monkeypatch.setenv("PATRONI_CONFIG_TEMPLATE", str(template))
    monkeypatch.setenv("PATRONICTL_CONFIG_FILE", str(found.patroni_conf))
    for name, value in pod_variables("database-1", "10.0.0.11", 2**30).items():
        monkeypatch.setenv(name, value)
    for variable, key in (
        ("DATABASE_REPLICATION_PASSWORD_FILE", database.REPLICATION_PASSWORD_KEY),
        ("DATABASE_REWIND_PASSWORD_FILE", database.REWIND_PASSWORD_KEY),
    ):
        monkeypatch.setenv(variable, local(pod.secret_file(key), tmp_path))
    return found


@pytest.fixture
def with_backups(entrypoint: Entrypoint, monkeypatch: pytest.MonkeyPatch) -> Entrypoint:
    """The variables components/database.py adds with backups, paths moved under the test's."""
    variables = database.backup_env(
        database.BackupArgs(options={"repo1-type": "s3"}, secret_keys=SECRET_KEYS)
    )
    for variable in variables:
        name, value = variable["name"], str(variable.get("value"))
        if name == "DATABASE_BACKUP_SECRETS":
            files = json.loads(value)
            value = json.dumps({k: local(path, entrypoint.root) for k, path in files.items()})
        elif value.startswith("/tmp/"):
            value = local(value, entrypoint.root)
        monkeypatch.setenv(name, value)
    assert os.environ["PGBACKREST_CONFIG"] == str(entrypoint.pgbackrest_conf)
    monkeypatch.setenv("DATABASE_RESTORE_DIR", str(entrypoint.restore))
    return entrypoint


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- pgBackRest's secret options -----------------------------------------------------------------


def test_the_secret_options_go_to_pgbackrest_s_own_file_mode_0600(
    with_backups: Entrypoint,
) -> None:
    assert with_backups.write_backup_secrets() == database.STANZA
    written = with_backups.pgbackrest_conf
    assert written.read_text() == (
        "[global]\n"
        f"repo1-cipher-pass={SECRETS['backup-cipher-password']}\n"
        f"repo1-s3-key={SECRETS['backup-s3-access-key']}\n"
        f"repo1-s3-key-secret={SECRETS['backup-s3-secret-key']}\n"
    )
    assert mode(written) == 0o600
    assert mode(written.parent) == 0o700
    # Replaced whole: nothing partial left beside it.
    assert [p.name for p in written.parent.iterdir()] == [written.name]


def test_a_second_start_replaces_the_file(with_backups: Entrypoint) -> None:
    """A container restarted in the same pod (the same /tmp) with a rotated key."""
    with_backups.write_backup_secrets()
    (with_backups.secrets / "backup-s3-secret-key").write_text("rotated-secret-key\n")
    with_backups.write_backup_secrets()
    text = with_backups.pgbackrest_conf.read_text()
    assert "repo1-s3-key-secret=rotated-secret-key\n" in text
    assert SECRETS["backup-s3-secret-key"] not in text
    assert mode(with_backups.pgbackrest_conf) == 0o600


@pytest.mark.parametrize("value", ["first\nrepo1-path=/elsewhere", "a\nb\n", "\nvalue"])
def test_a_secret_with_a_line_break_is_refused(with_backups: Entrypoint, value: str) -> None:
    """Written as it is, the line after the break would be an option of its own."""
    (with_backups.secrets / "backup-s3-access-key").write_text(value)
    with pytest.raises(SystemExit) as exited:
        with_backups.write_backup_secrets()
    assert exited.value.code == "mlstack-database: the secret for repo1-s3-key holds a line break"
    assert not with_backups.pgbackrest_conf.exists()


def test_without_backups_no_file_is_written(entrypoint: Entrypoint) -> None:
    assert entrypoint.write_backup_secrets() is None
    assert not (entrypoint.root / "tmp").exists()


# --- Patroni's settings --------------------------------------------------------------------------


def test_the_archive_is_added_to_patroni_s_settings(with_backups: Entrypoint) -> None:
    settings = with_backups.settings()
    before = json.loads(json.dumps(settings))
    with_backups.add_backups(settings, database.STANZA)
    postgresql = settings["postgresql"]
    assert postgresql["parameters"] == {
        **before["postgresql"]["parameters"],
        "archive_mode": "on",
        "archive_command": "pgbackrest --stanza=mlstack archive-push %p",
        "archive_timeout": "60s",
    }
    assert postgresql["recovery_conf"] == {
        "restore_command": 'pgbackrest --stanza=mlstack archive-get %f "%p"'
    }
    # Nothing else changes; the cluster's first settings (bootstrap) included.
    del postgresql["recovery_conf"]
    postgresql["parameters"] = before["postgresql"]["parameters"]
    assert settings == before


def test_a_restore_request_moves_the_data_aside_once_per_request(with_backups: Entrypoint) -> None:
    entry = with_backups
    entry.pgdata.mkdir()
    (entry.pgdata / "PG_VERSION").write_text("17\n")
    entry.request("a1b2c3")
    settings = entry.settings()
    entry.add_restore(settings)
    aside = entry.data / "pgdata.before-restore-a1b2c3"
    assert (aside / "PG_VERSION").read_text() == "17\n"
    assert not entry.pgdata.exists()
    assert settings["bootstrap"]["method"] == "restore"
    assert settings["bootstrap"]["restore"] == {
        "command": "mlstack-database-restore",
        "keep_existing_recovery_conf": True,
    }
    # The instance restarts during the restore, its data already made from the backups: the
    # same request moves nothing again.
    entry.pgdata.mkdir()
    (entry.pgdata / "PG_VERSION").write_text("restored\n")
    again = entry.settings()
    entry.add_restore(again)
    assert (entry.pgdata / "PG_VERSION").read_text() == "restored\n"
    assert sorted(p.name for p in entry.data.iterdir() if not p.name.startswith(".")) == [
        "pgdata",
        "pgdata.before-restore-a1b2c3",
    ]
    assert again["bootstrap"]["method"] == "restore"
    # A later request is a new one.
    entry.request("d4e5f6")
    entry.add_restore(entry.settings())
    assert (entry.data / "pgdata.before-restore-d4e5f6" / "PG_VERSION").read_text() == "restored\n"
    assert (aside / "PG_VERSION").read_text() == "17\n"


def test_an_empty_volume_is_restored_to_as_it_is(with_backups: Entrypoint) -> None:
    with_backups.request("a1b2c3")
    settings = with_backups.settings()
    with_backups.add_restore(settings)
    assert settings["bootstrap"]["method"] == "restore"
    assert [p.name for p in with_backups.data.iterdir()] == [".restore-a1b2c3"]


@pytest.mark.parametrize("files", [(), ("id",), ("target",)])
def test_without_a_whole_request_nothing_moves(
    with_backups: Entrypoint, files: tuple[str, ...]
) -> None:
    """The optional ConfigMap absent, the kubelet mounts an empty folder."""
    with_backups.pgdata.mkdir()
    for name in files:
        (with_backups.restore / name).write_text("a1b2c3")
    settings = with_backups.settings()
    with_backups.add_restore(settings)
    assert settings == with_backups.settings()
    assert [p.name for p in with_backups.data.iterdir()] == ["pgdata"]


def test_without_a_restore_folder_nothing_moves(
    with_backups: Entrypoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_backups.pgdata.mkdir()
    monkeypatch.delenv("DATABASE_RESTORE_DIR")
    settings = with_backups.settings()
    with_backups.add_restore(settings)
    assert settings == with_backups.settings()
    assert [p.name for p in with_backups.data.iterdir()] == ["pgdata"]


# --- the whole start -----------------------------------------------------------------------------


class ExecError(Exception):
    """The process would have become another program."""


@pytest.fixture
def spawns(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The processes the start leaves running (the password watch), recorded, not started."""
    found: list[list[str]] = []

    def popen(args: list[str], **_: Any) -> None:
        found.append(list(args))

    monkeypatch.setattr(subprocess, "Popen", popen)
    return found


@pytest.fixture
def execs(monkeypatch: pytest.MonkeyPatch, spawns: list[list[str]]) -> list[list[str]]:
    found: list[list[str]] = []

    def execvp(file: str, args: list[str]) -> None:
        found.append([file, *args])
        raise ExecError

    monkeypatch.setattr(os, "execvp", execvp)
    return found


def start(entry: Entrypoint, monkeypatch: pytest.MonkeyPatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", ["mlstack-database", *argv])
    entry.main()


def test_the_start_writes_both_files_and_becomes_patroni(
    with_backups: Entrypoint, monkeypatch: pytest.MonkeyPatch, execs: list[list[str]]
) -> None:
    entry = with_backups
    entry.pgdata.mkdir()
    entry.request("a1b2c3")
    with pytest.raises(ExecError):
        start(entry, monkeypatch)
    assert execs == [["patroni", "patroni", str(entry.patroni_conf)]]
    settings = yaml.safe_load(entry.patroni_conf.read_text())
    assert mode(entry.patroni_conf) == 0o600
    assert settings["name"] == "database-1"
    assert settings["postgresql"]["authentication"]["replication"]["password"] == (
        "replication-password"
    )
    assert settings["postgresql"]["parameters"]["archive_mode"] == "on"
    assert settings["bootstrap"]["method"] == "restore"
    assert (entry.data / "pgdata.before-restore-a1b2c3").is_dir()
    assert mode(entry.pgbackrest_conf) == 0o600
    # The secrets are in pgBackRest's file alone.
    patroni_text = entry.patroni_conf.read_text()
    for key in SECRET_KEYS.values():
        assert SECRETS[key] not in patroni_text


def test_the_start_leaves_the_password_watch_running_beside_patroni(
    entrypoint: Entrypoint,
    monkeypatch: pytest.MonkeyPatch,
    execs: list[list[str]],
    spawns: list[list[str]],
) -> None:
    """Started before the process becomes Patroni (the exec ends this process's own code), by
    the image's interpreter; `--validate-config` starts nothing."""
    with pytest.raises(ExecError):
        start(entrypoint, monkeypatch, "--validate-config")
    assert spawns == []
    with pytest.raises(ExecError):
        start(entrypoint, monkeypatch)
    assert spawns == [[sys.executable, str(BIN / "mlstack-database"), "--watch-passwords"]]
    assert execs[-1][:2] == ["patroni", "patroni"]


def test_without_backups_the_start_adds_neither_archive_nor_restore(
    entrypoint: Entrypoint, monkeypatch: pytest.MonkeyPatch, execs: list[list[str]]
) -> None:
    """A request is read only with backups: there is nothing to restore from without."""
    entrypoint.pgdata.mkdir()
    monkeypatch.setenv("DATABASE_RESTORE_DIR", str(entrypoint.restore))
    entrypoint.request("a1b2c3")
    with pytest.raises(ExecError):
        start(entrypoint, monkeypatch)
    settings = yaml.safe_load(entrypoint.patroni_conf.read_text())
    assert "archive_mode" not in settings["postgresql"]["parameters"]
    assert "recovery_conf" not in settings["postgresql"]
    assert "method" not in settings["bootstrap"]
    assert [p.name for p in entrypoint.data.iterdir()] == ["pgdata"]


def test_the_backups_container_s_start_writes_pgbackrest_s_file_alone(
    with_backups: Entrypoint, monkeypatch: pytest.MonkeyPatch, execs: list[list[str]]
) -> None:
    with_backups.pgdata.mkdir()
    with_backups.request("a1b2c3")
    start(with_backups, monkeypatch, "--backup-config")
    assert execs == []
    assert with_backups.pgbackrest_conf.read_text().startswith("[global]\nrepo1-cipher-pass=")
    assert not with_backups.patroni_conf.exists()
    assert [p.name for p in with_backups.data.iterdir()] == ["pgdata"]


# --- who may connect, and the superuser's psql ---------------------------------------------------


def test_pg_hba_admits_each_role_where_it_needs_to_be(
    entrypoint: Entrypoint, monkeypatch: pytest.MonkeyPatch, execs: list[list[str]]
) -> None:
    """The superuser through the local socket alone, Patroni's replication and rewind roles to
    replication and `postgres`, the roles the program's URLs name to the database they name."""
    with pytest.raises(ExecError):
        start(entrypoint, monkeypatch)
    written = yaml.safe_load(entrypoint.patroni_conf.read_text())["postgresql"]["pg_hba"]
    application = f"host {database.DB_NAME} {database.OWNER},{database.GATEWAY_USER}"
    assert written == [
        "local all postgres peer",
        "local all all reject",
        "host all postgres 0.0.0.0/0 reject",
        "host all postgres ::/0 reject",
        "host replication replicator 0.0.0.0/0 scram-sha-256",
        "host replication replicator ::/0 scram-sha-256",
        "host postgres rewind 0.0.0.0/0 scram-sha-256",
        "host postgres rewind ::/0 scram-sha-256",
        f"{application} 0.0.0.0/0 scram-sha-256",
        f"{application} ::/0 scram-sha-256",
    ]


def test_pg_hba_follows_the_names_of_patroni_s_roles(entrypoint: Entrypoint) -> None:
    """Written from the names Patroni makes its roles by, not beside them: a role renamed in
    patroni.yml is admitted by its new name."""
    settings = entrypoint.settings()
    authentication = settings["postgresql"]["authentication"]
    for kind, name in (("superuser", "admin"), ("replication", "streamer"), ("rewind", "rewinder")):
        authentication[kind]["username"] = name
    users = [line.split()[2] for line in entrypoint.pg_hba(settings)]
    assert users == [
        "admin", "all", "admin", "admin", "streamer", "streamer", "rewinder", "rewinder",
        f"{database.OWNER},{database.GATEWAY_USER}", f"{database.OWNER},{database.GATEWAY_USER}",
    ]  # fmt: skip


def test_the_pod_is_announced_at_the_ports_the_services_send_to(entrypoint: Entrypoint) -> None:
    """The address each member gives the others, and the port Patroni puts on the primary's
    Endpoints, are the pod's IP at the ports the program's Services and probes use (components/
    database.py), as the image's patroni.yml has PostgreSQL and the REST API listen."""
    settings = entrypoint.configuration()
    assert settings["postgresql"]["connect_address"] == f"10.0.0.11:{database.PORT}"
    assert settings["restapi"]["connect_address"] == f"10.0.0.11:{database.API_PORT}"
    assert settings["kubernetes"]["ports"] == [{"name": "postgres", "port": database.PORT}]


def test_the_announced_ports_follow_patroni_s_listen_settings(
    entrypoint: Entrypoint, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Read from the settings, not written beside them: ports moved in patroni.yml move the
    addresses (an IPv6 pod IP in brackets)."""
    settings = entrypoint.settings()
    settings["postgresql"]["listen"] = "0.0.0.0:6543"
    settings["restapi"]["listen"] = "0.0.0.0:9008"
    moved = tmp_path / "moved.yml"
    moved.write_text(yaml.safe_dump(settings))
    monkeypatch.setenv("PATRONI_CONFIG_TEMPLATE", str(moved))
    monkeypatch.setenv("POD_IP", "fd00::11")
    found = entrypoint.configuration()
    assert found["postgresql"]["connect_address"] == "[fd00::11]:6543"
    assert found["restapi"]["connect_address"] == "[fd00::11]:9008"
    assert found["kubernetes"]["ports"] == [{"name": "postgres", "port": 6543}]
    assert "--port=6543" in entrypoint.local_psql()


# --- the WAL kept, bounded by the volume ----------------------------------------------------------


@pytest.mark.parametrize(
    ("storage_size", "max_wal_size", "max_slot_wal_keep_size"),
    [
        # A quarter of the volume each, max_wal_size no more than PostgreSQL's default 1GB.
        ("1Gi", "256MB", "256MB"),
        ("1.5Gi", "384MB", "384MB"),
        ("2G", "476MB", "476MB"),
        ("10Gi", "1024MB", "2560MB"),
        ("100Gi", "1024MB", "25600MB"),
    ],
)
def test_the_wal_kept_follows_the_stack_s_storage_size(
    entrypoint: Entrypoint,
    monkeypatch: pytest.MonkeyPatch,
    storage_size: str,
    max_wal_size: str,
    max_slot_wal_keep_size: str,
) -> None:
    """A standby that stops streaming holds its slot on the primary (Patroni keeps one for every
    member), and with it every WAL segment since: bounded by the stack's storageSize, as the
    program gives it to each pod, so that one broken standby cannot fill the primary's volume.
    The instance's own parameters (Patroni lets them override the cluster's, which are written
    once), so that a new size reaches a running cluster."""
    parameters = instance_parameters(entrypoint, monkeypatch, storage_size)
    assert (parameters["max_wal_size"], parameters["max_slot_wal_keep_size"]) == (
        max_wal_size,
        max_slot_wal_keep_size,
    )
    settings = entrypoint.configuration()
    assert "max_slot_wal_keep_size" not in settings["bootstrap"]["dcs"]["postgresql"]["parameters"]


@pytest.mark.parametrize("bytes_given", [2**20, 200 * 2**20])
def test_however_small_a_volume_the_image_is_given_it_keeps_four_segments(
    entrypoint: Entrypoint, monkeypatch: pytest.MonkeyPatch, bytes_given: int
) -> None:
    """Never 0, which would give up a standby's slot as soon as it is a segment behind: for a
    volume the program never gives (none under LEAST_STORAGE_SIZE), the image run by hand."""
    monkeypatch.setenv("DATABASE_STORAGE_BYTES", str(bytes_given))
    parameters = entrypoint.configuration()["postgresql"]["parameters"]
    assert (parameters["max_wal_size"], parameters["max_slot_wal_keep_size"]) == ("64MB", "64MB")


# Patroni 4.1.5's parameters that it takes from the cluster's settings (bootstrap.dcs, then
# `patronictl edit-config`) alone, dropping an instance's own: its ConfigHandler.CMDLINE_OPTIONS.
CLUSTER_ONLY_PARAMETERS: Final = frozenset(
    {
        "listen_addresses", "port", "cluster_name", "wal_level", "hot_standby",
        "max_connections", "max_wal_senders", "wal_keep_segments", "wal_keep_size",
        "max_prepared_transactions", "max_locks_per_transaction", "track_commit_timestamp",
        "max_replication_slots", "max_worker_processes", "wal_log_hints",
    }
)  # fmt: skip


def test_the_instance_s_own_parameters_are_none_patroni_would_drop(
    entrypoint: Entrypoint,
) -> None:
    """wal_keep_size among them: it cannot follow the volume as the WAL limits do, and stays the
    cluster's (patroni.yml)."""
    settings = entrypoint.configuration()
    assert not CLUSTER_ONLY_PARAMETERS & set(settings["postgresql"]["parameters"])
    assert "wal_keep_size" in settings["bootstrap"]["dcs"]["postgresql"]["parameters"]


def test_the_least_volume_is_the_least_whose_slot_limit_reaches_wal_keep_size(
    entrypoint: Entrypoint,
) -> None:
    """wal_keep_size and max_slot_wal_keep_size count back from the same WAL position: the
    larger one is what stays. From LEAST_STORAGE_SIZE up that is the slot limit, a quarter of the
    volume; a mebibyte less and it would be the cluster's wal_keep_size, which then takes more
    than its quarter."""
    least = quantity_bytes(database.LEAST_STORAGE_SIZE)
    settings = entrypoint.configuration()
    keep = megabytes(settings["bootstrap"]["dcs"]["postgresql"]["parameters"]["wal_keep_size"])
    slot_limits = {
        volume: megabytes(entrypoint.wal_limits(volume)["max_slot_wal_keep_size"])
        for volume in (least, least - 2**20)
    }
    assert slot_limits[least] >= keep > slot_limits[least - 2**20]


@pytest.mark.parametrize("storage_size", ["1Gi", "1.5Gi", "2G", "4Gi", "10Gi", "100Gi"])
def test_the_wal_kept_is_at_most_half_of_every_volume_the_program_deploys(
    entrypoint: Entrypoint, monkeypatch: pytest.MonkeyPatch, storage_size: str
) -> None:
    """pg_wal holds the WAL since the last checkpoint (max_wal_size) and, behind it, the larger
    of wal_keep_size and what slots hold back (max_slot_wal_keep_size): half the volume at most,
    the other half the data's. tests/services/test_database_wal_limit.py measures it."""
    parameters = instance_parameters(entrypoint, monkeypatch, storage_size)
    kept_mb = megabytes(parameters["max_wal_size"]) + max(
        megabytes(parameters["wal_keep_size"]), megabytes(parameters["max_slot_wal_keep_size"])
    )
    assert kept_mb * 2**20 <= quantity_bytes(storage_size) / 2


def test_the_earlier_timelines_segments_are_those_before_each_switch_point(
    entrypoint: Entrypoint, tmp_path: Path
) -> None:
    """After a promotion to timeline 3 (history: 1 ended at 1/FF000028, 2 at 2/01000060), the
    segments to archive are those of timelines 1 and 2 that end at or before their switch
    point: not the one a switch point is in, not another branch's (timeline 4), not the new
    timeline's, not a `.partial` or a history file."""
    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    (pg_wal / "00000003.history").write_text(
        "1\t1/FF000028\tno recovery target specified\n\n"
        "2\t2/01000060\tno recovery target specified\n"
    )
    names = (
        "0000000100000001000000FE",
        "0000000100000001000000FF",  # the switch point's: 1/FF000000 to 2/00000000
        "000000020000000200000000",
        "000000020000000200000001",  # the switch point's
        "000000020000000200000001.partial",
        "000000030000000200000001",
        "000000040000000200000000",
        "00000002.history",
    )
    for name in names:
        (pg_wal / name).write_bytes(b"")
    found = entrypoint.earlier_segments(pg_wal, 3, 16 * 2**20)
    assert [path.name for path in found] == [
        "0000000100000001000000FE",
        "000000020000000200000000",
    ]
    assert entrypoint.earlier_segments(pg_wal, 1, 16 * 2**20) == []


def instance_parameters(
    entrypoint: Entrypoint, monkeypatch: pytest.MonkeyPatch, storage_size: str
) -> dict[str, Any]:
    """PostgreSQL's parameters on an instance of the dev stack with `storage_size`, as the
    program gives it to the pod: the cluster's (bootstrap.dcs), the instance's own over them."""
    run = run_program("dev", with_fields(stack_config("dev"), "database", storageSize=storage_size))
    given = env(container(run.one("StatefulSet", database.NAME).inputs))
    monkeypatch.setenv("DATABASE_STORAGE_BYTES", given["DATABASE_STORAGE_BYTES"])
    settings = entrypoint.configuration()
    return {
        **settings["bootstrap"]["dcs"]["postgresql"]["parameters"],
        **settings["postgresql"]["parameters"],
    }


def megabytes(value: object) -> int:
    """A size in PostgreSQL's MB (MiB), as the image's parameters give it (`256MB`)."""
    return int(str(value).removesuffix("MB"))


@pytest.mark.parametrize("size", ["", "0", "1Gi", "-1", "1e9", "²"])
def test_a_start_without_a_storage_size_it_can_read_stops_naming_it(
    entrypoint: Entrypoint, monkeypatch: pytest.MonkeyPatch, size: str
) -> None:
    monkeypatch.setenv("DATABASE_STORAGE_BYTES", size)
    with pytest.raises(SystemExit) as stopped:
        entrypoint.configuration()
    assert str(stopped.value).startswith("mlstack-database: DATABASE_STORAGE_BYTES")


def test_the_superuser_s_psql_reaches_the_pod_s_socket(
    entrypoint: Entrypoint, monkeypatch: pytest.MonkeyPatch, execs: list[list[str]]
) -> None:
    """The socket's folder the pod mounts and the port the Services send to (components/
    database.py), as patroni.yml has PostgreSQL listen; the names roles.sql and the roles
    script are given as variables; the options given after them."""
    with pytest.raises(ExecError):
        start(entrypoint, monkeypatch, "--psql", "--file=roles.sql")
    assert execs == [
        [
            "psql",
            "psql",
            f"--host={database.SOCKET_DIR}",
            f"--port={database.PORT}",
            "--username=postgres",
            "--dbname=postgres",
            "--no-psqlrc",
            "--no-password",
            "--quiet",
            "--set=ON_ERROR_STOP=1",
            f"--set=owner={database.OWNER}",
            f"--set=gateway={database.GATEWAY_USER}",
            f"--set=dbname={database.DB_NAME}",
            "--set=replication_role=replicator",
            "--set=rewind_role=rewind",
            "--file=roles.sql",
        ]
    ]
    # Nothing else: no configuration written for it.
    assert not entrypoint.patroni_conf.exists()


# --- Patroni's restore bootstrap -----------------------------------------------------------------


def restore_bootstrap(entry: Entrypoint) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """The restore bootstrap as Patroni runs it (--scope, --datadir), pgBackRest a stand-in
    that logs its arguments: how it ran, and what pgBackRest was given."""
    logged = entry.root / "pgbackrest-args.json"
    fake = stand_in(
        entry.root / "bin",
        "pgbackrest",
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(logged)!r}, 'w').write(json.dumps(sys.argv[1:]))\n",
    )
    done = subprocess.run(
        ["bash", str(BIN / "mlstack-database-restore"), "--scope=database",
         f"--datadir={entry.pgdata}"],
        env=env_first_on_path(fake.parent), capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    return done, json.loads(logged.read_text()) if logged.exists() else []


def test_the_restore_bootstrap_asks_pgbackrest_for_the_requested_time(
    with_backups: Entrypoint,
) -> None:
    """A request of an earlier release (id and target alone): pgBackRest gets the target whole,
    the data folder, and promotion at the target, and picks the backup and timeline itself."""
    entry = with_backups
    entry.request("a1b2c3")
    done, given = restore_bootstrap(entry)
    assert done.returncode == 0, done.stderr
    assert given == [
        f"--pg1-path={entry.pgdata}",
        "--type=time",
        f"--target={TARGET}",
        "--target-action=promote",
        "restore",
    ]
    assert done.stderr == (
        f"mlstack-database-restore: restoring {entry.pgdata} to {TARGET} (--type=time "
        f"--target={TARGET} --target-action=promote)\n"
    )


@pytest.mark.parametrize(
    ("kind", "xid", "recovery"),
    [
        ("time", None, ["--type=time", f"--target={TARGET}", "--target-action=promote"]),
        ("xid", "731", ["--type=xid", "--target=731", "--target-action=promote"]),
        ("default", None, ["--type=default"]),
    ],
)
def test_the_restore_bootstrap_restores_the_backup_and_timeline_the_request_names(
    kind: str, xid: str | None, recovery: list[str], with_backups: Entrypoint
) -> None:
    """`make restore` names the timeline the database was on at the time and a backup of its
    history (mlstack-database-repository choose): pgBackRest is given both, never left to
    choose."""
    entry = with_backups
    entry.request("a1b2c3")
    for name, value in (("timeline", "2"), ("set", "20261204-203000F"), ("type", kind)):
        (entry.restore / name).write_text(value)
    if xid is not None:
        (entry.restore / "xid").write_text(xid)
    done, given = restore_bootstrap(entry)
    assert done.returncode == 0, done.stderr
    assert given == [
        f"--pg1-path={entry.pgdata}",
        *recovery,
        "--set=20261204-203000F",
        "--target-timeline=2",
        "restore",
    ]


def test_the_restore_bootstrap_refuses_a_request_of_no_known_type(
    with_backups: Entrypoint,
) -> None:
    entry = with_backups
    entry.request("a1b2c3")
    for name, value in (("timeline", "2"), ("set", "20261204-203000F"), ("type", "immediate")):
        (entry.restore / name).write_text(value)
    done, given = restore_bootstrap(entry)
    assert (done.returncode, given) == (2, [])
    assert done.stderr == (
        "mlstack-database-restore: the request's type is not time, xid or default\n"
    )


def test_the_restore_bootstrap_needs_a_data_folder(with_backups: Entrypoint) -> None:
    with_backups.request("a1b2c3")
    done = subprocess.run(
        ["bash", str(BIN / "mlstack-database-restore"), "--scope=database"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == "mlstack-database-restore: no --datadir given\n"


# --- the backups container's start and stop ------------------------------------------------------


@pytest.mark.parametrize("variable", sorted(backups_own_env()))
def test_the_backups_container_needs_each_variable_the_program_gives_it(
    tmp_path: Path, variable: str
) -> None:
    """The program always gives them, from the stack's settings: one missing is a mistake said
    at once, before anything runs, not a default of the image's that may differ from the
    stack's."""
    calls = tmp_path / "calls"
    stand_ins = tmp_path / "bin"
    for name in ("mlstack-database", "pgbackrest"):
        stand_in(stand_ins, name, f'#!/bin/sh\necho "$0 $*" >> "{calls}"\n')
    env = env_first_on_path(stand_ins, **{**backups_own_env(), "METRICS_PORT": str(free_port())})
    del env[variable]
    done = subprocess.run(
        [sys.executable, str(BIN / "mlstack-database-backups")],
        env=env, capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    assert done.stderr == f"mlstack-database-backups: {variable} is not set\n"
    assert done.returncode == 1
    assert not calls.exists()


def test_the_backups_container_stops_at_once_on_sigterm(tmp_path: Path) -> None:
    """The container's first process: the kernel gives PID 1 no default action for SIGTERM, so
    without a handler of its own every stop of a database pod waits out the grace period. Here
    (not PID 1) a missing handler shows as death by the signal instead of exit status 0."""
    stand_ins = tmp_path / "bin"
    for name, body in (
        # --backup-config: pgBackRest's file; --psql: no server, so no backup is due here.
        ("mlstack-database", '[ "$1" = --backup-config ]'),
        ("pgbackrest", "echo '[]'"),  # `info`: an empty repository
    ):
        stand_in(stand_ins, name, f"#!/bin/sh\n{body}\n")
    sidecar, port = start_backups(tmp_path, stand_ins)
    try:
        # /metrics answers once the handler is in place and the first round has read the
        # repository.
        sidecar.wait_for(
            "serving /metrics with the repository read",
            lambda: metric(port, "mlstack_database_backup_repository_up") == 1,
            timeout=30,
        )
        sidecar.signal(signal.SIGTERM)
        status = sidecar.wait_for_exit(10)
    finally:
        sidecar.stop()
    output = sidecar.log_path.read_text()
    assert status == 0, output
    assert "stopping on signal 15" in output


def start_backups(tmp_path: Path, stand_ins: Path, **env: str) -> tuple[LocalProcess, int]:
    """The backups container's program, started with the stand-ins in `stand_ins` first on its
    PATH (and beside them the image's own mlstack-database-repository, which reads what they
    answer), its own settings and `env`; with the port of its /metrics."""
    script_stand_in(stand_ins, "mlstack-database-repository")
    port = free_port()
    settings = {**backups_own_env(), "METRICS_PORT": str(port), **env}
    sidecar = LocalProcess(
        "mlstack-database-backups",
        [sys.executable, str(BIN / "mlstack-database-backups")],
        tmp_path / "mlstack-database-backups.log",
        env=env_first_on_path(stand_ins, **settings),
    ).start()
    return sidecar, port


# The local server's database's system identifier, as the stand-ins tell it.
SYSTEM_ID: Final = "7450000000000000001"


def primary_stand_in(stand_ins: Path) -> None:
    """`mlstack-database` on a primary of timeline 1: what the local server answers
    mlstack-database-repository (its system identifier and the WAL file it writes); any other
    call (--backup-config, the archive's question) succeeds and prints nothing."""
    stand_in(
        stand_ins,
        "mlstack-database",
        f'#!/bin/sh\ncase "$*" in *pg_control_system*) echo "{SYSTEM_ID}|'
        '000000010000000000000003" ;; esac\n',
    )


def repository_info(*backups: str) -> str:
    """`pgbackrest info --output=json` of a stanza made for SYSTEM_ID's database, with
    `backups` (each a JSON object's text)."""
    stanza = {
        "name": "mlstack",
        "db": [{"id": 1, "system-id": int(SYSTEM_ID), "version": "17"}],
        "archive": [{"database": {"id": 1}, "id": "17-1"}],
        "backup": [],
    }
    return json.dumps([stanza]).replace('"backup": []', f'"backup": [{", ".join(backups)}]')


def metric(port: int, name: str, **labels: str) -> float | None:
    """A sample of the /metrics on `port`, by its name and labels; None while nothing answers
    there."""
    try:
        reply = request("GET", f"http://127.0.0.1:{port}/metrics", timeout=2)
    except OSError:
        return None
    if reply.status != 200:
        return None
    return metric_value(reply.body.decode(), name, **labels)


def test_the_archive_s_metrics_are_absent_while_the_local_server_does_not_answer(
    tmp_path: Path,
) -> None:
    """Not a 0 that would read as nothing waiting: no sample at all, while the backups' own
    metrics go on (tests/services/test_database_scripts.py reads them from a real server)."""
    calls = tmp_path / "calls"
    stand_ins = tmp_path / "bin"
    # --backup-config succeeds; --psql finds no server.
    stand_in(
        stand_ins,
        "mlstack-database",
        f'#!/bin/sh\necho "$1" >> "{calls}"\n[ "$1" = --backup-config ]\n',
    )
    stand_in(stand_ins, "pgbackrest", "#!/bin/sh\necho '[]'\n")
    sidecar, port = start_backups(tmp_path, stand_ins, DATABASE_BACKUP_CHECK_SECONDS="0.2")
    try:
        sidecar.wait_for(
            "three reads of the archive, the repository read",
            lambda: (
                calls.exists()
                and calls.read_text().splitlines().count("--psql") >= 3
                and metric(port, "mlstack_database_backup_repository_up") == 1
            ),
            timeout=30,
        )
        text = request("GET", f"http://127.0.0.1:{port}/metrics").body.decode()
    finally:
        sidecar.stop()
    assert "mlstack_database_wal_archive" not in text


def test_a_backup_with_page_checksum_errors_counts_for_the_schedule(tmp_path: Path) -> None:
    """pgBackRest flags (`error`) a backup that found a page whose checksum is wrong: it is
    whole, and another taken at once finds the same page. Counted as missing, it would start a
    full backup every round, and each one would push a clean one out of the retention. It counts
    for when the next backup is due; the metrics still tell it apart from a good one."""
    calls = tmp_path / "pgbackrest-calls"
    stand_ins = tmp_path / "bin"
    # On the primary; the repository's one backup is a full one of its timeline that ended a
    # moment ago.
    primary_stand_in(stand_ins)
    info = repository_info(
        '{"label": "20261204-210000F", "type": "full", "error": true, '
        '"timestamp": {"start": %s, "stop": %s}, "database": {"id": 1}, '
        '"archive": {"start": "000000010000000000000002", "stop": "000000010000000000000002"}, '
        '"lsn": {"start": "0/2000028", "stop": "0/2000138"}}'
    )
    stand_in(
        stand_ins,
        "pgbackrest",
        f'#!/bin/sh\necho "$*" >> "{calls}"\n'
        f'[ "$1" != info ] || printf \'{info}\' "$(date +%s)" "$(date +%s)"\n',
    )
    sidecar, port = start_backups(tmp_path, stand_ins, DATABASE_BACKUP_CHECK_SECONDS="0.2")

    def logged() -> list[str]:
        return calls.read_text().splitlines() if calls.exists() else []

    try:
        sidecar.wait_for(
            "five rounds", lambda: logged().count("info --output=json") >= 5, timeout=30
        )
        full = metric(port, "mlstack_database_backups", type="full")
        age = metric(port, "mlstack_database_backup_age_seconds")
    finally:
        sidecar.stop()
    assert [call for call in logged() if call.startswith("backup")] == [], logged()
    assert (full, age) == (0, None)


def test_a_backup_past_its_timeout_is_stopped_and_counted_as_failed(tmp_path: Path) -> None:
    """A backup still running after DATABASE_BACKUP_TIMEOUT_SECONDS is stopped: a failure in
    mlstack_database_backup_runs_total, as any backup that fails, and another round follows."""
    calls = tmp_path / "pgbackrest-calls"
    stand_ins = tmp_path / "bin"
    # On the primary; an empty repository, so a full backup is due, and it hangs.
    primary_stand_in(stand_ins)
    stand_in(
        stand_ins,
        "pgbackrest",
        f'#!/bin/sh\necho "$*" >> "{calls}"\n'
        f"[ \"$1\" != info ] || {{ echo '{repository_info()}'; exit 0; }}\n"
        '[ "$1" != backup ] || exec sleep 30\n',
    )
    sidecar, port = start_backups(
        tmp_path,
        stand_ins,
        DATABASE_BACKUP_CHECK_SECONDS="0.2",
        DATABASE_BACKUP_TIMEOUT_SECONDS="0.5",
    )
    try:
        sidecar.wait_for(
            "two backups stopped",
            lambda: (
                (
                    metric(
                        port, "mlstack_database_backup_runs_total", type="full", outcome="failure"
                    )
                    or 0
                )
                >= 2
            ),
            timeout=30,
        )
    finally:
        sidecar.stop()
    assert "full backup failed: still running after 0.5 s, stopped" in sidecar.log_tail()


# --- the password watch --------------------------------------------------------------------------

# What the watch says once it has read the files it watches.
WATCHING: Final = "mlstack-database: watching the Secret's password files"
# The passwords of the stack's Secret, before and after a rotation.
PASSWORDS: Final = {
    database.OWNER_PASSWORD_KEY: "owner-password",
    database.GATEWAY_PASSWORD_KEY: "gateway-password",
    database.REPLICATION_PASSWORD_KEY: "replication-password",
    database.REWIND_PASSWORD_KEY: "rewind-password",
}
ROTATED: Final = {key: f"{value}-rotated" for key, value in PASSWORDS.items()}


class Watch:
    """`mlstack-database --watch-passwords` checking the Secret's files every 0.05 s, with
    stand-ins: `psql` (the local server's answer whether it is in recovery) answers what `answer`
    says (`t` a standby, `f` the primary, "" no answer), and the roles script logs each run and
    fails while `failures` says so (one fewer each run)."""

    def __init__(self, root: Path) -> None:
        self.secrets = root / "secrets"
        write_secret_volume(self.secrets, PASSWORDS)
        stand_ins = root / "bin"
        self._asked, self._runs = root / "asked", root / "runs"
        self._answer, self._failures = root / "answer", root / "failures"
        self.answer("f")
        self._failures.write_text("0")
        stand_in(
            stand_ins,
            "psql",
            f'#!/bin/sh\necho >> "{self._asked}"\nanswer=$(cat "{self._answer}")\n'
            '[ -n "$answer" ] || exit 2\necho "$answer"\n',
        )
        stand_in(
            stand_ins,
            "mlstack-database-roles",
            f'#!/bin/sh\necho "$#" >> "{self._runs}"\nfailures=$(cat "{self._failures}")\n'
            f'[ "$failures" -gt 0 ] || exit 0\necho $((failures - 1)) > "{self._failures}"\n'
            "exit 1\n",
        )
        self.process = LocalProcess(
            "mlstack-database --watch-passwords",
            [sys.executable, str(BIN / "mlstack-database"), "--watch-passwords"],
            root / "watch.log",
            env=env_first_on_path(
                stand_ins,
                PATRONI_CONFIG_TEMPLATE=str(TEMPLATE),
                DATABASE_SECRETS_CHECK_SECONDS="0.05",
                **password_files(self.secrets),
            ),
        )

    def start(self) -> Watch:
        self.process.start()
        self.process.wait_for("watching", lambda: WATCHING in self.log(), timeout=30)
        return self

    def answer(self, text: str) -> None:
        self._answer.write_text(text)

    def fail(self, times: int) -> None:
        self._failures.write_text(str(times))

    def rotate(self, values: dict[str, str] = ROTATED) -> None:
        """The Secret changed: the kubelet writes its new version."""
        write_secret_volume(self.secrets, values)

    def asked(self) -> int:
        """How often the local server was asked whether it is in recovery."""
        return len(self._asked.read_text().splitlines()) if self._asked.exists() else 0

    def runs(self) -> list[str]:
        """The roles script's runs: the number of arguments of each (none: the watch's)."""
        return self._runs.read_text().splitlines() if self._runs.exists() else []

    def checks(self, count: int = 10) -> None:
        """Long enough for `count` checks."""
        time.sleep(count * 0.05)

    def log(self) -> str:
        return self.process.log_path.read_text()


@pytest.fixture
def watch(tmp_path: Path) -> Iterator[Watch]:
    found = Watch(tmp_path).start()
    try:
        yield found
    finally:
        found.process.stop()


def test_unchanged_files_are_left_to_the_start_and_the_server_is_not_asked(watch: Watch) -> None:
    """What the files hold as the instance starts, Patroni's bootstrap or start callback sets."""
    watch.checks()
    assert (watch.asked(), watch.runs()) == (0, [])


def test_a_change_on_the_primary_runs_the_roles_script_once(watch: Watch) -> None:
    watch.rotate()
    eventually(lambda: watch.runs() == ["0"], "the roles script run", 10)
    watch.checks()
    assert watch.runs() == ["0"]
    assert "the Secret's passwords changed; setting them on the primary" in watch.log()
    watch.rotate(PASSWORDS)
    eventually(lambda: watch.runs() == ["0", "0"], "the roles script run again", 10)


def test_a_change_on_a_standby_is_left_to_its_promotion(watch: Watch) -> None:
    """Patroni's on_role_change reads the files as the standby becomes the primary: the watch
    runs nothing for a change it saw before, and runs the script for the next one."""
    watch.answer("t")
    watch.rotate()
    eventually(lambda: "a standby: its promotion sets them" in watch.log(), "the standby seen", 10)
    asked = watch.asked()
    watch.answer("f")
    watch.checks()
    assert (watch.asked(), watch.runs()) == (asked, [])
    watch.rotate(PASSWORDS)
    eventually(lambda: watch.runs() == ["0"], "the roles script run", 10)


def test_a_server_that_does_not_answer_is_asked_again(watch: Watch) -> None:
    """Not running yet, or restarting: neither the primary nor a standby."""
    watch.answer("")
    watch.rotate()
    eventually(lambda: watch.asked() >= 3, "the server asked three times", 10)
    assert watch.runs() == []
    watch.answer("f")
    eventually(lambda: watch.runs() == ["0"], "the roles script run", 10)


def test_a_failed_run_is_tried_again_until_one_succeeds(watch: Watch) -> None:
    """An instance that demoted as the script began, a statement that failed: tried again after
    the check interval, then twice as long each time; once a run succeeds, no more."""
    watch.fail(2)
    watch.rotate()
    eventually(lambda: len(watch.runs()) == 3, "three runs", 10)
    watch.checks()
    assert len(watch.runs()) == 3
    assert "trying again in 0.05 s" in watch.log()
    assert "trying again in 0.1 s" in watch.log()
