"""Fixtures of the operations suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def cli_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder first on PATH, for the stand-in `pulumi` and `kubectl` a test writes there; with
    $PULUMI and $KUBECTL unset, the tools run exactly those."""
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("KUBECTL", raising=False)
    monkeypatch.delenv("PULUMI", raising=False)
    return tmp_path
