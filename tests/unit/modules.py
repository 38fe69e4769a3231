"""The project's own Python modules, by the name they are imported under: what the tests over the
code's structure (imports, where shared mechanisms live) read."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from tests.paths import ROOT

# Folders whose modules are named from the project root (`components.config`).
ROOT_PACKAGES: Final = ("components", "tools", "harness", "e2e", "bench", "tests")
# The services' packages are top-level in their own folders, as in their images.
SERVICE_PACKAGES: Final = tuple(sorted(ROOT.glob("services/*/mlstack_*")))


def module_files() -> Iterator[tuple[str, Path]]:
    for package in ROOT_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield _name(path.relative_to(ROOT)), path
    for service in SERVICE_PACKAGES:
        for path in sorted(service.rglob("*.py")):
            yield _name(path.relative_to(service.parent)), path


@functools.cache
def parsed(path: Path) -> ast.Module:
    """`path`'s syntax tree, read once for all the structural tests (which only read it)."""
    return ast.parse(path.read_text(), str(path))


def _name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)
