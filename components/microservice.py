"""`Microservice`: a stateless HTTP service as a Deployment behind a Service, production-ready."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import pulumi
import pulumi_kubernetes as k8s

from components import pod, rollout
from components.config import ServiceConfig
from components.labels import labels, metadata, selector

CONTAINER_PORT: Final = 8080
SERVICE_PORT: Final = 80
TLS_SERVICE_PORT: Final = 443
TLS_DIR: Final = "/etc/mlstack/tls"
TLS_VOLUME: Final = "tls"
# What the kubelet gives a container between SIGTERM and SIGKILL, beyond any pre-stop drain.
SHUTDOWN_SECONDS: Final = 30
# How often a started pod is asked whether it is ready.
READINESS_PERIOD_SECONDS: Final = 1
# A new pod counts as available, and replaces an old one in a rollout, once it has stayed Ready
# past one more readiness probe: one that fails right after its first success does not count.
MIN_READY_SECONDS: Final = READINESS_PERIOD_SECONDS + 1
# A service that also speaks gRPC listens on GRPC_PORT; its Service carries it at the same number.
GRPC_PORT: Final = 8081
# The Deployment's replica count, as `ignoreChanges` names it.
#
# Under an autoscaler the HPA owns it. `pulumi.com/patchForce` stays (it still wins back every
# other field changed out of band), and `ignoreChanges` keeps the program's count to the
# creation: on every later update pulumi-kubernetes (4.25, handleSSAIgnoreFields) leaves the
# field out of its Server-Side Apply patch while another manager (the HPA controller, through
# the scale subresource) owns it, and otherwise applies the live count. Either way a `pulumi up`
# keeps the replicas the HPA chose and meets no conflict; the engine's diff and `make drift`
# skip the field too.
REPLICAS: Final = "spec.replicas"


@dataclass(frozen=True)
class MicroserviceArgs:
    """What one service needs; the component derives everything else (selectors, ports, PDB)."""

    name: str
    stack: str
    namespace: pulumi.Input[str]
    image: pulumi.Input[str]
    # The stack's replicas, Service type and autoscaling of the service.
    service: ServiceConfig
    liveness_path: str
    readiness_path: str
    resources: pod.Resources
    env: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    # The Kubernetes Secret whose keys are mounted as files under pod.SECRETS_DIR, by its name
    # (not another resource's output: a Secret replaced for new data then replaces nothing).
    secret_name: str | None = None
    # A digest of the secrets' values: a new value rolls the pods, which read them at start.
    secrets_checksum: pulumi.Input[str] | None = None
    # Resources the Deployment is created after (the Secrets it mounts).
    after: tuple[pulumi.Resource, ...] = ()
    # A `kubernetes.io/tls` Secret: the container serves HTTPS from it (TLS_CERT_FILE,
    # TLS_KEY_FILE) and the Service exposes 443 instead of 80.
    tls_secret_name: str | None = None
    # A port of its own for /metrics (METRICS_PORT), on the pods only: the Service never has it.
    metrics_port: int | None = None
    # CIDRs a LoadBalancer Service admits (loadBalancerSourceRanges); empty: anyone.
    source_ranges: tuple[str, ...] = ()
    # Seconds a terminating pod keeps serving after it left the endpoints, before SIGTERM, so
    # that load balancers stop sending to it first; None: SIGTERM at once.
    drain_seconds: int | None = None
    # Spread replicas over zones as well as hosts (clusters whose nodes carry zone labels).
    zone_spread: bool = False
    # Whether the service also serves gRPC (on GRPC_PORT, with the standard grpc.health.v1).
    grpc: bool = False

    @property
    def most_replicas(self) -> int:
        """The most pods the service may run: what the PDB and the spreading plan for."""
        scaling = self.service.autoscaling
        return scaling.max_replicas if scaling else self.service.replicas

    @property
    def scheme(self) -> str:
        return "https" if self.tls_secret_name is not None else "http"


class Microservice(pulumi.ComponentResource):
    """A Deployment and its Service, plus a PodDisruptionBudget when there may be more than one
    pod and a HorizontalPodAutoscaler when the service autoscales."""

    deployment: k8s.apps.v1.Deployment
    service: k8s.core.v1.Service
    disruption_budget: k8s.policy.v1.PodDisruptionBudget | None
    autoscaler: k8s.autoscaling.v2.HorizontalPodAutoscaler | None

    def __init__(
        self, name: str, args: MicroserviceArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlstack:app:Microservice", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        meta_labels = labels(args.name, args.stack)
        match = selector(args.name, args.stack)
        meta = metadata(args.name, args.namespace, args.name, args.stack)

        account = pod.service_account(
            f"{name}-account",
            meta,
            child,
        )
        self.deployment = k8s.apps.v1.Deployment(
            name,
            metadata={
                **meta,
                # The stack's config is the truth for every field the program sets: after an
                # out-of-band `kubectl scale` (another field manager then owns .spec.replicas),
                # the next `pulumi up` takes the field back instead of failing on the conflict.
                "annotations": {rollout.PATCH_FORCE: "true", **rollout.await_deployment()},
            },
            spec={
                "replicas": args.service.replicas,
                "selector": {"match_labels": match},
                "revision_history_limit": 5,
                "min_ready_seconds": MIN_READY_SECONDS,
                "progress_deadline_seconds": 600,
                # Never drop below the configured capacity while a new version rolls out.
                "strategy": {
                    "type": "RollingUpdate",
                    "rolling_update": {"max_surge": "25%", "max_unavailable": 0},
                },
                "template": {
                    "metadata": {
                        "labels": meta_labels,
                        "annotations": (
                            {pod.SECRETS_CHECKSUM: args.secrets_checksum}
                            if args.secrets_checksum is not None
                            else None
                        ),
                    },
                    "spec": _pod_spec(args, account.metadata.name, match),
                },
            },
            # Fixed names keep DNS stable; a forced replacement must free the name first.
            opts=pulumi.ResourceOptions(
                parent=self,
                delete_before_replace=True,
                depends_on=list(args.after),
                ignore_changes=[REPLICAS] if args.service.autoscaling else None,
            ),
        )
        self.service = k8s.core.v1.Service(
            name,
            metadata=meta,
            spec={
                "type": args.service.service_type,
                # The Deployment's own selector, as a value rather than its output: the Service
                # is then created beside the Deployment, and the provider's wait for its
                # endpoints to settle runs while the pods start instead of after the rollout.
                "selector": match,
                "ports": _service_ports(args),
                "load_balancer_source_ranges": list(args.source_ranges) or None,
            },
            opts=child,
        )
        self.autoscaler = None
        if args.service.autoscaling is not None:
            self.autoscaler = _autoscaler(name, args, self.deployment, child)
        self.disruption_budget = None
        if args.most_replicas > 1:
            self.disruption_budget = k8s.policy.v1.PodDisruptionBudget(
                name,
                metadata=meta,
                spec={
                    "max_unavailable": 1,
                    "selector": {"match_labels": match},
                    # A pod that is not Ready serves nothing: evicting it costs no capacity, and
                    # a service whose pods all fail must not hold up every node drain.
                    "unhealthy_pod_eviction_policy": "AlwaysAllow",
                },
                opts=child,
            )
        self.register_outputs(
            {"deployment": self.deployment.metadata.name, "service": self.service.metadata.name}
        )


def _autoscaler(
    name: str,
    args: MicroserviceArgs,
    deployment: k8s.apps.v1.Deployment,
    opts: pulumi.ResourceOptions,
) -> k8s.autoscaling.v2.HorizontalPodAutoscaler:
    """Scales the Deployment on its pods' CPU use, as a share of their CPU requests (every
    container of a Microservice has them: pod.Resources)."""
    scaling = args.service.autoscaling
    assert scaling is not None
    return k8s.autoscaling.v2.HorizontalPodAutoscaler(
        name,
        metadata=metadata(args.name, args.namespace, args.name, args.stack),
        spec={
            "scale_target_ref": {
                "api_version": "apps/v1",
                "kind": "Deployment",
                "name": deployment.metadata.name,
            },
            "min_replicas": args.service.replicas,
            "max_replicas": scaling.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "average_utilization": scaling.cpu_utilization,
                        },
                    },
                }
            ],
            "behavior": {
                "scale_down": {
                    "stabilization_window_seconds": scaling.scale_down_stabilization_seconds
                }
            },
        },
        opts=opts,
    )


def _pod_spec(
    args: MicroserviceArgs, account: pulumi.Input[str], match: dict[str, str]
) -> k8s.core.v1.PodSpecArgsDict:
    env: list[k8s.core.v1.EnvVarArgsDict] = [{"name": "PORT", "value": str(CONTAINER_PORT)}]
    ports: list[k8s.core.v1.ContainerPortArgsDict] = [
        {"name": args.scheme, "container_port": CONTAINER_PORT, "protocol": "TCP"}
    ]
    volumes = [pod.tmp_volume()]
    extra_mounts: list[k8s.core.v1.VolumeMountArgsDict] = []
    if args.tls_secret_name is not None:
        env += [
            {"name": "TLS_CERT_FILE", "value": f"{TLS_DIR}/tls.crt"},
            {"name": "TLS_KEY_FILE", "value": f"{TLS_DIR}/tls.key"},
        ]
        volumes.append(pod.secrets_volume(args.tls_secret_name, TLS_VOLUME))
        extra_mounts.append({"name": TLS_VOLUME, "mount_path": TLS_DIR, "read_only": True})
    if args.metrics_port is not None:
        env.append({"name": "METRICS_PORT", "value": str(args.metrics_port)})
        ports.append({"name": "metrics", "container_port": args.metrics_port, "protocol": "TCP"})
    liveness = _http_probe(args, args.liveness_path, period=10, failures=3)
    if args.grpc:
        env.append({"name": "GRPC_PORT", "value": str(GRPC_PORT)})
        ports.append({"name": "grpc", "container_port": GRPC_PORT, "protocol": "TCP"})
        # Liveness asks the gRPC server (grpc.health.v1, overall status): a process whose gRPC
        # listener died is restarted; readiness stays on HTTP, which the gateway calls.
        liveness = {
            "grpc": {"port": GRPC_PORT},
            "period_seconds": 10,
            "timeout_seconds": 2,
            "failure_threshold": 3,
        }
    for key, value in sorted(args.env.items()):
        env.append({"name": key, "value": value})
    if args.secret_name is not None:
        volumes.append(pod.secrets_volume(args.secret_name))
    grace = SHUTDOWN_SECONDS
    lifecycle: k8s.core.v1.LifecycleArgsDict | None = None
    if args.drain_seconds is not None:
        # A terminating pod leaves the Service's endpoints at once, but what sends to it (a load
        # balancer, kube-proxy on every node) notices later: keep serving until it has, then take
        # SIGTERM and finish in-flight requests.
        lifecycle = {"pre_stop": {"sleep": {"seconds": args.drain_seconds}}}
        grace += args.drain_seconds
    container: k8s.core.v1.ContainerArgsDict = {
        "name": args.name,
        "image": args.image,
        "image_pull_policy": pod.pull_policy(args.image),
        "ports": ports,
        "env": env,
        "resources": args.resources.spec(),
        "security_context": pod.container_security_context(),
        "volume_mounts": pod.mounts(
            secrets=args.secret_name is not None, extra=tuple(extra_mounts)
        ),
        # The kubelet asks for readiness only from the first readiness period after the startup
        # probe passed: short periods are what lets a started pod take traffic within a second
        # or two (both paths answer from memory; a minute to start stays the bound).
        "startup_probe": _http_probe(args, args.liveness_path, period=1, failures=60),
        "readiness_probe": _http_probe(
            args, args.readiness_path, period=READINESS_PERIOD_SECONDS, failures=3
        ),
        "liveness_probe": liveness,
        "lifecycle": lifecycle,
    }
    spec: k8s.core.v1.PodSpecArgsDict = {
        "service_account_name": account,
        "automount_service_account_token": False,
        "security_context": pod.pod_security_context(),
        "termination_grace_period_seconds": grace,
        "containers": [container],
        "volumes": volumes,
        # Whatever the count: a pod template that changed with it would roll every pod when
        # `replicas` goes from one to more, or back, where only the count changes.
        "topology_spread_constraints": pod.spread(match, zones=args.zone_spread),
    }
    return spec


def _service_ports(args: MicroserviceArgs) -> list[k8s.core.v1.ServicePortArgsDict]:
    ports: list[k8s.core.v1.ServicePortArgsDict] = [
        {
            "name": args.scheme,
            "port": TLS_SERVICE_PORT if args.scheme == "https" else SERVICE_PORT,
            "target_port": args.scheme,
            "protocol": "TCP",
        }
    ]
    if args.grpc:
        ports.append(
            {
                "name": "grpc",
                "port": GRPC_PORT,
                "target_port": "grpc",
                "protocol": "TCP",
                # HTTP/2 without TLS: what meshes and Gateway API routes need to know.
                "app_protocol": "kubernetes.io/h2c",
            }
        )
    return ports


def _http_probe(
    args: MicroserviceArgs, path: str, *, period: int, failures: int
) -> k8s.core.v1.ProbeArgsDict:
    return {
        "http_get": {"path": path, "port": args.scheme, "scheme": args.scheme.upper()},
        "period_seconds": period,
        "timeout_seconds": 2,
        "failure_threshold": failures,
    }
