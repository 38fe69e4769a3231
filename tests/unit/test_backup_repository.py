"""Where each stack's backups go, per cluster kind, under the mocks:

    gke       a GCS bucket the program makes (uniform access, public access prevented, soft
              delete, in the cluster's region), a service account with objectAdmin on it alone,
              acted as by the ServiceAccount `database` through Workload Identity
    eks       an S3 bucket the program makes (SSE-KMS with a key of its own, every public access
              blocked, owner-enforced, TLS only, versioned), a role only `database` may assume
              through the cluster's OIDC provider, allowed the bucket and the key alone
    local     a volume of the stack's, mounted in every database pod
    existing  a volume too by default, or the S3-compatible endpoint `database.backup.s3` names

For every stack file, and for every stack's config on every cluster kind: the repository,
pgBackRest's options in the database pods, the ServiceAccount's identity, the way out to the
repository; and the mistakes a `database.backup` can make on each kind."""

from __future__ import annotations

import json
from typing import Any, Final

import pytest

from components import database, pod
from components.backup_repository.common import RECOVERY_DAYS, ROUTE_NAME
from components.backup_repository.gcs_bucket import METADATA_ROUTE_NAME
from components.stack_file import stacks
from harness.program import (
    AWS_ACCOUNT,
    OIDC_ISSUER,
    TEST_SECRETS,
    ProgramRun,
    Registered,
    run_program,
    stack_config,
)
from tests.manifests import env, mounts
from tests.unit.configs import (
    BACKUP_TEST_SECRETS,
    EXISTING,
    S3,
    cloud_stacks,
    config_error,
    dev_with,
    with_fields,
)
from tests.unit.database_pods import (
    database_containers,
    database_volumes,
    match,
    pgbackrest_env,
    policies,
)
from tests.unit.runs import single

GCS_BUCKET: Final = "gcp:storage/bucket:Bucket"
GCS_BUCKET_MEMBER: Final = "gcp:storage/bucketIAMMember:BucketIAMMember"
GCP_ACCOUNT: Final = "gcp:serviceaccount/account:Account"
GCP_ACCOUNT_MEMBER: Final = "gcp:serviceaccount/iAMMember:IAMMember"
S3_BUCKET: Final = "aws:s3/bucket:Bucket"
IAM_ROLE: Final = "aws:iam/role:Role"
KMS_KEY: Final = "aws:kms/key:Key"
ANYWHERE: Final = [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}]
# The cluster of each kind the cross-kind runs put a stack's config on: the stack file's own
# where one has that kind.
CLUSTERS: Final[dict[str, dict[str, Any]]] = {
    "local": {"provider": "local"},
    "existing": EXISTING,
    "gke": dict(stack_config("prod")["mlstack:cluster"]),
    "eks": dict(stack_config("staging")["mlstack:cluster"]),
}
# Images by digest: a cluster kind without a registry of its own has nothing to build for.
PREBUILT: Final = {
    "build": False,
    **{
        name: f"registry.example/{name}@sha256:{'a' * 64}"
        for name in ("gateway", "model", "database")
    },
}
# What each kind's pods get: pgBackRest's repository type, and the ServiceAccount annotation
# that names their cloud identity.
REPOSITORY_TYPE: Final = {"local": "posix", "existing": "posix", "gke": "gcs", "eks": "s3"}
IDENTITY: Final = {
    "local": None,
    "existing": None,
    "gke": "iam.gke.io/gcp-service-account",
    "eks": "eks.amazonaws.com/role-arn",
}


def backed_up(stack: str) -> dict[str, Any]:
    """`stack`'s config with its backups, or with `backup: {}` (every default) when it has none."""
    config = stack_config(stack)
    config["mlstack:database"] = {"backup": {}, **config["mlstack:database"]}
    return config


def retention(run: ProgramRun) -> str:
    """`retentionFull` as the run's stack file has it (pgBackRest's option is a string)."""
    backup = stack_config(run.stack)["mlstack:database"].get("backup") or {}
    return str(backup.get("retentionFull", 2))


def kind(run: ProgramRun) -> str:
    return str(stack_config(run.stack)["mlstack:cluster"]["provider"])


def options(run: ProgramRun) -> dict[str, str]:
    """pgBackRest's options in the database pods (the same in both containers)."""
    found = database_containers(run)
    assert pgbackrest_env(found["postgres"]) == pgbackrest_env(found["backups"])
    return pgbackrest_env(found["postgres"])


def secret_options(run: ProgramRun) -> dict[str, str]:
    """pgBackRest's secret options, each a file of the database Secret (both containers)."""
    found = database_containers(run)
    files = {name: json.loads(env(c)["DATABASE_BACKUP_SECRETS"]) for name, c in found.items()}
    assert files["postgres"] == files["backups"]
    return dict(files["postgres"])


def account_annotations(run: ProgramRun) -> dict[str, Any]:
    return dict(run.one("ServiceAccount", database.NAME).metadata.get("annotations") or {})


def backup_routes(run: ProgramRun) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in policies(run).items() if k in (ROUTE_NAME, METADATA_ROUTE_NAME)}


def on_kind(stack: str, cluster_kind: str) -> dict[str, Any]:
    """`stack`'s config on a cluster of `cluster_kind`: images by digest (no registry to build
    for), and no gateway TLS on `local` (its k3s publishes plain HTTP only)."""
    config = backed_up(stack)
    config["mlstack:cluster"] = CLUSTERS[cluster_kind]
    config["mlstack:images"] = PREBUILT
    if cluster_kind == "local":
        config["mlstack:gateway"] = {
            k: v for k, v in config["mlstack:gateway"].items() if k != "tls"
        }
    return config


# --- every stack file ----------------------------------------------------------------------------


def test_every_stack_file_backs_up(stack_run: ProgramRun) -> None:
    """A stack without backups could not go back before a bad statement: each stack file has
    them, to its cluster kind's repository."""
    assert "backup" in stack_config(stack_run.stack)["mlstack:database"]
    assert options(stack_run)["PGBACKREST_REPO1_TYPE"] == REPOSITORY_TYPE[kind(stack_run)]
    assert options(stack_run)["PGBACKREST_REPO1_CIPHER_TYPE"] == "aes-256-cbc"
    # The encryption key alone is a secret option: no stack file holds a key to its repository.
    assert secret_options(stack_run) == {
        "repo1-cipher-pass": pod.secret_file("backup-cipher-password")
    }
    stored = stack_run.one("Secret", database.NAME).inputs["stringData"]
    assert not {"backup-s3-access-key", "backup-s3-secret-key"} & set(stored)


@pytest.fixture(
    scope="module",
    params=[(s, k) for s in stacks() for k in CLUSTERS],
    ids=[f"{s}-on-{k}" for s in stacks() for k in CLUSTERS],
)
def kind_run(request: pytest.FixtureRequest) -> tuple[str, ProgramRun]:
    """Each stack's config on each cluster kind, with its cluster kind."""
    stack, cluster_kind = request.param
    return cluster_kind, run_program(stack, on_kind(stack, cluster_kind))


def test_every_stack_on_every_kind_backs_up_to_that_kind_s_repository(
    kind_run: tuple[str, ProgramRun],
) -> None:
    cluster_kind, run = kind_run
    found = options(run)
    assert found["PGBACKREST_REPO1_TYPE"] == REPOSITORY_TYPE[cluster_kind]
    identity = IDENTITY[cluster_kind]
    assert set(account_annotations(run)) == ({identity} if identity else set())
    buckets = run.by_type(GCS_BUCKET) + run.by_type(S3_BUCKET)
    claims = {c.metadata["name"] for c in run.of_kind("PersistentVolumeClaim")}
    if cluster_kind in ("gke", "eks"):
        (bucket,) = buckets
        assert bucket.type == (GCS_BUCKET if cluster_kind == "gke" else S3_BUCKET)
        assert database.BACKUP_CLAIM not in claims
        assert found["PGBACKREST_REPO1_PATH"] == f"/mlstack/{run.stack}"
        assert set(backup_routes(run)) == (
            {ROUTE_NAME, METADATA_ROUTE_NAME} if cluster_kind == "gke" else {ROUTE_NAME}
        )
    else:
        assert buckets == []
        assert database.BACKUP_CLAIM in claims
        assert found["PGBACKREST_REPO1_PATH"] == database.BACKUP_VOLUME_DIR
        assert backup_routes(run) == {}
    # The claims and the bucket are protected where the stack is.
    protect = bool(stack_config(run.stack).get("mlstack:protect", False))
    guarded = [*buckets, *run.of_kind("PersistentVolumeClaim")]
    assert {r.protect for r in guarded} == {protect}


# --- gke: a GCS bucket and Workload Identity ----------------------------------------------------


@pytest.fixture(scope="module", params=cloud_stacks("gke"))
def gke(request: pytest.FixtureRequest) -> ProgramRun:
    return run_program(request.param, backed_up(request.param))


def gcs_account(run: ProgramRun) -> Registered:
    (account,) = [a for a in run.by_type(GCP_ACCOUNT) if a.name.endswith("-backups")]
    return account


def email(run: ProgramRun, account: Registered) -> str:
    project = stack_config(run.stack)["mlstack:cluster"]["project"]
    return f"{account.inputs['accountId']}@{project}.iam.gserviceaccount.com"


def test_gke_bucket_is_private_in_the_cluster_s_region_and_kept(gke: ProgramRun) -> None:
    cluster = stack_config(gke.stack)["mlstack:cluster"]
    bucket = single(gke, GCS_BUCKET)
    assert bucket.inputs["project"] == cluster["project"]
    assert bucket.inputs["location"] == cluster["region"]
    # Access by IAM alone (no object ACL), never to allUsers or allAuthenticatedUsers.
    assert bucket.inputs["uniformBucketLevelAccess"] is True
    assert bucket.inputs["publicAccessPrevention"] == "enforced"
    # A deleted object can be brought back for a while; a destroy never empties the bucket.
    assert bucket.inputs["softDeletePolicy"] == {
        "retentionDurationSeconds": RECOVERY_DAYS * 24 * 3600
    }
    assert bucket.inputs["forceDestroy"] is False
    assert bucket.protect is bool(stack_config(gke.stack).get("mlstack:protect", False))
    # Named by the provider's auto-naming: a bucket's name is global.
    assert "name" not in bucket.inputs


def test_gke_backups_run_as_an_account_with_the_bucket_s_objects_alone(gke: ProgramRun) -> None:
    account = gcs_account(gke)
    assert account.inputs["accountId"] == f"mlstack-{gke.stack}-backups"
    member = f"serviceAccount:{email(gke, account)}"
    grant = single(gke, GCS_BUCKET_MEMBER)
    bucket = single(gke, GCS_BUCKET)
    assert grant.inputs == {
        "bucket": options(gke)["PGBACKREST_REPO1_GCS_BUCKET"],
        "role": "roles/storage.objectAdmin",
        "member": member,
    }
    assert grant.inputs["bucket"].startswith(f"{bucket.name}-")
    # No project-wide role: the nodes' grants are the only project ones.
    for binding in gke.by_type("gcp:projects/iAMMember:IAMMember"):
        assert binding.inputs["member"] != member


def test_gke_only_the_database_s_service_account_acts_as_it(gke: ProgramRun) -> None:
    project = stack_config(gke.stack)["mlstack:cluster"]["project"]
    account = gcs_account(gke)
    binding = single(gke, GCP_ACCOUNT_MEMBER)
    assert binding.inputs == {
        "serviceAccountId": f"projects/{project}/serviceAccounts/{email(gke, account)}",
        "role": "roles/iam.workloadIdentityUser",
        "member": f"serviceAccount:{project}.svc.id.goog[mlstack-{gke.stack}/database]",
    }
    # The pool is the cluster's own.
    cluster = single(gke, "gcp:container/cluster:Cluster")
    assert cluster.inputs["workloadIdentityConfig"] == {"workloadPool": f"{project}.svc.id.goog"}
    assert account_annotations(gke) == {"iam.gke.io/gcp-service-account": email(gke, account)}


def test_gke_workload_identity_binding_waits_for_the_cluster_s_pool(gke: ProgramRun) -> None:
    """GKE makes a project's pool `<project>.svc.id.goog` with its first Workload Identity
    cluster, and IAM refuses a binding that names the pool before then (`Identity Pool does not
    exist`): in a new project, the first `pulumi up` makes the binding after the cluster."""
    binding = single(gke, GCP_ACCOUNT_MEMBER)
    cluster = single(gke, "gcp:container/cluster:Cluster")
    assert f"{cluster.type}::{cluster.name}" in binding.waits_for


def test_gke_pgbackrest_uses_the_bucket_with_the_pods_identity(gke: ProgramRun) -> None:
    found = options(gke)
    assert {k: v for k, v in found.items() if k.startswith("PGBACKREST_REPO1_")} == {
        "PGBACKREST_REPO1_TYPE": "gcs",
        "PGBACKREST_REPO1_PATH": f"/mlstack/{gke.stack}",
        "PGBACKREST_REPO1_GCS_BUCKET": single(gke, GCS_BUCKET_MEMBER).inputs["bucket"],
        # The token from the metadata server: Workload Identity's, no key file.
        "PGBACKREST_REPO1_GCS_KEY_TYPE": "auto",
        "PGBACKREST_REPO1_CIPHER_TYPE": "aes-256-cbc",
        "PGBACKREST_REPO1_RETENTION_FULL": retention(gke),
    }


def test_gke_database_pods_reach_gcs_and_the_metadata_server_alone(gke: ProgramRun) -> None:
    selected = {"matchLabels": match(gke)}
    assert backup_routes(gke) == {
        ROUTE_NAME: {
            "podSelector": selected,
            "policyTypes": ["Egress"],
            "egress": [{"to": ANYWHERE, "ports": [{"port": 443, "protocol": "TCP"}]}],
        },
        METADATA_ROUTE_NAME: {
            "podSelector": selected,
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [{"ipBlock": {"cidr": "169.254.169.254/32"}}],
                    "ports": [{"port": 80, "protocol": "TCP"}],
                }
            ],
        },
    }


# --- eks: an S3 bucket and IAM roles for service accounts ---------------------------------------


@pytest.fixture(scope="module", params=cloud_stacks("eks"))
def eks(request: pytest.FixtureRequest) -> ProgramRun:
    return run_program(request.param, backed_up(request.param))


def bucket_part(run: ProgramRun, type_: str) -> dict[str, Any]:
    """The inputs of the one `type_` resource that sets up the backups' bucket."""
    (found,) = [r for r in run.by_type(type_) if r.name == f"mlstack-{run.stack}-backups"]
    return found.inputs


def bucket_name(run: ProgramRun) -> str:
    return options(run)["PGBACKREST_REPO1_S3_BUCKET"]


def backup_key(run: ProgramRun) -> Registered:
    (key,) = [k for k in run.by_type(KMS_KEY) if k.name == f"mlstack-{run.stack}-backups"]
    return key


def backup_role(run: ProgramRun) -> Registered:
    (role,) = [r for r in run.by_type(IAM_ROLE) if r.name == f"mlstack-{run.stack}-backups"]
    return role


def test_eks_bucket_is_encrypted_with_a_key_of_its_own(eks: ProgramRun) -> None:
    key = backup_key(eks)
    assert key.inputs["enableKeyRotation"] is True
    (cluster_key,) = [k for k in eks.by_type(KMS_KEY) if k is not key]
    key_arn = f"arn:aws:kms:eu-west-1:{AWS_ACCOUNT}:key/{key.name}"
    assert key_arn != f"arn:aws:kms:eu-west-1:{AWS_ACCOUNT}:key/{cluster_key.name}"
    encryption = (
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
    )
    assert bucket_part(eks, encryption) == {
        "bucket": bucket_name(eks),
        "rules": [
            {
                "applyServerSideEncryptionByDefault": {
                    "sseAlgorithm": "aws:kms",
                    "kmsMasterKeyId": key_arn,
                },
                "bucketKeyEnabled": True,
            }
        ],
    }
    bucket = single(eks, S3_BUCKET)
    assert bucket.inputs == {"forceDestroy": False}, "auto-named, settings in their resources"


@pytest.mark.parametrize("protect", [True, False], ids=["protected", "unprotected"])
@pytest.mark.parametrize("stack", cloud_stacks("eks"))
def test_eks_bucket_and_its_key_are_protected_where_the_stack_is(stack: str, protect: bool) -> None:
    """Each way round: the eks stack files are not all protected, and an unprotected stack alone
    would not show a key left unprotected in a protected one (the backups unreadable once a
    `pulumi destroy` has scheduled its deletion)."""
    run = run_program(stack, {**backed_up(stack), "mlstack:protect": protect})
    assert (backup_key(run).protect, single(run, S3_BUCKET).protect) == (protect, protect)


def test_eks_backups_key_outlives_the_bucket_on_destroy(eks: ProgramRun) -> None:
    """A destroy deletes a resource only once whatever waits for it is gone. The bucket waits for
    its key, so a destroy that stops at a bucket holding backups (`forceDestroy: false`) has not
    scheduled the deletion of the key they are encrypted with."""
    bucket = single(eks, S3_BUCKET)
    assert f"{KMS_KEY}::{backup_key(eks).name}" in bucket.waits_for


def test_eks_bucket_settings_stay_with_a_bucket_a_destroy_stops_at(eks: ProgramRun) -> None:
    """Everything that waits for the bucket is deleted before it. Its settings, resources of
    their own, are retained on delete: a destroy that stops at a bucket holding backups leaves
    it encrypted, versioned, expiring old versions, private and TLS-only, as it was."""
    bucket = f"{S3_BUCKET}::{single(eks, S3_BUCKET).name}"
    waiting = [r for r in eks.resources if bucket in r.waits_for]
    settings = {r.type.rpartition(":")[2] for r in waiting if r.type.startswith("aws:s3/")}
    assert settings == {
        "BucketServerSideEncryptionConfiguration",
        "BucketPublicAccessBlock",
        "BucketOwnershipControls",
        "BucketVersioning",
        "BucketLifecycleConfiguration",
        "BucketPolicy",
    }
    assert all(r.retain_on_delete for r in waiting if r.type.startswith("aws:s3/"))
    # What grants the database its access goes with the stack.
    assert not any(r.retain_on_delete for r in waiting if r.type.startswith("aws:iam/"))


def test_eks_bucket_is_never_public_and_owns_its_objects(eks: ProgramRun) -> None:
    assert bucket_part(eks, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock") == {
        "bucket": bucket_name(eks),
        "blockPublicAcls": True,
        "blockPublicPolicy": True,
        "ignorePublicAcls": True,
        "restrictPublicBuckets": True,
    }
    assert bucket_part(eks, "aws:s3/bucketOwnershipControls:BucketOwnershipControls") == {
        "bucket": bucket_name(eks),
        "rule": {"objectOwnership": "BucketOwnerEnforced"},
    }


def test_eks_bucket_refuses_plain_http(eks: ProgramRun) -> None:
    policy = bucket_part(eks, "aws:s3/bucketPolicy:BucketPolicy")
    assert policy["bucket"] == bucket_name(eks)
    arn = f"arn:aws:s3:::{bucket_name(eks)}"
    assert json.loads(policy["policy"])["Statement"] == [
        {
            "Sid": "TlsOnly",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [arn, f"{arn}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }
    ]


def test_eks_bucket_keeps_old_versions_for_a_while(eks: ProgramRun) -> None:
    versioning = bucket_part(eks, "aws:s3/bucketVersioning:BucketVersioning")
    assert versioning["versioningConfiguration"] == {"status": "Enabled"}
    lifecycle = bucket_part(eks, "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    (rule,) = lifecycle["rules"]
    assert rule["status"] == "Enabled"
    assert rule["filter"] == {"prefix": ""}
    assert rule["noncurrentVersionExpiration"] == {"noncurrentDays": RECOVERY_DAYS}


def test_eks_only_the_database_s_service_account_assumes_the_role(eks: ProgramRun) -> None:
    cluster = single(eks, "eks:index:Cluster")
    assert cluster.inputs["createOidcProvider"] is True
    role = backup_role(eks)
    (statement,) = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
    assert statement == {
        "Effect": "Allow",
        "Principal": {"Federated": f"arn:aws:iam::{AWS_ACCOUNT}:oidc-provider/{OIDC_ISSUER}"},
        "Action": "sts:AssumeRoleWithWebIdentity",
        "Condition": {
            "StringEquals": {
                f"{OIDC_ISSUER}:sub": f"system:serviceaccount:mlstack-{eks.stack}:database",
                f"{OIDC_ISSUER}:aud": "sts.amazonaws.com",
            }
        },
    }
    arn = f"arn:aws:iam::{AWS_ACCOUNT}:role/mlstack-{eks.stack}-backups-"
    assert account_annotations(eks)["eks.amazonaws.com/role-arn"].startswith(arn)
    assert set(account_annotations(eks)) == {"eks.amazonaws.com/role-arn"}


def test_eks_role_may_use_the_bucket_and_its_key_alone(eks: ProgramRun) -> None:
    policy = bucket_part(eks, "aws:iam/rolePolicy:RolePolicy")
    assert policy["role"] == f"{backup_role(eks).name}-id"
    bucket = f"arn:aws:s3:::{bucket_name(eks)}"
    key = f"arn:aws:kms:eu-west-1:{AWS_ACCOUNT}:key/{backup_key(eks).name}"
    assert json.loads(policy["policy"])["Statement"] == [
        {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": bucket},
        {
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
            "Resource": f"{bucket}/*",
        },
        {"Effect": "Allow", "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": key},
    ]
    # No managed policy is attached to it (the nodes' attachments are the only ones).
    for attachment in eks.by_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment"):
        assert "backups" not in attachment.name


def test_eks_backup_resources_are_in_the_cluster_s_region(eks: ProgramRun) -> None:
    parts = [
        r
        for r in eks.resources
        if r.type.startswith("aws:") and r.name == f"mlstack-{eks.stack}-backups"
    ]
    assert len(parts) == 10
    for part in parts:
        assert part.provider is not None, part.type
        assert f"::mlstack-{eks.stack}-aws::" in part.provider, part.type


def test_eks_pgbackrest_trades_the_pods_token_for_the_role(eks: ProgramRun) -> None:
    region = stack_config(eks.stack)["mlstack:cluster"]["region"]
    found = options(eks)
    assert {k: v for k, v in found.items() if k.startswith("PGBACKREST_REPO1_")} == {
        "PGBACKREST_REPO1_TYPE": "s3",
        "PGBACKREST_REPO1_PATH": f"/mlstack/{eks.stack}",
        "PGBACKREST_REPO1_S3_BUCKET": bucket_name(eks),
        "PGBACKREST_REPO1_S3_ENDPOINT": f"s3.{region}.amazonaws.com",
        "PGBACKREST_REPO1_S3_REGION": region,
        "PGBACKREST_REPO1_S3_URI_STYLE": "host",
        "PGBACKREST_REPO1_S3_KEY_TYPE": "web-id",
        "PGBACKREST_REPO1_CIPHER_TYPE": "aes-256-cbc",
        "PGBACKREST_REPO1_RETENTION_FULL": retention(eks),
    }
    assert bucket_name(eks).startswith(f"mlstack-{eks.stack}-backups-")


def test_eks_database_pods_reach_s3_and_sts_on_https_alone(eks: ProgramRun) -> None:
    assert backup_routes(eks) == {
        ROUTE_NAME: {
            "podSelector": {"matchLabels": match(eks)},
            "policyTypes": ["Egress"],
            "egress": [{"to": ANYWHERE, "ports": [{"port": 443, "protocol": "TCP"}]}],
        }
    }


# --- local and existing: a volume ---------------------------------------------------------------


@pytest.fixture(scope="module")
def dev() -> ProgramRun:
    return run_program("dev", backed_up("dev"))


def test_local_backups_are_on_a_volume_mounted_in_every_database_pod(dev: ProgramRun) -> None:
    assert kind(dev) == "local"
    claim = dev.one("PersistentVolumeClaim", database.BACKUP_CLAIM)
    assert claim.metadata["namespace"] == "mlstack-dev"
    assert claim.inputs["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        # Twice the database's 1Gi by default.
        "resources": {"requests": {"storage": "2Gi"}},
    }
    assert claim.metadata["annotations"] == {"pulumi.com/skipAwait": "true"}
    assert database_volumes(dev)["backups"] == {
        "name": "backups",
        "persistentVolumeClaim": {"claimName": database.BACKUP_CLAIM},
    }
    for name, container in database_containers(dev).items():
        assert mounts(container)[database.BACKUP_VOLUME_DIR] == "backups", name
    assert {k: v for k, v in options(dev).items() if k.startswith("PGBACKREST_REPO1_")} == {
        "PGBACKREST_REPO1_TYPE": "posix",
        "PGBACKREST_REPO1_PATH": database.BACKUP_VOLUME_DIR,
        "PGBACKREST_REPO1_CIPHER_TYPE": "aes-256-cbc",
        "PGBACKREST_REPO1_RETENTION_FULL": "2",
    }
    # Nothing leaves the node, and the pods have no cloud identity.
    assert backup_routes(dev) == {}
    assert account_annotations(dev) == {}


def test_the_volume_is_protected_as_the_data_is() -> None:
    run = run_program("dev", {**backed_up("dev"), "mlstack:protect": True})
    assert run.one("PersistentVolumeClaim", database.BACKUP_CLAIM).protect is True
    assert run.one("PersistentVolumeClaim", database.claim_name(0)).protect is True


def with_volume(cluster: dict[str, Any], backup: Any, **database_keys: Any) -> dict[str, Any]:
    config = dev_with(cluster=cluster, images=PREBUILT)
    return with_fields(config, "database", **database_keys, backup=backup)


@pytest.mark.parametrize("cluster", [{"provider": "local"}, EXISTING], ids=["local", "existing"])
def test_the_volume_s_size_and_class_follow_the_config(cluster: dict[str, Any]) -> None:
    backup = {"volume": {"size": "15Gi", "storageClass": "fast-ssd"}, "retentionFull": 4}
    run = run_program("dev", with_volume(cluster, backup, storageSize="5Gi"))
    spec = run.one("PersistentVolumeClaim", database.BACKUP_CLAIM).inputs["spec"]
    assert spec["resources"] == {"requests": {"storage": "15Gi"}}
    assert spec["storageClassName"] == "fast-ssd"
    assert options(run)["PGBACKREST_REPO1_RETENTION_FULL"] == "4"


@pytest.mark.parametrize(
    ("database_keys", "size", "storage_class"),
    [
        ({"storageSize": "1.5Gi"}, "3Gi", None),
        ({"storageSize": "1500Mi", "storageClass": "standard"}, "3000Mi", "standard"),
        ({"storageSize": "10G"}, "20G", None),
    ],
)
def test_by_default_the_volume_is_twice_the_database_s_of_its_class(
    database_keys: dict[str, Any], size: str, storage_class: str | None
) -> None:
    run = run_program("dev", with_volume(EXISTING, {}, **database_keys))
    spec = run.one("PersistentVolumeClaim", database.BACKUP_CLAIM).inputs["spec"]
    assert spec["resources"] == {"requests": {"storage": size}}
    assert spec.get("storageClassName") == storage_class


def test_existing_may_back_up_to_an_endpoint_instead() -> None:
    config = {**with_volume(EXISTING, {"s3": S3}), **BACKUP_TEST_SECRETS}
    run = run_program("dev", config)
    assert options(run)["PGBACKREST_REPO1_TYPE"] == "s3"
    assert database.BACKUP_CLAIM not in {
        c.metadata["name"] for c in run.of_kind("PersistentVolumeClaim")
    }
    assert set(backup_routes(run)) == {ROUTE_NAME}


# --- mistakes ------------------------------------------------------------------------------------


def on_cluster_error(cluster: dict[str, Any], backup: Any, **secrets: Any) -> str:
    """The one line dev's config on `cluster` with `database.backup: backup` logs."""
    config = {
        **TEST_SECRETS,
        **dev_with(cluster=cluster, database={"backup": backup}, images=PREBUILT),
        **{f"mlstack:{k}": v for k, v in secrets.items()},
    }
    return config_error({k: v for k, v in config.items() if v is not None}, with_secrets=False)


@pytest.mark.parametrize("cluster_kind", ["gke", "eks"])
@pytest.mark.parametrize("key", ["s3", "volume"])
def test_a_cloud_cluster_s_bucket_is_the_program_s_own(cluster_kind: str, key: str) -> None:
    backup = {key: S3 if key == "s3" else {"size": "5Gi"}}
    message = on_cluster_error(CLUSTERS[cluster_kind], backup)
    bucket = "GCS" if cluster_kind == "gke" else "S3"
    assert message.startswith(
        f"mlstack:database.backup.{key} is not allowed on a {cluster_kind} cluster: the program "
        f"creates the stack's backup bucket there ({bucket}, reached with the database pods' own "
        "cloud identity, no keys); remove it"
    )


@pytest.mark.parametrize("cluster_kind", ["local", "existing"])
def test_one_repository_at_a_time(cluster_kind: str) -> None:
    message = on_cluster_error(CLUSTERS[cluster_kind], {"s3": S3, "volume": {}})
    assert message == (
        "mlstack:database.backup.s3 and mlstack:database.backup.volume are both set: the backups "
        "go to one repository; keep one"
    )


VOLUME_MISTAKES: Final[list[tuple[Any, str]]] = [
    ({"volume": {"size": "0Gi"}},
     'mlstack:database.backup.volume.size: "0Gi" is not allowed: expected a positive '
     "Kubernetes quantity"),
    ({"volume": {"size": "lots"}}, 'mlstack:database.backup.volume.size: "lots" is not allowed'),
    ({"volume": {"size": 5}}, "mlstack:database.backup.volume.size: 5 is not allowed"),
    ({"volume": {"storageClass": "Fast SSD"}},
     'mlstack:database.backup.volume.storageClass: "Fast SSD" is not allowed: expected a '
     "StorageClass name"),
    ({"volume": {"sizes": "5Gi"}},
     'mlstack:database.backup.volume: unknown key "sizes" (did you mean "size"?)'),
    ({"volume": "5Gi"},
     'mlstack:database.backup.volume: "5Gi" is not allowed: expected an object with the keys '
     "size, storageClass"),
    ({"bucket": "mine"}, 'mlstack:database.backup: unknown key "bucket"'),
]  # fmt: skip


@pytest.mark.parametrize(("backup", "expected"), VOLUME_MISTAKES)
def test_volume_mistakes_are_one_line_naming_the_key(backup: Any, expected: str) -> None:
    assert on_cluster_error(EXISTING, backup).startswith(expected)


@pytest.mark.parametrize("cluster_kind", list(CLUSTERS))
def test_every_repository_needs_the_encryption_key(cluster_kind: str) -> None:
    message = on_cluster_error(CLUSTERS[cluster_kind], {}, databaseBackupCipherPassword=None)
    assert message.startswith("mlstack:databaseBackupCipherPassword is missing: ")
    assert "`make stack STACK=dev` generates one" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("databaseBackupCipherPassword", "first line of a long password\nand its second"),
        ("databaseBackupCipherPassword", "a password long enough\r\nover two lines"),
        ("databaseBackupS3AccessKey", "\nAKIAEXAMPLE"),
        ("databaseBackupS3SecretKey", "secret\rkey"),
    ],
)
def test_a_backup_secret_with_a_line_break_inside_is_refused(key: str, value: str) -> None:
    """pgBackRest reads these from a file of one option a line, which the database's containers
    write at start and refuse to write with a line break inside (`openssl rand -base64 64`
    prints two lines): refused here, before the database's pods would stop at every start."""
    keys = {k.removeprefix("mlstack:"): v for k, v in BACKUP_TEST_SECRETS.items()}
    message = on_cluster_error(EXISTING, {"s3": S3}, **{**keys, key: value})
    assert message == (
        f"mlstack:{key} holds a line break: pgBackRest reads it from a file of one option a "
        f"line; set it to one line with `pulumi config set --secret mlstack:{key} <value>`"
    )


@pytest.mark.parametrize(
    "key",
    ["databaseBackupCipherPassword", "databaseBackupS3AccessKey", "databaseBackupS3SecretKey"],
)
def test_a_backup_secret_holding_a_nul_character_is_refused(key: str) -> None:
    """pgBackRest's options are C strings: it would take what comes before the NUL character
    for the whole secret (an encryption key other than the stack's, a bucket key refused)."""
    keys = {k.removeprefix("mlstack:"): v for k, v in BACKUP_TEST_SECRETS.items()}
    message = on_cluster_error(EXISTING, {"s3": S3}, **{**keys, key: "a secret\0and the rest"})
    assert message == (
        f"mlstack:{key} holds a NUL character (U+0000), where pgBackRest would cut it short; "
        f"set it without one with `pulumi config set --secret mlstack:{key} <value>`"
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("databaseBackupCipherPassword", " a password beginning with a space"),
        ("databaseBackupCipherPassword", "a password ending with a space \n"),
        ("databaseBackupCipherPassword", "a password ending with a tab\t"),
        ("databaseBackupS3AccessKey", "AKIAEXAMPLE "),
        ("databaseBackupS3SecretKey", "\tsecret-key"),
    ],
)
def test_a_backup_secret_with_a_space_at_an_end_is_refused(key: str, value: str) -> None:
    """pgBackRest trims each option it reads from its file: tried with pgBackRest and a real
    PostgreSQL, a repository made with " pw" in the file is read with "pw" and not with " pw",
    the stack's value (the copy kept outside the stack to read the backups with)."""
    keys = {k.removeprefix("mlstack:"): v for k, v in BACKUP_TEST_SECRETS.items()}
    message = on_cluster_error(EXISTING, {"s3": S3}, **{**keys, key: value})
    assert message == (
        f"mlstack:{key} begins or ends with a space or tab, which pgBackRest drops from the "
        "options it reads from a file: it uses the value without them, not the stack's; set it "
        "to that value, without them (the one pgBackRest has used) with "
        f"`pulumi config set --secret mlstack:{key} <value>`"
    )


def test_a_backup_secret_s_final_line_breaks_are_no_line_break_inside() -> None:
    """The database's containers drop a final line break, as the file's text: not refused."""
    config = {
        **TEST_SECRETS,
        **BACKUP_TEST_SECRETS,
        **dev_with(cluster=EXISTING, database={"backup": {"s3": S3}}, images=PREBUILT),
        "mlstack:databaseBackupCipherPassword": "a password long enough\n",
        "mlstack:databaseBackupS3SecretKey": "secret-key\r\n",
    }
    run_program("dev", config, with_secrets=False)


@pytest.mark.parametrize(
    ("cluster_kind", "backup"),
    [("gke", {}), ("eks", {}), ("local", {}), ("existing", {"volume": {}}), ("existing", None)],
)
@pytest.mark.parametrize("key", ["databaseBackupS3AccessKey", "databaseBackupS3SecretKey"])
def test_bucket_keys_are_for_an_endpoint_alone(cluster_kind: str, backup: Any, key: str) -> None:
    """A key left over from an endpoint, or meant for the program's own bucket, is named: the
    program's buckets are reached without one."""
    message = on_cluster_error(CLUSTERS[cluster_kind], backup, **{key: "AKIAEXAMPLE"})
    assert message.startswith(
        f"mlstack:{key} is set but mlstack:database.backup.s3 is not: only an S3-compatible "
        "endpoint the stack names takes keys"
    )
    assert message.endswith(f"remove it (`pulumi config rm mlstack:{key}`)")


@pytest.mark.parametrize("cluster_kind", ["gke", "eks", "local", "existing"])
def test_no_repository_but_an_endpoint_asks_for_bucket_keys(cluster_kind: str) -> None:
    run = run_program(
        "dev",
        {
            **TEST_SECRETS,
            **dev_with(cluster=CLUSTERS[cluster_kind], database={"backup": {}}, images=PREBUILT),
        },
        with_secrets=False,
    )
    assert set(secret_options(run)) == {"repo1-cipher-pass"}
