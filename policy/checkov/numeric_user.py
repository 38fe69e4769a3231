"""CKV_MLSTACK_DOCKER_2: the final stage runs as a numeric user other than root.

Kubernetes can enforce `runAsNonRoot` only against a numeric user: with `USER app` the kubelet
cannot tell whether `app` is root and refuses to start the container. USER does not carry over
from one stage to the next, so the final stage must set its own; `uid` or `uid:gid`, uid not 0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.dockerfile.base_dockerfile_check import BaseDockerfileCheck

Instruction = Mapping[str, Any]
NUMERIC_USER = re.compile(r"^(\d+)(:\d+)?$")


def final_user(conf: Mapping[str, Sequence[Instruction]]) -> Instruction | None:
    """The last USER of the final stage, if it sets one."""
    froms = conf.get("FROM", [])
    final_stage = max((int(i["startline"]) for i in froms), default=-1)
    users = [i for i in conf.get("USER", []) if int(i["startline"]) > final_stage]
    return max(users, key=lambda i: int(i["startline"]), default=None)


def runs_as_numeric_non_root(user: str) -> bool:
    numeric = NUMERIC_USER.match(user.strip())
    return numeric is not None and int(numeric.group(1)) != 0


class NumericNonRootUser(BaseDockerfileCheck):  # type: ignore[misc]  # Checkov is untyped here
    def __init__(self) -> None:
        super().__init__(
            name="Ensure the final stage's last USER is a numeric uid other than 0",
            id="CKV_MLSTACK_DOCKER_2",
            categories=(CheckCategories.IAM,),
            supported_instructions=("*",),
        )

    def scan_resource_conf(
        self, conf: Mapping[str, Sequence[Instruction]]
    ) -> tuple[CheckResult, list[Instruction] | None]:
        user = final_user(conf)
        if user is None:
            return CheckResult.FAILED, None
        if not runs_as_numeric_non_root(str(user["value"])):
            return CheckResult.FAILED, [user]
        return CheckResult.PASSED, [user]


check = NumericNonRootUser()
