"""A copy of mlstack whose project is renamed, as a team that adopts it renames it (README,
"Copying mlstack"). Pulumi puts the keys Pulumi.yaml declares, and those set without a namespace,
in the project's namespace, and hands the program its project: the program reads its keys there.
A copy whose stack files' keys are renamed with it runs as the original does; one whose keys are
still `mlstack:` stops and says so, rather than deploy without them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Final

import pytest

from components.pod import SECRETS_CHECKSUM
from components.stack_file import ORIGINAL_PROJECT, stacks
from harness.program import (
    PROJECT,
    ProgramExitError,
    ProgramRun,
    auto_name,
    run_program,
    stack_config,
)
from tests.copies import copy_project, program_runs
from tests.unit.configs import BACKUP_TEST_SECRETS, PROD_BACKUP, existing_with
from tests.unit.database_pods import database_containers, pgbackrest_env

RENAMED: Final = "mlplatform"
# A project's name other than this one's, for its stacks to meet this project's: the copy's when
# this project is the original, the original's in a copy already named RENAMED.
OTHER: Final = RENAMED if PROJECT != RENAMED else ORIGINAL_PROJECT
# Where stacks of several projects meet, the names each takes there.
DOCKER_NAMED: Final = (
    "docker:index/network:Network",
    "docker:index/volume:Volume",
    "docker:index/container:Container",
)


def test_a_renamed_copy_registers_what_the_original_does(tmp_path: Path) -> None:
    """Every stack file of a copy named `mlplatform`, its keys `mlplatform:`, registers what the
    original's registers, `mlplatform` where the original has `mlstack` aside: in names, in the
    random part of a name the cloud draws (which the mocks draw from the name), and in the digest
    of the secrets' values in pod templates (the database's URLs name the namespace). Both run
    from the same folder: the mocks' image digests follow the services' path."""
    folder = tmp_path / "project"
    original = without_secrets_digests(
        program_runs(copy_project(folder, ORIGINAL_PROJECT), *stacks())
    )
    assert all("resources" in run for run in original.values()), original
    renamed = json.dumps(program_runs(copy_project(folder, RENAMED), *stacks()))
    for run in json.loads(renamed).values():
        for name in {resource["name"] for resource in run["resources"]}:
            drawn = auto_name(name.replace(RENAMED, ORIGINAL_PROJECT))
            renamed = renamed.replace(auto_name(name), drawn)
    renamed = renamed.replace(RENAMED, ORIGINAL_PROJECT)
    assert without_secrets_digests(json.loads(renamed)) == original


def without_secrets_digests(runs: dict[str, Any]) -> dict[str, Any]:
    """`runs` with every pod template's digest of its secrets' values blanked."""
    key = json.dumps(SECRETS_CHECKSUM)
    text = re.sub(rf'{re.escape(key)}: "[0-9a-f]+"', f'{key}: ""', json.dumps(runs))
    return dict(json.loads(text))


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


# --- side by side: this project's stack and a renamed copy's stack of the same name ------------


def in_namespace(config: dict[str, Any], namespace: str) -> dict[str, Any]:
    """`config`, a stack config of this project, with its keys in `namespace`."""
    return {
        f"{namespace}:{key.partition(':')[2]}" if key.startswith(f"{PROJECT}:") else key: value
        for key, value in config.items()
    }


def shared_names(run: ProgramRun) -> set[str]:
    """What the stack names in a place stacks of other projects may share: the cluster (its
    namespace), the machine of a `local` cluster (Docker's networks, volumes and containers, the
    kubeconfig's folder), the Google Cloud project (service accounts, whose ids are chosen, not
    drawn), an S3 endpoint's bucket (the repository's folder)."""
    names = {f"Namespace {r.metadata['name']}" for r in run.of_kind("Namespace")}
    for resource in run.resources:
        if resource.type in DOCKER_NAMED:
            names.add(f"{resource.type} {resource.inputs['name']}")
        elif resource.type == "gcp:serviceaccount/account:Account":
            names.add(f"service account {resource.inputs['accountId']}")
        elif resource.type == "pulumi-python:dynamic:Resource" and "path" in resource.inputs:
            names.add(f"folder {resource.inputs['path']}")
    backups = pgbackrest_env(database_containers(run)["postgres"])
    if backups.get("PGBACKREST_REPO1_TYPE") == "s3":
        where = (backups["PGBACKREST_REPO1_S3_ENDPOINT"], backups["PGBACKREST_REPO1_S3_BUCKET"])
        names.add(f"repository {'/'.join(where)}{backups['PGBACKREST_REPO1_PATH']}")
    return names


@pytest.mark.parametrize(
    "stack, config",
    [
        ("dev", stack_config("dev")),
        ("prod", stack_config("prod")),
        ("prod", {**existing_with(database={"backup": PROD_BACKUP}), **BACKUP_TEST_SECRETS}),
    ],
    ids=["dev on this machine", "prod on GKE", "prod on a shared cluster and S3 endpoint"],
)
def test_a_renamed_copy_s_stack_shares_no_name_with_the_original_s_of_its_name(
    stack: str, config: dict[str, Any]
) -> None:
    """Two copies' `prod` in one cluster, cloud project or endpoint's bucket: the second `up`
    would find the first's namespace (and, pulumi-kubernetes upserting, take its objects over),
    its service accounts, its containers, or its backups' folder, which pgBackRest would then
    share between two databases (README, "Copying mlstack")."""
    original = run_program(stack, config)
    renamed = run_program(stack, in_namespace(config, OTHER), project=OTHER)
    ours, theirs = shared_names(original), shared_names(renamed)
    assert ours and len(theirs) == len(ours)
    assert ours & theirs == set()
    mine = {f"{OTHER}-{stack}": f"{PROJECT}-{stack}", f"/{OTHER}/{stack}": f"/{PROJECT}/{stack}"}
    for name in theirs:
        as_ours = name
        for other, own in mine.items():
            as_ours = as_ours.replace(other, own)
        assert as_ours in ours, name


def test_a_copy_whose_name_leaves_its_cloud_names_no_room_is_refused_before_any_resource() -> None:
    """A GKE node pool's name holds 40 characters: `<project>-<stack>-nodes-` and 7 random ones
    (README, "Stack names on a cloud")."""
    project = "ml-platform-analytics-eu"
    with pytest.raises(ProgramExitError) as exited:
        run_program("prod", in_namespace(stack_config("prod"), project), project=project)
    (message,) = exited.value.errors
    assert message.startswith(
        "stack 'prod' of project 'ml-platform-analytics-eu': on gke its cloud resources are named "
        "after 'ml-platform-analytics-eu-prod', which must be "
    )
    assert exited.value.resources == []
