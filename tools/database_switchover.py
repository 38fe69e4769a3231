"""`make switchover`: hand the primary role of a stack's PostgreSQL to another of its instances,
by Patroni's own switchover.

1. Read the stack: its namespace and cluster (tools/stack.py).
2. Read the instances, the pods of the StatefulSet `database`, and the primary: the pod Patroni
   labels `mlstack/database-role=primary`. `--to` (`1` or `database-1`) must be another one.
3. In the primary's `postgres` container, run
   `patronictl switchover --leader <primary> [--candidate <instance>] --force database`.
   Patroni hands over only to a replica that is in sync; with no candidate it picks one of the
   synchronous standbys. A switchover Patroni took but did not see end within its API's poll
   (`Switchover status unknown`: a primary slow to shut down) goes on: it is waited for too.
4. Wait until the new primary's pod carries role=primary, the old one role=replica, and the
   Service `database` has the new primary as its only endpoint. Print old → new and the time.

    python -m tools.database_switchover --stack prod [--to 1] [--timeout 120]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from components import database
from components.database import pod_name
from components.stack_file import project_name
from harness.poll import wait_until
from tools.stack import Kubectl, Stack, StackError, read_stack

# The instances' StatefulSet, and the Service that selects the pod labelled primary.
STATEFULSET: Final = database.NAME
SERVICE: Final = database.NAME
CONTAINER: Final = database.POSTGRES_CONTAINER
# How long the role labels and the Service may take to follow once patronictl returned, and
# patronictl itself (Patroni ends a switchover it cannot finish well before).
WAIT_SECONDS: Final = 120
PATRONICTL_SECONDS: Final = 120
POLL_SECONDS: Final = 0.5
# What patronictl prints, exiting 0, when Patroni's API turns the switchover down; and, among
# those, what it prints when the API wrote the switchover into Patroni's state but stopped
# polling for its end (20 s) before it came: the switchover goes on, and is not refused.
REFUSED: Final = re.compile(r"^Switchover failed, details: .*$", re.MULTILINE)
PENDING: Final = "Switchover failed, details: 503, Switchover status unknown"


class SwitchoverError(StackError):
    """Why the switchover did not happen (or did not finish), and what to look at."""


def instance(text: str) -> int:
    """`--to`: an instance's number (`1`) or its pod's name (`database-1`)."""
    match = re.fullmatch(rf"(?:{re.escape(STATEFULSET)}-)?(\d+)", text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is no instance: give its number (1) or its pod's name ({pod_name(1)})"
        )
    return int(match.group(1))


def patronictl_switchover(leader: str, candidate: str | None) -> list[str]:
    """Patroni's switchover, run in a database container (PATRONICTL_CONFIG_FILE is set there)."""
    chosen = ["--candidate", candidate] if candidate is not None else []
    return ["patronictl", "switchover", "--leader", leader, *chosen, "--force", database.SCOPE]


@dataclass(frozen=True)
class Snapshot:
    """The database's pods with their role labels, and the endpoints of the Service `database`
    (by pod name, ready or not), as the cluster shows them at one moment."""

    roles: dict[str, str]
    endpoints: dict[str, bool]
    # How many times each pod's database container has restarted.
    restarts: dict[str, int] = field(default_factory=dict)

    @property
    def primaries(self) -> list[str]:
        return sorted(name for name, role in self.roles.items() if role == database.PRIMARY)

    def switched(self, old: str, new: str | None) -> str | None:
        """The new primary once the switchover shows everywhere: one pod labelled primary that
        is not `old` (and is `new`, when given), `old` labelled replica, and the Service sending
        to the new primary only, ready."""
        if len(self.primaries) != 1:
            return None
        [found] = self.primaries
        if found == old or (new is not None and found != new):
            return None
        if self.roles.get(old) != database.REPLICA or self.endpoints != {found: True}:
            return None
        return found

    def describe(self) -> str:
        roles = ", ".join(f"{name} {role or 'unlabelled'}" for name, role in self.roles.items())
        targets = ", ".join(
            f"{name}{'' if ready else ' (not ready)'}" for name, ready in self.endpoints.items()
        )
        return f"{roles}; Service {SERVICE} -> {targets or 'no endpoint'}"


def _pod_order(name: str) -> tuple[int, str]:
    ordinal = name.rsplit("-", 1)[-1]
    return (int(ordinal) if ordinal.isdigit() else sys.maxsize, name)


class Instances:
    """The stack's database instances, through kubectl."""

    def __init__(self, kubectl: Kubectl) -> None:
        self.kubectl = kubectl
        statefulset = kubectl.get_json("statefulset", STATEFULSET)
        if not statefulset:
            namespace = kubectl.stack.namespace
            raise SwitchoverError(f"there is no StatefulSet {STATEFULSET} in {namespace}")
        self.count = int(statefulset["spec"].get("replicas", 1))
        pod = (statefulset["spec"].get("template") or {}).get("spec") or {}
        # The containers of each instance's pod, by name.
        self.containers = frozenset(c["name"] for c in pod.get("containers") or [])
        labels = statefulset["spec"]["selector"]["matchLabels"]
        self.selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))

    def snapshot(self) -> Snapshot:
        pods = self.kubectl.get_json("pods", "--selector", self.selector).get("items") or []
        roles: dict[str, str] = {}
        restarts: dict[str, int] = {}
        by_address: dict[str, str] = {}
        for pod in sorted(pods, key=lambda p: _pod_order(p["metadata"]["name"])):
            name = pod["metadata"]["name"]
            roles[name] = (pod["metadata"].get("labels") or {}).get(database.ROLE_LABEL, "")
            status = pod.get("status") or {}
            for container in status.get("containerStatuses") or []:
                if container.get("name") == CONTAINER:
                    restarts[name] = int(container.get("restartCount") or 0)
            address = status.get("podIP")
            if address:
                by_address[address] = name
        slices = self.kubectl.get_json(
            "endpointslices", "--selector", f"kubernetes.io/service-name={SERVICE}"
        )
        endpoints: dict[str, bool] = {}
        for item in slices.get("items") or []:
            for endpoint in item.get("endpoints") or []:
                ready = bool((endpoint.get("conditions") or {}).get("ready"))
                target = endpoint.get("targetRef") or {}
                for address in endpoint.get("addresses") or []:
                    name = target.get("name") or by_address.get(address, address)
                    endpoints[name] = endpoints.get(name, False) or ready
        return Snapshot(roles, endpoints, restarts)


def candidate(instances: Instances, primary: str, wanted: int | None) -> str | None:
    """The pod `--to` names, checked against the instances there are."""
    if wanted is None:
        return None
    if wanted >= instances.count:
        last = pod_name(instances.count - 1)
        raise SwitchoverError(
            f"--to {wanted}: there is no {pod_name(wanted)}; the instances are "
            f"{pod_name(0)} to {last}"
        )
    if pod_name(wanted) == primary:
        raise SwitchoverError(f"--to {wanted}: {primary} is the primary already")
    return pod_name(wanted)


def current_primary(snapshot: Snapshot, kubectl: Kubectl, purpose: str) -> str:
    """The one pod labelled primary; `purpose` (what the caller needs it for) ends the error."""
    primaries = snapshot.primaries
    if len(primaries) == 1:
        return primaries[0]
    found = f"{len(primaries)} pods ({', '.join(primaries)})" if primaries else "no pod"
    label = f"{database.ROLE_LABEL}={database.PRIMARY}"
    raise SwitchoverError(
        f"{STATEFULSET} has {found} labelled {label}: there is no one primary {purpose}; see "
        f"`{patronictl_list(kubectl)}`"
    )


def patronictl_list(kubectl: Kubectl) -> str:
    """The command that shows Patroni's view, for the messages."""
    return kubectl.shown("exec", pod_name(0), "--container", CONTAINER, "--", "patronictl", "list")


def run_patronictl(kubectl: Kubectl, primary: str, target: str | None) -> str | None:
    """Patroni's switchover; a SwitchoverError when patronictl (or kubectl exec) refuses. Returns
    what Patroni said when it took the switchover without seeing it end (PENDING), else None."""
    argv = patronictl_switchover(primary, target)
    result = kubectl.exec(primary, CONTAINER, *argv, timeout=PATRONICTL_SECONDS)
    output = f"{result.stdout}\n{result.stderr}"
    refused = REFUSED.search(output)
    if result.returncode == 0 and refused is None:
        return None
    if result.returncode == 0 and refused is not None and refused.group(0).strip() == PENDING:
        return PENDING
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    detail = refused.group(0) if refused else (errors or lines or ["(no output)"])[-1]
    if "sync_standby" in detail and target is None:
        # Synchronous mode, and no standby has every acknowledged commit: none may take over.
        detail += (
            "; no standby is synchronous now (one that is catching up, or none running): run it "
            f"again once `{argv[0]} list` shows a Sync Standby"
        )
    elif "sync_standby" in detail:
        # Synchronous mode: only a standby that has every acknowledged commit may take over.
        detail += (
            f"; Patroni hands over only to the synchronous standby (Sync Standby in `{argv[0]} "
            "list`): give that instance, or none"
        )
    raise SwitchoverError(f"patronictl switchover in {primary} refused: {detail}")


def switchover(stack: Stack, wanted: int | None, timeout: float) -> tuple[str, str, float]:
    """Run the switchover; returns the old primary, the new one and the seconds it took."""
    kubectl = Kubectl(stack)
    instances = Instances(kubectl)
    if instances.count < 2:
        count = "one database instance" if instances.count == 1 else "no database instance"
        raise SwitchoverError(
            f"stack {stack.name} has {count}: there is no replica to hand the primary role to "
            f"(raise {project_name()}:database.replicas and run `make up` first)"
        )
    before = instances.snapshot()
    old = current_primary(before, kubectl, "to hand over from")
    target = candidate(instances, old, wanted)
    start = time.monotonic()
    pending = run_patronictl(kubectl, old, target)
    last, new = before, None

    def switched() -> bool:
        nonlocal last, new
        last = instances.snapshot()
        new = last.switched(old, target)
        return new is not None

    expected = target or "a replica"
    try:
        wait_until(switched, f"{expected} as the primary", timeout, interval=POLL_SECONDS)
    except RuntimeError as error:
        taken = (
            f"Patroni took the switchover from {old} to {expected} ({pending})"
            if pending
            else f"patronictl accepted the switchover from {old} to {expected}"
        )
        raise SwitchoverError(
            f"{taken}, but {timeout:g} s later the pods and the Service show "
            f"{last.describe()}; see `{patronictl_list(kubectl)}`"
        ) from error
    assert new is not None  # wait_until returned: switched() found it
    return old, new, time.monotonic() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.database_switchover",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--stack", required=True)
    parser.add_argument(
        "--to",
        type=instance,
        metavar="INSTANCE",
        help=f"the instance to hand over to, 1 or {pod_name(1)} (default: Patroni picks one)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=WAIT_SECONDS,
        metavar="SECONDS",
        help=f"how long the labels and the Service may take to follow (default {WAIT_SECONDS})",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mlstack-switchover-") as tmp:
        try:
            stack = read_stack(args.stack, Path(tmp))
            old, new, seconds = switchover(stack, args.to, args.timeout)
        except StackError as error:
            print(f"switchover: error: {error}", file=sys.stderr)
            return 1
    print(f"switchover: {old} → {new} in {seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
