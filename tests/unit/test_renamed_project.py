"""A copy of mlstack whose project is renamed, as a team that adopts it renames it (README,
"Copying mlstack"). Pulumi puts the keys Pulumi.yaml declares, and those set without a namespace,
in the project's namespace, and hands the program its project: the program reads its keys there.
A copy whose stack files' keys are renamed with it runs as the original does; one whose keys are
still `mlstack:` stops and says so, rather than deploy without them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

from components.stack_file import ORIGINAL_PROJECT, stacks
from tests.copies import copy_project, program_runs

RENAMED: Final = "mlplatform"


def test_a_renamed_copy_registers_what_the_original_does(tmp_path: Path) -> None:
    """Every stack file of a copy named `mlplatform`, its keys `mlplatform:`, registers what the
    original's registers, `mlplatform` where the original has `mlstack` aside. Both run from the
    same folder: the mocks' image digests follow the services' path."""
    folder = tmp_path / "project"
    original = program_runs(copy_project(folder, ORIGINAL_PROJECT), *stacks())
    assert all("resources" in run for run in original.values()), original
    renamed = program_runs(copy_project(folder, RENAMED), *stacks())
    assert json.loads(json.dumps(renamed).replace(RENAMED, ORIGINAL_PROJECT)) == original


def test_a_renamed_copy_whose_keys_are_still_mlstack_stops_and_says_what_to_do(
    tmp_path: Path,
) -> None:
    copy = copy_project(tmp_path / "project", RENAMED, keys=ORIGINAL_PROJECT)
    keys = "cluster, database, gateway, images, model"
    assert program_runs(copy, "dev") == {
        "dev": {
            "errors": [
                f"{ORIGINAL_PROJECT}:cluster: this project is named {RENAMED} (Pulumi.yaml), so "
                f"its config keys are {RENAMED}:<key>, where Pulumi puts the keys it declares and "
                f"those set without a namespace: rename the stack's {ORIGINAL_PROJECT}: keys "
                f'({keys}) to {RENAMED}: (README, "Copying mlstack")'
            ]
        }
    }
