"""The policy gate: render every stack, then hold what it would deploy to the project's bar.

    python -m tools.policy                      # every Pulumi.<stack>.yaml
    python -m tools.policy --stack prod --checkov .venv-checkov/bin/checkov

For each stack: its Kubernetes objects are rendered to build/manifests/<stack>/ (tools.render),
each object is validated against the Kubernetes OpenAPI schemas in strict mode (no unknown field)
for the oldest and the newest Kubernetes version the project supports, and Checkov's Kubernetes
checks run over them; the services' Dockerfiles are linted (tools.dockerfile_lint). A table per
stack follows. Any schema error, failed check, skip without a reason or Dockerfile finding makes
the exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import kubernetes_validate
import yaml

from components.image import SERVICES, SERVICES_DIR
from harness.program import ROOT
from tools import dockerfile_lint, render

# The Kubernetes versions mlstack supports, oldest and newest: the oldest is the release of the
# local cluster's default k3s image (components/config.py); the newest is the newest schema set
# kubernetes-validate ships. The README ("Policy") names them too.
KUBERNETES_VERSIONS: Final = ("1.31", "1.37")
DEFAULT_CHECKOV: Final = ROOT / ".venv-checkov" / "bin" / "checkov"
# What Checkov records for a checkov.io/skip annotation that gives no reason.
NO_REASON: Final = "No comment provided"


@dataclass(frozen=True)
class SchemaError:
    file: str
    version: str
    message: str


@dataclass(frozen=True)
class Check:
    """One Checkov result: a check on one resource (`reason` for a skip)."""

    check_id: str
    name: str
    resource: str
    file: str
    reason: str = ""


@dataclass
class StackReport:
    stack: str
    objects: int = 0
    schema_checked: int = 0
    schema_errors: list[SchemaError] = field(default_factory=list)
    passed: list[Check] = field(default_factory=list)
    failed: list[Check] = field(default_factory=list)
    skipped: list[Check] = field(default_factory=list)

    @property
    def unexplained_skips(self) -> list[Check]:
        return [s for s in self.skipped if not s.reason.strip() or s.reason == NO_REASON]

    @property
    def ok(self) -> bool:
        return not (self.schema_errors or self.failed or self.unexplained_skips) and bool(
            self.objects
        )


@dataclass
class Report:
    stacks: list[StackReport]
    dockerfiles: list[Path]
    dockerfile_findings: list[dockerfile_lint.Finding]
    checkov_version: str = ""

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.stacks) and not self.dockerfile_findings


def manifest_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.yaml"))


def validate_schemas(
    files: Sequence[Path], versions: Sequence[str] = KUBERNETES_VERSIONS
) -> tuple[int, list[SchemaError]]:
    """Validate every object in `files` for each version; (validations run, errors)."""
    checked = 0
    errors: list[SchemaError] = []
    for path in files:
        for document in yaml.safe_load_all(path.read_text()):
            if document is None:
                continue
            for version in versions:
                checked += 1
                try:
                    kubernetes_validate.validate(document, version, strict=True)
                except kubernetes_validate.ValidationError as error:
                    where = ".".join(str(p) for p in error.path) or "(top level)"
                    errors.append(SchemaError(path.name, version, f"{where}: {error.message}"))
                except kubernetes_validate.SchemaNotFoundError as error:
                    errors.append(SchemaError(path.name, version, str(error)))
    return checked, errors


def run_checkov(checkov: Path, files: Sequence[Path]) -> tuple[str, dict[str, list[Check]]]:
    """Checkov's Kubernetes checks over `files`: its version and the results by status."""
    if not checkov.exists():
        raise FileNotFoundError(f"{checkov} is missing: `make policy` sets it up (.venv-checkov)")
    command = [
        str(checkov),
        "--framework",
        "kubernetes",
        "--skip-download",
        "--output",
        "json",
        "--compact",
        "--soft-fail",  # failures are read from the report; a non-zero status is an error
        "--file",
        *(str(f) for f in files),
    ]
    # Checkov runs in a virtual environment of its own: keep the caller's venv out of it.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"checkov exited {done.returncode}:\n{done.stderr[-4000:]}")
    return parse_checkov(done.stdout)


def parse_checkov(output: str) -> tuple[str, dict[str, list[Check]]]:
    report: Any = json.loads(output) if output.strip() else {}
    if isinstance(report, list):  # one entry per framework
        report = next((r for r in report if r.get("check_type") == "kubernetes"), {})
    results: dict[str, Any] = report.get("results", {})
    if results.get("parsing_errors"):
        raise RuntimeError(f"checkov could not parse {results['parsing_errors']}")
    found: dict[str, list[Check]] = {}
    for status in ("passed", "failed", "skipped"):
        found[status] = [
            Check(
                check_id=str(item["check_id"]),
                name=str(item.get("check_name", "")),
                resource=str(item.get("resource", "")),
                file=str(item.get("file_path", "")),
                reason=str((item.get("check_result") or {}).get("suppress_comment") or ""),
            )
            for item in results.get(f"{status}_checks", [])
        ]
    version = str(report.get("summary", {}).get("checkov_version", ""))
    return version, found


def dockerfiles() -> tuple[list[Path], list[dockerfile_lint.Finding]]:
    """The services' Dockerfiles and what the linter finds in them (a missing one included)."""
    found = sorted(SERVICES_DIR.glob("*/Dockerfile*"))
    findings = dockerfile_lint.lint_files(found, ROOT)
    for service in SERVICES:
        expected = SERVICES_DIR / service / "Dockerfile"
        if expected not in found:
            shown = str(expected.relative_to(ROOT))
            findings.append(
                dockerfile_lint.Finding(shown, 0, "DF000", "missing: the program builds it")
            )
    return found, findings


def scan(
    folders: Mapping[str, Path], checkov: Path = DEFAULT_CHECKOV
) -> tuple[list[StackReport], str]:
    """Schema-validate and Checkov-scan the rendered manifests of each stack in `folders`;
    the reports and Checkov's version."""
    reports: dict[str, StackReport] = {}
    by_folder: dict[Path, str] = {}
    all_files: list[Path] = []
    for stack, folder in folders.items():
        files = manifest_files(folder)
        report = StackReport(stack, objects=len(files))
        report.schema_checked, report.schema_errors = validate_schemas(files)
        reports[stack] = report
        by_folder[folder.resolve()] = stack
        all_files.extend(files)
    version = ""
    if all_files:
        version, results = run_checkov(checkov, all_files)
        for status, checks in results.items():
            for check in checks:
                stack = by_folder[_resolve(check.file).parent]
                getattr(reports[stack], status).append(check)
    return list(reports.values()), version


def _resolve(file_path: str) -> Path:
    """Checkov reports `/<path relative to the working directory>`."""
    path = Path(file_path)
    relative = Path.cwd() / file_path.lstrip("/")
    return (relative if relative.exists() else path).resolve()


def gate(stacks: Sequence[str], out: Path, checkov: Path = DEFAULT_CHECKOV) -> Report:
    folders = {stack: out / stack for stack in stacks}
    for stack, folder in folders.items():
        render.write(render.render(stack), folder)
    reports, version = scan(folders, checkov)
    found, findings = dockerfiles()
    return Report(reports, found, findings, version)


def table(report: Report) -> str:
    versions = " and ".join(KUBERNETES_VERSIONS)
    lines = [
        f"policy: Kubernetes {versions} schemas (strict), Checkov {report.checkov_version}"
        " (--framework kubernetes), Dockerfile lint",
        "",
        f"{'stack':<10}{'objects':>8}{'schema ok':>11}{'passed':>8}{'failed':>8}{'skipped':>9}",
    ]
    for s in report.stacks:
        schema = f"{s.schema_checked - len(s.schema_errors)}/{s.schema_checked}"
        lines.append(
            f"{s.stack:<10}{s.objects:>8}{schema:>11}{len(s.passed):>8}"
            f"{len(s.failed) + len(s.unexplained_skips):>8}{len(s.skipped):>9}"
        )
    # The same skip on the same object of several stacks is listed once.
    skips: dict[tuple[str, str, str], list[str]] = {}
    for s in report.stacks:
        for c in s.skipped:
            kind, _, name = c.resource.split(".", 2) if c.resource.count(".") >= 2 else ("", "", "")
            key = (c.check_id, f"{kind} {name}".strip() or c.resource, c.reason or NO_REASON)
            skips.setdefault(key, []).append(s.stack)
    if skips:
        lines += ["", "skipped (checkov.io/skip annotations):"]
        lines += [
            f"  {check} on {where} ({', '.join(on)}): {reason}"
            for (check, where, reason), on in skips.items()
        ]
    problems: list[str] = []
    for s in report.stacks:
        if not s.objects:
            problems.append(f"  {s.stack}: no Kubernetes objects rendered")
        problems += [
            f"  {s.stack}: schema {e.version} {e.file}: {e.message}" for e in s.schema_errors
        ]
        problems += [
            f"  {s.stack}: {c.check_id} {c.name} on {c.resource} ({Path(c.file).name})"
            for c in s.failed
        ]
        problems += [
            f"  {s.stack}: {c.check_id} skipped on {c.resource} without a reason"
            for c in s.unexplained_skips
        ]
    rules = ", ".join(dockerfile_lint.RULES)
    shown = ", ".join(str(p.relative_to(ROOT)) for p in report.dockerfiles) or "none"
    lines += ["", f"Dockerfiles ({rules}): {shown}: {len(report.dockerfile_findings)} findings"]
    problems += [f"  {finding}" for finding in report.dockerfile_findings]
    if problems:
        lines += ["", "FAILED:", *problems]
    lines += ["", "policy: OK" if report.ok else "policy: FAILED"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.policy", description=__doc__)
    parser.add_argument("--stack", action="append", help="a stack (repeatable; default: all)")
    parser.add_argument("--out", type=Path, default=render.DEFAULT_OUT)
    parser.add_argument("--checkov", type=Path, default=DEFAULT_CHECKOV)
    args = parser.parse_args(argv)
    stacks: list[str] = args.stack or render.stacks()
    unknown = sorted(set(stacks) - set(render.stacks()))
    if unknown:
        parser.error(f"no stack file for {', '.join(unknown)}")
    report = gate(stacks, args.out, args.checkov)
    print(table(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
