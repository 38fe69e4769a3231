"""Rules on Services: what is reachable from outside the cluster, and how, in production."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any, Final

from pulumi_policy import ReportViolation, ResourceValidationArgs, StackValidationArgs
from pulumi_policy.proxy import UnknownValueError

from .kube import (
    EXTERNAL_SERVICE_TYPES,
    NAME_LABEL,
    POD_TEMPLATE_PATHS,
    SERVICE,
    app_name,
    dig,
    is_patch,
    named,
    objects,
    pod_labels,
    service_type,
)

# The model has no authentication of its own, the database only its password: both are reached
# from inside the cluster alone (the gateway is the only public entry).
INTERNAL_APPS: Final = frozenset({"model", "database"})
GATEWAY: Final = "gateway"
# The program's Services by name, each with the app it fronts: the gateway's and the model's
# (components/app.py, MODEL_SERVICE), the database's (components/database.py NAME, READ_NAME,
# HEADLESS_NAME). The pack is served on its own, apart from the program, so it keeps a copy;
# tests/unit/test_policy_pack.py holds it to the program's. A Patch need not carry labels, but it
# names the Service it changes.
SERVICE_APPS: Final[Mapping[str, str]] = {
    "gateway": GATEWAY,
    "model": "model",
    "database": "database",
    "database-read": "database",
    "database-headless": "database",
}
# The labels only the database's pods carry: Patroni's cluster, which their template sets, and the
# role Patroni puts on each of them at run time (components/database.py SCOPE_LABEL, ROLE_LABEL;
# tests/unit/test_policy_pack.py holds the copy to the program's). A selector that names either
# picks database pods, whatever else it names.
DATABASE_POD_LABELS: Final = ("mlstack/database-cluster", "mlstack/database-role")
# A label a controller adds at run time to the pods whose template carries another: Patroni's role
# on the pods of its cluster, with any value (primary, replica).
RUNTIME_POD_LABELS: Final[Mapping[str, str]] = {DATABASE_POD_LABELS[0]: DATABASE_POD_LABELS[1]}
# The labels a workload's controller adds to each of its pods, by kind, and what their values
# hold: `name-` (the workload's name and a dash, then an ordinal or a hash), or None (a value
# that cannot be told from the workload: a hash, an index). A selector may pick pods by them.
CONTROLLER_POD_LABELS: Final[Mapping[str, Mapping[str, str | None]]] = {
    "kubernetes:apps/v1:StatefulSet": {
        "statefulset.kubernetes.io/pod-name": "name-",
        "apps.kubernetes.io/pod-index": None,
        "controller-revision-hash": "name-",
    },
    "kubernetes:apps/v1:Deployment": {"pod-template-hash": None},
    "kubernetes:apps/v1:ReplicaSet": {"pod-template-hash": None},
    "kubernetes:apps/v1:DaemonSet": {
        "controller-revision-hash": None,
        "pod-template-generation": None,
    },
    "kubernetes:batch/v1:Job": {
        "batch.kubernetes.io/job-name": "name",
        "job-name": "name",
        "batch.kubernetes.io/controller-uid": None,
        "controller-uid": None,
        "batch.kubernetes.io/job-completion-index": None,
    },
}
# A port's appProtocol for HTTP in clear text: HTTP/1.1 (an IANA service name, in any case), and
# the Kubernetes-defined HTTP/2 over cleartext and WebSocket over cleartext.
PLAIN_HTTP_PROTOCOLS: Final = frozenset({"http", "kubernetes.io/h2c", "kubernetes.io/ws"})


def admits_anyone(cidrs: Iterable[object]) -> bool:
    """Whether source ranges admit the whole internet of an address family: 0.0.0.0/0 or ::/0,
    however spelled (`::0/0`, a host part, halves that together make it). A range that does not
    parse is left to the API server, which refuses it."""
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for cidr in cidrs:
        with contextlib.suppress(ValueError):
            networks.append(ipaddress.ip_network(str(cidr).strip(), strict=False))
    v4 = [each for each in networks if isinstance(each, ipaddress.IPv4Network)]
    v6 = [each for each in networks if isinstance(each, ipaddress.IPv6Network)]
    collapsed: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [
        *ipaddress.collapse_addresses(v4),
        *ipaddress.collapse_addresses(v6),
    ]
    return any(each.prefixlen == 0 for each in collapsed)


def _production(args: ResourceValidationArgs) -> bool:
    return args.get_config().get("production") is True


def _app(props: Mapping[str, Any], apps: frozenset[str]) -> str | None:
    """Which of `apps` a Service is: by its label, by its selector (the pods it exposes: by their
    name label, or the labels of the database's pods alone), or else by its name (a patch need not
    carry labels)."""
    selector = dig(props, "spec", "selector")
    for app in (app_name(props), dig(selector, NAME_LABEL)):
        if app in apps:
            return app
    own = isinstance(selector, Mapping) and any(key in selector for key in DATABASE_POD_LABELS)
    if own and "database" in apps:
        return "database"
    app = SERVICE_APPS.get(str(dig(props, "metadata", "name")))
    return app if app in apps else None


def _exposure(props: Mapping[str, Any]) -> str | None:
    """How a Service is reached from outside the cluster (`LoadBalancer`, `ClusterIP with
    externalIPs [...]`: every node's proxy answers those addresses), or None."""
    kind = service_type(props)
    addresses = list(dig(props, "spec", "externalIPs") or ())
    if addresses:
        return f"{kind} with externalIPs {addresses}"
    return kind if kind in EXTERNAL_SERVICE_TYPES else None


def check_internal_services(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """The model and the database are not exposed by a LoadBalancer or NodePort Service, nor by
    externalIPs: a Service is theirs by its label, by its selector (the pods it exposes: their
    name label, or the database's own labels), or by its name; a ServicePatch is held to the type
    and externalIPs it sets. The stack rule no-external-model-or-database-pods matches any other
    selector against the stack's workloads."""
    if args.resource_type != SERVICE:
        return
    app = _app(args.props, INTERNAL_APPS)
    exposure = _exposure(args.props)
    if app is not None and exposure:
        report(
            f"{named(SERVICE, args.props)} of {app} is of type {exposure}: "
            "the model and the database are reached from inside the cluster only (ClusterIP)",
            None,
        )


def _selects(
    selector: Mapping[str, Any], labels: Mapping[str, Any], kind: str, name: object
) -> bool:
    """Whether a Service's `selector` picks the pods a template with `labels` makes, of the
    workload `kind` named `name`: each label it names is one of theirs, one a controller adds
    to such pods at run time (RUNTIME_POD_LABELS), or one the workload's controller adds to each
    pod (CONTROLLER_POD_LABELS) with a value it may have. An empty selector picks none (the
    Service's endpoints are its own)."""
    added = {RUNTIME_POD_LABELS[key] for key in labels if key in RUNTIME_POD_LABELS}
    controller = CONTROLLER_POD_LABELS.get(kind, {})

    def picks(key: str, value: Any) -> bool:
        if labels.get(key) == value or key in added:
            return True
        if key not in controller:
            return False
        holds = controller[key]
        if holds == "name-":
            return str(value).startswith(f"{name}-")
        if holds == "name":
            return str(value) == str(name)
        return True

    return bool(selector) and all(picks(key, value) for key, value in selector.items())


def _namespace(props: Mapping[str, Any]) -> Any:
    """An object's namespace; None where it is not given or not known yet (at preview)."""
    try:
        return dig(props, "metadata", "namespace")
    except UnknownValueError:
        return None


def check_internal_pods(args: StackValidationArgs, report: ReportViolation) -> None:
    """No LoadBalancer or NodePort Service, nor one with externalIPs, selects the model's or the
    database's pods, whatever its name or labels: a selector picks the pods of every workload of
    the stack, in the Service's namespace, whose pod template carries each label it names (or
    the role Patroni adds to the database's pods, or a label the workload's controller adds to
    each pod: a StatefulSet's pod name and index, a Deployment's template hash). A Service the
    resource rule
    no-external-model-or-database-service recognises as theirs is left to it."""
    unknown: UnknownValueError | None = None
    made = [
        (resource.urn, kind, props)
        for resource in args.resources
        for kind, props in objects(resource.resource_type, resource.props)
    ]
    pods: list[tuple[str, Any, Mapping[str, Any], str, object]] = []
    for _, kind, props in made:
        if kind not in POD_TEMPLATE_PATHS or is_patch(props):
            continue
        try:
            labels = dict(pod_labels(kind, props))
            if (app_name(props) or labels.get(NAME_LABEL)) in INTERNAL_APPS:
                name = dig(props, "metadata", "name")
                pods.append((named(kind, props), _namespace(props), labels, kind, name))
        except UnknownValueError as error:  # at preview: the other workloads are still read
            unknown = unknown or error
    for urn, kind, props in made:
        if kind != SERVICE:
            continue
        try:
            if _app(props, INTERNAL_APPS) is not None:
                continue  # the resource rule's
            exposure = _exposure(props)
            selector = dig(props, "spec", "selector")
            if exposure is None or not isinstance(selector, Mapping):
                continue
            selector = dict(selector)
            namespace = _namespace(props)
            selected = sorted(
                workload
                for workload, where, labels, kind, name in pods
                if None in (namespace, where) or namespace == where
                if _selects(selector, labels, kind, name)
            )
        except UnknownValueError as error:
            unknown = unknown or error
            continue
        if selected:
            report(
                f"{named(SERVICE, props)} of type {exposure} selects the pods of "
                f"{', '.join(selected)}: the model and the database are reached from inside the "
                "cluster only (ClusterIP)",
                urn,
            )
    if unknown is not None:
        raise unknown  # the engine reports that the rule could not run during preview


def _plain_http_ports(props: Mapping[str, Any]) -> list[str]:
    found = []
    for port in dig(props, "spec", "ports") or ():
        name = str(port.get("name") or "")
        protocol = str(port.get("appProtocol") or "").lower()
        if name == "http" or protocol in PLAIN_HTTP_PROTOCOLS or port.get("port") == 80:
            found.append(f"{name or '?'}:{port.get('port')}")
    return found


def check_gateway_edge(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """In production the gateway's public Service is a LoadBalancer with loadBalancerSourceRanges
    (not the whole internet) and serves HTTPS (a port named https); any other way out is refused:
    no range restricts a NodePort, nor the externalIPs every node's proxy answers, whatever the
    type. A ServicePatch of the gateway is held to the type, externalIPs and ranges it sets (the
    ports it sets are merged into the Service's, so they take none away)."""
    if not _production(args) or args.resource_type != SERVICE:
        return
    if _app(args.props, frozenset({GATEWAY})) is None:
        return
    patch = is_patch(args.props)
    kind = service_type(args.props)
    addresses = list(dig(args.props, "spec", "externalIPs") or ())
    # A patch that leaves the type alone changes the gateway's public Service as it is.
    keeps_type = patch and dig(args.props, "spec", "type") is None
    if kind not in EXTERNAL_SERVICE_TYPES and not addresses and not keeps_type:
        return
    label = named(SERVICE, args.props)
    if kind == "NodePort" or addresses:
        unfiltered = " and no externalIPs" if addresses else ""
        report(
            f"{label} is of type {_exposure(args.props)}, which no source range restricts: make "
            f"it a LoadBalancer with loadBalancerSourceRanges{unfiltered} "
            "(gateway.serviceType: LoadBalancer, gateway.sourceRanges)",
            None,
        )
    ranges = dig(args.props, "spec", "loadBalancerSourceRanges")
    # Ranges restrict a load balancer alone; of another type, the finding above says what to do.
    balanced = kind == "LoadBalancer" or keeps_type
    if balanced and not ranges and not (patch and ranges is None):
        report(f"{label}: no loadBalancerSourceRanges (gateway.sourceRanges)", None)
    elif balanced and ranges and admits_anyone(ranges):
        report(f"{label}: loadBalancerSourceRanges admit anyone: {list(ranges)}", None)
    names = [str(port.get("name") or "") for port in dig(args.props, "spec", "ports") or ()]
    if "https" not in names and not patch:
        report(f"{label}: no https port (gateway.tls)", None)


def check_no_public_plain_http(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """In production no LoadBalancer or NodePort Service, nor one with externalIPs, serves plain
    HTTP: credentials (the API key) and predictions would cross the internet in the clear. A
    ServicePatch is held to the type, externalIPs and ports it sets."""
    if not _production(args) or args.resource_type != SERVICE:
        return
    exposure = _exposure(args.props)
    if exposure is None:
        return
    ports = _plain_http_ports(args.props)
    if ports:
        label = named(SERVICE, args.props)
        report(f"{label} of type {exposure} serves plain HTTP on {', '.join(ports)}", None)
