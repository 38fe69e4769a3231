"""The gateway's database URLs: it serves as a role of its own (neither the superuser nor the
owner of the schema), its migrations Job alone has the owner's URL, and asyncpg reads back the
user, password, host, port and database the program meant, whatever characters the passwords
hold."""

from __future__ import annotations

from typing import Any

import pytest
from asyncpg import connect_utils

from components import app, database, migrations
from components.stack_file import stacks
from harness.program import TEST_SECRETS, ProgramRun, run_program, stack_config
from tests.database_image import entrypoint_module
from tests.manifests import env, pod_spec

# Every character with a meaning in a URL or in a libpq connection string, and a backslash.
PASSWORD = "a/b@c:d%2Fe+f=g?h#i'j\\k l&m"
OWNER_PASSWORD = "n?o=p+q%r:s@t/u#v w"


def asyncpg_reads(url: str) -> dict[str, Any]:
    """What asyncpg connects with for `url`: its own DSN parser, as asyncpg.connect calls it
    (private, and untyped: the pinned asyncpg's, so an upgrade that changes it fails here)."""
    addresses, params = connect_utils._parse_connect_dsn_and_args(  # type: ignore[attr-defined]
        dsn=url, host=None, port=None, user=None, password=None, passfile=None,
        database=None, ssl=None, service=None, servicefile=None, direct_tls=None,
        server_settings=None, target_session_attrs=None, krbsrvname=None, gsslib=None,
    )  # fmt: skip
    return {
        "addresses": addresses,
        "user": params.user,
        "password": params.password,
        "database": params.database,
    }


def urls(run: ProgramRun, secret: str) -> dict[str, str]:
    return dict(run.one("Secret", secret).inputs["stringData"])


def host(run: ProgramRun, service: str) -> str:
    """The Service's name in the stack's namespace."""
    return f"{service}.{run.one('Service', service).metadata['namespace']}.svc"


def gateway_pod(run: ProgramRun) -> dict[str, Any]:
    return pod_spec(run.one("Deployment", "gateway").inputs)


def mounted_secrets(spec: dict[str, Any], container: dict[str, Any]) -> set[str]:
    """The Secrets `container` mounts, by name."""
    by_volume = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    return {by_volume[m["name"]] for m in container["volumeMounts"] if m["name"] in by_volume}


@pytest.fixture(scope="module", params=stacks())
def odd_password(request: pytest.FixtureRequest) -> ProgramRun:
    return run_program(
        request.param,
        {
            **stack_config(request.param),
            "mlstack:databasePassword": PASSWORD,
            "mlstack:databaseOwnerPassword": OWNER_PASSWORD,
        },
    )


# --- who the gateway is --------------------------------------------------------------------------


def test_the_image_makes_the_roles_the_program_names() -> None:
    """The image's names, which its roles script makes (tests/services/test_database_scripts.py)
    and its pg_hba admits (tests/unit/test_database_entrypoint.py)."""
    image = entrypoint_module()
    assert (image["OWNER"], image["GATEWAY_USER"], image["DB_NAME"]) == (
        database.OWNER,
        database.GATEWAY_USER,
        database.DB_NAME,
    )


@pytest.mark.parametrize("key", [app.DATABASE_URL, app.DATABASE_READ_URL])
def test_the_gateway_serves_as_its_own_role(stack_run: ProgramRun, key: str) -> None:
    found = asyncpg_reads(urls(stack_run, app.GATEWAY_SECRET)[key])
    assert found["user"] == "mlstack_gateway"
    assert found["user"] not in ("postgres", database.OWNER)
    assert found["password"] == TEST_SECRETS["mlstack:databasePassword"]


def test_the_owner_s_url_is_the_migrations_job_s_alone(stack_run: ProgramRun) -> None:
    migrations = urls(stack_run, app.MIGRATIONS_SECRET)
    assert set(migrations) == {app.DATABASE_URL}
    found = asyncpg_reads(migrations[app.DATABASE_URL])
    # The primary: migrations write.
    assert found["addresses"] == [(host(stack_run, database.NAME), database.PORT)]
    assert (found["user"], found["password"]) == (
        "mlstack",
        TEST_SECRETS["mlstack:databaseOwnerPassword"],
    )
    owner_password = TEST_SECRETS["mlstack:databaseOwnerPassword"]
    gateway_secret = stack_run.one("Secret", app.GATEWAY_SECRET).inputs
    assert owner_password not in str(gateway_secret)
    for secret in stack_run.of_kind("Secret"):
        if owner_password in str(secret.inputs):
            assert secret.metadata["name"] in (app.MIGRATIONS_SECRET, app.DATABASE_SECRET)


def test_only_the_migrations_job_mounts_the_owner_s_url(stack_run: ProgramRun) -> None:
    job = stack_run.one("Job", app.MIGRATIONS)
    spec = pod_spec(job.inputs)
    (migrate,) = spec["containers"]
    gateway_spec = gateway_pod(stack_run)
    (gateway,) = gateway_spec["containers"]
    assert migrate["command"] == ["python", "-m", "mlstack_gateway.migrate"]
    assert migrate["image"] == gateway["image"]
    assert spec["restartPolicy"] == "Never"
    assert mounted_secrets(spec, migrate) == {app.MIGRATIONS_SECRET}
    # The file it is told to read is the URL in that Secret.
    (mount,) = [m for m in migrate["volumeMounts"] if m["mountPath"] != "/tmp"]
    assert env(migrate) == {"DATABASE_URL_FILE": f"{mount['mountPath']}/{app.DATABASE_URL}"}
    # The gateway's pods have no step before they start, and mount their own Secrets only.
    assert "initContainers" not in gateway_spec
    assert mounted_secrets(gateway_spec, gateway) == {app.GATEWAY_SECRET} | (
        {"gateway-tls"} if any(p["name"] == "https" for p in gateway["ports"]) else set()
    )
    # No workload mounts it at all.
    for workload in stack_run.of_kind("Deployment") + stack_run.of_kind("StatefulSet"):
        volumes = pod_spec(workload.inputs)["volumes"]
        secrets = {v["secret"]["secretName"] for v in volumes if "secret" in v}
        assert app.MIGRATIONS_SECRET not in secrets, workload.metadata["name"]


def test_the_migrations_job_is_replaced_when_what_it_runs_changes(stack_run: ProgramRun) -> None:
    """Its pod template is immutable: a new image or owner password replaces the Job (deleted
    first: its name is fixed), which runs again. The gateway does not wait for it to start (a
    new version's pods are Ready once the schema they need is there: its /readyz)."""
    job = stack_run.one("Job", app.MIGRATIONS)
    assert job.delete_before_replace
    assert stack_run.one("Secret", app.MIGRATIONS_SECRET).name in job.depends_on
    assert job.name not in stack_run.one("Deployment", "gateway").depends_on


def test_pulumi_up_waits_for_the_migrations_job_past_its_deadline(stack_run: ProgramRun) -> None:
    """A Job that fails at its deadline is reported with its own reason (DeadlineExceeded, the
    pod's log), not as the engine's wait running out first."""
    job = stack_run.one("Job", app.MIGRATIONS)
    deadline = job.inputs["spec"]["activeDeadlineSeconds"]
    waits = {operation: _seconds(value) for operation, value in job.custom_timeouts.items()}
    assert set(waits) == {"create", "update"}
    assert all(wait >= deadline + 60 for wait in waits.values()), (waits, deadline)


def test_the_migrations_job_holds_two_whole_tries_and_is_replaced_once_failed(
    stack_run: ProgramRun,
) -> None:
    """Each of the two tries ends by the migrate command's own timeout, its reason logged,
    before the deadline; and a Job that failed is replaced by the next `pulumi up` (which runs
    it again), rather than awaited again and failed with."""
    job = stack_run.one("Job", app.MIGRATIONS)
    spec = job.inputs["spec"]
    tries = spec["backoffLimit"] + 1
    controller_backoff = 10  # the Job controller's first backoff, before the second pod
    assert spec["activeDeadlineSeconds"] > tries * migrations.MIGRATE_TIMEOUT_SECONDS + (
        controller_backoff
    )
    assert "DATABASE_MIGRATE_TIMEOUT_SECONDS" not in env(pod_spec(job.inputs)["containers"][0])
    assert job.metadata["annotations"] == {"pulumi.com/replaceUnready": "true"}


def _seconds(duration: str) -> int:
    """A Pulumi custom timeout (`15m`, `1h`, `90s`) in seconds."""
    return int(duration[:-1]) * {"s": 1, "m": 60, "h": 3600}[duration[-1]]


def test_the_gateway_leaves_the_schema_to_the_migrations_job(stack_run: ProgramRun) -> None:
    (gateway,) = gateway_pod(stack_run)["containers"]
    variables = env(gateway)
    assert variables["DATABASE_MIGRATE"] == "false"
    assert variables["DATABASE_URL_FILE"].endswith(f"/{app.DATABASE_URL}")
    assert variables["DATABASE_READ_URL_FILE"].endswith(f"/{app.DATABASE_READ_URL}")


# --- any password --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "service"),
    [(app.DATABASE_URL, database.NAME), (app.DATABASE_READ_URL, database.READ_NAME)],
)
def test_asyncpg_reads_back_the_password_as_it_is(
    odd_password: ProgramRun, key: str, service: str
) -> None:
    url = urls(odd_password, app.GATEWAY_SECRET)[key]
    assert asyncpg_reads(url) == {
        "addresses": [(host(odd_password, service), database.PORT)],
        "user": "mlstack_gateway",
        "password": PASSWORD,
        "database": database.DB_NAME,
    }


def test_asyncpg_reads_back_the_owner_s_password_as_it_is(odd_password: ProgramRun) -> None:
    url = urls(odd_password, app.MIGRATIONS_SECRET)[app.DATABASE_URL]
    assert asyncpg_reads(url) == {
        "addresses": [(host(odd_password, database.NAME), database.PORT)],
        "user": "mlstack",
        "password": OWNER_PASSWORD,
        "database": database.DB_NAME,
    }


def test_the_urls_are_still_secrets(odd_password: ProgramRun) -> None:
    for name in (app.GATEWAY_SECRET, app.MIGRATIONS_SECRET):
        assert odd_password.one("Secret", name).secret_paths == ["stringData"]
