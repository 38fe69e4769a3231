"""Render the Kubernetes objects a stack deploys as plain YAML manifests.

    python -m tools.render --stack prod                 # -> build/manifests/prod/
    python -m tools.render --stack prod --out some/dir
    python -m tools.render --all                        # every Pulumi.<stack>.yaml

The program runs under Pulumi's mocks (harness/program.py): no cluster, Docker daemon or
cloud is touched. Each object is written as it reaches the provider (camelCase keys, integers as
integers, the names the components set), one file per object named `<kind>-<name>.yaml`, keys
sorted (apiVersion, kind, metadata first) so that two renders diff line by line. Resources that
are not Kubernetes objects (docker, gcp, eks, providers, components) are left out. The values of
a Secret are never written: each becomes `<secret>`. A render replaces the manifests an earlier
one wrote in its folder and leaves every other file there as it is.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from pulumi.runtime import rpc

from components.stack_file import stacks
from harness.program import ROOT, TEST_SECRETS, ProgramRun, run_program

DEFAULT_OUT: Final = ROOT / "build" / "manifests"
SECRET_PLACEHOLDER: Final = "<secret>"
UNKNOWN_PLACEHOLDER: Final = "<unknown>"
# Kubernetes type tokens that are Pulumi components, not objects: their children are registered
# (and rendered) one by one.
COMPONENT_MODULES: Final = ("yaml/", "helm.sh/", "kustomize/")
# The order objects are listed in (and applied in by `kubectl apply -f` over a file list).
KIND_ORDER: Final = (
    "Namespace",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "PersistentVolumeClaim",
    "Service",
    "Deployment",
    "StatefulSet",
    "PodDisruptionBudget",
    "NetworkPolicy",
)
TOP_KEYS: Final = ("apiVersion", "kind", "metadata")


@dataclass(frozen=True)
class Manifest:
    """One Kubernetes object of a stack, ready to be written."""

    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"].get("namespace", ""))

    @property
    def filename(self) -> str:
        return f"{self.kind.lower()}-{self.name}.yaml"

    def sort_key(self) -> tuple[int, str, str, str]:
        rank = KIND_ORDER.index(self.kind) if self.kind in KIND_ORDER else len(KIND_ORDER)
        return (rank, self.kind, self.namespace, self.name)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.body, sort_keys=False, default_flow_style=False, width=100)


def manifests(run: ProgramRun) -> list[Manifest]:
    """The Kubernetes objects `run` registered, normalised and sorted."""
    found: list[Manifest] = []
    for resource in run.resources:
        if not resource.type.startswith("kubernetes:"):
            continue
        module = resource.type.split(":")[1]
        if module.startswith(COMPONENT_MODULES) or resource.read:
            continue
        inputs = resource.inputs
        if "apiVersion" not in inputs or "kind" not in inputs:
            raise ValueError(f"{resource.type} {resource.name}: no apiVersion/kind to render")
        if not (inputs.get("metadata") or {}).get("name"):
            raise ValueError(f"{resource.type} {resource.name}: metadata.name is not set")
        body = _object(inputs)
        if body["kind"] == "Secret":
            body = _redact(body)
        found.append(Manifest(body))
    found.sort(key=Manifest.sort_key)
    names = [m.filename for m in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"two objects would be written to {', '.join(duplicates)}")
    return found


def _object(inputs: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {key: _plain(value) for key, value in inputs.items()}
    first: dict[str, Any] = {key: body.pop(key) for key in TOP_KEYS if key in body}
    return {**first, **dict(sorted(body.items()))}


def _plain(value: Any) -> Any:
    """Keys sorted, integral numbers as integers (the mocks hand every number over as a float)."""
    if isinstance(value, dict):
        return {str(key): _plain(value[key]) for key in sorted(value)}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if value == rpc.UNKNOWN:
        return UNKNOWN_PLACEHOLDER
    return value


def _redact(body: dict[str, Any]) -> dict[str, Any]:
    redacted = dict(body)
    for key in ("data", "stringData"):
        if isinstance(redacted.get(key), dict):
            redacted[key] = dict.fromkeys(redacted[key], SECRET_PLACEHOLDER)
    return redacted


def render(stack: str) -> list[Manifest]:
    """Run the program for `stack` under the mocks and return its Kubernetes objects."""
    return manifests(run_program(stack))


def written_before(path: Path) -> bool:
    """Whether `path` is a manifest as `write` writes them: a YAML file named for the kind and
    name of the one object it holds. Nothing else in a folder is a render's to remove."""
    try:
        body = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
        return False
    kind, name = body.get("kind"), body["metadata"].get("name")
    return isinstance(kind, str) and isinstance(name, str) and path.name == Manifest(body).filename


def write(found: Iterable[Manifest], out: Path) -> list[Path]:
    """Replace the manifests an earlier render wrote in `out` with `found`, leaving any other
    file there as it is; refuse to write a secret value."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.yaml"):
        if written_before(stale):
            stale.unlink()
    written: list[Path] = []
    for manifest in found:
        text = manifest.to_yaml()
        for key, secret in TEST_SECRETS.items():
            if secret in text:
                raise RuntimeError(f"{manifest.filename} would contain the value of {key}")
        path = out / manifest.filename
        path.write_text(text)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.render", description=__doc__)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--stack", action="append", help="a stack (repeatable)")
    which.add_argument("--all", action="store_true", help="every Pulumi.<stack>.yaml")
    parser.add_argument(
        "--out", type=Path, help="folder for one stack (default build/manifests/<stack>)"
    )
    args = parser.parse_args(argv)
    chosen: list[str] = stacks() if args.all else args.stack
    require_stack_files(parser, chosen)
    if args.out is not None and len(chosen) != 1:
        parser.error("--out takes exactly one --stack")
    for stack in chosen:
        out = args.out if args.out is not None else DEFAULT_OUT / stack
        written = write(render(stack), out)
        print(f"{stack}: {len(written)} objects -> {shown(out)}")
    return 0


def require_stack_files(parser: argparse.ArgumentParser, chosen: Iterable[str]) -> None:
    """A usage error (exit 2) when a `--stack` in `chosen` has no Pulumi.<stack>.yaml."""
    unknown = sorted(set(chosen) - set(stacks()))
    if unknown:
        parser.error(f"no stack file for {', '.join(unknown)}: expected one of {stacks()}")


def shown(path: Path) -> str:
    """A path as the project names it: relative to the root when it lies under it."""
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(resolved)


if __name__ == "__main__":
    sys.exit(main())
