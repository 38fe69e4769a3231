"""Stand-in executables for the tests that run a real script or tool against made-up commands: a
script written as the command's name in a folder, and that folder put first on PATH, so the
script or tool under test finds the stand-in before the machine's own. And the stand-in Pulumi
CLI the tests of make and the tools share: logged in nowhere, logging every call, answering what
each test tells it to."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Final

# Where the stand-in Pulumi CLI logs its calls, in its own folder; read with `logged_calls`.
PULUMI_CALLS: Final = "pulumi-calls.jsonl"
# What the stand-in Pulumi CLI runs before a test's answers, which follow it unindented.
_PULUMI: Final = """\
#!{python}
import json, os, sys
from pathlib import Path

here = Path(__file__).parent
args = sys.argv[1:]
if args[:1] == ["whoami"]:
    # Logged in nowhere: make (PULUMI_LOGGED_IN) falls back to the local file backend.
    sys.exit("error: PULUMI_ACCESS_TOKEN must be set for login during non-interactive sessions")
with (here / "{calls}").open("a") as log:
    env = {{k: os.environ.get(k) for k in ("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE")}}
    log.write(json.dumps({{"args": args, **env}}) + "\\n")
"""


def stand_in(folder: Path, name: str, script: str) -> Path:
    """`script` (its `#!` line included) as the executable `name` in `folder`, made if missing."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(script)
    path.chmod(0o755)
    return path


def pulumi_stand_in(folder: Path, answers: str) -> Path:
    """A stand-in `pulumi` in `folder`. Logged in nowhere: `whoami` fails as the CLI's does. It
    logs every other call to PULUMI_CALLS beside it, a JSON object a line: the call's `args` and
    the PULUMI_BACKEND_URL and PULUMI_CONFIG_PASSPHRASE it was given (null when unset). Then
    `answers` answers it: Python run with `args` (the arguments), `here` (this folder), and
    json, os and sys imported; a call it does not answer exits 0 and prints nothing."""
    script = _PULUMI.format(python=sys.executable, calls=PULUMI_CALLS)
    return stand_in(folder, "pulumi", script + answers)


def first_on_path(folder: Path) -> str:
    """This process's PATH with `folder` before it."""
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def env_first_on_path(folder: Path, **variables: str) -> dict[str, str]:
    """This process's environment, `folder` first on its PATH and `variables` added: for a
    subprocess that is to find the stand-ins in `folder`."""
    return {**os.environ, "PATH": first_on_path(folder), **variables}


def logged_calls(log: Path) -> list[Any]:
    """What a stand-in wrote to `log`, a JSON value a line (each call it answered); none when it
    was never called."""
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
