"""e2e/images.py: the app's images built by the suite's own Docker engine from their own
Dockerfiles, served by digest from a real registry on 127.0.0.1, each one running the way the
program deploys it (its uid, a read-only root filesystem, no capabilities, no network)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import pytest

from components import database, pod
from e2e import process
from e2e.dockerd import DockerEngine, DockerError
from e2e.images import REPOSITORY, ImageRefs, Images, local_tag
from e2e.registry import DIRECT

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="runs a Docker engine and a registry of its own: root only"
)
PASSWORD = "e2e-images-password"
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


def wait_for(engine: DockerEngine, name: str, *command: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not engine.docker_ok("exec", name, *command):
        if time.monotonic() > deadline:
            pytest.fail(f"{name}: `{' '.join(command)}` never succeeded:\n{engine.logs(name)}")
        time.sleep(0.5)


def served_manifest(address: str, name: str, digest: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://{address}/v2/{REPOSITORY}/{name}/manifests/{digest}",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    with DIRECT.open(request, timeout=10) as answer:
        body = answer.read()
    assert f"sha256:{hashlib.sha256(body).hexdigest()}" == digest
    return cast(dict[str, Any], json.loads(body))


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


@pytest.mark.parametrize(
    ("service", "health"), [("model", "/v2/health/ready"), ("gateway", "/healthz")]
)
def test_a_service_image_serves_as_its_pod_runs_it(
    images: Images, refs: ImageRefs, service: str, health: str
) -> None:
    engine = images.engine
    ref = pulled(engine, getattr(refs, service))
    assert engine.inspect(ref)["Config"]["User"] == f"{UID}:{UID}"
    env = ("--env=MLSTACK_API_KEY=e2e-images-key",) if service == "gateway" else ()
    with container(engine, f"e2e-{service}", *RESTRICTED, *env, ref) as name:
        url = f"http://127.0.0.1:8080{health}"
        probe = f"import urllib.request as u; assert u.urlopen({url!r}).status == 200"
        wait_for(engine, name, "python", "-c", probe)
        version = engine.docker("exec", name, "python", "-c", "import sys; print(sys.version)")
        assert version.startswith("3.11.")


def database_pod() -> dict[str, Any]:
    """The primary's pod spec exactly as components/database.py renders it."""
    args = database.DatabaseArgs(
        stack="e2e",
        namespace="e2e",
        storage_size="1Gi",
        storage_bytes=2**30,
        storage_class=None,
        secret_name="secrets",
    )
    settings = database.server_settings(1, "local", args.storage_bytes)
    spec = database._pod_spec(args, "primary", settings, "database", database.SCRIPTS)
    return cast(dict[str, Any], spec)


def env_value(container_spec: dict[str, Any], name: str) -> str:
    return next(str(e["value"]) for e in container_spec["env"] if e["name"] == name)


def fs_group_folder(path: Path, mode: int) -> Path:
    """A folder as the kubelet hands a volume to a pod with fsGroup: group-owned by it."""
    path.mkdir()
    os.chown(path, 0, UID)
    path.chmod(mode)
    return path


def database_run_args(
    spec: dict[str, Any], data: Path, secrets: Path, scripts: Path, image: str
) -> list[str]:
    """`docker run` options and arguments for the database container: its env, its volumes
    (the start script's ConfigMap included), its security, its command."""
    mounts = {m["name"]: m["mount_path"] for m in spec["volume_mounts"]}
    for name, text in database._script_files().items():
        (scripts / name).write_text(text)
        (scripts / name).chmod(0o444)
    command = spec["command"]
    return [
        *RESTRICTED,
        f"--tmpfs={mounts['run']}",
        f"--volume={data}:{mounts[database.CLAIM_TEMPLATE]}",
        f"--volume={secrets}:{mounts[pod.SECRETS_VOLUME]}:ro",
        f"--volume={scripts}:{mounts['scripts']}:ro",
        *(f"--env={e['name']}={e['value']}" for e in spec["env"]),
        f"--entrypoint={command[0]}",
        image,
        *command[1:],
        *spec["args"],
    ]


def scram_verifies(verifier: str, password: str) -> bool:
    """Whether PostgreSQL's stored verifier `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:
    <ServerKey>` was made from `password` (RFC 5802: StoredKey = H(HMAC(salted, "Client Key")))."""
    method, parameters, keys = verifier.split("$")
    iterations, salt = parameters.split(":")
    stored_key = base64.b64decode(keys.split(":")[0])
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return method == "SCRAM-SHA-256" and hashlib.sha256(client_key).digest() == stored_key


def test_the_database_image_keeps_the_contract_the_program_deploys_it_with(
    images: Images, refs: ImageRefs, tmp_path: Path
) -> None:
    engine = images.engine
    pod_spec = database_pod()
    spec: dict[str, Any] = pod_spec["containers"][0]
    data = fs_group_folder(tmp_path / "data", 0o2775)
    secrets = fs_group_folder(tmp_path / "secrets", 0o2755)
    password_file = secrets / database.PASSWORD_KEY
    password_file.write_text(PASSWORD)
    os.chown(password_file, 0, UID)
    password_file.chmod(0o440)
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    args = database_run_args(spec, data, secrets, scripts, pulled(engine, refs.database))
    ready = spec["readiness_probe"]["exec_"]["command"]
    psql = ["psql", f"--username={database.USER}", f"--dbname={database.DB_NAME}", "-tAc"]
    role = f"SELECT rolpassword FROM pg_authid WHERE rolname = '{database.USER}'"
    host_rules = "SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host' AND address = 'all'"

    with container(engine, "e2e-database", *args) as name:
        wait_for(engine, name, *ready)
        # The superuser's password is the content of POSTGRES_PASSWORD_FILE...
        verifier = engine.docker("exec", name, *psql, role).strip()
        assert scram_verifies(verifier, PASSWORD)
        assert not scram_verifies(verifier, PASSWORD + "x")
        # ... and every other host must give it (the stack's hba_file: one rule for every
        # database, one for replication).
        methods = engine.docker("exec", name, *psql, host_rules).split()
        assert methods == ["scram-sha-256", "scram-sha-256"]
        engine.docker(
            "exec", name, *psql, "CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)"
        )
        pgdata = data / Path(env_value(spec, "PGDATA")).relative_to(database.MOUNT_PATH)
        assert pgdata.stat().st_uid == UID
        # STOPSIGNAL SIGINT: PostgreSQL's fast shutdown, well within the pod's grace period.
        engine.docker("stop", f"--time={pod_spec['termination_grace_period_seconds']}", name)

    with container(engine, "e2e-database-again", *args) as name:
        wait_for(engine, name, *ready)
        assert engine.docker("exec", name, *psql, "SELECT n FROM kept").split() == ["42"]
        assert "holds a database: no initialisation" in engine.logs(name)


def test_the_database_refuses_to_initialise_without_a_password(
    images: Images, refs: ImageRefs, tmp_path: Path
) -> None:
    data = fs_group_folder(tmp_path / "data", 0o2775)
    with pytest.raises(DockerError, match="no superuser password is set"):
        images.engine.docker(
            "run",
            "--rm",
            *RESTRICTED,
            "--tmpfs=/var/run/postgresql",
            f"--volume={data}:/var/lib/postgresql/data",
            pulled(images.engine, refs.database),
        )
    # Nothing half-initialised is left behind to be mistaken for a database on the next start.
    assert list(data.iterdir()) == []


def test_down_leaves_no_process_and_no_mount(images: Images) -> None:
    images.down()
    try:
        for folder in (images.workdir, images.engine.data_root):
            assert process.find(str(folder)) == []
            assert process.mounts_under(folder) == []
    finally:
        images.up()
