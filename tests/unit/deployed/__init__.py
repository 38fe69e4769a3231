"""What a deployed stack holds that a `pulumi up` of a newer program must not lose, recorded per
stack file in `<stack>.json` beside this module, and the comparison of a program run under the
mocks with that record (tests/unit/test_deployed_stacks.py).

A record holds, for each resource that keeps data or an address (KUBERNETES_KINDS, KEPT_TYPES),
its URN as the engine builds it (the full chain of parents) and the inputs whose change would
make a `pulumi up` replace it or drop its address (FIELDS). A URN that goes means a delete; a
field that changes means a replace, for a Kubernetes object of a fixed name deleted first. The
Kubernetes fields are those pulumi-kubernetes v4.25 replaces an object for (its
forceNewProperties); the cloud and Docker ones are the names and places that make another
resource, as far as the mocks can show them: the cloud providers' own replace rules are not
visible here. Values that differ from run to run or machine to machine (image digests, secrets,
host paths) are left out.

Write the records again, after a change that is meant (README, "Upgrading a deployed stack"):

    .venv/bin/python -m tests.unit.deployed --write
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from components.stack_file import stacks
from harness.program import ProgramRun, Registered, run_program

HERE: Final = Path(__file__).resolve().parent
WRITE_COMMAND: Final = ".venv/bin/python -m tests.unit.deployed --write"

# What a `pulumi up` does when a field of each sort changes.
REPLACED_FIRST: Final = (
    "replace it, deleting it first (pulumi-kubernetes deletes an object of a fixed name before "
    "it makes the new one)"
)
ADDRESS_LOST: Final = (
    "change it in place, but the cloud load balancer and its address go with the old value"
)
CLOUD_REPLACED: Final = "replace it: another name, project or place is another resource"
DOCKER_REPLACED: Final = (
    "replace it: the Docker provider makes a container, volume or network anew for this"
)
DELETED: Final = (
    "delete it (and make anew, empty, whatever now stands under another URN in its place)"
)


@dataclass(frozen=True)
class Field:
    """An input whose change costs what `effect` says; `value` picks what counts of it."""

    path: str
    effect: str
    value: Callable[[Any], Any] | None = None


def _named_volumes(volumes: Any) -> Any:
    """A container's Docker volumes, without its host paths (they name the user's home)."""
    return [v for v in volumes or [] if isinstance(v, dict) and v.get("volumeName")] or None


# The Kubernetes objects that hold data or an address (a Deployment: its pods, which a
# delete-first replace takes down all at once).
KUBERNETES_KINDS: Final = (
    "Namespace",
    "StatefulSet",
    "PersistentVolumeClaim",
    "Service",
    "Secret",
    "Deployment",
)
_METADATA: Final = (
    Field("metadata.name", REPLACED_FIRST),
    Field("metadata.namespace", REPLACED_FIRST),
)
_CLOUD: Final = tuple(
    Field(path, CLOUD_REPLACED) for path in ("name", "project", "location", "region")
)
# The clusters, node pools, buckets and the keys and identities their data is reached with, the
# local cluster's containers and volumes, and the providers (a new one replaces everything it
# made).
FIELDS: Final[dict[str, tuple[Field, ...]]] = {
    "Namespace": _METADATA,
    "StatefulSet": (
        *_METADATA,
        *(
            Field(path, REPLACED_FIRST)
            for path in (
                "spec.podManagementPolicy",
                "spec.revisionHistoryLimit",
                "spec.selector",
                "spec.serviceName",
                "spec.volumeClaimTemplates",
            )
        ),
    ),
    "Deployment": (*_METADATA, Field("spec.selector", REPLACED_FIRST)),
    "PersistentVolumeClaim": (
        *_METADATA,
        *(
            Field(path, REPLACED_FIRST)
            for path in (
                "spec.accessModes",
                "spec.selector",
                "spec.storageClassName",
                "spec.volumeName",
            )
        ),
    ),
    # A Secret's data replaces it too, but the data are secrets and change by design (rotation).
    "Secret": (*_METADATA, Field("type", REPLACED_FIRST)),
    "Service": (
        *_METADATA,
        Field("spec.clusterIP", REPLACED_FIRST),
        *(
            Field(path, ADDRESS_LOST)
            for path in ("spec.type", "spec.loadBalancerClass", "spec.loadBalancerIP")
        ),
    ),
    "gcp:container/cluster:Cluster": _CLOUD,
    "gcp:container/nodePool:NodePool": _CLOUD,
    "gcp:storage/bucket:Bucket": _CLOUD,
    "gcp:serviceaccount/account:Account": (
        Field("accountId", CLOUD_REPLACED),
        Field("project", CLOUD_REPLACED),
    ),
    "aws:s3/bucket:Bucket": (
        Field("bucket", CLOUD_REPLACED),
        Field("bucketPrefix", CLOUD_REPLACED),
    ),
    "aws:kms/key:Key": (),
    "aws:iam/role:Role": (Field("name", CLOUD_REPLACED), Field("namePrefix", CLOUD_REPLACED)),
    "eks:index:Cluster": (Field("name", CLOUD_REPLACED),),
    "eks:index:ManagedNodeGroup": (Field("nodeGroupName", CLOUD_REPLACED),),
    "docker:index/container:Container": (
        Field("name", DOCKER_REPLACED),
        Field("ports", DOCKER_REPLACED),
        Field("volumes", DOCKER_REPLACED, _named_volumes),
        Field("networksAdvanced", DOCKER_REPLACED),
    ),
    "docker:index/volume:Volume": (Field("name", DOCKER_REPLACED),),
    "docker:index/network:Network": (Field("name", DOCKER_REPLACED),),
}
KEPT_TYPES: Final = frozenset(key for key in FIELDS if ":" in key)
PROVIDER_PREFIX: Final = "pulumi:providers:"


def kept(resource: Registered) -> bool:
    """Whether the record holds `resource`."""
    if resource.read:
        return False
    if resource.type.startswith("kubernetes:"):
        return resource.kind in KUBERNETES_KINDS
    return resource.type in KEPT_TYPES or resource.type.startswith(PROVIDER_PREFIX)


def fields_of(resource: Registered) -> tuple[Field, ...]:
    if resource.type.startswith("kubernetes:"):
        return FIELDS[resource.kind]
    return FIELDS.get(resource.type, ())


def value_at(inputs: dict[str, Any], field: Field) -> Any:
    """The input at `field`'s dotted path, None where it has none."""
    found: Any = inputs
    for key in field.path.split("."):
        found = found.get(key) if isinstance(found, dict) else None
    return field.value(found) if field.value is not None else found


def ignored(path: str, ignore_changes: Iterable[str]) -> bool:
    """Whether the engine leaves input `path` alone after creation (`ignore_changes`)."""
    return any(path == i or path.startswith((f"{i}.", f"{i}[")) for i in ignore_changes)


def entry(resource: Registered) -> dict[str, Any]:
    """What the record holds of `resource`: its fields' values (where it has one) but those it
    ignores, and the fields it ignores."""
    values = {
        field.path: value
        for field in fields_of(resource)
        if not ignored(field.path, resource.ignore_changes)
        and (value := value_at(resource.inputs, field)) is not None
    }
    found: dict[str, Any] = {"fields": values}
    ignoring = sorted(
        f.path for f in fields_of(resource) if ignored(f.path, resource.ignore_changes)
    )
    if ignoring:
        found["ignoreChanges"] = ignoring
    return found


def record(run: ProgramRun) -> dict[str, Any]:
    """The record of `run`: each kept resource's entry by URN."""
    return {r.urn: entry(r) for r in sorted(run.resources, key=lambda r: r.urn) if kept(r)}


def path_of(stack: str) -> Path:
    return HERE / f"{stack}.json"


def recorded_stacks() -> list[str]:
    return sorted(path.stem for path in HERE.glob("*.json"))


def load(stack: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path_of(stack).read_text())
    return loaded


def dump(found: dict[str, Any]) -> str:
    return json.dumps(found, indent=2, sort_keys=True) + "\n"


HOW_TO_PROCEED: Final = (
    "If this is meant: for a rename or a move to another parent, give the resource "
    "`aliases=[pulumi.Alias(...)]` naming what it was, so that the engine carries its state "
    "over; for any other change, write in the README what a user of a deployed stack does "
    'before `pulumi up` (as "A stack made before Patroni" does), then write the records '
    f"again: `{WRITE_COMMAND}`."
)


def _effect(resource: Registered, path: str) -> str:
    return next(f.effect for f in fields_of(resource) if f.path == path)


def differences(stack: str, recorded: dict[str, Any], run: ProgramRun) -> list[str]:
    """What a `pulumi up` of `run`'s program on a stack deployed as `recorded` would lose: one
    line per resource deleted or field changed, saying what the up would do."""
    by_urn = {r.urn: r for r in run.resources}
    former = {urn: r for r in run.resources for urn in r.former_urns}
    found: list[str] = []
    for urn, was in sorted(recorded.items()):
        resource = by_urn.get(urn) or former.get(urn)
        if resource is None:
            found.append(f"{stack}: {urn} is gone: a pulumi up would {DELETED}.")
            continue
        now = entry(resource)
        for path in was.get("ignoreChanges", []):
            if path in now["fields"]:
                found.append(
                    f"{stack}: {urn}: {path} is no longer in ignore_changes: a pulumi up would "
                    "compare it with what the object was made with and, where they differ, "
                    f"{_effect(resource, path)}."
                )
        paths = set(was["fields"]) | set(now["fields"])
        for path in sorted(paths - set(was.get("ignoreChanges", []))):
            if ignored(path, resource.ignore_changes):
                continue
            before, after = was["fields"].get(path), now["fields"].get(path)
            if before != after:
                found.append(
                    f"{stack}: {urn}: {path} was {json.dumps(before)}, is now "
                    f"{json.dumps(after)}: a pulumi up would {_effect(resource, path)}."
                )
    return found


def write() -> list[Path]:
    """Write the record of each stack file, and remove those of stack files that are gone."""
    written = []
    for stack in stacks():
        path_of(stack).write_text(dump(record(run_program(stack))))
        written.append(path_of(stack))
    for stack in set(recorded_stacks()) - set(stacks()):
        path_of(stack).unlink()
    return written
