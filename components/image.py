"""`ServiceImage`: builds one of `services/*` with pulumi-docker and pushes it to a registry.

The deployed reference is the pushed image's repository digest (`name@sha256:...`): identical
content gives the same digest, so an unchanged service does not roll its Deployment, and any
change to its code gives a new digest, which does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pulumi

SERVICES_DIR: Final = Path(__file__).resolve().parent.parent / "services"
# The folders of services/ that are built into images. Every image is built from all of
# services/, so that each can copy the code they share (services/common).
SERVICES: Final = ("gateway", "model", "database")
# The Python services share services/Dockerfile, a stage each (its --target, with the SERVICE
# build argument); the others have a Dockerfile in their folder.
SHARED_DOCKERFILE_SERVICES: Final = ("gateway", "model")


def dockerfile(service: str) -> Path:
    """The Dockerfile `service`'s image is built from."""
    if service in SHARED_DOCKERFILE_SERVICES:
        return SERVICES_DIR / "Dockerfile"
    return SERVICES_DIR / service / "Dockerfile"


def target(service: str) -> str | None:
    """The stage of its Dockerfile that is `service`'s image (--target), where it has several."""
    return service if service in SHARED_DOCKERFILE_SERVICES else None


# The longest tag a registry takes.
MAX_TAG_LENGTH: Final = 128


def tag(project: str, stack: str) -> str:
    """The tag the stack's images are pushed with, `<project>-<stack>`: two copies of the project
    (renamed, README "Copying mlstack") that push their `prod` to one registry move no tag of each
    other's. A tag begins with a letter, a digit or `_` (a project's name may begin with `.` or
    `-`: `_` then comes first); past MAX_TAG_LENGTH, it is cut, and told apart by a digest of the
    whole."""
    whole = f"{project}-{stack}"
    if not (whole[0].isascii() and (whole[0].isalnum() or whole[0] == "_")):
        whole = f"_{whole}"
    if len(whole) <= MAX_TAG_LENGTH:
        return whole
    digest = hashlib.sha256(whole.encode()).hexdigest()[:12]
    return f"{whole[: MAX_TAG_LENGTH - len(digest) - 1]}-{digest}"


def build_args(service: str) -> dict[str, str]:
    """The build arguments that pick `service` out of a shared Dockerfile."""
    return {"SERVICE": service} if service in SHARED_DOCKERFILE_SERVICES else {}


@dataclass(frozen=True)
class ServiceImageArgs:
    service: str  # one of SERVICES
    project: str
    stack: str
    # Where to push: `host[:port][/path]`, e.g. `localhost:5001` or `europe-docker.pkg.dev/p/r`.
    registry: pulumi.Input[str]
    platform: str = "linux/amd64"


class ServiceImage(pulumi.ComponentResource):
    ref: pulumi.Output[str]

    def __init__(
        self, name: str, args: ServiceImageArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlstack:image:ServiceImage", name, None, opts)
        import pulumi_docker as docker  # only stacks that build images need the Docker provider

        image = docker.Image(
            name,
            image_name=pulumi.Output.concat(
                args.registry, "/", args.service, ":", tag(args.project, args.stack)
            ),
            build=docker.DockerBuildArgs(
                context=str(SERVICES_DIR),
                dockerfile=str(dockerfile(args.service)),
                platform=args.platform,
                target=target(args.service),
                args=build_args(args.service) or None,
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.ref = image.repo_digest
        self.register_outputs({"ref": self.ref})
