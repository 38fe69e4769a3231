"""CKV_MLSTACK_DOCKER_3: no ARG or ENV named like a secret.

Build arguments and environment variables stay in the image's history and configuration, where
anyone who can pull the image reads them. A secret comes at run time (a Kubernetes Secret) or,
at build time, through a secret mount. Names that hold a location (`*_FILE`, `*_PATH`, `*_DIR`)
are fine. Secret values written inline are the `secrets` framework's job (CKV_SECRET_*).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.dockerfile.base_dockerfile_check import BaseDockerfileCheck

Instruction = Mapping[str, Any]
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
    value = str(instruction["value"])
    try:
        words = shlex.split(value)
    except ValueError:  # an unbalanced quote: the names are still the words before `=`
        words = value.split()
    if instruction["instruction"] == "ENV" and words and "=" not in words[0]:
        return words[:1]
    return [word.partition("=")[0] for word in words]


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name)) and not LOCATION_SUFFIX.search(name)


class NoSecretBuildValues(BaseDockerfileCheck):  # type: ignore[misc]  # Checkov is untyped here
    def __init__(self) -> None:
        super().__init__(
            name="Ensure no ARG or ENV is named like a secret (they stay in the image)",
            id="CKV_MLSTACK_DOCKER_3",
            categories=(CheckCategories.SECRETS,),
            # ARG and ENV in one pass: Checkov keeps one result per check and file.
            supported_instructions=("*",),
        )

    def scan_resource_conf(
        self, conf: Mapping[str, Sequence[Instruction]]
    ) -> tuple[CheckResult, list[Instruction] | None]:
        declared = [*conf.get("ARG", []), *conf.get("ENV", [])]
        leaking = [i for i in declared if any(map(is_secret_name, declared_names(i)))]
        if leaking:
            return CheckResult.FAILED, sorted(leaking, key=lambda i: int(i["startline"]))
        return CheckResult.PASSED, None


check = NoSecretBuildValues()
