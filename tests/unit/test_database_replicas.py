"""`database.replicas`: one StatefulSet of that many instances, each on a claim of its own, the
policies between instances, what a change of the count changes (only the count, and the claims
it adds), and the API server's refusal to lower it by more than one at once (its CEL is tried on
a real API server by tests/e2e/test_engine.py, 4t_f)."""

from __future__ import annotations

from typing import Any

import celpy
import pytest
from celpy.adapter import json_to_cel

from components import database, database_scale_in, pod
from components.labels import NAME_LABEL
from harness.program import ProgramRun, Registered, run_program, stack_config
from tests.manifests import env, pod_spec, volumes
from tests.unit.configs import dev_with, with_fields
from tests.unit.runs import scaling


def run_with(replicas: int, **database_keys: Any) -> ProgramRun:
    config = with_fields(stack_config("dev"), "database", replicas=replicas, **database_keys)
    return run_program("dev", config)


def template(stateful_set: Registered) -> dict[str, Any]:
    return dict(stateful_set.inputs["spec"]["template"])


@pytest.fixture(scope="module")
def three() -> ProgramRun:
    return run_with(3)


def test_one_statefulset_of_the_instances_each_on_its_own_claim(three: ProgramRun) -> None:
    (stateful_set,) = three.of_kind("StatefulSet")
    spec = stateful_set.inputs["spec"]
    assert stateful_set.metadata["name"] == database.NAME
    assert spec["replicas"] == 3
    assert spec["serviceName"] == database.HEADLESS_NAME
    # Patroni, not the start order, decides who leads; scaling down keeps the data.
    assert spec["podManagementPolicy"] == "Parallel"
    # A roll goes on to the next instance only once the one before is the synchronous standby.
    assert spec["minReadySeconds"] == database.MIN_READY_SECONDS >= 10
    assert spec["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    # dev's backups live on a claim of their own, which every instance shares.
    claims = {c.metadata["name"] for c in three.of_kind("PersistentVolumeClaim")}
    assert claims - {database.BACKUP_CLAIM} == {
        "data-database-0",
        "data-database-1",
        "data-database-2",
    }
    claims -= {database.BACKUP_CLAIM}
    assert claims == {database.claim_name(i) for i in range(3)}
    assert {f"data-{database.pod_name(i)}" for i in range(3)} == claims


def test_the_gateway_reads_from_database_read_and_writes_to_database(three: ProgramRun) -> None:
    secret = three.one("Secret", "gateway").inputs["stringData"]
    assert "@database.mlstack-dev.svc:5432/" in secret["database-url"]
    assert "@database-read.mlstack-dev.svc:5432/" in secret["database-read-url"]
    (container,) = pod_spec(three.one("Deployment", "gateway").inputs)["containers"]
    variables = env(container)
    assert variables["DATABASE_READ_URL_FILE"].endswith("/database-read-url")


def test_pods_roll_when_a_secret_they_read_changes(three: ProgramRun) -> None:
    """Workloads mount the Secrets by name (a Secret replaced for new data replaces no workload)
    and carry a digest of the values, so that a new value rolls the pods that read it."""

    def digests(run: ProgramRun) -> dict[str, str | None]:
        workloads = run.of_kind("StatefulSet") + run.of_kind("Deployment")
        return {
            w.metadata["name"]: (template(w)["metadata"].get("annotations") or {}).get(
                pod.SECRETS_CHECKSUM
            )
            for w in workloads
        }

    before = digests(three)
    # Not secret: a secret in a workload's spec would make its whole spec output secret (and
    # with the gateway's, its Service's selector and the stack's gateway_url).
    for workload in three.of_kind("StatefulSet") + three.of_kind("Deployment"):
        assert workload.secret_paths == [], workload.metadata["name"]
    assert before["gateway"] and before["database"] and before["model"] is None
    config = with_fields(dev_with(apiKey="another-gateway-api-key"), "database", replicas=3)
    after = digests(run_program("dev", config))
    assert after["gateway"] != before["gateway"]
    assert after["database"] == before["database"], "the database does not read the API key"
    assert volumes(three.one("StatefulSet", "database").inputs)["secrets"] == {
        "name": "secrets",
        "secret": {"secretName": "database", "defaultMode": 0o440},
    }


@pytest.mark.parametrize("replicas", [1, 3])
def test_instances_reach_each_other_on_postgres_and_patroni_s_api(replicas: int) -> None:
    """Standbys copy, stream and rewind from the primary on 5432, and Patroni's members ask each
    other's REST API (8008) before a promotion; with one instance too, so that adding a standby
    changes no policy."""
    run = run_with(replicas)
    policies = {p.metadata["name"]: p.inputs["spec"] for p in run.of_kind("NetworkPolicy")}
    ports = [
        {"port": database.PORT, "protocol": "TCP"},
        {"port": database.API_PORT, "protocol": "TCP"},
    ]
    (rule,) = policies["database-from-database"]["ingress"]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"][NAME_LABEL] == database.NAME
    assert rule["ports"] == ports
    (egress,) = policies["database-to-database"]["egress"]
    (target,) = egress["to"]
    assert target["podSelector"]["matchLabels"][NAME_LABEL] == database.NAME
    assert egress["ports"] == ports


@pytest.mark.parametrize(("smaller", "larger"), [(1, 2), (2, 3), (3, 5), (1, 3)])
def test_adding_standbys_changes_the_count_and_adds_their_claims(smaller: int, larger: int) -> None:
    """Never the pod template (a new one would restart the primary) nor the Services, but that
    reads go to the standbys once there is one."""
    few, many = run_with(smaller), run_with(larger)
    changed, added, removed = scaling(few, many)
    expected = {"StatefulSet database": ["spec.replicas"]}
    if smaller == 1:
        expected["Service database-read"] = [f"spec.selector.{database.ROLE_LABEL}"]
        read = many.one("Service", database.READ_NAME).inputs["spec"]["selector"]
        assert read[database.ROLE_LABEL] == "replica"
    assert changed == expected
    assert many.one("StatefulSet", database.NAME).inputs["spec"]["replicas"] == larger
    assert added == {
        f"PersistentVolumeClaim {database.claim_name(i)}" for i in range(smaller, larger)
    }
    assert removed == set()


def test_protect_covers_every_instance_s_claim() -> None:
    for claim in run_program("prod").of_kind("PersistentVolumeClaim"):
        assert claim.protect, claim.metadata["name"]


def test_the_api_server_refuses_to_lower_the_instances_by_more_than_one(three: ProgramRun) -> None:
    (policy,) = three.of_kind("ValidatingAdmissionPolicy")
    (binding,) = three.of_kind("ValidatingAdmissionPolicyBinding")
    assert policy.metadata["name"] == binding.metadata["name"] == "mlstack-dev-database-scale-in"
    assert binding.inputs["spec"] == {
        "policyName": policy.metadata["name"],
        "validationActions": ["Deny"],
    }
    spec = policy.inputs["spec"]
    assert spec["failurePolicy"] == "Fail"
    # The stack's StatefulSet and its scale subresource (`kubectl scale`), in its namespace.
    assert spec["matchConstraints"] == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mlstack-dev"}},
        "resourceRules": [
            {
                "apiGroups": ["apps"],
                "apiVersions": ["v1"],
                "operations": ["UPDATE"],
                "resources": ["statefulsets", "statefulsets/scale"],
                "resourceNames": [database.NAME],
            }
        ],
    }
    (validation,) = spec["validations"]
    assert validation == {
        "expression": database_scale_in.ALLOWED,
        "messageExpression": database_scale_in.MESSAGE,
    }
    # In force before a `pulumi up` changes the StatefulSet.
    (stateful_set,) = three.of_kind("StatefulSet")
    assert f"{binding.type}::{binding.name}" in stateful_set.waits_for


def evaluated(expression: str, old: int | None, new: int | None) -> Any:
    """`expression` (CEL) on an update of the StatefulSet's count from `old` to `new`, as the
    API server hands them to a policy: None for a count the object leaves out, as the scale
    subresource's autoscaling/v1 Scale leaves out a 0."""

    def scaled(replicas: int | None) -> Any:
        return json_to_cel({"spec": {} if replicas is None else {"replicas": replicas}})

    environment = celpy.Environment()
    program = environment.program(environment.compile(expression))
    return program.evaluate({"object": scaled(new), "oldObject": scaled(old)})


@pytest.mark.parametrize(
    ("old", "new", "allowed"),
    [
        (3, 1, False),
        (5, 2, False),
        (3, 2, True),
        (2, 1, True),
        (1, 3, True),
        # To 0 (make restore) and back, by the StatefulSet or its scale subresource.
        (3, 0, True),
        (3, None, True),
        (0, 3, True),
        (None, 3, True),
    ],
)
def test_the_scale_in_policy_allows_one_instance_less_at_a_time(
    old: int | None, new: int | None, allowed: bool
) -> None:
    assert bool(evaluated(database_scale_in.ALLOWED, old, new)) is allowed


def test_the_scale_in_refusal_names_both_counts() -> None:
    assert str(evaluated(database_scale_in.MESSAGE, 3, 1)).startswith(
        "3 database instances lowered to 1 at once: "
    )
