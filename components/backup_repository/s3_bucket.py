"""eks: an S3 bucket the program creates for the stack's backups, in the cluster's region,
encrypted with a KMS key of its own, and the identity the database pods reach it with: an IAM
role that only the Kubernetes ServiceAccount `database` of the stack's namespace may assume,
through the cluster's IAM OIDC provider (IAM roles for service accounts), allowed the bucket's
objects and the key's use and nothing else. No key of an IAM user exists anywhere.

EKS's pod identity webhook gives the pods of an annotated ServiceAccount a projected token and
AWS_ROLE_ARN / AWS_WEB_IDENTITY_TOKEN_FILE; pgBackRest's `repo1-s3-key-type=web-id` trades them
at STS for the role's temporary credentials.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

import pulumi
import pulumi_aws as aws

from components import database
from components.backup_repository.common import (
    RECOVERY_DAYS,
    BucketArgs,
    Repository,
    bucket_name,
    cloud_bucket_repository,
)
from components.cluster.eks import EksManagedCluster, trust_policy
from components.config import BackupConfig, EksCluster, StackConfig

# The annotation EKS's pod identity webhook reads to know which role a pod acts as.
ROLE_ANNOTATION: Final = "eks.amazonaws.com/role-arn"
# What pgBackRest does in its repository: list it, read, write and delete objects.
BUCKET_ACTIONS: Final = ("s3:ListBucket",)
OBJECT_ACTIONS: Final = ("s3:GetObject", "s3:PutObject", "s3:DeleteObject")
# SSE-KMS: writing asks KMS for a data key, reading (and completing a multipart upload) for
# its decryption.
KEY_ACTIONS: Final = ("kms:Decrypt", "kms:GenerateDataKey")


def s3_endpoint(region: str) -> str:
    return f"s3.{region}.amazonaws.com"


def access_policy(bucket_arn: str, key_arn: str) -> str:
    """The bucket, its objects and the key: nothing else."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": list(BUCKET_ACTIONS), "Resource": bucket_arn},
                {"Effect": "Allow", "Action": list(OBJECT_ACTIONS), "Resource": f"{bucket_arn}/*"},
                {"Effect": "Allow", "Action": list(KEY_ACTIONS), "Resource": key_arn},
            ],
        }
    )


def tls_only_policy(bucket_arn: str) -> str:
    """Every request without TLS is refused, whoever makes it."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "TlsOnly",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": [bucket_arn, f"{bucket_arn}/*"],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                }
            ],
        }
    )


@dataclass(frozen=True)
class S3BucketArgs(BucketArgs):
    """The ServiceAccount (BucketArgs) may assume the bucket's role."""

    # The cluster's IAM OIDC provider and issuer (EksManagedCluster).
    oidc_provider_arn: pulumi.Input[str]
    oidc_issuer: pulumi.Input[str]


class S3BackupBucket(pulumi.ComponentResource):
    """Created with the AWS provider of the cluster's region (the component's `providers`)."""

    bucket: aws.s3.Bucket
    key: aws.kms.Key
    role: aws.iam.Role

    def __init__(
        self, name: str, args: S3BucketArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlstack:backup:S3Bucket", name, None, opts)

        child = pulumi.ResourceOptions(parent=self)
        protected = pulumi.ResourceOptions(parent=self, protect=args.protect)

        # The backups' own key, not the cluster's: the backups outlive the cluster, and whoever
        # may use the cluster's Secrets key need not read them. Protected as the bucket is.
        self.key = aws.kms.Key(
            name,
            description=f"Server-side encryption of the database backups in {name}",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            opts=protected,
        )
        # After the key, so deleted before it: a destroy that stops at a bucket holding backups
        # has not scheduled the deletion of the key they are encrypted with.
        self.bucket = aws.s3.Bucket(
            name,
            force_destroy=False,
            opts=pulumi.ResourceOptions(parent=self, protect=args.protect, depends_on=[self.key]),
        )
        bucket_name = self.bucket.bucket
        # The bucket's settings are resources of their own, deleted before the bucket: a destroy
        # that stops at a bucket holding backups would have suspended its versioning, dropped its
        # lifecycle, public access block and policy, and turned ACLs back on. They are taken out
        # of the state instead, and go only with the bucket.
        setting = pulumi.ResourceOptions(parent=self, retain_on_delete=True)
        encryption = aws.s3.BucketServerSideEncryptionConfiguration(
            name,
            bucket=bucket_name,
            rules=[
                {
                    "apply_server_side_encryption_by_default": {
                        "sse_algorithm": "aws:kms",
                        "kms_master_key_id": self.key.arn,
                    },
                    # One data key per bucket for a while, not one KMS call per object.
                    "bucket_key_enabled": True,
                }
            ],
            opts=setting,
        )
        public_access = aws.s3.BucketPublicAccessBlock(
            name,
            bucket=bucket_name,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=setting,
        )
        # No ACLs: the bucket's owner owns every object, and only policies grant access.
        ownership = aws.s3.BucketOwnershipControls(
            name,
            bucket=bucket_name,
            rule={"object_ownership": "BucketOwnerEnforced"},
            opts=setting,
        )
        versioning = aws.s3.BucketVersioning(
            name,
            bucket=bucket_name,
            versioning_configuration={"status": "Enabled"},
            opts=setting,
        )
        # A deleted or overwritten object can be brought back for RECOVERY_DAYS, then its old
        # versions go (pgBackRest rewrites its info files and expires whole backup sets, which
        # would otherwise pile up as old versions forever).
        lifecycle = aws.s3.BucketLifecycleConfiguration(
            name,
            bucket=bucket_name,
            rules=[
                {
                    "id": "old-versions",
                    "status": "Enabled",
                    "filter": {"prefix": ""},
                    "noncurrent_version_expiration": {"noncurrent_days": RECOVERY_DAYS},
                    "expiration": {"expired_object_delete_marker": True},
                    "abort_incomplete_multipart_upload": {"days_after_initiation": 7},
                }
            ],
            opts=pulumi.ResourceOptions.merge(
                setting, pulumi.ResourceOptions(depends_on=[versioning])
            ),
        )
        # S3 refuses concurrent changes of one bucket's settings: the policy comes last.
        aws.s3.BucketPolicy(
            name,
            bucket=bucket_name,
            policy=self.bucket.arn.apply(tls_only_policy),
            opts=pulumi.ResourceOptions.merge(
                setting,
                pulumi.ResourceOptions(
                    depends_on=[public_access, ownership, encryption, lifecycle]
                ),
            ),
        )
        self.role = aws.iam.Role(
            name,
            description=f"The database backups of {args.namespace}: the bucket {name}",
            assume_role_policy=pulumi.Output.all(args.oidc_provider_arn, args.oidc_issuer).apply(
                lambda found: trust_policy(found[0], found[1], args.namespace, args.service_account)
            ),
            opts=child,
        )
        aws.iam.RolePolicy(
            name,
            role=self.role.id,
            policy=pulumi.Output.all(self.bucket.arn, self.key.arn).apply(
                lambda found: access_policy(found[0], found[1])
            ),
            opts=child,
        )
        self.register_outputs({"bucket": self.bucket.bucket, "role": self.role.arn})


def s3_bucket_repository(
    config: StackConfig, backup: BackupConfig, cluster: EksManagedCluster, parent: pulumi.Resource
) -> Repository:
    assert isinstance(config.cluster, EksCluster), config.cluster
    region = config.cluster.region
    bucket = S3BackupBucket(
        bucket_name(config),
        S3BucketArgs(
            oidc_provider_arn=cluster.oidc_provider_arn,
            oidc_issuer=cluster.oidc_issuer,
            namespace=config.namespace,
            service_account=database.NAME,
            protect=config.protect,
        ),
        pulumi.ResourceOptions(parent=parent, providers={"aws": cluster.aws_provider}),
    )
    # The way out to S3 (<bucket>.s3.<region>.amazonaws.com) also reaches STS
    # (sts.amazonaws.com), where the pod's token is traded for the role's credentials.
    return cloud_bucket_repository(
        config,
        backup,
        "s3",
        {
            "repo1-s3-endpoint": s3_endpoint(region),
            "repo1-s3-bucket": bucket.bucket.bucket,
            "repo1-s3-region": region,
            "repo1-s3-uri-style": "host",
            "repo1-s3-key-type": "web-id",
        },
        bucket=bucket,
        service_account_annotations={ROLE_ANNOTATION: bucket.role.arn},
    )
