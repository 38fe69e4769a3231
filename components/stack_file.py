"""The stack files, `Pulumi.<stack>.yaml`, and the program's own config in them: the one reader of
stack config for the program (`components/config.py` types and validates what it returns), the
mocks harness, the operations tools and the CI scripts.

The program's own keys are in its project's namespace, `mlstack:` (Pulumi.yaml's `name`): Pulumi
puts a key given without a namespace there (`pulumi config set apiKey`), and the keys Pulumi.yaml
declares, so a copy of the project renamed `mlplatform` reads `mlplatform:` keys (README, "Copying
mlstack"). The Pulumi engine hands a program its config as strings, objects JSON-encoded; a stack
file holds YAML values; `pulumi config --json` wraps each value in an entry. Each is turned here
into the same plain mapping, `key -> value`, with the namespace taken off. Nothing here imports
Pulumi.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import yaml

# A config value of any type, kept as it is.
_V = TypeVar("_V")

ROOT: Final = Path(__file__).resolve().parents[1]
PROJECT_FILE: Final = "Pulumi.yaml"
# The project's name as mlstack ships it: the namespace of the stack files a copy starts from.
ORIGINAL_PROJECT: Final = "mlstack"


@functools.cache
def project_name(root: Path = ROOT) -> str:
    """The project's name, Pulumi.yaml's `name`: the namespace of the program's own config keys,
    as the CLI gives it to the program (`pulumi.get_project()`)."""
    document = yaml.safe_load((root / PROJECT_FILE).read_text()) or {}
    return str(document["name"])


def in_project(values: Mapping[str, _V], project: str | None = None) -> dict[str, _V]:
    """`values` by their config keys in `project`'s namespace (this project's by default):
    `project_values`' inverse, for a stack file or the engine's config."""
    namespace = project_name() if project is None else project
    return {f"{namespace}:{key}": value for key, value in values.items()}


def stacks(root: Path = ROOT) -> list[str]:
    """Every stack that has a stack file in `root`, sorted."""
    return sorted(path.name.split(".")[1] for path in root.glob("Pulumi.*.yaml"))


def path_of(stack: str, root: Path = ROOT) -> Path:
    return root / f"Pulumi.{stack}.yaml"


def read_config(stack: str, root: Path = ROOT) -> dict[str, Any]:
    """The `config:` of `Pulumi.<stack>.yaml`, full keys (`mlstack:cluster`), values as the
    stack file gives them (a secret as its `secure:` ciphertext)."""
    document = yaml.safe_load(path_of(stack, root).read_text()) or {}
    return dict(document.get("config") or {})


def project_values(
    config: Mapping[str, object], namespace: str, strings: Collection[str] = ()
) -> dict[str, object]:
    """The keys of `config` in `namespace` (the project's), without it, string values decoded as
    JSON where they are JSON (the engine's encoding of objects, numbers and booleans), but for
    the keys in `strings`: those are strings whatever they look like (a secret of digits, or one
    in quotes, is that text)."""
    values: dict[str, object] = {}
    for full_key, value in config.items():
        key_namespace, _, key = full_key.partition(":")
        if key_namespace != namespace:
            continue
        # The engine's environment spells a key `<namespace>:config:<key>`.
        key = key.removeprefix("config:")
        if key in strings:
            values[key] = value
            continue
        try:
            values[key] = json.loads(value) if isinstance(value, str) else value
        except json.JSONDecodeError:
            values[key] = value
    return values


def from_cli(entries: Mapping[str, Mapping[str, Any]], namespace: str) -> dict[str, object]:
    """The values in `namespace` of `pulumi config --json`: each entry's `objectValue` when the
    value is structured, else its `value` (absent for a secret not shown)."""
    flat: dict[str, object] = {}
    for key, entry in entries.items():
        if "objectValue" in entry:
            flat[key] = entry["objectValue"]
        elif "value" in entry:
            flat[key] = entry["value"]
    return project_values(flat, namespace)
