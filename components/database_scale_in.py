"""The API server's refusal to take more than one database instance away at once.

The instances one update removes stop together. Were they the primary and its synchronous
standby, the instance left would be an asynchronous standby, which may lack acknowledged writes
and which Patroni therefore never promotes: writes would stop, and the claims that `pulumi up`
deletes with the instances would hold the only copies of the newest rows. So a
ValidatingAdmissionPolicy refuses any update of the stack's StatefulSet that lowers its replicas
by two or more: a `pulumi up`'s, and its preview's (the Kubernetes provider's dry run passes
through admission), or a `kubectl scale`'s. One at a time always keeps the primary or its
synchronous standby, which Patroni promotes (README, "High availability").

Scaling to 0 passes: every instance stops and none is left to be promoted, the way `make restore`
stops them, and no claim is deleted (database.replicas is at least 1).
"""

from __future__ import annotations

from typing import Final

import pulumi
import pulumi_kubernetes as k8s

from components.labels import labels

# The StatefulSet's replicas, as the StatefulSet and its scale subresource give them: an
# autoscaling/v1 Scale leaves out a count of 0.
ALLOWED: Final = (
    "!has(object.spec.replicas) || object.spec.replicas == 0"
    " || !has(oldObject.spec.replicas) || object.spec.replicas >= oldObject.spec.replicas - 1"
)
MESSAGE: Final = (
    "string(oldObject.spec.replicas) + ' database instances lowered to '"
    " + string(object.spec.replicas) + ' at once: the instances removed together may be the"
    " primary and its synchronous standby. Lower database.replicas by one per pulumi up"
    " (mlstack README, High availability)'"
)


def scale_in_policy(
    name: str,
    namespace: pulumi.Input[str],
    stack: str,
    statefulset: str,
    opts: pulumi.ResourceOptions,
) -> k8s.admissionregistration.v1.ValidatingAdmissionPolicyBinding:
    """The policy on the StatefulSet `statefulset` in `namespace`, and its binding, which denies
    what the policy refuses. Both are cluster-wide objects, named after the namespace."""
    object_name = pulumi.Output.concat(namespace, "-", statefulset, "-scale-in")
    metadata: k8s.meta.v1.ObjectMetaArgsDict = {
        "name": object_name,
        "labels": labels(statefulset, stack),
    }
    policy = k8s.admissionregistration.v1.ValidatingAdmissionPolicy(
        name,
        metadata=metadata,
        spec={
            "failure_policy": "Fail",
            "match_constraints": {
                "namespace_selector": {
                    "match_labels": {"kubernetes.io/metadata.name": namespace},
                },
                "resource_rules": [
                    {
                        "api_groups": ["apps"],
                        "api_versions": ["v1"],
                        "operations": ["UPDATE"],
                        "resources": ["statefulsets", "statefulsets/scale"],
                        "resource_names": [statefulset],
                    }
                ],
            },
            "validations": [{"expression": ALLOWED, "message_expression": MESSAGE}],
        },
        opts=opts,
    )
    return k8s.admissionregistration.v1.ValidatingAdmissionPolicyBinding(
        name,
        metadata=metadata,
        spec={"policy_name": policy.metadata.name, "validation_actions": ["Deny"]},
        opts=opts,
    )
