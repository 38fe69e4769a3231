"""tools.dockerfile_lint: each rule, the parsing it relies on, and the project's Dockerfiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.image import SERVICES, SERVICES_DIR
from tools import dockerfile_lint
from tools.dockerfile_lint import lint, parse

DIGEST = "sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d"
GOOD = f"""\
# syntax=docker/dockerfile:1
ARG BASE=python:3.11.14-slim-bookworm
FROM ${{BASE}} AS build
RUN pip install \\
    --no-cache-dir wheel
FROM python:3.11.14-slim-bookworm@{DIGEST}
COPY --from=build /opt /opt
ENV MLSTACK_API_KEY_FILE=/etc/mlstack/secrets/api-key PORT=8080
USER 10001:10001
ENTRYPOINT ["python", "-m", "app"]
"""


def rules(text: str) -> list[str]:
    return [f.rule for f in lint(text)]


def test_a_good_dockerfile_has_no_findings() -> None:
    assert lint(GOOD) == []


def test_the_projects_dockerfiles_are_clean() -> None:
    paths = [SERVICES_DIR / service / "Dockerfile" for service in SERVICES]
    assert dockerfile_lint.lint_files(paths) == []


def test_parse_joins_continuations_and_skips_comments() -> None:
    parsed = parse("FROM a:1\n# note\nRUN one \\\n  # inside\n  two\nUSER 1\n")
    assert [(i.line, i.keyword, i.arguments) for i in parsed] == [
        (1, "FROM", "a:1"),
        (3, "RUN", "one two"),
        (6, "USER", "1"),
    ]


def test_parse_honours_the_escape_directive() -> None:
    parsed = parse("# escape=`\nFROM a:1\nRUN one `\n  two\n")
    assert parsed[-1].arguments == "one two"


@pytest.mark.parametrize(
    "base",
    ["python", "python:latest", "python:slim", "${BASE}", "localhost:5000/python"],
)
def test_df001_unpinned_base_images(base: str) -> None:
    assert rules(f"FROM {base}\nUSER 10001\n") == ["DF001"]


@pytest.mark.parametrize(
    "base",
    [
        "python:3.11.14-slim",
        "localhost:5000/python:3.11",
        "python@sha256:" + "a" * 64,
        "--platform=linux/amd64 postgres:17.6-bookworm",
        "scratch",
    ],
)
def test_df001_pinned_base_images(base: str) -> None:
    assert rules(f"FROM {base}\nUSER 10001\n") == []


def test_df001_a_later_stage_may_build_on_an_earlier_one() -> None:
    assert rules("FROM python:3.11 AS base\nFROM base\nUSER 10001\n") == []


@pytest.mark.parametrize(
    ("user", "expected"),
    [("10001", []), ("10001:10001", []), ("app", ["DF002"]), ("0", ["DF002"]), ("0:0", ["DF002"])],
)
def test_df002_numeric_non_root_user(user: str, expected: list[str]) -> None:
    assert rules(f"FROM python:3.11\nUSER {user}\n") == expected


def test_df002_the_final_stage_needs_its_own_user() -> None:
    assert rules("FROM python:3.11 AS build\nUSER 10001\nFROM python:3.11\n") == ["DF002"]
    assert rules("FROM python:3.11\nUSER 10001\nUSER root\n") == ["DF002"]


@pytest.mark.parametrize(
    "line",
    [
        "ENV DATABASE_PASSWORD=hunter2",
        "ENV API_KEY secret-value",
        "ARG GITHUB_TOKEN",
        "ENV A=1 AWS_SECRET_ACCESS_KEY=x",
        "RUN echo AKIAABCDEFGHIJKLMNOP > /creds",
        "COPY .env /app/.env",
        "COPY id_rsa /root/.ssh/id_rsa",
        "COPY certs/server.key /etc/tls/",
    ],
)
def test_df003_secrets(line: str) -> None:
    assert "DF003" in rules(f"FROM python:3.11\n{line}\nUSER 10001\n")


def test_df003_a_secrets_location_is_fine() -> None:
    text = "FROM python:3.11\nENV API_KEY_FILE=/run/secrets/key TOKEN_PATH=/t\nUSER 10001\n"
    assert rules(text) == []


@pytest.mark.parametrize(
    "line",
    [
        "ADD https://example.com/tool.tgz /opt/",
        'ADD ["http://example.com/a", "/a"]',
        "ADD git@github.com:org/repo.git /src",
    ],
)
def test_df004_add_from_remote(line: str) -> None:
    assert rules(f"FROM python:3.11\n{line}\nUSER 10001\n") == ["DF004"]


def test_df004_add_of_a_local_file_is_fine() -> None:
    assert rules("FROM python:3.11\nADD app.tar.gz /opt/\nUSER 10001\n") == []


def test_cli_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text(GOOD)
    bad.write_text("FROM python\n")
    assert dockerfile_lint.main([str(good)]) == 0
    assert dockerfile_lint.main([str(good), str(bad)]) == 1
    assert "DF001" in capsys.readouterr().out
