"""The production edge and what keeps pods healthy under it: HTTPS on the gateway, source ranges,
metrics off the public port, draining, zones, the database's probes and its governing Service."""

from __future__ import annotations

import re
from typing import Any

import pytest

from components import database
from components.app import METRICS_PORT
from components.config import GATEWAY_DRAIN_SECONDS, MODEL_DRAIN_SECONDS, LocalCluster
from components.microservice import SHUTDOWN_SECONDS
from harness.program import ProgramRun, run_program, stack_config
from tests.certificates import pem_pair
from tests.manifests import container, env, pod_spec, volumes
from tests.paths import ROOT
from tests.unit.configs import config_error, dev_with, existing_with, with_fields
from tests.unit.runs import secrets_digest
from tools.policy import KUBERNETES_VERSIONS

CERT, KEY = pem_pair()
RENEWED_CERT, RENEWED_KEY = pem_pair("mlstack-renewed")


@pytest.fixture(scope="module")
def prod() -> ProgramRun:
    return run_program("prod")


def test_prod_serves_https_only_from_its_tls_secret(prod: ProgramRun) -> None:
    service = prod.one("Service", "gateway").inputs["spec"]
    assert service["ports"] == [
        {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}
    ]
    workload = prod.one("Deployment", "gateway").inputs
    (spec,) = pod_spec(workload)["containers"]
    assert [p["name"] for p in spec["ports"]] == ["https", "metrics"]
    variables = env(spec)
    assert variables["TLS_CERT_FILE"] == "/etc/mlstack/tls/tls.crt"
    assert variables["TLS_KEY_FILE"] == "/etc/mlstack/tls/tls.key"
    assert volumes(workload)["tls"]["secret"]["secretName"] == "gateway-tls"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert spec[probe]["httpGet"]["scheme"] == "HTTPS"
    assert prod.outputs["gateway_url"] == "https://203.0.113.10:443"


def test_the_first_up_the_readme_gives_prod_leaves_out_its_gateway_pods_and_service(
    prod: ProgramRun,
) -> None:
    """The README's first `up` of a stack whose TLS Secret is made by hand excludes the URNs of
    the gateway's Deployment and of its Service, which would wait for the pods: the ones the
    program registers, however the components nest."""
    readme = (ROOT / "README.md").read_text()
    urns = re.findall(r"'(urn:pulumi:prod::[^']+)'", readme)
    assert urns == [prod.one("Deployment", "gateway").urn, prod.one("Service", "gateway").urn]


def test_prod_admits_only_its_source_ranges(prod: ProgramRun) -> None:
    service = prod.one("Service", "gateway").inputs["spec"]
    assert (
        service["loadBalancerSourceRanges"]
        == stack_config("prod")["mlstack:gateway"]["sourceRanges"]
    )


def test_tls_from_stack_secrets_becomes_a_tls_secret() -> None:
    config = existing_with(gateway={"replicas": 1, "tls": {}})
    config["mlstack:gatewayTlsCert"] = CERT
    config["mlstack:gatewayTlsKey"] = KEY
    run = run_program("dev", config)
    secret = run.one("Secret", "gateway-tls")
    assert secret.inputs["type"] == "kubernetes.io/tls"
    assert secret.inputs["stringData"] == {"tls.crt": CERT, "tls.key": KEY}
    assert secret.secret_paths == ["stringData"]
    # The gateway's own Secret keeps its keys only; a new certificate rolls the gateway.
    gateway = run.one("Secret", "gateway").inputs["stringData"]
    assert set(gateway) == {"api-key", "database-url", "database-read-url"}
    config["mlstack:gatewayTlsCert"] = RENEWED_CERT
    config["mlstack:gatewayTlsKey"] = RENEWED_KEY
    renewed = run_program("dev", config)
    gateway_pods = ("Deployment", "gateway")
    assert secrets_digest(renewed, *gateway_pods) != secrets_digest(run, *gateway_pods)
    assert run.one("Service", "gateway").inputs["spec"]["ports"][0]["port"] == 443


def test_without_tls_the_gateway_stays_on_plain_http(prod: ProgramRun) -> None:
    run = run_program("dev")
    (port,) = run.one("Service", "gateway").inputs["spec"]["ports"]
    assert (port["name"], port["port"]) == ("http", 80)
    assert not [s for s in run.of_kind("Secret") if s.metadata["name"] == "gateway-tls"]


def test_metrics_have_a_port_the_service_never_exposes(prod: ProgramRun) -> None:
    spec = container(prod.one("Deployment", "gateway").inputs)
    assert env(spec)["METRICS_PORT"] == str(METRICS_PORT)
    for service in prod.of_kind("Service"):
        ports = service.inputs["spec"]["ports"]
        assert METRICS_PORT not in [p["port"] for p in ports]
        assert "metrics" not in [p.get("targetPort") for p in ports]


def test_metrics_are_reachable_only_from_the_namespaces_the_stack_names(
    prod: ProgramRun,
) -> None:
    policy = prod.one("NetworkPolicy", "gateway-metrics").inputs["spec"]
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"port": METRICS_PORT, "protocol": "TCP"}]
    (peer,) = rule["from"]
    assert peer["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["monitoring"]}
    ]
    public = prod.one("NetworkPolicy", "gateway-from-any").inputs["spec"]
    assert [p["port"] for p in public["ingress"][0]["ports"]] != [METRICS_PORT]
    dev = run_program("dev")
    assert not [p for p in dev.of_kind("NetworkPolicy") if "metrics" in p.metadata["name"]]


def test_the_gateway_drains_before_it_stops(prod: ProgramRun) -> None:
    pod = pod_spec(prod.one("Deployment", "gateway").inputs)
    (spec,) = pod["containers"]
    assert spec["lifecycle"]["preStop"] == {"sleep": {"seconds": GATEWAY_DRAIN_SECONDS}}
    assert pod["terminationGracePeriodSeconds"] == GATEWAY_DRAIN_SECONDS + SHUTDOWN_SECONDS


def test_the_model_drains_until_kube_proxy_has_stopped_sending(prod: ProgramRun) -> None:
    pod = pod_spec(prod.one("Deployment", "model").inputs)
    (spec,) = pod["containers"]
    assert spec["lifecycle"]["preStop"] == {"sleep": {"seconds": MODEL_DRAIN_SECONDS}}
    assert pod["terminationGracePeriodSeconds"] == MODEL_DRAIN_SECONDS + SHUTDOWN_SECONDS


def test_the_drain_is_the_stack_s_own_where_it_says() -> None:
    """A single node's kube-proxy stops sending within a second: such a stack may drain for
    less than a cloud load balancer needs; nothing but the drain changes."""
    config = with_fields(stack_config("dev"), "gateway", drainSeconds=5)
    pod = pod_spec(run_program("dev", config).one("Deployment", "gateway").inputs)
    (spec,) = pod["containers"]
    assert spec["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert pod["terminationGracePeriodSeconds"] == 5 + SHUTDOWN_SECONDS


@pytest.mark.parametrize("seconds", [0, 301, 2.5, "30", True])
def test_a_drain_out_of_range_names_key_value_and_rule(seconds: Any) -> None:
    message = config_error(with_fields(stack_config("dev"), "gateway", drainSeconds=seconds))
    assert message.startswith("mlstack:gateway.drainSeconds: ")
    assert "whole number from 1 to 300" in message


def test_every_container_requests_and_limits_ephemeral_storage(prod: ProgramRun) -> None:
    workloads = prod.of_kind("Deployment") + prod.of_kind("StatefulSet") + prod.of_kind("Job")
    # gateway, model, the database's instances and their backups, and the gateway's migrations
    names = []
    for workload in workloads:
        spec = pod_spec(workload.inputs)
        for each in [*(spec.get("initContainers") or []), *spec["containers"]]:
            names.append(each["name"])
            assert "ephemeral-storage" in each["resources"]["requests"], each["name"]
            assert "ephemeral-storage" in each["resources"]["limits"], each["name"]
    assert sorted(names) == ["backups", "gateway", "gateway-migrate", "model", "postgres"]


def test_pod_security_is_pinned_to_the_oldest_supported_minor(prod: ProgramRun) -> None:
    (namespace,) = prod.of_kind("Namespace")
    labels = namespace.metadata["labels"]
    # The oldest release the policy gate validates against, which the local k3s runs.
    assert labels["pod-security.kubernetes.io/enforce-version"] == f"v{KUBERNETES_VERSIONS[0]}"
    assert LocalCluster().k3s_image.startswith(f"rancher/k3s:v{KUBERNETES_VERSIONS[0]}.")


def test_cloud_replicas_spread_over_zones_and_hosts(prod: ProgramRun) -> None:
    for name in ("gateway", "model"):
        spec = pod_spec(prod.one("Deployment", name).inputs)
        keys = [c["topologyKey"] for c in spec["topologySpreadConstraints"]]
        assert keys == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
        assert {c["whenUnsatisfiable"] for c in spec["topologySpreadConstraints"]} == {
            "ScheduleAnyway"
        }
    config = existing_with(gateway={"replicas": 2})
    spec = pod_spec(run_program("dev", config).one("Deployment", "gateway").inputs)
    keys = [c["topologyKey"] for c in spec["topologySpreadConstraints"]]
    assert keys == ["kubernetes.io/hostname"]


def test_database_probes_tell_recovery_from_death(prod: ProgramRun) -> None:
    """Patroni answers the probes, not PostgreSQL: alive while its loop runs, however long a
    crash recovery or a standby's first copy of the primary takes (alive, not ready, then)."""
    spec = container(prod.one("StatefulSet", "database").inputs)
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    assert ports == {"postgres": database.PORT, "patroni": database.API_PORT}
    startup, ready, alive = (
        spec[p]["httpGet"] for p in ("startupProbe", "readinessProbe", "livenessProbe")
    )
    assert startup == alive == {"path": "/liveness", "port": "patroni"}
    assert ready == {"path": "/readiness", "port": "patroni"}
    assert "initialDelaySeconds" not in spec["livenessProbe"]
    assert not any("exec" in spec[p] for p in ("startupProbe", "readinessProbe", "livenessProbe"))


def test_database_is_governed_by_a_headless_service(prod: ProgramRun) -> None:
    stateful_set = prod.one("StatefulSet", "database").inputs["spec"]
    headless = prod.one("Service", stateful_set["serviceName"]).inputs["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["publishNotReadyAddresses"] is True
    assert prod.one("Service", "database").inputs["spec"]["type"] == "ClusterIP"


@pytest.mark.parametrize(
    ("overrides", "secrets", "expected"),
    [
        (
            {"gateway": {"sourceRanges": ["10.0.0.1/8"]}},
            {},
            'mlstack:gateway.sourceRanges: "10.0.0.1/8" is not allowed: expected CIDRs',
        ),
        (
            {"gateway": {"serviceType": "ClusterIP", "sourceRanges": ["10.0.0.0/8"]}},
            {},
            "source ranges restrict a LoadBalancer, and gateway.serviceType is ClusterIP",
        ),
        (
            {"gateway": {"tls": {"secretName": "gateway-tls"}}},
            {"gatewayTlsCert": CERT},
            "mlstack:gateway.tls.secretName and mlstack:gatewayTlsCert are both set",
        ),
        ({}, {"gatewayTlsKey": KEY}, "mlstack:gatewayTlsKey is set but mlstack:gateway.tls is not"),
        ({"gateway": {"tls": {}}}, {}, "mlstack:gatewayTlsCert is missing"),
        (
            {"gateway": {"tls": {}}},
            {"gatewayTlsCert": "not a certificate", "gatewayTlsKey": KEY},
            "mlstack:gatewayTlsCert is not PEM",
        ),
        (
            {"gateway": {"tls": {"secretName": "Gateway TLS"}}},
            {},
            'mlstack:gateway.tls.secretName: "Gateway TLS" is not allowed',
        ),
        (
            {"gateway": {"tls": {"secret": "x"}}},
            {},
            'mlstack:gateway.tls: unknown key "secret" (did you mean "secretName"?)',
        ),
        (
            {"model": {"serviceType": "LoadBalancer"}},
            {},
            'mlstack:model.serviceType: "LoadBalancer" is not allowed: the model is reachable '
            "only from the gateway",
        ),
        (
            {"gateway": {"metricsNamespaces": ["Monitoring"]}},
            {},
            'mlstack:gateway.metricsNamespaces: "Monitoring" is not allowed',
        ),
    ],
)
def test_edge_mistakes_are_one_line(
    overrides: dict[str, Any], secrets: dict[str, str], expected: str
) -> None:
    config = existing_with(**overrides)
    for key, value in secrets.items():
        config[f"mlstack:{key}"] = value
    assert expected in config_error(config)


def test_tls_on_the_local_cluster_is_refused() -> None:
    config = dev_with(gateway={"tls": {"secretName": "gateway-tls"}})
    assert "the local cluster publishes the gateway's plain HTTP port only" in config_error(config)
