"""Rules on every workload's pod template: restricted Pod Security, sizing, probes, digests."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

from pulumi_policy import ReportViolation, ResourceValidationArgs
from pulumi_policy.proxy import UnknownValueError

from .kube import (
    LONG_RUNNING,
    app_name,
    containers,
    dig,
    is_patch,
    pod_spec,
    running_containers,
    where,
)

# `name@sha256:<64 hex>`: the image a digest names cannot change under the same reference.
DIGEST: Final = re.compile(r"@sha256:[0-9a-f]{64}$")
RESOURCES: Final = ("cpu", "memory")
# References accepted by tag unless a stack's pack config declares some (`allowedImages`): none.
# Every image of the stack, the database's included, is the project's own build, deployed by the
# digest its push gave. `make policy` leaves digests to this rule (tools/policy.py PACK_OWNED).
ALLOWED_BY_TAG: Final[tuple[str, ...]] = ()
# The stack config key (`mlstack:images.<key>`) whose reference each of the program's workloads
# runs, by the workload's app label or else its name (a patch need not carry labels): the gateway's
# image runs its migrations Job too, the database's its backups container. The pack is served
# apart from the program; tests/unit/test_policy_pack.py holds this copy to the program's.
IMAGE_KEYS: Final[Mapping[str, str]] = {
    "gateway": "gateway",
    "gateway-migrate": "gateway",
    "model": "model",
    "database": "database",
}
# The seccomp profiles the restricted standard admits.
SECCOMP_PROFILES: Final = ("RuntimeDefault", "Localhost")
NOT_NON_ROOT: Final = "runAsNonRoot is not true"
NOT_SECCOMP: Final = "seccompProfile.type is not RuntimeDefault"


def _effective(
    pod: Mapping[str, Any], container: Mapping[str, Any], *path: str
) -> Any:  # the container's own setting wins over the pod's, as the kubelet reads them
    own = dig(container, "securityContext", *path)
    return own if own is not None else dig(pod, "securityContext", *path)


def _is_root(uid: Any) -> bool:  # the engine hands numbers over as floats
    return isinstance(uid, int | float) and not isinstance(uid, bool) and uid == 0


def _refused(value: Any, *, meets: bool, patch: bool) -> bool:
    """Whether a field's `value`, which `meets` the standard or not, is a finding: a field a patch
    leaves out (None) is the object's own, not the patch's to answer for."""
    return not meets and not (patch and value is None)


def _pod_findings(spec: Mapping[str, Any]) -> list[str]:
    """What the pod spec itself sets against the standard: a host namespace, uid 0, runAsNonRoot
    false, a seccomp profile it refuses. Admission refuses the last two on the pod even where
    every container sets its own; in a patch they reach the containers it leaves out, so they are
    held once, here."""
    found = [
        f"{field} is true (the pod shares the node's namespace)"
        for field in ("hostNetwork", "hostPID", "hostIPC")
        if spec.get(field)
    ]
    if _is_root(dig(spec, "securityContext", "runAsUser")):
        found.append("runAsUser is 0 (root)")
    if dig(spec, "securityContext", "runAsNonRoot") is False:
        found.append(NOT_NON_ROOT)
    if dig(spec, "securityContext", "seccompProfile", "type") not in (None, *SECCOMP_PROFILES):
        found.append(NOT_SECCOMP)
    return found


def _container_findings(
    spec: Mapping[str, Any], container: Mapping[str, Any], *, patch: bool
) -> Iterator[str]:
    """What a container runs with against the standard. An object's container takes the pod's
    non-root and seccomp settings where it sets none; a patch's is held to its own (the pod's are
    held on the pod). Yielded as read, so that what precedes a value unknown at preview is still
    reported."""

    def runs_with(*path: str) -> Any:
        own = dig(container, "securityContext", *path)
        return own if patch else _effective(spec, container, *path)

    non_root = runs_with("runAsNonRoot")
    if _refused(non_root, meets=non_root is True, patch=patch):
        yield NOT_NON_ROOT
    context = container.get("securityContext") or {}
    if _is_root(dig(context, "runAsUser")):
        yield "runAsUser is 0 (root)"
    if dig(context, "privileged") is True:
        yield "runs privileged"
    escalation = dig(context, "allowPrivilegeEscalation")
    if _refused(escalation, meets=escalation is False, patch=patch):
        yield "allowPrivilegeEscalation is not false"
    read_only = dig(context, "readOnlyRootFilesystem")
    if _refused(read_only, meets=read_only is True, patch=patch):
        yield "readOnlyRootFilesystem is not true"
    # A patch that sets `drop` replaces the whole list (atomic under server-side apply).
    drop = dig(context, "capabilities", "drop")
    if _refused(drop, meets="ALL" in list(drop or ()), patch=patch):
        yield "capabilities.drop does not hold ALL"
    added = list(dig(context, "capabilities", "add") or ())
    if any(c != "NET_BIND_SERVICE" for c in added):
        yield f"adds capabilities {added}"
    seccomp = runs_with("seccompProfile", "type")
    if _refused(seccomp, meets=seccomp in SECCOMP_PROFILES, patch=patch):
        yield NOT_SECCOMP


def check_pod_security(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Every workload's pods meet the restricted Pod Security Standard: non-root (runAsNonRoot, and
    no runAsUser 0), a read-only root filesystem, no privilege escalation, every capability
    dropped, the RuntimeDefault seccomp profile; and no pod-level runAsNonRoot false or other
    seccomp profile, which admission refuses whatever the containers set. Checked field by field,
    so that a preview names the one missing before the namespace's admission refuses the pods (or
    a laxer namespace admits them). A workload Patch is held to the values it sets."""
    spec = pod_spec(args.resource_type, args.props)
    if spec is None:
        return
    patch = is_patch(args.props)
    for finding in _pod_findings(spec):
        report(f"{where(args.resource_type, args.props, None)}: {finding}", None)
    for container in containers(spec):
        place = where(args.resource_type, args.props, container)
        for finding in _container_findings(spec, container, patch=patch):
            report(f"{place}: {finding}", None)


def check_resources(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Every container has CPU and memory requests (what the scheduler places pods by) and limits
    (what keeps one pod from starving its neighbours). A Patch is not asked: what it leaves out,
    the object keeps."""
    spec = pod_spec(args.resource_type, args.props)
    if spec is None or is_patch(args.props):
        return
    for container in containers(spec):
        missing = [
            f"{kind}.{resource}"
            for kind in ("requests", "limits")
            for resource in RESOURCES
            if dig(container, "resources", kind, resource) in (None, "")
        ]
        if missing:
            place = where(args.resource_type, args.props, container)
            report(f"{place}: no {', '.join(missing)}", None)


def check_probes(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Every long-running container (a sidecar too: an init container with restartPolicy Always)
    has a liveness probe (a hung process is restarted) and a readiness probe (traffic goes only
    to a pod that can take it). A Patch is not asked: what it leaves out, the object keeps."""
    if args.resource_type not in LONG_RUNNING or is_patch(args.props):
        return
    spec = pod_spec(args.resource_type, args.props)
    if spec is None:
        return
    for container in running_containers(spec):
        missing = [p for p in ("livenessProbe", "readinessProbe") if not container.get(p)]
        if missing:
            place = where(args.resource_type, args.props, container)
            report(f"{place}: no {' and no '.join(missing)}", None)


def _stack_and_project(urn: str) -> tuple[str, str]:
    """The stack and the project of a resource's URN (`urn:pulumi:<stack>::<project>::...`): the
    project is the config namespace (`mlstack`, or a renamed copy's)."""
    parts = urn.split("::")
    if not parts[0].startswith("urn:pulumi:") or len(parts) < 2:
        return "<stack>", "mlstack"
    return parts[0].rsplit(":", 1)[-1], parts[1]


def _pin_advice(args: ResourceValidationArgs) -> str:
    """What to change for an image by tag: the stack config key that gave it, if the workload is
    the program's, and the pack config that may declare an exception."""
    stack, project = _stack_and_project(args.urn)
    key = IMAGE_KEYS.get(app_name(args.props) or str(dig(args.props, "metadata", "name")))
    pin = f"set {project}:images.{key} to tag@sha256:digest" if key else "reference it by digest"
    return f"{pin}, or declare it in allowedImages (policy/pack/config/{stack}.json)"


def check_image_digest(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """In production every image is referenced by digest (name@sha256:...), unless the reference
    is a declared exception (allowedImages; none by default): what was reviewed and scanned is
    what runs, and a rollback really rolls back. Other stacks may deploy prebuilt images by tag
    (images.*). An image unknown at preview (built by the update) is checked at `pulumi up`; the
    images beside it are checked at once. A Patch's container is held to the image it sets, if
    any."""
    config = args.get_config()
    spec = pod_spec(args.resource_type, args.props)
    if spec is None or config.get("production") is not True:
        return
    allowed = config.get("allowedImages")
    allowed = ALLOWED_BY_TAG if allowed is None else tuple(allowed)
    unknown: UnknownValueError | None = None
    for container in containers(spec):
        try:
            image = str(container.get("image") or "")
        except UnknownValueError as error:  # a built image at preview: its push gives the digest
            unknown = unknown or error
            continue
        if not image and is_patch(args.props):
            continue  # the patch leaves the container's image as it is
        if DIGEST.search(image) or image in allowed:
            continue
        place = where(args.resource_type, args.props, container)
        report(
            f"{place}: image {image!r} is not pinned by digest (name@sha256:...): "
            f"{_pin_advice(args)}",
            None,
        )
    if unknown is not None:
        raise unknown  # the engine reports that the rule could not read it during preview
