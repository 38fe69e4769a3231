"""Reading Kubernetes objects as the engine hands them to a policy: their inputs, in the API's own
(camelCase) field names."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any, Final

from pulumi_policy import ReportViolation, ResourceValidation, ResourceValidationArgs
from pulumi_policy.proxy import UnknownValueError

# Where a workload of most kinds holds its pods' spec.
POD_TEMPLATE: Final = ("spec", "template", "spec")
# The workload kinds whose pod template a policy reads, by Pulumi type token: every kind that
# makes pods (as Checkov's container checks, which tools/policy.py PACK_OWNED leaves to the pack).
POD_TEMPLATE_PATHS: Final[Mapping[str, tuple[str, ...]]] = {
    "kubernetes:apps/v1:Deployment": POD_TEMPLATE,
    "kubernetes:apps/v1:StatefulSet": POD_TEMPLATE,
    "kubernetes:apps/v1:DaemonSet": POD_TEMPLATE,
    "kubernetes:apps/v1:ReplicaSet": POD_TEMPLATE,
    "kubernetes:core/v1:ReplicationController": POD_TEMPLATE,
    "kubernetes:batch/v1:Job": POD_TEMPLATE,
    "kubernetes:batch/v1:CronJob": ("spec", "jobTemplate", *POD_TEMPLATE),
    "kubernetes:core/v1:Pod": ("spec",),
}
# Workloads that keep pods running: they need probes (a Job's pod ends by itself).
LONG_RUNNING: Final = frozenset(
    {
        "kubernetes:apps/v1:Deployment",
        "kubernetes:apps/v1:StatefulSet",
        "kubernetes:apps/v1:DaemonSet",
        "kubernetes:apps/v1:ReplicaSet",
        "kubernetes:core/v1:ReplicationController",
        "kubernetes:core/v1:Pod",
    }
)
SERVICE: Final = "kubernetes:core/v1:Service"
DEPLOYMENT: Final = "kubernetes:apps/v1:Deployment"
STATEFUL_SET: Final = "kubernetes:apps/v1:StatefulSet"
# Workloads whose `spec.replicas` pods are alike: what the availability rules read.
REPLICATED: Final = frozenset({DEPLOYMENT, STATEFUL_SET})
PDB: Final = "kubernetes:policy/v1:PodDisruptionBudget"
NAME_LABEL: Final = "app.kubernetes.io/name"
# A typed List (`kubernetes:apps/v1:DeploymentList`) makes each of its `items`, objects of the
# kind its name ends in.
LIST_SUFFIX: Final = "List"
# A Patch resource (`kubernetes:apps/v1:DeploymentPatch`) sets some fields of an existing object
# of the kind its name ends before, by server-side apply.
PATCH_SUFFIX: Final = "Patch"
# Service types that give an address outside the cluster.
EXTERNAL_SERVICE_TYPES: Final = frozenset({"LoadBalancer", "NodePort"})


def dig(value: Any, *path: str) -> Any:
    """`value[path[0]][path[1]]...`, or None where a level is missing."""
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


class Patch(Mapping[str, Any]):
    """A Patch resource's props: part of an object, the fields the patch sets, read like the
    object's own. A rule holds a patch to what it sets, never to what it leaves out (the object
    keeps whatever the patch does not set)."""

    def __init__(self, props: Mapping[str, Any]) -> None:
        self._props = props

    def __getitem__(self, key: str) -> Any:
        return self._props[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._props)

    def __len__(self) -> int:
        return len(self._props)


def is_patch(props: Mapping[str, Any]) -> bool:
    """Whether `props` are a Patch resource's (objects): only what they set is there to check."""
    return isinstance(props, Patch)


def objects(
    resource_type: str, props: Mapping[str, Any]
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """The Kubernetes objects a resource makes or changes, each with its kind's type token: the
    resource itself, each item of a typed List, or the part of an object a Patch sets (its props
    as a Patch)."""
    if resource_type.startswith("kubernetes:") and resource_type.endswith(LIST_SUFFIX):
        kind = resource_type.removesuffix(LIST_SUFFIX)
        for item in props.get("items") or ():
            if isinstance(item, Mapping):
                yield kind, item
        return
    if resource_type.startswith("kubernetes:") and resource_type.endswith(PATCH_SUFFIX):
        yield resource_type.removesuffix(PATCH_SUFFIX), Patch(props)
        return
    yield resource_type, props


def each_object(check: ResourceValidation) -> ResourceValidation:
    """`check` run on every object a resource makes or changes (objects), as if each were a
    resource of its own: a DeploymentList is held to the rules of a Deployment, item by item, and
    a DeploymentPatch to them for what it sets."""

    def validate(args: ResourceValidationArgs, report: ReportViolation) -> None:
        unknown: UnknownValueError | None = None
        for resource_type, props in objects(args.resource_type, args.props):
            each = copy.copy(args)
            each.resource_type, each.props = resource_type, props
            try:
                check(each, report)
            except UnknownValueError as error:  # at preview: the other objects are still read
                unknown = unknown or error
        if unknown is not None:
            raise unknown  # the engine reports that the rule could not run during preview

    return validate


def pod_spec(resource_type: str, props: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod spec a workload's pods are made from; None for anything that is not a workload."""
    path = POD_TEMPLATE_PATHS.get(resource_type)
    if path is None:
        return None
    spec = dig(props, *path)
    return spec if isinstance(spec, Mapping) else {}


def pod_labels(resource_type: str, props: Mapping[str, Any]) -> Mapping[str, Any]:
    """The labels a workload's pods are made with (its pod template's); none for anything that is
    not a workload."""
    path = POD_TEMPLATE_PATHS.get(resource_type)
    if path is None:
        return {}
    labels = dig(props, *path[:-1], "metadata", "labels")
    return labels if isinstance(labels, Mapping) else {}


def containers(spec: Mapping[str, Any], *, init: bool = True) -> Iterator[Mapping[str, Any]]:
    """Every container of a pod spec, the init containers first (with `init`)."""
    keys = ("initContainers", "containers") if init else ("containers",)
    for key in keys:
        for container in spec.get(key) or ():
            if isinstance(container, Mapping):
                yield container


def running_containers(spec: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """The containers of a pod spec that run as long as the pod: its sidecars (init containers
    with restartPolicy Always) first, then its containers."""
    for container in spec.get("initContainers") or ():
        if isinstance(container, Mapping) and container.get("restartPolicy") == "Always":
            yield container
    yield from containers(spec, init=False)


def named(resource_type: str, props: Mapping[str, Any]) -> str:
    """`Deployment gateway`, `DeploymentPatch gateway`: the resource as a reviewer reads it."""
    kind = resource_type.rsplit(":", 1)[-1] + (PATCH_SUFFIX if is_patch(props) else "")
    return f"{kind} {dig(props, 'metadata', 'name') or '?'}"


def where(resource_type: str, props: Mapping[str, Any], container: Mapping[str, Any] | None) -> str:
    """`Deployment gateway, container gateway` (`Deployment gateway, pod` for a field of the pod
    spec, container None): where a violation is, as a reviewer reads it."""
    if container is None:
        return f"{named(resource_type, props)}, pod"
    return f"{named(resource_type, props)}, container {container.get('name') or '?'}"


def app_name(props: Mapping[str, Any]) -> str | None:
    """The object's `app.kubernetes.io/name` label (gateway, model, database), if any."""
    name = dig(props, "metadata", "labels", NAME_LABEL)
    return name if isinstance(name, str) else None


def service_type(props: Mapping[str, Any]) -> str:
    return str(dig(props, "spec", "type") or "ClusterIP")
