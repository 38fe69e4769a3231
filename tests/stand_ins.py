"""Stand-in executables for the tests that run a real script or tool against made-up commands: a
script written as the command's name in a folder, and that folder put first on PATH, so the
script or tool under test finds the stand-in before the machine's own."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def stand_in(folder: Path, name: str, script: str) -> Path:
    """`script` (its `#!` line included) as the executable `name` in `folder`, made if missing."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(script)
    path.chmod(0o755)
    return path


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
