"""`Database`: PostgreSQL as one primary and `replicas - 1` hot standbys that follow it by
streaming replication, each instance a StatefulSet of one pod on a claim of its own.

Each instance is its own StatefulSet so that its pod carries its role as a label: the Service
`database` selects the primary, `database-read` the standbys (the primary when it is alone). Which
instance is the primary is the stack's `database.primary`; `make failover` promotes a standby and
then changes it (components/postgres/start.sh prepares each instance for its role).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, TypeAlias

import pulumi
import pulumi_kubernetes as k8s

from components import pod, rollout
from components.labels import labels, selector

NAME: Final = "database"
READ_NAME: Final = f"{NAME}-read"
PORT: Final = 5432
USER: Final = "mlstack"
DB_NAME: Final = "mlstack"
# The role standbys replicate as (components/postgres/pg_hba.conf admits it to replication only).
REPLICATION_USER: Final = "replicator"
MAX_REPLICAS: Final = 5
# Pinned; bump deliberately (a major version needs a dump and restore). `images.database`
# replaces it (a mirror, or the same release by digest). The Docker official image is pinned to
# an exact release tag, not a digest: its digest is not verifiable from where mlstack is built,
# and imagePullPolicy Always (pod.pull_policy) makes every node resolve that tag at the registry.
# It is the policy pack's one declared exception to image-by-digest (its allowedImages); an image
# given by digest needs none, and its pull policy turns to IfNotPresent.
DEFAULT_IMAGE: Final = "postgres:17.6-bookworm"
# The StatefulSets' governing Service: headless, it gives each pod a stable DNS name
# (database-0.database-headless...), published before the pod is ready so that peers can find it.
HEADLESS_NAME: Final = f"{NAME}-headless"
# How long the startup probe lets an instance come up (a standby's copy of the primary, or WAL
# replayed after a crash) before the kubelet restarts it; liveness and readiness start after it.
RECOVERY_SECONDS: Final = 900
CLAIM_TEMPLATE: Final = "data"
MOUNT_PATH: Final = "/var/lib/postgresql/data"
PGDATA: Final = f"{MOUNT_PATH}/pgdata"
# The keys of the stack's `database` Secret, mounted as files.
PASSWORD_KEY: Final = "database-password"
REPLICATION_PASSWORD_KEY: Final = "replication-password"
RESOURCES: Final = pod.Resources("100m", "256Mi", "1", "1Gi")
# The pod labels that say which instance a pod is and the role the stack gives it.
ROLE_LABEL: Final = "mlstack/database-role"
INSTANCE_LABEL: Final = "mlstack/database-instance"
# The start script and the server's hba_file, from a ConfigMap.
SCRIPTS: Final = "database-scripts"
SCRIPTS_DIR: Final = "/etc/mlstack/database"
SCRIPT_FILES: Final = ("start.sh", "pg_hba.conf")
# The share of a volume the primary keeps as recent WAL for a standby that reconnects.
WAL_KEEP_SHARE: Final = 4

# What a commit waits for before the gateway acknowledges a prediction (README, "Replication").
SynchronousCommit: TypeAlias = Literal["local", "remote_write", "on", "remote_apply"]
SYNCHRONOUS_COMMIT: Final[tuple[SynchronousCommit, ...]] = (
    "local",
    "remote_write",
    "on",
    "remote_apply",
)


def connection_url(
    host: str, password: str, *, port: int = PORT, user: str = USER, dbname: str = DB_NAME
) -> str:
    """The postgresql:// URL the gateway connects with. Every part is percent-encoded (libpq
    and asyncpg decode each one): pasted in as it is, a password's '/', '?' or '#' would end
    the host part early and an '@' would move it, so any character may be in the secret."""

    def part(text: str) -> str:
        return urllib.parse.quote(text, safe="")

    return f"postgresql://{part(user)}:{part(password)}@{part(host)}:{port}/{part(dbname)}"


def instance_name(index: int) -> str:
    """The StatefulSet of instance `index`: `database` for the first (the name a one-instance
    stack has always had, so its pod and claim keep theirs), `database-<index>` for the others."""
    return NAME if index == 0 else f"{NAME}-{index}"


def pod_name(index: int) -> str:
    return f"{instance_name(index)}-0"


def claim_name(index: int) -> str:
    """The claim a StatefulSet gives its pod: <template>-<set>-<ordinal>."""
    return f"{CLAIM_TEMPLATE}-{pod_name(index)}"


def server_settings(
    replicas: int, synchronous_commit: SynchronousCommit, storage_bytes: int
) -> dict[str, str]:
    """The PostgreSQL settings every instance starts with (the same on each: a standby promoted
    later must behave as the primary did)."""
    standbys = "ANY 1 (*)" if replicas > 1 and synchronous_commit != "local" else ""
    return {
        "hba_file": f"{SCRIPTS_DIR}/pg_hba.conf",
        # PostgreSQL's `on` without synchronous standbys is a local flush: what `local` means.
        "synchronous_commit": "on" if synchronous_commit == "local" else synchronous_commit,
        "synchronous_standby_names": standbys,
        "wal_keep_size": f"{max(64, storage_bytes // WAL_KEEP_SHARE // 2**20)}MB",
    }


def _script_files() -> dict[str, str]:
    folder = Path(__file__).with_name("postgres")
    return {name: (folder / name).read_text() for name in SCRIPT_FILES}


@dataclass(frozen=True)
class DatabaseArgs:
    stack: str
    namespace: pulumi.Input[str]
    storage_size: str
    storage_bytes: int
    storage_class: str | None
    # The Secret mounted as files, by name (components/app.py says why), the Secret itself to
    # be created first, and a digest of its values that rolls the pods when one changes.
    secret_name: str
    secrets_checksum: pulumi.Input[str] | None = None
    after: tuple[pulumi.Resource, ...] = ()
    image: str = DEFAULT_IMAGE
    replicas: int = 1
    # The index of the instance that is the primary.
    primary: int = 0
    synchronous_commit: SynchronousCommit = "local"
    # `protect` on the volumes: a stray destroy stops before it deletes the data.
    protect: bool = False


@dataclass(frozen=True)
class DatabaseInstance:
    index: int
    role: Literal["primary", "standby"]
    stateful_set: k8s.apps.v1.StatefulSet
    volume_claim: k8s.core.v1.PersistentVolumeClaim


class Database(pulumi.ComponentResource):
    """The volumes are resources of their own (each StatefulSet adopts its claim by name) so that
    they can be protected, and so that deleting a StatefulSet never deletes its data."""

    service: k8s.core.v1.Service
    read_service: k8s.core.v1.Service
    headless_service: k8s.core.v1.Service
    instances: list[DatabaseInstance]
    host: pulumi.Output[str]
    read_host: pulumi.Output[str]

    def __init__(
        self, name: str, args: DatabaseArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlstack:app:Database", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        meta_labels = labels(NAME, args.stack)
        match = selector(NAME, args.stack)

        def service(
            resource: str, service_name: str, role: str | None, headless: bool = False
        ) -> k8s.core.v1.Service:
            ports: list[k8s.core.v1.ServicePortArgsDict] = [
                {"name": "postgres", "port": PORT, "target_port": "postgres", "protocol": "TCP"}
            ]
            pods = {**match, ROLE_LABEL: role} if role else match
            spec: k8s.core.v1.ServiceSpecArgsDict = (
                {
                    "cluster_ip": "None",
                    "publish_not_ready_addresses": True,
                    "selector": pods,
                    "ports": ports,
                }
                if headless
                else {"type": "ClusterIP", "selector": pods, "ports": ports}
            )
            return k8s.core.v1.Service(
                resource,
                metadata={"name": service_name, "namespace": args.namespace, "labels": meta_labels},
                spec=spec,
                opts=child,
            )

        self.service = service(name, NAME, "primary")
        self.read_service = service(
            f"{name}-read", READ_NAME, "standby" if args.replicas > 1 else "primary"
        )
        self.headless_service = service(f"{name}-headless", HEADLESS_NAME, None, headless=True)
        account = k8s.core.v1.ServiceAccount(
            f"{name}-account",
            metadata={"name": NAME, "namespace": args.namespace, "labels": meta_labels},
            automount_service_account_token=False,
            opts=child,
        )
        files = _script_files()
        scripts = k8s.core.v1.ConfigMap(
            f"{name}-scripts",
            metadata={"name": SCRIPTS, "namespace": args.namespace, "labels": meta_labels},
            data=files,
            opts=child,
        )
        settings = server_settings(args.replicas, args.synchronous_commit, args.storage_bytes)
        claim_spec: k8s.core.v1.PersistentVolumeClaimSpecArgsDict = {
            "access_modes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": args.storage_size}},
            # None: the cluster's default StorageClass.
            "storage_class_name": args.storage_class,
        }
        self.instances = []
        for index in range(args.replicas):
            role: Literal["primary", "standby"] = "primary" if index == args.primary else "standby"
            # The first instance's Pulumi names are those a one-instance stack has always had.
            resource = name if index == 0 else f"{name}-{index}"
            claim = k8s.core.v1.PersistentVolumeClaim(
                f"{resource}-data",
                metadata={
                    "name": claim_name(index),
                    "namespace": args.namespace,
                    "labels": meta_labels,
                    # Binding may wait for the first consumer; the StatefulSet's readiness
                    # covers it.
                    "annotations": {"pulumi.com/skipAwait": "true"},
                },
                spec=claim_spec,
                opts=pulumi.ResourceOptions(parent=self, protect=args.protect),
            )
            # The first instance keeps the selector it was created with (a selector cannot
            # change); it selects no other instance's pods, which other StatefulSets own.
            instance_match = match if index == 0 else {**match, INSTANCE_LABEL: str(index)}
            template_labels = {**meta_labels, INSTANCE_LABEL: str(index), ROLE_LABEL: role}
            spec: k8s.apps.v1.StatefulSetSpecArgsDict = {
                "replicas": 1,
                "service_name": HEADLESS_NAME,
                "selector": {"match_labels": instance_match},
                "persistent_volume_claim_retention_policy": {
                    "when_deleted": "Retain",
                    "when_scaled": "Retain",
                },
                "template": {
                    "metadata": {
                        "labels": template_labels,
                        # A new script, hba_file or secret restarts the instances with it.
                        "annotations": {
                            "mlstack/scripts-sha256": pod.checksum(files),
                            **(
                                {pod.SECRETS_CHECKSUM: args.secrets_checksum}
                                if args.secrets_checksum is not None
                                else {}
                            ),
                        },
                    },
                    "spec": _pod_spec(args, role, settings, NAME, SCRIPTS),
                },
                "volume_claim_templates": [
                    {
                        "metadata": {"name": CLAIM_TEMPLATE, "labels": meta_labels},
                        "spec": claim_spec,
                    }
                ],
            }
            stateful_set = k8s.apps.v1.StatefulSet(
                resource,
                metadata={
                    "name": instance_name(index),
                    "namespace": args.namespace,
                    "labels": meta_labels,
                    "annotations": {
                        # `make failover` scales the old primary to zero out of band; the next
                        # `pulumi up` takes the field back.
                        "pulumi.com/patchForce": "true",
                        **rollout.await_stateful_set(),
                    },
                },
                spec=spec,
                # The objects it names are created first; it takes none of their outputs, so that
                # replacing one of them (a ConfigMap with a new script) never replaces it.
                opts=pulumi.ResourceOptions(
                    parent=self,
                    depends_on=[claim, account, scripts, self.headless_service, *args.after],
                    delete_before_replace=True,
                ),
            )
            self.instances.append(DatabaseInstance(index, role, stateful_set, claim))
        # Known from the names alone: whoever connects need not wait for the Service's await.
        self.host = pulumi.Output.concat(NAME, ".", args.namespace, ".svc")
        self.read_host = pulumi.Output.concat(READ_NAME, ".", args.namespace, ".svc")
        self.register_outputs({"host": self.host, "read_host": self.read_host})


def _pod_spec(
    args: DatabaseArgs,
    role: Literal["primary", "standby"],
    settings: dict[str, str],
    account: str,
    scripts: str,
) -> k8s.core.v1.PodSpecArgsDict:
    is_ready = f"pg_isready --host=127.0.0.1 --username={USER} --dbname={DB_NAME} --timeout=3"
    # Ready: accepting connections (exit 0; a standby once it can serve reads). Alive: the server
    # answers at all, even to refuse while it recovers or shuts down (exit 1); only no answer (2)
    # or no attempt (3) is dead.
    ready = ["sh", "-c", f"exec {is_ready} --quiet"]
    alive = ["sh", "-c", f"{is_ready} --quiet; test $? -le 1"]
    env: list[k8s.core.v1.EnvVarArgsDict] = [
        {"name": "POSTGRES_USER", "value": USER},
        {"name": "POSTGRES_DB", "value": DB_NAME},
        {"name": "POSTGRES_PASSWORD_FILE", "value": pod.secret_file(PASSWORD_KEY)},
        {"name": "PGDATA", "value": PGDATA},
        {"name": "DATABASE_ROLE", "value": role},
        # The read-write Service: whichever instance is the primary now.
        {"name": "DATABASE_PRIMARY_HOST", "value": NAME},
        {"name": "DATABASE_PORT", "value": str(PORT)},
        {"name": "DATABASE_REPLICATION_USER", "value": REPLICATION_USER},
        # Read by standbys only; set on every instance so that adding the first standby leaves
        # the primary's pod as it is (the Secret holds the key once a standby exists).
        {
            "name": "DATABASE_REPLICATION_PASSWORD_FILE",
            "value": pod.secret_file(REPLICATION_PASSWORD_KEY),
        },
    ]
    server_args = ["postgres"]
    for setting, value in settings.items():
        server_args += ["-c", f"{setting}={value}"]
    spec: k8s.core.v1.PodSpecArgsDict = {
        "service_account_name": account,
        "automount_service_account_token": False,
        "security_context": pod.pod_security_context(),
        "termination_grace_period_seconds": 60,
        "containers": [
            {
                "name": "postgres",
                "image": args.image,
                "image_pull_policy": pod.pull_policy(args.image),
                # The start script hands over to the image's own entrypoint.
                "command": ["bash", f"{SCRIPTS_DIR}/start.sh"],
                "args": server_args,
                "ports": [{"name": "postgres", "container_port": PORT, "protocol": "TCP"}],
                "env": env,
                "resources": RESOURCES.spec(),
                "security_context": pod.container_security_context(),
                "volume_mounts": pod.mounts(
                    secrets=True,
                    extra=(
                        {"name": CLAIM_TEMPLATE, "mount_path": MOUNT_PATH},
                        {"name": "run", "mount_path": "/var/run/postgresql"},
                        {"name": "scripts", "mount_path": SCRIPTS_DIR, "read_only": True},
                    ),
                ),
                "startup_probe": {
                    "exec_": {"command": ready},
                    "period_seconds": 10,
                    "timeout_seconds": 5,
                    "failure_threshold": RECOVERY_SECONDS // 10,
                },
                "readiness_probe": {
                    "exec_": {"command": ready},
                    "period_seconds": 5,
                    "timeout_seconds": 5,
                    "failure_threshold": 3,
                },
                "liveness_probe": {
                    "exec_": {"command": alive},
                    "period_seconds": 10,
                    "timeout_seconds": 5,
                    "failure_threshold": 6,
                },
            }
        ],
        "volumes": [
            pod.tmp_volume(),
            pod.secrets_volume(args.secret_name),
            {"name": "run", "empty_dir": {"size_limit": "16Mi"}},
            {"name": "scripts", "config_map": {"name": scripts, "default_mode": 0o444}},
        ],
    }
    return spec
