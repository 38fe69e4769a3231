"""tools/database_backup.py (`make backup`, `make restore`), run for real against the stand-ins
of tests/ops/stack_fakes.py: its `pulumi`, and tests/ops/fake_kubectl.py answering
for a Patroni cluster: the StatefulSet (scaled as asked), the pods' role labels and the Service's
endpoints, one state after another in each phase (running, stopping after a scale to 0, starting
after a scale back), the ConfigMaps (deleted by selector as kubectl does, made from literals), and
what pgBackRest prints in the `backups` container. Both log every call. pgBackRest and Patroni
themselves run only on a real cluster.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any, Final, NamedTuple

import pytest

from components import database
from components.labels import labels
from tests.ops.stack_fakes import SELECTOR, Fakes, roles, state
from tools import database_backup as backups

# Patroni's ConfigMaps carry the labels it is given and its scope label; the CA bundle's, the
# program's labels alone.
PATRONI_LABELS: Final = {**SELECTOR, database.SCOPE_LABEL: database.SCOPE}
CONFIG_MAPS: Final = {
    **{
        f"database-{part}": {"labels": PATRONI_LABELS, "data": {}}
        for part in ("leader", "config", "sync")
    },
    database.BACKUP_CA_CONFIG_MAP: {"labels": labels("database", "prod"), "data": {}},
}
RUNNING: Final = state(roles("replica", "primary", "replica"), database_1=True)
STOPPED: Final = state({})
# After a restore, whichever instance won Patroni's race to make the cluster is the primary.
SETTLED: Final = state(roles("primary", "replica", "replica"), database_0=True)
MOMENT: Final = dt.datetime(2026, 12, 4, 21, 30, tzinfo=dt.UTC)
# The tool's clock in these tests: a day after MOMENT.
NOW: Final = MOMENT + dt.timedelta(days=1)
INFO_TEXT: Final = "stanza: mlstack\n    status: ok\n    full backup: 20261204-210000F\n"


def backup_info(*stops: tuple[dt.datetime, bool]) -> str:
    """`pgbackrest info --output=json` with a backup ending at each time (True: with an error)."""
    found = [
        {"label": f"b{index}", "type": "full", "error": error,
         "timestamp": {"start": int(stop.timestamp()) - 60, "stop": int(stop.timestamp())}}
        for index, (stop, error) in enumerate(stops)
    ]  # fmt: skip
    return json.dumps([{"name": database.STANZA, "backup": found}])


def answer(stdout: str = "", *, exit_code: int = 0, stderr: str = "") -> dict[str, Any]:
    return {"exit": exit_code, "stdout": stdout, "stderr": stderr}


class BackupFakes(Fakes):
    """The switchover's stand-ins, on a cluster this tool can scale and restore."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.restore_cluster()

    def restore_cluster(
        self,
        *,
        running: dict[str, Any] = RUNNING,
        stopping: tuple[dict[str, Any], ...] = (RUNNING, STOPPED),
        starting: tuple[dict[str, Any], ...] = (STOPPED, SETTLED),
        pgbackrest: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """The cluster as `running` until a scale; then each phase's states, one per look."""
        self.write_cluster(
            phases={"running": [running], "stopping": stopping, "starting": starting},
            advancing=True,
            configmaps=CONFIG_MAPS,
            exec={"pgbackrest": {
                "check": answer(),
                "info --output=json": answer(backup_info((MOMENT - dt.timedelta(hours=1), False))),
                "info": answer(INFO_TEXT),
                "backup --type=full": answer(),
                "backup --type=diff": answer(),
                **(pgbackrest or {}),
            }},
        )  # fmt: skip

    def current(self) -> dict[str, Any]:
        """cluster.json as the last kubectl call left it."""
        found: dict[str, Any] = json.loads((self.folder / "cluster.json").read_text())
        return found

    def changes(self) -> list[list[str]]:
        """The kubectl calls that change the cluster (not `get`), execs included."""
        return [command for command in self.commands() if command[0] != "get"]


@pytest.fixture
def fakes(cli_folder: Path, monkeypatch: pytest.MonkeyPatch) -> BackupFakes:
    # The waits' poll interval only: the tool's bounds and checks stay as they are.
    monkeypatch.setattr(backups, "POLL_SECONDS", 0.01)
    monkeypatch.setattr(backups, "now", lambda: NOW)
    return BackupFakes(cli_folder)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = backups.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def pgbackrest_in(pod: str, *args: str) -> list[str]:
    return ["exec", pod, "--container", "backups", "--", "pgbackrest", *args]


# --- the time ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-04 21:30:00+00:00", MOMENT),
        ("2026-12-04T21:30:00Z", MOMENT),
        ("2026-12-04T22:30:00+01:00", MOMENT),
        ("  2026-12-04 16:30:00-05:00 ", MOMENT),
        ("2026-12-04 21:30:00.250000+00:00", MOMENT + dt.timedelta(milliseconds=250)),
        ("20261204T213000+0000", MOMENT),
    ],
)
def test_a_time_is_any_iso_form_with_an_offset(text: str, expected: dt.datetime) -> None:
    found = backups.point_in_time(text)
    assert found == expected
    assert found.utcoffset() is not None


@pytest.mark.parametrize("text", ["2026-12-04 21:30:00", "2026-12-04", "2026-12-04T21:30"])
def test_a_time_without_an_offset_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        backups.point_in_time(text)
    assert str(refused.value) == (
        f"{text!r} has no offset from UTC: add one, such as +00:00, so that it means one moment "
        "wherever the command runs"
    )


@pytest.mark.parametrize("text", ["yesterday", "2026-13-04 21:30:00+00:00", "", "21:30+00:00"])
def test_what_is_no_time_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        backups.point_in_time(text)
    assert str(refused.value) == f"{text!r} is not a time such as '2026-12-04 21:30:00+00:00'"


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        ([], "the following arguments are required: command"),
        (["backup"], "the following arguments are required: --stack"),
        (["backup", "--stack", "prod", "--type", "full+"],
         "argument --type: invalid choice: 'full+'"),
        (["restore", "--stack", "prod"], "the following arguments are required: --time"),
        (["restore", "--stack", "prod", "--time", "2026-12-04 21:30:00"],
         "argument --time: '2026-12-04 21:30:00' has no offset from UTC"),
        (["restore", "--stack", "prod", "--time", "noon"], "argument --time: 'noon' is not a time"),
        (["rewind", "--stack", "prod"], "argument command: invalid choice: 'rewind'"),
    ],
)  # fmt: skip
def test_argument_errors_are_usage_errors_that_touch_nothing(
    argv: list[str], error: str, fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        backups.main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m tools.database_backup")
    assert f"error: {error}" in err
    assert fakes.calls() == []
    assert fakes.pulumi_calls() == []


# --- backup --------------------------------------------------------------------------------------


def test_backup_runs_a_full_backup_in_the_primary_s_backups_container(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "backup", "--stack", "prod")
    assert (code, err) == (0, "")
    assert out == INFO_TEXT
    assert fakes.changes() == [
        pgbackrest_in("database-1", "backup", "--type=full"),
        pgbackrest_in("database-1", "info"),
    ]
    fakes.assert_every_call_on_the_stack()


def test_backup_takes_the_type_asked(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run(capsys, "backup", "--stack", "prod", "--type", "diff")
    assert code == 0
    assert fakes.changes()[0] == pgbackrest_in("database-1", "backup", "--type=diff")


class FailedStep(NamedTuple):
    argv: list[str]
    # The pgbackrest command that fails, what it writes to stderr and the last line of it.
    step: str
    stderr: str
    last_line: str


@pytest.mark.parametrize(
    "failed",
    [
        FailedStep(["backup", "--stack", "prod"], "backup --type=full",
                   "P00   INFO: backup command begin\n"
                   "P00  ERROR: [082]: WAL segment 000000010000000000000003 was not archived\n",
                   "P00  ERROR: [082]: WAL segment 000000010000000000000003 was not archived"),
        # A restore whose check fails stops before anything changes.
        FailedStep(["restore", "--stack", "prod", "--time", "2026-12-04 22:30:00+01:00"], "check",
                   "P00  ERROR: [082]: WAL segment 000000010000000000000007 was not archived "
                   "before the 60000ms timeout\n",
                   "P00  ERROR: [082]: WAL segment 000000010000000000000007 was not archived "
                   "before the 60000ms timeout"),
    ],
    ids=["backup", "restore-check"],
)  # fmt: skip
def test_a_failed_pgbackrest_step_is_one_error_with_its_last_line_and_the_last_step(
    failed: FailedStep, fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.restore_cluster(pgbackrest={failed.step: answer(exit_code=82, stderr=failed.stderr)})
    code, out, err = run(capsys, *failed.argv)
    assert (code, out) == (1, "")
    assert err == (
        f"{failed.argv[0]}: error: pgbackrest {failed.step} in database-1 failed: "
        f"{failed.last_line}\n"
    )
    assert fakes.changes() == [pgbackrest_in("database-1", *failed.step.split())]


def test_backup_without_one_primary_runs_nothing(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.restore_cluster(running=state(roles("replica", "replica", "replica")))
    code, _, err = run(capsys, "backup", "--stack", "prod")
    assert code == 1
    assert err.startswith(
        "backup: error: database has no pod labelled mlstack/database-role=primary"
    )
    assert fakes.changes() == []


# --- restore -------------------------------------------------------------------------------------


def restore(
    capsys: pytest.CaptureFixture[str], moment: str = "2026-12-04 22:30:00+01:00"
) -> tuple[int, str, str]:
    return run(capsys, "restore", "--stack", "prod", "--time", moment)


def test_restore_stops_clears_requests_and_starts_the_instances_again(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.restore_cluster(
        # Stopping takes a few looks; the instances come back one by one, a primary first.
        stopping=(RUNNING, state(roles("replica", "")), state(roles("")), STOPPED),
        starting=(
            STOPPED,
            state(roles("", "", "")),
            state(roles("primary", "", ""), database_0=False),
            state(roles("primary", "replica", ""), database_0=True),
            state(roles("primary", "replica", "replica"), database_0=True),
        ),
    )
    code, out, err = restore(capsys)
    assert (code, err) == (0, "")
    changes = fakes.changes()
    [request] = [
        c[3].removeprefix("--from-literal=id=") for c in changes if c[:2] == ["create", "configmap"]
    ]
    scope = ",".join(f"{k}={v}" for k, v in sorted(SELECTOR.items()))
    assert changes == [
        pgbackrest_in("database-1", "check"),
        pgbackrest_in("database-1", "info", "--output=json"),
        ["scale", "statefulset", "database", "--replicas=0"],
        ["delete", "configmap", "--selector", f"{scope},mlstack/database-cluster=database",
         "--ignore-not-found"],
        ["create", "configmap", "database-restore", f"--from-literal=id={request}",
         "--from-literal=target=2026-12-04 21:30:00.000000+00"],
        ["scale", "statefulset", "database", "--replicas=3"],
        ["delete", "configmap", "database-restore", "--ignore-not-found"],
    ]  # fmt: skip
    assert len(request) == 12 and all(c in "0123456789abcdef" for c in request)
    assert out.startswith("restore: prod's database is as it was at 2026-12-04T22:30:00+01:00 (")
    assert out.endswith(
        f" s); each volume keeps its former data as pgdata.before-restore-{request}\n"
    )
    cluster = fakes.current()
    # The instances started with the request; Patroni's state is gone, the CA bundle is not,
    # nor is the request left behind.
    assert cluster["request_at_start"] == {
        "labels": {}, "data": {"id": request, "target": "2026-12-04 21:30:00.000000+00"},
    }  # fmt: skip
    assert set(cluster["configmaps"]) == {database.BACKUP_CA_CONFIG_MAP}
    assert cluster["replicas"] == 3
    # Every state of each phase was seen: it waited for the pods to go, then to settle.
    assert cluster["phase"] == "starting"
    assert cluster["at"] == 5


def test_patroni_s_state_is_removed_only_once_every_pod_is_gone(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    """Patroni's state is removed once no instance runs to write it back."""
    fakes.restore_cluster(stopping=(RUNNING, RUNNING, state(roles("", "")), STOPPED))
    code, _, _ = restore(capsys)
    assert code == 0
    commands = fakes.commands()
    scaled = commands.index(["scale", "statefulset", "database", "--replicas=0"])
    deleted = next(
        i for i, c in enumerate(commands) if c[:3] == ["delete", "configmap", "--selector"]
    )
    looks = [c for c in commands[scaled:deleted] if c[1:2] == ["endpointslices"]]
    assert len(looks) == 4


def test_restore_waits_for_every_instance_and_the_primary_s_endpoint(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    """Settled: one primary, the other instances replicas, and the Service sending to the
    primary, ready."""
    fakes.restore_cluster(
        starting=(
            state(roles("primary", "replica", "replica")),
            state(roles("primary", "replica", "replica"), database_0=False),
            state(roles("primary", "primary", "replica"), database_0=True),
            state(roles("primary", "replica"), database_0=True),
            state(roles("primary", "replica", "replica"), database_0=True),
        )
    )
    code, _, _ = restore(capsys)
    assert code == 0
    assert fakes.current()["at"] == 5


@pytest.mark.parametrize(
    ("info", "oldest"),
    [
        (backup_info(), "never: there is none"),
        (backup_info((MOMENT + dt.timedelta(seconds=1), False)), "2026-12-04T21:30:01+00:00"),
        # A backup that failed does not count, however old.
        (backup_info((MOMENT - dt.timedelta(days=1), True),
                     (MOMENT + dt.timedelta(hours=2), False)),
         "2026-12-04T23:30:00+00:00"),
    ],
    ids=["no-backup", "one-after", "a-failed-one-before"],
)  # fmt: skip
def test_restore_without_a_backup_before_the_time_touches_nothing(
    info: str, oldest: str, fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.restore_cluster(pgbackrest={"info --output=json": answer(info)})
    code, out, err = restore(capsys, "2026-12-04 21:30:00+00:00")
    assert (code, out) == (1, "")
    assert err == (
        "restore: error: no backup ended before 2026-12-04T21:30:00+00:00 (the oldest ended "
        f"{oldest}); `make backup STACK=prod` takes one\n"
    )
    assert fakes.changes() == [
        pgbackrest_in("database-1", "check"),
        pgbackrest_in("database-1", "info", "--output=json"),
    ]


@pytest.mark.parametrize(
    "moment",
    [
        "2026-12-05 21:30:00.000001+00:00",
        # 22:30 in Paris, written as if it were UTC: an hour ahead.
        "2026-12-05 22:30:00+00:00",
        "2027-01-01 00:00:00-05:00",
    ],
)
def test_a_time_later_than_now_is_refused_before_anything_is_asked(
    moment: str, fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = restore(capsys, moment)
    assert (code, out) == (1, "")
    assert err == (
        f"restore: error: {dt.datetime.fromisoformat(moment).isoformat()} is later than now "
        "(2026-12-05T21:30:00+00:00): the archived WAL ends now, and a restore cannot reach a "
        "time after it (a local time given with +00:00?); nothing was changed\n"
    )
    assert fakes.calls() == []
    assert fakes.pulumi_calls() == []


def test_a_time_of_now_is_one_to_restore_to(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = restore(capsys, NOW.isoformat())
    assert (code, err) == (0, "")


def test_a_backup_that_ended_at_the_time_is_one_to_start_from(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.restore_cluster(pgbackrest={"info --output=json": answer(backup_info((MOMENT, False)))})
    code, _, err = restore(capsys, "2026-12-04 21:30:00+00:00")
    assert (code, err) == (0, "")


def test_the_request_is_removed_even_when_the_instances_never_settle(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backups, "RESTORE_SECONDS", 0.2)
    fakes.restore_cluster(starting=(STOPPED, state(roles("", "", ""))))
    code, out, err = restore(capsys)
    assert (code, out) == (1, "")
    assert err == (
        "restore: error: timed out after 0.2 s waiting for the instances restored to "
        "2026-12-04 21:30:00.000000+00\n"
    )
    assert fakes.changes()[-2:] == [
        ["scale", "statefulset", "database", "--replicas=3"],
        ["delete", "configmap", "database-restore", "--ignore-not-found"],
    ]
    assert set(fakes.current()["configmaps"]) == {database.BACKUP_CA_CONFIG_MAP}
    assert fakes.current()["request_at_start"]["data"]["target"] == "2026-12-04 21:30:00.000000+00"


# --- make ----------------------------------------------------------------------------------------


def test_make_restore_without_time_is_its_one_line_and_runs_nothing(fakes: BackupFakes) -> None:
    done = fakes.make("restore")
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[0] == (
        "make: restore needs TIME='YYYY-MM-DD HH:MM:SS+00:00', the moment to go back to"
    )
    # And make's own note of the failed recipe.
    assert len(lines) == 2 and lines[1].startswith("make: *** ")
    assert fakes.pulumi_calls() == []
    assert fakes.calls() == []


def test_make_restore_passes_the_time_whole_and_the_stack_backend(fakes: BackupFakes) -> None:
    done = fakes.make("restore", "TIME=2026-12-04 22:30:00+01:00")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith(
        "restore: dev's database is as it was at 2026-12-04T22:30:00+01:00 ("
    )
    created = [c for c in fakes.changes() if c[:2] == ["create", "configmap"]]
    assert [c[4] for c in created] == ["--from-literal=target=2026-12-04 21:30:00.000000+00"]
    fakes.assert_dev_read_only_from_the_local_backend()


def test_make_backup_passes_the_type(fakes: BackupFakes) -> None:
    done = fakes.make("backup", "TYPE=diff")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.endswith(INFO_TEXT)
    assert fakes.changes() == [
        pgbackrest_in("database-1", "backup", "--type=diff"),
        pgbackrest_in("database-1", "info"),
    ]
