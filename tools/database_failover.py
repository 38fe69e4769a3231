"""`make failover`: make a standby of a stack's PostgreSQL its primary, keeping every row the
primary acknowledged (README, "Failover").

1. Read the stack: its database instances, which one is the primary, its namespace and the
   cluster's kubeconfig (stack outputs and config, through the Pulumi CLI).
2. Stop the primary by scaling its StatefulSet to zero: it can take no further write and cannot
   come back as a primary. A clean shutdown sends its last WAL to the standbys before it ends.
3. Choose the target: the standby given, or the one that received the most WAL. No other standby
   may hold more WAL than the target (it could not follow the target, and a row acknowledged
   with synchronous commit may be there only). Wait until the target has replayed all of it.
4. Promote the target.
5. Set `database.primary` to the target and run `pulumi up`: the Services follow the role
   labels, and the former primary's StatefulSet comes back as a standby that copies the target.

Run again after a failure: a primary already at zero stays there, a promoted target stays so.

    python -m tools.database_failover --stack prod [--to 2] [--yes]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import database

PULUMI = os.environ.get("PULUMI", "pulumi")
KUBECTL = os.environ.get("KUBECTL", "kubectl")
# How long the old primary's pod may take to stop, and the target to replay what it received.
STOP_SECONDS = 180
REPLAY_SECONDS = 120


class FailoverError(Exception):
    """Why the failover stopped, and what to do about it."""


def lsn(text: str) -> int:
    """A PostgreSQL WAL position (`16/B374D848`) as a number."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


@dataclass(frozen=True)
class Stack:
    name: str
    namespace: str
    replicas: int
    primary: int
    kubeconfig: Path
    context: str | None


@dataclass(frozen=True)
class Standby:
    index: int
    received: int
    replayed: int


def _run(argv: Sequence[str], *, capture: bool = True, timeout: float = 120) -> str:
    result = subprocess.run(
        list(argv),
        capture_output=capture,
        text=True,
        check=False,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip() if capture else ""
        raise FailoverError(f"{' '.join(argv[:4])} ... failed: {detail}")
    return result.stdout if capture else ""


def pulumi(*args: str, stack: str, capture: bool = True, timeout: float = 120) -> str:
    argv = [PULUMI, "--non-interactive", *args, "--stack", stack]
    return _run(argv, capture=capture, timeout=timeout)


def read_stack(name: str, workdir: Path) -> Stack:
    config: dict[str, Any] = json.loads(pulumi("config", "--json", stack=name))
    outputs: dict[str, Any] = json.loads(
        pulumi("stack", "output", "--json", "--show-secrets", stack=name)
    )

    def value(key: str) -> Any:
        entry = config.get(f"mlstack:{key}") or {}
        if "objectValue" in entry:
            return entry["objectValue"]
        return json.loads(entry["value"]) if "value" in entry else None

    settings = value("database") or {}
    replicas, primary = int(settings.get("replicas", 1)), int(settings.get("primary", 0))
    if "namespace" not in outputs:
        raise FailoverError(f"stack {name} has no namespace output: is it deployed?")
    kubeconfig = str(outputs.get("kubeconfig") or "")
    cluster = value("cluster") or {}
    if "\n" in kubeconfig or not kubeconfig:
        # The kubeconfig itself (a cloud or local cluster); an existing cluster gives its path.
        path = workdir / "kubeconfig"
        path.touch(mode=0o600)
        path.write_text(kubeconfig or Path(os.environ["KUBECONFIG"]).read_text())
    else:
        path = Path(os.path.expanduser(kubeconfig))
    return Stack(
        name=name,
        namespace=str(outputs["namespace"]),
        replicas=replicas,
        primary=primary,
        kubeconfig=path,
        context=cluster.get("context") if cluster.get("provider") == "existing" else None,
    )


class Cluster:
    """kubectl against the stack's cluster and namespace."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def kubectl(self, *args: str, timeout: float = 120) -> str:
        context = ["--context", self.stack.context] if self.stack.context else []
        argv = [KUBECTL, "--kubeconfig", str(self.stack.kubeconfig), *context]
        return _run([*argv, "--namespace", self.stack.namespace, *args], timeout=timeout)

    def sql(self, index: int, query: str) -> str:
        return self.kubectl(
            "exec", database.pod_name(index), "--container", "postgres", "--",
            "psql", "--username", database.USER, "--dbname", database.DB_NAME,
            "--no-psqlrc", "--no-align", "--tuples-only", "--quiet", "--command", query,
        ).strip()  # fmt: skip

    def running(self, index: int) -> bool:
        found = self.kubectl(
            "get", "pods", "--field-selector", f"metadata.name={database.pod_name(index)}",
            "--output", "name",
        )  # fmt: skip
        return bool(found.strip())

    def replicas(self, index: int) -> int:
        spec = self.kubectl(
            "get", "statefulset", database.instance_name(index),
            "--output", "jsonpath={.spec.replicas}",
        )  # fmt: skip
        return int(spec or 0)

    def standby(self, index: int) -> Standby | None:
        """The standby's WAL positions; None if it does not answer as a standby."""
        try:
            row = self.sql(
                index,
                "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()",
            )
        except FailoverError:
            return None
        in_recovery, received, replayed = [*row.split("|"), "", ""][:3]
        if in_recovery != "t" or not replayed:
            return None
        # A standby that has streamed nothing yet (received empty) has replayed its copy only.
        return Standby(index, lsn(received or replayed), lsn(replayed))


def say(message: str) -> None:
    print(f"failover: {message}", flush=True)


def stop_primary(cluster: Cluster, index: int) -> None:
    name = database.instance_name(index)
    if cluster.replicas(index) != 0:
        say(f"stopping the primary: scaling StatefulSet {name} to zero")
        cluster.kubectl("scale", "statefulset", name, "--replicas", "0")
    deadline = time.monotonic() + STOP_SECONDS
    while cluster.running(index):
        if time.monotonic() > deadline:
            raise FailoverError(
                f"pod {database.pod_name(index)} is still there after {STOP_SECONDS} s: if its "
                "node is gone, delete it with `kubectl delete pod --force` once you know the node "
                "is down, then run the failover again"
            )
        time.sleep(1)
    say(f"the primary ({database.pod_name(index)}) has stopped")


def choose_target(cluster: Cluster, stack: Stack, wanted: int | None) -> Standby:
    standbys = {}
    for index in range(stack.replicas):
        if index == stack.primary:
            continue
        found = cluster.standby(index)
        if found is not None:
            standbys[index] = found
            say(f"standby {database.pod_name(index)}: received {found.received:#x}")
    if not standbys:
        raise FailoverError("no standby answers: there is nothing to promote")
    best = max(standbys.values(), key=lambda s: s.received)
    if wanted is None:
        return best
    if wanted not in standbys:
        pod = database.pod_name(wanted)
        raise FailoverError(f"instance {wanted} ({pod}) does not answer as a standby")
    target = standbys[wanted]
    if best.received > target.received:
        raise FailoverError(
            f"{database.pod_name(best.index)} received more WAL than {database.pod_name(wanted)}: "
            f"promote it instead (--to {best.index}), or wait and run the failover again"
        )
    return target


def promoted_already(cluster: Cluster, stack: Stack) -> int | None:
    """The instance an earlier run promoted before it stopped, if any (a second promotion would
    make a second primary)."""
    for index in range(stack.replicas):
        if index == stack.primary:
            continue
        try:
            if cluster.sql(index, "SELECT pg_is_in_recovery()") == "f":
                return index
        except FailoverError:
            continue
    return None


def wait_for_replay(cluster: Cluster, target: Standby) -> None:
    deadline = time.monotonic() + REPLAY_SECONDS
    while True:
        now = cluster.standby(target.index)
        if now is not None and now.replayed >= now.received >= target.received:
            return
        if time.monotonic() > deadline:
            raise FailoverError(
                f"{database.pod_name(target.index)} did not replay the WAL it received in "
                f"{REPLAY_SECONDS} s"
            )
        time.sleep(0.5)


def failover(stack: Stack, wanted: int | None, cluster: Cluster) -> int:
    if wanted is not None and not (0 <= wanted < stack.replicas):
        raise FailoverError(f"--to {wanted}: the stack's instances are 0 to {stack.replicas - 1}")
    if wanted == stack.primary:
        raise FailoverError(f"instance {wanted} is the primary already")
    if stack.replicas < 2:
        raise FailoverError("the stack has one database instance: there is no standby to promote")
    if wanted is not None and cluster.standby(wanted) is None and cluster.running(stack.primary):
        # Checked before the primary stops: a target that is not a standby now cannot become one.
        pod = database.pod_name(wanted)
        raise FailoverError(f"instance {wanted} ({pod}) does not answer as a standby")
    stop_primary(cluster, stack.primary)
    promoted = promoted_already(cluster, stack)
    if promoted is not None:
        say(f"{database.pod_name(promoted)} was promoted by an earlier run")
        return promoted
    target = choose_target(cluster, stack, wanted)
    wait_for_replay(cluster, target)
    name = database.pod_name(target.index)
    say(f"promoting {name} (replayed up to {target.received:#x})")
    if cluster.sql(target.index, "SELECT pg_promote(true, 60)") != "t":
        raise FailoverError(f"{name} did not finish its promotion within 60 s")
    if cluster.sql(target.index, "SELECT pg_is_in_recovery()") != "f":
        raise FailoverError(f"{name} still runs as a standby after its promotion")
    return target.index


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--stack", required=True)
    parser.add_argument("--to", type=int, help="the standby to promote (default: the most WAL)")
    parser.add_argument("--yes", action="store_true", help="do not ask before stopping the primary")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mlstack-failover-") as tmp:
        try:
            stack = read_stack(args.stack, Path(tmp))
            say(
                f"stack {stack.name}: {stack.replicas} instances in {stack.namespace}, "
                f"primary {database.pod_name(stack.primary)}"
            )
            if not args.yes and input("stop the primary and promote a standby? [y/N] ") != "y":
                say("nothing done")
                return 1
            promoted = failover(stack, args.to, Cluster(stack))
            say(f"setting mlstack:database.primary to {promoted} and running pulumi up")
            pulumi(
                "config", "set", "--path", "mlstack:database.primary", str(promoted),
                "--type", "int", stack=stack.name,
            )  # fmt: skip
            pulumi("up", "--yes", "--skip-preview", stack=stack.name, capture=False, timeout=1800)
        except FailoverError as error:
            print(f"failover: error: {error}", file=sys.stderr)
            return 1
    say(f"{database.pod_name(promoted)} is the primary; the other instances follow it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
