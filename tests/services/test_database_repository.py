"""The database image's restore after an earlier restore, against a real PostgreSQL and a real
pgBackRest repository (harness.pgbackrest): `mlstack-database-repository choose` finds the
timeline the database was on at a time and a backup of that timeline's history, and
`mlstack-database-restore` restores it from that backup along that timeline, as the pods do.

One history for the module, as the application lived it: rows written around two full
backups, the database restored to a time between them (a restore abandons what came after
that time, and a new timeline begins), rows written since. Each restore of a test goes to a
server of its own, which archives nothing: the history stays as it was for the others. A
second one keeps one full backup: the backup after a restore expires the one before, and the
WAL from before it, the restored timeline's first commits with it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from harness.http import request
from harness.metrics import metric_value
from harness.pgbackrest import STANZA, Repository, pgbackrest_program
from harness.poll import eventually, wait_until
from harness.postgres import PostgresServer, postgres_bindir, query
from harness.processes import LocalServer
from tests import database_image
from tests.database_image import BIN, image_for
from tests.services.support import throwaway_postgres
from tests.stand_ins import stand_in

# pgBackRest starts a recovery to a time from a backup that ended in an earlier second.
SECOND: Final = 1.1


def wrote(server: PostgresServer) -> list[str]:
    """The rows' names, in the order they were written."""
    return [row[0] for row in query(server.dsn(), "SELECT name FROM events ORDER BY at")]


def write(server: PostgresServer, *names: str) -> None:
    for name in names:
        query(server.dsn(), "INSERT INTO events (name) VALUES ($1)", name)


def now(server: PostgresServer) -> str:
    """The database's clock, between two commits: a time to restore to."""
    time.sleep(0.05)
    moment: dt.datetime = query(server.dsn(), "SELECT clock_timestamp()")[0][0]
    time.sleep(0.05)
    # As `make restore` writes a request's target (tools/database_backup.py).
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def script_env(repository: Repository, **variables: str) -> dict[str, str]:
    """The image's scripts' environment: pgBackRest with the repository's settings and the
    server's programs first on PATH."""
    path = (str(repository.bin), str(postgres_bindir()), os.environ["PATH"])
    return {**os.environ, "PATH": os.pathsep.join(path), **variables}


def choose(repository: Repository, moment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BIN / "mlstack-database-repository"), "choose", moment],
        env=script_env(repository), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def chosen(repository: Repository, moment: str) -> dict[str, Any]:
    done = choose(repository, moment)
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def restore_into(
    server: PostgresServer,
    repository: Repository,
    request: dict[str, str],
    folder: Path,
    *,
    archive: bool = True,
) -> None:
    """`mlstack-database-restore` as Patroni runs it, for a request `make restore` made, into
    `server`'s (new, empty) data folder; then the server started until it is a primary (which
    archives to the repository unless `archive` is False)."""
    folder.mkdir()
    for name, value in request.items():
        (folder / name).write_text(value)
    owner = server.base.stat()
    server.data.mkdir(mode=0o700)
    os.chown(server.data, owner.st_uid, owner.st_gid)
    done = subprocess.run(
        ["bash", str(BIN / "mlstack-database-restore"), "--scope=database",
         f"--datadir={server.data}"],
        env=script_env(repository, DATABASE_RESTORE_DIR=str(folder)),
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    if not archive:
        with (server.data / "postgresql.auto.conf").open("a") as settings:
            settings.write("archive_mode = 'off'\n")
    server.start()
    wait_until(
        lambda: not query(server.dsn(), "SELECT pg_is_in_recovery()")[0][0],
        "the restored server to become a primary",
        120,
        server.log,
        interval=0.1,
    )


def request_for(repository: Repository, moment: str) -> dict[str, str]:
    """The request `make restore` makes for `moment` (tools/database_backup.py)."""
    answer = chosen(repository, moment)
    found = {
        "id": "0123456789ab",
        "target": moment,
        "timeline": str(answer["timeline"]),
        "set": answer["set"],
        "type": answer["type"],
        "xid": answer["xid"] or "",
    }
    return {key: value for key, value in found.items() if value}


@dataclass
class History:
    server: PostgresServer
    repository: Repository
    # The backups' labels, and the times asked for, by name.
    backups: dict[str, str]
    times: dict[str, str]


def archiving(server: PostgresServer, *, retention_full: int = 9) -> Repository:
    """A repository `server` archives to (its stanza made), keeping `retention_full` full
    backups; the table `events` made."""
    try:
        pgbackrest_program()
    except RuntimeError as missing:
        pytest.fail(str(missing), pytrace=False)
    repository = Repository(server, retention_full=retention_full)
    repository.archive_server()
    query(
        server.dsn(),
        "CREATE TABLE events (name text PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())",
    )
    return repository


def full_backup(repository: Repository) -> str:
    """A full backup, as the backups container takes it (pgBackRest then expires what the
    retention no longer keeps): its label. Returns a second after it ended, so that a time
    after it is in a later second than its stop."""
    repository("backup", "--type=full")
    found = repository.stanza()["backup"]
    time.sleep(SECOND)
    return str(found[-1]["label"])


def timeline_one(server: PostgresServer, repository: Repository, backup: str) -> History:
    """What both histories begin with, on timeline 1: a0, full backup `backup`, a1; T1; b0."""
    history = History(server, repository, {}, {})
    write(server, "a0")
    history.backups[backup] = full_backup(repository)
    write(server, "a1")
    history.times["T1"] = now(server)
    write(server, "b0")
    return history


def restore_in_place(server: PostgresServer, repository: Repository, moment: str) -> None:
    """`server`'s database restored to `moment`, as `make restore` does (its data before moved
    aside): a new timeline begins."""
    repository("check")
    server.stop()
    server.data.rename(server.data.with_name("data.before-restore"))
    restore_into(server, repository, request_for(repository, moment), server.base / "request")


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    """On timeline 1: a0, backup B0, a1; T1; b0, b1; backup B1; c0; T2; c1. The database
    restored to T1 (timeline 2: a0 and a1 alone), then d0; T3; d1."""
    with throwaway_postgres() as server:
        history = timeline_one(server, archiving(server), "B0")
        repository, backups, times = history.repository, history.backups, history.times
        time.sleep(SECOND)
        times["between"] = now(server)
        write(server, "b1")
        backups["B1"] = full_backup(repository)
        write(server, "c0")
        times["T2"] = now(server)
        write(server, "c1")
        restore_in_place(server, repository, times["T1"])
        assert wrote(server) == ["a0", "a1"]
        write(server, "d0")
        times["T3"] = now(server)
        write(server, "d1")
        repository("check")
        yield history


def restored(repository: Repository, moment: str, tmp_path: Path) -> list[str]:
    """The rows of the database restored from `repository` to `moment` on a server of its own."""
    server = PostgresServer()
    try:
        request = request_for(repository, moment)
        restore_into(server, repository, request, tmp_path / "request", archive=False)
        return wrote(server)
    finally:
        server.destroy()


# --- which timeline, which backup -----------------------------------------------------------------


def test_a_time_before_the_first_restore_s_target_is_on_the_first_timeline(
    history: History,
) -> None:
    assert chosen(history.repository, history.times["T1"]) == {
        "timeline": 1,
        "set": history.backups["B0"],
        "type": "time",
        "xid": None,
        "backup_stop": pytest.approx(time.time(), abs=3600),
        "archive_end": None,
    }


def test_a_time_the_first_restore_abandoned_is_on_the_first_timeline_from_its_backup(
    history: History,
) -> None:
    """T2 was after the first restore's target, before the restore ran: the application saw
    timeline 1 then. B1, taken after T1, is on timeline 1's history."""
    answer = chosen(history.repository, history.times["T2"])
    assert (answer["timeline"], answer["set"], answer["type"]) == (1, history.backups["B1"], "time")


def test_a_time_after_the_first_restore_is_on_its_timeline_from_a_backup_before_its_target(
    history: History,
) -> None:
    """B1 ended before T3, but after the point timeline 2 branched from: it holds b0 and b1,
    which timeline 2 never had. B0 is the newest backup of timeline 2's history."""
    answer = chosen(history.repository, history.times["T3"])
    assert (answer["timeline"], answer["set"], answer["type"]) == (2, history.backups["B0"], "time")


@pytest.mark.parametrize(("after", "backup"), [(0.9, "B0"), (1.0, "B1")])
def test_a_backup_is_one_to_start_from_once_a_second_after_the_one_it_ended_in(
    after: float, backup: str, history: History
) -> None:
    """pgBackRest starts from a backup that ended in an earlier second than the time's (its
    stop time is whole seconds): in B1's own second, B0 is the one."""
    found = history.repository.stanza()["backup"]
    [stop] = [b["timestamp"]["stop"] for b in found if b["label"] == history.backups["B1"]]
    moment = dt.datetime.fromtimestamp(stop + after, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    assert chosen(history.repository, moment)["set"] == history.backups[backup]


def test_a_time_before_every_backup_is_refused_with_the_oldest_time_to_restore(
    history: History,
) -> None:
    found = history.repository.stanza()["backup"]
    [stop] = [b["timestamp"]["stop"] for b in found if b["label"] == history.backups["B0"]]
    reach = dt.datetime.fromtimestamp(stop + 1, dt.UTC).isoformat(timespec="microseconds")
    done = choose(history.repository, "2000-01-01 00:00:00+00:00")
    assert done.returncode == 1
    assert done.stderr.startswith(
        "mlstack-database-repository: 2000-01-01T00:00:00.000000+00:00 is before the oldest time "
        f"a restore can reach, {reach}: a second after the oldest good backup the repository "
        f"keeps, {history.backups['B0']}, ended "
    )


# --- the data restored --------------------------------------------------------------------------


def test_a_second_restore_to_a_time_the_first_abandoned_brings_back_what_was_written_then(
    history: History, tmp_path: Path
) -> None:
    """Before: pgBackRest took B1 and PostgreSQL the newest timeline, 2, which does not hold
    B1 (the restore failed at every start)."""
    assert restored(history.repository, history.times["T2"], tmp_path) == [
        "a0",
        "a1",
        "b0",
        "b1",
        "c0",
    ]


def test_a_time_the_first_restore_abandoned_restored_from_an_earlier_backup_misses_nothing(
    history: History, tmp_path: Path
) -> None:
    """Between T1 and B1's end only B0 can start a restore. Before: PostgreSQL followed
    timeline 2, which branched at T1, and b0, acknowledged before the time, was left out."""
    assert restored(history.repository, history.times["between"], tmp_path) == ["a0", "a1", "b0"]


def test_a_second_restore_to_a_time_after_the_first_has_what_was_written_since(
    history: History, tmp_path: Path
) -> None:
    """Before: pgBackRest took B1, which is not on timeline 2's history (a failure at every
    start)."""
    assert restored(history.repository, history.times["T3"], tmp_path) == ["a0", "a1", "d0"]


def test_a_time_after_a_timeline_s_last_commit_restores_all_its_archive_holds(
    history: History, tmp_path: Path
) -> None:
    """Nothing was committed after the time: a recovery to it would never reach it (PostgreSQL
    fails one that ends first); the recovery goes to the last commit instead, and the new
    timeline's history says a restore made it (the schedule then takes a full backup of it)."""
    moment = now(history.server)
    answer = chosen(history.repository, moment)
    assert (answer["timeline"], answer["type"]) == (2, "xid")
    assert answer["archive_end"] < dt.datetime.fromisoformat(moment + ":00").timestamp()
    server = PostgresServer()
    try:
        request = request_for(history.repository, moment)
        restore_into(server, history.repository, request, tmp_path / "request", archive=False)
        assert wrote(server) == ["a0", "a1", "d0", "d1"]
        [[tli]] = query(server.dsn(), "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")
        [[reason]] = query(server.dsn(), f"SELECT pg_read_file('pg_wal/{tli}.history')")
    finally:
        server.destroy()
    assert reason.splitlines()[-1].split("\t")[2] == f"after transaction {answer['xid']}"


# --- after retention expired the oldest backups ---------------------------------------------------


def test_a_time_just_before_a_failover_restores_what_the_promoted_standby_archived(
    tmp_path: Path,
) -> None:
    """A promotion leaves the segment it happens in unarchived on the former timeline: the
    promoted standby archives it as its own timeline's first, with the former one's last commits
    in it. A time after those commits and before the new timeline's first is restored along the
    new timeline, and has them: along the former one, the restore would end at its archive's
    last whole segment, and lose them."""
    with throwaway_postgres() as server:
        repository = archiving(server)
        write(server, "a0")
        full_backup(repository)
        write(server, "a1")
        server.next_wal_segment()
        standby = server.standby()
        try:
            write(server, "a2")  # in the segment the promotion happens in
            wait_until(
                lambda: wrote(standby) == ["a0", "a1", "a2"],
                "the standby's replay",
                30,
                standby.log,
            )
            archive = f"{repository.command} --pg1-path={standby.data} archive-push %p"
            query(standby.dsn(), f"ALTER SYSTEM SET archive_command = '{archive}'")
            query(standby.dsn(), "SELECT pg_reload_conf()")
            moment = now(server)
            server.stop("immediate")  # the primary's node lost
            standby.promote()
            time.sleep(SECOND)
            write(standby, "b0")
            query(standby.dsn(), "SELECT pg_switch_wal()")
            wait_until(
                lambda: query(
                    standby.dsn(), "SELECT last_archived_wal LIKE '00000002%' FROM pg_stat_archiver"
                )[0][0],
                "the new timeline's first segment archived",
                60,
                standby.log,
            )
            answer = chosen(repository, moment)
            assert (answer["timeline"], answer["type"]) == (2, "time"), answer
            assert restored(repository, moment, tmp_path) == ["a0", "a1", "a2"]
        finally:
            standby.destroy()


def test_a_promoted_standby_archives_what_its_primary_left_unarchived(tmp_path: Path) -> None:
    """The primary's archive failing (its repository away, an archiver behind), its standby
    receives the WAL by streaming, and marks each segment archived without archiving it. Once
    promoted, `mlstack-database --archive-earlier-timelines` (Patroni's callbacks on a primary:
    mlstack-database-callback, here as at a start) archives the complete segments of the former
    timeline that pg_wal holds: a restore from the backup before them to a time among them has
    every commit up to that time. Without it, the archive stays without them for good, and the
    restore fails."""
    with throwaway_postgres() as server:
        repository = archiving(server)
        write(server, "a0")
        full_backup(repository)
        standby = server.standby()
        try:
            archive = f"{repository.command} --pg1-path={standby.data} archive-push %p"
            query(standby.dsn(), f"ALTER SYSTEM SET archive_command = '{archive}'")
            query(standby.dsn(), "SELECT pg_reload_conf()")
            query(server.dsn(), "ALTER SYSTEM SET archive_command = 'false'")
            query(server.dsn(), "SELECT pg_reload_conf()")
            write(server, "a1")
            moment = now(server)
            write(server, "a2")
            for _ in range(3):
                server.next_wal_segment()
            wait_until(
                lambda: (
                    wrote(standby) == ["a0", "a1", "a2"]
                    and query(standby.dsn(), "SELECT count(*) FROM filler")[0][0] == 3
                ),
                "the standby's replay",
                30,
                standby.log,
            )
            server.stop("immediate")  # the primary's node lost, its segments unarchived
            standby.promote()
            wait_until(
                lambda: not query(standby.dsn(), "SELECT pg_is_in_recovery()")[0][0],
                "the promotion",
                60,
                standby.log,
            )
            image = image_for(tmp_path / "image", standby)
            done = subprocess.run(
                # As Patroni runs it at a start (and at a promotion: on_role_change).
                ["bash", str(BIN / "mlstack-database-callback"), "on_start", "primary",
                 "database"],
                env={
                    **image.env,
                    "PATH": os.pathsep.join((str(repository.bin), image.env["PATH"])),
                    "PGBACKREST_STANZA": STANZA,
                    "PGBACKREST_PG1_PATH": str(standby.data),
                },
                capture_output=True, text=True, timeout=300, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert "segments of the timelines before 2" in done.stderr
            assert restored(repository, moment, tmp_path) == ["a0", "a1"]
        finally:
            standby.destroy()


@pytest.fixture(scope="module")
def expired(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    """One full backup kept. On timeline 1: a0, backup E0, a1; T1; b0. The database restored to
    T1 (timeline 2), then c0; `gone`; a switch to the next WAL segment; backup E1, after which
    pgBackRest expires E0 and the WAL from before E1's start: timeline 1's, and timeline 2's
    first segment, c0's; `kept`, after E1 ended; d0, the first commit of timeline 2 left in its
    archive. No autovacuum: nothing else commits between E1's start and d0."""
    with throwaway_postgres() as server:
        query(server.dsn(), "ALTER SYSTEM SET autovacuum = off")
        history = timeline_one(server, archiving(server, retention_full=1), "E0")
        repository, backups, times = history.repository, history.backups, history.times
        restore_in_place(server, repository, times["T1"])
        write(server, "c0")
        times["gone"] = now(server)
        server.next_wal_segment()
        backups["E1"] = full_backup(repository)
        times["kept"] = now(server)
        write(server, "d0")
        repository("check")
        info = repository.stanza()
        [kept] = info["backup"]
        assert kept["label"] == backups["E1"]
        # The archive begins where E1 does: nothing of timeline 1, nor c0.
        assert info["archive"][0]["min"] == kept["archive"]["start"]
        assert kept["archive"]["start"].startswith("00000002")
        yield history


def moment_text(moment: str) -> str:
    """A time asked for, as mlstack-database-repository's messages write it."""
    return dt.datetime.fromisoformat(moment + ":00").isoformat(timespec="microseconds")


def test_a_time_after_a_kept_backup_of_a_timeline_whose_first_commits_expired_is_on_it(
    expired: History, tmp_path: Path
) -> None:
    """E1 ended on timeline 2 before `kept`: timeline 2 was live then, though the first commit
    its archive still holds, d0, came later. Before: timeline 2 was known by that commit alone,
    so `kept` was taken for timeline 1's (which holds no backup left), and refused."""
    answer = chosen(expired.repository, expired.times["kept"])
    assert (answer["timeline"], answer["set"], answer["type"]) == (2, expired.backups["E1"], "time")
    assert restored(expired.repository, expired.times["kept"], tmp_path) == ["a0", "a1", "c0"]


def test_a_time_before_the_oldest_backup_kept_is_refused_with_the_oldest_time_to_restore(
    expired: History,
) -> None:
    """`gone` was on timeline 2, whose WAL from then is expired: no restore reaches it. The
    oldest time one reaches is a second after E1's stop (pgBackRest starts from a backup that
    ended in an earlier second). Before: the refusal said the database was then on timeline 1,
    from its start."""
    [kept] = expired.repository.stanza()["backup"]
    reach = dt.datetime.fromtimestamp(kept["timestamp"]["stop"] + 1, dt.UTC)
    done = choose(expired.repository, expired.times["gone"])
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"mlstack-database-repository: {moment_text(expired.times['gone'])} is before the "
        f"oldest time a restore can reach, {reach.isoformat(timespec='microseconds')}: a "
        f"second after the oldest good backup the repository keeps, {expired.backups['E1']}, "
        "ended (pgBackRest starts a restore to a time from a backup that ended in an earlier "
        "second than the time's; retention expires older backups, and the WAL from before the "
        "oldest it keeps)\n"
    )


# --- the backups container ------------------------------------------------------------------------


def backups_container(server: PostgresServer, repository: Repository, folder: Path) -> LocalServer:
    """The `backups` container beside `server`, backing up to `repository`, a round every
    0.2 s; started."""
    image = image_for(folder, server)
    backups, _ = database_image.backups_container(
        image, folder / "backups.log", bin_first=repository.bin
    )
    return backups.start()


def test_a_restored_primary_gets_a_full_backup_of_its_own_at_once(
    history: History, tmp_path: Path
) -> None:
    """B1, a full backup a minute old, is no base for timeline 2, the restored one: a full
    backup is taken at once (before: none until a differential one, hours later, was due)."""
    container = backups_container(history.server, history.repository, tmp_path)
    try:
        container.wait_ready()

        def full_on_timeline_2() -> list[str]:
            found = history.repository.stanza()["backup"]
            return [
                b["label"]
                for b in found
                if b["type"] == "full" and b["archive"]["start"][:8] == "00000002"
            ]

        eventually(full_on_timeline_2, "a full backup of timeline 2", 120)
        metrics = request("GET", container.url + "/metrics").body.decode()
        ready = request("GET", container.url + "/ready")
        container.signal(signal.SIGTERM)
        assert container.wait_for_exit(30) == 0, container.log_tail()
    finally:
        container.stop()
    assert metric_value(metrics, "mlstack_database_backup_repository_matches") == 1
    assert (ready.status, ready.body) == (200, b"ready\n")


def test_the_backups_container_s_round_reads_the_repository_once(
    history: History, tmp_path: Path
) -> None:
    """`mlstack-database-repository status`, which the backups container runs each round: every
    backup (the metrics), whose the repository is, and on the restored primary, the backups its
    schedule counts (those of timeline 2: B0 and B1 are from before its restore), from one
    `pgbackrest info`, with nothing in its temporary folder while it runs (the container,
    stopped, kills the run it waits for: what it had made there would stay)."""
    calls, seen = tmp_path / "pgbackrest-calls", tmp_path / "temporary-files"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    wrapper = stand_in(
        tmp_path / "bin",
        "pgbackrest",
        f'#!/bin/sh\necho "$1" >> "{calls}"\nls -A "$TMPDIR" >> "{seen}"\n'
        f'exec "{history.repository.command}" "$@"\n',
    )
    image = image_for(tmp_path / "image", history.server)
    done = subprocess.run(
        [str(image.stand_ins / "mlstack-database-repository"), "status"],
        env={
            **image.env,
            "PATH": os.pathsep.join((str(wrapper.parent), image.env["PATH"])),
            "TMPDIR": str(scratch),
        },
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert seen.read_text() == ""
    info = history.repository.stanza()
    own = str(info["db"][0]["system-id"])
    [[local]] = query(history.server.dsn(), "SELECT system_identifier FROM pg_control_system()")
    assert str(local) == own
    assert json.loads(done.stdout) == {
        "database": own,
        "repository": own,
        "foreign": None,
        "backups": info["backup"],
        "primary": True,
        "bases": [b for b in info["backup"] if b["archive"]["stop"].startswith("00000002")],
        "bases_error": None,
    }
    assert calls.read_text().splitlines().count("info") == 1


def test_a_repository_that_cannot_be_read_is_down_not_empty(tmp_path: Path) -> None:
    """pgBackRest's `info` exits 0 for a repository it cannot read (a credential refused, a
    bucket gone; here a folder it may not list), with no stanza and no backup in it. Read so,
    the metrics said the repository answered, with no backup and no age (the README's alert on
    the age then has no series to fire on), and the primary tried a full backup every round.
    It is a repository down: the backups last read, and their age, stay; none is tried."""
    with throwaway_postgres() as server:
        repository = archiving(server)
        full_backup(repository)
        container = backups_container(server, repository, tmp_path)
        listed = repository.folder / "repository"
        try:
            container.wait_ready()

            def metrics() -> str:
                return request("GET", container.url + "/metrics").body.decode()

            def up(value: int) -> Callable[[], bool]:
                name = "mlstack_database_backup_repository_up"
                return lambda: metric_value(metrics(), name) == value

            eventually(up(1), "the repository read", 30)
            listed.chmod(0)
            eventually(up(0), "the repository down", 30)
            time.sleep(1)  # rounds every 0.2 s
            down = metrics()
            listed.chmod(0o750)
            eventually(up(1), "the repository read again", 30)
        finally:
            listed.chmod(0o750)
            container.stop()
    assert metric_value(down, "mlstack_database_backups", type="full") == 1
    assert metric_value(down, "mlstack_database_backup_age_seconds") is not None
    failed = "mlstack_database_backup_runs_total"
    assert metric_value(down, failed, type="full", outcome="failure") is None, down
    assert "the backup repository cannot be read: " in container.log_path.read_text()


def former_repository(history: History, server: PostgresServer) -> Repository:
    """A copy of the history's repository for `server`, a database made anew: the former
    database's backups, as a bucket that outlived its stack holds them."""
    copy = server.base / "former-repository"
    subprocess.run(
        ["cp", "-a", str(history.repository.folder / "repository"), str(copy)], check=True
    )
    return Repository(server, path=copy)


def test_a_repository_of_another_database_is_told_until_it_has_one_of_its_own(
    history: History, tmp_path: Path
) -> None:
    """A database made anew (another system identifier) whose repository holds the former
    one's backups: pgBackRest refuses its WAL and its backups. The backups container tries
    neither, says what to do and is not ready; once the former stanza's folders are moved
    aside (README's second way out), it makes this database's and backs it up."""
    with throwaway_postgres() as server:
        other = former_repository(history, server)
        former = other.stanza()
        other.archive_server(stanza=False)
        image = image_for(tmp_path / "image", server)
        owner = subprocess.run(
            [str(image.stand_ins / "mlstack-database-repository"), "owner"],
            env={**image.env, "PATH": os.pathsep.join((str(other.bin), image.env["PATH"]))},
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        own = str(query(server.dsn(), "SELECT system_identifier FROM pg_control_system()")[0][0])
        repository = str(former["db"][0]["system-id"])
        told = json.loads(owner.stdout)
        assert (told["database"], told["repository"]) == (own, repository)
        container = backups_container(server, other, tmp_path)
        try:
            container.wait_ready()
            eventually(
                lambda: request("GET", container.url + "/ready").status == 503,
                "the container to be unready",
                30,
            )
            unready = request("GET", container.url + "/ready").body.decode()
            refusing = request("GET", container.url + "/metrics").body.decode()
            time.sleep(1)
            # Nothing was tried: no backup, no stanza made over the other's.
            assert other.stanza()["backup"] == former["backup"]
            folder = Path(other.config.read_text().split("repo1-path=")[1].split("\n")[0])
            for part in ("archive", "backup"):
                (folder / part / STANZA).rename(folder / part / f"{STANZA}.former")
            eventually(
                lambda: request("GET", container.url + "/ready").status == 200,
                "the container ready with a repository of its own",
                60,
            )
            eventually(
                lambda: other.stanza().get("backup"),
                "a backup of the new database",
                120,
            )
            eventually(
                lambda: (
                    metric_value(
                        request("GET", container.url + "/metrics").body.decode(),
                        "mlstack_database_backup_repository_matches",
                    )
                    == 1
                ),
                "the repository told as this database's",
                30,
            )
        finally:
            container.stop()
    assert metric_value(refusing, "mlstack_database_backup_repository_matches") == 0
    assert unready.startswith(
        f"the backup repository holds another database's backups (system identifier {repository}; "
        f"this database's is {own}): pgBackRest archives and backs up nothing of this one"
    )
    assert "`make restore STACK=<stack> TIME=...` puts that database back here" in unready
    assert unready in container.log_path.read_text()
    # `make backup` says the same (tools/database_backup.py prints `owner`'s words).
    assert told["foreign"] + "\n" == unready


def test_a_database_made_anew_gets_the_former_one_back_from_its_repository(
    history: History, tmp_path: Path
) -> None:
    """README's first way out: the repository's database restored into the new one, whose
    system identifier is then the repository's, as its WAL archive needs."""
    with throwaway_postgres() as server:
        other = former_repository(history, server)
        server.stop()
        server.data.rename(server.data.with_name("data.made-anew"))
        request = request_for(other, history.times["T3"])
        restore_into(server, other, request, tmp_path / "request", archive=False)
        assert wrote(server) == ["a0", "a1", "d0"]
        own = query(server.dsn(), "SELECT system_identifier FROM pg_control_system()")[0][0]
    former = history.repository.stanza()
    assert str(own) == str(former["db"][0]["system-id"])
