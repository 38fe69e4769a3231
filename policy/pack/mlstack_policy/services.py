"""Rules on Services: what is reachable from outside the cluster, and how, in production."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any, Final

from pulumi_policy import ReportViolation, ResourceValidationArgs

from .kube import EXTERNAL_SERVICE_TYPES, NAME_LABEL, SERVICE, app_name, dig, service_type

# The model has no authentication of its own, the database only its password: both are reached
# from inside the cluster alone (the gateway is the only public entry).
INTERNAL_APPS: Final = frozenset({"model", "database"})
GATEWAY: Final = "gateway"
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


def _label(props: Mapping[str, Any]) -> str:
    return f"Service {dig(props, 'metadata', 'name') or '?'}"


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
    externalIPs: a Service is theirs by its label or by its selector (the pods it exposes)."""
    if args.resource_type != SERVICE:
        return
    selected = dig(args.props, "spec", "selector", NAME_LABEL)
    app = next((a for a in (app_name(args.props), selected) if a in INTERNAL_APPS), None)
    exposure = _exposure(args.props)
    if app is not None and exposure:
        report(
            f"{_label(args.props)} of {app} is of type {exposure}: "
            "the model and the database are reached from inside the cluster only (ClusterIP)",
            None,
        )


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
    (not the whole internet: a NodePort cannot be restricted to ranges) and serves HTTPS (a port
    named https)."""
    if not _production(args) or args.resource_type != SERVICE:
        return
    kind = service_type(args.props)
    if app_name(args.props) != GATEWAY or kind not in EXTERNAL_SERVICE_TYPES:
        return
    ranges = list(dig(args.props, "spec", "loadBalancerSourceRanges") or ())
    if kind != "LoadBalancer":
        report(
            f"{_label(args.props)} is of type {kind}, which no source range restricts: make it a "
            "LoadBalancer with loadBalancerSourceRanges "
            "(gateway.serviceType: LoadBalancer, gateway.sourceRanges)",
            None,
        )
    elif not ranges:
        report(f"{_label(args.props)}: no loadBalancerSourceRanges (gateway.sourceRanges)", None)
    elif admits_anyone(ranges):
        report(f"{_label(args.props)}: loadBalancerSourceRanges admit anyone: {ranges}", None)
    names = [str(port.get("name") or "") for port in dig(args.props, "spec", "ports") or ()]
    if "https" not in names:
        report(f"{_label(args.props)}: no https port (gateway.tls)", None)


def check_no_public_plain_http(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """In production no LoadBalancer or NodePort Service, nor one with externalIPs, serves plain
    HTTP: credentials (the API key) and predictions would cross the internet in the clear."""
    if not _production(args) or args.resource_type != SERVICE:
        return
    exposure = _exposure(args.props)
    if exposure is None:
        return
    ports = _plain_http_ports(args.props)
    if ports:
        report(
            f"{_label(args.props)} of type {exposure} serves plain HTTP on {', '.join(ports)}",
            None,
        )
