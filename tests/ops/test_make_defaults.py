"""The Makefile's defaults.

Where make puts something a Python tool also finds by default: the two say the same place. make
creates the place (Checkov's virtual environment, a local cluster's folder); a tool that is not
told where it is looks for it at its Python default.

The state backend of the targets that run the Pulumi CLI on a stack, against the stand-in CLI
(tests/stand_ins.py): PULUMI_BACKEND_URL, else the backend `pulumi login` chose, else, for the dev
stack alone, the local file backend; any other stack stops before a Pulumi command runs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import cluster_bench
from harness.make import make_env, run_make
from harness.program import ROOT
from tests.stand_ins import PULUMI_CALLS, logged_calls, pulumi_stand_in, stand_in
from tools import policy


def dry_run(*arguments: str) -> str:
    result = run_make("-n", *arguments, env=make_env("E2E_CLUSTER_DIR"))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_make_installs_checkov_where_tools_policy_runs_it() -> None:
    # -B: the commands that make the environment, though it may be there already.
    made = re.search(r"-m venv (\S+)$", dry_run("-B", "checkov-venv"), re.M)
    assert made is not None
    assert ROOT / made.group(1) / "bin" / "checkov" == policy.DEFAULT_CHECKOV


def test_make_policy_leaves_the_checkov_path_to_tools_policy() -> None:
    dry = dry_run("policy").splitlines()
    (gate,) = [line for line in dry if " -m tools.policy " in line]
    assert gate.endswith("-m tools.policy --out build/manifests")
    (suite,) = [line for line in dry if " -m pytest tests/policy" in line]
    assert suite.startswith(".venv/bin/python "), suite


def test_the_benchmarks_find_the_cluster_where_make_e2e_cluster_leaves_it() -> None:
    made = re.search(r"-m e2e\.cluster down (\S+)$", dry_run("e2e-clean"), re.M)
    assert made is not None
    assert made.group(1) == str(cluster_bench.DEFAULT_DIR)


# --- the state backend ------------------------------------------------------------------------

LOCAL_BACKEND = f"file://{ROOT}/.pulumi-local"
# The stand-in's answer to `config --json` (tools.stack_secrets): a stack with no config yet.
NEW_STACK = """\
if args[1:3] == ["config", "--json"]:
    print("{}")
"""
# What `pulumi whoami --verbose` prints when logged in to Pulumi Cloud.
LOGGED_IN_BACKEND = "https://api.pulumi.com"
# Each target that runs the Pulumi CLI on $(STACK), with the variables it needs besides.
BACKEND_TARGETS: dict[str, tuple[str, ...]] = {
    "stack": (),
    "up": (),
    "preview": (),
    "down": (),
    "switchover": (),
    "backup": (),
    "restore": ("TIME=2026-12-04 21:30:00+00:00",),
    "drift": (),
}


def make_on_the_stand_in(
    folder: Path, *arguments: str, backend: str | None = None, logged_in: bool = False
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """`make *arguments` on the stand-in Pulumi CLI in `folder`, logged in nowhere unless
    `logged_in`, with PULUMI_BACKEND_URL `backend` (unset when None): what make did and each
    Pulumi call it made but `whoami`, with the backend and passphrase the call was given."""
    pulumi = pulumi_stand_in(folder, NEW_STACK)
    if logged_in:
        # `whoami` answers as Pulumi Cloud's login does; every other call goes to the stand-in.
        pulumi = stand_in(
            folder / "logged-in",
            "pulumi",
            "#!/bin/sh\n"
            'if [ "$1" = whoami ]; then\n'
            f"  printf 'User: me\\nBackend URL: {LOGGED_IN_BACKEND}\\n'; exit 0\n"
            "fi\n"
            f'exec {pulumi} "$@"\n',
        )
    # Neither a backend, a passphrase nor a stack of the caller's reaches this run.
    env = make_env("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE", "STACK")
    if backend is not None:
        env["PULUMI_BACKEND_URL"] = backend
    result = run_make(*arguments, f"PULUMI={pulumi}", env=env)
    return result, logged_calls(folder / PULUMI_CALLS)


def test_the_backend_targets_are_those_make_hands_the_backend_to() -> None:
    exported = re.search(
        r"^([\w ]+): export PULUMI_BACKEND_URL =", (ROOT / "mk/stack.mk").read_text(), re.M
    )
    assert exported is not None
    assert sorted(exported.group(1).split()) == sorted(BACKEND_TARGETS)


def test_make_up_logged_in_nowhere_runs_dev_on_the_local_file_backend(tmp_path: Path) -> None:
    result, calls = make_on_the_stand_in(tmp_path, "up")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == f"make: stack dev, state backend {LOCAL_BACKEND}"
    assert calls[0]["args"] == ["stack", "select", "--create", "dev"]
    assert calls[-1]["args"][:4] == ["up", "--stack", "dev", "--yes"]
    for call in calls:
        assert call["PULUMI_BACKEND_URL"] == LOCAL_BACKEND
        assert call["PULUMI_CONFIG_PASSPHRASE"] == ""


@pytest.mark.parametrize("target", sorted(BACKEND_TARGETS))
def test_a_target_without_the_pulumi_cli_says_so_before_anything_else(
    tmp_path: Path, target: str
) -> None:
    """Not a missing login: a missing CLI, for every target that runs it (on a stack other than
    dev, the backend check would otherwise say `pulumi: command not found` as why)."""
    env = make_env("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE", "STACK")
    missing = tmp_path / "bin" / "pulumi"
    result = run_make(target, "STACK=prod", *BACKEND_TARGETS[target], f"PULUMI={missing}", env=env)
    assert result.returncode != 0
    (line,) = [line for line in result.stderr.splitlines() if not line.startswith("make: ***")]
    assert line.startswith("make: the Pulumi CLI is not installed"), result.stderr


@pytest.mark.parametrize(
    ("target", "stack"),
    [(target, "prod") for target in BACKEND_TARGETS] + [("up", "staging"), ("preview", "pr-7")],
)
def test_another_stack_logged_in_nowhere_stops_before_any_pulumi_command(
    tmp_path: Path, target: str, stack: str
) -> None:
    result, calls = make_on_the_stand_in(
        tmp_path, target, f"STACK={stack}", *BACKEND_TARGETS[target]
    )
    assert result.returncode != 0
    assert calls == []  # no stack selected or created, no secret written, nothing read
    # One line, make's own "make: *** [...] Error 1" aside: why, and what to do.
    (line,) = [line for line in result.stderr.splitlines() if not line.startswith("make: ***")]
    assert line.startswith(f"make: stack {stack} has no state backend: ")
    assert "error: PULUMI_ACCESS_TOKEN must be set" in line  # what `pulumi whoami` said
    assert "Run 'pulumi login <backend>' or set PULUMI_BACKEND_URL" in line
    assert "stack select" not in result.stdout


def test_a_stack_with_pulumi_backend_url_runs_there(tmp_path: Path) -> None:
    backend = f"file://{tmp_path}/state"
    result, calls = make_on_the_stand_in(tmp_path, "up", "STACK=prod", backend=backend)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == f"make: stack prod, state backend {backend}"
    assert calls[0]["args"] == ["stack", "select", "prod"]
    assert calls[-1]["args"][:4] == ["up", "--stack", "prod", "--yes"]
    assert {call["PULUMI_BACKEND_URL"] for call in calls} == {backend}


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_a_stack_runs_on_the_backend_pulumi_login_chose(tmp_path: Path, stack: str) -> None:
    result, calls = make_on_the_stand_in(tmp_path, "preview", f"STACK={stack}", logged_in=True)
    assert result.returncode == 0, result.stdout + result.stderr
    line = f"make: stack {stack}, state backend {LOGGED_IN_BACKEND}"
    assert result.stdout.splitlines()[0] == line
    # Only dev is created where the backend lacks it.
    select = (
        ["stack", "select", "--create", stack] if stack == "dev" else ["stack", "select", stack]
    )
    assert calls[0]["args"] == select
    assert calls[-1]["args"][:3] == ["preview", "--stack", stack]
    # Empty: the CLI takes the backend of its login.
    assert {call["PULUMI_BACKEND_URL"] for call in calls} == {""}


# The stand-in's answer where the backend has no stack of that name: `stack select` without
# --create fails as the CLI's does.
NO_STACK = """\
if args[:2] == ["stack", "select"] and "--create" not in args:
    print(f"error: no stack named '{args[-1]}' found", file=sys.stderr)
    sys.exit(255)
"""


@pytest.mark.parametrize("target", ["up", "preview"])
def test_up_and_preview_begin_no_stack_but_dev(tmp_path: Path, target: str) -> None:
    """Logged in to a backend without staging (another than CI's), `make preview STACK=staging`
    would otherwise create an empty staging there, whose preview is all creates and whose `up`
    makes a second cluster: it stops, and says how a stack is begun on purpose."""
    pulumi = pulumi_stand_in(tmp_path, NO_STACK + NEW_STACK)
    env = make_env("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE", "STACK")
    env["PULUMI_BACKEND_URL"] = f"file://{tmp_path}/state"
    result = run_make(target, "STACK=staging", f"PULUMI={pulumi}", env=env)
    assert result.returncode != 0
    calls = logged_calls(tmp_path / PULUMI_CALLS)
    assert [call["args"] for call in calls] == [["stack", "select", "staging"]]
    assert "error: no stack named 'staging' found" in result.stderr
    assert "'make stack STACK=staging' creates it" in result.stderr


def test_make_stack_begins_the_stack_it_names(tmp_path: Path) -> None:
    result, calls = make_on_the_stand_in(
        tmp_path, "stack", "STACK=staging", backend=f"file://{tmp_path}/state"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls[0]["args"] == ["stack", "select", "--create", "staging"]
