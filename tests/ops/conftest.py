"""Fixtures of the operations suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.stand_ins import first_on_path


@pytest.fixture
def cli_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder first on PATH, for the stand-in `pulumi` and `kubectl` a test writes there; with
    $PULUMI and $KUBECTL unset, the tools run exactly those."""
    monkeypatch.setenv("PATH", first_on_path(tmp_path))
    monkeypatch.delenv("KUBECTL", raising=False)
    monkeypatch.delenv("PULUMI", raising=False)
    return tmp_path
