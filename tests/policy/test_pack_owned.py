"""The checks the gate leaves to the policy pack are the ones the pack's breaks fail: each change
in tests/breaks.py (BREAKS), made to the rendered gateway, fails the Checkov check it stands for.
With tests/unit/test_pack_owns_checkov_rules.py, each skipped check is shown to be caught by the
pack rule tools/policy.py names for it.

One Checkov run, of the skipped checks only, over one broken copy per check.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.breaks import BREAKS
from tools import policy


@pytest.fixture(scope="module")
def failed(
    rendered: Path, checkov: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, set[str]]:
    """Check id of each break -> the checks that failed on it."""
    good = yaml.safe_load((rendered / "prod" / "deployment-gateway.yaml").read_text())
    folder = tmp_path_factory.mktemp("pack-owned")
    files = []
    for check_id in ("good", *BREAKS):
        document = yaml.safe_load(yaml.safe_dump(good))
        if check_id in BREAKS:
            BREAKS[check_id](document)
        files.append(folder / f"{check_id}.yaml")
        files[-1].write_text(yaml.safe_dump(document, sort_keys=False))
    _, results = policy.run_checkov(checkov, files, options=["--check", ",".join(BREAKS)])
    found: dict[str, set[str]] = {path.stem: set() for path in files}
    for check in results["failed"]:
        found[check.path.stem].add(check.check_id)
    return found


def test_the_good_gateway_passes_them_all(failed: dict[str, set[str]]) -> None:
    assert failed["good"] == set()


@pytest.mark.parametrize("check_id", BREAKS)
def test_each_break_fails_the_check_it_stands_for(
    failed: dict[str, set[str]], check_id: str
) -> None:
    assert check_id in failed[check_id]
