"""Rules on every workload's pod template: restricted Pod Security, sizing, probes, digests."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from pulumi_policy import ReportViolation, ResourceValidationArgs
from pulumi_policy.proxy import UnknownValueError

from .kube import LONG_RUNNING, containers, dig, pod_spec, running_containers, where

# `name@sha256:<64 hex>`: the image a digest names cannot change under the same reference.
DIGEST: Final = re.compile(r"@sha256:[0-9a-f]{64}$")
RESOURCES: Final = ("cpu", "memory")
# References accepted by tag unless a stack's pack config declares some (`allowedImages`): none.
# Every image of the stack, the database's included, is the project's own build, deployed by the
# digest its push gave. `make policy` leaves digests to this rule (tools/policy.py PACK_OWNED).
ALLOWED_BY_TAG: Final[tuple[str, ...]] = ()


def _effective(
    pod: Mapping[str, Any], container: Mapping[str, Any], *path: str
) -> Any:  # the container's own setting wins over the pod's, as the kubelet reads them
    own = dig(container, "securityContext", *path)
    return own if own is not None else dig(pod, "securityContext", *path)


def _is_root(uid: Any) -> bool:  # the engine hands numbers over as floats
    return isinstance(uid, int | float) and not isinstance(uid, bool) and uid == 0


def _pod_findings(spec: Mapping[str, Any]) -> list[str]:
    """What the pod spec itself sets against the standard: a host namespace, uid 0."""
    found = [
        f"{field} is true (the pod shares the node's namespace)"
        for field in ("hostNetwork", "hostPID", "hostIPC")
        if spec.get(field)
    ]
    if _is_root(dig(spec, "securityContext", "runAsUser")):
        found.append("runAsUser is 0 (root)")
    return found


def check_pod_security(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Every workload's pods meet the restricted Pod Security Standard: non-root (runAsNonRoot, and
    no runAsUser 0), a read-only root filesystem, no privilege escalation, every capability
    dropped, the RuntimeDefault seccomp profile. Checked field by field, so that a preview names
    the one missing before the namespace's admission refuses the pods (or a laxer namespace
    admits them)."""
    spec = pod_spec(args.resource_type, args.props)
    if spec is None:
        return
    for finding in _pod_findings(spec):
        report(f"{where(args.resource_type, args.props, None)}: {finding}", None)
    for container in containers(spec):
        place = where(args.resource_type, args.props, container)
        if _effective(spec, container, "runAsNonRoot") is not True:
            report(f"{place}: runAsNonRoot is not true", None)
        if _is_root(dig(container, "securityContext", "runAsUser")):
            report(f"{place}: runAsUser is 0 (root)", None)
        if dig(container, "securityContext", "privileged") is True:
            report(f"{place}: runs privileged", None)
        if dig(container, "securityContext", "allowPrivilegeEscalation") is not False:
            report(f"{place}: allowPrivilegeEscalation is not false", None)
        if dig(container, "securityContext", "readOnlyRootFilesystem") is not True:
            report(f"{place}: readOnlyRootFilesystem is not true", None)
        drop = dig(container, "securityContext", "capabilities", "drop") or []
        if "ALL" not in list(drop):
            report(f"{place}: capabilities.drop does not hold ALL", None)
        added = list(dig(container, "securityContext", "capabilities", "add") or ())
        if any(c != "NET_BIND_SERVICE" for c in added):
            report(f"{place}: adds capabilities {added}", None)
        if _effective(spec, container, "seccompProfile", "type") not in (
            "RuntimeDefault",
            "Localhost",
        ):
            report(f"{place}: seccompProfile.type is not RuntimeDefault", None)


def check_resources(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Every container has CPU and memory requests (what the scheduler places pods by) and limits
    (what keeps one pod from starving its neighbours)."""
    spec = pod_spec(args.resource_type, args.props)
    if spec is None:
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
    to a pod that can take it)."""
    if args.resource_type not in LONG_RUNNING:
        return
    spec = pod_spec(args.resource_type, args.props)
    if spec is None:
        return
    for container in running_containers(spec):
        missing = [p for p in ("livenessProbe", "readinessProbe") if not container.get(p)]
        if missing:
            place = where(args.resource_type, args.props, container)
            report(f"{place}: no {' and no '.join(missing)}", None)


def check_image_digest(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Every image is referenced by digest (name@sha256:...), unless the reference is a declared
    exception (allowedImages; none by default): what was reviewed and scanned is what runs, and a
    rollback really rolls back. An image unknown at preview (built by the update) is checked at
    `pulumi up`; the images beside it are checked at once."""
    spec = pod_spec(args.resource_type, args.props)
    if spec is None:
        return
    allowed = args.get_config().get("allowedImages")
    allowed = ALLOWED_BY_TAG if allowed is None else tuple(allowed)
    unknown: UnknownValueError | None = None
    for container in containers(spec):
        try:
            image = str(container.get("image") or "")
        except UnknownValueError as error:  # a built image at preview: its push gives the digest
            unknown = unknown or error
            continue
        if DIGEST.search(image) or image in allowed:
            continue
        place = where(args.resource_type, args.props, container)
        report(f"{place}: image {image!r} is not pinned by digest (name@sha256:...)", None)
    if unknown is not None:
        raise unknown  # the engine reports that the rule could not read it during preview
