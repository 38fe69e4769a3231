"""The database's pods as a program run under the mocks registered them, read alike by the unit
tests of the database and its backups: the StatefulSet, what it selects its pods by, its pod's
spec, containers and volumes, pgBackRest's options in a container; and the NetworkPolicies that
open the ways to and from them."""

from __future__ import annotations

from typing import Any

from components import database
from harness.program import ProgramRun, Registered
from tests.manifests import containers, env, pod_spec, volumes


def stateful_set(run: ProgramRun) -> Registered:
    return run.one("StatefulSet", database.NAME)


def match(run: ProgramRun) -> dict[str, str]:
    """What the StatefulSet selects its pods by."""
    return dict(stateful_set(run).inputs["spec"]["selector"]["matchLabels"])


def database_pod(run: ProgramRun) -> dict[str, Any]:
    """The spec of the database pods' template."""
    return pod_spec(stateful_set(run).inputs)


def database_containers(run: ProgramRun) -> dict[str, dict[str, Any]]:
    """The database pods' containers by name: `postgres`, and with backups `backups`."""
    return containers(stateful_set(run).inputs)


def database_volumes(run: ProgramRun) -> dict[str, dict[str, Any]]:
    return volumes(stateful_set(run).inputs)


def pgbackrest_env(container: dict[str, Any]) -> dict[str, Any]:
    """pgBackRest's options in the container's environment."""
    return {k: v for k, v in env(container).items() if k.startswith("PGBACKREST_")}


def policies(run: ProgramRun) -> dict[str, dict[str, Any]]:
    """The stack's NetworkPolicies' specs by name."""
    return {p.metadata["name"]: p.inputs["spec"] for p in run.of_kind("NetworkPolicy")}
