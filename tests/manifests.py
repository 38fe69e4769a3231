"""A workload's pod read out of its Kubernetes object, the same whether the program registered the
object (a harness.program `Registered`'s inputs) or tools.render wrote it (one YAML document):
both are the API's object, in its own camelCase field names. Each reader returns the object's
own dicts, so a test that breaks an object changes it through them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from components import database


def pod_spec(workload: Mapping[str, Any]) -> dict[str, Any]:
    """The spec of a Deployment's, a StatefulSet's or a Job's pod template."""
    found: dict[str, Any] = workload["spec"]["template"]["spec"]
    return found


def containers(workload: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The pod's containers (not its init containers) by name, in the pod's order."""
    return {c["name"]: c for c in pod_spec(workload)["containers"]}


def container(workload: Mapping[str, Any], name: str | None = None) -> dict[str, Any]:
    """The pod's one container called `name`; without a name, the workload's own: the service's,
    named after its workload, or the database's `postgres` (beside which a stack with backups
    runs the `backups` container)."""
    if name is None:
        own = workload["kind"] == "StatefulSet"
        name = database.POSTGRES_CONTAINER if own else workload["metadata"]["name"]
    named: list[dict[str, Any]] = [c for c in pod_spec(workload)["containers"] if c["name"] == name]
    (found,) = named
    return found


def env(container: Mapping[str, Any]) -> dict[str, Any]:
    """The container's variables by name: each one's value, or for one given from elsewhere (the
    downward API, a Secret's key) its `valueFrom`."""
    return {e["name"]: e["value"] if "value" in e else e["valueFrom"] for e in container["env"]}


def volumes(workload: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The pod's volumes by name."""
    return {v["name"]: v for v in pod_spec(workload)["volumes"]}


def mounts(container: Mapping[str, Any]) -> dict[str, str]:
    """Mount path -> volume name."""
    return {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
