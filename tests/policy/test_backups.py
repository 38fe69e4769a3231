"""Backups to an S3-compatible endpoint as the gate sees them. The stack files back up to their
cluster kind's own repository (a volume, a bucket the program makes), which the gate renders with
them (tools/policy.py `gate`); an endpoint is in no stack file, so conftest.py renders
BACKUP_CONFIGS as the gate renders a stack and scans them in one run (`policy.scan`), and
test_gate.py holds them to the same bar as the stacks. Here: what is particular to them."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.backup_repository.common import ROUTE_NAME
from harness.program import TEST_SECRETS
from tests.manifests import pod_spec
from tests.policy.conftest import BACKUP_CONFIGS, KEPT_ON_WORKLOADS, load
from tests.unit.configs import BACKUP_TEST_SECRETS
from tools import policy, render


def test_what_is_gated_has_the_backups(backups_rendered: dict[str, Path]) -> None:
    for name, folder in backups_rendered.items():
        spec = pod_spec(load(folder, "statefulset-database.yaml"))
        assert [c["name"] for c in spec["containers"]] == ["postgres", "backups"], name
        assert (folder / f"networkpolicy-{ROUTE_NAME}.yaml").exists(), name
    prod = backups_rendered["prod-backups"]
    assert (prod / "configmap-database-backup-ca.yaml").exists()
    assert (prod / "networkpolicy-database-metrics.yaml").exists()


@pytest.mark.parametrize("name", BACKUP_CONFIGS)
def test_the_kept_workload_checks_ran_on_the_database_s_two_containers(
    backup_reports: dict[str, policy.StackReport], name: str
) -> None:
    found = backup_reports[name]
    on_database = {
        c.check_id
        for c in (*found.passed, *found.skipped)
        if c.kind_and_name == ("StatefulSet", "database")
    }
    assert on_database >= KEPT_ON_WORKLOADS
    assert on_database.isdisjoint(policy.PACK_OWNED)


def test_no_secret_value_is_written(backups_rendered: dict[str, Path]) -> None:
    for folder in backups_rendered.values():
        for path in folder.glob("*.yaml"):
            text = path.read_text()
            for value in (*TEST_SECRETS.values(), *BACKUP_TEST_SECRETS.values()):
                assert value not in text, path
        secret = load(folder, "secret-database.yaml")
        assert set(secret["stringData"]) >= {
            "backup-cipher-password",
            "backup-s3-access-key",
            "backup-s3-secret-key",
        }
        assert set(secret["stringData"].values()) == {render.SECRET_PLACEHOLDER}
