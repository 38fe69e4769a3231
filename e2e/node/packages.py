"""The Debian packages the node needs (e2e/node-packages.txt): which are missing; installing
them."""

from __future__ import annotations

from typing import Final

from e2e import apt
from e2e.controlplane import E2E_DIR

PACKAGES_FILE: Final = E2E_DIR / "node-packages.txt"


def debian_packages() -> list[str]:
    """The Debian packages the node needs (e2e/node-packages.txt)."""
    return apt.listed(PACKAGES_FILE)


def missing_packages() -> list[str]:
    return apt.missing(debian_packages())


def ensure_packages() -> None:
    """Install the node's Debian packages that are missing (as root)."""
    apt.install_missing(debian_packages())
