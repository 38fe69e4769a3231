"""`mlstack:database.backup` to an S3-compatible endpoint the stack names (local and existing
clusters), under the mocks: its mistakes, each one line naming the key; with backups, the
`backups` container beside PostgreSQL, pgBackRest's options (the same in both containers, the
secret ones as files of the `database` Secret), the CA bundle, the restore request's volume, the
way out to the bucket and in to the metrics; without, none of it.

The stack files back up to the repository of their cluster kind (tests/unit/
test_backup_repository.py): the runs here give dev's config, and prod's on an existing cluster,
an endpoint."""

from __future__ import annotations

import json
import re
from typing import Any, Final

import pytest

from components import database, pod
from components.backup_repository.common import ROUTE_NAME
from components.config import BACKUP_SECRETS, GENERATED_SECRETS
from components.labels import labels
from components.stack_file import stacks
from harness.program import TEST_SECRETS, ProgramRun, run_program, stack_config
from tests.manifests import env, mounts
from tests.unit.configs import (
    BACKUP_TEST_SECRETS,
    CA,
    EXISTING,
    PROD_BACKUP,
    S3,
    config_error,
    dev_with,
    with_backup,
)
from tests.unit.database_pods import (
    database_containers,
    database_volumes,
    match,
    pgbackrest_env,
    policies,
)
from tests.unit.pack import pack_findings
from tests.unit.runs import scaling, secrets_digest

# pgBackRest's secret options, each a file of the `database` Secret, from that stack secret.
SECRET_OPTIONS: Final = {
    "repo1-cipher-pass": ("backup-cipher-password", "mlstack:databaseBackupCipherPassword"),
    "repo1-s3-key": ("backup-s3-access-key", "mlstack:databaseBackupS3AccessKey"),
    "repo1-s3-key-secret": ("backup-s3-secret-key", "mlstack:databaseBackupS3SecretKey"),
}


@pytest.fixture(scope="module")
def prod_backups() -> ProgramRun:
    """prod's config (three instances, metrics scraped from `monitoring`) on an existing
    cluster, with a bucket and its CA."""
    return run_program("prod", with_backup("prod", PROD_BACKUP, existing=True))


@pytest.fixture(scope="module")
def dev_backups() -> ProgramRun:
    """dev (one instance, no metrics namespace) with a bucket and no CA bundle."""
    return run_program("dev", with_backup("dev"))


# --- mistakes ------------------------------------------------------------------------------------


def backup_error(backup: Any, **secrets: Any) -> str:
    """The one line dev with `database.backup: backup` (and its secrets, or `secrets`) logs."""
    config = {
        **TEST_SECRETS,
        **dev_with(database={"backup": backup}),
        **BACKUP_TEST_SECRETS,
        **{f"mlstack:{k}": v for k, v in secrets.items()},
    }
    return config_error({k: v for k, v in config.items() if v is not None}, with_secrets=False)


MISTAKES: Final[list[tuple[Any, str]]] = [
    ("s3://bucket",
     'mlstack:database.backup: "s3://bucket" is not allowed: expected an object'),
    ({"s3": S3, "retention": 3},
     'mlstack:database.backup: unknown key "retention" (did you mean "retentionFull"?)'),
    ({"s3": {**S3, "endpont": "x"}},
     'mlstack:database.backup.s3: unknown key "endpont" (did you mean "endpoint"?)'),
    ({"s3": {**S3, "endpoint": "http://s3.example.com"}},
     'mlstack:database.backup.s3.endpoint: "http://s3.example.com" is not allowed: '
     "expected https://host or https://host:port (pgBackRest speaks HTTPS only)"),
    ({"s3": {**S3, "endpoint": "https://s3.example.com/mlstack-backups"}},
     'mlstack:database.backup.s3.endpoint: "https://s3.example.com/mlstack-backups" is not '
     "allowed: expected https://host"),
    ({"s3": {**S3, "endpoint": "s3.example.com"}},
     'mlstack:database.backup.s3.endpoint: "s3.example.com" is not allowed'),
    ({"s3": {**S3, "endpoint": "https://s3.example.com:0"}},
     'mlstack:database.backup.s3.endpoint: "https://s3.example.com:0" is not allowed'),
    ({"s3": {**S3, "endpoint": "https://s3.example.com:65536"}},
     'mlstack:database.backup.s3.endpoint: "https://s3.example.com:65536" is not allowed'),
    ({"s3": {"bucket": "b", "region": "r"}},
     'mlstack:database.backup.s3.endpoint: "" is not allowed: expected https://host'),
    ({"s3": {**S3, "bucket": ""}},
     'mlstack:database.backup.s3.bucket: "" is not allowed: expected a non-empty string'),
    ({"s3": {"endpoint": S3["endpoint"], "region": "r"}},
     "mlstack:database.backup.s3.bucket: null is not allowed: expected a non-empty string"),
    ({"s3": {**S3, "region": ""}},
     'mlstack:database.backup.s3.region: "" is not allowed: expected a non-empty string'),
    ({"s3": {**S3, "uriStyle": "paths"}},
     'mlstack:database.backup.s3.uriStyle: "paths" is not allowed: expected one of host, '
     'path (did you mean "path"?)'),
    ({"s3": {**S3, "caCertificate": "MIIBbackupca"}},
     'mlstack:database.backup.s3.caCertificate: "<text>" is not allowed: expected a PEM '
     "certificate bundle"),
    ({"s3": S3, "fullEveryHours": 0},
     "mlstack:database.backup.fullEveryHours: 0 is not allowed: expected a whole number "
     "from 1 to 744"),
    ({"s3": S3, "diffEveryHours": 25},
     "mlstack:database.backup.diffEveryHours: 25 is not allowed: expected a whole number "
     "from 1 to 24"),
    ({"s3": S3, "fullEveryHours": 4, "diffEveryHours": 5},
     "mlstack:database.backup.diffEveryHours: 5 is not allowed: expected a whole number "
     "from 1 to 4"),
    ({"s3": S3, "retentionFull": 0},
     "mlstack:database.backup.retentionFull: 0 is not allowed: expected a whole number "
     "from 1 to 100"),
    ({"s3": S3, "retentionFull": 101}, "mlstack:database.backup.retentionFull: 101 "),
    ({"s3": S3, "retentionFull": "2"}, 'mlstack:database.backup.retentionFull: "2" '),
    ({"s3": S3, "retentionFull": True}, "mlstack:database.backup.retentionFull: true "),
]  # fmt: skip


def named_key(message: str) -> str:
    found = re.match(r"mlstack:([\w.]+)", message)
    assert found, message
    return found.group(1)


@pytest.mark.parametrize(
    ("backup", "expected"), MISTAKES, ids=[named_key(expected) for _, expected in MISTAKES]
)
def test_backup_mistakes_are_one_line_naming_the_key(backup: Any, expected: str) -> None:
    assert backup_error(backup).startswith(expected)


@pytest.mark.parametrize("key", BACKUP_SECRETS)
def test_with_backups_each_backup_secret_is_required(key: str) -> None:
    message = backup_error({"s3": S3}, **{key: None})
    assert message.startswith(f"mlstack:{key} is missing: set it with ")
    assert f"`pulumi config set --secret mlstack:{key} <value>`" in message


@pytest.mark.parametrize("key", BACKUP_SECRETS)
def test_a_missing_backup_secret_says_where_it_comes_from(key: str) -> None:
    """The encryption key is generated by `make stack`; the bucket's keys are their provider's,
    and the message must not send the user to `make stack` for them."""
    message = backup_error({"s3": S3}, **{key: None})
    generated = key in GENERATED_SECRETS
    assert ("`make stack STACK=dev` generates one" in message) == generated, message
    assert generated == (key == "databaseBackupCipherPassword")


def test_the_bucket_s_keys_are_taken_as_its_provider_issued_them() -> None:
    """An access key pair is the provider's to shape (MinIO's default one is 10 characters):
    only the encryption key, which `make up` generates, has a minimum length."""
    config = {
        **with_backup("dev"),
        "mlstack:databaseBackupS3AccessKey": "minioadmin",
        "mlstack:databaseBackupS3SecretKey": "minioadmin",
    }
    secret = run_program("dev", config).one("Secret", "database").inputs["stringData"]
    assert (secret["backup-s3-access-key"], secret["backup-s3-secret-key"]) == ("minioadmin",) * 2
    message = backup_error({"s3": S3}, databaseBackupS3AccessKey="")
    assert message.startswith("mlstack:databaseBackupS3AccessKey is empty: ")
    message = backup_error({"s3": S3}, databaseBackupCipherPassword="short")
    assert message.startswith(
        "mlstack:databaseBackupCipherPassword is too short (at least 12 characters): "
    )


def test_a_short_full_interval_bounds_the_default_differential() -> None:
    run = run_program("dev", with_backup("dev", {"s3": S3, "fullEveryHours": 4}))
    found = env(database_containers(run)["backups"])
    assert (found["DATABASE_BACKUP_FULL_HOURS"], found["DATABASE_BACKUP_DIFF_HOURS"]) == ("4", "4")


# --- with backups --------------------------------------------------------------------------------


def test_the_pod_has_a_backups_container_beside_postgres(prod_backups: ProgramRun) -> None:
    found = database_containers(prod_backups)
    assert list(found) == ["postgres", "backups"]
    backups, postgres = found["backups"], found["postgres"]
    # The database's own image (its pgBackRest and the data folder's layout), pulled alike.
    assert backups["image"] == postgres["image"]
    assert "@sha256:" in backups["image"]
    assert backups["imagePullPolicy"] == postgres["imagePullPolicy"] == "IfNotPresent"
    assert backups["command"] == ["mlstack-database-backups"]
    assert "args" not in backups
    assert backups["resources"] == {
        "requests": {"cpu": "20m", "memory": "64Mi", "ephemeral-storage": "64Mi"},
        "limits": {"cpu": "1", "memory": "256Mi", "ephemeral-storage": "256Mi"},
    }
    # Pod Security's `restricted`, as every container of the stack.
    assert backups["securityContext"] == postgres["securityContext"]
    context = backups["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["runAsNonRoot"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert backups["ports"] == [
        {"name": "backup-metrics", "containerPort": database.BACKUP_METRICS_PORT, "protocol": "TCP"}
    ]
    assert env(backups)["METRICS_PORT"] == str(database.BACKUP_METRICS_PORT)
    for kind in ("startupProbe", "livenessProbe"):
        assert backups[kind]["httpGet"] == {"path": "/metrics", "port": "backup-metrics"}, kind
    # Not ready while the repository is another database's (mlstack-database-backups).
    assert backups["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "backup-metrics"}
    # Its own writable /tmp (pgBackRest's configuration with the secrets, its locks); the data
    # folder and PostgreSQL's socket of the pod.
    found_mounts = mounts(backups)
    assert found_mounts["/tmp"] == "backups-tmp" != mounts(postgres)["/tmp"]
    assert found_mounts[database.MOUNT_PATH] == database.CLAIM_TEMPLATE
    assert found_mounts[database.SOCKET_DIR] == "run"
    assert database_volumes(prod_backups)["backups-tmp"] == {
        "name": "backups-tmp",
        "emptyDir": {"sizeLimit": "64Mi"},
    }


def test_both_containers_carry_the_same_pgbackrest_options(prod_backups: ProgramRun) -> None:
    """PostgreSQL's archive and restore commands (postgres) and the backups (backups) read
    the same repository the same way."""
    found = database_containers(prod_backups)
    options = pgbackrest_env(found["postgres"])
    assert options == pgbackrest_env(found["backups"])
    assert options == {
        "PGBACKREST_STANZA": database.STANZA,
        "PGBACKREST_REPO1_TYPE": "s3",
        "PGBACKREST_REPO1_PATH": "/mlstack/prod",
        "PGBACKREST_REPO1_S3_ENDPOINT": "s3.example.com",
        "PGBACKREST_REPO1_STORAGE_PORT": "9000",
        "PGBACKREST_REPO1_S3_BUCKET": "mlstack-backups",
        "PGBACKREST_REPO1_S3_REGION": "r1",
        "PGBACKREST_REPO1_S3_URI_STYLE": "host",
        "PGBACKREST_REPO1_CIPHER_TYPE": "aes-256-cbc",
        "PGBACKREST_REPO1_RETENTION_FULL": "2",
        "PGBACKREST_REPO1_STORAGE_CA_FILE": f"{database.BACKUP_CA_DIR}/ca.crt",
        "PGBACKREST_PG1_PATH": database.PGDATA,
        "PGBACKREST_PG1_SOCKET_PATH": database.SOCKET_DIR,
        "PGBACKREST_CONFIG": "/tmp/pgbackrest/pgbackrest.conf",
        "PGBACKREST_LOCK_PATH": "/tmp/pgbackrest/lock",
        "PGBACKREST_SPOOL_PATH": "/tmp/pgbackrest/spool",
        "PGBACKREST_LOG_PATH": "/tmp/pgbackrest/log",
        "PGBACKREST_LOG_LEVEL_FILE": "off",
    }
    # Everything pgBackRest writes is under /tmp, writable in each container.
    for name, container in found.items():
        assert mounts(container)["/tmp"] in database_volumes(prod_backups), name
    # The schedule is the backups container's alone.
    assert env(found["backups"])["DATABASE_BACKUP_FULL_HOURS"] == "24"
    assert env(found["backups"])["DATABASE_BACKUP_DIFF_HOURS"] == "6"
    assert "DATABASE_BACKUP_FULL_HOURS" not in env(found["postgres"])


def test_the_repository_options_follow_the_config() -> None:
    backup = {
        "s3": {**S3, "endpoint": "https://minio.example.com", "uriStyle": "path"},
        "retentionFull": 7,
        "fullEveryHours": 168,
        "diffEveryHours": 12,
    }
    found = database_containers(run_program("dev", with_backup("dev", backup)))
    options = pgbackrest_env(found["backups"])
    assert options["PGBACKREST_REPO1_S3_ENDPOINT"] == "minio.example.com"
    assert options["PGBACKREST_REPO1_STORAGE_PORT"] == "443"
    assert options["PGBACKREST_REPO1_S3_URI_STYLE"] == "path"
    assert options["PGBACKREST_REPO1_RETENTION_FULL"] == "7"
    assert env(found["backups"])["DATABASE_BACKUP_FULL_HOURS"] == "168"
    assert env(found["backups"])["DATABASE_BACKUP_DIFF_HOURS"] == "12"


def test_no_secret_value_is_in_any_container_s_environment(prod_backups: ProgramRun) -> None:
    """pgBackRest's secret options are files of the `database` Secret, which the entrypoint
    writes to pgBackRest's own configuration (mode 0600): never a value in the pod's spec."""
    secret = prod_backups.one("Secret", "database")
    assert secret.secret_paths == ["stringData"]
    data = secret.inputs["stringData"]
    found = database_containers(prod_backups)
    for name, container in found.items():
        text = json.dumps(container["env"])
        assert "secretKeyRef" not in text, name
        for value in (*TEST_SECRETS.values(), *BACKUP_TEST_SECRETS.values()):
            assert value not in text, name
        files = json.loads(env(container)["DATABASE_BACKUP_SECRETS"])
        assert files == {
            option: pod.secret_file(key) for option, (key, _) in SECRET_OPTIONS.items()
        }, name
        # The files are the `database` Secret's, mounted read-only where the map says.
        (folder,) = {path.rsplit("/", 1)[0] for path in files.values()}
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == folder]
        assert (mount["name"], mount["readOnly"]) == (pod.SECRETS_VOLUME, True), name
    assert database_volumes(prod_backups)[pod.SECRETS_VOLUME]["secret"]["secretName"] == "database"
    given = {**TEST_SECRETS, **BACKUP_TEST_SECRETS}
    for option, (key, config_key) in SECRET_OPTIONS.items():
        assert data[key] == given[config_key], option
    # Nor in any other object the program registers.
    others = [r for r in prod_backups.resources if r is not secret]
    text = json.dumps([r.inputs for r in others])
    for _, config_key in SECRET_OPTIONS.values():
        assert given[config_key] not in text, config_key


def test_a_new_bucket_key_rolls_the_database_pods(prod_backups: ProgramRun) -> None:
    """Each container reads the secret files at its start: the keyed digest in the template
    covers the backup secrets too."""
    config = with_backup("prod", PROD_BACKUP, existing=True)
    config["mlstack:databaseBackupS3SecretKey"] = "another-backup-s3-secret-key"
    renewed = secrets_digest(run_program("prod", config), "StatefulSet", database.NAME)
    assert renewed != secrets_digest(prod_backups, "StatefulSet", database.NAME)


def test_each_stack_has_a_folder_of_its_own_in_the_bucket(
    prod_backups: ProgramRun, dev_backups: ProgramRun
) -> None:
    paths = {
        run.stack: pgbackrest_env(database_containers(run)["postgres"])["PGBACKREST_REPO1_PATH"]
        for run in (prod_backups, dev_backups)
    }
    assert paths == {"prod": "/mlstack/prod", "dev": "/mlstack/dev"}
    buckets = {
        pgbackrest_env(database_containers(run)["postgres"])["PGBACKREST_REPO1_S3_BUCKET"]
        for run in (prod_backups, dev_backups)
    }
    assert buckets == {S3["bucket"]}, "the same bucket: only the folder tells them apart"


def test_the_repository_is_encrypted(prod_backups: ProgramRun) -> None:
    for container in database_containers(prod_backups).values():
        assert pgbackrest_env(container)["PGBACKREST_REPO1_CIPHER_TYPE"] == "aes-256-cbc"
        assert "repo1-cipher-pass" in json.loads(env(container)["DATABASE_BACKUP_SECRETS"])


def test_the_ca_bundle_is_a_configmap_mounted_in_both_containers(
    prod_backups: ProgramRun,
) -> None:
    config_map = prod_backups.one("ConfigMap", database.BACKUP_CA_CONFIG_MAP)
    assert config_map.inputs["data"] == {"ca.crt": CA}
    assert config_map.metadata["namespace"] == "mlstack-prod"
    # Not one of Patroni's: `make restore` deletes those by their scope label.
    assert config_map.metadata["labels"] == labels(database.NAME, "prod")
    assert database.SCOPE_LABEL not in config_map.metadata["labels"]
    assert database_volumes(prod_backups)["backup-ca"] == {
        "name": "backup-ca",
        "configMap": {"name": database.BACKUP_CA_CONFIG_MAP},
    }
    for name, container in database_containers(prod_backups).items():
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "backup-ca"]
        assert mount == {"name": "backup-ca", "mountPath": database.BACKUP_CA_DIR, "readOnly": True}
        ca_file = pgbackrest_env(container)["PGBACKREST_REPO1_STORAGE_CA_FILE"]
        assert ca_file == f"{mount['mountPath']}/ca.crt", name


def test_without_a_ca_bundle_there_is_no_configmap_nor_mount(dev_backups: ProgramRun) -> None:
    assert dev_backups.of_kind("ConfigMap") == []
    assert "backup-ca" not in database_volumes(dev_backups)
    for name, container in database_containers(dev_backups).items():
        assert "backup-ca" not in mounts(container).values(), name
        assert "PGBACKREST_REPO1_STORAGE_CA_FILE" not in pgbackrest_env(container), name


@pytest.mark.parametrize("run_name", ["prod_backups", "dev_backups"])
def test_a_restore_request_is_an_optional_configmap_mounted_in_postgres(
    run_name: str, request: pytest.FixtureRequest
) -> None:
    """`make restore` makes the ConfigMap for the length of a restore: the program never does,
    and the pods start without it."""
    run: ProgramRun = request.getfixturevalue(run_name)
    assert database.RESTORE_CONFIG_MAP not in {c.metadata["name"] for c in run.of_kind("ConfigMap")}
    assert database_volumes(run)["restore"] == {
        "name": "restore",
        "configMap": {"name": database.RESTORE_CONFIG_MAP, "optional": True},
    }
    postgres = database_containers(run)["postgres"]
    (mount,) = [m for m in postgres["volumeMounts"] if m["name"] == "restore"]
    assert mount == {"name": "restore", "mountPath": database.RESTORE_DIR, "readOnly": True}
    assert env(postgres)["DATABASE_RESTORE_DIR"] == database.RESTORE_DIR


def test_the_database_pods_alone_reach_the_bucket_s_port_anywhere(
    prod_backups: ProgramRun,
) -> None:
    found = policies(prod_backups)
    assert found[ROUTE_NAME] == {
        "podSelector": {"matchLabels": match(prod_backups)},
        "policyTypes": ["Egress"],
        "egress": [
            {
                # The endpoint is a DNS name: its addresses are not the program's to know.
                "to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}],
                "ports": [{"port": 9000, "protocol": "TCP"}],
            }
        ],
    }
    # Every other way out is to the stack's pods, the cluster's DNS, or the API server.
    for name, spec in found.items():
        if name in (ROUTE_NAME, "database-to-api-server"):
            continue
        for rule in spec.get("egress") or []:
            for peer in rule.get("to") or []:
                assert "ipBlock" not in peer, name


def test_the_default_https_port_is_the_one_opened(dev_backups: ProgramRun) -> None:
    config = with_backup("dev", {"s3": {**S3, "endpoint": "https://s3.eu-west-1.amazonaws.com"}})
    (rule,) = policies(run_program("dev", config))[ROUTE_NAME]["egress"]
    assert rule["ports"] == [{"port": 443, "protocol": "TCP"}]


def test_the_backup_metrics_are_open_to_the_metrics_namespaces_alone(
    prod_backups: ProgramRun, dev_backups: ProgramRun
) -> None:
    assert policies(prod_backups)["database-metrics"] == {
        "podSelector": {"matchLabels": match(prod_backups)},
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "ports": [{"port": database.BACKUP_METRICS_PORT, "protocol": "TCP"}],
                "from": [
                    {
                        "namespaceSelector": {
                            "matchExpressions": [
                                {
                                    "key": "kubernetes.io/metadata.name",
                                    "operator": "In",
                                    "values": ["monitoring"],
                                }
                            ]
                        }
                    }
                ],
            }
        ],
    }
    # dev names no metrics namespace: nobody scrapes, no policy opens the port.
    assert "database-metrics" not in policies(dev_backups)
    for name, spec in policies(dev_backups).items():
        for rule in spec.get("ingress") or []:
            ports = [p["port"] for p in rule.get("ports") or []]
            assert database.BACKUP_METRICS_PORT not in ports, name


def test_the_stack_with_backups_passes_every_rule_of_the_pack(prod_backups: ProgramRun) -> None:
    """The policy pack `make up` holds the stack to reads the backups container too."""
    assert pack_findings(prod_backups) == []


# --- turning backups on, and off -----------------------------------------------------------------


def test_turning_backups_on_rolls_the_pods_and_keeps_services_and_claims() -> None:
    """A new pod template (a roll, expected: each instance in turn) and new keys in the
    Secret; the Services, the claims and the rest of the StatefulSet's spec, which Kubernetes
    does not let change in place, stay as they are."""
    without = run_program("prod", without_backup("prod", existing=True))
    changed, added, removed = scaling(
        without, run_program("prod", with_backup("prod", PROD_BACKUP, existing=True))
    )
    assert set(changed) == {"StatefulSet database", "Secret database"}
    assert changed["Secret database"] == [
        f"stringData.{key}" for key in sorted(key for key, _ in SECRET_OPTIONS.values())
    ]
    assert changed["StatefulSet database"] == [
        f"spec.template.metadata.annotations.{pod.SECRETS_CHECKSUM}",
        "spec.template.spec.containers",
        "spec.template.spec.volumes",
    ]
    assert added == {
        "ConfigMap database-backup-ca",
        f"NetworkPolicy {ROUTE_NAME}",
        "NetworkPolicy database-metrics",
    }
    assert removed == set()
    assert without.of_kind("PersistentVolumeClaim"), "the claims were compared"


def without_backup(stack: str, *, existing: bool = False) -> dict[str, Any]:
    """`stack`'s config with no `database.backup` (every stack file has one)."""
    config = stack_config(stack)
    if existing:
        config["mlstack:cluster"] = EXISTING
    config["mlstack:database"] = {
        k: v for k, v in config["mlstack:database"].items() if k != "backup"
    }
    return config


@pytest.fixture(scope="module", params=stacks())
def stack_without_backups(request: pytest.FixtureRequest) -> ProgramRun:
    """Each stack file without its backups, still with the encryption key `make up` generates
    for every stack (TEST_SECRETS has it)."""
    assert "mlstack:databaseBackupCipherPassword" in TEST_SECRETS
    return run_program(request.param, without_backup(request.param))


def test_without_backups_none_of_it_exists(stack_without_backups: ProgramRun) -> None:
    run = stack_without_backups
    assert list(database_containers(run)) == ["postgres"]
    (postgres,) = database_containers(run).values()
    assert pgbackrest_env(postgres) == {}
    names = set(env(postgres))
    assert not names & {"DATABASE_BACKUP_SECRETS", "DATABASE_RESTORE_DIR"}
    assert set(database_volumes(run)) == {"tmp", pod.SECRETS_VOLUME, "run"}
    assert run.of_kind("ConfigMap") == []
    assert not {ROUTE_NAME, "database-metrics"} & set(policies(run))
    secret = run.one("Secret", "database").inputs["stringData"]
    assert not {key for key, _ in SECRET_OPTIONS.values()} & set(secret)
    text = json.dumps([r.inputs for r in run.resources])
    assert TEST_SECRETS["mlstack:databaseBackupCipherPassword"] not in text
    # Nor any repository: no bucket, no identity for one, no volume.
    assert not [r for r in run.resources if r.type.startswith("mlstack:backup:")]
    assert database.BACKUP_CLAIM not in {
        c.metadata["name"] for c in run.of_kind("PersistentVolumeClaim")
    }
    assert "annotations" not in run.one("ServiceAccount", database.NAME).metadata
