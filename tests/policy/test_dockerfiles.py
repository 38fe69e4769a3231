"""The Dockerfile half of the gate: mlstack's own Checkov checks (policy/checkov/) each fail on a
Dockerfile that breaks their rule and pass on the project's, and a failure fails the gate.

One Checkov run covers every Dockerfile below, each in a folder of its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from components.image import SERVICES, dockerfile
from tools import policy

DIGEST = "sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d"
BASE = f"python:3.11.14-slim-bookworm@{DIGEST}"
DIGEST_PINNED = "CKV_MLSTACK_DOCKER_1"
NUMERIC_USER = "CKV_MLSTACK_DOCKER_2"
NO_SECRET_NAMES = "CKV_MLSTACK_DOCKER_3"
# A made-up key, split so that no secret scanner takes this file for a leak; `\\n` is printf's.
PRIVATE_KEY = "\\n".join(
    [
        "-----BEGIN " + "RSA PRIVATE KEY-----",
        "MIIEpAIBAAKCAQEAz9mLq2Xv8Rj..",
        "-----END RSA PRIVATE KEY-----",
    ]
)

# Passes every check of mlstack's own, with what each must let through: a platform flag, a stage
# built on an earlier one, `scratch`, ENV and ARG names that hold a secret's location.
GOOD = f"""\
FROM --platform=linux/amd64 {BASE} AS build
ARG TOKEN_PATH=/run/secrets/token
RUN python -m venv /opt/venv
FROM build AS test
RUN python -c "print('ok')"
FROM scratch
COPY --from=build /opt/venv /opt/venv
ENV MLSTACK_API_KEY_FILE=/etc/mlstack/secrets/api-key \\
    DATABASE_URL_FILE=/etc/mlstack/secrets/database-url \\
    PORT=8080
USER 10001:10001
ENTRYPOINT ["/opt/venv/bin/python"]
"""

# Bases given as a variable with a default, `${NAME:-default}`, that pass: what builds is the value
# of the last ARG before the first FROM that gives NAME one (the only ARGs a FROM reads), else the
# default (an ARG without a value, or an empty one).
GOOD_VARIABLE_BASES: dict[str, str] = {
    "arg-pinned-over-unpinned-default": (
        f"ARG BASE_IMAGE=python:3.11-slim\nARG BASE_IMAGE={BASE}\n"
        "FROM ${BASE_IMAGE:-python:3.11-slim}\nUSER 10001\n"
    ),
    "arg-without-value": f"ARG BASE_IMAGE\nFROM ${{BASE_IMAGE:-{BASE}}}\nUSER 10001\n",
    "arg-empty": f"ARG BASE_IMAGE=\nFROM ${{BASE_IMAGE:-{BASE}}}\nUSER 10001\n",
    "stage-arg-out-of-reach": (
        f"FROM {BASE} AS build\nARG BASE_IMAGE=python:3.11-slim\n"
        f"FROM ${{BASE_IMAGE:-{BASE}}}\nUSER 10001\n"
    ),
}

# name: (Dockerfile, the one check of mlstack's own it fails, the line reported)
BROKEN: dict[str, tuple[str, str, int]] = {
    "tag-only": ("FROM python:3.11.14-slim\nUSER 10001\n", DIGEST_PINNED, 1),
    "no-tag": ("FROM python\nUSER 10001\n", DIGEST_PINNED, 1),
    "variable-base": (f"ARG BASE={BASE}\nFROM ${{BASE}}\nUSER 10001\n", DIGEST_PINNED, 2),
    "variable-base-unpinned-default": (
        "ARG BASE\nFROM ${BASE:-python:3.11.14-slim}\nUSER 10001\n",
        DIGEST_PINNED,
        2,
    ),
    # The ARG's own value is what builds, not the default beside the variable.
    "variable-base-unpinned-arg": (
        f"ARG BASE_IMAGE=python:3.11-slim\nFROM ${{BASE_IMAGE:-{BASE}}}\nUSER 10001\n",
        DIGEST_PINNED,
        2,
    ),
    "variable-base-unpinned-quoted-arg": (
        f'ARG BASE_IMAGE="python:3.11-slim"\nFROM ${{BASE_IMAGE:-{BASE}}}\nUSER 10001\n',
        DIGEST_PINNED,
        2,
    ),
    "second-stage-unpinned": (
        f"FROM {BASE} AS build\nFROM debian:12\nUSER 10001\n",
        DIGEST_PINNED,
        2,
    ),
    "named-user": (f"FROM {BASE}\nUSER app\n", NUMERIC_USER, 2),
    "root-uid": (f"FROM {BASE}\nUSER 0:0\n", NUMERIC_USER, 2),
    "root-after-non-root": (f"FROM {BASE}\nUSER 10001\nRUN true\nUSER root\n", NUMERIC_USER, 4),
    "final-stage-without-user": (
        f"FROM {BASE} AS build\nUSER 10001\nFROM {BASE}\nRUN true\n",
        NUMERIC_USER,
        1,  # no USER to point at: the whole file
    ),
    "secret-arg": (f"FROM {BASE}\nARG GITHUB_TOKEN\nUSER 10001\n", NO_SECRET_NAMES, 2),
    "secret-env": (
        f"FROM {BASE}\nENV PORT=8080 DATABASE_PASSWORD=hunter2\nUSER 10001\n",
        NO_SECRET_NAMES,
        2,
    ),
    "secret-env-legacy-form": (
        f"FROM {BASE}\nENV API_KEY some-value\nUSER 10001\n",
        NO_SECRET_NAMES,
        2,
    ),
    # The gateway's database URLs hold the role's password.
    "database-url-arg": (f"FROM {BASE}\nARG DATABASE_URL\nUSER 10001\n", NO_SECRET_NAMES, 2),
}
# Rules the project had before Checkov, now Checkov's own checks.
BUILT_IN: dict[str, tuple[str, str]] = {
    "add-url": (
        f"FROM {BASE}\nADD https://example.com/tool.tgz /opt/\nUSER 10001\n",
        "CKV_DOCKER_4",
    ),
    "latest": ("FROM python:latest\nUSER 10001\n", "CKV_DOCKER_7"),
    "inline-private-key": (
        f"FROM {BASE}\nRUN printf '{PRIVATE_KEY}' > /k\nUSER 10001\n",
        "CKV_SECRET_",
    ),
}
SKIPS = {
    "skip-without-reason": f"# checkov:skip={NUMERIC_USER}\nFROM {BASE}\nUSER app\n",
    "skip-with-reason": (
        f"# checkov:skip={NUMERIC_USER}:the image is only ever run by a test\n"
        f"FROM {BASE}\nUSER app\n"
    ),
}


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory, checkov: Path) -> policy.DockerfileReport:
    folder = tmp_path_factory.mktemp("dockerfiles")
    texts = {
        "good": GOOD,
        **GOOD_VARIABLE_BASES,
        **{name: text for name, (text, _, _) in BROKEN.items()},
        **{name: text for name, (text, _) in BUILT_IN.items()},
        **SKIPS,
    }
    files = []
    for name, text in texts.items():
        (folder / name).mkdir()
        files.append(folder / name / "Dockerfile")
        files[-1].write_text(text)
    return policy.scan_dockerfiles(files, checkov)


def results(found: list[policy.Check], name: str) -> list[policy.Check]:
    return [c for c in found if c.path.parent.name == name]


def own(found: list[policy.Check]) -> list[tuple[str, int]]:
    return sorted(
        (c.check_id, c.line) for c in found if c.check_id in policy.CUSTOM_DOCKERFILE_CHECKS
    )


@pytest.mark.parametrize("name", BROKEN)
def test_each_check_of_ours_fails_on_a_dockerfile_that_breaks_it(
    scanned: policy.DockerfileReport, name: str
) -> None:
    _, check_id, line = BROKEN[name]
    assert own(results(scanned.failed, name)) == [(check_id, line)]


@pytest.mark.parametrize("name", ["good", *GOOD_VARIABLE_BASES])
def test_our_checks_pass_a_good_dockerfile(scanned: policy.DockerfileReport, name: str) -> None:
    assert results(scanned.failed, name) == []
    assert {c.check_id for c in results(scanned.passed, name)} >= set(
        policy.CUSTOM_DOCKERFILE_CHECKS
    )


def test_our_checks_pass_the_projects_dockerfiles(report: policy.Report) -> None:
    found = report.dockerfiles
    # The gateway and the model share services/Dockerfile, a stage each.
    assert set(found.files) == {dockerfile(service) for service in SERVICES}
    assert len(found.files) == 2
    assert found.failed == []
    assert found.skipped == []
    for path in found.files:
        on_it = {c.check_id for c in found.passed if c.path == path.resolve()}
        assert on_it >= set(policy.CUSTOM_DOCKERFILE_CHECKS), path
        assert len(on_it) > 20, path  # Checkov's own checks ran too


@pytest.mark.parametrize("name", BUILT_IN)
def test_checkov_covers_the_rest(scanned: policy.DockerfileReport, name: str) -> None:
    _, check_id = BUILT_IN[name]
    assert any(c.check_id.startswith(check_id) for c in results(scanned.failed, name))


def test_the_gate_skips_healthcheck_only(scanned: policy.DockerfileReport) -> None:
    assert set(policy.DOCKERFILE_SKIPS) == {"CKV_DOCKER_2"}
    ran = {c.check_id for c in (*scanned.passed, *scanned.failed, *scanned.skipped)}
    assert "CKV_DOCKER_2" not in ran
    assert "CKV_DOCKER_3" in ran


def test_a_skip_in_a_dockerfile_needs_a_reason(scanned: policy.DockerfileReport) -> None:
    unexplained = [c.path.parent.name for c in scanned.unexplained_skips]
    assert unexplained == ["skip-without-reason"]
    explained = results(scanned.skipped, "skip-with-reason")
    assert [(c.check_id, c.reason) for c in explained] == [
        (NUMERIC_USER, "the image is only ever run by a test")
    ]
    assert results(scanned.failed, "skip-with-reason") == []


def test_a_broken_dockerfile_fails_the_gate(
    report: policy.Report, scanned: policy.DockerfileReport
) -> None:
    assert report.ok
    failing = policy.Report(report.stacks, scanned, report.checkov_version)
    assert not failing.ok
    shown = policy.table(failing)
    assert f"named-user/Dockerfile:2: {NUMERIC_USER} " in shown
    assert f"skip-without-reason/Dockerfile: {NUMERIC_USER} skipped without a reason" in shown
    assert shown.rstrip().endswith("policy: FAILED")


def test_a_check_of_ours_that_reports_nothing_fails_the_gate(report: policy.Report) -> None:
    """Checkov only logs a custom check it cannot load; the gate must not pass without it."""
    files = report.dockerfiles.files
    silent = policy.DockerfileReport(files=files)
    assert len(silent.silent_checks) == len(files) * len(policy.CUSTOM_DOCKERFILE_CHECKS)
    failing = policy.Report(report.stacks, silent, report.checkov_version)
    assert not failing.ok
    assert f"services/Dockerfile: {DIGEST_PINNED} reported nothing" in policy.table(failing)


def test_a_missing_dockerfile_fails_the_gate(report: policy.Report) -> None:
    found = report.dockerfiles
    missing = policy.DockerfileReport(
        files=found.files,
        missing=[found.files[0].parent.parent / "ranker" / "Dockerfile"],
        passed=found.passed,
    )
    assert not missing.ok
    assert "ranker/Dockerfile: missing" in policy.table(
        policy.Report(report.stacks, missing, report.checkov_version)
    )
