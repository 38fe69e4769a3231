"""The policy pack (policy/pack): each rule against a resource that passes it and one that
violates it, its functions called directly; then every stack's program against every mandatory
rule, with the stack's own pack config."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any, Final

import pytest
from pulumi_policy import (
    EnforcementLevel,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, UnknownValueError, unknown_checking_proxy

from components import app as app_component
from components import database as database_component
from harness.program import ProgramExitError, ProgramRun, Registered, run_program, stack_config
from mlstack_policy import availability, clusters, services, workloads
from mlstack_policy.kube import NAME_LABEL, POD_TEMPLATE_PATHS
from mlstack_policy.pack import policies
from tests.paths import POLICY_PACK
from tests.unit.configs import PREBUILT_IMAGES, existing_with
from tests.unit.pack import options, pack_findings, stack_resource, violations

DIGEST: Final = "@sha256:" + "a" * 64
DEPLOYMENT: Final = "kubernetes:apps/v1:Deployment"
STATEFUL_SET: Final = "kubernetes:apps/v1:StatefulSet"
SERVICE: Final = "kubernetes:core/v1:Service"
PRODUCTION: Final = {"production": True}


def unpinned(key: str, stack: str = "t", project: str = "mlstack") -> str:
    """The end of an image-by-digest finding on the workload whose image is
    `<project>:images.<key>` (`violations` runs a rule in the stack `t` of `mlstack`)."""
    return (
        f"is not pinned by digest (name@sha256:...): set {project}:images.{key} to "
        f"tag@sha256:digest, or declare it in allowedImages (policy/pack/config/{stack}.json)"
    )


def container(**overrides: Any) -> dict[str, Any]:
    """A container as components/microservice.py writes it: passes every workload rule."""
    found: dict[str, Any] = {
        "name": "gateway",
        "image": "registry.example/gateway" + DIGEST,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "1", "memory": "256Mi"},
        },
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}},
    }
    found.update(overrides)
    return found


def deployment(
    *containers: dict[str, Any], replicas: int = 2, name: str = "gateway", **spec: Any
) -> dict[str, Any]:
    """A Deployment's props (a StatefulSet's too: the rules read the same fields)."""
    return {
        "metadata": {"name": name, "namespace": "ns", "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": name}},
                "spec": {"containers": list(containers or [container()]), **spec},
            },
        },
    }


def service(app: str, kind: str, ports: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": app, "labels": {"app.kubernetes.io/name": app}},
        "spec": {"type": kind, "ports": ports, **spec},
    }


HTTPS: Final = [{"name": "https", "port": 443}]
HTTP: Final = [{"name": "http", "port": 80}]


def without(path: str) -> dict[str, Any]:
    """A container missing one field (dotted path)."""
    found = container()
    *parents, last = path.split(".")
    node = found
    for key in parents:
        node = node[key]
    del node[last]
    return found


# --- the four workload rules, on one Deployment --------------------------------------------------

WORKLOAD_CHECKS: Final = (
    workloads.check_pod_security,
    workloads.check_resources,
    workloads.check_probes,
    workloads.check_image_digest,
)


@pytest.mark.parametrize("check", WORKLOAD_CHECKS, ids=lambda check: check.__name__)
def test_a_complete_deployment_passes(check: Any) -> None:
    assert violations(check, DEPLOYMENT, deployment()) == []


@pytest.mark.parametrize(
    ("check", "missing", "message"),
    [
        (workloads.check_pod_security, "securityContext.runAsNonRoot", "runAsNonRoot is not true"),
        (workloads.check_pod_security, "securityContext.readOnlyRootFilesystem",
         "readOnlyRootFilesystem is not true"),
        (workloads.check_pod_security, "securityContext.allowPrivilegeEscalation",
         "allowPrivilegeEscalation is not false"),
        (workloads.check_pod_security, "securityContext.capabilities",
         "capabilities.drop does not hold ALL"),
        (workloads.check_pod_security, "securityContext.seccompProfile",
         "seccompProfile.type is not RuntimeDefault"),
        (workloads.check_resources, "resources.limits", "no limits.cpu, limits.memory"),
        (workloads.check_probes, "readinessProbe", "no readinessProbe"),
    ],
)  # fmt: skip
def test_a_missing_field_is_one_violation_that_names_it(
    check: Any, missing: str, message: str
) -> None:
    found = violations(check, DEPLOYMENT, deployment(without(missing)))
    assert found == [f"Deployment gateway, container gateway: {message}"]


# --- pod-security-restricted ---------------------------------------------------------------------


def test_pod_security_takes_the_pod_level_non_root_and_seccomp() -> None:
    bare = without("securityContext.runAsNonRoot")
    del bare["securityContext"]["seccompProfile"]
    pod_level = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    props = deployment(bare, securityContext=pod_level)
    assert violations(workloads.check_pod_security, DEPLOYMENT, props) == []


@pytest.mark.parametrize(
    ("pod", "message"),
    [
        ({"runAsNonRoot": False}, "runAsNonRoot is not true"),
        ({"seccompProfile": {"type": "Unconfined"}}, "seccompProfile.type is not RuntimeDefault"),
    ],
)
def test_a_refused_pod_level_value_is_reported_though_every_container_overrides_it(
    pod: dict[str, Any], message: str
) -> None:
    """Restricted Pod Security admission refuses a pod that sets runAsNonRoot false or an
    Unconfined seccomp profile on the pod, whatever its containers set."""
    props = deployment(securityContext=pod)
    check = rule("pod-security-restricted").validate
    found = violations(check, DEPLOYMENT, unknown_checking_proxy(copy.deepcopy(props)))
    assert found == [f"Deployment gateway, pod: {message}"]


def test_pod_security_reads_init_containers_and_cron_jobs_too() -> None:
    init = container(name="init", securityContext={})
    cron = {
        "spec": {
            "jobTemplate": {
                "spec": {
                    "template": {"spec": {"containers": [container()], "initContainers": [init]}}
                }
            }
        }
    }
    found = violations(workloads.check_pod_security, "kubernetes:batch/v1:CronJob", cron)
    assert len(found) == 5
    assert all("container init" in message for message in found)


@pytest.mark.parametrize("check", WORKLOAD_CHECKS, ids=lambda check: check.__name__)
def test_a_replication_controllers_pods_are_held_to_every_workload_rule(check: Any) -> None:
    """Checkov's container checks, which the gate leaves to these rules, read a
    ReplicationController's pod template like a ReplicaSet's: so do the rules."""
    controller = "kubernetes:core/v1:ReplicationController"
    assert violations(check, controller, deployment()) == []
    bad = container(
        image="registry.example/gateway:v1",
        securityContext={"privileged": True},
        resources={},
        livenessProbe=None,
    )
    assert violations(check, controller, deployment(bad), PRODUCTION) != []


# --- container-probes ----------------------------------------------------------------------------


def test_probes_are_asked_of_a_sidecar_not_of_an_init_step() -> None:
    """An init container with restartPolicy Always is a sidecar: it runs as long as the pod."""
    step = without("livenessProbe")
    step.update(name="init")
    sidecar = without("readinessProbe")
    sidecar.update(name="sidecar", restartPolicy="Always")
    props = deployment(initContainers=[step, sidecar])
    assert violations(workloads.check_probes, DEPLOYMENT, props) == [
        "Deployment gateway, container sidecar: no readinessProbe"
    ]


def test_probes_are_not_asked_of_a_job() -> None:
    job = {"spec": {"template": {"spec": {"containers": [without("livenessProbe")]}}}}
    assert violations(workloads.check_probes, "kubernetes:batch/v1:Job", job) == []


# --- image-by-digest -----------------------------------------------------------------------------


def test_image_by_tag_is_a_violation_in_production() -> None:
    props = deployment(container(image="registry.example/gateway:v1"))
    assert violations(workloads.check_image_digest, DEPLOYMENT, props, PRODUCTION) == [
        "Deployment gateway, container gateway: image 'registry.example/gateway:v1' "
        + unpinned("gateway")
    ]
    assert violations(workloads.check_image_digest, DEPLOYMENT, props) == []


def test_an_image_finding_names_the_key_in_a_renamed_copy_s_namespace() -> None:
    """A copy renamed `mlplatform` reads `mlplatform:` keys ("Copying mlstack")."""
    props = deployment(container(image="registry.example/gateway:v1"))
    found = violations(
        workloads.check_image_digest, DEPLOYMENT, props, PRODUCTION, project="mlplatform"
    )
    assert found == [
        "Deployment gateway, container gateway: image 'registry.example/gateway:v1' "
        + unpinned("gateway", project="mlplatform")
    ]


def test_image_by_tag_passes_as_a_declared_exception() -> None:
    props = deployment(container(image="localhost:5001/gateway:dev"))
    config = {**PRODUCTION, "allowedImages": ["localhost:5001/gateway:dev"]}
    assert violations(workloads.check_image_digest, DEPLOYMENT, props, config) == []
    other = deployment(container(image="localhost:5001/gateway:dev2"))
    assert len(violations(workloads.check_image_digest, DEPLOYMENT, other, config)) == 1


def test_no_image_is_accepted_by_tag_unless_a_stack_declares_it() -> None:
    """The database is the project's own build by digest now: the upstream release tag the pack
    used to accept by default is an image like any other, and no stack declares an exception."""
    assert workloads.ALLOWED_BY_TAG == ()
    (rule,) = [p for p in policies() if p.name == "image-by-digest"]
    assert isinstance(rule, ResourceValidationPolicy) and rule.config_schema is not None
    assert rule.config_schema.properties["allowedImages"]["default"] == []
    former = {"name": "postgres", "image": "postgres:17.6-bookworm"}
    props = deployment(container(**former), name="database")
    assert violations(workloads.check_image_digest, STATEFUL_SET, props, PRODUCTION) == [
        "StatefulSet database, container postgres: image 'postgres:17.6-bookworm' "
        + unpinned("database")
    ]
    for path in (POLICY_PACK / "config").glob("*.json"):
        for settings in json.loads(path.read_text()).values():
            assert "allowedImages" not in settings, path.name


def test_outside_production_prebuilt_images_by_tag_pass() -> None:
    """The config table's `images.*`: the reference to deploy, tag@sha256:digest in production.
    Dev on an existing cluster may deploy images it did not build by tag."""
    run = run_program("dev", existing_with())
    assert [f for f in pack_findings(run) if f.startswith("image-by-digest")] == []


def test_an_image_by_tag_in_production_names_its_config_key_and_the_escape() -> None:
    """Each finding names the stack config key that gave the image (the pack's IMAGE_KEYS, held
    here to where the program puts each of `images.*`) and the pack config that may declare it."""
    run = run_program("dev", existing_with())
    check = rule("image-by-digest").validate
    found = [
        message
        for resource in run.resources
        for message in violations(check, resource.type, resource.inputs, PRODUCTION, run.stack)
    ]
    assert len(found) == 5, found
    for message in found:
        image = message.split("image '", 1)[1].split("'", 1)[0]
        (key,) = [k for k in ("gateway", "model", "database") if PREBUILT_IMAGES[k] == image]
        assert message.endswith(unpinned(key, "dev")), message


# --- no-external-model-or-database-service -------------------------------------------------------


@pytest.mark.parametrize("app", ["model", "database"])
def test_model_and_database_pass_as_cluster_ip(app: str) -> None:
    props = service(app, "ClusterIP", HTTP)
    assert violations(services.check_internal_services, SERVICE, props) == []


@pytest.mark.parametrize(("app", "kind"), [("model", "LoadBalancer"), ("database", "NodePort")])
def test_model_or_database_exposed_is_a_violation(app: str, kind: str) -> None:
    found = violations(services.check_internal_services, SERVICE, service(app, kind, HTTP))
    assert len(found) == 1
    assert found[0].startswith(f"Service {app} of {app} is of type {kind}")


def test_external_ips_expose_a_cluster_ip_service() -> None:
    """Every node's kube-proxy answers a Service's externalIPs, whatever its type."""
    props = service("model", "ClusterIP", HTTP, externalIPs=["198.51.100.7"])
    assert violations(services.check_internal_services, SERVICE, props) == [
        "Service model of model is of type ClusterIP with externalIPs ['198.51.100.7']: "
        "the model and the database are reached from inside the cluster only (ClusterIP)"
    ]
    check = services.check_no_public_plain_http
    assert violations(check, SERVICE, props, PRODUCTION) == [
        "Service model of type ClusterIP with externalIPs ['198.51.100.7'] "
        "serves plain HTTP on http:80"
    ]


def test_the_gateway_may_be_a_load_balancer() -> None:
    props = service("gateway", "LoadBalancer", HTTP)
    assert violations(services.check_internal_services, SERVICE, props) == []


# --- gateway-edge-in-production ------------------------------------------------------------------


def test_gateway_edge_passes_with_ranges_and_https() -> None:
    props = service("gateway", "LoadBalancer", HTTPS, loadBalancerSourceRanges=["203.0.113.0/24"])
    assert violations(services.check_gateway_edge, SERVICE, props, PRODUCTION) == []


def test_gateway_edge_without_ranges_or_tls_is_a_violation_in_production() -> None:
    props = service("gateway", "LoadBalancer", HTTP)
    assert violations(services.check_gateway_edge, SERVICE, props, PRODUCTION) == [
        "Service gateway: no loadBalancerSourceRanges (gateway.sourceRanges)",
        "Service gateway: no https port (gateway.tls)",
    ]
    assert violations(services.check_gateway_edge, SERVICE, props) == []


@pytest.mark.parametrize(
    "ranges",
    [
        ["0.0.0.0/0"],
        ["::/0"],
        ["::0/0"],  # another spelling
        ["10.1.2.3/0"],  # a host part, which the API server takes
        ["0.0.0.0/1", "128.0.0.0/1"],  # halves that together make it
        ["192.0.2.0/24", " 0.0.0.0/0"],
    ],
)
def test_gateway_edge_open_to_anyone_is_a_violation(ranges: list[str]) -> None:
    props = service("gateway", "LoadBalancer", HTTPS, loadBalancerSourceRanges=ranges)
    found = violations(services.check_gateway_edge, SERVICE, props, PRODUCTION)
    assert found == [f"Service gateway: loadBalancerSourceRanges admit anyone: {ranges}"]


def test_gateway_edge_open_to_part_of_the_internet_passes() -> None:
    ranges = ["0.0.0.0/1", "192.0.2.0/24", "2001:db8::/32"]
    props = service("gateway", "LoadBalancer", HTTPS, loadBalancerSourceRanges=ranges)
    assert violations(services.check_gateway_edge, SERVICE, props, PRODUCTION) == []


@pytest.mark.parametrize(
    ("kind", "spec", "exposure"),
    [
        ("ClusterIP", {}, "ClusterIP with externalIPs ['203.0.113.10']"),
        ("LoadBalancer", {"loadBalancerSourceRanges": ["198.51.100.0/24"]},
         "LoadBalancer with externalIPs ['203.0.113.10']"),
    ],
)  # fmt: skip
def test_a_gateway_behind_external_ips_is_refused_in_production(
    kind: str, spec: dict[str, Any], exposure: str
) -> None:
    """Every node's kube-proxy answers a Service's externalIPs, and no source range filters what
    reaches them: in production the gateway's edge is a LoadBalancer with ranges alone."""
    props = service("gateway", kind, HTTPS, externalIPs=["203.0.113.10"], **spec)
    edge = rule("gateway-edge-in-production").validate
    plain = rule("no-public-plain-http-in-production").validate
    found = [
        *violations(edge, SERVICE, props, PRODUCTION),
        *violations(plain, SERVICE, props, PRODUCTION),
    ]
    assert found == [
        f"Service gateway is of type {exposure}, which no source range restricts: make it a "
        "LoadBalancer with loadBalancerSourceRanges and no externalIPs "
        "(gateway.serviceType: LoadBalancer, gateway.sourceRanges)"
    ]
    assert violations(edge, SERVICE, props) == []


# --- no-public-plain-http-in-production ----------------------------------------------------------


def test_public_https_passes_and_internal_http_is_left_alone() -> None:
    check = services.check_no_public_plain_http
    assert violations(check, SERVICE, service("gateway", "LoadBalancer", HTTPS), PRODUCTION) == []
    assert violations(check, SERVICE, service("model", "ClusterIP", HTTP), PRODUCTION) == []


def test_public_plain_http_is_a_violation_in_production() -> None:
    props = service("gateway", "LoadBalancer", HTTP)
    check = services.check_no_public_plain_http
    assert violations(check, SERVICE, props, PRODUCTION) == [
        "Service gateway of type LoadBalancer serves plain HTTP on http:80"
    ]


@pytest.mark.parametrize("protocol", ["kubernetes.io/h2c", "kubernetes.io/ws", "HTTP"])
def test_public_plain_http_by_app_protocol_is_a_violation_in_production(protocol: str) -> None:
    """HTTP/2 and WebSocket in clear text (the model's gRPC port is marked kubernetes.io/h2c)
    carry a key as plainly as HTTP/1.1 on port 80."""
    ports = [*HTTPS, {"name": "grpc", "port": 8081, "appProtocol": protocol}]
    props = service("gateway", "LoadBalancer", ports)
    assert violations(services.check_no_public_plain_http, SERVICE, props, PRODUCTION) == [
        "Service gateway of type LoadBalancer serves plain HTTP on grpc:8081"
    ]
    tls = [*HTTPS, {"name": "grpcs", "port": 8443, "appProtocol": "kubernetes.io/wss"}]
    edge = service("gateway", "LoadBalancer", tls)
    assert violations(services.check_no_public_plain_http, SERVICE, edge, PRODUCTION) == []


# --- cloud clusters ------------------------------------------------------------------------------

POOL: Final[dict[str, Any]] = {
    "nodeConfig": {
        "serviceAccount": "nodes@p.iam.gserviceaccount.com",
        "oauthScopes": ["https://www.googleapis.com/auth/logging.write"],
    }
}


def test_gke_node_identity_passes_with_an_own_account_and_narrow_scopes() -> None:
    assert violations(clusters.check_gke_node_identity, clusters.GKE_NODE_POOL, POOL) == []


def test_gke_default_account_and_cloud_platform_scope_are_violations() -> None:
    pool = copy.deepcopy(POOL)
    pool["nodeConfig"]["serviceAccount"] = "123-compute@developer.gserviceaccount.com"
    pool["nodeConfig"]["oauthScopes"] = [clusters.CLOUD_PLATFORM_SCOPE]
    found = violations(clusters.check_gke_node_identity, clusters.GKE_NODE_POOL, pool)
    assert len(found) == 2
    assert "default service account" in found[0]
    assert "cloud-platform" in found[1]


def test_gke_cloud_platform_scope_by_its_short_name_is_a_violation() -> None:
    """The provider takes gcloud's short scope names and expands them: `cloud-platform` is the
    same scope as its URL."""
    pool = copy.deepcopy(POOL)
    pool["nodeConfig"]["oauthScopes"] = ["logging-write", "cloud-platform"]
    found = violations(clusters.check_gke_node_identity, clusters.GKE_NODE_POOL, pool)
    assert found == [f"x: nodes hold the {clusters.CLOUD_PLATFORM_SCOPE} scope"]


def test_gke_cluster_keeping_its_default_pool_is_held_to_the_same() -> None:
    cluster = {"removeDefaultNodePool": False, "nodeConfig": {}}
    found = violations(clusters.check_gke_node_identity, clusters.GKE_CLUSTER, cluster)
    assert found == ["x: nodes run as the Compute Engine default service account (unset)"]


def test_gke_private_nodes() -> None:
    private = {"privateClusterConfig": {"enablePrivateNodes": True}}
    assert violations(clusters.check_gke_private_nodes, clusters.GKE_CLUSTER, private) == []
    assert violations(clusters.check_gke_private_nodes, clusters.GKE_CLUSTER, {}) == [
        "x: privateClusterConfig.enablePrivateNodes is not true"
    ]


def test_gke_node_pool_with_public_nodes_is_a_violation() -> None:
    """A node pool may give its nodes public addresses in a cluster of private nodes."""
    check = clusters.check_gke_private_nodes
    assert violations(check, clusters.GKE_NODE_POOL, POOL) == []
    private = {**POOL, "networkConfig": {"enablePrivateNodes": True}}
    assert violations(check, clusters.GKE_NODE_POOL, private) == []
    public = {**POOL, "networkConfig": {"enablePrivateNodes": False}}
    assert violations(check, clusters.GKE_NODE_POOL, public) == [
        "x: networkConfig.enablePrivateNodes is false"
    ]
    cluster = {
        "privateClusterConfig": {"enablePrivateNodes": True},
        "nodePools": [{"name": "pool", "networkConfig": {"enablePrivateNodes": False}}],
    }
    assert violations(check, clusters.GKE_CLUSTER, cluster) == [
        "x: node pool pool: networkConfig.enablePrivateNodes is false"
    ]


def test_eks_secrets_encryption() -> None:
    check = clusters.check_eks_secrets_encryption
    keyed = {"encryptionConfigKeyArn": "arn:aws:kms:eu-west-1:1:key/k"}
    assert violations(check, clusters.EKS_COMPONENT, keyed) == []
    assert len(violations(check, clusters.EKS_COMPONENT, {})) == 1
    raw = {"encryptionConfig": {"provider": {"keyArn": "arn"}, "resources": ["secrets"]}}
    assert violations(check, clusters.EKS_CLUSTER, raw) == []
    assert len(violations(check, clusters.EKS_CLUSTER, {"encryptionConfig": {}})) == 1


def test_eks_imdsv2() -> None:
    check = clusters.check_eks_imdsv2
    required = {"metadataOptions": {"httpTokens": "required"}}
    assert violations(check, clusters.LAUNCH_TEMPLATE, required) == []
    optional = {"metadataOptions": {"httpTokens": "optional"}}
    assert len(violations(check, clusters.LAUNCH_TEMPLATE, optional)) == 1
    group = {"launchTemplate": {"id": "lt-1", "version": "1"}}
    assert violations(check, clusters.EKS_MANAGED_NODE_GROUP, group) == []
    assert len(violations(check, clusters.EKS_NODE_GROUP, {})) == 1


@pytest.mark.parametrize(
    ("props", "passes"),
    [
        ({"endpointPublicAccess": False}, True),
        ({"endpointPublicAccess": True, "publicAccessCidrs": ["192.0.2.0/28"]}, True),
        ({"endpointPublicAccess": True}, False),
        ({"publicAccessCidrs": ["0.0.0.0/0"]}, False),
        ({"publicAccessCidrs": ["0.0.0.0/1", "128.0.0.0/1"]}, False),
    ],
)
def test_eks_endpoint_access(props: dict[str, Any], passes: bool) -> None:
    found = violations(clusters.check_eks_endpoint_access, clusters.EKS_COMPONENT, props)
    assert (found == []) is passes


# --- advisory ------------------------------------------------------------------------------------


def test_replicas_in_production() -> None:
    check = availability.check_replicas_in_production
    assert violations(check, DEPLOYMENT, deployment(replicas=2), PRODUCTION) == []
    assert violations(check, DEPLOYMENT, deployment(replicas=1), PRODUCTION) == [
        "Deployment gateway: 1 replica(s), fewer than 2"
    ]
    assert violations(check, DEPLOYMENT, deployment(replicas=1)) == []
    alone = deployment(replicas=1, name="database")
    assert violations(check, STATEFUL_SET, alone, PRODUCTION) == [
        "StatefulSet database: 1 replica(s), fewer than 2"
    ]
    assert violations(check, "kubernetes:apps/v1:DaemonSet", alone, PRODUCTION) == []


def test_topology_spread() -> None:
    check = availability.check_topology_spread
    spread = deployment(topologySpreadConstraints=[{"maxSkew": 1}])
    assert violations(check, DEPLOYMENT, spread) == []
    assert violations(check, DEPLOYMENT, deployment()) == [
        "Deployment gateway: 2 replicas and no spread"
    ]
    assert violations(check, DEPLOYMENT, deployment(replicas=1)) == []
    assert violations(check, STATEFUL_SET, deployment(replicas=3, name="database")) == [
        "StatefulSet database: 3 replicas and no spread"
    ]


def test_disruption_budgets() -> None:
    budget = {
        "metadata": {"namespace": "ns"},
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "gateway"}}},
    }
    workload = stack_resource(DEPLOYMENT, deployment(), "gateway")
    found: list[str] = []

    def report(message: str, urn: str | None = None) -> None:
        found.append(message)

    with_budget = [
        workload,
        stack_resource("kubernetes:policy/v1:PodDisruptionBudget", budget, "b"),
    ]
    availability.check_disruption_budgets(StackValidationArgs(with_budget), report)
    assert found == []
    availability.check_disruption_budgets(StackValidationArgs([workload]), report)
    assert found == ["Deployment gateway: no PodDisruptionBudget selects its pods"]
    found.clear()
    instances = stack_resource(STATEFUL_SET, deployment(replicas=3, name="database"), "database")
    availability.check_disruption_budgets(StackValidationArgs([*with_budget, instances]), report)
    assert found == ["StatefulSet database: no PodDisruptionBudget selects its pods"]


# --- the pack as a whole -------------------------------------------------------------------------


def test_every_rule_the_issue_names_is_in_the_pack_with_its_enforcement() -> None:
    levels = {policy.name: policy.enforcement_level for policy in policies()}
    mandatory = {name for name, level in levels.items() if level == EnforcementLevel.MANDATORY}
    assert mandatory == {
        "pod-security-restricted",
        "container-resources",
        "container-probes",
        "image-by-digest",
        "no-external-model-or-database-service",
        "no-external-model-or-database-pods",
        "gateway-edge-in-production",
        "no-public-plain-http-in-production",
        "gke-node-identity",
        "gke-private-nodes",
        "eks-secrets-encryption",
        "eks-imdsv2",
        "eks-endpoint-access",
    }
    assert set(levels) - mandatory == {
        "replicas-in-production",
        "topology-spread",
        "pod-disruption-budget",
    }


def test_pack_config_files_name_only_policies_of_the_pack() -> None:
    names = {policy.name for policy in policies()}
    for path in (POLICY_PACK / "config").glob("*.json"):
        assert set(json.loads(path.read_text())) <= names, path.name


def test_every_stack_passes_every_rule_of_the_pack(stack_run: ProgramRun) -> None:
    """What the program registers for each stack, held to the pack with the stack's config:
    mandatory and advisory rules alike pass (so an advisory finding is news, not noise)."""
    assert pack_findings(stack_run) == []


def test_every_rule_is_described_by_its_checks_docstring_on_one_line() -> None:
    for policy in policies():
        assert policy.description, policy.name
        assert "\n" not in policy.description and "  " not in policy.description, policy.name


# --- resources that make several objects ---------------------------------------------------------


def rule(name: str) -> Any:
    """The pack's rule `name` as the engine runs it."""
    (found,) = [policy for policy in policies() if policy.name == name]
    return found


@pytest.mark.parametrize("kind", [DEPLOYMENT, STATEFUL_SET, "kubernetes:batch/v1:Job"])
def test_a_list_of_workloads_is_held_to_the_rules_item_by_item(kind: str) -> None:
    """`kubernetes:apps/v1:DeploymentList` and its kin make every one of their items."""
    privileged = container(securityContext={**container()["securityContext"], "privileged": True})
    items = {"items": [deployment(name="model"), deployment(privileged)]}
    check = rule("pod-security-restricted").validate
    assert violations(check, f"{kind}List", items) == [
        f"{kind.rsplit(':', 1)[-1]} gateway, container gateway: runs privileged"
    ]
    assert violations(rule("image-by-digest").validate, f"{kind}List", {"items": []}) == []


def test_a_list_of_services_is_held_to_the_rules_item_by_item() -> None:
    items = {
        "items": [service("gateway", "LoadBalancer", HTTP), service("model", "NodePort", HTTP)]
    }
    found = violations(
        rule("no-external-model-or-database-service").validate, f"{SERVICE}List", items
    )
    assert len(found) == 1
    assert found[0].startswith("Service model of model is of type NodePort")


def test_a_list_of_workloads_is_asked_for_disruption_budgets_item_by_item() -> None:
    found: list[str] = []

    def report(message: str, urn: str | None = None) -> None:
        found.append(message)

    workloads_list = stack_resource(f"{DEPLOYMENT}List", {"items": [deployment()]}, "apps")
    availability.check_disruption_budgets(StackValidationArgs([workloads_list]), report)
    assert found == ["Deployment gateway: no PodDisruptionBudget selects its pods"]


# --- values unknown at preview -------------------------------------------------------------------


def test_an_image_unknown_at_preview_does_not_hide_a_tag_beside_it() -> None:
    """A built image's digest comes from its push, so the engine hands the rule an unknown at
    preview: the rule still reports every image it can read, then says it could not read one (the
    engine turns that into its advisory "can't run policy ... during preview")."""
    built = container(image=UNKNOWN_STRING_VALUE)
    sidecar = container(name="sidecar", image="registry.example/sidecar:v1")
    for props in (
        deployment(built, sidecar),
        {"items": [deployment(built), deployment(sidecar, name="model")]},
    ):
        kind = DEPLOYMENT if "spec" in props else f"{DEPLOYMENT}List"
        found: list[str] = []

        def report(message: str, urn: str | None = None, found: list[str] = found) -> None:
            found.append(message)

        args = ResourceValidationArgs(
            kind, unknown_checking_proxy(props), "urn:x", "x", options(), None, PRODUCTION
        )
        with pytest.raises(UnknownValueError):
            rule("image-by-digest").validate(args, report)
        assert len(found) == 1, kind
        assert "container sidecar: image 'registry.example/sidecar:v1' is not pinned" in found[0]


@pytest.mark.parametrize("field", ["hostNetwork", "hostPID", "hostIPC"])
def test_a_shared_host_namespace_names_the_pod_field_to_change(field: str) -> None:
    props = deployment()
    props["spec"]["template"]["spec"][field] = True
    assert violations(workloads.check_pod_security, DEPLOYMENT, props) == [
        f"Deployment gateway, pod: {field} is true (the pod shares the node's namespace)"
    ]


def test_uid_0_is_a_violation_on_the_pod_or_a_container_even_with_run_as_non_root() -> None:
    """The restricted Pod Security Standard refuses runAsUser 0 wherever it is set, whatever
    runAsNonRoot says (and the kubelet would not start such a container)."""
    as_root = container(securityContext={**container()["securityContext"], "runAsUser": 0})
    assert violations(workloads.check_pod_security, DEPLOYMENT, deployment(as_root)) == [
        "Deployment gateway, container gateway: runAsUser is 0 (root)"
    ]
    pod_as_root = deployment(securityContext={"runAsNonRoot": True, "runAsUser": 0})
    assert violations(workloads.check_pod_security, DEPLOYMENT, pod_as_root) == [
        "Deployment gateway, pod: runAsUser is 0 (root)"
    ]
    high = deployment(
        container(securityContext={**container()["securityContext"], "runAsUser": 10001})
    )
    assert violations(workloads.check_pod_security, DEPLOYMENT, high) == []


def test_a_node_port_gateway_in_production_is_told_to_be_a_load_balancer() -> None:
    """The program makes a NodePort gateway on a production stack; source ranges restrict a
    LoadBalancer only (the config and the API server refuse them on a NodePort), so the rule asks
    for a LoadBalancer with them rather than for ranges the stack cannot set."""
    prod = stack_config("prod")
    gateway = {**prod["mlstack:gateway"], "serviceType": "NodePort"}
    with pytest.raises(ProgramExitError, match="source ranges restrict a LoadBalancer"):
        run_program("prod", {**prod, "mlstack:gateway": gateway})
    del gateway["sourceRanges"]
    run = run_program("prod", {**prod, "mlstack:gateway": gateway})
    assert [f for f in pack_findings(run) if f.startswith("gateway-edge")] == [
        "gateway-edge-in-production: Service gateway is of type NodePort, which no source range "
        "restricts: make it a LoadBalancer with loadBalancerSourceRanges "
        "(gateway.serviceType: LoadBalancer, gateway.sourceRanges)"
    ]


def test_a_service_that_selects_the_model_pods_is_the_model_s_whatever_its_labels() -> None:
    """What a Service exposes is the pods its selector picks, not what its own labels say."""
    props = service(
        "model-debug", "LoadBalancer", HTTP, selector={"app.kubernetes.io/name": "model"}
    )
    props["metadata"]["labels"] = {}
    assert violations(services.check_internal_services, SERVICE, props) == [
        "Service model-debug of model is of type LoadBalancer: "
        "the model and the database are reached from inside the cluster only (ClusterIP)"
    ]


def beside(run: ProgramRun, name: str, props: dict[str, Any], kind: str = SERVICE) -> ProgramRun:
    """`run` with one more Service (or `kind`), `name`, in the namespace of the stack's
    database."""
    namespace = run.one("StatefulSet", "database").metadata["namespace"]
    props = copy.deepcopy(props)
    props["metadata"] = {"name": name, "namespace": namespace, **props.get("metadata", {})}
    return dataclasses.replace(run, resources=[*run.resources, Registered(kind, name, props, None)])


def internal(found: list[str]) -> list[str]:
    return [f for f in found if f.startswith("no-external-model-or-database-")]


# The database's pods as Patroni labels them (components/database.py SCOPE_LABEL, ROLE_LABEL).
PRIMARY_PODS: Final = {"mlstack/database-cluster": "database", "mlstack/database-role": "primary"}
POSTGRES: Final = [{"name": "postgres", "port": 5432, "targetPort": "postgres"}]


def test_a_load_balancer_selecting_the_database_pods_by_patroni_s_labels_is_refused(
    stack_run: ProgramRun,
) -> None:
    """What a Service exposes is the pods its selector picks: the database's by the labels its
    template and Patroni give them, whatever the Service's name or its own labels."""
    pg = {"spec": {"type": "LoadBalancer", "selector": PRIMARY_PODS, "ports": POSTGRES}}
    found = internal(pack_findings(beside(stack_run, "pg-public", pg)))
    assert len(found) == 1, found
    assert "Service pg-public" in found[0] and "database" in found[0]
    alone = {"metadata": {"name": "pg-public"}, "spec": pg["spec"]}
    assert len(violations(services.check_internal_services, SERVICE, alone)) == 1


def test_a_load_balancer_selecting_every_pod_of_the_stack_is_refused(
    stack_run: ProgramRun,
) -> None:
    everything = {
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app.kubernetes.io/instance": stack_run.stack},
            "ports": HTTPS,
        }
    }
    found = internal(pack_findings(beside(stack_run, "everything", everything)))
    assert found == [
        "no-external-model-or-database-pods: Service everything of type LoadBalancer selects "
        "the pods of Deployment model, StatefulSet database: the model and the database are "
        "reached from inside the cluster only (ClusterIP)"
    ]
    patched = beside(stack_run, "everything", everything, f"{SERVICE}Patch")
    assert internal(pack_findings(patched)) == [
        "no-external-model-or-database-pods: ServicePatch everything of type LoadBalancer "
        "selects the pods of Deployment model, StatefulSet database: the model and the database "
        "are reached from inside the cluster only (ClusterIP)"
    ]


# What a selector of the labels a workload's controller adds to each pod picks: they are not in
# the pod template, but a selector picks the pods by them all the same.
BY_CONTROLLER_LABELS: Final = {
    "pod-name": ({"statefulset.kubernetes.io/pod-name": "database-0"}, ["StatefulSet database"]),
    "pod-index": ({"apps.kubernetes.io/pod-index": "0"}, ["StatefulSet database"]),
    # A Deployment's template hash picks the pods of one revision of any Deployment.
    "pod-template-hash": ({"pod-template-hash": "5d4f8b7c9"}, ["Deployment model"]),
    # Another StatefulSet's pod.
    "another-pod-name": ({"statefulset.kubernetes.io/pod-name": "cache-0"}, []),
}


@pytest.mark.parametrize("case", BY_CONTROLLER_LABELS)
def test_a_load_balancer_selecting_pods_by_their_controller_s_labels(
    stack_run: ProgramRun, case: str
) -> None:
    selector, selects = BY_CONTROLLER_LABELS[case]
    exposed = {"spec": {"type": "LoadBalancer", "selector": selector, "ports": POSTGRES}}
    found = internal(pack_findings(beside(stack_run, "by-controller", exposed)))
    assert [workload for workload in selects if any(workload in f for f in found)] == selects
    assert len(found) == len(selects[:1]), found


def test_a_service_selecting_other_pods_or_in_another_namespace_is_left_alone(
    stack_run: ProgramRun,
) -> None:
    other = {"spec": {"type": "LoadBalancer", "selector": {"app": "other"}, "ports": HTTPS}}
    assert internal(pack_findings(beside(stack_run, "other", other))) == []
    everything = {"app.kubernetes.io/instance": stack_run.stack}
    elsewhere = {
        "metadata": {"namespace": "elsewhere"},
        "spec": {"type": "LoadBalancer", "selector": everything},
    }
    assert internal(pack_findings(beside(stack_run, "elsewhere", elsewhere))) == []
    inside = {"spec": {"type": "ClusterIP", "selector": PRIMARY_PODS, "ports": POSTGRES}}
    assert internal(pack_findings(beside(stack_run, "pg-inside", inside))) == []
    none = {"spec": {"type": "LoadBalancer", "ports": POSTGRES}}  # endpoints of its own
    assert internal(pack_findings(beside(stack_run, "pg-manual", none))) == []


def test_the_pack_knows_the_labels_patroni_gives_the_database_pods() -> None:
    assert services.DATABASE_POD_LABELS == (
        database_component.SCOPE_LABEL,
        database_component.ROLE_LABEL,
    )


# --- Patch resources: held to what they set ------------------------------------------------------

DEPLOYMENT_PATCH: Final = f"{DEPLOYMENT}Patch"
SERVICE_PATCH: Final = f"{SERVICE}Patch"
# Every workload kind's Patch, with where it holds its pods' spec.
WORKLOAD_PATCHES: Final[dict[str, tuple[str, ...]]] = {
    f"{kind}Patch": path for kind, path in POD_TEMPLATE_PATHS.items()
}
# The workload kinds with a replica count of their own.
SCALED: Final = frozenset(
    {
        DEPLOYMENT,
        STATEFUL_SET,
        "kubernetes:apps/v1:ReplicaSet",
        "kubernetes:core/v1:ReplicationController",
    }
)
# The gateway's Service, by the name components/app.py gives its Microservice.
GATEWAY_SERVICE: Final = services.GATEWAY


def findings(resource_type: str, props: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """What every rule of the pack, mandatory or advisory, reports on one resource, as the engine
    runs it, with `config` for every rule."""
    found: list[str] = []
    for policy in policies():
        if isinstance(policy, ResourceValidationPolicy):
            for message in violations(policy.validate, resource_type, props, config):
                found.append(f"{policy.name}: {message}")
        elif isinstance(policy, StackValidationPolicy):
            name = policy.name

            def report(message: str, urn: str | None = None, name: str = name) -> None:
                found.append(f"{name}: {message}")

            resource = stack_resource(resource_type, props, "x")
            policy.validate(StackValidationArgs([resource], config), report)
    return found


def workload_patch(
    resource_type: str, *containers: dict[str, Any], name: str = "gateway", **spec: Any
) -> dict[str, Any]:
    """A workload Patch's props: its name, and the pod spec fields given, where its kind holds
    them; nothing else."""
    pod: dict[str, Any] = {**spec}
    if containers:
        pod["containers"] = list(containers)
    props: dict[str, Any] = {"metadata": {"name": name, "namespace": "ns"}}
    node = props
    for key in WORKLOAD_PATCHES[resource_type]:
        node = node.setdefault(key, {})
    node.update(pod)
    return props


def security(**context: Any) -> dict[str, Any]:
    """A patch's container that sets `securityContext` to `context` alone."""
    return {"name": "gateway", "securityContext": context}


@pytest.mark.parametrize(
    ("pod", "patched", "message"),
    [
        ({"hostNetwork": True}, None,
         "pod: hostNetwork is true (the pod shares the node's namespace)"),
        ({"hostPID": True}, None, "pod: hostPID is true (the pod shares the node's namespace)"),
        ({"hostIPC": True}, None, "pod: hostIPC is true (the pod shares the node's namespace)"),
        ({"securityContext": {"runAsUser": 0}}, None, "pod: runAsUser is 0 (root)"),
        ({"securityContext": {"runAsNonRoot": False}}, None, "pod: runAsNonRoot is not true"),
        ({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}, None,
         "pod: seccompProfile.type is not RuntimeDefault"),
        ({}, security(runAsUser=0), "container gateway: runAsUser is 0 (root)"),
        ({}, security(runAsNonRoot=False), "container gateway: runAsNonRoot is not true"),
        ({}, security(privileged=True), "container gateway: runs privileged"),
        ({}, security(allowPrivilegeEscalation=True),
         "container gateway: allowPrivilegeEscalation is not false"),
        ({}, security(readOnlyRootFilesystem=False),
         "container gateway: readOnlyRootFilesystem is not true"),
        ({}, security(capabilities={"add": ["SYS_ADMIN"]}),
         "container gateway: adds capabilities ['SYS_ADMIN']"),
        ({}, security(capabilities={"drop": ["NET_RAW"]}),
         "container gateway: capabilities.drop does not hold ALL"),
        ({}, security(seccompProfile={"type": "Unconfined"}),
         "container gateway: seccompProfile.type is not RuntimeDefault"),
    ],
)  # fmt: skip
def test_each_value_a_workload_patch_sets_that_pod_security_refuses_is_reported(
    pod: dict[str, Any], patched: dict[str, Any] | None, message: str
) -> None:
    """A Patch is a partial object: every value it sets is held to the standard, one finding each
    (what it leaves out is the object's, and not reported)."""
    props = workload_patch(DEPLOYMENT_PATCH, *([patched] if patched else []), **pod)
    assert findings(DEPLOYMENT_PATCH, props, {}) == [
        f"pod-security-restricted: DeploymentPatch gateway, {message}"
    ]


def test_a_patch_s_image_by_tag_is_reported() -> None:
    props = workload_patch(DEPLOYMENT_PATCH, {"name": "gateway", "image": "busybox:latest"})
    assert findings(DEPLOYMENT_PATCH, props, PRODUCTION) == [
        "image-by-digest: DeploymentPatch gateway, container gateway: image 'busybox:latest' "
        + unpinned("gateway")
    ]
    config = {**PRODUCTION, "allowedImages": ["busybox:latest"]}
    assert findings(DEPLOYMENT_PATCH, props, config) == []


@pytest.mark.parametrize("kind", sorted(WORKLOAD_PATCHES))
def test_every_workload_patch_is_held_to_the_rules_for_what_it_sets(kind: str) -> None:
    """A privileged container on the node's network, by a tag: each refused value, whichever
    workload kind the patch changes."""
    bad = {
        "name": "debug",
        "image": "busybox:latest",
        "securityContext": {"privileged": True},
    }
    props = workload_patch(kind, bad, hostNetwork=True)
    named = f"{kind.rsplit(':', 1)[-1]} gateway"
    assert findings(kind, props, PRODUCTION) == [
        f"pod-security-restricted: {named}, pod: hostNetwork is true "
        "(the pod shares the node's namespace)",
        f"pod-security-restricted: {named}, container debug: runs privileged",
        f"image-by-digest: {named}, container debug: image 'busybox:latest' " + unpinned("gateway"),
    ]


@pytest.mark.parametrize("kind", sorted(WORKLOAD_PATCHES))
def test_a_patch_that_sets_only_harmless_fields_has_no_finding(kind: str) -> None:
    """Replicas, an environment variable, an image by digest: what the patch leaves out
    (securityContext, resources, probes, spread) is the object's, which the patch keeps. The same
    fields as a whole object miss all of those."""
    harmless = {
        "name": "gateway",
        "image": "registry.example/gateway" + DIGEST,
        "env": [{"name": "LOG_LEVEL", "value": "debug"}],
    }
    props = workload_patch(kind, harmless, {"name": "sidecar", "env": []})
    whole = kind.removesuffix("Patch")
    if whole in SCALED:
        props["spec"]["replicas"] = 3
    for config in ({}, PRODUCTION):
        assert findings(kind, props, config) == [], config
    assert len(findings(whole, props, {})) > 5


def test_a_patch_that_sets_replicas_below_the_production_floor_is_reported() -> None:
    """The one advisory rule a patch answers to: the replica count it sets. Spread and budgets
    are the object's."""
    check = rule("replicas-in-production").validate
    low = {"metadata": {"name": "gateway"}, "spec": {"replicas": 1}}
    assert violations(check, DEPLOYMENT_PATCH, low, PRODUCTION) == [
        "DeploymentPatch gateway: 1 replica(s), fewer than 2"
    ]
    assert violations(check, DEPLOYMENT_PATCH, low) == []
    unset = {"metadata": {"name": "gateway"}, "spec": {"template": {"spec": {}}}}
    assert violations(check, DEPLOYMENT_PATCH, unset, PRODUCTION) == []
    many = {"metadata": {"name": "database"}, "spec": {"replicas": 3}}
    assert findings(f"{STATEFUL_SET}Patch", many, PRODUCTION) == []


def service_patch(name: str, **spec: Any) -> dict[str, Any]:
    """A ServicePatch's props: the Service's name (no labels, no selector) and `spec`."""
    return {"metadata": {"name": name, "namespace": "ns"}, "spec": spec}


@pytest.mark.parametrize(
    ("name", "app"),
    [
        (app_component.MODEL_SERVICE, "model"),
        (database_component.NAME, "database"),
        (database_component.READ_NAME, "database"),
        (database_component.HEADLESS_NAME, "database"),
    ],
)
@pytest.mark.parametrize(
    ("spec", "exposure"),
    [
        ({"type": "LoadBalancer"}, "LoadBalancer"),
        ({"type": "NodePort"}, "NodePort"),
        ({"externalIPs": ["198.51.100.7"]}, "ClusterIP with externalIPs ['198.51.100.7']"),
    ],
)
def test_a_service_patch_exposing_the_model_or_the_database_by_name_alone_is_reported(
    name: str, app: str, spec: dict[str, Any], exposure: str
) -> None:
    props = service_patch(name, **spec)
    assert findings(SERVICE_PATCH, props, {}) == [
        f"no-external-model-or-database-service: ServicePatch {name} of {app} is of type "
        f"{exposure}: the model and the database are reached from inside the cluster only "
        "(ClusterIP)"
    ]


def test_a_service_patch_that_keeps_the_model_internal_has_no_finding() -> None:
    harmless = service_patch(
        app_component.MODEL_SERVICE, type="ClusterIP", ports=[{"name": "grpc", "port": 8081}]
    )
    assert findings(SERVICE_PATCH, harmless, PRODUCTION) == []
    annotated = {"metadata": {"name": app_component.MODEL_SERVICE, "annotations": {"a": "b"}}}
    assert findings(SERVICE_PATCH, annotated, PRODUCTION) == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "NodePort"}, "ServicePatch gateway is of type NodePort, which no source range "
         "restricts: make it a LoadBalancer with loadBalancerSourceRanges "
         "(gateway.serviceType: LoadBalancer, gateway.sourceRanges)"),
        ({"loadBalancerSourceRanges": ["0.0.0.0/0"]},
         "ServicePatch gateway: loadBalancerSourceRanges admit anyone: ['0.0.0.0/0']"),
        ({"type": "LoadBalancer", "loadBalancerSourceRanges": []},
         "ServicePatch gateway: no loadBalancerSourceRanges (gateway.sourceRanges)"),
        ({"externalIPs": ["203.0.113.10"]},
         "ServicePatch gateway is of type ClusterIP with externalIPs ['203.0.113.10'], which no "
         "source range restricts: make it a LoadBalancer with loadBalancerSourceRanges and no "
         "externalIPs (gateway.serviceType: LoadBalancer, gateway.sourceRanges)"),
    ],
)  # fmt: skip
def test_a_service_patch_of_the_gateway_edge_is_held_to_what_it_sets(
    spec: dict[str, Any], message: str
) -> None:
    props = service_patch(GATEWAY_SERVICE, **spec)
    assert findings(SERVICE_PATCH, props, PRODUCTION) == [f"gateway-edge-in-production: {message}"]
    assert findings(SERVICE_PATCH, props, {}) == []


def test_a_service_patch_of_the_gateway_that_leaves_its_edge_alone_has_no_finding() -> None:
    """No ranges and no https port among what a patch sets is not a finding: the Service keeps
    its own (a patch's ports are merged into the Service's)."""
    for spec in (
        {},
        {"type": "LoadBalancer"},
        {"loadBalancerSourceRanges": ["203.0.113.0/24"]},
        {"ports": [{"name": "admin", "port": 9443}]},
    ):
        props = service_patch(GATEWAY_SERVICE, **spec)
        assert findings(SERVICE_PATCH, props, PRODUCTION) == [], spec


def test_a_service_patch_that_serves_plain_http_publicly_is_reported() -> None:
    props = service_patch(GATEWAY_SERVICE, type="LoadBalancer", ports=HTTP)
    assert findings(SERVICE_PATCH, props, PRODUCTION) == [
        "no-public-plain-http-in-production: ServicePatch gateway of type LoadBalancer "
        "serves plain HTTP on http:80"
    ]


def test_the_pack_knows_every_service_the_program_makes_by_name(stack_run: ProgramRun) -> None:
    """A patch need not carry labels: the pack recognises the program's Services by their names
    (services.SERVICE_APPS), which must be the names, and the apps, the program gives them."""
    made = {
        service.metadata["name"]: service.metadata["labels"][NAME_LABEL]
        for service in stack_run.of_kind("Service")
    }
    assert made == dict(services.SERVICE_APPS)
    named = {
        app_component.MODEL_SERVICE: "model",
        database_component.NAME: "database",
        database_component.READ_NAME: "database",
        database_component.HEADLESS_NAME: "database",
    }
    assert named.items() <= services.SERVICE_APPS.items()
