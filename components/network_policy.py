"""`NetworkPolicies`: deny everything, then allow exactly the paths the application uses:
anyone → gateway, gateway → model, gateway and its migrations → database, and every pod → the
cluster's DNS pods."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import pulumi
import pulumi_kubernetes as k8s

from components.labels import APP, metadata, selector


@dataclass(frozen=True)
class Route:
    """`source` pods may open TCP `ports` on `target` pods (`source` None: from anywhere, or
    from any pod of the `namespaces` when they are given)."""

    source: str | None
    target: str
    ports: tuple[int, ...]
    namespaces: tuple[str, ...] = ()
    # The policy's name; default `<target>-from-<source or any>`.
    name: str | None = None


@dataclass(frozen=True)
class DnsPods:
    """The cluster DNS server's pods: the namespace they run in and labels they all carry."""

    namespace: str = "kube-system"
    labels: Mapping[str, str] = field(default_factory=lambda: {"k8s-app": "kube-dns"})


@dataclass(frozen=True)
class ApiServerRoute:
    """`source` pods may reach the API server: the `kubernetes` Service's own address and port,
    and those of its endpoints (where a connection to that Service is sent once translated):
    a policy is judged before the translation on some CNIs (EKS's), after it on others."""

    source: str
    endpoints: pulumi.Input[list[tuple[str, int]]]


# Every address: a service known by a DNS name, whose addresses the program cannot know.
ANYWHERE: Final = ("0.0.0.0/0", "::/0")


@dataclass(frozen=True)
class ExternalRoute:
    """`source` pods may open TCP `port` on the addresses `cidrs` outside the cluster's pods (by
    default any: a backup bucket known by its DNS name)."""

    source: str
    port: int
    name: str
    cidrs: tuple[str, ...] = ANYWHERE


@dataclass(frozen=True)
class NetworkPoliciesArgs:
    stack: str
    namespace: pulumi.Input[str]
    routes: tuple[Route, ...]
    dns: DnsPods = field(default_factory=DnsPods)
    api_server: ApiServerRoute | None = None
    external: tuple[ExternalRoute, ...] = ()


class NetworkPolicies(pulumi.ComponentResource):
    def __init__(
        self, name: str, args: NetworkPoliciesArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlstack:app:NetworkPolicies", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        def policy(
            policy_name: str, part: str, spec: k8s.networking.v1.NetworkPolicySpecArgsDict
        ) -> k8s.networking.v1.NetworkPolicy:
            return k8s.networking.v1.NetworkPolicy(
                f"{name}-{policy_name}",
                metadata=metadata(policy_name, args.namespace, part, args.stack),
                spec=spec,
                opts=child,
            )

        policy(
            "default-deny",
            APP,
            {"pod_selector": {}, "policy_types": ["Ingress", "Egress"]},
        )
        policy(
            "allow-dns",
            APP,
            {
                "pod_selector": {},
                "policy_types": ["Egress"],
                "egress": [
                    {
                        # Both selectors in one peer: those pods, in that namespace only (port
                        # 53 of any other pod could be anything a tenant runs there).
                        "to": [
                            {
                                "namespace_selector": {
                                    "match_labels": {
                                        "kubernetes.io/metadata.name": args.dns.namespace
                                    }
                                },
                                "pod_selector": {"match_labels": dict(args.dns.labels)},
                            }
                        ],
                        "ports": [
                            {"port": 53, "protocol": "UDP"},
                            {"port": 53, "protocol": "TCP"},
                        ],
                    }
                ],
            },
        )
        for route in args.routes:
            target = selector(route.target, args.stack)
            peers: list[k8s.networking.v1.NetworkPolicyPeerArgsDict] = []
            if route.source is not None:
                peers = [{"pod_selector": {"match_labels": selector(route.source, args.stack)}}]
            elif route.namespaces:
                peers = [
                    {
                        "namespace_selector": {
                            "match_expressions": [
                                {
                                    "key": "kubernetes.io/metadata.name",
                                    "operator": "In",
                                    "values": list(route.namespaces),
                                }
                            ]
                        }
                    }
                ]
            ports: list[k8s.networking.v1.NetworkPolicyPortArgsDict] = [
                {"port": port, "protocol": "TCP"} for port in route.ports
            ]
            ingress: k8s.networking.v1.NetworkPolicyIngressRuleArgsDict = {
                "ports": ports,
                # No `from`: any source.
                "from_": peers or None,
            }
            origin = route.source or "any"
            policy(
                route.name or f"{route.target}-from-{origin}",
                route.target,
                {
                    "pod_selector": {"match_labels": target},
                    "policy_types": ["Ingress"],
                    "ingress": [ingress],
                },
            )
            if route.source is not None:
                policy(
                    f"{route.source}-to-{route.target}",
                    route.source,
                    {
                        "pod_selector": {"match_labels": selector(route.source, args.stack)},
                        "policy_types": ["Egress"],
                        "egress": [
                            {
                                "to": [{"pod_selector": {"match_labels": target}}],
                                "ports": ports,
                            }
                        ],
                    },
                )
        for external in args.external:
            policy(
                external.name,
                external.source,
                {
                    "pod_selector": {"match_labels": selector(external.source, args.stack)},
                    "policy_types": ["Egress"],
                    "egress": [
                        {
                            "to": [{"ip_block": {"cidr": cidr}} for cidr in external.cidrs],
                            "ports": [{"port": external.port, "protocol": "TCP"}],
                        }
                    ],
                },
            )
        if args.api_server is not None:
            source = args.api_server.source

            def to_api_server(
                endpoints: list[tuple[str, int]],
            ) -> list[k8s.networking.v1.NetworkPolicyEgressRuleArgsDict]:
                cidr = {False: 32, True: 128}
                return [
                    {
                        "to": [{"ip_block": {"cidr": f"{ip}/{cidr[':' in ip]}"}}],
                        "ports": [{"port": port, "protocol": "TCP"}],
                    }
                    for ip, port in sorted(set(endpoints))
                ]

            policy(
                f"{source}-to-api-server",
                source,
                {
                    "pod_selector": {"match_labels": selector(source, args.stack)},
                    "policy_types": ["Egress"],
                    "egress": pulumi.Output.from_input(args.api_server.endpoints).apply(
                        to_api_server
                    ),
                },
            )
        self.register_outputs({})
