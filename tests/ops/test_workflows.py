"""What the GitHub workflow schema cannot check (`make workflows` checks the schema itself):
the stacks they name exist, the preview comments on the pull request in place, a pull request's
code reaches prod's credentials only once a person approved the run, promotion goes staging ->
prod behind an approval, updates of one stack never race, a drift check never queues behind (and
so never cancels) a deploy, each stack's drift issue is filed whatever became of the other's,
review stacks are destroyed before they are removed, permissions are least, actions are pinned;
the helper script they run (.github/scripts/stacks.py) says the right thing; and README.md's
"Operating mlstack" names what the workflows and that script use (which changes preview, the
environments, the review stacks' settings) and ends a drift as the drift issue does.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import runpy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.stack_file import project_name
from harness.make import make_env, run_make
from harness.program import ROOT, run_program, stack_config
from tests.copies import copy_project, run_in
from tests.stand_ins import PULUMI_CALLS, env_first_on_path, logged_calls, pulumi_stand_in, stand_in

GITHUB = ROOT / ".github"
README = ROOT / "README.md"
SCRIPT = GITHUB / "scripts" / "stacks.py"
SETUP_ACTION = "./.github/actions/pulumi-setup"
PULUMI_ACTION = "pulumi/actions@v7"  # the current major (v7.0.0: node24; inputs unchanged)
WORKFLOW_FILES = sorted(GITHUB.glob("workflows/*.yml"))


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), path
    if True in document:  # YAML 1.1 reads the key `on` as a boolean
        document["on"] = document.pop(True)
    return document


def workflow(name: str) -> dict[str, Any]:
    return load(GITHUB / "workflows" / name)


def jobs() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path in WORKFLOW_FILES:
        for job_id, job in load(path)["jobs"].items():
            yield path.name, job_id, job


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job.get("steps") or [])


def pulumi_steps(job: dict[str, Any], command: str | None = None) -> list[dict[str, Any]]:
    found = [s for s in steps(job) if str(s.get("uses", "")).startswith("pulumi/actions@")]
    found = [s for s in found if "command" in (s.get("with") or {})]
    return [s for s in found if command is None or s["with"]["command"] == command]


def run_script(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`stacks.py ARGS` as a workflow step runs it: `stdin` piped in, `env` over this process's
    environment; how it ended."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        input=stdin,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def run_step(
    folder: Path, step: dict[str, Any], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """A workflow step's `run`, as a runner runs one that names no shell (`bash -e`), from the
    project's root with `env`: how it ended."""
    runner_script = folder / "step.sh"
    runner_script.write_text(step["run"])
    return subprocess.run(
        ["bash", "-e", str(runner_script)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def script(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> str:
    """What `stacks.py ARGS` prints, which must succeed."""
    result = run_script(*args, stdin=stdin, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def affected_outputs(*paths: str) -> dict[str, list[str]]:
    """The `$GITHUB_OUTPUT` lines of `stacks.py affected`: output name -> JSON list of stacks."""
    outputs: dict[str, list[str]] = {}
    for line in script("affected", stdin="\n".join(paths) + "\n").splitlines():
        name, _, value = line.partition("=")
        stacks = json.loads(value)
        assert isinstance(stacks, list), line
        outputs[name] = [str(stack) for stack in stacks]
    assert set(outputs) == {"unattended", "reviewed"}
    return outputs


def affected(*paths: str) -> list[str]:
    """Every stack a change to `paths` affects, in promotion order."""
    outputs = affected_outputs(*paths)
    return [s for s in ("staging", "prod") if s in outputs["unattended"] + outputs["reviewed"]]


CI_STACKS = affected("Pulumi.yaml")
# What a change to everything hands each output of `stacks.py affected`.
EVERY_OUTPUT = affected_outputs("Pulumi.yaml")
# The stack whose secrets unreviewed code must never get, and the environments that hold them:
# `production` for deploys from main, `production-preview` (any branch) for previews; both have
# required reviewers (README, "Previews on pull requests"). `production-drift` holds read-only
# roles for the scheduled drift check, without reviewers but for branch `main` only (README,
# "Drift").
PROD = "prod"
PROD_ENVIRONMENTS = {"production", "production-preview", "production-drift"}
PROD_DRIFT_ENVIRONMENT = "production-drift"
PROD_PREVIEW_ENVIRONMENT = "production-preview"
# The repository-level secrets: staging's and the review stacks' only. Code nobody approved may
# read them; none of them unlocks prod.
UNATTENDED_SECRETS = {
    "PULUMI_ACCESS_TOKEN",
    "PULUMI_CONFIG_PASSPHRASE",
    "REVIEW_KUBECONFIG",
    "REVIEW_DATABASE_PASSWORD",
    "REVIEW_API_KEY",
    "REVIEW_REGISTRY_USERNAME",
    "REVIEW_REGISTRY_PASSWORD",
}
MATRIX_FROM_CHANGES = re.compile(r"^\$\{\{ fromJSON\(needs\.changes\.outputs\.(\w+)\) \}\}$")


def job_stacks(job: dict[str, Any]) -> set[str]:
    """The stacks a job can run Pulumi on: named, from its matrix, or `pr-*` for review stacks."""
    named: set[str] = set()
    for step in steps(job):
        given = step.get("with") or {}
        value = given.get("stack-name") if "command" in given else given.get("stack")
        if not value:
            continue
        value = str(value)
        if value.startswith("pr-${{"):
            named.add("pr-*")  # a review stack: its file is written by `stacks.py review-config`
        elif value == "${{ matrix.stack }}":
            source = MATRIX_FROM_CHANGES.match(str(job["strategy"]["matrix"]["stack"]))
            assert source, f"a matrix of stacks comes from `stacks.py affected`: {job['strategy']}"
            named.update(EVERY_OUTPUT[source.group(1)])
        else:
            assert "${{" not in value, f"unexpected stack {value}"
            named.add(value)
    return named


def triggers(name: str) -> set[str]:
    on = workflow(name)["on"]
    return {on} if isinstance(on, str) else set(on)


def secrets_named(job: dict[str, Any]) -> set[str]:
    return set(re.findall(r"secrets\.([A-Za-z_][A-Za-z0-9_]*)", json.dumps(job)))


def readme_section(heading: str) -> str:
    """The text under README.md's heading `heading`, up to the next heading (a `#` line outside
    a fenced code block)."""
    lines = README.read_text().splitlines()
    headings: list[tuple[int, str]] = []
    fenced = False
    for number, line in enumerate(lines):
        fenced ^= line.startswith("```")
        if not fenced and re.match(r"#+ ", line):
            headings.append((number, line.lstrip("#").strip()))
    starts = [number for number, title in headings if title == heading]
    assert len(starts) == 1, f"README.md has {len(starts)} headings {heading!r}"
    end = next((number for number, _ in headings if number > starts[0]), len(lines))
    return "\n".join(lines[starts[0] + 1 : end])


def backquoted(text: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", text))


# --- the stacks ---------------------------------------------------------------------------------


def test_ci_stacks_are_staging_then_prod_and_have_stack_files() -> None:
    assert CI_STACKS == ["staging", "prod"]
    for stack in CI_STACKS:
        assert (ROOT / f"Pulumi.{stack}.yaml").is_file()


def test_every_stack_the_workflows_name_has_a_stack_file() -> None:
    named: set[str] = set()
    for _name, _job_id, job in jobs():
        named |= job_stacks(job) - {"pr-*"}
    assert named == set(CI_STACKS)
    for stack in named:
        assert (ROOT / f"Pulumi.{stack}.yaml").is_file(), stack


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        (["Pulumi.prod.yaml"], ["prod"]),
        (["Pulumi.staging.yaml", "README.md"], ["staging"]),
        (["components/cluster/gke.py"], ["staging", "prod"]),
        (["services/model/mlstack_model/app.py"], ["staging", "prod"]),
        (["__main__.py"], ["staging", "prod"]),
        (["requirements.txt"], ["staging", "prod"]),
        (["Pulumi.dev.yaml", "README.md", "tests/unit/test_stacks.py", "mk/ops.mk"], []),
        ([], []),
    ],
)
def test_affected_stacks(paths: list[str], expected: list[str]) -> None:
    assert affected(*paths) == expected


def test_deploy_runs_for_exactly_the_changes_that_affect_a_stack() -> None:
    patterns = workflow("deploy.yml")["on"]["push"]["paths"]

    def deploys(path: str) -> bool:
        return any(fnmatch.fnmatch(path, pattern) for pattern in patterns)

    for path in [
        "Pulumi.yaml",
        "Pulumi.staging.yaml",
        "Pulumi.prod.yaml",
        "__main__.py",
        "requirements.txt",
        "components/app.py",
        "services/Dockerfile",
        "policy/pack/mlstack_policy/workloads.py",
        "policy/checkov/dockerfile_rules.py",
        "README.md",
        "Pulumi.dev.yaml",
        "tests/ops/test_workflows.py",
        "requirements-dev.txt",
    ]:
        assert deploys(path) == bool(affected(path)), path


# --- previews -----------------------------------------------------------------------------------


@pytest.mark.parametrize("job_id", ["preview", "preview-reviewed"])
def test_previews_are_one_comment_per_stack_edited_in_place(job_id: str) -> None:
    preview = workflow("preview.yml")
    assert set(preview["on"]) == {"pull_request"}
    job = preview["jobs"][job_id]
    (step,) = pulumi_steps(job, "preview")
    given = step["with"]
    assert step["uses"] == PULUMI_ACTION
    assert given["stack-name"] == "${{ matrix.stack }}"
    assert given["comment-on-pr"] is True
    assert given["edit-pr-comment"] is True
    assert given["diff"] is True
    assert given["cloud-url"] == "${{ vars.PULUMI_BACKEND_URL }}"
    assert job["permissions"]["pull-requests"] == "write"
    # Fork pull requests cannot read secrets: no preview for them.
    assert "head.repo.full_name == github.repository" in job["if"]


@pytest.mark.parametrize(
    "paths",
    [
        ["Pulumi.yaml"],
        ["Pulumi.prod.yaml"],
        ["Pulumi.staging.yaml"],
        ["components/cluster/gke.py", "README.md"],
        ["README.md"],
    ],
)
def test_every_affected_stack_is_previewed_once_and_prod_only_reviewed(paths: list[str]) -> None:
    outputs = affected_outputs(*paths)
    assert sorted(outputs["unattended"] + outputs["reviewed"]) == sorted(affected(*paths))
    assert PROD not in outputs["unattended"]
    assert set(outputs["reviewed"]) <= {PROD}


def test_the_readme_names_the_changes_that_preview_every_stack() -> None:
    """README's list of the shared files and folders is stacks.py's, entry for entry."""
    section = readme_section("Previews on pull requests")
    match = re.search(r"changes that stack;(.*?) change both", section, re.DOTALL)
    assert match, "README, 'Previews on pull requests': '...; <shared paths> change both ...'"
    script_globals = runpy.run_path(str(SCRIPT))
    shared = {*script_globals["SHARED_FILES"], *script_globals["SHARED_DIRS"]}
    assert backquoted(match.group(1)) == shared


# --- who may read prod's secrets ----------------------------------------------------------------


def test_every_job_that_can_reach_prod_waits_for_a_reviewer() -> None:
    """Prod's credentials are secrets of protected environments only: a job that runs Pulumi on
    prod gets them by naming one, and then waits for its required reviewers."""
    reaching = []
    for name, job_id, job in jobs():
        if PROD not in job_stacks(job):
            continue
        reaching.append(f"{name}:{job_id}")
        assert job.get("environment") in PROD_ENVIRONMENTS, (
            f"{name} {job_id} runs Pulumi on prod outside {sorted(PROD_ENVIRONMENTS)}"
        )
        if "pull_request" in triggers(name):
            # `production` takes deploys from main only; a pull request's run is approved in
            # an environment of its own, whose roles can read but not change prod.
            assert job["environment"] == PROD_PREVIEW_ENVIRONMENT, f"{name} {job_id}"
        if job["environment"] == PROD_DRIFT_ENVIRONMENT:
            # No reviewer: only main's code, on a schedule or by hand, and it only reads.
            assert triggers(name) <= {"schedule", "workflow_dispatch"}, name
            assert not pulumi_steps(job), f"{name} {job_id}: only tools.drift runs there"
    assert set(reaching) == {"deploy.yml:prod", "preview.yml:preview-reviewed", "drift.yml:prod"}


def test_the_readme_names_every_environment_the_workflows_use() -> None:
    named = {str(job["environment"]) for _, _, job in jobs() if job.get("environment") is not None}
    match = re.search(
        r"Create the GitHub environments (.*?);", readme_section("Environments"), re.DOTALL
    )
    assert match, "README, 'Environments': 'Create the GitHub environments ...;'"
    assert backquoted(match.group(1)) == named


def test_pull_request_code_unapproved_reads_repository_secrets_only() -> None:
    for name, job_id, job in jobs():
        if "pull_request" not in triggers(name) or job.get("environment") in PROD_ENVIRONMENTS:
            continue
        assert PROD not in job_stacks(job), f"{name} {job_id}"
        assert secrets_named(job) <= UNATTENDED_SECRETS, (
            f"{name} {job_id}: {secrets_named(job) - UNATTENDED_SECRETS} reach unreviewed code"
        )


def test_no_workflow_runs_pull_request_code_with_the_base_repository_s_privileges() -> None:
    """`pull_request_target` and `workflow_run` run with the base repository's secrets and a
    writing token; checking out a pull request's code there hands both to it."""
    for path in WORKFLOW_FILES:
        assert not triggers(path.name) & {"pull_request_target", "workflow_run"}, path.name


def test_dependencies_are_installed_before_pulumi_runs() -> None:
    action = load(GITHUB / "actions" / "pulumi-setup" / "action.yml")
    runs = [str(s.get("run", "")) for s in action["runs"]["steps"]]
    assert any(run.startswith("make program-venv") for run in runs)
    for name, job_id, job in jobs():
        uses = [str(s.get("uses", "")) for s in steps(job)]
        if any(u.startswith("pulumi/actions@") for u in uses) or any(
            "pulumi " in str(s.get("run", "")) for s in steps(job)
        ):
            assert SETUP_ACTION in uses, f"{name} {job_id}"
            first_pulumi = min(
                i
                for i, s in enumerate(steps(job))
                if str(s.get("uses", "")).startswith("pulumi/actions@")
                or "pulumi " in str(s.get("run", ""))
            )
            assert uses.index(SETUP_ACTION) < first_pulumi, f"{name} {job_id}"


def pip_installs(target: str, venv: Path) -> list[list[str]]:
    """The `pip install` arguments of `make target` on a virtual environment not made yet."""
    result = run_make("-n", target, f"VENV={venv}", env=make_env())
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if " -m pip install " in line]
    return [line.split(" -m pip install ", 1)[1].split() for line in lines]


def test_ci_sets_up_the_program_s_environment_as_make_does_without_the_test_tools(
    tmp_path: Path,
) -> None:
    quiet = ["--quiet", "--disable-pip-version-check"]
    pack = [*quiet, "--no-deps", "-r", "policy/pack/requirements.txt"]
    program = [*quiet, "-r", "requirements.txt", "-r", "requirements-cloud.txt"]
    # What `pulumi` runs on: the program, the cloud packages, the policy pack.
    assert pip_installs("program-venv", tmp_path / "venv") == [program, pack]
    # `make venv` resolves the same together with the test dependencies.
    assert pip_installs("venv", tmp_path / "venv") == [
        [*program, "-r", "requirements-dev.txt"],
        pack,
    ]
    # The pip cache is keyed by the files the action's environment is installed from.
    action = load(GITHUB / "actions" / "pulumi-setup" / "action.yml")
    (python,) = [s for s in action["runs"]["steps"] if s.get("uses") == "actions/setup-python@v6"]
    cached = set(python["with"]["cache-dependency-path"].split())
    installed = {args[i + 1] for args in (program, pack) for i, a in enumerate(args) if a == "-r"}
    assert cached == installed


def test_the_cli_is_the_release_requirements_txt_pins() -> None:
    pin = re.search(r"^pulumi==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert pin is not None
    assert f"pulumi-version={pin.group(1)}" in script("info").splitlines()
    action = load(GITHUB / "actions" / "pulumi-setup" / "action.yml")
    (install,) = [s for s in action["runs"]["steps"] if s.get("uses") == PULUMI_ACTION]
    assert install["with"] == {"pulumi-version": "${{ steps.info.outputs.pulumi-version }}"}


# --- deploys ------------------------------------------------------------------------------------


# --- the policy pack ---------------------------------------------------------------------------


def test_every_preview_and_update_runs_the_policy_pack_with_its_stack_s_config() -> None:
    """A mandatory violation fails the step (and shows in the PR comment's summary); the
    settings file each job passes exists for every stack the job can run."""
    runs = [
        (job, step)
        for name in ("preview.yml", "deploy.yml")
        for job in workflow(name)["jobs"].values()
        for step in pulumi_steps(job)
    ]
    assert len(runs) == 4
    assert (ROOT / "policy/pack/PulumiPolicy.yaml").is_file()
    for job, step in runs:
        given = step["with"]
        assert given["policyPacks"] == "policy/pack"
        for stack in job_stacks(job):
            config = given["policyPackConfigs"].replace("${{ matrix.stack }}", stack)
            assert config == f"policy/pack/config/{stack}.json"
            assert (ROOT / config).is_file(), config


def test_make_preview_and_up_run_the_policy_pack() -> None:
    for target, stack, config in [
        ("preview", "prod", " --policy-pack-config policy/pack/config/prod.json"),
        ("up", "dev", ""),
    ]:
        result = run_make("-n", target, f"STACK={stack}", "PULUMI=pulumi", env=make_env())
        assert result.returncode == 0, result.stdout + result.stderr
        dry = result.stdout
        # The engine commands run through the CLI wrapper (tools/pulumi_cli.py).
        engine = f"-m tools.pulumi_cli {target} "
        (command,) = [line for line in dry.splitlines() if engine in line]
        assert command.rstrip().endswith(f"--policy-pack policy/pack{config}"), command


def test_main_goes_to_staging_then_to_prod_behind_an_approval() -> None:
    deploy = workflow("deploy.yml")
    assert deploy["on"]["push"]["branches"] == ["main"]
    staging, prod = deploy["jobs"]["staging"], deploy["jobs"]["prod"]
    (up_staging,) = pulumi_steps(staging, "up")
    (up_prod,) = pulumi_steps(prod, "up")
    assert up_staging["with"]["stack-name"] == "staging"
    assert up_prod["with"]["stack-name"] == "prod"
    assert prod["needs"] in ("staging", ["staging"])
    assert prod["environment"] == "production"
    assert "needs" not in staging


def test_updates_of_one_stack_never_race() -> None:
    groups: dict[str, str] = {}
    for name, job_id, job in jobs():
        for step in pulumi_steps(job):
            if step["with"]["command"] not in ("up", "destroy"):
                continue
            stack = str(step["with"]["stack-name"])
            concurrency = job.get("concurrency")
            assert isinstance(concurrency, dict), f"{name} {job_id}: no concurrency"
            assert concurrency["cancel-in-progress"] is False, f"{name} {job_id}"
            group = str(concurrency["group"])
            assert group == f"pulumi-{stack}" or (
                stack.startswith("pr-${{") and group.startswith("pulumi-pr-${{")
            ), f"{name} {job_id}: {group} for {stack}"
            groups[f"{name}:{job_id}"] = group
    assert groups["deploy.yml:staging"] != groups["deploy.yml:prod"]
    # An up and a destroy of the same review stack share one group.
    assert groups["review-stack.yml:up"] == "pulumi-pr-${{ github.event.pull_request.number }}"
    assert groups["review-stack.yml:teardown"] == "pulumi-pr-${{ matrix.pr }}"


# --- drift ---------------------------------------------------------------------------------------


DRIFT_CHECK = ".github/scripts/drift_check.sh"
DRIFT_ISSUE = ".github/scripts/drift_issue.sh"


def drift_jobs() -> dict[str, dict[str, Any]]:
    """The drift workflow's checking jobs by the stack they check."""
    checks = {}
    for job in workflow("drift.yml")["jobs"].values():
        if any(s.get("run") == DRIFT_CHECK for s in steps(job)):
            (stack,) = job_stacks(job)
            checks[stack] = job
    return checks


def drift_gate_id() -> str:
    """The drift workflow's job that asks GitHub which deploy runs are not completed."""
    (gate,) = [
        job_id
        for job_id, job in workflow("drift.yml")["jobs"].items()
        if any("actions/workflows/deploy.yml/runs" in str(s.get("run", "")) for s in steps(job))
    ]
    return str(gate)


def drift_needs(gate: dict[str, str] | None, check: dict[str, Any]) -> dict[str, Any]:
    """The `needs` context of the drift jobs once the gate ended with the outputs `gate` (None: it
    failed, with none) and every check as `check` (its `result` and `outputs`)."""
    ended = {"result": "failure", "outputs": {}} if gate is None else {"result": "success"}
    return {drift_gate_id(): {**ended, "outputs": gate or {}}, **dict.fromkeys(CI_STACKS, check)}


def drift_issue_envs() -> dict[str, dict[str, Any]]:
    """The env of each step of the issues job that runs drift_issue.sh, by stack."""
    (job,) = [
        j
        for j in workflow("drift.yml")["jobs"].values()
        if any(s.get("run") == DRIFT_ISSUE for s in steps(j))
    ]
    filed = {s["env"]["STACK"]: s["env"] for s in steps(job) if s.get("run") == DRIFT_ISSUE}
    assert set(filed) == set(CI_STACKS)
    return filed


def filed_env(stack: str, needs: dict[str, Any]) -> dict[str, str]:
    """The env the issues job gives drift_issue.sh for `stack`, its expressions read against
    `needs`; null becomes the empty string, as in a runner's environment."""
    env = {}
    for name, given in drift_issue_envs()[stack].items():
        value = expression(given, needs=needs) if str(given).startswith("${{") else given
        env[name] = "" if value is None else str(value)
    return env


def test_drift_is_checked_on_a_schedule_for_every_long_lived_stack_and_no_review_stack() -> None:
    drift = workflow("drift.yml")
    assert drift["on"]["schedule"]
    assert set(drift_jobs()) == set(CI_STACKS)
    for job_id, job in drift["jobs"].items():
        assert not {s for s in job_stacks(job) if s.startswith("pr-")}, job_id


def test_a_drift_check_shares_the_deploy_s_concurrency_group_of_its_stack() -> None:
    deploy = workflow("deploy.yml")["jobs"]
    for stack, job in drift_jobs().items():
        (deploy_job,) = [j for j in deploy.values() if job_stacks(j) == {stack}]
        assert job["concurrency"] == deploy_job["concurrency"], stack
        assert job["concurrency"]["cancel-in-progress"] is False


def test_a_drift_check_runs_make_drift_s_code_and_only_reads() -> None:
    script_text = (ROOT / DRIFT_CHECK).read_text()
    assert '.venv/bin/python -m tools.drift --stack "$STACK"' in script_text
    for stack, job in drift_jobs().items():
        (check,) = [s for s in steps(job) if s.get("run") == DRIFT_CHECK]
        assert check["env"]["STACK"] == stack
        assert job["outputs"]["status"] == "${{ steps.drift.outputs.status }}"
        assert not pulumi_steps(job), f"{stack}: no `pulumi up` or `refresh` that writes"
        assert "issues" not in job["permissions"]
    assert "environment" not in drift_jobs()["staging"]
    assert drift_jobs()[PROD]["environment"] == PROD_DRIFT_ENVIRONMENT


def test_one_issue_per_stack_is_opened_or_updated_on_drift_and_closed_when_clean() -> None:
    drift = workflow("drift.yml")["jobs"]
    (issues_id,) = [
        i for i, j in drift.items() if any(s.get("run") == DRIFT_ISSUE for s in steps(j))
    ]
    job = drift[issues_id]
    assert set(job["needs"]) == {*drift_jobs(), drift_gate_id()}
    assert job["if"] == "always()"  # a drifted (failed) check must still reach its issue
    assert job["permissions"] == {"contents": "read", "issues": "write"}
    assert not secrets_named(job)
    for stack, env in drift_issue_envs().items():
        assert env["REPORT"] == f"${{{{ needs.{stack}.outputs.report }}}}"
        for status, result in (("clean", "success"), ("drift", "failure")):
            check = {"result": result, "outputs": {"status": status}}
            assert filed_env(stack, drift_needs(FREE, check))["STATUS"] == status
    handling = (ROOT / DRIFT_ISSUE).read_text()
    assert 'title="Drift on $STACK"' in handling
    for command in ("gh issue create", "gh issue edit", "gh issue close"):
        assert command in handling


def test_each_stack_s_issue_is_filed_whatever_became_of_the_other_s() -> None:
    """The issues job files one stack's issue after the other's. A `gh` error on one (its step
    fails, under `set -e`) must not leave the other's issue unopened or unclosed that day, and
    still fails the job (no `continue-on-error`). Nothing is filed once the run is cancelled, or
    after a failed checkout (there is no script to run)."""
    (job,) = [
        j
        for j in workflow("drift.yml")["jobs"].values()
        if any(s.get("run") == DRIFT_ISSUE for s in steps(j))
    ]
    job_steps = steps(job)
    (checkout,) = [s for s in job_steps if str(s.get("uses", "")).startswith("actions/checkout@")]
    filing = [i for i, s in enumerate(job_steps) if s.get("run") == DRIFT_ISSUE]
    assert job_steps.index(checkout) < min(filing)

    def files(step: dict[str, Any], checked_out: str, status: str) -> bool:
        """Whether `step` runs once the checkout ended `checked_out` and what ran before it
        (or the run) ended `status`."""
        ended = {"outcome": checked_out, "conclusion": checked_out}
        before = {checkout["id"]: ended} if "id" in checkout else {}
        condition = str(step.get("if", "success()"))
        return runs_on(condition, "schedule", {}, steps=before, status=status)

    for index in filing:
        step = job_steps[index]
        stack = step["env"]["STACK"]
        assert "continue-on-error" not in step, stack
        # After another stack's step, whether that one succeeded or failed.
        statuses = ["success", "failure"] if index > min(filing) else ["success"]
        assert all(files(step, "success", status) for status in statuses), stack
        assert not files(step, "success", "cancelled"), stack
        assert not files(step, "failure", "failure"), stack


# A `gh` that logs its arguments (a JSON list a line) and knows the open issues STAND_IN_ISSUES
# (`gh issue list --json` output; none when unset).
GH_STAND_IN = """\
#!{python}
import json, os, sys
from pathlib import Path

with (Path(__file__).parent / "gh-calls.jsonl").open("a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1:3] == ["issue", "list"]:
    print(os.environ.get("STAND_IN_ISSUES", "[]"))
"""


def test_a_drift_issue_ends_the_drift_as_the_readme_does_refresh_then_up(tmp_path: Path) -> None:
    """The check writes nothing, so an `up` alone sees no change: the issue gives the remedy
    README's "Drift" gives, word for word, for its stack."""
    env = {"STACK": "prod", "STATUS": "drift", "REPORT": "(the report)"}
    done, calls = run_drift_issue(tmp_path, env, [])
    assert done.returncode == 0, done.stderr
    (create,) = [args for args in calls if args[:2] == ["issue", "create"]]
    assert create[create.index("--title") + 1] == "Drift on prod"
    body = " ".join(create[create.index("--body") + 1].split())
    remedy = (
        "`pulumi refresh --stack prod` records what is live (a deletion too), then "
        "`pulumi up --stack prod` puts back what the program says; or change the program to "
        "adopt what changed."
    )
    assert remedy in body
    assert remedy in " ".join(readme_section("Drift").split())


def test_a_drift_check_runs_only_when_no_unfinished_deploy_holds_its_stack() -> None:
    """A check queued in its stack's group behind a deploy job would cancel the deploy job
    pending there. The gate, outside every group, says which stacks an unfinished deploy run
    holds; a check needs it and runs only when its stack is free, so never when the gate failed
    (an `if:` without always() or failure() skips the job when a job it needs did not succeed)."""
    drift = workflow("drift.yml")["jobs"]
    gate_id = drift_gate_id()
    gate = drift[gate_id]
    assert "concurrency" not in gate
    assert "needs" not in gate
    assert gate["permissions"] == {"actions": "read"}
    (ask,) = steps(gate)
    assert ask["env"] == {
        "GH_TOKEN": "${{ github.token }}",
        "REPOSITORY": "${{ github.repository }}",
    }
    skipped = {"result": "skipped", "outputs": {}}
    for stack, job in drift_jobs().items():
        assert job["needs"] in (gate_id, [gate_id]), stack
        assert not re.search(r"\b(always|failure|cancelled|success)\(", job["if"]), stack
        others = {other: "busy" for other in CI_STACKS if other != stack}
        assert runs_on(job["if"], "schedule", {}, drift_needs({stack: "free", **others}, skipped))
        for state in ("busy", ""):
            gate_said = {stack: state, **dict.fromkeys(others, "free")}
            assert not runs_on(job["if"], "schedule", {}, drift_needs(gate_said, skipped)), state
        assert not runs_on(job["if"], "schedule", {}, drift_needs(None, skipped))


# The stand-in `gh` of the workflows' `gh api PATH --jq FILTER` calls: it runs the real jq's
# FILTER over the answer STAND_IN_API (PATH, query included -> answer) holds for PATH, printing
# strings raw as gh does. A PATH that contains STAND_IN_GH_FAILS fails as gh does on a server
# error, and one it does not know as gh does for a missing resource.
API_GH_STAND_IN = """\
#!{python}
import json, os, subprocess, sys

args = sys.argv[1:]
assert args[0] == "api" and args[2] == "--jq", args
fails = os.environ.get("STAND_IN_GH_FAILS")
if fails and fails in args[1]:
    sys.exit("gh: Server Error (HTTP 502)")
answers = json.loads(os.environ["STAND_IN_API"])
if args[1] not in answers:
    sys.exit("gh: Not Found (HTTP 404)")
done = subprocess.run(["jq", "-r", args[3]], input=json.dumps(answers[args[1]]), text=True)
sys.exit(done.returncode)
"""
# The job of each stack in deploy.yml, by the name GitHub's API gives it.
DEPLOY_JOB_NAMES = {
    stack: str(job["name"])
    for job in workflow("deploy.yml")["jobs"].values()
    for stack in job_stacks(job)
}
UNFINISHED_STATUSES = ["queued", "in_progress", "waiting", "pending", "requested"]


def deploy_run(number: int, status: str, **jobs: str) -> dict[str, Any]:
    """A run of the deploy workflow as the API describes it: its status, and the status of each
    stack's job the run has so far (`prod="waiting"`: up prod waits for its approval)."""
    return {
        "id": number,
        "status": status,
        "jobs": [{"name": DEPLOY_JOB_NAMES[stack], "status": s} for stack, s in jobs.items()],
    }


def run_url(number: int) -> str:
    return f"https://github.com/acme/mlstack/actions/runs/{number}"


def deploy_api(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """What GitHub's REST API answers the gate for the deploy `runs` (each with its `jobs`): the
    runs of each status it asks about, and each run's jobs."""
    listings = {
        f"repos/acme/mlstack/actions/workflows/deploy.yml/runs?status={status}&per_page=100": [
            {**run, "jobs": None} for run in runs if run["status"] == status
        ]
        for status in UNFINISHED_STATUSES
    }
    return {
        **{
            path: {"total_count": len(chosen), "workflow_runs": chosen}
            for path, chosen in listings.items()
        },
        **{
            f"repos/acme/mlstack/actions/runs/{run['id']}/jobs?per_page=100": {
                "total_count": len(run["jobs"]),
                "jobs": run["jobs"],
            }
            for run in runs
        },
    }


def run_drift_gate(
    folder: Path, runs: list[dict[str, Any]], fails: str | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """The gate's step, as a runner's bash runs it, against a stand-in gh that knows the deploy
    `runs` (and fails on the paths that contain `fails`): how it ended, and its outputs."""
    (step,) = steps(workflow("drift.yml")["jobs"][drift_gate_id()])
    stand_in(folder, "gh", API_GH_STAND_IN.format(python=sys.executable))
    output = folder / "github-output"
    output.touch()
    env = env_first_on_path(
        folder,
        REPOSITORY="acme/mlstack",
        GITHUB_OUTPUT=str(output),
        GITHUB_SERVER_URL="https://github.com",
        STAND_IN_API=json.dumps(deploy_api(runs)),
    )
    if fails is not None:
        env["STAND_IN_GH_FAILS"] = fails
    done = run_step(folder, step, env)
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines())
    return done, outputs


FREE = {"staging": "free", "prod": "free", "staging_runs": "", "prod_runs": ""}


@pytest.mark.parametrize(
    "runs",
    [
        [],
        [
            deploy_run(10, "completed", staging="completed", prod="completed"),
            deploy_run(11, "completed", staging="completed"),  # up staging failed
        ],
    ],
    ids=["no run", "completed runs"],
)
def test_the_gate_lets_every_check_run_when_every_deploy_run_is_completed(
    tmp_path: Path, runs: list[dict[str, Any]]
) -> None:
    done, outputs = run_drift_gate(tmp_path, runs)
    assert done.returncode == 0, done.stderr
    assert outputs == FREE


@pytest.mark.parametrize("status", UNFINISHED_STATUSES)
def test_an_unfinished_deploy_run_holds_both_stacks_until_its_job_for_each_completes(
    tmp_path: Path, status: str
) -> None:
    """A run that has not finished up staging holds staging, and prod too: its up prod follows."""
    runs = [
        deploy_run(10, "completed", staging="completed", prod="completed"),
        deploy_run(12, status),  # no job started yet
    ]
    done, outputs = run_drift_gate(tmp_path, runs)
    assert done.returncode == 0, done.stderr
    busy = {"staging": "busy", "prod": "busy"}
    assert outputs == {**busy, "staging_runs": run_url(12), "prod_runs": run_url(12)}
    assert f"staging: busy, deploy runs not completed: {run_url(12)}" in done.stdout


def test_a_prod_deploy_waiting_overnight_holds_prod_alone(tmp_path: Path) -> None:
    """Merge A's up prod waits for its approval, merge B's waits behind it in pulumi-prod: the
    prod check would cancel B's. Staging, which both have left, is checked."""
    runs = [
        deploy_run(12, "waiting", staging="completed", prod="waiting"),
        deploy_run(13, "in_progress", staging="completed", prod="pending"),
    ]
    done, outputs = run_drift_gate(tmp_path, runs)
    assert done.returncode == 0, done.stderr
    assert outputs == {**FREE, "prod": "busy", "prod_runs": f"{run_url(12)} {run_url(13)}"}


@pytest.mark.parametrize("fails", ["/runs?", "/jobs"], ids=["listing runs", "listing jobs"])
def test_the_gate_fails_when_github_does_not_answer(tmp_path: Path, fails: str) -> None:
    """No answer is no leave to check, and no reason to skip in silence: the gate fails (and
    the run with it), so no check runs and none is reported as skipped for a deploy."""
    runs = [deploy_run(12, "in_progress", staging="in_progress")]
    done, outputs = run_drift_gate(tmp_path, runs, fails=fails)
    assert done.returncode != 0
    assert "::error::gh could not list" in done.stdout
    assert not {"staging", "prod"} & set(outputs)


def run_drift_issue(
    folder: Path, env: dict[str, str], issues: list[dict[str, Any]]
) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """drift_issue.sh with `env`, against a stand-in gh whose open issues are `issues`: how it
    ended, and every gh call."""
    stand_in(folder, "gh", GH_STAND_IN.format(python=sys.executable))
    done = subprocess.run(
        ["bash", str(ROOT / DRIFT_ISSUE)],
        env=env_first_on_path(
            folder, GH_REPO="acme/mlstack", STAND_IN_ISSUES=json.dumps(issues), **env
        ),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return done, logged_calls(folder / "gh-calls.jsonl")


@pytest.mark.parametrize(
    ("gate", "check", "status", "says"),
    [
        (
            {"staging": "free", "prod": "busy", "prod_runs": run_url(12)},
            {"result": "skipped", "outputs": {}},
            "skipped",
            f"the drift check of prod was skipped, deploy runs not completed hold prod: "
            f"{run_url(12)}: issue 4 left as it is",
        ),
        (
            None,
            {"result": "skipped", "outputs": {}},
            "skipped",
            "the drift check of prod was skipped, the gate that looks for unfinished deploy "
            "runs did not finish (its job says why): issue 4 left as it is",
        ),
        (
            FREE,
            {"result": "failure", "outputs": {}},
            "error",
            "the drift check of prod did not run to the end: issue 4 left as it is",
        ),
    ],
    ids=["a deploy not completed", "the gate failed", "a check that failed"],
)
def test_a_check_that_did_not_run_leaves_its_issue_as_it_is_and_says_why(
    tmp_path: Path, gate: dict[str, str] | None, check: dict[str, Any], status: str, says: str
) -> None:
    """A skipped check is neither drift nor an error: its stack's issue stays open as it is. Its
    line is a warning annotation, seen on the page of a run that is green (a failed check's run
    is red already)."""
    env = filed_env(PROD, drift_needs(gate, check))
    assert env["STATUS"] == status
    done, calls = run_drift_issue(tmp_path, env, [{"number": 4, "title": "Drift on prod"}])
    assert done.returncode == 0, done.stderr
    assert [call[:2] for call in calls] == [["issue", "list"]]
    (line,) = [line for line in done.stdout.splitlines() if says in line]
    warning = "::warning title=Drift check of prod skipped::"
    assert line == (warning + says if status == "skipped" else says)


# --- review stacks ------------------------------------------------------------------------------


def test_review_stacks_are_opt_in_and_follow_the_pull_request() -> None:
    review = workflow("review-stack.yml")
    types = set(review["on"]["pull_request"]["types"])
    assert {"opened", "synchronize", "reopened", "labeled", "closed", "unlabeled"} <= types
    assert review["on"]["schedule"]
    up = review["jobs"]["up"]
    assert "'review-stack'" in up["if"]
    (step,) = pulumi_steps(up, "up")
    assert step["with"]["stack-name"] == "pr-${{ github.event.pull_request.number }}"
    assert step["with"]["comment-on-pr"] is True
    runs = "\n".join(str(s.get("run", "")) for s in steps(up))
    assert "stacks.py review-config" in runs
    # `make stack` creates it and generates its secrets; the repository's two replace theirs.
    assert runs.index('make stack STACK="$STACK"') < runs.index("pulumi config set --secret")
    assert "stack select" not in runs
    assert "tools.stack_secrets" not in runs


CONTEXT_PATH = re.compile(r"\b(?:github|needs|steps)(?:\.[A-Za-z_*][A-Za-z0-9_-]*)+")


def expression(
    text: str,
    event_name: str = "schedule",
    event: dict[str, Any] | None = None,
    needs: dict[str, Any] | None = None,
    *,
    steps: dict[str, Any] | None = None,
    status: str = "success",
) -> Any:
    """The value of a workflow expression (`${{ }}` around it or not) for a `pull_request` or
    other event, the `needs` of the job it is in and, in a step's `if:`, the `steps` before it
    (by id) and `status`, what became of those steps or the jobs needed (success, failure or
    cancelled: the run was), read the way GitHub reads the few operators these expressions use:
    `&&` and `||` (each the value of an operand), `!` before a call, `==`, `!=`, `contains`,
    `fromJSON`, `success()`, `failure()`, `cancelled()` and `always()`, and `a.*.b` (each `b` of
    the list `a`); a missing property is null."""
    contexts = {
        "github": {"event_name": event_name, "repository": "acme/mlstack", "event": event or {}},
        "needs": needs or {},
        "steps": steps or {},
    }

    def context(path: str) -> Any:
        value: Any = contexts
        for name in path.split("."):
            if name == "*":
                value = list(value or [])
            elif isinstance(value, list):
                value = [item.get(name) for item in value]
            else:
                value = (value or {}).get(name)
        return value

    def contains(where: Any, what: str) -> bool:
        return what in where if where is not None else False

    text = text.strip().removeprefix("${{").removesuffix("}}")
    python = CONTEXT_PATH.sub(lambda m: f"context({m.group(0)!r})", text)
    python = python.replace("&&", " and ").replace("||", " or ").replace("fromJSON(", "loads(")
    python = re.sub(r"!(?!=)", " not ", python)
    functions = {
        "success": lambda: status == "success",
        "failure": lambda: status == "failure",
        "cancelled": lambda: status == "cancelled",
        "always": lambda: True,
    }
    return eval(
        python, {"context": context, "contains": contains, "loads": json.loads, **functions}
    )


def runs_on(
    condition: str,
    event_name: str,
    event: dict[str, Any],
    needs: dict[str, Any] | None = None,
    *,
    steps: dict[str, Any] | None = None,
    status: str = "success",
) -> bool:
    """Whether a job's or a step's `if:` holds for an event, the jobs it needs and, for a step,
    the steps before it and what became of them (`expression`)."""
    return bool(expression(condition, event_name, event, needs, steps=steps, status=status))


def pull_request_event(action: str, state: str = "open", **more: Any) -> dict[str, Any]:
    """A `pull_request` event of a branch of the repository's own, labelled `review-stack`."""
    return {
        "action": action,
        "pull_request": {
            "number": 7,
            "state": state,
            "head": {"repo": {"full_name": "acme/mlstack"}},
            "labels": [{"name": "review-stack"}],
        },
        **more,
    }


REVIEW_LABEL = {"name": "review-stack"}


@pytest.mark.parametrize(
    ("event", "up"),
    [
        (pull_request_event("labeled", label=REVIEW_LABEL), True),
        (pull_request_event("synchronize"), True),
        (pull_request_event("reopened"), True),
        (pull_request_event("labeled", label={"name": "bug"}), False),
        # A closed pull request has no event left that would take a new stack down.
        (pull_request_event("labeled", state="closed", label=REVIEW_LABEL), False),
        (pull_request_event("closed", state="closed"), False),
    ],
    ids=["labelled", "pushed", "reopened", "another label", "labelled once closed", "closed"],
)
def test_a_review_stack_is_deployed_for_an_open_pull_request_only(
    event: dict[str, Any], up: bool
) -> None:
    up_if = workflow("review-stack.yml")["jobs"]["up"]["if"]
    assert runs_on(up_if, "pull_request", event) is up


def test_closing_or_unlabelling_a_pull_request_plans_its_teardown() -> None:
    plan = workflow("review-stack.yml")["jobs"]["plan"]["if"]
    assert runs_on(plan, "pull_request", pull_request_event("closed", state="closed"))
    unlabelled = pull_request_event("unlabeled", label=REVIEW_LABEL)
    unlabelled["pull_request"]["labels"] = []
    assert runs_on(plan, "pull_request", unlabelled)
    assert runs_on(plan, "schedule", {})
    fork = pull_request_event("closed", state="closed")
    fork["pull_request"]["head"]["repo"]["full_name"] = "someone/mlstack"
    assert not runs_on(plan, "pull_request", fork)


def test_make_stack_needs_only_the_environment_ci_sets_up(tmp_path: Path) -> None:
    # A virtual environment not made yet, as on a CI runner before pulumi-setup.
    result = run_make(
        "-n", "stack", "STACK=pr-7", "PULUMI=pulumi", f"VENV={tmp_path}", env=make_env()
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "-r requirements.txt" in result.stdout
    assert "requirements-dev.txt" not in result.stdout
    assert f"touch {tmp_path}/.program-installed" in result.stdout


def test_review_teardown_destroys_then_removes_the_stack() -> None:
    teardown = workflow("review-stack.yml")["jobs"]["teardown"]
    all_steps = steps(teardown)
    (destroy,) = pulumi_steps(teardown, "destroy")
    removes = [s for s in all_steps if "pulumi stack rm" in str(s.get("run", ""))]
    assert len(removes) == 1
    assert "--force" not in removes[0]["run"]
    assert all_steps.index(destroy) < all_steps.index(removes[0])
    assert destroy["with"]["stack-name"] == "pr-${{ matrix.pr }}"
    assert "fromJSON(needs.plan.outputs.prs)" in str(teardown["strategy"]["matrix"]["pr"])


# `pulumi stack ls --json` as a backend that qualifies stack names prints it.
STACK_LIST = json.dumps(
    [
        {"name": f"acme/mlstack/{name}"}
        for name in ("staging", "pr-7", "pr-12", "pr-0", "pr-007", "pr-7a", "pr-")
    ]
)


def test_review_stacks_are_the_names_stacks_py_accepts_for_one() -> None:
    assert script("review-stacks", stdin=STACK_LIST).splitlines() == ["pr-7", "pr-12"]
    assert script("exists", "--stack", "pr-7", stdin=STACK_LIST) == "exists=true\n"
    assert script("exists", "--stack", "pr-8", stdin=STACK_LIST) == "exists=false\n"


def test_a_stack_is_deployed_once_it_has_an_update() -> None:
    assert script("deployed", stdin="[]") == "deployed=false\n"
    history = json.dumps([{"version": 1, "kind": "update", "result": "failed", "config": {}}])
    assert script("deployed", stdin=history) == "deployed=true\n"


@pytest.mark.parametrize(
    ("command", "listing"),
    [
        (["review-stacks"], "pulumi stack ls --json"),
        (["exists", "--stack", "pr-7"], "pulumi stack ls --json"),
        (["deployed"], "pulumi stack history --json"),
    ],
)
def test_no_stack_list_stops_the_step(command: list[str], listing: str) -> None:
    """Without pipefail, a `pulumi stack ls` (or `stack history`) that failed leaves stacks.py an
    empty stdin."""
    result = run_script(*command, stdin="")
    assert result.returncode != 0
    assert listing in result.stderr


def test_the_teardown_asks_stacks_py_whether_the_stack_exists() -> None:
    teardown = workflow("review-stack.yml")["jobs"]["teardown"]
    (exists,) = [s for s in steps(teardown) if s.get("id") == "exists"]
    assert (
        'pulumi stack ls --json | python3 .github/scripts/stacks.py exists --stack "$STACK"'
        in (exists["run"])
    )
    for step in pulumi_steps(teardown):
        assert step.get("if") == "steps.exists.outputs.exists == 'true'"


def test_the_sweep_asks_github_about_each_review_stack() -> None:
    plan = workflow("review-stack.yml")["jobs"]["plan"]
    (sweep,) = [s for s in steps(plan) if s.get("id") == "sweep"]
    assert (
        "pulumi stack ls --json | python3 .github/scripts/stacks.py review-stacks" in sweep["run"]
    )
    assert 'gh api "repos/$REPOSITORY/pulls/$number"' in sweep["run"]
    assert plan["permissions"]["pull-requests"] == "read"


def run_sweep(folder: Path, stacks: list[str], pulls: dict[str, Any]) -> list[int]:
    """The sweep step of the `plan` job, as a runner's bash runs it, against a stand-in Pulumi CLI
    whose backend holds `stacks` and a stand-in gh that knows `pulls` (number -> the API's pull
    request, a number it does not hold missing): the pull requests whose
    stacks it hands to the teardown."""
    (sweep,) = [
        s for s in steps(workflow("review-stack.yml")["jobs"]["plan"]) if s.get("id") == "sweep"
    ]
    pulumi_stand_in(folder, REVIEW_STACK_ANSWERS)
    stand_in(folder, "gh", API_GH_STAND_IN.format(python=sys.executable))
    output = folder / "github-output"
    env = env_first_on_path(
        folder,
        REPOSITORY="acme/mlstack",
        GITHUB_OUTPUT=str(output),
        STAND_IN_STACKS=json.dumps([{"name": f"acme/mlstack/{name}"} for name in stacks]),
        STAND_IN_API=json.dumps(
            {f"repos/acme/mlstack/pulls/{number}": pull for number, pull in pulls.items()}
        ),
    )
    done = run_step(folder, sweep, env)
    assert done.returncode == 0, done.stderr
    (line,) = output.read_text().splitlines()
    name, _, value = line.partition("=")
    assert name == "prs", line
    return list(json.loads(value))


def pull(state: str, *labels: str) -> dict[str, Any]:
    return {"state": state, "labels": [{"name": label} for label in labels]}


def test_the_sweep_tears_down_the_stacks_of_closed_and_unlabelled_pull_requests(
    tmp_path: Path,
) -> None:
    """A stack outlives its pull request's `closed` or `unlabeled` event when that teardown failed
    (or never ran): the sweep finds it either way. A labelled open pull request keeps its stack,
    and so does a stack whose pull request GitHub cannot say anything about."""
    pulls = {
        "1": pull("closed", "review-stack"),
        "2": pull("closed"),
        "3": pull("open", "review-stack", "bug"),
        "4": pull("open", "bug"),
        "5": pull("open"),
    }
    stacks = ["staging", "pr-1", "pr-2", "pr-3", "pr-4", "pr-5", "pr-6"]
    assert run_sweep(tmp_path, stacks, pulls) == [1, 2, 4, 5]


def test_the_sweep_hands_on_nothing_when_every_stack_is_in_use(tmp_path: Path) -> None:
    assert run_sweep(tmp_path, ["prod", "pr-3"], {"3": pull("open", "review-stack")}) == []


def test_the_readme_names_every_setting_of_the_review_stacks() -> None:
    """The repository secrets and variables the review workflow reads (and passes on to
    `stacks.py review-config`) are the ones README's "Review stacks" tells a maintainer to set."""
    used = set(
        re.findall(r"\b(?:vars|secrets)\.(REVIEW_\w+)", json.dumps(workflow("review-stack.yml")))
    )
    assert set(re.findall(r"\bREVIEW_\w+", readme_section("Review stacks"))) == used


@pytest.mark.parametrize(
    "variables",
    [
        {"REVIEW_REGISTRY": "ghcr.io/acme/mlstack-review", "REVIEW_KUBE_CONTEXT": "test"},
        {
            "REVIEW_GATEWAY_IMAGE": "ghcr.io/acme/gateway@sha256:" + "a" * 64,
            "REVIEW_MODEL_IMAGE": "ghcr.io/acme/model@sha256:" + "b" * 64,
            "REVIEW_DATABASE_IMAGE": "ghcr.io/acme/database@sha256:" + "c" * 64,
            "REVIEW_GATEWAY_SERVICE_TYPE": "ClusterIP",
        },
    ],
)
def test_a_review_stack_config_is_valid_for_the_program(
    tmp_path: Path, variables: dict[str, str]
) -> None:
    env = {
        "REVIEW_REGISTRY": "",
        "REVIEW_GATEWAY_IMAGE": "",
        "REVIEW_MODEL_IMAGE": "",
        "REVIEW_DATABASE_IMAGE": "",
        "REVIEW_GATEWAY_SERVICE_TYPE": "",
    }
    script("review-config", "--stack", "pr-7", "--dir", str(tmp_path), env={**env, **variables})
    document = yaml.safe_load((tmp_path / "Pulumi.pr-7.yaml").read_text())
    run = run_program("pr-7", document["config"])
    assert [r.type for r in run.resources if r.type.startswith("mlstack:cluster:")] == [
        "mlstack:cluster:Existing"
    ]
    assert run.one("Namespace", "mlstack-pr-7")
    service_type = variables.get("REVIEW_GATEWAY_SERVICE_TYPE", "LoadBalancer")
    assert run.one("Service", "gateway").inputs["spec"]["type"] == service_type
    assert not [r for r in run.resources if r.protect]
    assert bool(run.by_type("docker:index/image:Image")) == ("REVIEW_REGISTRY" in variables)


REVIEW_VARIABLES = {
    "REVIEW_KUBE_CONTEXT": "test",
    "REVIEW_REGISTRY": "ghcr.io/acme/mlstack-review",
    "REVIEW_GATEWAY_IMAGE": "",
    "REVIEW_MODEL_IMAGE": "",
    "REVIEW_DATABASE_IMAGE": "",
    "REVIEW_GATEWAY_SERVICE_TYPE": "ClusterIP",
}


def test_review_config_json_is_the_stack_file_s_config_as_set_all_reads_it(
    tmp_path: Path,
) -> None:
    """`pulumi config set-all --json` takes `pulumi config --json`'s form: a map or list as its JSON
    text (`value`) beside the value itself (`objectValue`), which marks it as one to parse."""
    script("review-config", "--stack", "pr-7", "--dir", str(tmp_path), env=REVIEW_VARIABLES)
    written = yaml.safe_load((tmp_path / "Pulumi.pr-7.yaml").read_text())["config"]
    printed = json.loads(script("review-config", "--stack", "pr-7", "--json", env=REVIEW_VARIABLES))
    assert set(printed) == set(written)
    for key, entry in printed.items():
        assert entry == {
            "value": json.dumps(written[key]),
            "objectValue": written[key],
            "secret": False,
        }, key
    set_all_json = runpy.run_path(str(SCRIPT))["set_all_json"]
    assert set_all_json({"mlstack:namespace": "review"}) == {
        "mlstack:namespace": {"value": "review", "secret": False}
    }


def test_in_a_renamed_copy_the_script_reads_and_writes_its_own_namespace(tmp_path: Path) -> None:
    """A copy named `mlplatform` (README, "Copying mlstack"): its stack files' keys, and the
    review stacks' it writes, are `mlplatform:`, where its program reads them."""
    copy = copy_project(tmp_path / "project", "mlplatform")
    script_in_copy = str(copy / SCRIPT.relative_to(ROOT))
    review = run_in(
        copy, script_in_copy, "review-config", "--stack", "pr-7", "--json", **REVIEW_VARIABLES
    )
    assert review.returncode == 0, review.stderr
    assert sorted(json.loads(review.stdout)) == [
        f"mlplatform:{key}" for key in ("cluster", "database", "gateway", "images", "model")
    ]
    info = run_in(copy, script_in_copy, "info", "--stack", "staging")
    assert info.returncode == 0, info.stderr
    assert "provider=eks" in info.stdout.splitlines()


@pytest.mark.parametrize("line", ["name: mlplatform", "name: 'mlplatform'  # renamed"])
def test_the_script_reads_the_project_s_name_as_the_program_s_reader_does(
    tmp_path: Path, line: str
) -> None:
    """The script reads Pulumi.yaml without PyYAML (review-config runs before the virtual
    environment exists): it must agree with components/stack_file.py."""
    (tmp_path / "Pulumi.yaml").write_text(f"{line}\nruntime: python\n")
    read = runpy.run_path(str(SCRIPT))["project_name"]
    assert read(tmp_path / "Pulumi.yaml") == project_name(tmp_path) == "mlplatform"
    assert read() == project_name()


def test_the_readme_says_a_destroy_leaves_the_built_images_in_their_registry(
    tmp_path: Path,
) -> None:
    """pulumi-docker's Image deletes no tag it pushed when it is destroyed (its own docstring says
    so): each stack that builds into a registry outside it (staging's, prod's, a review stack's
    REVIEW_REGISTRY) leaves `<registry>/<service>:<project>-<stack>` there after its destroy,
    which README's "Teardown" must say rather than promise that nothing is left."""
    script("review-config", "--stack", "pr-7", "--dir", str(tmp_path), env=REVIEW_VARIABLES)
    review = yaml.safe_load((tmp_path / "Pulumi.pr-7.yaml").read_text())["config"]
    stacks = {"staging": stack_config("staging"), "prod": stack_config("prod"), "pr-7": review}
    for stack, config in stacks.items():
        registry = config["mlstack:images"]["registry"]
        run = run_program(stack, config)
        assert {image.inputs["imageName"] for image in run.by_type("docker:index/image:Image")} == {
            f"{registry}/{service}:mlstack-{stack}" for service in ("gateway", "model", "database")
        }, stack
    teardown = readme_section("Teardown")
    assert "`<registry>/<service>:<project>-<stack>`" in teardown
    assert "Destroy leaves nothing behind." not in teardown


# The stand-in Pulumi CLI of the restore step: `stack ls --json` and `stack history --json` print
# STAND_IN_STACKS and STAND_IN_HISTORY; an unset STAND_IN_HISTORY fails as the CLI does.
REVIEW_STACK_ANSWERS = """\
if args[:2] == ["stack", "ls"]:
    print(os.environ["STAND_IN_STACKS"])
elif args[:2] == ["stack", "history"]:
    if "STAND_IN_HISTORY" not in os.environ:
        sys.exit("error: could not get the stack's history")
    print(os.environ["STAND_IN_HISTORY"])
"""
# `make`, logged among the stand-in Pulumi CLI's calls: one list, in the order they ran.
MAKE_STAND_IN = """\
#!{python}
import json, sys
from pathlib import Path

with (Path(__file__).parent / "{calls}").open("a") as log:
    log.write(json.dumps({{"args": ["(make)", *sys.argv[1:]]}}) + "\\n")
"""


def run_review_stack_step(
    folder: Path, stacks: list[str], history: list[dict[str, Any]] | None
) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """The `up` job's step that readies the stack, as a runner's bash runs it, with a stand-in
    make and a stand-in Pulumi CLI whose backend holds `stacks` and whose `stack history` prints
    `history` (None: fails); how it ended, and every call to either, in order."""
    (step,) = [
        s
        for s in steps(workflow("review-stack.yml")["jobs"]["up"])
        if "make stack" in str(s.get("run", ""))
    ]
    pulumi_stand_in(folder, REVIEW_STACK_ANSWERS)
    stand_in(folder, "make", MAKE_STAND_IN.format(python=sys.executable, calls=PULUMI_CALLS))
    listing = json.dumps([{"name": f"acme/mlstack/{name}"} for name in stacks])
    env = env_first_on_path(
        folder,
        STACK="pr-7",
        DATABASE_PASSWORD="chosen-database-password",
        API_KEY="chosen-api-key",
        STAND_IN_STACKS=listing,
        **REVIEW_VARIABLES,
    )
    if history is not None:
        env["STAND_IN_HISTORY"] = json.dumps(history)
    done = run_step(folder, step, env)
    return done, [call["args"] for call in logged_calls(folder / PULUMI_CALLS)]


UPDATE = {"version": 3, "kind": "update", "result": "succeeded"}


def test_a_deployed_review_stack_gets_its_config_back_before_secrets_are_drawn(
    tmp_path: Path,
) -> None:
    """Each push starts from a fresh checkout without the stack file: the config of the stack's
    last update (its secrets, the passphrase's salt) is restored, this push's settings are set
    over it, and only then does `make stack` draw the secrets still missing."""
    done, calls = run_review_stack_step(tmp_path, ["staging", "pr-7"], [UPDATE])
    assert done.returncode == 0, done.stderr
    settings = script("review-config", "--stack", "pr-7", "--json", env=REVIEW_VARIABLES).strip()
    assert calls[:6] == [
        ["login"],
        ["stack", "ls", "--json"],
        ["stack", "history", "--stack", "pr-7", "--json", "--page-size", "1"],
        ["config", "refresh", "--force", "--stack", "pr-7"],
        ["config", "set-all", "--stack", "pr-7", "--json", settings],
        ["(make)", "stack", "STACK=pr-7", "PULUMI=pulumi"],
    ]
    assert [call[:3] for call in calls[6:]] == [["config", "set", "--secret"]] * 2


@pytest.mark.parametrize(
    ("stacks", "history"),
    [([], None), (["pr-7"], [])],
    ids=["a new stack", "a stack without an update"],
)
def test_a_review_stack_without_an_update_gets_fresh_secrets(
    tmp_path: Path, stacks: list[str], history: list[dict[str, Any]] | None
) -> None:
    """Nothing runs with the secrets of a stack that has had no update: `make stack` draws them."""
    done, calls = run_review_stack_step(tmp_path, stacks, history)
    assert done.returncode == 0, done.stderr
    assert not [
        call for call in calls if call[:2] in (["config", "refresh"], ["config", "set-all"])
    ]
    assert ["(make)", "stack", "STACK=pr-7", "PULUMI=pulumi"] in calls


def test_a_review_stack_whose_history_cannot_be_read_is_left_alone(tmp_path: Path) -> None:
    """Fresh secrets for a stack that has some would change its database's roles: stop instead."""
    done, calls = run_review_stack_step(tmp_path, ["pr-7"], None)
    assert done.returncode != 0
    assert "pulumi stack history --json" in done.stderr
    assert not [call for call in calls if call[0] in ("(make)", "config")]


def test_a_review_stack_without_images_is_refused(tmp_path: Path) -> None:
    no_images = {"REVIEW_REGISTRY": "", "REVIEW_GATEWAY_IMAGE": "", "REVIEW_MODEL_IMAGE": ""}
    result = run_script("review-config", "--stack", "pr-7", "--dir", str(tmp_path), env=no_images)
    assert result.returncode != 0
    assert "REVIEW_REGISTRY" in result.stderr
    assert not (tmp_path / "Pulumi.pr-7.yaml").exists()


@pytest.mark.parametrize(
    ("stack", "expected"),
    [
        (
            "staging",
            {
                "provider": "eks",
                "aws": "true",
                "aws-region": "eu-west-1",
                "gcp": "false",
                "ecr-registry": "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            },
        ),
        (
            "prod",
            {
                "provider": "gke",
                "aws": "false",
                "gcp": "true",
                "gar-registry": "europe-west1-docker.pkg.dev",
            },
        ),
    ],
)
def test_each_stack_gets_the_cloud_logins_it_needs(stack: str, expected: dict[str, str]) -> None:
    lines = script("info", "--stack", stack, env={"PULUMI_BACKEND_URL": ""}).splitlines()
    values = dict(line.split("=", 1) for line in lines)
    assert expected.items() <= values.items()


# --- hygiene ------------------------------------------------------------------------------------


def all_uses() -> Iterator[tuple[str, str]]:
    for path in [*WORKFLOW_FILES, *GITHUB.glob("actions/*/action.yml")]:
        document = load(path)
        step_lists = [job.get("steps") or [] for job in (document.get("jobs") or {}).values()]
        step_lists.append((document.get("runs") or {}).get("steps") or [])
        for step_list in step_lists:
            for step in step_list:
                if "uses" in step:
                    yield path.name, str(step["uses"])


def test_actions_are_pinned_by_major_or_commit() -> None:
    pinned = re.compile(r"^[\w.-]+/[\w./-]+@(v[0-9]+|[0-9a-f]{40})$")
    for name, uses in all_uses():
        if uses.startswith("./"):
            assert uses == SETUP_ACTION, f"{name}: {uses}"
            continue
        assert pinned.match(uses), f"{name}: {uses} is not pinned by major tag or commit"
        if uses.startswith("pulumi/actions@"):
            assert uses == PULUMI_ACTION, f"{name}: {uses}"


def test_permissions_are_least() -> None:
    for path in WORKFLOW_FILES:
        assert load(path)["permissions"] == {}, f"{path.name}: default permissions not dropped"
    for name, job_id, job in jobs():
        granted = job.get("permissions")
        assert isinstance(granted, dict), f"{name} {job_id}: no permissions of its own"
        assert set(granted.values()) <= {"read", "write", "none"}
        writes = {scope for scope, level in granted.items() if level == "write"}
        comments = any((s.get("with") or {}).get("comment-on-pr") for s in steps(job))
        uses_setup = any(s.get("uses") == SETUP_ACTION for s in steps(job))
        files_issues = any("drift_issue.sh" in str(s.get("run", "")) for s in steps(job))
        allowed = {"pull-requests"} if comments else set()
        allowed |= {"issues"} if files_issues else set()
        allowed |= {"id-token"} if uses_setup else set()
        assert writes <= allowed, f"{name} {job_id}: {writes - allowed}"
        if any(str(s.get("uses", "")).startswith("actions/checkout@") for s in steps(job)):
            assert granted.get("contents") == "read", f"{name} {job_id}"


def test_checkouts_leave_no_token_behind() -> None:
    for name, job_id, job in jobs():
        for step in steps(job):
            if str(step.get("uses", "")).startswith("actions/checkout@"):
                assert (step.get("with") or {}).get("persist-credentials") is False, (
                    f"{name} {job_id}"
                )
