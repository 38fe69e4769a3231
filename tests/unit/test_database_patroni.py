"""The database as Patroni runs it, on every stack: a namespaced Role with only the verbs Patroni
uses, bound to the database's ServiceAccount alone; the only pods with a token; Services that
select on the role Patroni labels each pod with; a disruption budget and a spread over nodes
(and zones); egress to the API server's own address alone; its passwords as files of its Secret.

What the pods and Services are checked against is services/database/patroni.yml, the image's own
settings: a label renamed on one side only fails here."""

from __future__ import annotations

import json
from typing import Any, Final

import yaml

from components import database
from components.backup_repository.common import ROUTE_NAME
from components.backup_repository.gcs_bucket import METADATA_ROUTE_NAME
from components.image import SERVICES_DIR
from harness.program import (
    API_SERVER,
    API_SERVICE,
    TEST_SECRETS,
    ProgramRun,
    run_program,
    stack_config,
)
from mlstack_policy.kube import POD_TEMPLATE_PATHS, dig
from tests.manifests import container, env
from tests.unit.configs import existing_with, with_fields
from tests.unit.database_pods import database_pod, database_volumes, match, stateful_set

PATRONI: Final[dict[str, Any]] = yaml.safe_load(
    (SERVICES_DIR / "database" / "patroni.yml").read_text()
)
ROLE_LABEL: Final = PATRONI["kubernetes"]["role_label"]
# The database pods' ways out to a backup repository (a bucket, and on GKE the metadata server).
BACKUP_ROUTES: Final = (ROUTE_NAME, METADATA_ROUTE_NAME)


def replicas(run: ProgramRun) -> int:
    return int(stack_config(run.stack)["mlstack:database"].get("replicas", 1))


def provider(run: ProgramRun) -> str:
    return str(stack_config(run.stack)["mlstack:cluster"]["provider"])


def namespace(run: ProgramRun) -> str:
    return str(stateful_set(run).metadata["namespace"])


def pod_labels(run: ProgramRun) -> dict[str, str]:
    return dict(stateful_set(run).inputs["spec"]["template"]["metadata"]["labels"])


def postgres(run: ProgramRun) -> dict[str, Any]:
    """The database pods' `postgres` container (a stack with backups runs `backups` beside)."""
    return container(stateful_set(run).inputs, database.POSTGRES_CONTAINER)


def pod_specs(run: ProgramRun) -> dict[str, dict[str, Any]]:
    """The pod template of every workload of the stack, by `<kind> <name>`."""
    return {
        f"{r.kind} {r.metadata['name']}": dict(dig(r.inputs, *POD_TEMPLATE_PATHS[r.type]))
        for r in run.resources
        if r.type in POD_TEMPLATE_PATHS
    }


# --- the API server: Patroni's store -------------------------------------------------------------


def test_patroni_s_role_is_namespaced_and_grants_only_what_it_uses(stack_run: ProgramRun) -> None:
    assert stack_run.of_kind("ClusterRole") == []
    assert stack_run.of_kind("ClusterRoleBinding") == []
    (role,) = stack_run.of_kind("Role")
    assert role.type == "kubernetes:rbac.authorization.k8s.io/v1:Role"
    assert (role.metadata["name"], role.metadata["namespace"]) == ("database", namespace(stack_run))
    rules = role.inputs["rules"]
    granted = set()
    for rule in rules:
        # No resourceNames or nonResourceURLs either: the rules are these three fields.
        assert set(rule) == {"apiGroups", "resources", "verbs"}
        assert rule["apiGroups"] == [""], "the core API group alone"
        for field in ("apiGroups", "resources", "verbs"):
            assert not any("*" in value for value in rule[field]), f"a wildcard in {field}"
        granted |= {(resource, verb) for resource in rule["resources"] for verb in rule["verbs"]}
    assert granted == {
        ("configmaps", "get"),
        ("configmaps", "list"),
        ("configmaps", "watch"),
        ("configmaps", "create"),
        ("configmaps", "patch"),
        ("pods", "get"),
        ("pods", "list"),
        ("pods", "watch"),
        ("pods", "patch"),
    }


def test_the_binding_gives_the_role_to_the_database_account_alone(stack_run: ProgramRun) -> None:
    (binding,) = stack_run.of_kind("RoleBinding")
    (role,) = stack_run.of_kind("Role")
    assert binding.metadata["namespace"] == namespace(stack_run)
    assert binding.inputs["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role.metadata["name"],
    }
    assert binding.inputs["subjects"] == [
        {"kind": "ServiceAccount", "name": "database", "namespace": namespace(stack_run)}
    ]
    account = stack_run.one("ServiceAccount", "database")
    assert account.metadata["namespace"] == namespace(stack_run)
    accounts = {name: spec.get("serviceAccountName") for name, spec in pod_specs(stack_run).items()}
    assert [name for name, account in accounts.items() if account == "database"] == [
        "StatefulSet database"
    ]


def test_the_database_pods_are_the_only_ones_with_a_token(stack_run: ProgramRun) -> None:
    tokens = {
        name: spec.get("automountServiceAccountToken")
        for name, spec in pod_specs(stack_run).items()
    }
    assert tokens.pop("StatefulSet database") is True
    assert tokens and set(tokens.values()) == {False}, tokens
    # Nor does any account hand its token to a pod that does not ask for it, and no pod runs as
    # the namespace's default account.
    for account in stack_run.of_kind("ServiceAccount"):
        assert account.inputs["automountServiceAccountToken"] is False, account.metadata["name"]
    for name, spec in pod_specs(stack_run).items():
        assert spec.get("serviceAccountName") not in (None, "default"), name


def test_the_api_server_is_reached_by_the_database_alone_at_its_own_address(
    stack_run: ProgramRun,
) -> None:
    """At the API server's address and at the `kubernetes` Service's, which Patroni connects to:
    a policy enforced before kube-proxy's rewrite (EKS's VPC CNI) judges the Service's."""
    read = sorted(r.type for r in stack_run.resources if r.read)
    assert read == ["kubernetes:core/v1:Service", "kubernetes:discovery.k8s.io/v1:EndpointSlice"]
    policy = stack_run.one("NetworkPolicy", "database-to-api-server").inputs["spec"]
    assert policy == {
        "podSelector": {"matchLabels": match(stack_run)},
        "policyTypes": ["Egress"],
        "egress": [
            {
                "to": [{"ipBlock": {"cidr": f"{address}/32"}}],
                "ports": [{"port": port, "protocol": "TCP"}],
            }
            for address, port in sorted([API_SERVICE, API_SERVER])
        ],
    }
    # Every other way out leads to pods the stack names (or the cluster's DNS), no address, but
    # the database's to its backup repository (tests/unit/test_backup_repository.py).
    for other in stack_run.of_kind("NetworkPolicy"):
        if other.metadata["name"] in ("database-to-api-server", *BACKUP_ROUTES):
            assert other.inputs["spec"]["podSelector"] == {"matchLabels": match(stack_run)}
            continue
        for rule in other.inputs["spec"].get("egress") or []:
            for peer in rule.get("to") or []:
                assert "ipBlock" not in peer, other.metadata["name"]


# --- the roles Patroni labels, and what selects on them ------------------------------------------


def test_patroni_finds_its_members_by_labels_the_pods_carry(stack_run: ProgramRun) -> None:
    """Patroni lists its members (and so the primary a standby copies from, and who may be
    promoted) as the pods with the labels it is given plus `<scope_label>: <scope>`: a pod
    without one of them is no member of the cluster at all."""
    container = postgres(stack_run)
    given = env(container)["DATABASE_LABELS"]
    kubernetes = PATRONI["kubernetes"]
    assert (kubernetes["scope_label"], PATRONI["scope"]) == (database.SCOPE_LABEL, database.SCOPE)
    listed_by = {**json.loads(given), kubernetes["scope_label"]: PATRONI["scope"]}
    labels = pod_labels(stack_run)
    assert listed_by.items() <= labels.items()
    # The role label is Patroni's to set: a template that set it would reset it on every roll.
    assert ROLE_LABEL not in labels


def test_the_services_select_the_database_pods_by_patroni_s_role(stack_run: ProgramRun) -> None:
    kubernetes = PATRONI["kubernetes"]
    assert ROLE_LABEL == database.ROLE_LABEL
    assert (kubernetes["leader_label_value"], kubernetes["follower_label_value"]) == (
        "primary",
        "replica",
    )
    selects = match(stack_run)
    services = {
        name: stack_run.one("Service", name).inputs["spec"]
        for name in ("database", "database-read", "database-headless")
    }
    # Writes to the primary; reads to the standbys, or to the primary while it is alone.
    assert services["database"]["selector"] == {**selects, ROLE_LABEL: "primary"}
    read_role = "replica" if replicas(stack_run) > 1 else "primary"
    assert services["database-read"]["selector"] == {**selects, ROLE_LABEL: read_role}
    # Every instance, ready or not: the members find each other by it.
    assert services["database-headless"]["selector"] == selects
    assert services["database-headless"]["clusterIP"] == "None"
    assert services["database-headless"]["publishNotReadyAddresses"] is True
    assert stateful_set(stack_run).inputs["spec"]["serviceName"] == "database-headless"
    for name in ("database", "database-read"):
        assert services[name]["type"] == "ClusterIP"
    for name, spec in services.items():
        assert spec["ports"] == [
            {"name": "postgres", "port": 5432, "targetPort": "postgres", "protocol": "TCP"}
        ], name
    # The role aside, each selects pods the StatefulSet makes.
    labels = pod_labels(stack_run)
    for name, spec in services.items():
        fixed = {k: v for k, v in spec["selector"].items() if k != ROLE_LABEL}
        assert fixed.items() <= labels.items(), name


def test_a_disruption_budget_covers_the_database_pods(stack_run: ProgramRun) -> None:
    budget = stack_run.one("PodDisruptionBudget", "database")
    assert budget.metadata["namespace"] == namespace(stack_run)
    spec = budget.inputs["spec"]
    # One instance down on purpose at a time (Patroni hands the primary's role over first).
    assert spec["maxUnavailable"] == 1
    assert "minAvailable" not in spec
    assert spec["selector"] == {"matchLabels": match(stack_run)}
    assert match(stack_run).items() <= pod_labels(stack_run).items()


def spread_keys(run: ProgramRun) -> list[str]:
    constraints = database_pod(run)["topologySpreadConstraints"]
    for constraint in constraints:
        assert constraint["labelSelector"] == {"matchLabels": match(run)}
        assert constraint["maxSkew"] == 1
        # A preference: an instance is never left unscheduled for it.
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
    return [c["topologyKey"] for c in constraints]


def test_instances_spread_over_nodes_and_cloud_zones(stack_run: ProgramRun) -> None:
    """With one instance too (nothing to spread yet): the template does not change when a
    standby is added (test_database_replicas.py)."""
    zones = ["topology.kubernetes.io/zone"] if provider(stack_run) in ("gke", "eks") else []
    assert spread_keys(stack_run) == ["kubernetes.io/hostname", *zones]


def test_an_existing_cluster_s_instances_spread_over_nodes() -> None:
    config = with_fields(existing_with(), "database", replicas=3)
    assert spread_keys(run_program("dev", config)) == ["kubernetes.io/hostname"]


# --- the passwords -------------------------------------------------------------------------------


def test_the_database_reads_its_passwords_as_files_of_its_secret(stack_run: ProgramRun) -> None:
    secret = stack_run.one("Secret", "database")
    assert secret.secret_paths == ["stringData"]
    # With backups, the repository's encryption key (every stack file turns them on).
    assert "backup" in stack_config(stack_run.stack)["mlstack:database"]
    assert secret.inputs["stringData"] == {
        "owner-password": TEST_SECRETS["mlstack:databaseOwnerPassword"],
        "gateway-password": TEST_SECRETS["mlstack:databasePassword"],
        "replication-password": TEST_SECRETS["mlstack:databaseReplicationPassword"],
        "rewind-password": TEST_SECRETS["mlstack:databaseRewindPassword"],
        "backup-cipher-password": TEST_SECRETS["mlstack:databaseBackupCipherPassword"],
    }
    container = postgres(stack_run)
    volumes = database_volumes(stack_run)
    (mount,) = [
        m["mountPath"]
        for m in container["volumeMounts"]
        if volumes.get(m["name"], {}).get("secret", {}).get("secretName") == "database"
    ]
    files = {
        name: value
        for name, value in env(container).items()
        if name.endswith("_FILE") and name.startswith("DATABASE_")
    }
    assert files == {
        "DATABASE_OWNER_PASSWORD_FILE": f"{mount}/owner-password",
        "DATABASE_GATEWAY_PASSWORD_FILE": f"{mount}/gateway-password",
        "DATABASE_REPLICATION_PASSWORD_FILE": f"{mount}/replication-password",
        "DATABASE_REWIND_PASSWORD_FILE": f"{mount}/rewind-password",
    }
    # No value in the environment, and no Secret read into it either.
    text = json.dumps(container["env"])
    assert "secretKeyRef" not in text
    for value in TEST_SECRETS.values():
        assert value not in text
