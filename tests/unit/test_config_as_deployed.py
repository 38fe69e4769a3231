"""What the program makes of a stack's config, beyond each component's own tests: a change the
program can make in place never reaches a field that the provider replaces the object for, and a
value the config accepts is the value deployed."""

from __future__ import annotations

import urllib.parse
from typing import Final

import pytest

from components import database
from harness.program import LB_ADDRESS, ProgramRun, run_program, stack_config
from tests.unit.configs import dev_with, existing_with, with_fields
from tests.unit.runs import by_name, differences

# The StatefulSet fields pulumi-kubernetes (4.25) replaces the object for, because Kubernetes
# refuses to update them: a replaced `database` is deleted first (its name is fixed), and every
# instance with it.
STATEFUL_SET_REPLACED_FOR: Final = (
    "spec.podManagementPolicy",
    "spec.revisionHistoryLimit",
    "spec.selector",
    "spec.serviceName",
    "spec.volumeClaimTemplates",
)


def _covered(path: str, rules: list[str]) -> bool:
    """Whether an `ignoreChanges` rule covers the input at `path`."""
    return any(path == rule or path.startswith((f"{rule}.", f"{rule}[")) for rule in rules)


def _database_with(**fields: object) -> ProgramRun:
    return run_program("dev", with_fields(stack_config("dev"), "database", replicas=2, **fields))


def test_growing_the_database_s_storage_resizes_its_claims_in_place() -> None:
    """A new `database.storageSize` reaches each instance's claim (resized in place where its
    StorageClass allows expansion), never a field that would replace the StatefulSet and stop
    every instance at once."""
    small, large = _database_with(storageSize="1Gi"), _database_with(storageSize="2Gi")
    before, after = by_name(small), by_name(large)
    for index in range(2):
        claim = f"PersistentVolumeClaim {database.claim_name(index)}"
        assert differences(before[claim].inputs, after[claim].inputs) == [
            "spec.resources.requests.storage"
        ]
    stateful_set = after[f"StatefulSet {database.NAME}"]
    changed = differences(before[f"StatefulSet {database.NAME}"].inputs, stateful_set.inputs)
    applied = [path for path in changed if not _covered(path, stateful_set.ignore_changes)]
    replacing = [path for path in applied if _covered(path, list(STATEFUL_SET_REPLACED_FOR))]
    assert replacing == []


# Where each secret is deployed: the Secret and its key.
SECRET_HOMES: Final = {
    "apiKey": ("gateway", "api-key"),
    "apiKeyPrevious": ("gateway", "api-key-previous"),
    "databasePassword": ("database", database.GATEWAY_PASSWORD_KEY),
    "databaseOwnerPassword": ("database", database.OWNER_PASSWORD_KEY),
    "databaseReplicationPassword": ("database", database.REPLICATION_PASSWORD_KEY),
}


@pytest.mark.parametrize("key", sorted(SECRET_HOMES))
@pytest.mark.parametrize("value", ["384729384729384", '"quoted-secret-value"', "[1, 2, 3, 4, 5]"])
def test_a_secret_is_its_text_whatever_it_looks_like(key: str, value: str) -> None:
    """The engine hands every value over as text; a secret that reads as JSON (a number, a
    quoted string, a list) is still that text, not what JSON would make of it."""
    run = run_program("dev", dev_with(**{key: value}))
    secret, entry = SECRET_HOMES[key]
    assert run.one("Secret", secret).inputs["stringData"][entry] == value
    if key == "databasePassword":
        url = run.one("Secret", "gateway").inputs["stringData"]["database-url"]
        assert f":{urllib.parse.quote(value, safe='')}@" in url


@pytest.mark.parametrize(
    ("service_type", "expected"),
    [
        ("LoadBalancer", f"https://{LB_ADDRESS}:443"),
        ("ClusterIP", "https://gateway.mlstack-dev.svc.cluster.local:443"),
        ("NodePort", "https://<node-address>:30080"),
    ],
)
def test_the_gateway_url_of_an_https_gateway_says_https(service_type: str, expected: str) -> None:
    """With `gateway.tls` the gateway serves HTTPS alone, on whichever kind of Service."""
    gateway = {"replicas": 1, "serviceType": service_type, "tls": {"secretName": "gateway-tls"}}
    run = run_program("dev", existing_with(gateway=gateway))
    assert run.outputs["gateway_url"] == expected


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_a_protected_stack_protects_the_namespace_its_volumes_live_in(stack: str) -> None:
    """Deleting a namespace deletes every claim in it, whatever protects the claims: a protected
    stack refuses a new `namespace` at the Namespace, before anything is made in the new one and
    the old one (the data's) is left for the next `pulumi up` to delete."""
    run = run_program(stack, {**stack_config(stack), "mlstack:protect": True})
    (namespace,) = run.of_kind("Namespace")
    assert namespace.protect
    claims = run.of_kind("PersistentVolumeClaim")
    assert claims
    assert {claim.metadata["namespace"] for claim in claims} == {namespace.metadata["name"]}
