"""What the program makes of a stack's config, beyond each component's own tests: a change the
program can make in place never reaches a field that the provider replaces the object for, and a
value the config accepts is the value deployed."""

from __future__ import annotations

import urllib.parse
from typing import Final

import pytest

from components import database
from harness.program import LB_ADDRESS, ProgramRun, Registered, run_program, stack_config
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
DATA_CLAIMS: Final = tuple(f"PersistentVolumeClaim {database.claim_name(i)}" for i in range(2))
BACKUP_CLAIM: Final = f"PersistentVolumeClaim {database.BACKUP_CLAIM}"


def _covered(path: str, rules: list[str]) -> bool:
    """Whether an `ignoreChanges` rule covers the input at `path`."""
    return any(path == rule or path.startswith((f"{rule}.", f"{rule}[")) for rule in rules)


def _applied(before: Registered, after: Registered) -> list[str]:
    """What `pulumi up` changes of an object made from `before`'s inputs when the program then
    registers `after`: the paths at which their inputs differ that no `ignoreChanges` rule of
    `after` covers (at those, the engine keeps `before`'s values)."""
    changed = differences(before.inputs, after.inputs)
    return [path for path in changed if not _covered(path, after.ignore_changes)]


def _database_with(**fields: object) -> ProgramRun:
    """dev, whose backups are on a volume, with `fields` (by default two database instances)."""
    fields = {"replicas": 2, **fields}
    return run_program("dev", with_fields(stack_config("dev"), "database", **fields))


def test_growing_the_database_s_storage_resizes_its_claims_in_place() -> None:
    """A new `database.storageSize` reaches each instance's claim and, by default twice as
    large, the backup volume's (resized in place where their StorageClass allows expansion),
    never a field that would replace the StatefulSet and stop every instance at once."""
    small, large = _database_with(storageSize="1Gi"), _database_with(storageSize="2Gi")
    before, after = by_name(small), by_name(large)
    for claim in (*DATA_CLAIMS, BACKUP_CLAIM):
        assert _applied(before[claim], after[claim]) == ["spec.resources.requests.storage"]
    stateful_set = f"StatefulSet {database.NAME}"
    applied = _applied(before[stateful_set], after[stateful_set])
    replacing = [path for path in applied if _covered(path, list(STATEFUL_SET_REPLACED_FOR))]
    assert replacing == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # The cluster's default class, then one named (even the default's own name).
        ({}, {"storageClass": "fast-ssd"}),
        ({"storageClass": "standard"}, {"storageClass": "fast-ssd"}),
        ({"storageClass": "fast-ssd"}, {}),
        # The backup volume's own class, then another.
        ({"backup": {"volume": {}}}, {"backup": {"volume": {"storageClass": "fast-ssd"}}}),
        (
            {"backup": {"volume": {"storageClass": "standard"}}},
            {"backup": {"volume": {"storageClass": "fast-ssd"}}},
        ),
    ],
    ids=[
        "default-to-named",
        "named-to-another",
        "named-to-default",
        "backup-default-to-named",
        "backup-named-to-another",
    ],
)
def test_a_new_storage_class_replaces_no_claim(
    old: dict[str, object], new: dict[str, object]
) -> None:
    """Kubernetes cannot change a claim's class, and pulumi-kubernetes (4.25) replaces a claim
    for a new one, deleted first (its name is fixed): every instance's data, or every backup,
    gone on a stack that does not protect them. A new class leaves each claim made before it as
    it is: `pulumi up` changes nothing there."""
    before, after = by_name(_database_with(**old)), by_name(_database_with(**new))
    changed = [
        claim
        for claim in (*DATA_CLAIMS, BACKUP_CLAIM)
        if "spec.storageClassName" in differences(before[claim].inputs, after[claim].inputs)
    ]
    assert changed, "the config changed no claim's class"
    for claim in changed:
        assert _applied(before[claim], after[claim]) == [], claim


def test_a_claim_keeps_its_class_and_takes_a_new_size() -> None:
    """A new class and a new size at once: the claims are resized in place, and keep their
    class."""
    before = by_name(_database_with(storageSize="1Gi", storageClass="standard"))
    after = by_name(_database_with(storageSize="2Gi", storageClass="fast-ssd"))
    for claim in (*DATA_CLAIMS, BACKUP_CLAIM):
        assert after[claim].inputs["spec"]["storageClassName"] == "fast-ssd"
        assert _applied(before[claim], after[claim]) == ["spec.resources.requests.storage"], claim


def test_an_instance_added_after_a_new_storage_class_is_made_of_that_class() -> None:
    """The class a claim is made with is the config's of the moment: the instances the stack
    had keep theirs, one added later (`database.replicas` raised) is made on the new class."""
    two = by_name(_database_with(storageClass="standard"))
    three = by_name(_database_with(replicas=3, storageClass="fast-ssd"))
    added = f"PersistentVolumeClaim {database.claim_name(2)}"
    assert added not in two
    # Made, not updated: its inputs as they are.
    assert three[added].inputs["spec"]["storageClassName"] == "fast-ssd"
    for claim in DATA_CLAIMS:
        assert _applied(two[claim], three[claim]) == [], claim


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
