"""The gate fails on a regression of what it owns: each mutation of a good render below must be
reported, and one the policy pack owns must not be reported twice.

One Checkov run covers them all: a copy of the prod render with
- the model running as a low uid with the service account token mounted (Checkov's),
- the gateway's token mounted under a `checkov.io/skip` that gives no reason,
- the gateway's readiness probe removed and the model privileged, allowed to escalate (the pack's
  rules container-probes and pod-security-restricted: tests/unit/test_pack_owns_checkov_rules.py
  shows the pack failing these very changes),
- a field Kubernetes does not know and a string where an integer belongs (strict schemas).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.manifests import container, pod_spec
from tools import policy


def mutate(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    document = yaml.safe_load(path.read_text())
    change(document)
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def token_skipped_without_reason_and_no_readiness(document: dict[str, Any]) -> None:
    pod_spec(document)["automountServiceAccountToken"] = True
    document["metadata"]["annotations"] = {"checkov.io/skip1": "CKV_K8S_38"}
    del container(document)["readinessProbe"]


def low_uid_with_token_and_privileged(document: dict[str, Any]) -> None:
    pod_spec(document)["automountServiceAccountToken"] = True
    context = container(document)["securityContext"]
    context["runAsUser"] = 1000
    context["privileged"] = True
    context["allowPrivilegeEscalation"] = True


def unknown_field_and_string_port(document: dict[str, Any]) -> None:
    document["spec"]["exposeEverything"] = True
    document["spec"]["ports"][0]["port"] = "80"


@pytest.fixture(scope="module")
def broken(
    rendered: Path, checkov: Path, tmp_path_factory: pytest.TempPathFactory
) -> policy.StackReport:
    folder = tmp_path_factory.mktemp("broken") / "prod"
    shutil.copytree(rendered / "prod", folder)
    mutate(folder / "deployment-gateway.yaml", token_skipped_without_reason_and_no_readiness)
    mutate(folder / "deployment-model.yaml", low_uid_with_token_and_privileged)
    mutate(folder / "service-database.yaml", unknown_field_and_string_port)
    reports, _ = policy.scan({"prod": folder}, checkov)
    return reports[0]


def failed(found: policy.StackReport) -> set[tuple[str, str]]:
    return {(c.check_id, c.resource) for c in found.failed}


def test_a_low_uid_and_a_mounted_token_fail(broken: policy.StackReport) -> None:
    assert ("CKV_K8S_40", "Deployment.mlstack-prod.model") in failed(broken)
    assert ("CKV_K8S_38", "Deployment.mlstack-prod.model") in failed(broken)


def test_what_the_pack_owns_is_not_reported_twice(broken: policy.StackReport) -> None:
    """No probe, privileged, escalating: the pack's to fail (see the module's docstring)."""
    assert {check_id for check_id, _ in failed(broken)}.isdisjoint(policy.PACK_OWNED)
    assert {check_id for check_id, _ in failed(broken)} == {"CKV_K8S_38", "CKV_K8S_40"}


def test_a_skip_without_a_reason_fails(broken: policy.StackReport) -> None:
    assert [(c.check_id, c.resource) for c in broken.unexplained_skips] == [
        ("CKV_K8S_38", "Deployment.mlstack-prod.gateway")
    ]


def test_schema_errors_fail_for_both_versions(broken: policy.StackReport) -> None:
    errors = [e for e in broken.schema_errors if e.file == "service-database.yaml"]
    assert {e.version for e in errors} == set(policy.KUBERNETES_VERSIONS)
    assert all("exposeEverything" in e.message or "'80'" in e.message for e in errors)


def test_the_gate_reports_failure(report: policy.Report, broken: policy.StackReport) -> None:
    assert not broken.ok
    failing = policy.Report([broken], report.dockerfiles, report.checkov_version)
    assert not failing.ok
    shown = policy.table(failing)
    assert "CKV_K8S_40 " in shown
    assert "without a reason" in shown
    assert shown.rstrip().endswith("policy: FAILED")


def test_checkov_report_shapes() -> None:
    version, results = policy.parse_checkov(
        '[{"check_type": "dockerfile"}, {"check_type": "kubernetes", '
        '"summary": {"checkov_version": "3.3.30"}, "results": {"failed_checks": '
        '[{"check_id": "CKV_K8S_1", "resource": "Deployment.ns.x", "file_path": "/x.yaml"}]}}]'
    )
    assert version == "3.3.30"
    assert [c.check_id for c in results["failed"]] == ["CKV_K8S_1"]
    assert policy.parse_checkov('{"passed": 0, "failed": 0}')[1]["passed"] == []
    _, merged = policy.parse_checkov(
        '[{"check_type": "dockerfile", "results": {"failed_checks": [{"check_id": "CKV_DOCKER_4",'
        ' "file_path": "/d/Dockerfile", "file_line_range": [2, 2]}]}}, {"check_type": "secrets",'
        ' "results": {"failed_checks": [{"check_id": "CKV_SECRET_13", "file_path": "/d/Dockerfile"'
        '}]}}, {"check_type": "kubernetes", "results": {"failed_checks": [{"check_id": "CKV_K8S_1"'
        "}]}}]",
        ("dockerfile", "secrets"),
    )
    assert [(c.check_id, c.line) for c in merged["failed"]] == [
        ("CKV_DOCKER_4", 2),
        ("CKV_SECRET_13", 0),
    ]
    with pytest.raises(RuntimeError, match="could not parse"):
        policy.parse_checkov('{"results": {"parsing_errors": ["/x.yaml"]}}')


def test_a_declared_exception_excuses_its_object_alone_and_must_still_match() -> None:
    """No Checkov run: the gate's handling of MANIFEST_EXCEPTIONS on results made up here."""
    exceptions = {("CKV_K8S_38", "StatefulSet", "database"): "Patroni's store is the API server"}

    def check(check_id: str, resource: str) -> policy.Check:
        return policy.Check(check_id, "", resource, f"/{resource}.yaml")

    found = policy.StackReport(
        "prod",
        objects=3,
        failed=[
            check("CKV_K8S_38", "StatefulSet.mlstack-prod.database"),
            check("CKV_K8S_40", "StatefulSet.mlstack-prod.database"),
            check("CKV_K8S_38", "Deployment.mlstack-prod.database"),
            check("CKV_K8S_38", "StatefulSet.mlstack-prod.database-copy"),
        ],
    )
    policy.apply_exceptions(found, exceptions)
    assert [(c.check_id, c.resource, c.reason) for c in found.skipped] == [
        ("CKV_K8S_38", "StatefulSet.mlstack-prod.database", "Patroni's store is the API server")
    ]
    # Another check on that object, that check on another kind or name: still failures.
    assert [(c.check_id, c.resource) for c in found.failed] == [
        ("CKV_K8S_40", "StatefulSet.mlstack-prod.database"),
        ("CKV_K8S_38", "Deployment.mlstack-prod.database"),
        ("CKV_K8S_38", "StatefulSet.mlstack-prod.database-copy"),
    ]
    assert found.stale_exceptions == []

    # The object passes now (or is gone): the exception outlived its reason.
    passing = policy.StackReport("prod", objects=3)
    policy.apply_exceptions(passing, exceptions)
    assert passing.stale_exceptions == [("CKV_K8S_38", "StatefulSet", "database")]
    assert not passing.ok
    shown = policy.table(policy.Report([passing], policy.DockerfileReport()))
    assert "prod: the exception for CKV_K8S_38 on StatefulSet database matched no failure" in shown
