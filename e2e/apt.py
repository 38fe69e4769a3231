"""Debian packages installed on the machine with apt-get, for the parts of e2e that need them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

# Seconds apt-get waits for another apt or dpkg (an unattended upgrade) to release its lock.
LOCK_TIMEOUT: Final = 300


def listed(path: Path) -> list[str]:
    """The packages a list file names: one a line; `#` starts a comment, to the end of its line.
    (.ci/run and the GitHub workflow read the files the same way, with sed.)"""
    names = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def install(packages: Sequence[str]) -> None:
    """`apt-get update`, then `packages` installed without their recommendations; root only."""
    if os.geteuid() != 0:
        raise RuntimeError(
            f"missing Debian packages {', '.join(packages)}: "
            f"apt-get install {' '.join(packages)} (as root)"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lock = ["-o", f"DPkg::Lock::Timeout={LOCK_TIMEOUT}"]
    # Its progress on stderr: a command's stdout is what it answers (the node's timings, say).
    subprocess.run(["apt-get", *lock, "update", "-q"], check=True, env=env, stdout=sys.stderr)
    subprocess.run(
        ["apt-get", *lock, "install", "-yq", "--no-install-recommends", *packages],
        check=True,
        env=env,
        stdout=sys.stderr,
    )
