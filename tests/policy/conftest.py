"""Fixtures of the policy suite: every stack rendered and gated once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tools import policy, render


@pytest.fixture(scope="session")
def checkov() -> Path:
    path = Path(os.environ.get("MLSTACK_CHECKOV", str(policy.DEFAULT_CHECKOV)))
    if not path.exists():
        pytest.fail(f"Checkov is not at {path}: `make policy` sets up .venv-checkov")
    return path


@pytest.fixture(scope="session")
def manifests_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("manifests")


@pytest.fixture(scope="session")
def report(manifests_dir: Path, checkov: Path) -> policy.Report:
    """The gate over every stack file, rendered into a folder of the session's own."""
    return policy.gate(render.stacks(), manifests_dir, checkov)


@pytest.fixture(scope="session")
def reports(report: policy.Report) -> dict[str, policy.StackReport]:
    return {s.stack: s for s in report.stacks}
