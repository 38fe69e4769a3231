"""The digest of secret values in pod templates: keyed by `mlstack:secretsDigestKey`, so it rolls
the pods when a value changes and tells someone who can read the pod templates nothing."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from components import app, database, pod
from components.config import USER_TOLD_EXIT_CODE
from harness.program import TEST_SECRETS, ProgramExitError, ProgramRun, run_program, stack_config
from tests.unit.configs import dev_with

KEY = "mlstack:secretsDigestKey"
DATABASE = database.NAME


def digests(run: ProgramRun) -> dict[str, str]:
    """Each workload's secrets digest, by workload name."""
    found = {}
    for workload in run.of_kind("Deployment") + run.of_kind("StatefulSet") + run.of_kind("Job"):
        annotations = workload.inputs["spec"]["template"]["metadata"].get("annotations") or {}
        if pod.SECRETS_CHECKSUM in annotations:
            found[workload.metadata["name"]] = annotations[pod.SECRETS_CHECKSUM]
    return found


def dev(**changed: str) -> dict[str, str]:
    """Each workload's digest for the dev stack with some secrets changed."""
    return digests(run_program("dev", dev_with(**changed)))


@pytest.fixture(scope="module")
def before() -> dict[str, str]:
    found = dev()
    assert set(found) == {"gateway", DATABASE, app.MIGRATIONS}
    return found


def test_the_same_values_give_the_same_digest(before: dict[str, str]) -> None:
    """Deterministic across runs: a `pulumi up` with nothing changed rolls no pod."""
    assert dev() == before


@pytest.mark.parametrize(
    ("secret", "rolled"),
    [
        ("apiKey", {"gateway"}),
        # The gateway's role's: in its URLs, and set by the database's instances.
        ("databasePassword", {"gateway", DATABASE}),
        # The owner's: in the migrations Job's URL (a new Job runs them with it), and set by the
        # database's instances; the gateway's pods never read it.
        ("databaseOwnerPassword", {app.MIGRATIONS, DATABASE}),
        ("databaseReplicationPassword", {DATABASE}),
        ("databaseRewindPassword", {DATABASE}),
    ],
)
def test_a_new_value_rolls_exactly_the_pods_that_read_it(
    before: dict[str, str], secret: str, rolled: set[str]
) -> None:
    after = dev(**{secret: TEST_SECRETS[f"mlstack:{secret}"] + "-new"})
    assert {name for name in before if after[name] != before[name]} == rolled


def test_a_new_digest_key_changes_every_digest(before: dict[str, str]) -> None:
    after = dev(secretsDigestKey="another-secrets-digest-key-of-32-chars")
    assert all(after[name] != before[name] for name in before)


def test_the_digest_is_not_a_plain_hash_of_the_values(before: dict[str, str]) -> None:
    """A plain SHA-256 of the values, as the digest was, lets anyone who reads the pod template
    check guesses offline; the keyed one does not match it."""
    values = {
        database.GATEWAY_PASSWORD_KEY: TEST_SECRETS["mlstack:databasePassword"],
        database.OWNER_PASSWORD_KEY: TEST_SECRETS["mlstack:databaseOwnerPassword"],
        database.REPLICATION_PASSWORD_KEY: TEST_SECRETS["mlstack:databaseReplicationPassword"],
        database.REWIND_PASSWORD_KEY: TEST_SECRETS["mlstack:databaseRewindPassword"],
    }
    plain = "\0".join(f"{key}={values[key]}" for key in sorted(values))
    assert before[DATABASE] != hashlib.sha256(plain.encode()).hexdigest()
    for value in TEST_SECRETS.values():
        assert hashlib.sha256(value.encode()).hexdigest() not in before.values()


def test_the_digest_key_is_in_no_object(stack_run: ProgramRun) -> None:
    for obj in stack_run.resources:
        assert TEST_SECRETS[KEY] not in str(obj.inputs), f"{obj.type} {obj.name}"
    assert TEST_SECRETS[KEY] not in str(stack_run.outputs)
    for name in (app.GATEWAY_SECRET, app.MIGRATIONS_SECRET, app.DATABASE_SECRET):
        assert TEST_SECRETS[KEY] not in str(stack_run.one("Secret", name).inputs)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "mlstack:secretsDigestKey is missing: set it with `pulumi config set --secret"),
        ("x" * 31, "mlstack:secretsDigestKey is too short (at least 32 characters)"),
    ],
)
def test_the_digest_key_is_required_and_long(value: str | None, expected: str) -> None:
    config: dict[str, Any] = {**stack_config("dev"), **TEST_SECRETS}
    if value is None:
        del config[KEY]
    else:
        config[KEY] = value
    with pytest.raises(ProgramExitError) as raised:
        run_program("dev", config, with_secrets=False)
    assert raised.value.code == USER_TOLD_EXIT_CODE
    (message,) = raised.value.errors
    assert message.startswith(expected)
