"""The project as a team that adopts it copies it: Pulumi.yaml's `name` changed and, unless told
otherwise, its stack files' keys moved into the new name's namespace. The copy holds what runs the
program and its tools (the program, components/, harness/, tools/, .github/scripts/, the stack
files); what runs in it runs in a subprocess whose imports are the copy's, so that its modules
read the copy's Pulumi.yaml, as the CLI does. (The project copied is this one, whatever its own
name: the tests that copy it hold in a copy too.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

from components.stack_file import PROJECT_FILE, project_name
from tests.paths import ROOT

COPIED: Final = (
    PROJECT_FILE,
    "__main__.py",
    "requirements.txt",
    "components",
    "harness",
    "tools",
    ".github/scripts",
)
# What a copy's program run prints: every stack's resources as the harness records them, or the
# lines it logged when it stopped.
_RUN: Final = """
import dataclasses, json, sys
from harness.program import ProgramExitError, run_program
runs = {}
for stack in sys.argv[1:]:
    try:
        run = run_program(stack)
    except ProgramExitError as exited:
        runs[stack] = {"errors": exited.errors}
        continue
    # In a stable order: what a component makes inside an `apply` registers when that resolves.
    resources = [dataclasses.asdict(resource) for resource in run.resources]
    resources.sort(key=lambda resource: (resource["type"], resource["name"]))
    for resource in resources:
        resource["waits_for"].sort()
    runs[stack] = {"resources": resources, "outputs": run.outputs}
print(json.dumps(runs, default=str))
"""


def copy_project(folder: Path, project: str, *, keys: str | None = None) -> Path:
    """The project copied into `folder` (emptied first) and named `project`, its stack files'
    keys in the namespace `keys` (by default `project`'s)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in COPIED:
        source, target = ROOT / name, folder / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    project_file = folder / PROJECT_FILE
    current = re.escape(project_name())
    named, count = re.subn(
        rf"^name: {current}$", f"name: {project}", project_file.read_text(), flags=re.M
    )
    assert count == 1, "Pulumi.yaml names the project once"
    project_file.write_text(named)
    # A stack file's own keys: `  mlstack:gateway:` under `config:`.
    own_key = re.compile(rf"^(\s+){current}:", re.MULTILINE)
    for stack_file in ROOT.glob("Pulumi.*.yaml"):
        text = own_key.sub(rf"\g<1>{keys or project}:", stack_file.read_text())
        (folder / stack_file.name).write_text(text)
    return folder


def run_in(copy: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python ARGS` in `copy`, importing the copy's modules; `env` added to the environment."""
    environment = {**os.environ, "PYTHONPATH": str(copy), **env}
    return subprocess.run(
        [sys.executable, *args],
        check=False,
        cwd=copy,
        env=environment,
        capture_output=True,
        text=True,
    )


def program_runs(copy: Path, *stacks: str) -> dict[str, Any]:
    """Each of `stacks` run under the copy's harness: its resources (as `dataclasses.asdict` of
    harness.program.Registered) and outputs, or the `errors` the program stopped with."""
    ran = run_in(copy, "-c", _RUN, *stacks)
    assert ran.returncode == 0, ran.stderr
    runs: dict[str, Any] = json.loads(ran.stdout)
    return runs
