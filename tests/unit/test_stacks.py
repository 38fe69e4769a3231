"""Each stack file, evaluated under the mocks, produces what it says."""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from components import image, rollout
from components.database import BACKUP_CLAIM
from components.image import SERVICES_DIR
from components.stack_file import stacks
from harness.program import (
    LB_ADDRESS,
    TEST_SECRETS,
    ProgramRun,
    Registered,
    run_program,
    stack_config,
)
from tests.manifests import container, env
from tests.unit.configs import PREBUILT_IMAGES, dev_with, existing_with, with_fields
from tests.unit.runs import by_name, differences

STACKS = stacks()
RECOMMENDED = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
)


@pytest.fixture(scope="module")
def dev() -> ProgramRun:
    return run_program("dev")


@pytest.fixture(scope="module")
def prod() -> ProgramRun:
    return run_program("prod")


def kubernetes_objects(run: ProgramRun, *, read: bool = False) -> list[Registered]:
    """The Kubernetes objects the program makes; with `read`, also those it only reads from the
    cluster (`Resource.get`: the API server's EndpointSlice), which are none of its own."""
    return [
        r
        for r in run.resources
        if r.type.startswith("kubernetes:") and "Provider" not in r.type and (read or not r.read)
    ]


def test_every_stack_file_follows_the_contract() -> None:
    assert {"dev", "prod"} <= set(STACKS)


def test_dev_runs_one_replica_of_each_on_a_local_cluster(dev: ProgramRun) -> None:
    assert dev.one("Deployment", "gateway").inputs["spec"]["replicas"] == 1
    assert dev.one("Deployment", "model").inputs["spec"]["replicas"] == 1
    assert dev.one("StatefulSet", "database").inputs["spec"]["replicas"] == 1
    assert [r.name for r in dev.by_type("docker:index/container:Container")] == [
        "mlstack-dev-registry",
        "mlstack-dev-k3s",
    ]
    # One pod each: no budget for the gateway or the model (the database's is there whatever its
    # number of instances: test_database_patroni.py).
    budgets = [b.metadata["name"] for b in dev.of_kind("PodDisruptionBudget")]
    assert budgets == ["database"]


def test_the_local_cluster_s_objects_follow_its_k3s_volume_not_its_container(
    dev: ProgramRun,
) -> None:
    """A k3s container replaced (a new image or port) leaves the kubeconfig unknown at preview,
    and pulumi-kubernetes replaces a provider whose kubeconfig is unknown, and every object on
    it, unless a cluster identifier stays the same: the volume the cluster's state is in."""
    (volume,) = [
        v for v in dev.by_type("docker:index/volume:Volume") if v.inputs["name"].endswith("-k3s")
    ]
    (provider,) = dev.by_type("pulumi:providers:kubernetes")
    assert provider.inputs["clusterIdentifier"] == volume.inputs["name"] == "mlstack-dev-k3s"


def test_prod_replicas_and_service_types_come_from_its_stack_file(prod: ProgramRun) -> None:
    config = stack_config("prod")
    for name in ("gateway", "model"):
        wanted = config[f"mlstack:{name}"]
        assert prod.one("Deployment", name).inputs["spec"]["replicas"] == wanted["replicas"]
        assert prod.one("Service", name).inputs["spec"]["type"] == wanted["serviceType"]
        budget = prod.one("PodDisruptionBudget", name).inputs["spec"]
        assert budget["maxUnavailable"] == 1
    assert prod.by_type("gcp:container/cluster:Cluster")
    assert prod.by_type("docker:index/container:Container") == []


def test_every_kubernetes_object_carries_the_recommended_labels(stack_run: ProgramRun) -> None:
    for obj in kubernetes_objects(stack_run):
        labels = obj.metadata.get("labels") or {}
        missing = [key for key in RECOMMENDED if key not in labels]
        assert not missing, f"{obj.kind} {obj.metadata.get('name')} lacks {missing}"
        assert labels["app.kubernetes.io/instance"] == stack_run.stack
        assert labels["app.kubernetes.io/part-of"] == "mlstack"
        assert labels["app.kubernetes.io/managed-by"] == "pulumi"


def test_workloads_are_named_after_their_service(stack_run: ProgramRun) -> None:
    for kind, name in (("Deployment", "gateway"), ("Deployment", "model")):
        obj = stack_run.one(kind, name)
        assert obj.metadata["labels"]["app.kubernetes.io/name"] == name
    database = stack_run.one("StatefulSet", "database")
    assert database.metadata["labels"]["app.kubernetes.io/name"] == "database"


def test_every_resource_uses_the_cluster_provider(stack_run: ProgramRun) -> None:
    # What it reads too: the API server's address must be the stack's own cluster's.
    read = sorted(r.kind for r in kubernetes_objects(stack_run, read=True) if r.read)
    assert read == ["EndpointSlice", "Service"]
    providers = {r.provider for r in kubernetes_objects(stack_run, read=True)}
    assert len(providers) == 1
    (provider,) = providers
    assert provider is not None and "pulumi:providers:kubernetes" in provider


def test_namespace_enforces_the_restricted_pod_security_standard(stack_run: ProgramRun) -> None:
    (namespace,) = stack_run.of_kind("Namespace")
    assert namespace.metadata["name"] == f"mlstack-{stack_run.stack}"
    assert namespace.metadata["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    # Besides the Namespace, in no namespace: EKS's default StorageClass, the cluster's own, and
    # the database's scale-in policy, named after the namespace.
    cluster_wide = (
        "Namespace",
        "StorageClass",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    )
    namespaced = [o for o in kubernetes_objects(stack_run) if o.kind not in cluster_wide]
    assert all(o.metadata["namespace"] == f"mlstack-{stack_run.stack}" for o in namespaced)


@pytest.mark.parametrize(
    ("name", "live", "ready"),
    [("gateway", "/healthz", "/readyz"), ("model", "/v2/health/live", "/v2/health/ready")],
)
def test_services_have_probes_resources_and_a_restricted_context(
    stack_run: ProgramRun, name: str, live: str, ready: str
) -> None:
    spec = container(stack_run.one("Deployment", name).inputs)
    if name == "model":
        # The model's liveness asks its gRPC server's grpc.health.v1 (see the next test).
        assert spec["livenessProbe"]["grpc"] == {"port": 8081}
    else:
        assert spec["livenessProbe"]["httpGet"]["path"] == live
    assert spec["readinessProbe"]["httpGet"]["path"] == ready
    assert spec["startupProbe"]["httpGet"]["path"] == live
    assert set(spec["resources"]["requests"]) == {"cpu", "memory", "ephemeral-storage"}
    assert set(spec["resources"]["limits"]) == {"cpu", "memory", "ephemeral-storage"}
    context = spec["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["runAsNonRoot"] is True
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["seccompProfile"]["type"] == "RuntimeDefault"


def test_model_serves_grpc_on_a_named_port_that_its_service_carries(
    stack_run: ProgramRun,
) -> None:
    spec = container(stack_run.one("Deployment", "model").inputs)
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    assert ports == {"http": 8080, "grpc": 8081}
    variables = env(spec)
    assert (variables["PORT"], variables["GRPC_PORT"]) == ("8080", "8081")
    assert spec["livenessProbe"]["grpc"]["port"] == ports["grpc"]
    service_ports = stack_run.one("Service", "model").inputs["spec"]["ports"]
    grpc_port = next(p for p in service_ports if p["name"] == "grpc")
    assert (grpc_port["port"], grpc_port["targetPort"]) == (8081, "grpc")
    assert grpc_port["appProtocol"] == "kubernetes.io/h2c"
    gateway = container(stack_run.one("Deployment", "gateway").inputs)
    assert "grpc" not in [p["name"] for p in gateway["ports"]]
    gateway_service = stack_run.one("Service", "gateway").inputs["spec"]["ports"]
    assert "grpc" not in [p["name"] for p in gateway_service]


def test_the_config_wins_back_fields_changed_out_of_band(stack_run: ProgramRun) -> None:
    for name in ("gateway", "model"):
        annotations = stack_run.one("Deployment", name).metadata["annotations"]
        assert annotations[rollout.PATCH_FORCE] == "true"


def test_each_service_selects_exactly_its_deployment_s_pods(stack_run: ProgramRun) -> None:
    for name in ("gateway", "model"):
        spec = stack_run.one("Deployment", name).inputs["spec"]
        selector = stack_run.one("Service", name).inputs["spec"]["selector"]
        assert selector == spec["selector"]["matchLabels"]
        assert selector.items() <= spec["template"]["metadata"]["labels"].items()


def test_rolling_updates_never_drop_below_the_configured_replicas(stack_run: ProgramRun) -> None:
    for name in ("gateway", "model"):
        strategy = stack_run.one("Deployment", name).inputs["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate"
        assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_a_disruption_budget_never_holds_a_drain_up_for_pods_that_are_not_ready(
    stack_run: ProgramRun,
) -> None:
    """A gateway or model pod that is not Ready serves nothing, so evicting it costs no
    capacity: with the default policy (IfHealthyBudget) a service whose pods are all failing
    (a bad image, crash loops) would block every node drain and node upgrade until it recovers."""
    budgets = [
        budget
        for budget in stack_run.of_kind("PodDisruptionBudget")
        if budget.metadata["name"] in ("gateway", "model")
    ]
    for budget in budgets:
        assert budget.inputs["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_database_is_one_statefulset_on_claims_of_its_own(stack_run: ProgramRun) -> None:
    config = stack_config(stack_run.stack)["mlstack:database"]
    replicas = config.get("replicas", 1)
    (database,) = stack_run.of_kind("StatefulSet")
    assert database.metadata["name"] == "database"
    assert database.inputs["spec"]["replicas"] == replicas
    (template,) = database.inputs["spec"]["volumeClaimTemplates"]
    assert template["metadata"]["name"] == "data"
    assert template["spec"]["resources"]["requests"]["storage"] == config["storageSize"]
    # The StatefulSet adopts each claim by name: one per instance, as its template would make it.
    claims = {
        c.metadata["name"]: c
        for c in stack_run.of_kind("PersistentVolumeClaim")
        # A volume backup repository's (tests/unit/test_backup_repository.py).
        if c.metadata["name"] != BACKUP_CLAIM
    }
    assert sorted(claims) == [f"data-database-{index}" for index in range(replicas)]
    for claim in claims.values():
        assert claim.inputs["spec"] == template["spec"]
    spec = container(database.inputs)
    variables = env(spec)
    for variable in (
        "DATABASE_OWNER_PASSWORD_FILE",
        "DATABASE_GATEWAY_PASSWORD_FILE",
        "DATABASE_REPLICATION_PASSWORD_FILE",
        "DATABASE_REWIND_PASSWORD_FILE",
    ):
        assert variables[variable].startswith("/etc/mlstack/secrets/"), variable


def test_secrets_live_only_in_kubernetes_secrets(stack_run: ProgramRun) -> None:
    for obj in stack_run.resources:
        if obj.kind == "Secret":
            continue
        text = json.dumps(obj.inputs, default=str)
        for secret in TEST_SECRETS.values():
            assert secret not in text, f"{obj.type} {obj.name} holds a secret in plain text"
    gateway = stack_run.one("Secret", "gateway").inputs["stringData"]
    assert gateway["api-key"] == TEST_SECRETS["mlstack:apiKey"]
    assert TEST_SECRETS["mlstack:databasePassword"] in gateway["database-url"]
    migrations = stack_run.one("Secret", "gateway-migrations").inputs["stringData"]
    assert TEST_SECRETS["mlstack:databaseOwnerPassword"] in migrations["database-url"]
    # The database Secret's keys and values: test_database_patroni, over the same stacks.
    assert {s.metadata["name"] for s in stack_run.of_kind("Secret")} >= {
        "gateway",
        "gateway-migrations",
        "database",
    }
    for stored in stack_run.of_kind("Secret"):
        assert stored.secret_paths == ["stringData"], stored.metadata["name"]
    outputs = json.dumps(stack_run.outputs, default=str)
    for key, secret in TEST_SECRETS.items():
        assert secret not in outputs, key


def test_outputs_and_which_are_secret(stack_run: ProgramRun) -> None:
    assert set(stack_run.outputs) == {"gateway_url", "namespace", "kubeconfig", "images"}
    assert stack_run.secret_outputs == {"kubeconfig"}
    assert stack_run.outputs["namespace"] == f"mlstack-{stack_run.stack}"
    images = stack_run.outputs["images"]
    assert set(images) == {"gateway", "model", "database"}
    assert "@sha256:" in images["gateway"], "built images are deployed by digest"
    deployed = container(stack_run.one("Deployment", "gateway").inputs)["image"]
    assert deployed == images["gateway"]


def test_gateway_url_uses_the_load_balancer_address(prod: ProgramRun) -> None:
    assert prod.outputs["gateway_url"] == f"https://{LB_ADDRESS}:443"


def test_local_gateway_url_is_the_published_port(dev: ProgramRun) -> None:
    assert dev.outputs["gateway_url"] == "http://localhost:8088"


def test_gateway_url_is_guarded_while_the_load_balancer_has_no_address() -> None:
    run = run_program("prod", load_balancer_ready=False)
    assert run.outputs["gateway_url"] == "pending: the LoadBalancer has no address yet"


def test_network_policies_let_only_the_gateway_reach_model_and_database(
    stack_run: ProgramRun,
) -> None:
    policies = {p.metadata["name"]: p.inputs["spec"] for p in stack_run.of_kind("NetworkPolicy")}
    assert policies["default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for target, port in (("model", 8080), ("database", 5432)):
        (rule,) = policies[f"{target}-from-gateway"]["ingress"]
        (peer,) = rule["from"]
        assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "gateway"
        assert rule["ports"] == [{"port": port, "protocol": "TCP"}]
    public = [name for name in policies if name.endswith("-from-any")]
    assert public == ["gateway-from-any"]


def test_fifty_model_replicas() -> None:
    # A fixed count: prod's autoscaler would bound the floor at MAX_AUTOSCALED_REPLICAS.
    config = stack_config("prod")
    model = {k: v for k, v in config["mlstack:model"].items() if k != "autoscaling"}
    config["mlstack:model"] = {**model, "replicas": 50}
    run = run_program("prod", config)
    assert run.one("Deployment", "model").inputs["spec"]["replicas"] == 50
    assert run.one("PodDisruptionBudget", "model").inputs["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("service_type", ["LoadBalancer", "ClusterIP", "NodePort"])
def test_every_gateway_service_type(service_type: str) -> None:
    run = run_program("dev", dev_with(gateway={"replicas": 2, "serviceType": service_type}))
    assert run.one("Service", "gateway").inputs["spec"]["type"] == service_type
    url = run.outputs["gateway_url"]
    expected = {
        "LoadBalancer": "http://localhost:8088",
        "ClusterIP": "http://gateway.mlstack-dev.svc.cluster.local:80",
        "NodePort": "http://<node-address>:30080",
    }
    assert url == expected[service_type]


def test_changing_the_model_version_rolls_only_the_model() -> None:
    """dev's own version, then v1: the model's pods are given the version each run names, and no
    other input of any resource changes."""
    config = stack_config("dev")
    assert config["mlstack:model"]["version"] != "v1", "dev must name another version than v1"
    before = run_program("dev", config)
    after = run_program("dev", with_fields(config, "model", version="v1"))
    versions = [
        env(container(run.one("Deployment", "model").inputs))["MODEL_VERSION"]
        for run in (before, after)
    ]
    assert versions == [config["mlstack:model"]["version"], "v1"]
    old, new = by_name(before), by_name(after)
    assert old.keys() == new.keys()
    changed = {
        key: found for key in old if (found := differences(old[key].inputs, new[key].inputs))
    }
    assert list(changed) == ["Deployment model"]
    assert all(path.startswith("spec.template.") for path in changed["Deployment model"])


def test_prebuilt_images_are_deployed_exactly_as_given() -> None:
    refs = {
        "gateway": "ghcr.io/acme/gateway:1.2@sha256:" + "a" * 64,
        "model": "ghcr.io/acme/model:1.2@sha256:" + "b" * 64,
        "database": "ghcr.io/acme/database:1.2@sha256:" + "c" * 64,
    }
    run = run_program("dev", existing_with(images={"build": False, **refs}))
    assert run.by_type("docker:index/image:Image") == []
    for name in ("gateway", "model"):
        assert container(run.one("Deployment", name).inputs)["image"] == refs[name]
    assert container(run.one("StatefulSet", "database").inputs)["image"] == refs["database"]
    assert run.outputs["images"] == refs


def test_the_database_image_is_the_project_s_own_built_like_the_others(dev: ProgramRun) -> None:
    built = {
        image.inputs["imageName"].rpartition("/")[2].partition(":")[0]: image
        for image in dev.by_type("docker:index/image:Image")
    }
    assert set(built) == {"gateway", "model", "database"}
    assert built["database"].inputs["build"]["dockerfile"] == str(
        SERVICES_DIR / "database" / "Dockerfile"
    )
    assert built["database"].inputs["build"]["context"] == str(SERVICES_DIR)
    # The gateway and the model: their stage of the Dockerfile they share.
    for service in ("gateway", "model"):
        build = built[service].inputs["build"]
        assert build["dockerfile"] == str(SERVICES_DIR / "Dockerfile")
        assert build["target"] == service
        assert build["args"] == {"SERVICE": service}
        assert build["context"] == str(SERVICES_DIR)
    database = container(dev.one("StatefulSet", "database").inputs)
    assert database["image"] == dev.outputs["images"]["database"]
    assert database["image"].startswith("localhost:5001/database@sha256:")
    assert database["imagePullPolicy"] == "IfNotPresent"


def test_built_images_are_tagged_with_the_project_and_the_stack(dev: ProgramRun) -> None:
    """Two copies of the project pushing their `dev` to one registry move no tag of each
    other's; a tag longer than a registry takes is cut, and kept apart by a digest."""
    assert {built.inputs["imageName"] for built in dev.by_type("docker:index/image:Image")} == {
        f"localhost:5001/{service}:mlstack-dev" for service in ("gateway", "model", "database")
    }
    # A project's name and a stack's may each be 100 characters long.
    project, stack = "p" * 60, "s" * 80
    cut = image.tag(project, stack)
    assert len(cut) == image.MAX_TAG_LENGTH
    assert cut.startswith(f"{project}-sss")
    assert cut != image.tag(project, stack + "t")
    assert image.tag(project, "s" * 67) == f"{project}-{'s' * 67}"
    assert image.tag(".ml", "dev") == "_.ml-dev"


def test_a_prebuilt_database_image_by_tag_is_pulled_every_time() -> None:
    config = existing_with(images={**PREBUILT_IMAGES, "database": "registry.internal/database:1.2"})
    database = container(run_program("dev", config).one("StatefulSet", "database").inputs)
    assert (database["image"], database["imagePullPolicy"]) == (
        "registry.internal/database:1.2",
        "Always",
    )


# The interpreter's audit events for what the program may not do while it is evaluated: reach
# the network (Docker's socket included) or start a process, and, for the events that name a
# path, touch one under HOME (where ~/.kube/config and the local cluster's folder are).
REACHING_OUT: Final = frozenset(
    {"socket.connect", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn"}
)
TOUCHING_A_PATH: Final = frozenset({"open", "os.listdir", "os.scandir", "os.mkdir"})
# The auditors of the tests under way; sys.addaudithook cannot be undone, so it is added once.
_AUDITORS: list[Callable[[str, tuple[Any, ...]], None]] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    for auditor in _AUDITORS:
        auditor(event, args)


@functools.cache
def _audit_hook() -> None:
    sys.addaudithook(_audit)


class Outside:
    """What the program did beyond its own process and the project's files: each connection,
    process and path under `home` it tried. Recorded, not raised, so that a program that catches
    every exception still shows it: the interpreter's audit events reach here whatever the code
    that raised them does next."""

    def __init__(self, home: Path) -> None:
        self.home = os.path.abspath(home)
        self.seen: list[str] = []
        # What `home` held before: the program is to make nothing there either.
        self.held = self.holds()

    def holds(self) -> list[Path]:
        return sorted(Path(self.home).rglob("*"))

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if event in REACHING_OUT:
            self.seen.append(f"{event} {args[1:3]!r}")
        elif event in TOUCHING_A_PATH and args and isinstance(args[0], str | bytes | os.PathLike):
            path = os.path.abspath(os.fsdecode(args[0]))
            if path == self.home or path.startswith(self.home + os.sep):
                self.seen.append(f"{event} {path}")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Outside]:
    """No socket may connect and no process may start; HOME is a folder of the test's own, with a
    kubeconfig where the clients look for one (~/.kube/config, KUBECONFIG), so that a program that
    read it would find it. The program's attempts are recorded (`Outside`)."""
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    for kubeconfig in (home / ".kube" / "config", home / "kubeconfig"):
        kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    outside = Outside(home)

    def refuse(*args: object, **kwargs: object) -> None:
        outside.seen.append(f"the program tried to reach the outside: {args[1:]!r}")
        raise AssertionError(outside.seen[-1])

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KUBECONFIG", str(home / "kubeconfig"))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    _audit_hook()
    _AUDITORS.append(outside)
    try:
        yield outside
    finally:
        _AUDITORS.remove(outside)


@pytest.mark.parametrize("stack", [*STACKS, "existing"])
def test_program_touches_no_network_docker_or_kubeconfig(offline: Outside, stack: str) -> None:
    """Each stack file, and a cluster the user runs (whose kubeconfig the provider reads, not the
    program)."""
    config = existing_with() if stack == "existing" else None
    run = run_program("dev" if stack == "existing" else stack, config)
    assert run.of_kind("Deployment")
    assert offline.seen == []
    assert offline.holds() == offline.held
