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
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, NamedTuple

import pytest

from components import database
from components.labels import labels
from harness.poll import wait_until
from harness.program import ROOT
from tests.copies import copy_project, run_in
from tests.ops.stack_fakes import NAMESPACE, SELECTOR, Fakes, roles, state
from tools import database_backup as backups
from tools.stack import Kubectl, StackError

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
RESTORE: Final = database.RESTORE_CONFIG_MAP
# MOMENT as the request's target, and the time `restore` asks for by default (MOMENT elsewhere).
TARGET: Final = "2026-12-04 21:30:00.000000+00"
# The pods' selector, and Patroni's ConfigMaps' (as the tool gives them to kubectl).
POD_SELECTOR: Final = ",".join(f"{k}={v}" for k, v in sorted(SELECTOR.items()))
PATRONI_SCOPE: Final = f"{POD_SELECTOR},{database.SCOPE_LABEL}={database.SCOPE}"
# The tool's clock in these tests, and the database's: a day after MOMENT.
NOW: Final = MOMENT + dt.timedelta(days=1)
# What the primary runs before `pgbackrest check`: a transaction that commits and reads the
# database's clock.
MARK: Final = (
    "mlstack-database", "--psql", "--tuples-only", "--no-align",
    "--command=SELECT extract(epoch FROM clock_timestamp()) FROM pg_current_xact_id()",
)  # fmt: skip
INFO_TEXT: Final = "stanza: mlstack\n    status: ok\n    full backup: 20261204-210000F\n"
# What mlstack-database-repository answers in the backups container: the repository is the
# database's own (or another's, and what to do: the image's words, which the tool repeats), and
# the timeline and backup to restore a time from.
OWNED: Final = {
    "database": "7450000000000000001",
    "repository": "7450000000000000001",
    "foreign": None,
}
ADVICE: Final = "the backup repository holds another database's backups (...): what to do"
FOREIGN: Final = {
    "database": "7450000000000000002",
    "repository": "7450000000000000001",
    "foreign": ADVICE,
}
# What `max_wal_size` is in bytes, as the primary answers (the image's, on a volume of 4Gi up).
WAL_SIZE: Final = (
    "mlstack-database", "--psql", "--tuples-only", "--no-align",
    "--command=SELECT pg_size_bytes(current_setting('max_wal_size'))",
)  # fmt: skip
GIB: Final = 2**30
# The free space of an instance's data volume, as df prints it there.
DF: Final = ("df", "--block-size=1", "--output=avail", database.MOUNT_PATH)
# The size of the chosen backup's database, which a restore writes on every volume.
RESTORED_SIZE: Final = 3 * GIB
CHOSEN: Final = {"timeline": 3, "set": "20261204-203000F", "type": "time", "xid": None,
                 "backup_stop": 1796416200, "archive_end": None}  # fmt: skip


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


def chosen_info(size: int = RESTORED_SIZE) -> str:
    """`pgbackrest info --output=json --set=<the chosen backup>`: its database's size."""
    found = {"label": CHOSEN["set"], "type": "full", "error": False,
             "info": {"size": size, "delta": size, "repository": {"size": size // 4}}}  # fmt: skip
    return json.dumps([{"name": database.STANZA, "backup": [found]}])


def free(available: int, **pods: int) -> dict[str, Any]:
    """What df prints of the data volume: `available` bytes free, or in a pod named (`database_2=
    ...`) its own."""

    def printed(found: int) -> dict[str, Any]:
        return answer(f"       Avail\n{found:12d}\n")

    return {
        **printed(available),
        "pods": {pod.replace("_", "-"): printed(bytes_) for pod, bytes_ in pods.items()},
    }


class BackupFakes(Fakes):
    """The switchover's stand-ins, on a cluster this tool can scale and restore."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.restore_cluster()

    def restore_cluster(
        self,
        *,
        running: dict[str, Any] | tuple[dict[str, Any], ...] = RUNNING,
        stopping: tuple[dict[str, Any], ...] = (RUNNING, STOPPED),
        starting: tuple[dict[str, Any], ...] = (STOPPED, SETTLED),
        pgbackrest: dict[str, dict[str, Any]] | None = None,
        replicas: int = 3,
        request: dict[str, str] | None = None,
        mark: dict[str, Any] | None = None,
        repository: dict[str, dict[str, Any]] | None = None,
        signals: dict[str, dict[str, Any]] | None = None,
        df: dict[str, Any] | None = None,
    ) -> None:
        """The cluster as `running` until a scale; then each phase's states, one per look.
        `request`: the data of a `database-restore` already there; `mark`: what the primary's
        committed transaction prints (the database's clock, NOW); `repository`: what
        mlstack-database-repository answers, by its arguments (`*`: any); `signals`: what
        kubectl sends the tool's process group, by command (fake_kubectl.py); `df`: what df
        prints of the data volumes (`free`; 8 GiB free on each)."""
        pending = {} if request is None else {RESTORE: {"labels": {}, "data": request}}
        self.write_cluster(
            phases={
                "running": [running] if isinstance(running, dict) else list(running),
                "stopping": stopping,
                "starting": starting,
            },
            advancing=True,
            replicas=replicas,
            configmaps={**CONFIG_MAPS, **pending},
            signals=signals or {},
            exec={"mlstack-database": {
                " ".join(MARK[1:]): mark or answer(f"{NOW.timestamp():.6f}\n"),
                " ".join(WAL_SIZE[1:]): answer(f"{GIB}\n"),
            }, "df": {
                " ".join(DF[1:]): df or free(8 * GIB),
            }, "pgbackrest": {
                "check": answer(),
                f"info --output=json --set={CHOSEN['set']}": answer(chosen_info()),
                "info --output=json": answer(backup_info((MOMENT - dt.timedelta(hours=1), False))),
                "info": answer(INFO_TEXT),
                "backup --type=full": answer(),
                "backup --type=diff": answer(),
                **(pgbackrest or {}),
            }, backups.REPOSITORY: {
                "owner": answer(json.dumps(OWNED)),
                "*": answer(json.dumps(CHOSEN)),
                **(repository or {}),
            }},
        )  # fmt: skip

    def current(self) -> dict[str, Any]:
        """cluster.json as the last kubectl call left it."""
        found: dict[str, Any] = json.loads((self.folder / "cluster.json").read_text())
        return found

    def changes(self) -> list[list[str]]:
        """The kubectl calls that change the cluster (not `get`), execs included."""
        return [command for command in self.commands() if command[0] != "get"]

    def shown(self, *args: str) -> str:
        """`kubectl args` on the stack, as the tool's messages show it."""
        flags = ["--kubeconfig", str(self.kubeconfig), "--context", "e2e", "--namespace", NAMESPACE]
        return f"`{shlex.join(['kubectl', *flags, *args])}`"

    def request(self) -> dict[str, str] | None:
        """The data of `database-restore`, if it is there."""
        found = self.current()["configmaps"].get(RESTORE)
        return None if found is None else dict(found["data"])


@pytest.fixture
def fakes(cli_folder: Path, monkeypatch: pytest.MonkeyPatch) -> BackupFakes:
    # The waits' poll interval only: the tool's bounds and checks stay as they are.
    monkeypatch.setattr(backups, "POLL_SECONDS", 0.01)
    monkeypatch.setattr(backups, "now", lambda: NOW)
    # The tool's scratch folder in the test's: one a test ends with SIGKILL stays there.
    monkeypatch.setenv("TMPDIR", str(cli_folder))
    return BackupFakes(cli_folder)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = backups.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def pgbackrest_in(pod: str, *args: str) -> list[str]:
    return ["exec", pod, "--container", "backups", "--", "pgbackrest", *args]


MARKED: Final = ["exec", "database-1", "--container", "postgres", "--", *MARK]


def repository_in(pod: str, *args: str) -> list[str]:
    return ["exec", pod, "--container", "backups", "--", backups.REPOSITORY, *args]


OWNER: Final = repository_in("database-1", "owner")


def chose(target: str = TARGET) -> list[str]:
    return repository_in("database-1", "choose", target)


# What the restore looks at before it changes anything, once the backup is chosen: its size, the
# WAL recovery keeps, and each instance's free space.
ROOM: Final = [
    pgbackrest_in("database-1", "info", "--output=json", f"--set={CHOSEN['set']}"),
    ["exec", "database-1", "--container", "postgres", "--", *WAL_SIZE],
    *(["exec", f"database-{i}", "--container", "postgres", "--", *DF] for i in range(3)),
]
# Every step before the first change.
CHECKED: Final = [OWNER, MARKED, pgbackrest_in("database-1", "check"), chose(), *ROOM]


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
        OWNER,
        pgbackrest_in("database-1", "backup", "--type=full"),
        pgbackrest_in("database-1", "info"),
    ]
    fakes.assert_every_call_on_the_stack()


def test_backup_takes_the_type_asked(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run(capsys, "backup", "--stack", "prod", "--type", "diff")
    assert code == 0
    assert fakes.changes()[1] == pgbackrest_in("database-1", "backup", "--type=diff")


def test_backup_waits_for_a_backup_under_way_then_runs_its_own(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The schedule's backup holds the stanza's lock (a restored primary backs itself up at once):
    # pgBackRest refuses the second one with LockAcquireError, twice, then takes it.
    monkeypatch.setattr(backups, "LOCK_POLL_SECONDS", 0.01)
    held = (
        "P00  ERROR: [050]: unable to acquire lock on file '/tmp/pgbackrest/mlstack-backup.lock'\n"
    )
    refused = answer(exit_code=backups.LOCK_HELD, stderr=held)
    fakes.restore_cluster(
        pgbackrest={"backup --type=full": {**refused, "then": {**refused, "then": answer()}}}
    )
    code, out, err = run(capsys, "backup", "--stack", "prod")
    assert (code, out) == (0, INFO_TEXT)
    assert err == "backup: another backup is under way in database-1; waiting for it to end\n"
    full = pgbackrest_in("database-1", "backup", "--type=full")
    assert fakes.changes() == [OWNER, full, full, full, pgbackrest_in("database-1", "info")]


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
    marked = [MARKED] if failed.argv[0] == "restore" else []
    assert fakes.changes() == [OWNER, *marked, pgbackrest_in("database-1", *failed.step.split())]


@pytest.mark.parametrize(
    ("argv", "purpose"),
    [
        (["backup"], "to back up"),
        (["restore", "--time", "2026-12-04 22:30:00+01:00"],
         "to check the time and the backups in"),
    ],
)  # fmt: skip
def test_without_one_primary_nothing_runs(
    argv: list[str], purpose: str, fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.restore_cluster(running=state(roles("replica", "replica", "replica")))
    code, _, err = run(capsys, *argv, "--stack", "prod")
    assert code == 1
    assert err.startswith(
        f"{argv[0]}: error: database has no pod labelled mlstack/database-role=primary: "
        f"there is no one primary {purpose}; see `"
    )
    assert fakes.changes() == []


@pytest.mark.parametrize(
    "argv",
    [["backup"], ["restore", "--time", "2026-12-04 22:30:00+01:00"]],
    ids=["backup", "restore"],
)
def test_a_stack_without_backups_is_told_so_and_nothing_runs(
    argv: list[str], fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    """No `mlstack:database.backup`: the pods have no backups container and no repository."""
    fakes.restore_cluster()
    cluster = fakes.current()
    fakes.write_cluster(**{**cluster, "containers": ["postgres"]})
    code, out, err = run(capsys, *argv, "--stack", "prod")
    assert (code, out) == (1, "")
    assert err == (
        f"{argv[0]}: error: stack prod has no backups: its database pods have no backups "
        'container (mlstack:database.backup turns them on; README, "Backups and restore"); '
        "nothing was changed\n"
    )
    assert fakes.changes() == []


def test_a_renamed_copy_names_the_key_of_its_own_namespace(
    fakes: BackupFakes, tmp_path: Path
) -> None:
    """In a copy named `mlplatform`, the key to set is `mlplatform:database.backup` (README,
    "Copying mlstack")."""
    copy = copy_project(tmp_path / "project", "mlplatform")
    fakes.write_cluster(**{**fakes.current(), "containers": ["postgres"]})
    cluster = {"provider": "existing", "context": "e2e", "kubeconfig": str(fakes.kubeconfig)}
    outputs = {"namespace": NAMESPACE, "kubeconfig": str(fakes.kubeconfig)}
    fakes.stack({"mlplatform:cluster": {"objectValue": cluster}}, outputs)
    ran = run_in(copy, "-m", "tools.database_backup", "backup", "--stack", "prod")
    assert ran.returncode == 1
    assert "container (mlplatform:database.backup turns them on; " in ran.stderr
    assert fakes.changes() == []


# --- restore -------------------------------------------------------------------------------------


def restore(
    capsys: pytest.CaptureFixture[str], moment: str = "2026-12-04 22:30:00+01:00"
) -> tuple[int, str, str]:
    return run(capsys, "restore", "--stack", "prod", "--time", moment)


def made(request: str) -> dict[str, str]:
    """The data of the request the tool makes, with id `request`, for TARGET."""
    return {"id": request, "target": TARGET, "timeline": "3", "set": "20261204-203000F",
            "type": "time"}  # fmt: skip


def created_request(fakes: BackupFakes) -> str:
    """The id of the request the tool made."""
    [request] = [
        c[3].removeprefix("--from-literal=id=")
        for c in fakes.changes()
        if c[:2] == ["create", "configmap"]
    ]
    return request


def intercept(
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
    *,
    before: Callable[[], None] = lambda: None,
    refuse: str | None = None,
) -> None:
    """The tool's kubectl calls that begin with `command`: `before` runs first; with `refuse`,
    the call fails with that error instead of reaching the cluster (the API refusing it)."""
    real = Kubectl.__call__

    def call(
        self: Kubectl, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        if list(args[: len(command)]) == command:
            before()
            if refuse is not None:
                raise StackError(refuse)
        return real(self, *args, check=check, timeout=timeout)

    monkeypatch.setattr(Kubectl, "__call__", call)


def test_restore_stops_asks_clears_and_starts_the_instances_again(
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
    request = created_request(fakes)
    # The request is made before Patroni's state is touched: were it refused, the former
    # cluster would still be whole.
    assert changes == [
        *CHECKED,
        ["scale", "statefulset", "database", "--replicas=0"],
        ["create", "configmap", "database-restore", f"--from-literal=id={request}",
         f"--from-literal=target={TARGET}", "--from-literal=timeline=3",
         "--from-literal=set=20261204-203000F", "--from-literal=type=time"],
        ["delete", "configmap", "--selector", PATRONI_SCOPE, "--ignore-not-found"],
        ["scale", "statefulset", "database", "--replicas=3"],
        ["delete", "configmap", "database-restore", "--ignore-not-found"],
    ]  # fmt: skip
    # It looked for a request left by another run before it changed anything.
    commands = fakes.commands()
    looked = commands.index(["get", "configmap", RESTORE, "--ignore-not-found", "--output", "json"])
    assert looked < commands.index(MARKED)
    assert len(request) == 12 and all(c in "0123456789abcdef" for c in request)
    assert out.startswith("restore: prod's database is as it was at 2026-12-04T22:30:00+01:00 (")
    assert out.endswith(
        " s; timeline 3, from backup 20261204-203000F); each volume keeps its former data as "
        f'pgdata.before-restore-{request} until it is removed (README, "Backups and restore")\n'
    )
    cluster = fakes.current()
    # The instances started with the request; Patroni's state is gone, the CA bundle is not,
    # nor is the request left behind.
    assert cluster["request_at_start"] == {
        "labels": {}, "data": {"id": request, "target": "2026-12-04 21:30:00.000000+00",
                               "timeline": "3", "set": "20261204-203000F", "type": "time"},
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


def test_restore_without_a_backup_for_the_time_touches_nothing(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    """The repository's reader finds none of the timeline the database was on (its message,
    whole), after the WAL up to now was archived."""
    why = (
        "no backup to restore 2026-12-04T21:30:00.000000+00:00 from: the database was then on "
        "timeline 2 (since its first commit at 2026-12-04T20:00:00.000000+00:00), and no backup "
        "of its history ended before that second (the first ended never: there is none); 1 "
        "backup(s) that did are of timelines a restore abandoned, which hold other data"
    )
    # After it, as after every program kubectl exec runs that fails, kubectl's own line.
    kubectl_said = "command terminated with exit code 1\n"
    fakes.restore_cluster(
        repository={"*": answer(exit_code=1, stderr=f"{backups.REPOSITORY}: {why}\n{kubectl_said}")}
    )
    code, out, err = restore(capsys, "2026-12-04 21:30:00+00:00")
    assert (code, out) == (1, "")
    assert err == f"restore: error: {why}; `make backup STACK=prod` takes one\n"
    assert fakes.changes() == [OWNER, MARKED, pgbackrest_in("database-1", "check"), chose()]


@pytest.mark.parametrize("short", [1, 2 * GIB], ids=["a-byte-short", "far-short"])
def test_a_volume_without_room_for_a_second_copy_is_refused_before_anything_changes(
    short: int, fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each instance moves its data aside on its volume and writes the backup's whole database
    beside it, then keeps up to max_wal_size of WAL as it replays: a volume without that room
    would fail there at every start, with the StatefulSet scaled to 0 and Patroni's state gone."""
    needed = RESTORED_SIZE + GIB
    fakes.restore_cluster(df=free(8 * GIB, database_2=needed - short))
    code, out, err = restore(capsys)
    assert (code, out) == (1, "")
    assert fakes.changes() == CHECKED
    shown = {1: "4.0 GiB", 2 * GIB: "2.0 GiB"}[short]
    assert err == (
        f"restore: error: the data volume (/var/lib/postgresql/data) of database-2 has {shown} "
        f"({needed - short} bytes) free, and a restore needs 4.0 GiB ({needed} bytes) on each: "
        "the 3.0 GiB of backup "
        "20261204-203000F's database beside the data it moves aside, and 1.0 GiB (max_wal_size) "
        "of the WAL it replays; grow the volumes (a larger mlstack:database.storageSize, where "
        'their class allows it: README, "Which class, and whether it grows") or remove the data '
        'earlier restores left (README, "What it leaves on the volumes"), then restore; nothing '
        "was changed\n"
    )


def test_a_volume_with_just_the_room_a_restore_needs_is_restored(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.restore_cluster(df=free(RESTORED_SIZE + GIB))
    code, _, err = restore(capsys)
    assert (code, err) == (0, "")


def test_every_instance_short_of_room_is_named(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.restore_cluster(df=free(GIB, database_1=8 * GIB, database_2=512 * 2**20))
    code, _, err = restore(capsys)
    assert code == 1
    assert err.startswith(
        "restore: error: the data volume (/var/lib/postgresql/data) of database-0 has 1.0 GiB "
        f"({GIB} bytes), of database-2 512.0 MiB ({GIB // 2} bytes) free, and a restore needs "
        "4.0 GiB (4294967296 bytes) on each: "
    ), err
    assert fakes.changes() == CHECKED


def test_a_volume_whose_free_space_cannot_be_read_is_said_and_not_checked(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    """An instance's postgres container not running (kubectl's words), say: a restore is what may
    mend it (its data is made anew), so the restore goes on, saying what it did not check."""
    refused = answer(
        exit_code=1,
        stderr='error: unable to upgrade connection: container not found ("postgres")\n',
    )
    fakes.restore_cluster(df={**free(8 * GIB), "pods": {"database-0": refused}})
    code, _, err = restore(capsys)
    assert code == 0
    assert err == (
        "restore: warning: the free space of database-0's data volume is not known (df failed: "
        'error: unable to upgrade connection: container not found ("postgres")): not checked\n'
    )


def test_a_time_past_the_end_of_its_timeline_s_archive_says_all_of_it_was_restored(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    end = MOMENT - dt.timedelta(minutes=5)
    fakes.restore_cluster(
        repository={
            "*": answer(
                json.dumps({**CHOSEN, "type": "xid", "xid": "731", "archive_end": end.timestamp()})
            )
        }
    )
    code, out, err = restore(capsys)
    assert (code, err) == (0, "")
    request = created_request(fakes)
    assert fakes.request() is None
    data = fakes.current()["request_at_start"]["data"]
    assert (data["type"], data["xid"]) == ("xid", "731")
    assert (
        "; timeline 3, from backup 20261204-203000F; its archive ends at "
        "2026-12-04T21:25:00+00:00, its last commit: all of it was restored); each volume keeps "
        f"its former data as pgdata.before-restore-{request} "
    ) in out


def test_a_repository_of_another_database_is_restored_from_as_its_archive_ends(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stack made anew over the repository of the one before: nothing of the new database is
    archived, so no mark and no check; the repository's database is the one restored, and
    this stack's from then on (pgBackRest archives its WAL again)."""
    fakes.restore_cluster(repository={"owner": answer(json.dumps(FOREIGN))})
    code, out, err = restore(capsys)
    assert (code, err) == (0, "")
    changes = fakes.changes()
    scaled = ["scale", "statefulset", "database", "--replicas=0"]
    assert changes[: len(ROOM) + 3] == [OWNER, chose(), *ROOM, scaled]
    assert MARKED not in changes
    assert "; the repository's database, which this stack's is now); each volume keeps" in out


def test_a_repository_without_a_stanza_is_nothing_to_restore_from(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.restore_cluster(
        repository={
            "owner": answer(json.dumps({"database": "1", "repository": None, "foreign": None}))
        }
    )
    assert restore(capsys) == (
        1,
        "",
        "restore: error: the backup repository has no backups yet (no stanza): nothing to "
        "restore from; `make backup STACK=prod` takes one\n",
    )
    assert fakes.changes() == [OWNER]


def test_backup_refuses_a_repository_of_another_database_and_says_what_to_do(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    """pgBackRest would refuse it too, with a line that says nothing of what to do. What to do
    is the image's to say (mlstack-database-repository owner, as the backups container says
    it: tests/services/test_database_repository.py)."""
    fakes.restore_cluster(repository={"owner": answer(json.dumps(FOREIGN))})
    code, out, err = run(capsys, "backup", "--stack", "prod")
    assert (code, out) == (1, "")
    assert err == f"backup: error: {ADVICE}; nothing was backed up\n"
    assert fakes.changes() == [OWNER]


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


@pytest.mark.parametrize(
    ("mark", "moment", "error"),
    [
        # This machine's clock an hour ahead of the cluster's: the database's clock decides.
        (
            answer(f"{(NOW - dt.timedelta(hours=1)).timestamp():.6f}\n"),
            "2026-12-05 21:00:00+00:00",
            "2026-12-05T21:00:00+00:00 is later than the database's clock "
            "(2026-12-05T20:30:00+00:00): the archived WAL ends there, and a restore cannot reach "
            "a time after it (is this machine's clock ahead?); nothing else was changed",
        ),
        # The pod labelled primary is in recovery after all (a failover under way).
        (
            answer(exit_code=3, stderr="ERROR:  cannot assign TransactionIds during recovery\n"),
            "2026-12-04 22:30:00+01:00",
            "committing a transaction in database-1 failed: ERROR:  cannot assign "
            "TransactionIds during recovery",
        ),
    ],
    ids=["database-clock-behind", "commit-refused"],
)
def test_the_primary_s_commit_mark_stops_the_restore_before_anything_changes(
    mark: dict[str, Any],
    moment: str,
    error: str,
    fakes: BackupFakes,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fakes.restore_cluster(mark=mark)
    assert restore(capsys, moment) == (1, "", f"restore: error: {error}\n")
    assert fakes.changes() == [OWNER, MARKED]


def test_a_time_of_now_is_one_to_restore_to(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = restore(capsys, NOW.isoformat())
    assert (code, err) == (0, "")


def test_the_request_is_kept_when_the_instances_never_settle(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a restored primary, the request stays: an instance that starts without it would
    make a new, empty database, and that would take the application's writes."""
    monkeypatch.setattr(backups, "RESTORE_SECONDS", 0.2)
    fakes.restore_cluster(starting=(STOPPED, state(roles("", "", ""))))
    code, out, err = restore(capsys)
    assert (code, out) == (1, "")
    request = created_request(fakes)
    assert fakes.changes()[-1] == ["scale", "statefulset", "database", "--replicas=3"]
    assert fakes.request() == made(request)
    assert fakes.current()["replicas"] == 3
    aside = f"pgdata.before-restore-{request}"
    assert err.splitlines() == [
        "restore: error: timed out after 0.2 s waiting for the instances restored to "
        f"{TARGET}; restore {request} did not finish, and is left as it is",
        "  left: database at 3 replicas; Patroni's former state (its ConfigMaps) deleted; the "
        f"request database-restore (id {request}, target {TARGET}) kept, so that an instance "
        "that starts restores and never makes a new, empty database; each instance that started "
        f"moved its former data to {aside} on its volume (/var/lib/postgresql/data), kept until "
        "removed by hand",
        "  look: " + fakes.shown("get", "pods", "--selector", POD_SELECTOR),
        "        " + fakes.shown("logs", "database-0", "--container", "postgres"),
        "        " + fakes.shown(
            "exec", "database-0", "--container", "postgres", "--", "patronictl", "list"),
        f"  go on: `make restore STACK=prod TIME='{TARGET}'` (waits for this request, and "
        "removes it once a restored primary answers)",
        "  roll back: " + fakes.shown("scale", "statefulset", "database", "--replicas=0"),
        "             once its pods are gone, on each volume in /var/lib/postgresql/data (README, "
        f"\"What a failure leaves\"): `test ! -d {aside} || {{ test ! -e pgdata || mv pgdata "
        f"pgdata.failed-restore-{request}; mv {aside} pgdata; }}`",
        "             " + fakes.shown("delete", "configmap", "--selector", PATRONI_SCOPE),
        "             " + fakes.shown("delete", "configmap", RESTORE, "--ignore-not-found"),
        "             " + fakes.shown("scale", "statefulset", "database", "--replicas=3"),
    ]  # fmt: skip


def test_an_instance_whose_restore_fails_at_every_start_ends_the_wait(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore that fails (no room on the volume, a WAL segment missing) fails at every start:
    the wait ends at the restarts, not after an hour, and the request stays as after a timeout."""
    monkeypatch.setattr(backups, "RESTORE_SECONDS", 5)
    crashing = {**state(roles("", "", "")), "restarts": {"database-1": backups.RESTORE_RESTARTS}}
    fakes.restore_cluster(starting=(STOPPED, crashing))
    code, out, err = restore(capsys)
    assert (code, out) == (1, "")
    request = created_request(fakes)
    logs = fakes.shown("logs", "database-1", "--container", "postgres", "--previous")
    assert err.splitlines()[0] == (
        "restore: error: database-1's postgres container has restarted 5 times: the restore "
        f"fails there ({logs} says why); restore {request} did not finish, and is left as it is"
    )
    assert fakes.request() == made(request)


def test_a_restore_gone_on_with_after_its_restarts_counts_those_since_it_began(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore that failed at every start, mended (its volume grown) and gone on with: a pod
    keeps its restart count, which the `go on` counts from, and a cluster settled since is a
    restore finished whatever its pods' counts."""
    left = {"id": "0123456789ab", "target": TARGET}
    restarted = {"restarts": {"database-1": backups.RESTORE_RESTARTS}}
    fakes.restore_cluster(running={**SETTLED, **restarted}, request=left)
    code, _, err = restore(capsys, TARGET)
    assert (code, err) == (0, "")
    assert fakes.request() is None

    monkeypatch.setattr(backups, "RESTORE_SECONDS", 0.2)
    crashed = {**state(roles("", "", "")), **restarted}
    fakes.restore_cluster(running=crashed, request=left)
    code, _, err = restore(capsys, TARGET)
    assert code == 1
    assert err.startswith(
        "restore: error: timed out after 0.2 s waiting for the instances restored to "
    ), err
    assert fakes.request() == left

    # Not mended: it fails at every start again, and 5 more restarts end the wait.
    monkeypatch.setattr(backups, "RESTORE_SECONDS", 5)
    again = {**crashed, "restarts": {"database-1": 2 * backups.RESTORE_RESTARTS}}
    fakes.restore_cluster(running=(crashed, again), request=left)
    code, _, err = restore(capsys, TARGET)
    assert code == 1
    assert err.startswith(
        "restore: error: database-1's postgres container has restarted 5 times: the restore "
        "fails there"
    ), err
    assert fakes.request() == left


def test_an_interrupted_wait_keeps_the_request(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the instances restore: the request stays, as after a timeout."""

    def interrupted(ready: Callable[[], object], what: str, *args: Any, **kwargs: Any) -> float:
        if what.startswith("the instances restored"):
            raise KeyboardInterrupt
        return wait_until(ready, what, *args, **kwargs)

    monkeypatch.setattr(backups, "wait_until", interrupted)
    try:
        code, _, err = restore(capsys)
    except KeyboardInterrupt:
        pytest.fail("the interrupt went through the tool, which said nothing of what it left")
    request = created_request(fakes)
    assert code == 1
    assert err.startswith(
        f"restore: error: interrupted; restore {request} did not finish, and is left as it is\n"
    )
    assert fakes.request() == made(request)
    assert fakes.changes()[-1] == ["scale", "statefulset", "database", "--replicas=3"]


# The signals that stop a run: Ctrl-C, `kill`'s default (or make passing on its own), and the
# hang-up of a dropped SSH session.
STOP_SIGNALS: Final = ("SIGINT", "SIGTERM", "SIGHUP")


# Runs its arguments with SIGHUP ignored, as `nohup` does.
IGNORING_SIGHUP: Final = (
    "import os, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


def restore_in_own_group(*, nohup: bool = False) -> subprocess.CompletedProcess[str]:
    """The tool run for real, in a process group of its own, as a terminal's foreground job: the
    group is what the stand-in kubectl signals (and the tool's own kubectl calls are in it).
    It starts with the stop signals' default handling, whatever this run inherited (a make in
    the background ignores SIGINT, one under nohup SIGHUP), unless `nohup`."""
    ignoring = [sys.executable, "-c", IGNORING_SIGHUP] if nohup else []
    return subprocess.run(
        ["env", "--default-signal=HUP,INT,TERM", *ignoring,
         sys.executable, "-m", "tools.database_backup", "restore", "--stack", "prod",
         "--time", "2026-12-04 22:30:00+01:00"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        start_new_session=True,
    )  # fmt: skip


@pytest.mark.parametrize("name", STOP_SIGNALS)
def test_a_signal_before_anything_changed_says_so_and_nothing_more(
    name: str, fakes: BackupFakes
) -> None:
    """Interrupted while the repository is read (`choose` may take long): no traceback, no
    change, and a message that says so."""
    fakes.restore_cluster(signals={" ".join(chose()): {"signal": name}})
    done = restore_in_own_group()
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert done.stderr == (
        f"restore: error: interrupted ({name}) before the restore changed anything: nothing was "
        "changed\n"
    )
    assert fakes.changes() == [OWNER, MARKED, pgbackrest_in("database-1", "check"), chose()]


def test_a_hang_up_under_nohup_is_ignored_as_nohup_asks(fakes: BackupFakes) -> None:
    """A signal the tool began ignoring stays ignored: `nohup make restore ...` goes on."""
    fakes.restore_cluster(signals={" ".join(chose()): {"signal": "SIGHUP"}})
    done = restore_in_own_group(nohup=True)
    assert (done.returncode, done.stderr) == (0, "")
    assert fakes.request() is None
    assert fakes.current()["replicas"] == 3


@pytest.mark.parametrize("name", STOP_SIGNALS)
def test_a_signal_while_the_pods_stop_scales_them_back_and_a_second_one_waits(
    name: str, fakes: BackupFakes
) -> None:
    """The first signal scales the StatefulSet back; a second one, while that runs (sent to the
    whole group, the kubectl that scales back included), is held off until it is done: without
    that, the StatefulSet stays at 0 replicas with no request, and `pulumi up` does not bring it
    back (its state still holds the count)."""
    fakes.restore_cluster(
        signals={
            "scale statefulset database --replicas=0": {"signal": name},
            "scale statefulset database --replicas=3": {"signal": name, "before": True},
        }
    )
    done = restore_in_own_group()
    assert fakes.current()["replicas"] == 3, done.stderr
    assert fakes.current()["configmaps"] == CONFIG_MAPS
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert done.stderr == (
        f"restore: error: interrupted ({name}); the restore did not start: database is scaled "
        "back to 3 and nothing else was changed, so the database comes back as it was ("
        + fakes.shown("get", "pods", "--selector", POD_SELECTOR)
        + f")\nrestore: {name} held off until what is said above was done\n"
    )


@pytest.mark.parametrize("name", STOP_SIGNALS)
def test_a_signal_while_the_instances_restore_keeps_the_request_and_says_so(
    name: str, fakes: BackupFakes
) -> None:
    """A signal while the instances start: the start is not cut (the kubectl that scales is not
    stopped half-way), and the wait that follows stops, leaving the request as Ctrl-C does."""
    fakes.restore_cluster(
        signals={"scale statefulset database --replicas=3": {"signal": name}},
        starting=(STOPPED, state(roles("", "", ""))),
    )
    done = restore_in_own_group()
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    request = created_request(fakes)
    assert fakes.request() == made(request)
    assert fakes.current()["replicas"] == 3
    lines = done.stderr.splitlines()
    assert lines[:2] == [
        f"restore: error: interrupted ({name}); restore {request} did not finish, and is left "
        "as it is",
        "  left: database at 3 replicas; Patroni's former state (its ConfigMaps) deleted; the "
        f"request database-restore (id {request}, target {TARGET}) kept, so that an instance "
        "that starts restores and never makes a new, empty database; each instance that started "
        f"moved its former data to pgdata.before-restore-{request} on its volume "
        "(/var/lib/postgresql/data), kept until removed by hand",
    ], done.stderr
    assert "Traceback" not in done.stderr


def test_pods_that_do_not_stop_are_started_again_and_nothing_else_changes(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No request made, Patroni's state untouched: scaled back, the cluster is as it was."""
    monkeypatch.setattr(backups, "STOP_SECONDS", 0.2)
    fakes.restore_cluster(stopping=(RUNNING, state(roles("replica", ""))))
    code, out, err = restore(capsys)
    assert (code, out) == (1, "")
    assert fakes.changes()[len(CHECKED) :] == [
        ["scale", "statefulset", "database", "--replicas=0"],
        ["scale", "statefulset", "database", "--replicas=3"],
    ]
    assert fakes.current()["configmaps"] == CONFIG_MAPS
    assert err == (
        "restore: error: timed out after 0.2 s waiting for the database's pods to stop; the "
        "restore did not start: database is scaled back to 3 and nothing else was changed, so "
        "the database comes back as it was ("
        + fakes.shown("get", "pods", "--selector", POD_SELECTOR)
        + ")\n"
    )


def test_a_request_refused_by_the_api_is_undone_like_pods_that_do_not_stop(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = 'Error from server (Forbidden): configmaps is forbidden: User "ops" cannot create'
    intercept(monkeypatch, ["create", "configmap"], refuse=refused)
    code, _, err = restore(capsys)
    assert code == 1
    assert err.startswith(f"restore: error: {refused}; the restore did not start: database is ")
    assert fakes.changes()[len(CHECKED) :] == [
        ["scale", "statefulset", "database", "--replicas=0"],
        ["scale", "statefulset", "database", "--replicas=3"],
    ]
    assert fakes.current()["configmaps"] == CONFIG_MAPS


def test_another_request_made_meanwhile_is_kept_and_nothing_started(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that appeared while the pods stopped (another run): this run's cannot be made,
    the other one stays, and nothing starts with it; Patroni's state is still the former
    cluster's, so the roll back needs no volume touched."""
    other = {"id": "0123456789ab", "target": "2026-12-04 20:00:00.000000+00"}

    def another_run() -> None:
        cluster = fakes.current()
        cluster["configmaps"][RESTORE] = {"labels": {}, "data": other}
        (fakes.folder / "cluster.json").write_text(json.dumps(cluster))

    intercept(monkeypatch, ["create", "configmap"], before=another_run)
    code, _, err = restore(capsys)
    assert code == 1
    assert fakes.request() == other
    assert fakes.current()["replicas"] == 0
    assert fakes.changes()[-1][:3] == ["create", "configmap", RESTORE]
    assert set(fakes.current()["configmaps"]) == {*CONFIG_MAPS, RESTORE}
    lines = err.splitlines()
    assert lines[0].startswith("restore: error: `kubectl ")
    assert lines[0].endswith(
        'Error from server (AlreadyExists): configmaps "database-restore" already exists; '
        "another request is there (another `make restore` running?); restore 0123456789ab did "
        "not finish, and is left as it is"
    )
    assert lines[1].startswith(
        "  left: database at 0 replicas; Patroni's state (its ConfigMaps) untouched; the "
        "request database-restore (id 0123456789ab, target 2026-12-04 20:00:00.000000+00) kept"
    )
    assert lines[1].endswith("no instance has started since: every volume holds its data as it was")
    assert lines[5:] == [
        "  go on: " + fakes.shown("delete", "configmap", "--selector", PATRONI_SCOPE),
        "         " + fakes.shown("scale", "statefulset", "database", "--replicas=3"),
        "         `make restore STACK=prod TIME='2026-12-04 20:00:00.000000+00'` (waits for this "
        "request, and removes it once a restored primary answers)",
        "  roll back: " + fakes.shown("delete", "configmap", RESTORE, "--ignore-not-found"),
        "             " + fakes.shown("scale", "statefulset", "database", "--replicas=3"),
    ]


def test_patroni_s_state_not_deleted_leaves_the_request_and_no_instance_started(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    intercept(monkeypatch, ["delete", "configmap", "--selector"], refuse="the server timed out")
    code, _, err = restore(capsys)
    request = created_request(fakes)
    assert code == 1
    assert fakes.request() == made(request)
    assert fakes.current()["replicas"] == 0
    lines = err.splitlines()
    assert lines[0] == (
        f"restore: error: the server timed out; restore {request} did not finish, and is left "
        "as it is"
    )
    assert "; Patroni's former state (its ConfigMaps) perhaps partly deleted; " in lines[1]
    assert lines[5:8] == [
        "  go on: " + fakes.shown("delete", "configmap", "--selector", PATRONI_SCOPE),
        "         " + fakes.shown("scale", "statefulset", "database", "--replicas=3"),
        f"         `make restore STACK=prod TIME='{TARGET}'` (waits for this request, and "
        "removes it once a restored primary answers)",
    ]


OTHER_REQUEST: Final = {"id": "0123456789ab", "target": "2026-12-04 20:00:00.000000+00"}
OTHER_ASIDE: Final = "pgdata.before-restore-0123456789ab"
PUT_BACK: Final = (
    'once its pods are gone, on each volume in /var/lib/postgresql/data (README, "What a failure '
    f'leaves"): `test ! -d {OTHER_ASIDE} || {{ test ! -e pgdata || mv pgdata '
    f"pgdata.failed-restore-0123456789ab; mv {OTHER_ASIDE} pgdata; }}`"
)
GO_ON_WITH_OTHER: Final = (
    "`make restore STACK=prod TIME='2026-12-04 20:00:00.000000+00'` (waits for this request, and "
    "removes it once a restored primary answers)"
)


def test_a_request_left_for_another_time_is_refused_before_anything_changes(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    """A request left by a run that did not finish (or was killed) is neither replaced nor
    removed: the tool says what it is and how to go on with it or roll it back."""
    fakes.restore_cluster(running=SETTLED, request=OTHER_REQUEST)
    code, out, err = restore(capsys)
    assert (code, out) == (1, "")
    assert fakes.changes() == []
    assert fakes.request() == OTHER_REQUEST
    lines = err.splitlines()
    assert lines[0] == (
        "restore: error: database-restore is there, for another time: nothing was changed; "
        "restore 0123456789ab did not finish, and is left as it is"
    )
    assert lines[1].endswith(
        f"each instance that started moved its former data to {OTHER_ASIDE} on its volume "
        "(/var/lib/postgresql/data), kept until removed by hand"
    )
    assert lines[5:] == [
        "  go on: " + GO_ON_WITH_OTHER,
        "  roll back: " + fakes.shown("scale", "statefulset", "database", "--replicas=0"),
        "             " + PUT_BACK,
        "             " + fakes.shown("delete", "configmap", "--selector", PATRONI_SCOPE),
        "             " + fakes.shown("delete", "configmap", RESTORE, "--ignore-not-found"),
        "             " + fakes.shown("scale", "statefulset", "database", "--replicas=3"),
    ]


def test_a_request_left_with_the_instances_at_0_says_how_to_start_them(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    """The review's case: a run killed after it made the request, the StatefulSet at 0. How
    many instances the stack has is its config's; `make up` would not scale them back (its state
    still holds that count)."""
    fakes.configure("database", {"replicas": 3})
    fakes.restore_cluster(running=STOPPED, replicas=0, request=OTHER_REQUEST)
    code, _, err = restore(capsys)
    assert code == 1
    assert fakes.changes() == []
    lines = err.splitlines()
    assert lines[1].startswith(
        "  left: database at 0 replicas; Patroni's state (its ConfigMaps) as that run left it; "
    )
    assert lines[5:] == [
        "  go on: " + fakes.shown("delete", "configmap", "--selector", PATRONI_SCOPE),
        "         " + scaled_to_configured(fakes),
        "         " + GO_ON_WITH_OTHER,
        "  roll back: " + PUT_BACK,
        "             " + fakes.shown("delete", "configmap", "--selector", PATRONI_SCOPE),
        "             " + fakes.shown("delete", "configmap", RESTORE, "--ignore-not-found"),
        "             " + scaled_to_configured(fakes),
    ]


def scaled_to_configured(fakes: BackupFakes) -> str:
    return fakes.shown("scale", "statefulset", "database", "--replicas=3") + (
        " (mlstack:database.replicas)"
    )


def test_the_same_restore_asked_again_is_waited_for_and_finished(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    """`go on`, as the message prints it: the request's target as TIME."""
    left = {"id": "0123456789ab", "target": TARGET}
    fakes.restore_cluster(running=SETTLED, request=left)
    code, out, err = restore(capsys, TARGET)
    assert (code, err) == (0, "")
    assert fakes.changes() == [["delete", "configmap", RESTORE, "--ignore-not-found"]]
    assert fakes.request() is None
    assert out.endswith(
        " s); each volume keeps its former data as pgdata.before-restore-0123456789ab until it "
        'is removed (README, "Backups and restore")\n'
    )


def test_the_same_restore_scaled_to_0_is_refused_before_anything_changes(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.restore_cluster(
        running=STOPPED, replicas=0, request={"id": "0123456789ab", "target": TARGET}
    )
    code, _, err = restore(capsys, TARGET)
    assert code == 1
    assert err.startswith(
        "restore: error: database is scaled to 0 with database-restore there: nothing was "
        "changed; restore 0123456789ab did not finish"
    )
    assert fakes.changes() == []


def test_a_stack_scaled_to_0_without_a_request_is_refused_before_anything_changes(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.configure("database", {"replicas": 3})
    fakes.restore_cluster(running=STOPPED, replicas=0)
    code, _, err = restore(capsys)
    assert code == 1
    assert err == (
        "restore: error: database is scaled to 0 and no restore is pending: start it first "
        f"({scaled_to_configured(fakes)}), then restore\n"
    )
    assert fakes.changes() == []
    # A count the stack's config does not give (its preview refuses it): the key, to look up.
    fakes.configure("database", {"replicas": "three"})
    code, _, err = restore(capsys)
    assert code == 1
    scale = fakes.shown("scale", "statefulset", "database", "--replicas=N")
    assert err == (
        "restore: error: database is scaled to 0 and no restore is pending: start it first "
        f"({scale} (N being mlstack:database.replicas)), then restore\n"
    )


def test_a_restore_whose_request_cannot_be_removed_says_it_may_be(
    fakes: BackupFakes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    intercept(monkeypatch, ["delete", "configmap", RESTORE], refuse="the server timed out")
    code, _, err = restore(capsys)
    assert code == 1
    assert err == (
        f"restore: error: the database is restored to {TARGET}, but removing database-restore "
        "failed (the server timed out); a restored primary answered, so "
        + fakes.shown("delete", "configmap", RESTORE, "--ignore-not-found")
        + " may remove it\n"
    )
    assert fakes.request() is not None


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
        OWNER,
        pgbackrest_in("database-1", "backup", "--type=diff"),
        pgbackrest_in("database-1", "info"),
    ]
