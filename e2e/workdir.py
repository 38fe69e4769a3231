"""`InWorkdir`: a file or folder at a fixed place in an object's working folder, declared in one
line where a property would take three."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class HasWorkdir(Protocol):
    @property
    def workdir(self) -> Path: ...


class InWorkdir:
    """In a class whose instances have a `workdir`, `socket = InWorkdir("docker.sock")` makes
    `instance.socket` the path `instance.workdir / "docker.sock"` (several parts: a deeper path)."""

    def __init__(self, *parts: str) -> None:
        self._parts = parts

    def __get__(self, instance: HasWorkdir, owner: type | None = None) -> Path:
        return instance.workdir.joinpath(*self._parts)
