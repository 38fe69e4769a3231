"""The Kubernetes recommended labels every object of a stack carries."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import pulumi
    import pulumi_kubernetes as k8s

NAME_LABEL: Final = "app.kubernetes.io/name"
INSTANCE_LABEL: Final = "app.kubernetes.io/instance"
PART_OF_LABEL: Final = "app.kubernetes.io/part-of"
PART_OF: Final = "mlstack"
MANAGED_BY: Final = "pulumi"
# Objects shared by the whole application (namespace, default-deny policy) are named after it.
APP: Final = "mlstack"


def labels(name: str, stack: str) -> dict[str, str]:
    """All four recommended labels for the part `name` of the stack `stack`."""
    return {
        NAME_LABEL: name,
        PART_OF_LABEL: PART_OF,
        INSTANCE_LABEL: stack,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def metadata(
    name: str, namespace: pulumi.Input[str], part: str, stack: str
) -> k8s.meta.v1.ObjectMetaArgsDict:
    """The metadata of the object `name` in `namespace`: the labels of the part `part` of the
    stack `stack`."""
    return {"name": name, "namespace": namespace, "labels": labels(part, stack)}


def selector(name: str, stack: str) -> dict[str, str]:
    """The immutable subset that Deployments, StatefulSets, Services and policies select on."""
    return {NAME_LABEL: name, INSTANCE_LABEL: stack}
