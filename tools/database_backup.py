"""`make backup` and `make restore`: a base backup of a stack's PostgreSQL now, and the whole
database put back as it was at a point in time, from the stack's pgBackRest repository
(`mlstack:database.backup`; README, "Backups and restore").

    python -m tools.database_backup backup  --stack prod [--type full|diff|incr]
    python -m tools.database_backup restore --stack prod --time '2026-12-04 21:30:00+00:00'

`backup` runs pgBackRest in the primary's `backups` container and prints the repository's list.
Both refuse, before anything runs, a stack deployed without backups (no `backups` container),
and `backup` a repository that holds another database's backups (a stack made anew over the
repository of the one before: `restore` brings that database back).

`restore` replaces every instance's data; predictions are refused (503) while it runs:
1. a time later than now (this machine's clock) is refused before anything is asked or changed:
   the archived WAL ends now, and a recovery whose target lies past its end fails;
2. a request `database-restore` already there (a run that did not finish) is finished when it
   is for the same time and the instances run (step 6), else refused with what it left;
3. in the primary, when the repository is this database's: a transaction committed after the
   time by the database's clock (a later time is refused): a recovery to a time ends at the
   first commit after it, which a quiet database may not have; `pgbackrest check`: the WAL up
   to now is in the repository. When it is another database's (a stack made anew), that
   database is the one restored, from what its archive holds. Then, in the repository
   (`mlstack-database-repository choose`): the timeline the database was on at the time (after
   an earlier restore, not always the newest one) and a backup of that timeline's history that
   ended in a second before the time's, or why there is none. Last, in each instance, room on
   its data volume for that backup's database and max_wal_size of WAL beside its own data;
4. scale the StatefulSet to 0, and make the ConfigMap `database-restore` (a request id, the
   time, the timeline, the backup set and how far to recover): a failure until then scales
   the StatefulSet back, and nothing else has changed;
5. remove Patroni's state (its ConfigMaps), so that the cluster is made anew, and scale back:
   each instance moves its data aside once for that request (`pgdata.before-restore-<id>` on
   its volume, kept until removed by hand), one restores the backup chosen and replays the
   timeline's archived WAL up to the time, then becomes the primary; the others copy it; its
   backups container then takes a full backup at once, a base on the new timeline;
6. wait until the instances have settled, a restored primary answering, then remove the
   request. A failure or Ctrl-C from step 5 on leaves the request where it is (without it, an
   instance that starts would make a new, empty database) and prints what was left and the
   commands to look at it, go on or roll back.

SIGTERM and SIGHUP (a dropped SSH session) interrupt either command as Ctrl-C does. Before step
4 an interruption ends `restore` saying nothing was changed; from step 4 on they are held off
but in its two waits, and after the first, until what it left is said.
"""

from __future__ import annotations

import argparse
import datetime as dt
import enum
import json
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

from components import database
from components.stack_file import project_name
from harness.poll import wait_until
from harness.signals import Interrupted, hold, interruptible, interrupting
from tools.database_switchover import Instances, current_primary
from tools.stack import Kubectl, Stack, StackError, database_replicas, read_stack

CONTAINER: Final = database.BACKUPS_CONTAINER
# The image's reader of the repository (services/database/bin), in the backups container.
REPOSITORY: Final = "mlstack-database-repository"
# How long it may take to find a time's timeline (it reads WAL segments from the repository).
CHOOSE_SECONDS: Final = 1800
BACKUP_SECONDS: Final = 6 * 3600
# pgBackRest's exit status when another of its commands holds the stanza's lock (LockAcquireError),
# and how often a backup asked for while one runs tries again.
LOCK_HELD: Final = 50
LOCK_POLL_SECONDS: Final = 10.0
# The line kubectl writes after a program run by `kubectl exec` exits other than 0.
KUBECTL_EXIT: Final = re.compile(r"^command terminated with exit code \d+$")
# How long the instances may take to stop, and the restore to make a primary and its copies.
STOP_SECONDS: Final = 300
RESTORE_SECONDS: Final = 3600
# Restarts of an instance's database container that end the wait for a restore: a restore that
# fails (no room on the volume, a WAL segment missing from the repository) fails again at every
# start, and the wait would otherwise last RESTORE_SECONDS. A restore that goes well restarts
# nothing. Counted from the wait's first look, Kubernetes' back-off makes these some five minutes
# for pods just started; some 25 for a `go on` whose pods already wait its longest between two.
RESTORE_RESTARTS: Final = 5
POLL_SECONDS: Final = 1.0


class BackupError(StackError):
    pass


def point_in_time(text: str) -> dt.datetime:
    """A time with its offset from UTC (an ISO 8601 string); argparse's type."""
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time such as '2026-12-04 21:30:00+00:00'"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no offset from UTC: add one, such as +00:00, so that it means one "
            "moment wherever the command runs"
        )
    return moment


def now() -> dt.datetime:
    """This machine's clock, in UTC."""
    return dt.datetime.now(dt.UTC)


def not_after_now(moment: dt.datetime) -> None:
    """Refuse a time later than now: the WAL archive ends at the present, and PostgreSQL's
    recovery fails ("recovery ended before configured recovery target was reached") when its
    target lies beyond it."""
    present = now()
    if moment > present:
        raise BackupError(
            f"{moment.isoformat()} is later than now ({present.isoformat(timespec='seconds')}): "
            "the archived WAL ends now, and a restore cannot reach a time after it (a local time "
            "given with +00:00?); nothing was changed"
        )


# A transaction that commits (it takes an id: PostgreSQL logs its commit, with its time) and
# reads the database's clock, run by the image's superuser psql in the primary.
COMMIT_MARK: Final = (
    "mlstack-database", "--psql", "--tuples-only", "--no-align",
    "--command=SELECT extract(epoch FROM clock_timestamp()) FROM pg_current_xact_id()",
)  # fmt: skip


def mark_now(kubectl: Kubectl, primary: str, moment: dt.datetime) -> None:
    """Commit a transaction in the primary, after `moment` by the database's clock, or refuse
    `moment`. A recovery to a time stops at the first commit after it and fails without one: on
    a quiet database, the last commit may be older than `moment`. `pgbackrest check`, next,
    archives the WAL that holds this one."""
    result = kubectl.exec(primary, database.POSTGRES_CONTAINER, *COMMIT_MARK)
    try:
        if result.returncode != 0:
            raise ValueError
        present = dt.datetime.fromtimestamp(float(result.stdout.strip()), dt.UTC)
    except ValueError:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise BackupError(
            f"committing a transaction in {primary} failed: {(detail or ['(no output)'])[-1]}"
        ) from None
    if moment > present:
        raise BackupError(
            f"{moment.isoformat()} is later than the database's clock "
            f"({present.isoformat(timespec='seconds')}): the archived WAL ends there, and a "
            "restore cannot reach a time after it (is this machine's clock ahead?); nothing "
            "else was changed"
        )


# The bytes of WAL a restored instance keeps as it replays (recovery restores each segment from
# the archive into pg_wal, and its restartpoints, every max_wal_size, remove them), read from the
# primary: the image sets it from the volume's size.
WAL_SIZE: Final = (
    "mlstack-database", "--psql", "--tuples-only", "--no-align",
    "--command=SELECT pg_size_bytes(current_setting('max_wal_size'))",
)  # fmt: skip
# The free bytes of an instance's data volume, as the image's df (GNU coreutils) prints them.
FREE_SPACE: Final = ("df", "--block-size=1", "--output=avail", database.MOUNT_PATH)


def human(count: int) -> str:
    """`count` bytes in binary units, for a message: `512 B`, `3.0 GiB`."""
    size, unit = float(count), "B"
    for larger in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024:
            break
        size, unit = size / 1024, larger
    return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"


def restored_size(kubectl: Kubectl, primary: str, label: str) -> int:
    """The size of the database backup `label` holds: what a restore of it writes on a volume
    (pgBackRest's `info.size`, the database's size, not the repository's compressed copy)."""
    args = ("info", "--output=json", f"--set={label}")
    try:
        stanzas = json.loads(pgbackrest(kubectl, primary, *args))
        [size] = {
            int(found["info"]["size"])
            for stanza in stanzas
            for found in stanza.get("backup") or []
            if found.get("label") == label
        }
    except (ValueError, KeyError, TypeError):
        raise BackupError(
            f"pgbackrest {' '.join(args)} in {primary} does not give the backup's size"
        ) from None
    return size


def integer(kubectl: Kubectl, pod: str, argv: Sequence[str], what: str) -> int:
    """The number the last line `argv` prints in `pod`'s postgres container is; a BackupError
    saying `what` is not known when it prints none."""
    result = kubectl.exec(pod, database.POSTGRES_CONTAINER, *argv)
    lines = result.stdout.strip().splitlines()
    try:
        if result.returncode != 0 or not lines:
            raise ValueError
        return int(lines[-1].strip())
    except ValueError:
        raise BackupError(f"{what} is not known ({argv[0]} failed: {last_line(result)})") from None


def require_room(kubectl: Kubectl, instances: Instances, primary: str, label: str) -> None:
    """Refuse a restore some instance's data volume has no room for. Each one moves its data
    aside on that volume (a rename: no room taken), then writes the backup's whole database
    beside it (the one that restores, and each copy of it), and keeps the WAL it replays up to
    max_wal_size. More may be needed still (the tables the replay makes larger), never less: a
    volume with less fails the restore at every start, with the StatefulSet at 0 and Patroni's
    state gone."""
    size = restored_size(kubectl, primary, label)
    try:
        wal = integer(kubectl, primary, WAL_SIZE, f"{primary}'s max_wal_size")
    except BackupError as error:
        raise BackupError(f"{error}; nothing was changed") from None
    needed = size + wal
    short: list[str] = []
    for index in range(instances.count):
        pod = database.pod_name(index)
        try:
            free = integer(kubectl, pod, FREE_SPACE, f"the free space of {pod}'s data volume")
        except BackupError as error:
            # Its postgres container not running, say: a restore is what may mend it (its data
            # is made anew), so it is not refused for that.
            print(f"restore: warning: {error}: not checked", file=sys.stderr)
            continue
        if free < needed:
            short.append(f"of {pod} {'' if short else 'has '}{human(free)} ({free} bytes)")
    if short:
        raise BackupError(
            f"the data volume ({database.MOUNT_PATH}) {', '.join(short)} free, and a restore "
            f"needs {human(needed)} ({needed} bytes) on each: the {human(size)} of backup "
            f"{label}'s database beside the data it moves aside, and {human(wal)} "
            "(max_wal_size) of the WAL it replays; grow the volumes (a larger "
            f"{project_name()}:database.storageSize, where their class allows it: "
            'README, "Which class, and whether it grows") or remove the data earlier restores '
            'left (README, "What it leaves on the volumes"), then restore; nothing was changed'
        )


def pgbackrest(
    kubectl: Kubectl, pod: str, *args: str, timeout: float = 600, check: bool = True
) -> str:
    result = kubectl.exec(pod, CONTAINER, "pgbackrest", *args, timeout=timeout)
    if check:
        failed(pod, args, result)
    return result.stdout


def failed(pod: str, args: Sequence[str], result: subprocess.CompletedProcess[str]) -> None:
    """A BackupError with the last line pgBackRest wrote, when `pgbackrest args` in `pod`
    exited other than 0."""
    if result.returncode != 0:
        raise BackupError(f"pgbackrest {' '.join(args)} in {pod} failed: {last_line(result)}")


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    """The last line a program run by `kubectl exec` wrote to stderr (else stdout): its reason,
    not the line kubectl adds after it (`command terminated with exit code 1`)."""
    for text in (result.stderr, result.stdout):
        lines = [line for line in text.strip().splitlines() if not KUBECTL_EXIT.match(line)]
        if lines:
            return lines[-1]
    return "(no output)"


def repository_json(kubectl: Kubectl, pod: str, *args: str, timeout: float = 300) -> Any:
    """What `mlstack-database-repository args` answers in `pod`, or its reason on stderr."""
    result = kubectl.exec(pod, CONTAINER, REPOSITORY, *args, timeout=timeout)
    if result.returncode != 0:
        raise BackupError(last_line(result).removeprefix(f"{REPOSITORY}: "))
    try:
        return json.loads(result.stdout)
    except ValueError:
        raise BackupError(f"{REPOSITORY} {' '.join(args)} in {pod} answered no JSON") from None


@dataclass(frozen=True)
class Owner:
    """The system identifiers of the local server's database and of the one the repository's
    stanza is for (None: it does not answer, or there is no stanza), and when they differ, what
    to do about a repository of another database's (the image's words, for a message)."""

    database: str | None
    repository: str | None
    advice: str | None

    @property
    def foreign(self) -> bool:
        return self.advice is not None


def repository_owner(kubectl: Kubectl, pod: str) -> Owner:
    found = repository_json(kubectl, pod, "owner")
    return Owner(found.get("database"), found.get("repository"), found.get("foreign"))


def require_backups(stack: Stack, instances: Instances) -> None:
    """Refuse a stack deployed without `database.backup`: its pods have no backups
    container, and there is no repository to back up to or restore from."""
    if CONTAINER not in instances.containers:
        raise BackupError(
            f"stack {stack.name} has no backups: its database pods have no {CONTAINER} container "
            f'({project_name()}:database.backup turns them on; README, "Backups and restore"); '
            "nothing was changed"
        )


def backup(stack: Stack, kind: str) -> str:
    kubectl = Kubectl(stack)
    instances = Instances(kubectl)
    require_backups(stack, instances)
    primary = current_primary(instances.snapshot(), kubectl, "to back up")
    owner = repository_owner(kubectl, primary)
    if owner.foreign:
        raise BackupError(f"{owner.advice}; nothing was backed up")
    run_backup(kubectl, primary, kind)
    return pgbackrest(kubectl, primary, "info")


def run_backup(kubectl: Kubectl, primary: str, kind: str) -> None:
    """pgBackRest's backup of type `kind` in `primary`. While another one holds the stanza's lock
    (the backups container's schedule, as after a restore, when the restored primary backs
    itself up at once), it is waited for, then this one runs: what is asked for is a backup
    made from now on."""
    told = False

    def ran() -> bool:
        nonlocal told
        args = ("backup", f"--type={kind}")
        result = kubectl.exec(primary, CONTAINER, "pgbackrest", *args, timeout=BACKUP_SECONDS)
        if result.returncode != LOCK_HELD:
            failed(primary, args, result)
            return True
        if not told:
            print(
                f"backup: another backup is under way in {primary}; waiting for it to end",
                file=sys.stderr,
            )
            told = True
        return False

    wait_until(ran, "the backup under way to end", BACKUP_SECONDS, interval=LOCK_POLL_SECONDS)


@dataclass(frozen=True)
class Request:
    """A restore request, the ConfigMap `database-restore`: its id and recovery target, and
    what `mlstack-database-repository choose` found for it (empty in a request an earlier
    release made): the timeline, the backup set, and `time` (recover to the target), `xid`
    (to the transaction `xid`, the last commit of the timeline's archive, which ends before the
    target) or `default` (the archive, without a commit, replayed whole)."""

    id: str
    target: str
    timeline: str = ""
    set: str = ""
    type: str = ""
    xid: str = ""

    def literals(self) -> list[str]:
        """The ConfigMap's data, as `kubectl create configmap` takes it."""
        found = ((f.name, getattr(self, f.name)) for f in fields(self))
        return [f"--from-literal={key}={value}" for key, value in found if value]


def recovery_target(moment: dt.datetime) -> str:
    """`moment` as the request's target: PostgreSQL's form, in UTC."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def pending_request(kubectl: Kubectl) -> Request | None:
    """The request in the stack's namespace, if there is one."""
    found = kubectl.get_json("configmap", database.RESTORE_CONFIG_MAP)
    if not found:
        return None
    data = found.get("data") or {}
    return Request(*(str(data.get(f.name, "")) for f in fields(Request)))


class RestoreUnfinishedError(BackupError):
    """A restore that changed the cluster and stopped before its end: the message says what it
    left and what to run next."""


class PatroniState(enum.Enum):
    """Patroni's ConfigMaps when a restore stops: still the former cluster's, perhaps partly
    deleted, deleted (and perhaps made again by the restored cluster), or as a run that did not
    finish left them."""

    FORMER = "Patroni's state (its ConfigMaps) untouched"
    PARTLY = "Patroni's former state (its ConfigMaps) perhaps partly deleted"
    DELETED = "Patroni's former state (its ConfigMaps) deleted"
    UNKNOWN = "Patroni's state (its ConfigMaps) as that run left it"


@dataclass(frozen=True)
class Left:
    """What a restore that stopped leaves besides its request."""

    # The replicas the StatefulSet may have: "0", "3", "0 or 3".
    replicas: str
    patroni: PatroniState
    # Whether an instance may have started with the request, and so moved its data aside.
    started: bool


def describe(error: BaseException) -> str:
    """An error's words, and an interruption's: `interrupted (SIGTERM)`."""
    if isinstance(error, KeyboardInterrupt) and not isinstance(error, Interrupted):
        return "interrupted"
    return str(error)


class Restore:
    """A restore of one stack's database: its steps, each one's failure, and the message that
    says what a failure left and how to look at it, go on or roll back.

    Until the request exists, a failure undoes what was done: the instances were only scaled to
    0, and come back as they were. Once it exists, nothing here deletes it unless a restored
    primary answered: an instance that starts while it is there restores from the backups, and
    never makes a new, empty database that would take the application's writes.

    From its first change on, SIGINT, SIGTERM and SIGHUP are held off (harness/signals.py) but
    in its two waits: a signal there is a failure as any other, and the scale back or the
    message that says what was left is never cut by the next one."""

    def __init__(self, stack: Stack, kubectl: Kubectl, instances: Instances) -> None:
        self.stack = stack
        self.kubectl = kubectl
        self.instances = instances
        # The instances before the restore: what the StatefulSet is scaled back to.
        self.count = instances.count
        self.scope = f"{instances.selector},{database.SCOPE_LABEL}={database.SCOPE}"

    def run(self, request: Request) -> None:
        """The whole restore: stop, ask, start, wait, remove the request."""
        hold()
        self.stop()
        self.make(request)
        self.start(request)
        self.finish(request)

    def stop(self) -> None:
        """Every instance stopped; on failure, the StatefulSet scaled back."""
        try:
            self.kubectl("scale", "statefulset", database.NAME, "--replicas=0")
            with interruptible():
                wait_until(
                    lambda: not self.instances.snapshot().roles,
                    "the database's pods to stop",
                    STOP_SECONDS,
                    interval=POLL_SECONDS,
                )
        except (StackError, RuntimeError, KeyboardInterrupt) as error:
            raise self.undone(describe(error)) from error

    def make(self, request: Request) -> None:
        """The request made, before Patroni's state is touched: a creation that fails leaves the
        former cluster whole, and is undone unless a request is there after all."""
        try:
            self.kubectl("create", "configmap", database.RESTORE_CONFIG_MAP, *request.literals())
            return
        except (StackError, KeyboardInterrupt) as error:
            why, cause = describe(error), error
        untouched = Left("0", PatroniState.FORMER, started=False)
        try:
            found = pending_request(self.kubectl)
        except StackError as error:
            # Whether it was made is not known: as if it were, nothing is undone.
            unknown = f"{why}; whether {database.RESTORE_CONFIG_MAP} was made is not known"
            raise self.unfinished(f"{unknown} ({error})", request, untouched) from cause
        if found is None:
            raise self.undone(why) from cause
        if found != request:
            another = f"{why}; another request is there (another `make restore` running?)"
            raise self.unfinished(another, found, untouched) from cause
        if isinstance(cause, KeyboardInterrupt):
            # Made, but the person asked to stop: left for them to go on or roll back.
            raise self.unfinished(why, request, untouched) from cause

    def start(self, request: Request) -> None:
        """Patroni's former state deleted and the instances started with the request."""
        left = Left("0", PatroniState.PARTLY, started=False)
        try:
            self.kubectl("delete", "configmap", "--selector", self.scope, "--ignore-not-found")
            left = Left(f"0 or {self.count}", PatroniState.DELETED, started=True)
            self.kubectl("scale", "statefulset", database.NAME, f"--replicas={self.count}")
        except (StackError, KeyboardInterrupt) as error:
            raise self.unfinished(describe(error), request, left) from error

    def finish(self, request: Request) -> None:
        """Wait for the restored primary and its replicas, then remove the request."""
        count = self.count
        # Each pod's restarts when the wait began: a pod keeps its count, and a `go on` after a
        # restore that failed at every start (then mended: its volume grown, say) counts anew.
        restarts_before: dict[str, int] | None = None

        def settled() -> bool:
            nonlocal restarts_before
            snapshot = self.instances.snapshot()
            roles = sorted(snapshot.roles.values())
            if roles == sorted([database.PRIMARY, *[database.REPLICA] * (count - 1)]) and all(
                snapshot.endpoints.get(name) for name in snapshot.primaries
            ):
                return True
            if restarts_before is None:
                restarts_before = dict(snapshot.restarts)
            for pod, restarts in snapshot.restarts.items():
                restarted = restarts - restarts_before.get(pod, 0)
                if restarted >= RESTORE_RESTARTS:
                    logs = ("logs", pod, "--container", database.POSTGRES_CONTAINER, "--previous")
                    raise BackupError(
                        f"{pod}'s {database.POSTGRES_CONTAINER} container has restarted "
                        f"{restarted} times: the restore fails there ({self.command(*logs)} "
                        "says why)"
                    )
            return False

        try:
            with interruptible():
                wait_until(
                    settled,
                    f"the instances restored to {request.target}",
                    RESTORE_SECONDS,
                    interval=POLL_SECONDS,
                )
        except (StackError, RuntimeError, KeyboardInterrupt) as error:
            left = Left(str(count), PatroniState.DELETED, started=True)
            raise self.unfinished(describe(error), request, left) from error
        remove = ("delete", "configmap", database.RESTORE_CONFIG_MAP, "--ignore-not-found")
        try:
            self.kubectl(*remove)
        except StackError as error:
            raise BackupError(
                f"the database is restored to {request.target}, but removing "
                f"{database.RESTORE_CONFIG_MAP} failed ({error}); a restored primary answered, "
                f"so {self.command(*remove)} may remove it"
            ) from error

    def scale_back(self) -> str:
        """The command that scales the instances back to what they were; from 0 (a restore
        gone on with after one that stopped), to what the stack deploys: `pulumi up` would not
        (its state still holds that count, and it changes nothing that matches its state)."""
        if self.count:
            return self.command("scale", "statefulset", database.NAME, f"--replicas={self.count}")
        return scale_to_configured(self.stack, self.kubectl)

    def command(self, *args: str) -> str:
        """`kubectl args` as a person runs it, quoted for a message."""
        return f"`{self.kubectl.shown(*args)}`"

    def undone(self, why: str) -> BackupError:
        """The instances scaled back, before any request was made: nothing else has changed."""
        scale = ("scale", "statefulset", database.NAME, f"--replicas={self.count}")
        try:
            self.kubectl(*scale)
        except StackError as error:
            return BackupError(
                f"{why}; the restore did not start, and scaling {database.NAME} back to "
                f"{self.count} failed ({error}): {self.command(*scale)} brings it back as it "
                "was; nothing else was changed"
            )
        pods = self.command("get", "pods", "--selector", self.instances.selector)
        return BackupError(
            f"{why}; the restore did not start: {database.NAME} is scaled back to {self.count} "
            f"and nothing else was changed, so the database comes back as it was ({pods})"
        )

    def unfinished(self, why: str, request: Request, left: Left) -> RestoreUnfinishedError:
        """What a restore that stopped left, and the commands to look at it, go on or roll
        back."""
        pgdata = Path(database.PGDATA).name
        aside = f"{pgdata}.before-restore-{request.id}"
        pod, container = database.pod_name(0), database.POSTGRES_CONTAINER
        delete_state = self.command("delete", "configmap", "--selector", self.scope)
        scale_back = self.scale_back()
        volumes = (
            f"each instance that started moved its former data to {aside} on its volume "
            f"({database.MOUNT_PATH}), kept until removed by hand"
            if left.started
            else "no instance has started since: every volume holds its data as it was"
        )
        # With no instance running, Patroni's state goes (again) before they start: an instance
        # then finds the request and no cluster, and restores, or starts on what it restored.
        former = left.patroni in {PatroniState.FORMER, PatroniState.PARTLY}
        stopped = left.patroni is PatroniState.UNKNOWN and left.replicas == "0"
        go_on = [delete_state] if former or stopped else []
        if left.replicas != str(self.count) or not self.count:
            go_on.append(scale_back)
        go_on.append(
            f"`make restore STACK={self.stack.name} TIME='{request.target}'` (waits for this "
            "request, and removes it once a restored primary answers)"
        )
        roll_back = []
        if left.replicas != "0":
            roll_back.append(self.command("scale", "statefulset", database.NAME, "--replicas=0"))
        if left.started:
            roll_back.append(
                f"once its pods are gone, on each volume in {database.MOUNT_PATH} (README, "
                f'"What a failure leaves"): `test ! -d {aside} || {{ test ! -e {pgdata} || '
                f"mv {pgdata} {pgdata}.failed-restore-{request.id}; mv {aside} {pgdata}; }}`"
            )
        if left.patroni is not PatroniState.FORMER:
            roll_back.append(delete_state)
        roll_back += [
            self.command("delete", "configmap", database.RESTORE_CONFIG_MAP, "--ignore-not-found"),
            scale_back,
        ]
        look = [
            self.command("get", "pods", "--selector", self.instances.selector),
            self.command("logs", pod, "--container", container),
            self.command("exec", pod, "--container", container, "--", "patronictl", "list"),
        ]
        return RestoreUnfinishedError(
            "\n".join(
                [
                    f"{why}; restore {request.id} did not finish, and is left as it is",
                    f"  left: {database.NAME} at {left.replicas} replicas; {left.patroni.value}; "
                    f"the request {database.RESTORE_CONFIG_MAP} (id {request.id}, target "
                    f"{request.target}) kept, so that an instance that starts restores and never "
                    f"makes a new, empty database; {volumes}",
                    *steps("look", look),
                    *steps("go on", go_on),
                    *steps("roll back", roll_back),
                ]
            )
        )


def steps(name: str, commands: Sequence[str]) -> list[str]:
    """`  name: first command`, and the others aligned below it."""
    head = f"  {name}: "
    return [head + commands[0], *(" " * len(head) + command for command in commands[1:])]


@dataclass(frozen=True)
class Restored:
    """A restore done: its request, the seconds it took, and what it restored from."""

    request: Request
    seconds: float
    # The end of the timeline's archive (the last commit it holds), when it ends before the time.
    archive_end: float | None = None
    # Whether the repository was another database's (now this stack's again).
    foreign: bool = False

    def describe(self) -> str:
        """What was restored, for the line that says it is done."""
        request = self.request
        if not request.set:
            return f"{self.seconds:.1f} s"
        said = f"{self.seconds:.1f} s; timeline {request.timeline}, from backup {request.set}"
        if self.archive_end is not None:
            end = dt.datetime.fromtimestamp(self.archive_end, dt.UTC).isoformat()
            said += f"; its archive ends at {end}, its last commit: all of it was restored"
        if self.foreign:
            said += "; the repository's database, which this stack's is now"
        return said


def scale_to_configured(stack: Stack, kubectl: Kubectl) -> str:
    """The command that scales the database to the stack's `database.replicas`, for a message."""
    key = f"{project_name()}:database.replicas"
    try:
        count = str(database_replicas(stack.name))
    except StackError:
        count = "N"
        key = f"N being {key}"
    scale = kubectl.shown("scale", "statefulset", database.NAME, f"--replicas={count}")
    return f"`{scale}` ({key})"


def restore(stack: Stack, moment: dt.datetime) -> Restored:
    """Restore the stack's database to `moment`: what was restored and the seconds it took. A
    request already there is finished when it is for the same time, else refused."""
    kubectl = Kubectl(stack)
    instances = Instances(kubectl)
    require_backups(stack, instances)
    run = Restore(stack, kubectl, instances)
    target = recovery_target(moment)
    pending = pending_request(kubectl)
    if pending is not None:
        hold()
        if pending.target != target or not instances.count:
            left = Left(str(instances.count), PatroniState.UNKNOWN, started=True)
            why = (
                f"{database.RESTORE_CONFIG_MAP} is there, for another time"
                if pending.target != target
                else f"{database.NAME} is scaled to 0 with {database.RESTORE_CONFIG_MAP} there"
            )
            raise run.unfinished(f"{why}: nothing was changed", pending, left)
        # The same restore asked again: wait for it and finish it.
        start = time.monotonic()
        run.finish(pending)
        return Restored(pending, time.monotonic() - start)
    if not instances.count:
        raise BackupError(
            f"{database.NAME} is scaled to 0 and no restore is pending: start it first "
            f"({scale_to_configured(stack, kubectl)}), then restore"
        )
    primary = current_primary(instances.snapshot(), kubectl, "to check the time and the backups in")
    owner = repository_owner(kubectl, primary)
    if owner.repository is None:
        raise BackupError(
            f"the backup repository has no backups yet (no stanza): nothing to restore from; "
            f"`make backup STACK={stack.name}` takes one"
        )
    if owner.database is None:
        raise BackupError(f"the database in {primary} does not answer; nothing was changed")
    if not owner.foreign:
        mark_now(kubectl, primary, moment)
        # Every WAL segment up to now archived, the mark's too: the replay reaches any time
        # before.
        pgbackrest(kubectl, primary, "check")
    # With another database's repository (a stack made anew), that database's archive, as it
    # ends.
    try:
        chosen = repository_json(kubectl, primary, "choose", target, timeout=CHOOSE_SECONDS)
    except BackupError as error:
        if owner.foreign or not str(error).startswith("no backup"):
            raise
        raise BackupError(f"{error}; `make backup STACK={stack.name}` takes one") from None
    request = Request(
        uuid.uuid4().hex[:12], target, str(chosen["timeline"]), str(chosen["set"]),
        str(chosen["type"]), str(chosen.get("xid") or ""),
    )  # fmt: skip
    require_room(kubectl, instances, primary, request.set)
    start = time.monotonic()
    run.run(request)
    return Restored(request, time.monotonic() - start, chosen.get("archive_end"), owner.foreign)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.database_backup",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    take = commands.add_parser("backup", help="a base backup now")
    take.add_argument("--stack", required=True)
    take.add_argument("--type", choices=("full", "diff", "incr"), default="full")
    put_back = commands.add_parser("restore", help="the database as it was at --time")
    put_back.add_argument("--stack", required=True)
    put_back.add_argument("--time", required=True, type=point_in_time)
    args = parser.parse_args(argv)
    # SIGTERM and SIGHUP (a dropped SSH session) interrupt it as Ctrl-C does.
    with tempfile.TemporaryDirectory(prefix="mlstack-backup-") as tmp, interrupting() as held_off:
        code = run_command(args, Path(tmp))
    for name in held_off:
        print(f"{args.command}: {name} held off until what is said above was done", file=sys.stderr)
    return code


def run_command(args: argparse.Namespace, folder: Path) -> int:
    """`backup` or `restore` as `args` ask, its outcome printed; its exit status."""
    try:
        if args.command == "restore":
            not_after_now(args.time)
        stack = read_stack(args.stack, folder)
        if args.command == "backup":
            print(backup(stack, args.type), end="")
        else:
            done = restore(stack, args.time)
            print(
                f"restore: {stack.name}'s database is as it was at {args.time.isoformat()} "
                f"({done.describe()}); each volume keeps its former data as "
                f"pgdata.before-restore-{done.request.id} until it is removed (README, "
                '"Backups and restore")'
            )
    except (StackError, RuntimeError) as error:
        print(f"{args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as error:
        # A restore's changes hold the signals off but in its waits, which say what they left:
        # one that reaches here came before the first change.
        said = describe(error)
        if args.command == "restore":
            said += " before the restore changed anything: nothing was changed"
        print(f"{args.command}: error: {said}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
