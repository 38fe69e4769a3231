"""When `pulumi up` may call a Deployment or a StatefulSet done: every pod runs the new template
and is available, and no pod of an older one is left.

The provider's own await logic for both kinds (pulumi-kubernetes 4.25) can accept status that
the controller wrote for the previous generation: its informer may first deliver the object as it
was before the update, and the next event, the update itself, still carries the old "rollout
complete" conditions and replica counts. `pulumi up` then returns in a second while the rollout
has only begun, and a pipeline that promotes to prod on staging's success would promote an
unverified version.

The `pulumi.com/waitFor` annotation replaces that logic. The provider evaluates each expression
only on the object at the generation it applied, and only once `.status.observedGeneration` has
caught up with it. The expressions compare status with `.spec.replicas` of the same object, so
the annotation never changes with the replica count: a change of `replicas` still shows in a
preview as a change of `spec.replicas` alone.
"""

from __future__ import annotations

import json
from typing import Final

WAIT_FOR: Final = "pulumi.com/waitFor"
# Set to "true" on a workload, the stack's config wins every field the program sets even when
# another field manager took it (an out-of-band `kubectl scale`): `pulumi up` takes the field back
# instead of failing on the Server-Side Apply conflict.
PATCH_FORCE: Final = "pulumi.com/patchForce"

# Every expression selects something (the object's fields) when its filter holds, and nothing
# otherwise: RFC 9535 JSONPath, as the annotation takes it.
EVERY_POD_UPDATED: Final = "jsonpath={$[?$.status.updatedReplicas == $.spec.replicas]}"
NO_OLDER_POD_LEFT: Final = "jsonpath={$[?$.status.replicas == $.spec.replicas]}"
EVERY_POD_AVAILABLE: Final = "jsonpath={$[?$.status.availableReplicas == $.spec.replicas]}"
# A StatefulSet's pods are counted by revision; the controller makes the update revision the
# current one once every pod runs it and is Ready.
REVISION_CURRENT: Final = "jsonpath={$[?$.status.currentRevision == $.status.updateRevision]}"

DEPLOYMENT_DONE: Final = (EVERY_POD_UPDATED, NO_OLDER_POD_LEFT, EVERY_POD_AVAILABLE)
STATEFUL_SET_DONE: Final = (*DEPLOYMENT_DONE, REVISION_CURRENT)


def await_deployment() -> dict[str, str]:
    """Metadata annotations that make `pulumi up` wait for a Deployment's rollout."""
    return {WAIT_FOR: json.dumps(list(DEPLOYMENT_DONE))}


def await_stateful_set() -> dict[str, str]:
    """Metadata annotations that make `pulumi up` wait for a StatefulSet's rollout."""
    return {WAIT_FOR: json.dumps(list(STATEFUL_SET_DONE))}
