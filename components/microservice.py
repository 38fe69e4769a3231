"""`Microservice`: a stateless HTTP service as a Deployment behind a Service, production-ready."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import pulumi
import pulumi_kubernetes as k8s

from components import pod
from components.config import ServiceType
from components.labels import labels, selector

CONTAINER_PORT: Final = 8080
SERVICE_PORT: Final = 80


@dataclass(frozen=True)
class MicroserviceArgs:
    """What one service needs; the component derives everything else (selectors, ports, PDB)."""

    name: str
    stack: str
    namespace: pulumi.Input[str]
    image: pulumi.Input[str]
    replicas: int
    service_type: ServiceType
    liveness_path: str
    readiness_path: str
    resources: pod.Resources
    env: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    # The Kubernetes Secret whose keys are mounted as files under pod.SECRETS_DIR.
    secret_name: pulumi.Input[str] | None = None


class Microservice(pulumi.ComponentResource):
    """A Deployment and its Service, plus a PodDisruptionBudget when there is more than one pod."""

    deployment: k8s.apps.v1.Deployment
    service: k8s.core.v1.Service
    disruption_budget: k8s.policy.v1.PodDisruptionBudget | None

    def __init__(
        self, name: str, args: MicroserviceArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlstack:app:Microservice", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        meta_labels = labels(args.name, args.stack)
        match = selector(args.name, args.stack)

        account = k8s.core.v1.ServiceAccount(
            f"{name}-account",
            metadata={"name": args.name, "namespace": args.namespace, "labels": meta_labels},
            automount_service_account_token=False,
            opts=child,
        )
        self.deployment = k8s.apps.v1.Deployment(
            name,
            metadata={"name": args.name, "namespace": args.namespace, "labels": meta_labels},
            spec={
                "replicas": args.replicas,
                "selector": {"match_labels": match},
                "revision_history_limit": 5,
                "min_ready_seconds": 5,
                "progress_deadline_seconds": 600,
                # Never drop below the configured capacity while a new version rolls out.
                "strategy": {
                    "type": "RollingUpdate",
                    "rolling_update": {"max_surge": "25%", "max_unavailable": 0},
                },
                "template": {
                    "metadata": {"labels": meta_labels},
                    "spec": _pod_spec(args, account.metadata.name, match),
                },
            },
            # Fixed names keep DNS stable; a forced replacement must free the name first.
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
        self.service = k8s.core.v1.Service(
            name,
            metadata={"name": args.name, "namespace": args.namespace, "labels": meta_labels},
            spec={
                "type": args.service_type,
                # Derived from the Deployment, never retyped.
                "selector": self.deployment.spec.selector.match_labels,
                "ports": [
                    {
                        "name": "http",
                        "port": SERVICE_PORT,
                        "target_port": "http",
                        "protocol": "TCP",
                    }
                ],
            },
            opts=child,
        )
        self.disruption_budget = None
        if args.replicas > 1:
            self.disruption_budget = k8s.policy.v1.PodDisruptionBudget(
                name,
                metadata={"name": args.name, "namespace": args.namespace, "labels": meta_labels},
                spec={"max_unavailable": 1, "selector": {"match_labels": match}},
                opts=child,
            )
        self.register_outputs(
            {"deployment": self.deployment.metadata.name, "service": self.service.metadata.name}
        )


def _pod_spec(
    args: MicroserviceArgs, account: pulumi.Input[str], match: dict[str, str]
) -> k8s.core.v1.PodSpecArgsDict:
    env: list[k8s.core.v1.EnvVarArgsDict] = [{"name": "PORT", "value": str(CONTAINER_PORT)}]
    for key, value in sorted(args.env.items()):
        env.append({"name": key, "value": value})
    volumes = [pod.tmp_volume()]
    if args.secret_name is not None:
        volumes.append(pod.secrets_volume(args.secret_name))  # type: ignore[arg-type]
    spec: k8s.core.v1.PodSpecArgsDict = {
        "service_account_name": account,
        "automount_service_account_token": False,
        "security_context": pod.pod_security_context(),
        "termination_grace_period_seconds": 30,
        "containers": [
            {
                "name": args.name,
                "image": args.image,
                "image_pull_policy": pulumi.Output.from_input(args.image).apply(pod.pull_policy),
                "ports": [{"name": "http", "container_port": CONTAINER_PORT, "protocol": "TCP"}],
                "env": env,
                "resources": args.resources.spec(),
                "security_context": pod.container_security_context(),
                "volume_mounts": pod.mounts(secrets=args.secret_name is not None),
                "startup_probe": _http_probe(args.liveness_path, period=2, failures=30),
                "readiness_probe": _http_probe(args.readiness_path, period=5, failures=3),
                "liveness_probe": _http_probe(args.liveness_path, period=10, failures=3),
            }
        ],
        "volumes": volumes,
        # Spread replicas over nodes when the cluster has several; never refuse to schedule.
        "topology_spread_constraints": [
            {
                "max_skew": 1,
                "topology_key": "kubernetes.io/hostname",
                "when_unsatisfiable": "ScheduleAnyway",
                "label_selector": {"match_labels": match},
            }
        ]
        if args.replicas > 1
        else None,
    }
    return spec


def _http_probe(path: str, *, period: int, failures: int) -> k8s.core.v1.ProbeArgsDict:
    return {
        "http_get": {"path": path, "port": "http"},
        "period_seconds": period,
        "timeout_seconds": 2,
        "failure_threshold": failures,
    }
