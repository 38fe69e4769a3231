"""`make backup` and `make restore`: a base backup of a stack's PostgreSQL now, and the whole
database put back as it was at a point in time, from the stack's pgBackRest repository
(`mlstack:database.backup`; README, "Backups and restore").

    python -m tools.database_backup backup  --stack prod [--type full|diff|incr]
    python -m tools.database_backup restore --stack prod --time '2026-12-04 21:30:00+00:00'

`backup` runs pgBackRest in the primary's `backups` container and prints the repository's list.

`restore` replaces every instance's data; predictions are refused (503) while it runs:
1. a time later than now (this machine's clock) is refused before anything is asked or changed:
   the archived WAL ends now, and a recovery whose target lies past its end fails;
2. in the primary, `pgbackrest check`: the WAL up to now is in the repository, and a backup
   older than the time is there to start from;
3. scale the StatefulSet to 0, and remove Patroni's state (its ConfigMaps), so that the cluster
   is made anew;
4. the ConfigMap `database-restore` (a request id, the time); scale back: each instance moves its
   data aside once for that request (`pgdata.before-restore-<id>` on its volume, kept until
   removed by hand), one restores the newest backup before the time and replays the archived
   WAL up to it, then becomes the primary; the others copy it;
5. wait until the instances have settled, then remove the ConfigMap.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from components import database
from harness.poll import wait_until
from tools.database_switchover import Instances, current_primary
from tools.stack import Kubectl, Stack, StackError, read_stack

CONTAINER: Final = database.BACKUPS_CONTAINER
BACKUP_SECONDS: Final = 6 * 3600
# How long the instances may take to stop, and the restore to make a primary and its copies.
STOP_SECONDS: Final = 300
RESTORE_SECONDS: Final = 3600
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


def pgbackrest(
    kubectl: Kubectl, pod: str, *args: str, timeout: float = 600, check: bool = True
) -> str:
    result = kubectl.exec(pod, CONTAINER, "pgbackrest", *args, timeout=timeout)
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise BackupError(
            f"pgbackrest {' '.join(args)} in {pod} failed: {(detail or ['(no output)'])[-1]}"
        )
    return result.stdout


def good_backups(kubectl: Kubectl, pod: str) -> list[dict[str, Any]]:
    found = json.loads(pgbackrest(kubectl, pod, "info", "--output=json") or "[]")
    return [b for stanza in found for b in stanza.get("backup") or [] if not b.get("error")]


def backup(stack: Stack, kind: str) -> str:
    kubectl = Kubectl(stack)
    primary = current_primary(Instances(kubectl).snapshot(), kubectl)
    pgbackrest(kubectl, primary, "backup", f"--type={kind}", timeout=BACKUP_SECONDS)
    return pgbackrest(kubectl, primary, "info")


def restore(stack: Stack, moment: dt.datetime) -> tuple[str, float]:
    kubectl = Kubectl(stack)
    instances = Instances(kubectl)
    primary = current_primary(instances.snapshot(), kubectl)
    # Every WAL segment up to now archived: the replay can reach any time before this.
    pgbackrest(kubectl, primary, "check")
    oldest = min((b["timestamp"]["stop"] for b in good_backups(kubectl, primary)), default=None)
    if oldest is None or oldest > moment.timestamp():
        first = (
            dt.datetime.fromtimestamp(oldest, dt.UTC).isoformat() if oldest is not None else None
        )
        raise BackupError(
            f"no backup ended before {moment.isoformat()} (the oldest ended "
            f"{first or 'never: there is none'}); `make backup STACK={stack.name}` takes one"
        )
    start = time.monotonic()
    count = instances.count
    kubectl("scale", "statefulset", database.NAME, "--replicas=0")
    wait_until(
        lambda: not instances.snapshot().roles,
        "the database's pods to stop",
        STOP_SECONDS,
        interval=POLL_SECONDS,
    )
    scope = f"{instances.selector},{database.SCOPE_LABEL}={database.SCOPE}"
    kubectl("delete", "configmap", "--selector", scope, "--ignore-not-found")
    request = uuid.uuid4().hex[:12]
    target = moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    kubectl(
        "create", "configmap", database.RESTORE_CONFIG_MAP,
        f"--from-literal=id={request}", f"--from-literal=target={target}",
    )  # fmt: skip
    try:
        kubectl("scale", "statefulset", database.NAME, f"--replicas={count}")

        def settled() -> bool:
            snapshot = instances.snapshot()
            roles = sorted(snapshot.roles.values())
            return roles == sorted([database.PRIMARY, *[database.REPLICA] * (count - 1)]) and all(
                snapshot.endpoints.get(name) for name in snapshot.primaries
            )

        wait_until(
            settled,
            f"the instances restored to {target}",
            RESTORE_SECONDS,
            interval=POLL_SECONDS,
        )
    finally:
        kubectl("delete", "configmap", database.RESTORE_CONFIG_MAP, "--ignore-not-found")
    return request, time.monotonic() - start


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
    with tempfile.TemporaryDirectory(prefix="mlstack-backup-") as tmp:
        try:
            if args.command == "restore":
                not_after_now(args.time)
            stack = read_stack(args.stack, Path(tmp))
            if args.command == "backup":
                print(backup(stack, args.type), end="")
            else:
                request, seconds = restore(stack, args.time)
                print(
                    f"restore: {stack.name}'s database is as it was at {args.time.isoformat()} "
                    f"({seconds:.1f} s); each volume keeps its former data as "
                    f"pgdata.before-restore-{request}"
                )
        except (StackError, RuntimeError) as error:
            print(f"{args.command}: error: {error}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
