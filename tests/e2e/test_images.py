"""e2e/images.py: the app's images built by the suite's own Docker engine from their own
Dockerfiles, served by digest from a real registry on 127.0.0.1, each one running the way the
program deploys it (its uid, a read-only root filesystem, no capabilities, no network)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from components import database, pod
from e2e import process
from e2e.dockerd import DockerEngine
from e2e.images import REPOSITORY, ImageRefs, Images, local_tag
from harness.http import request
from tests.database_image import rendered_containers

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="runs a Docker engine and a registry of its own: root only"
)
UID = pod.RUN_AS_USER
# The pod's security context (components/pod.py) as `docker run` options; emptyDirs as tmpfs.
RESTRICTED = (
    f"--user={UID}:{UID}",
    "--read-only",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
    "--network=none",
    "--tmpfs=/tmp",
)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    built = Images(tmp_path_factory.mktemp("images"))
    try:
        built.up()
        yield built
    finally:
        built.down()


@pytest.fixture(scope="module")
def refs(images: Images) -> ImageRefs:
    return ImageRefs(**json.loads(images.refs_file.read_text()))


def pulled(engine: DockerEngine, ref: str) -> str:
    """`ref` pulled back from the registry, as a node pulls it."""
    engine.docker("pull", ref)
    return ref


@contextmanager
def container(engine: DockerEngine, name: str, *args: str) -> Iterator[str]:
    """A detached container, removed on the way out."""
    engine.docker("run", "--detach", f"--name={name}", *args)
    try:
        yield name
    finally:
        engine.docker("rm", "--force", name)


def served_manifest(address: str, name: str, digest: str) -> dict[str, Any]:
    reply = request(
        "GET",
        f"http://{address}/v2/{REPOSITORY}/{name}/manifests/{digest}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    assert reply.status == 200, reply.body
    assert f"sha256:{hashlib.sha256(reply.body).hexdigest()}" == digest
    return cast(dict[str, Any], reply.json())


def test_every_image_is_served_by_digest_from_the_local_registry(
    images: Images, refs: ImageRefs
) -> None:
    address = images.registry.address
    assert re.fullmatch(r"127\.0\.0\.1:\d+", address)
    for name, ref in asdict(refs).items():
        assert re.fullmatch(rf"{re.escape(address)}/{REPOSITORY}/{name}@sha256:[0-9a-f]{{64}}", ref)
        served = served_manifest(address, name, ref.rpartition("@")[2])
        # The registry holds the very image the engine built.
        built = images.engine.image_id(local_tag(name))
        assert served["config"]["digest"] == built


def test_a_second_run_rebuilds_nothing(images: Images, refs: ImageRefs) -> None:
    # A rebuilt image would carry new timestamps, hence new digests.
    assert images.up() == refs


@pytest.mark.parametrize("service", ["model", "gateway"])
def test_a_service_image_runs_as_its_pod_runs_it(
    images: Images, refs: ImageRefs, service: str
) -> None:
    """The image's own user is the pod's (a `docker run` without `--user` is not root). That it
    serves under the pod's whole security context is shown on the node by its pods (test_engine
    2a and 2b), which run these very images."""
    ref = pulled(images.engine, getattr(refs, service))
    assert images.engine.inspect(ref)["Config"]["User"] == f"{UID}:{UID}"


def database_container() -> dict[str, Any]:
    """The database's container exactly as components/database.py renders it."""
    return rendered_containers()[database.POSTGRES_CONTAINER]


def fs_group_folder(path: Path, mode: int) -> Path:
    """A folder as the kubelet hands a volume to a pod with fsGroup: group-owned by it."""
    path.mkdir()
    os.chown(path, 0, UID)
    path.chmod(mode)
    return path


# Patroni's pod values from the downward API, as the kubelet would fill them in.
DOWNWARD = {"POD_NAME": "database-0", "POD_IP": "10.244.0.9", "POD_NAMESPACE": "e2e"}
# What the stack's database Secret holds, with what a URL, YAML or a shell gives a meaning to.
DATABASE_SECRETS = {
    database.OWNER_PASSWORD_KEY: "owner/@:%+=?'\"x y",
    database.GATEWAY_PASSWORD_KEY: "gateway/@:%+=?'\"x y",
    database.REPLICATION_PASSWORD_KEY: "replication/@:%+=?'\"x y\n: [",
    database.REWIND_PASSWORD_KEY: "rewind/@:%+=?'\"x y#",
}


def database_run_args(spec: dict[str, Any], secrets: Path, image: str) -> list[str]:
    """`docker run` options for the database container: its env (the downward API's values
    filled in), its Secret's files, its emptyDirs, its security."""
    for key, value in DATABASE_SECRETS.items():
        (secrets / key).write_text(value)
        os.chown(secrets / key, 0, UID)
        (secrets / key).chmod(0o440)
    env = [
        f"--env={e['name']}={e['value'] if 'value' in e else DOWNWARD[e['name']]}"
        for e in spec["env"]
    ]
    mounts = {m["name"]: m["mount_path"] for m in spec["volume_mounts"]}
    return [
        *RESTRICTED,
        f"--tmpfs={mounts['run']}:uid={UID},gid={UID},mode=0775",
        f"--tmpfs={mounts[database.CLAIM_TEMPLATE]}:uid={UID},gid={UID},mode=0700",
        f"--volume={secrets}:{mounts[pod.SECRETS_VOLUME]}:ro",
        *env,
        image,
    ]


def test_the_database_image_gives_patroni_valid_settings_and_the_passwords_in_a_file_only(
    images: Images, refs: ImageRefs, tmp_path: Path
) -> None:
    engine = images.engine
    spec = database_container()
    image = pulled(engine, refs.database)
    assert engine.inspect(image)["Config"]["User"] == f"{UID}:{UID}"
    args = database_run_args(spec, fs_group_folder(tmp_path / "secrets", 0o2755), image)
    show = "import yaml,os; print(oct(os.stat('/tmp/patroni/patroni.yml').st_mode & 0o777))"
    with container(engine, "e2e-database", *args[:-1], "--entrypoint=sleep", image, "600") as name:
        # The entrypoint writes the settings, then Patroni checks them (its store is not needed).
        engine.docker("exec", name, "mlstack-database", "--validate-config")
        settings = yaml.safe_load(engine.docker("exec", name, "cat", "/tmp/patroni/patroni.yml"))
        mode = engine.docker("exec", name, "/opt/patroni/bin/python", "-c", show).strip()
        environment = engine.docker("exec", name, "env")
    assert mode == "0o600"
    authentication = settings["postgresql"]["authentication"]
    assert authentication["replication"]["password"] == DATABASE_SECRETS[
        database.REPLICATION_PASSWORD_KEY
    ].rstrip("\n")
    assert authentication["rewind"]["password"] == DATABASE_SECRETS[database.REWIND_PASSWORD_KEY]
    assert "password" not in authentication["superuser"]
    assert settings["name"] == DOWNWARD["POD_NAME"]
    assert settings["postgresql"]["connect_address"] == f"{DOWNWARD['POD_IP']}:{database.PORT}"
    assert settings["kubernetes"]["role_label"] == database.ROLE_LABEL
    assert settings["kubernetes"]["scope_label"] == database.SCOPE_LABEL
    assert settings["scope"] == database.SCOPE
    for value in DATABASE_SECRETS.values():
        assert value.splitlines()[0] not in environment


def test_down_leaves_no_process_and_no_mount(images: Images) -> None:
    """Last of the module: nothing here needs the engine or the registry after it (the
    fixture's own `down` then finds both stopped)."""
    images.down()
    for folder in (images.workdir, images.engine.data_root):
        assert process.find(str(folder)) == []
        assert process.mounts_under(folder) == []
