"""The policy gate: render every stack, then hold what it would deploy to the project's bar.

    python -m tools.policy                      # every Pulumi.<stack>.yaml
    python -m tools.policy --stack prod --checkov PATH   # a Checkov other than DEFAULT_CHECKOV

For each stack: its Kubernetes objects are rendered to build/manifests/<stack>/ (tools.render),
each object is validated against the Kubernetes OpenAPI schemas in strict mode (no unknown field)
for the oldest and the newest Kubernetes version the project supports, and Checkov's Kubernetes
checks run over them, but for those that repeat a rule of the policy pack (PACK_OWNED); a check
one object fails on purpose is a declared exception on that object alone (MANIFEST_EXCEPTIONS).
The services' Dockerfiles go through Checkov's dockerfile and secrets
frameworks plus mlstack's own checks (policy/checkov/). A table per stack follows. Any schema
error, failed check (manifest or Dockerfile), skip without a reason, declared exception that
matched no failure, or check of mlstack's own that reported nothing makes the exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import kubernetes_validate
import yaml

from components import stack_file
from components.config import OLDEST_KUBERNETES
from components.image import SERVICES, SERVICES_DIR, dockerfile
from harness.program import ROOT
from tools import render
from tools.render import shown
from tools.stack import run

# The Kubernetes versions mlstack supports, oldest and newest: the oldest is the release of the
# local cluster's default k3s image; the newest is the newest schema set kubernetes-validate
# ships. The README ("Policy") names them too.
KUBERNETES_VERSIONS: Final = (OLDEST_KUBERNETES, "1.37")
# Where `make checkov-venv` installs Checkov (mk/policy.mk's CHECKOV_VENV; tests/ops checks the
# two agree), for `make policy` and every other run that names none.
DEFAULT_CHECKOV: Final = ROOT / ".venv-checkov" / "bin" / "checkov"
# What Checkov records for a skip (annotation or comment) that gives no reason.
NO_REASON: Final = "No comment provided"
# Checkov's Kubernetes checks that repeat a mandatory rule of the policy pack (policy/pack), each
# with the rule that owns it. The pack holds what the engine plans to those rules on every stack,
# at preview and up; the gate skips these checks so that each rule lives in one place (README,
# "Policy gates"). Each rule is as strict as the checks it takes, or stricter, but where the
# restricted Pod Security Standard itself allows more (adding NET_BIND_SERVICE, a Localhost
# seccomp profile). tests/unit/test_pack_owns_checkov_rules.py breaks a resource of the program
# for each check below and shows that its rule fails it.
PACK_OWNED: Final = {
    "CKV_K8S_8": "container-probes",  # liveness probe
    "CKV_K8S_9": "container-probes",  # readiness probe
    "CKV_K8S_10": "container-resources",  # CPU requests
    "CKV_K8S_11": "container-resources",  # CPU limits
    "CKV_K8S_12": "container-resources",  # memory requests
    "CKV_K8S_13": "container-resources",  # memory limits
    "CKV_K8S_43": "image-by-digest",  # image by digest
    "CKV_K8S_16": "pod-security-restricted",  # not privileged
    "CKV_K8S_17": "pod-security-restricted",  # no host PID namespace
    "CKV_K8S_18": "pod-security-restricted",  # no host IPC namespace
    "CKV_K8S_19": "pod-security-restricted",  # no host network namespace
    "CKV_K8S_20": "pod-security-restricted",  # no allowPrivilegeEscalation
    "CKV_K8S_22": "pod-security-restricted",  # read-only root filesystem
    "CKV_K8S_23": "pod-security-restricted",  # no root container (runAsNonRoot)
    "CKV_K8S_25": "pod-security-restricted",  # no capability added
    "CKV_K8S_28": "pod-security-restricted",  # NET_RAW dropped
    "CKV_K8S_30": "pod-security-restricted",  # a container securityContext
    "CKV_K8S_31": "pod-security-restricted",  # seccomp RuntimeDefault
    "CKV_K8S_37": "pod-security-restricted",  # every capability dropped
    "CKV_K8S_39": "pod-security-restricted",  # no SYS_ADMIN added
}
MANIFEST_SKIPS: Final = {
    check_id: f"owned by the policy pack rule {rule}" for check_id, rule in PACK_OWNED.items()
}
# Checkov's checks that one object fails by design, each with why: (check, kind, name) -> reason.
# The check still runs on every other object; on this one, in every stack, its failure is
# reported as skipped with the reason. An exception that matches no failure (the object passes
# now, or is gone) fails the gate, so that none outlives its reason. The objects themselves carry
# no `checkov.io/skip` annotation: the exceptions are here, in one place (tests/policy fails on
# an annotation).
MANIFEST_EXCEPTIONS: Final[Mapping[tuple[str, str, str], str]] = {
    ("CKV_K8S_38", "StatefulSet", "database"): "Patroni keeps the leader lock and the cluster's"
    " state in ConfigMaps through the API server, so the database's pods mount their"
    " ServiceAccount's token: the only pods that do, bound to a namespaced Role with get, list,"
    " watch, create and patch on configmaps and get, list, watch and patch on pods alone"
    " (components/database.py PATRONI_RULES)",
}
# mlstack's own Dockerfile checks, loaded with --external-checks-dir. Each must report on every
# Dockerfile: Checkov only logs a check that fails to load, and a silent check passes nothing.
POLICY_CHECKS: Final = ROOT / "policy" / "checkov"
CUSTOM_DOCKERFILE_CHECKS: Final = {
    "CKV_MLSTACK_DOCKER_1": "every base image pinned by digest",
    "CKV_MLSTACK_DOCKER_2": "final USER a numeric uid other than 0",
    "CKV_MLSTACK_DOCKER_3": "no ARG or ENV named like a secret",
}
# Checkov's Dockerfile checks that the gate skips on every Dockerfile, each with its reason. (A
# skip in one Dockerfile is a `# checkov:skip=<id>:<reason>` comment in it.)
DOCKERFILE_SKIPS: Final = {
    "CKV_DOCKER_2": "HEALTHCHECK: the images run only on Kubernetes, which ignores it; the"
    " Deployments' liveness and readiness probes take its place (the policy pack rule"
    " container-probes)",
}


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
    line: int = 0

    @property
    def path(self) -> Path:
        return _resolve(self.file)

    @property
    def kind_and_name(self) -> tuple[str, str]:
        """(`StatefulSet`, `database`) of Checkov's `StatefulSet.<namespace>.database`."""
        kind, _, rest = self.resource.partition(".")
        return kind, rest.partition(".")[2]


@dataclass(kw_only=True)
class CheckovResults:
    """Checkov's results on a set of files, by status."""

    passed: list[Check] = field(default_factory=list)
    failed: list[Check] = field(default_factory=list)
    skipped: list[Check] = field(default_factory=list)

    @property
    def unexplained_skips(self) -> list[Check]:
        return [s for s in self.skipped if not s.reason.strip() or s.reason == NO_REASON]


@dataclass
class StackReport(CheckovResults):
    stack: str
    objects: int = 0
    schema_checked: int = 0
    schema_errors: list[SchemaError] = field(default_factory=list)
    # Declared exceptions (MANIFEST_EXCEPTIONS) that matched no failure in this stack.
    stale_exceptions: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        problems = self.schema_errors or self.failed or self.unexplained_skips
        return not (problems or self.stale_exceptions) and bool(self.objects)


@dataclass
class DockerfileReport(CheckovResults):
    """Checkov's results on the services' Dockerfiles (`missing`: one the program builds)."""

    files: list[Path] = field(default_factory=list)
    missing: list[Path] = field(default_factory=list)

    @property
    def silent_checks(self) -> list[tuple[Path, str]]:
        """(Dockerfile, check of mlstack's own) pairs without any result."""
        reported = {(c.path, c.check_id) for c in (*self.passed, *self.failed, *self.skipped)}
        return [
            (path, check_id)
            for path in self.files
            for check_id in CUSTOM_DOCKERFILE_CHECKS
            if (path.resolve(), check_id) not in reported
        ]

    @property
    def ok(self) -> bool:
        problems = self.missing or self.failed or self.unexplained_skips or self.silent_checks
        return bool(self.files) and not problems


@dataclass
class Report:
    stacks: list[StackReport]
    dockerfiles: DockerfileReport
    checkov_version: str = ""

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.stacks) and self.dockerfiles.ok


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


def run_checkov(
    checkov: Path,
    files: Sequence[Path],
    frameworks: Sequence[str] = ("kubernetes",),
    options: Sequence[str] = (),
) -> tuple[str, dict[str, list[Check]]]:
    """Checkov's `frameworks` over `files`: its version and the results by status."""
    if not checkov.exists():
        raise FileNotFoundError(f"{checkov} is missing: `make policy` sets it up (.venv-checkov)")
    command = [
        str(checkov),
        "--framework",
        *frameworks,
        *options,
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
    # No bound on its time: a scan's length grows with the files it is given.
    done = run(command, env=env, timeout=None)
    return parse_checkov(done.stdout, frameworks)


def parse_checkov(
    output: str, frameworks: Sequence[str] = ("kubernetes",)
) -> tuple[str, dict[str, list[Check]]]:
    """Checkov's JSON report: its version and the results of `frameworks` by status."""
    parsed: Any = json.loads(output) if output.strip() else {}
    # One report per framework that ran (a list), or a single one.
    reports = (
        [r for r in parsed if r.get("check_type") in frameworks]
        if isinstance(parsed, list)
        else [parsed]
    )
    found: dict[str, list[Check]] = {"passed": [], "failed": [], "skipped": []}
    version = ""
    for report in reports:
        results: dict[str, Any] = report.get("results", {})
        if results.get("parsing_errors"):
            raise RuntimeError(f"checkov could not parse {results['parsing_errors']}")
        for status, checks in found.items():
            checks += [_check(item) for item in results.get(f"{status}_checks", [])]
        version = version or str(report.get("summary", {}).get("checkov_version", ""))
    return version, found


def _check(item: Mapping[str, Any]) -> Check:
    lines = item.get("file_line_range") or [0]
    return Check(
        check_id=str(item["check_id"]),
        name=str(item.get("check_name", "")),
        resource=str(item.get("resource", "")),
        file=str(item.get("file_path", "")),
        reason=str((item.get("check_result") or {}).get("suppress_comment") or ""),
        line=int(lines[0]),
    )


def scan_dockerfiles(files: Sequence[Path], checkov: Path = DEFAULT_CHECKOV) -> DockerfileReport:
    """Checkov's dockerfile and secrets frameworks and mlstack's own checks over `files`."""
    if not files:
        return DockerfileReport()
    options = ["--external-checks-dir", str(POLICY_CHECKS)]
    if DOCKERFILE_SKIPS:
        options += ["--skip-check", ",".join(DOCKERFILE_SKIPS)]
    _, results = run_checkov(checkov, files, ("dockerfile", "secrets"), options)
    return DockerfileReport(
        files=list(files),
        passed=results["passed"],
        failed=results["failed"],
        skipped=results["skipped"],
    )


def dockerfiles(checkov: Path = DEFAULT_CHECKOV) -> DockerfileReport:
    """The services' Dockerfiles, scanned, and any the program builds that is missing."""
    found = sorted(
        path
        for path in [*SERVICES_DIR.glob("Dockerfile*"), *SERVICES_DIR.glob("*/Dockerfile*")]
        # A Dockerfile's own ignore file (<Dockerfile>.dockerignore) is no Dockerfile.
        if path.suffix != ".dockerignore"
    )
    report = scan_dockerfiles(found, checkov)
    expected = sorted({dockerfile(service) for service in SERVICES})
    report.missing = [path for path in expected if path not in found]
    return report


def apply_exceptions(
    report: StackReport, exceptions: Mapping[tuple[str, str, str], str] = MANIFEST_EXCEPTIONS
) -> None:
    """Move each failure that `exceptions` declares to the skipped results, with its reason, and
    record the exceptions that matched none."""
    matched: set[tuple[str, str, str]] = set()
    failed: list[Check] = []
    for check in report.failed:
        key = (check.check_id, *check.kind_and_name)
        if key in exceptions:
            matched.add(key)
            report.skipped.append(dataclasses.replace(check, reason=exceptions[key]))
        else:
            failed.append(check)
    report.failed = failed
    report.stale_exceptions = [key for key in exceptions if key not in matched]


def scan(
    folders: Mapping[str, Path],
    checkov: Path = DEFAULT_CHECKOV,
    exceptions: Mapping[tuple[str, str, str], str] = MANIFEST_EXCEPTIONS,
) -> tuple[list[StackReport], str]:
    """Schema-validate and Checkov-scan the rendered manifests of each stack in `folders`, with
    the declared `exceptions`; the reports and Checkov's version."""
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
        options = ["--skip-check", ",".join(MANIFEST_SKIPS)]
        version, results = run_checkov(checkov, all_files, options=options)
        for status, checks in results.items():
            for check in checks:
                stack = by_folder[check.path.parent]
                getattr(reports[stack], status).append(check)
    for report in reports.values():
        apply_exceptions(report, exceptions)
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
    return Report(reports, dockerfiles(checkov), version)


def table(report: Report) -> str:
    versions = " and ".join(KUBERNETES_VERSIONS)
    lines = [
        f"policy: Kubernetes {versions} schemas (strict), Checkov {report.checkov_version}"
        " (--framework kubernetes; dockerfile and secrets over the Dockerfiles)",
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
            kind, name = c.kind_and_name
            key = (c.check_id, f"{kind} {name}" if name else c.resource, c.reason or NO_REASON)
            skips.setdefault(key, []).append(s.stack)
    if skips:
        lines += [
            "",
            "skipped on one object (MANIFEST_EXCEPTIONS, or checkov.io/skip annotations):",
        ]
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
        problems += [
            f"  {s.stack}: the exception for {check_id} on {kind} {name} matched no failure:"
            " remove it from MANIFEST_EXCEPTIONS"
            for check_id, kind, name in s.stale_exceptions
        ]
    lines += ["", "skipped on every manifest (each rule in one place: README, Policy gates):"]
    lines += [f"  {check_id}: {reason}" for check_id, reason in MANIFEST_SKIPS.items()]
    lines += ["", *_dockerfile_lines(report.dockerfiles)]
    problems += _dockerfile_problems(report.dockerfiles)
    if problems:
        lines += ["", "FAILED:", *problems]
    lines += ["", "policy: OK" if report.ok else "policy: FAILED"]
    return "\n".join(lines)


def _dockerfile_lines(report: DockerfileReport) -> list[str]:
    files = ", ".join(shown(p) for p in report.files) or "none"
    lines = [
        f"Dockerfiles ({files}): {len(report.passed)} passed, "
        f"{len(report.failed) + len(report.unexplained_skips)} failed, "
        f"{len(report.skipped)} skipped",
        f"  mlstack's own checks ({shown(POLICY_CHECKS)}):",
        *(f"    {check_id}: {what}" for check_id, what in CUSTOM_DOCKERFILE_CHECKS.items()),
        "  skipped on every Dockerfile:",
        *(f"    {check_id}: {reason}" for check_id, reason in DOCKERFILE_SKIPS.items()),
    ]
    lines += [f"  skipped: {c.check_id} on {shown(c.path)}: {c.reason}" for c in report.skipped]
    return lines


def _dockerfile_problems(report: DockerfileReport) -> list[str]:
    problems = [f"  {shown(path)}: missing: the program builds it" for path in report.missing]
    problems += [f"  {shown(c.path)}:{c.line}: {c.check_id} {c.name}" for c in report.failed]
    problems += [
        f"  {shown(c.path)}: {c.check_id} skipped without a reason"
        for c in report.unexplained_skips
    ]
    problems += [
        f"  {shown(path)}: {check_id} reported nothing (not loaded from {shown(POLICY_CHECKS)}?)"
        for path, check_id in report.silent_checks
    ]
    if not report.files:
        problems.append("  no Dockerfile found")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.policy", description=__doc__)
    parser.add_argument("--stack", action="append", help="a stack (repeatable; default: all)")
    parser.add_argument("--out", type=Path, default=render.DEFAULT_OUT)
    parser.add_argument("--checkov", type=Path, default=DEFAULT_CHECKOV)
    args = parser.parse_args(argv)
    stacks: list[str] = args.stack or stack_file.stacks()
    render.require_stack_files(parser, stacks)
    report = gate(stacks, args.out, args.checkov)
    print(table(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
