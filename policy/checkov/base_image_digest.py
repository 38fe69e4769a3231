"""CKV_MLSTACK_DOCKER_1: every base image is pinned by digest.

A tag can be moved to other content; a digest cannot, so the image built today is the image
built tomorrow. `scratch` and a stage defined earlier in the same Dockerfile are not pulled.
A variable with a default, `${BASE_IMAGE:-image@sha256:...}`, is judged by its default: that is
what builds unless a build deliberately passes another base. Any other variable fails: what it
resolves to cannot be read from the Dockerfile.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.dockerfile.base_dockerfile_check import BaseDockerfileCheck

Instruction = Mapping[str, Any]
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
DEFAULTED = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:-(?P<default>[^${}]+)\}$")


def unpinned_bases(froms: Sequence[Instruction]) -> list[Instruction]:
    """The FROM instructions whose image is pulled without a digest."""
    stages: set[str] = set()
    unpinned: list[Instruction] = []
    for instruction in froms:
        words = [w for w in str(instruction["value"]).split() if not w.startswith("--")]
        image = words[0] if words else ""
        defaulted = DEFAULTED.match(image)
        if defaulted:
            image = defaulted.group("default")
        pulled = image.lower() != "scratch" and image.lower() not in stages
        if pulled and ("$" in image or not DIGEST.search(image)):
            unpinned.append(instruction)
        if len(words) >= 3 and words[1].lower() == "as":
            stages.add(words[2].lower())
    return unpinned


class BaseImageDigest(BaseDockerfileCheck):  # type: ignore[misc]  # Checkov is untyped here
    def __init__(self) -> None:
        super().__init__(
            name="Ensure every base image (each FROM) is pinned by digest (@sha256:)",
            id="CKV_MLSTACK_DOCKER_1",
            categories=(CheckCategories.SUPPLY_CHAIN,),
            # Every file, so that one without any FROM fails rather than goes unchecked.
            supported_instructions=("*",),
        )

    def scan_resource_conf(
        self, conf: Mapping[str, Sequence[Instruction]]
    ) -> tuple[CheckResult, list[Instruction] | None]:
        froms = list(conf.get("FROM", []))
        if not froms:
            return CheckResult.FAILED, None
        unpinned = unpinned_bases(froms)
        if unpinned:
            return CheckResult.FAILED, unpinned
        return CheckResult.PASSED, froms


check = BaseImageDigest()
