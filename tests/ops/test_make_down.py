"""`make down STACK=...` against a stand-in Pulumi CLI that records what it is asked to do."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.make import make_env, run_make
from harness.program import ROOT
from tests.stand_ins import PULUMI_CALLS, logged_calls, pulumi_stand_in

# `stack export` prints the state the test gives (FAKE_PULUMI_STATE), or fails as for a stack
# the backend does not have.
EXPORT = """\
if args[:2] == ["stack", "export"]:
    state = os.environ.get("FAKE_PULUMI_STATE")
    if state is None:
        sys.exit("error: no stack named " + args[-1] + " found")
    print(state)
"""


def state(*resources: dict[str, Any]) -> str:
    return json.dumps({"version": 3, "deployment": {"resources": list(resources)}})


def make_down(
    tmp_path: Path, stack: str, exported: str | None
) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    pulumi = pulumi_stand_in(tmp_path, EXPORT)
    # Neither a stray state nor a backend of the caller's reaches this run.
    env = make_env("FAKE_PULUMI_STATE", "PULUMI_BACKEND_URL")
    if exported is not None:
        env["FAKE_PULUMI_STATE"] = exported
    # Logged in nowhere: dev falls back to the local file backend, any other stack needs
    # PULUMI_BACKEND_URL (test_make_defaults.py).
    backend = f"file://{ROOT}/.pulumi-local" if stack == "dev" else f"file://{tmp_path}/state"
    if stack != "dev":
        env["PULUMI_BACKEND_URL"] = backend
    result = run_make("down", f"STACK={stack}", f"PULUMI={pulumi}", env=env)
    logged = logged_calls(tmp_path / PULUMI_CALLS)
    backends = {call["PULUMI_BACKEND_URL"] for call in logged}
    assert backends <= {backend}, backends
    return result, [call["args"] for call in logged]


@pytest.mark.parametrize("stack", ["dev", "staging", "pr-7"])
def test_down_destroys_then_removes_the_stack(tmp_path: Path, stack: str) -> None:
    result, calls = make_down(tmp_path, stack, state({"urn": "urn:pulumi:a", "protect": False}))
    assert result.returncode == 0, result.stderr
    # The backend named before anything else runs (make_down holds each call to it).
    assert result.stdout.startswith(f"make: stack {stack}, state backend file://")
    assert calls == [
        ["stack", "export", "--stack", stack],
        ["destroy", "--stack", stack, "--yes"],
        # The stack file is part of the project: `stack rm` must not delete it.
        ["stack", "rm", "--stack", stack, "--yes", "--preserve-config"],
    ]


def test_down_refuses_a_protected_stack_and_says_how_to_unprotect(tmp_path: Path) -> None:
    volume = "urn:pulumi:prod::mlstack::kubernetes:core/v1:PersistentVolumeClaim::data"
    result, calls = make_down(
        tmp_path,
        "prod",
        state(
            {"urn": "urn:pulumi:prod::mlstack::x", "protect": False},
            {"urn": volume, "protect": True},
        ),
    )
    assert result.returncode != 0
    assert calls == [["stack", "export", "--stack", "prod"]]  # nothing destroyed
    message = result.stderr
    assert "stack prod is protected" in message
    assert volume in message
    assert "pulumi config set --stack prod protect false" in message
    assert "pulumi up --stack prod" in message
    assert "pulumi state unprotect --stack prod --all" in message


def test_down_stops_when_the_stack_cannot_be_read(tmp_path: Path) -> None:
    result, calls = make_down(tmp_path, "nosuchstack", None)
    assert result.returncode != 0
    assert calls == [["stack", "export", "--stack", "nosuchstack"]]
    assert "cannot read the state of stack nosuchstack" in result.stderr
