"""Fixtures of the policy suite: every stack rendered and gated once per session, and the
backups to an S3-compatible endpoint, which no stack file has, rendered and scanned beside them;
and what its test modules share: what is gated, and the Checkov checks kept on every workload."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from components import stack_file
from harness.program import run_program
from tests.unit.configs import PROD_BACKUP, S3, with_backup
from tools import policy, render

STACKS: Final = stack_file.stacks()
# An endpoint is in no stack file: prod's config on an existing cluster with a bucket and its CA
# bundle, and dev's with a bucket alone, rendered as the gate renders a stack (tools/render.py).
BACKUP_CONFIGS: Final[dict[str, tuple[str, dict[str, Any], bool]]] = {
    "prod-backups": ("prod", PROD_BACKUP, True),
    "dev-backups": ("dev", {"s3": S3}, False),
}
# Everything the gate's bar holds for: each stack file, each backup configuration.
GATED: Final = [*STACKS, *BACKUP_CONFIGS]
# Checkov's checks on a workload that stay with `make policy` (the pack has no rule for them):
# each still runs on every workload of every stack.
KEPT_ON_WORKLOADS: Final = {
    "CKV_K8S_14",  # image tag fixed, not latest: holds the pack's declared exceptions too
    "CKV_K8S_15",  # imagePullPolicy Always
    "CKV_K8S_21",  # not the default namespace
    "CKV_K8S_29",  # a pod securityContext
    "CKV_K8S_38",  # service account token mounted only where needed (one declared exception)
    "CKV_K8S_40",  # a high uid
}


def load(folder: Path, name: str) -> dict[str, Any]:
    """The one object of the rendered manifest `name` in `folder`."""
    document = yaml.safe_load((folder / name).read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="session")
def checkov() -> Path:
    path = policy.DEFAULT_CHECKOV
    if not path.exists():
        pytest.fail(f"Checkov is not at {path}: `make policy` sets up .venv-checkov")
    return path


@pytest.fixture(scope="session")
def manifests_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("manifests")


@pytest.fixture(scope="session")
def report(manifests_dir: Path, checkov: Path) -> policy.Report:
    """The gate over every stack file, rendered into a folder of the session's own."""
    return policy.gate(STACKS, manifests_dir, checkov)


@pytest.fixture(scope="session")
def rendered(report: policy.Report, manifests_dir: Path) -> Path:
    """The folder the gate rendered every stack file into (a folder a stack), once it has."""
    return manifests_dir


@pytest.fixture(scope="session")
def reports(report: policy.Report) -> dict[str, policy.StackReport]:
    return {s.stack: s for s in report.stacks}


@pytest.fixture(scope="session")
def backups_rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("backups")
    folders = {}
    for name, (stack, backup, existing) in BACKUP_CONFIGS.items():
        folders[name] = out / name
        run = run_program(stack, with_backup(stack, backup, existing=existing))
        render.write(render.manifests(run), folders[name])
    return folders


@pytest.fixture(scope="session")
def backup_reports(
    backups_rendered: dict[str, Path], checkov: Path
) -> dict[str, policy.StackReport]:
    """The backup configurations held to the gate's checks in one run (`policy.scan`)."""
    found, _ = policy.scan(backups_rendered, checkov)
    return {report.stack: report for report in found}


@pytest.fixture(scope="session")
def gated(
    reports: dict[str, policy.StackReport],
    rendered: Path,
    backup_reports: dict[str, policy.StackReport],
    backups_rendered: dict[str, Path],
) -> dict[str, tuple[policy.StackReport, Path]]:
    """Each of GATED: its report and the folder of its manifests."""
    found = {stack: (reports[stack], rendered / stack) for stack in STACKS}
    found |= {name: (backup_reports[name], backups_rendered[name]) for name in BACKUP_CONFIGS}
    return found
