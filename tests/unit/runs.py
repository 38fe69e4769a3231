"""What the unit tests read of a program run under the mocks beyond a workload's pod
(tests/manifests.py) and the database's (database_pods.py): the one resource of a type, a
workload's secrets digest, and what a change of the database's instance count changes between
two runs."""

from __future__ import annotations

from typing import Any

from components import pod
from harness.program import ProgramRun, Registered

# Where two inputs differ and one has no value.
ABSENT = object()


def single(run: ProgramRun, type_: str) -> Registered:
    """The one resource of type `type_` that `run` registered."""
    (found,) = run.by_type(type_)
    return found


def secrets_digest(run: ProgramRun, kind: str, name: str) -> str:
    """The secrets digest in the pod template of workload `kind` `name`, which must have one."""
    template = run.one(kind, name).inputs["spec"]["template"]
    return str(template["metadata"]["annotations"][pod.SECRETS_CHECKSUM])


def differences(before: Any, after: Any, path: str = "") -> list[str]:
    """The dotted paths at which two inputs differ."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [
            found
            for key in sorted(set(before) | set(after))
            for found in differences(
                before.get(key, ABSENT), after.get(key, ABSENT), f"{path}.{key}" if path else key
            )
        ]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [
            found
            for index, (one, other) in enumerate(zip(before, after, strict=True))
            for found in differences(one, other, f"{path}[{index}]")
        ]
    return [] if before == after else [path]


def by_name(run: ProgramRun) -> dict[str, Registered]:
    """Every resource of `run`, as `<kind> <object name>` (Kubernetes) or `<type> <name>`."""
    found = {
        f"{r.kind} {r.metadata['name']}"
        if r.type.startswith("kubernetes:") and r.metadata.get("name")
        else f"{r.type} {r.name}": r
        for r in run.resources
    }
    assert len(found) == len(run.resources)
    return found


def scaling(few: ProgramRun, many: ProgramRun) -> tuple[dict[str, list[str]], set[str], set[str]]:
    """What going from `few` to `many` instances changes: the paths that differ in each resource
    both register, and the resources only one of them registers (added, removed)."""
    before, after = by_name(few), by_name(many)
    changed = {
        key: found
        for key in sorted(before.keys() & after.keys())
        if (found := differences(before[key].inputs, after[key].inputs))
    }
    return changed, after.keys() - before.keys(), before.keys() - after.keys()
