"""The service images, read from their Dockerfile (no Docker engine needed): what the Pulumi
components and the e2e suite rely on (base, port, user, entrypoint, pinned requirements). The
rules every Dockerfile is held to (bases pinned by digest, the final stage's numeric USER, no
ARG or ENV named like a secret, no ADD) are the policy gate's (`make policy`: tools/policy.py,
policy/checkov/), not repeated here.

The gateway and the model share services/Dockerfile: a stage each (``gateway``, ``model``) on a
stage they share (``service``), built with ``--target <service> --build-arg SERVICE=<service>``
(components/image.py, e2e/images.py). What one image holds is the shared stage's instructions,
then its own."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

import orjson
import pytest

from components import app, microservice, pod
from components.image import SHARED_DOCKERFILE_SERVICES, dockerfile
from harness.program import ROOT

SERVICES = {"model": "mlstack_model", "gateway": "mlstack_gateway"}
SHARED_STAGE = "service"
# What the components deploy the images with, as a Dockerfile spells it.
IMAGE_PORT = str(microservice.CONTAINER_PORT)
MODEL_GRPC_PORT = str(microservice.GRPC_PORT)
# The gateway serves /metrics on a port of its own.
GATEWAY_METRICS_PORT = str(app.METRICS_PORT)
# The pods run as this user and group (components/pod.py).
IMAGE_USER = f"{pod.RUN_AS_USER}:{pod.RUN_AS_USER}"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def parsed(text: str) -> list[Instruction]:
    logical = re.sub(r"\\\n", " ", text)
    found = []
    for line in logical.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, arguments = stripped.partition(" ")
            found.append(Instruction(keyword.upper(), arguments.strip()))
    return found


def stages() -> dict[str, list[Instruction]]:
    """services/Dockerfile's instructions by stage (the global ARGs under ``""``)."""
    by_stage: dict[str, list[Instruction]] = {"": []}
    current = ""
    for instruction in parsed((ROOT / "services" / "Dockerfile").read_text()):
        if instruction.keyword == "FROM":
            words = instruction.arguments.split()
            assert len(words) == 3 and words[1].upper() == "AS", instruction
            current = words[2]
            by_stage[current] = []
        by_stage[current].append(instruction)
    return by_stage


def instructions(service: str) -> list[Instruction]:
    """What ``--target <service>`` builds: the global ARGs, the shared stage, the service's."""
    by_stage = stages()
    return [*by_stage[""], *by_stage[SHARED_STAGE], *by_stage[service]]


def built(service: str, text: str) -> str:
    """``text`` with the SERVICE build argument as the service's build passes it."""
    return text.replace("${SERVICE}", service)


def env_of(service: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in instructions(service):
        if instruction.keyword == "ENV":
            for pair in shlex.split(instruction.arguments):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def only(service: str, keyword: str) -> str:
    found = [i.arguments for i in instructions(service) if i.keyword == keyword]
    assert len(found) == 1, f"{service}: expected one {keyword}, found {found}"
    return found[0]


def test_one_dockerfile_builds_both_python_services() -> None:
    assert set(SHARED_DOCKERFILE_SERVICES) == set(SERVICES)
    assert {dockerfile(service) for service in SERVICES} == {ROOT / "services" / "Dockerfile"}
    assert list(stages()) == ["", SHARED_STAGE, "gateway", "model"]
    # Each service's stage builds on the shared one, and no stage on another service's.
    for service in SERVICES:
        assert stages()[service][0].arguments == f"{SHARED_STAGE} AS {service}"
    assert not (ROOT / "services" / "gateway" / "Dockerfile").exists()
    assert not (ROOT / "services" / "model" / "Dockerfile").exists()


@pytest.mark.parametrize("service", SERVICES)
def test_a_build_may_pass_another_base(service: str) -> None:
    # BASE_IMAGE (the e2e suite's base built from bookworm's Python 3.11: e2e/rootfs.py) is
    # declared without a default, so that the pin lives in one place: the FROM's default, the
    # same Python on the same Debian, whose digest the gate requires (CKV_MLSTACK_DOCKER_1).
    args = [i.arguments for i in instructions(service) if i.keyword == "ARG"]
    assert args == ["BASE_IMAGE", "SERVICE"]
    base = instructions(service)[1]
    assert base.keyword == "FROM"
    default = r"python:3\.11\.\d+-slim-bookworm@[^}]+"
    assert re.fullmatch(rf"\$\{{BASE_IMAGE:-{default}\}} AS {SHARED_STAGE}", base.arguments)


@pytest.mark.parametrize("service", SERVICES)
def test_runs_as_the_pods_user(service: str) -> None:
    # The uid the pods run as; and on the gateway's stage too, which is not the file's final
    # one, the only stage the gate's CKV_MLSTACK_DOCKER_2 can tell is an image.
    assert only(service, "USER") == IMAGE_USER
    # Set in the service's own stage: the last one its build runs, the image it deploys.
    assert [i.keyword for i in stages()[service]][-3:] == ["USER", "EXPOSE", "ENTRYPOINT"]
    keywords = [i.keyword for i in instructions(service)]
    # Nothing after USER runs as root again.
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")


@pytest.mark.parametrize("service", SERVICES)
def test_exposes_the_ports_it_listens_on(service: str) -> None:
    env = env_of(service)
    extra = {"model": [MODEL_GRPC_PORT], "gateway": [GATEWAY_METRICS_PORT]}[service]
    assert only(service, "EXPOSE").split() == [IMAGE_PORT, *extra]
    assert env["PORT"] == IMAGE_PORT
    assert env.get("GRPC_PORT") == (MODEL_GRPC_PORT if service == "model" else None)
    assert env.get("METRICS_PORT") == (GATEWAY_METRICS_PORT if service == "gateway" else None)
    assert env["HOST"] == "0.0.0.0"


@pytest.mark.parametrize("service", SERVICES.items())
def test_entrypoint_runs_the_service_package(service: tuple[str, str]) -> None:
    name, package = service
    entrypoint = orjson.loads(only(name, "ENTRYPOINT"))
    assert entrypoint == ["python", "-m", package]
    assert (ROOT / "services" / name / package / "__main__.py").is_file()
    copies = [built(name, i.arguments).split() for i in instructions(name) if i.keyword == "COPY"]
    # The build context is services/: each image copies its own package and the shared one.
    assert [f"{name}/{package}", f"/opt/mlstack/app/{package}"] in copies
    assert ["common/mlstack_common", "/opt/mlstack/app/mlstack_common"] in copies
    assert (ROOT / "services" / "common" / "mlstack_common" / "__init__.py").is_file()


def test_model_image_trains_at_build_time_where_model_dir_points() -> None:
    runs = " ".join(i.arguments for i in instructions("model") if i.keyword == "RUN")
    model_dir = env_of("model")["MODEL_DIR"]
    assert f"python -m mlstack_model.train --out {model_dir}" in runs
    assert (ROOT / "services" / "model" / "mlstack_model" / "train.py").is_file()


def test_gateway_image_writes_only_under_tmp() -> None:
    assert env_of("gateway")["DATA_DIR"].startswith("/tmp/")


@pytest.mark.parametrize("service", SERVICES)
def test_requirements_are_pinned_exactly(service: str) -> None:
    lines = (ROOT / "services" / service / "requirements.txt").read_text().splitlines()
    requirements = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert requirements
    for requirement in requirements:
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][0-9A-Za-z.\-+]*", requirement), requirement
    runs = " ".join(i.arguments for i in instructions(service) if i.keyword == "RUN")
    assert "-r /opt/mlstack/requirements.txt" in runs
    copies = [
        built(service, i.arguments).split() for i in instructions(service) if i.keyword == "COPY"
    ]
    assert [f"{service}/requirements.txt", "/opt/mlstack/requirements.txt"] in copies
