"""The Debian packages the node needs (e2e/node-packages.txt): which are missing; installing
them."""

from __future__ import annotations

from typing import Final

from e2e import apt
from e2e.controlplane import E2E_DIR
from e2e.node.host import log
from e2e.process import run

PACKAGES_FILE: Final = E2E_DIR / "node-packages.txt"


def debian_packages() -> list[str]:
    """The Debian packages the node needs (e2e/node-packages.txt)."""
    return apt.listed(PACKAGES_FILE)


def missing_packages() -> list[str]:
    missing = []
    for name in debian_packages():
        status = run("dpkg-query", "-W", "-f=${Status}", name, check=False).stdout
        if status.strip() != "install ok installed":
            missing.append(name)
    return missing


def ensure_packages() -> None:
    """Install the node's Debian packages that are missing (as root)."""
    missing = missing_packages()
    if not missing:
        return
    log(f"installing {' '.join(missing)}")
    apt.install(missing)
