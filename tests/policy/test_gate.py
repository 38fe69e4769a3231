"""The bar: in every stack, and in the backup configurations no stack file has (test_backups.py),
zero schema errors and zero failed Checkov checks; no skip annotation, and no skip but the
declared exceptions; Checkov's checks that repeat a rule of the policy pack left to the pack. (The
Dockerfiles: test_dockerfiles.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from mlstack_policy.kube import POD_TEMPLATE_PATHS
from mlstack_policy.pack import MANDATORY, policies
from tests.policy.conftest import GATED, KEPT_ON_WORKLOADS, STACKS
from tools import policy

WORKLOAD_KINDS = {token.rsplit(":", 1)[-1] for token in POD_TEMPLATE_PATHS}


def test_every_stack_file_is_gated(report: policy.Report) -> None:
    assert [s.stack for s in report.stacks] == STACKS
    assert {"dev", "staging", "prod"} <= set(STACKS)


@pytest.mark.parametrize("name", GATED)
def test_schemas_strict_for_oldest_and_newest_kubernetes(
    gated: dict[str, tuple[policy.StackReport, Path]], name: str
) -> None:
    """Every object checked against the oldest and the newest Kubernetes schemas, with no
    error."""
    found, _ = gated[name]
    assert found.objects >= 15
    assert found.schema_errors == []
    assert found.schema_checked == found.objects * len(policy.KUBERNETES_VERSIONS)


@pytest.mark.parametrize("name", GATED)
def test_zero_failed_checkov_checks(
    gated: dict[str, tuple[policy.StackReport, Path]], name: str
) -> None:
    found, _ = gated[name]
    assert [f"{c.check_id} {c.resource}" for c in found.failed] == []
    # Checkov did look: each workload alone gets dozens of checks.
    assert len(found.passed) > 200
    assert found.ok


@pytest.mark.parametrize("name", GATED)
def test_the_only_skips_are_the_declared_exceptions(
    gated: dict[str, tuple[policy.StackReport, Path]], name: str
) -> None:
    found, folder = gated[name]
    skipped = {(c.check_id, *c.kind_and_name): c.reason for c in found.skipped}
    assert skipped == policy.MANIFEST_EXCEPTIONS
    assert len(found.skipped) == len(skipped), "each exception on one object"
    assert found.stale_exceptions == []
    for path in folder.glob("*.yaml"):
        assert "checkov.io/skip" not in path.read_text(), path.name


def test_the_one_exception_is_the_database_s_token() -> None:
    """Patroni's store is the API server: the database's pods mount their account's token, and
    no other object is excused from any check (a new exception is a change of this test)."""
    assert set(policy.MANIFEST_EXCEPTIONS) == {("CKV_K8S_38", "StatefulSet", "database")}
    for (check_id, _, _), reason in policy.MANIFEST_EXCEPTIONS.items():
        assert check_id not in policy.PACK_OWNED, "the gate skips it everywhere already"
        assert reason.strip() and reason != policy.NO_REASON


def test_each_check_the_gate_skips_is_owned_by_a_mandatory_rule_of_the_pack() -> None:
    mandatory = {p.name for p in policies() if p.enforcement_level == MANDATORY}
    assert set(policy.PACK_OWNED.values()) <= mandatory
    assert set(policy.PACK_OWNED.values()) == {
        "container-probes",
        "container-resources",
        "image-by-digest",
        "pod-security-restricted",
    }
    for check_id, rule in policy.PACK_OWNED.items():
        assert policy.MANIFEST_SKIPS[check_id] == f"owned by the policy pack rule {rule}"


@pytest.mark.parametrize("stack", STACKS)
def test_checkov_leaves_the_packs_checks_to_it_and_runs_the_rest(
    reports: dict[str, policy.StackReport], stack: str
) -> None:
    found = reports[stack]
    ran = {c.check_id for c in (*found.passed, *found.failed, *found.skipped)}
    assert ran.isdisjoint(policy.PACK_OWNED)
    # (Checkov's graph checks, CKV2_*, name the pods a template makes as resources of their own.)
    workloads = {
        c.resource
        for c in found.passed
        if c.check_id.startswith("CKV_") and c.resource.split(".")[0] in WORKLOAD_KINDS
    }
    kinds = {resource.split(".")[0] for resource in workloads}
    assert kinds == {"Deployment", "StatefulSet", "Job"}
    for resource in workloads:
        # Passed, or failed and reported as its declared exception.
        on_it = {c.check_id for c in (*found.passed, *found.skipped) if c.resource == resource}
        assert on_it >= KEPT_ON_WORKLOADS, resource


def test_the_gate_passes_and_its_table_has_the_figures(report: policy.Report) -> None:
    assert report.ok
    shown = policy.table(report)
    for s in report.stacks:
        row = next(line for line in shown.splitlines() if line.startswith(s.stack))
        assert row.split() == [
            s.stack,
            str(s.objects),
            f"{s.schema_checked}/{s.schema_checked}",
            str(len(s.passed)),
            "0",
            str(len(s.skipped)),
        ]
    assert shown.rstrip().endswith("policy: OK")
