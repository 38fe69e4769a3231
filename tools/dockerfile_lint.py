"""A small Dockerfile linter for the rules mlstack's images must keep.

    python -m tools.dockerfile_lint services/gateway/Dockerfile services/model/Dockerfile

- DF001 every base image is pinned: a digest (`@sha256:`), or an explicit version tag (one with a
  digit; never `latest` or a bare name such as `python:slim`). `scratch` and earlier stages are
  fine.
- DF002 the final image runs as a numeric, non-root user (`USER 10001` or `USER 10001:10001`):
  Kubernetes can only enforce `runAsNonRoot` against a numeric user.
- DF003 no secret is baked into the image: no ARG or ENV named like a secret (their values stay
  in the image's history; `*_FILE`/`*_PATH`/`*_DIR` names, which hold a location, are fine), no
  private key or cloud access key in any instruction, no well-known secret file copied in.
- DF004 `ADD` never fetches a URL or a git repository: the content is not checksummed and changes
  under the same Dockerfile (download in a `RUN` that verifies a checksum, or `COPY`).

Parsing follows the Dockerfile reference: comments, the `escape` parser directive, line
continuations, `ARG` defaults substituted into `FROM`, JSON (exec) form for `ADD`/`COPY`.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

RULES: Final = {
    "DF001": "base image pinned by digest or version tag",
    "DF002": "final USER numeric and not root",
    "DF003": "no secrets in the image",
    "DF004": "no ADD from a URL or git",
}
SECRET_NAME: Final = re.compile(
    r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|ACCESS_?KEY|CREDENTIAL)", re.IGNORECASE
)
LOCATION_SUFFIX: Final = re.compile(r"_(FILE|PATH|DIR)$", re.IGNORECASE)
SECRET_VALUE: Final = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----|\b(AKIA|ASIA)[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{36}\b"
)
SECRET_FILE: Final = re.compile(
    r"(^|/)(\.env(\.[\w.-]+)?|id_(rsa|dsa|ecdsa|ed25519)|\.netrc|\.npmrc|\.pypirc|"
    r"credentials(\.json)?|[^/]*\.(pem|key|p12|pfx))$"
)
REMOTE: Final = re.compile(r"^(https?|ftp)://|^git@|\.git(#.*)?$", re.IGNORECASE)
VARIABLE: Final = re.compile(r"\$(?:\{(\w+)(?::[-+][^}]*)?\}|(\w+))")
DIRECTIVE: Final = re.compile(r"^#\s*(\w+)\s*=\s*(\S+)\s*$")
NUMERIC_USER: Final = re.compile(r"^(\d+)(:\d+)?$")


@dataclass(frozen=True)
class Instruction:
    line: int  # where it starts, 1-based
    keyword: str  # upper case
    arguments: str  # continuations joined


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule} {self.message}"


def parse(text: str) -> list[Instruction]:
    """The instructions of a Dockerfile, comments and continuations resolved."""
    lines = text.splitlines()
    escape = "\\"
    # Parser directives: only at the very top, before any other line.
    for raw in lines:
        directive = DIRECTIVE.match(raw.strip())
        if not directive:
            break
        if directive.group(1).lower() == "escape":
            escape = directive.group(2)
    found: list[Instruction] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(lines, start=1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buffer:
            start = number
        if stripped.endswith(escape):
            buffer.append(stripped[: -len(escape)])
            continue
        buffer.append(stripped)
        joined = " ".join(part.strip() for part in buffer if part.strip())
        keyword, _, arguments = joined.partition(" ")
        found.append(Instruction(start, keyword.upper(), arguments.strip()))
        buffer = []
    if buffer:
        joined = " ".join(part.strip() for part in buffer if part.strip())
        keyword, _, arguments = joined.partition(" ")
        found.append(Instruction(start, keyword.upper(), arguments.strip()))
    return found


def lint(text: str, path: str = "Dockerfile") -> list[Finding]:
    """Every finding of the rules above in the Dockerfile `text`."""
    state = _State(path)
    for ins in parse(text):
        state.visit(ins)
    findings = state.findings
    if not state.saw_from:
        findings.append(Finding(path, 1, "DF001", "no FROM: not a Dockerfile"))
    else:
        findings.extend(_final_user(path, state.user, len(text.splitlines()) or 1))
    return sorted(findings, key=lambda f: (f.line, f.rule))


@dataclass
class _State:
    """What a pass over the instructions has seen so far."""

    path: str
    findings: list[Finding] = field(default_factory=list)
    global_args: dict[str, str] = field(default_factory=dict)
    stages: set[str] = field(default_factory=set)
    user: tuple[int, str] | None = None  # the current stage's last USER
    saw_from: bool = False

    def visit(self, ins: Instruction) -> None:
        path = self.path
        if ins.keyword == "FROM":
            self.saw_from = True
            self.user = None  # USER does not carry over into a new stage
            image, alias = _from(ins.arguments)
            self.findings.extend(_base_image(path, ins.line, image, self.global_args, self.stages))
            if alias:
                self.stages.add(alias.lower())
        elif ins.keyword in ("ARG", "ENV"):
            for name, value in _assignments(ins.arguments, legacy=ins.keyword == "ENV"):
                if ins.keyword == "ARG" and not self.saw_from and value is not None:
                    self.global_args[name] = value
                self.findings.extend(_secret_name(path, ins.line, ins.keyword, name))
        elif ins.keyword == "USER":
            self.user = (ins.line, ins.arguments.strip())
        elif ins.keyword in ("ADD", "COPY"):
            self.findings.extend(_copy(path, ins))
        if SECRET_VALUE.search(ins.arguments):
            self.findings.append(
                Finding(path, ins.line, "DF003", "a private or access key is inline")
            )


def _final_user(path: str, user: tuple[int, str] | None, last_line: int) -> list[Finding]:
    if user is None:
        return [Finding(path, last_line, "DF002", "the final stage sets no USER")]
    line, name = user
    numeric = NUMERIC_USER.match(name)
    if numeric is None:
        return [Finding(path, line, "DF002", f"USER {name!r} is not numeric (uid[:gid])")]
    if int(numeric.group(1)) == 0:
        return [Finding(path, line, "DF002", "USER 0 is root")]
    return []


def lint_files(paths: Iterable[Path], root: Path | None = None) -> list[Finding]:
    findings: list[Finding] = []
    for path in paths:
        shown = str(path.relative_to(root)) if root is not None else str(path)
        findings.extend(lint(path.read_text(), shown))
    return findings


def _from(arguments: str) -> tuple[str, str | None]:
    words = [w for w in arguments.split() if not w.startswith("--")]
    image = words[0] if words else ""
    alias = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
    return image, alias


def _base_image(
    path: str, line: int, image: str, args: dict[str, str], stages: set[str]
) -> list[Finding]:
    unresolved: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name in args:
            return args[name]
        unresolved.append(name)
        return match.group(0)

    resolved = VARIABLE.sub(substitute, image)
    if unresolved:
        return [
            Finding(path, line, "DF001", f"FROM {image}: ${unresolved[0]} has no default value")
        ]
    if resolved.lower() == "scratch" or resolved.lower() in stages:
        return []
    if "@sha256:" in resolved:
        return []
    # The tag follows the last ":" of the last path part (`host:port/name:tag`).
    tag = resolved.rsplit("/", 1)[-1].partition(":")[2]
    if not tag:
        return [Finding(path, line, "DF001", f"FROM {resolved}: no tag (that is `latest`)")]
    if tag == "latest" or not any(c.isdigit() for c in tag):
        return [Finding(path, line, "DF001", f"FROM {resolved}: tag {tag!r} is not a version")]
    return []


def _assignments(arguments: str, *, legacy: bool = False) -> list[tuple[str, str | None]]:
    """`NAME=value ...` pairs of ARG/ENV (`ENV NAME value` too, the legacy form)."""
    try:
        words = shlex.split(arguments, posix=True)
    except ValueError:
        words = arguments.split()
    if legacy and words and "=" not in words[0]:
        return [(words[0], " ".join(words[1:]))]
    pairs: list[tuple[str, str | None]] = []
    for word in words:
        name, sep, value = word.partition("=")
        pairs.append((name, value if sep else None))
    return pairs


def _secret_name(path: str, line: int, keyword: str, name: str) -> list[Finding]:
    if SECRET_NAME.search(name) and not LOCATION_SUFFIX.search(name):
        return [
            Finding(
                path,
                line,
                "DF003",
                f"{keyword} {name} looks like a secret: it would stay in the image history "
                "(use a build secret mount, or pass it at run time as a file)",
            )
        ]
    return []


def _copy(path: str, ins: Instruction) -> list[Finding]:
    arguments = ins.arguments
    sources: list[str]
    if arguments.startswith("["):
        try:
            sources = [str(part) for part in json.loads(arguments)][:-1]
        except ValueError:
            sources = []
    else:
        words = [w for w in arguments.split() if not w.startswith("--")]
        sources = words[:-1]
        if arguments.startswith("<<") or any(w.startswith("<<") for w in words):
            sources = []  # a heredoc: inline content, checked by DF003's value scan
    findings: list[Finding] = []
    for source in sources:
        if ins.keyword == "ADD" and REMOTE.search(source):
            findings.append(
                Finding(path, ins.line, "DF004", f"ADD {source}: fetches remote content")
            )
        if SECRET_FILE.search(source.rstrip("/")):
            findings.append(
                Finding(path, ins.line, "DF003", f"{ins.keyword} {source}: a secret file")
            )
    return findings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.dockerfile_lint", description=__doc__)
    parser.add_argument("paths", nargs="+", type=Path)
    args = parser.parse_args(argv)
    findings = lint_files(args.paths)
    for finding in findings:
        print(finding)
    print(f"{len(args.paths)} Dockerfiles, {len(findings)} findings")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
