"""mlstack's own Dockerfile checks, each a rule below and one `DockerfileCheck` that reports it.

Every check reads the whole file (Checkov's `*`), so that a file without the instruction a rule
needs fails rather than goes unchecked, and so that it gives one result per file (Checkov keeps
one result per check and file).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.dockerfile.base_dockerfile_check import BaseDockerfileCheck

Instruction = Mapping[str, Any]
# The file's instructions by keyword (FROM, USER, ...), each with its value and start line.
Instructions = Mapping[str, Sequence[Instruction]]
Verdict = tuple[CheckResult, list[Instruction] | None]


class DockerfileCheck(BaseDockerfileCheck):  # type: ignore[misc]  # Checkov is untyped here
    """A check Checkov registers as it is made: `rule` judges a file's instructions."""

    def __init__(
        self,
        check_id: str,
        name: str,
        category: CheckCategories,
        rule: Callable[[Instructions], Verdict],
    ) -> None:
        super().__init__(
            name=name, id=check_id, categories=(category,), supported_instructions=("*",)
        )
        self._rule = rule

    def scan_resource_conf(self, conf: Instructions) -> Verdict:
        return self._rule(conf)


# --- CKV_MLSTACK_DOCKER_1 -----------------------------------------------------------------------

DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
DEFAULTED = re.compile(r"^\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*):-(?P<default>[^${}]+)\}$")


def _words(instruction: Instruction) -> list[str]:
    """An instruction's value as the builder splits it into words, quotes removed."""
    value = str(instruction["value"])
    try:
        return shlex.split(value)
    except ValueError:  # an unbalanced quote: the words as they stand
        return value.split()


def from_args(conf: Instructions) -> dict[str, str]:
    """The values a FROM reads its variables from: of the ARGs before the first FROM (those of a
    stage are out of its reach), the last `ARG NAME=value` of each name."""
    first = min((int(i["startline"]) for i in conf.get("FROM", [])), default=0)
    values: dict[str, str] = {}
    for instruction in sorted(conf.get("ARG", []), key=lambda i: int(i["startline"])):
        if int(instruction["startline"]) < first:
            for word in _words(instruction):
                name, given, value = word.partition("=")
                if given:
                    values[name] = value
    return values


def unpinned_bases(
    froms: Sequence[Instruction], args: Mapping[str, str] | None = None
) -> list[Instruction]:
    """The FROM instructions whose image is pulled without a digest; `${NAME:-default}` is the
    value `args` give NAME, else (none, or empty) the default."""
    stages: set[str] = set()
    unpinned: list[Instruction] = []
    for instruction in froms:
        words = [w for w in str(instruction["value"]).split() if not w.startswith("--")]
        image = words[0] if words else ""
        defaulted = DEFAULTED.match(image)
        if defaulted:
            image = (args or {}).get(defaulted.group("name")) or defaulted.group("default")
        pulled = image.lower() != "scratch" and image.lower() not in stages
        if pulled and ("$" in image or not DIGEST.search(image)):
            unpinned.append(instruction)
        if len(words) >= 3 and words[1].lower() == "as":
            stages.add(words[2].lower())
    return unpinned


def bases_pinned_by_digest(conf: Instructions) -> Verdict:
    """Every base image is pinned by digest.

    A tag can be moved to other content; a digest cannot, so the image built today is the image
    built tomorrow. `scratch` and a stage defined earlier in the same Dockerfile are not pulled.
    A variable with a default, `${BASE_IMAGE:-image@sha256:...}`, is judged by what builds
    unless a build deliberately passes another base: the value of the last `ARG BASE_IMAGE=...`
    before the first FROM, else (none, or empty) the default. Any other variable fails: what it
    resolves to cannot be read from the Dockerfile. A file without any FROM fails.
    """
    froms = list(conf.get("FROM", []))
    if not froms:
        return CheckResult.FAILED, None
    unpinned = unpinned_bases(froms, from_args(conf))
    if unpinned:
        return CheckResult.FAILED, unpinned
    return CheckResult.PASSED, froms


base_image_digest = DockerfileCheck(
    "CKV_MLSTACK_DOCKER_1",
    "Ensure every base image (each FROM) is pinned by digest (@sha256:)",
    CheckCategories.SUPPLY_CHAIN,
    bases_pinned_by_digest,
)

# --- CKV_MLSTACK_DOCKER_2 -----------------------------------------------------------------------

NUMERIC_USER = re.compile(r"^(\d+)(:\d+)?$")


def final_user(conf: Instructions) -> Instruction | None:
    """The last USER of the final stage, if it sets one."""
    froms = conf.get("FROM", [])
    final_stage = max((int(i["startline"]) for i in froms), default=-1)
    users = [i for i in conf.get("USER", []) if int(i["startline"]) > final_stage]
    return max(users, key=lambda i: int(i["startline"]), default=None)


def runs_as_numeric_non_root(user: str) -> bool:
    numeric = NUMERIC_USER.match(user.strip())
    return numeric is not None and int(numeric.group(1)) != 0


def final_user_numeric_non_root(conf: Instructions) -> Verdict:
    """The final stage runs as a numeric user other than root.

    Kubernetes can enforce `runAsNonRoot` only against a numeric user: with `USER app` the
    kubelet cannot tell whether `app` is root and refuses to start the container. USER does not
    carry over from one stage to the next, so the final stage must set its own; `uid` or
    `uid:gid`, uid not 0.
    """
    user = final_user(conf)
    if user is None:
        return CheckResult.FAILED, None
    if not runs_as_numeric_non_root(str(user["value"])):
        return CheckResult.FAILED, [user]
    return CheckResult.PASSED, [user]


numeric_user = DockerfileCheck(
    "CKV_MLSTACK_DOCKER_2",
    "Ensure the final stage's last USER is a numeric uid other than 0",
    CheckCategories.IAM,
    final_user_numeric_non_root,
)

# --- CKV_MLSTACK_DOCKER_3 -----------------------------------------------------------------------

# The kinds of secret, and the URLs the gateway's database credentials travel in
# (DATABASE_URL, DATABASE_READ_URL: the user and password are in them).
SECRET_NAME = re.compile(
    r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|ACCESS_?KEY|CREDENTIAL"
    r"|DATABASE_(READ_)?URL",
    re.IGNORECASE,
)
LOCATION_SUFFIX = re.compile(r"_(FILE|PATH|DIR)$", re.IGNORECASE)


def declared_names(instruction: Instruction) -> list[str]:
    """The names an ARG or ENV declares: `NAME[=value] ...`, or ENV's legacy `NAME value`."""
    words = _words(instruction)  # an unbalanced quote: the names are still the words before `=`
    if instruction["instruction"] == "ENV" and words and "=" not in words[0]:
        return words[:1]
    return [word.partition("=")[0] for word in words]


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name)) and not LOCATION_SUFFIX.search(name)


def no_secret_build_values(conf: Instructions) -> Verdict:
    """No ARG or ENV named like a secret.

    Build arguments and environment variables stay in the image's history and configuration,
    where anyone who can pull the image reads them. A secret comes at run time (a Kubernetes
    Secret) or, at build time, through a secret mount. Names that hold a location (`*_FILE`,
    `*_PATH`, `*_DIR`) are fine. Secret values written inline are the `secrets` framework's job
    (CKV_SECRET_*).
    """
    declared = [*conf.get("ARG", []), *conf.get("ENV", [])]
    leaking = [i for i in declared if any(map(is_secret_name, declared_names(i)))]
    if leaking:
        return CheckResult.FAILED, sorted(leaking, key=lambda i: int(i["startline"]))
    return CheckResult.PASSED, None


secret_build_values = DockerfileCheck(
    "CKV_MLSTACK_DOCKER_3",
    "Ensure no ARG or ENV is named like a secret (they stay in the image)",
    CheckCategories.SECRETS,
    no_secret_build_values,
)
