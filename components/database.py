"""`Database`: PostgreSQL run by Patroni (the project's image, services/database) as one
StatefulSet of `replicas` instances: one primary and synchronous-capable standbys.

Patroni keeps the roles. Kubernetes is its store: the leader lock and the cluster's state are
ConfigMaps in the namespace, written through a ServiceAccount of its own (the only one in the
stack with a token) and a namespaced Role with only the verbs Patroni uses. Patroni labels each
pod with its role (`ROLE_LABEL`); the Service `database` selects the primary and `database-read`
the standbys (the primary while it is alone). No setting of the program names the primary, so
`pulumi up` never changes a role and a failover leaves nothing for a preview to show.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import pulumi
import pulumi_kubernetes as k8s

from components import pod, rollout
from components.database_scale_in import scale_in_policy
from components.labels import labels, metadata, selector
from components.quantity import quantity_bytes

NAME: Final = "database"
READ_NAME: Final = f"{NAME}-read"
# The StatefulSet's governing Service: headless, it gives each pod a stable DNS name.
HEADLESS_NAME: Final = f"{NAME}-headless"
PORT: Final = 5432
# Patroni's REST API: the probes, the members' view of each other, `patronictl switchover`.
API_PORT: Final = 8008
# The roles and database the image makes and admits (services/database/bin/mlstack-database
# names them; tests/unit/test_database_url.py holds the two alike): the gateway serves as
# GATEWAY_USER; its schema migrations run as OWNER.
OWNER: Final = "mlstack"
GATEWAY_USER: Final = "mlstack_gateway"
DB_NAME: Final = "mlstack"
MAX_REPLICAS: Final = 5
# The least data volume (database.storageSize) an instance gets. The image gives an instance a
# quarter of its volume as max_wal_size and as max_slot_wal_keep_size (its wal_limits()); the
# cluster keeps wal_keep_size, 256MB (patroni.yml), whatever the volume: Patroni takes that one
# from the cluster's settings alone (written once, at bootstrap) and drops an instance's own.
# From 1Gi the slot limit is no less than wal_keep_size; both count back from the same WAL
# position, so pg_wal holds at most max_wal_size + max_slot_wal_keep_size, half the volume
# (README, "High availability"). Below it, wal_keep_size alone would take more.
LEAST_STORAGE_SIZE: Final = "1Gi"
CLAIM_TEMPLATE: Final = "data"
MOUNT_PATH: Final = "/var/lib/postgresql/data"
# The data folder inside the volume (services/database/patroni.yml).
PGDATA: Final = f"{MOUNT_PATH}/pgdata"
SOCKET_DIR: Final = "/var/run/postgresql"
# The keys of the stack's `database` Secret, mounted as files in the database's pods.
OWNER_PASSWORD_KEY: Final = "owner-password"
GATEWAY_PASSWORD_KEY: Final = "gateway-password"
REPLICATION_PASSWORD_KEY: Final = "replication-password"
REWIND_PASSWORD_KEY: Final = "rewind-password"
RESOURCES: Final = pod.Resources("100m", "256Mi", "1", "1Gi")
# The label Patroni keeps on each pod (services/database/patroni.yml), and its values.
ROLE_LABEL: Final = "mlstack/database-role"
PRIMARY: Final = "primary"
REPLICA: Final = "replica"
# Patroni's cluster name: its ConfigMaps are <SCOPE>-leader, -config, -sync, -failover. Patroni
# finds its members and ConfigMaps by DATABASE_LABELS plus SCOPE_LABEL=SCOPE (patroni.yml).
SCOPE: Final = "database"
SCOPE_LABEL: Final = "mlstack/database-cluster"
# What Patroni does through the API server, and nothing more: its ConfigMaps (leader lock,
# settings, synchronous state: read, watched, made, updated by patch) and the pods of its
# cluster (listed, watched, and its own labelled and annotated by patch).
PATRONI_RULES: Final = (
    ("configmaps", ("get", "list", "watch", "create", "patch")),
    ("pods", ("get", "list", "watch", "patch")),
)
# pgBackRest's stanza (its name for this cluster in the repository).
STANZA: Final = "mlstack"
# The ConfigMap `make restore` makes for the length of a restore (its `id` and `target`); each
# instance mounts it when it is there (components/database.py never makes it).
RESTORE_CONFIG_MAP: Final = "database-restore"
RESTORE_DIR: Final = "/etc/mlstack/database-restore"
# A repository on a volume of the stack's (database.backup.volume): the claim, mounted in both
# containers of every instance.
BACKUP_CLAIM: Final = f"{NAME}-backups"
BACKUP_VOLUME_DIR: Final = "/var/lib/pgbackrest"
# The backup repository's CA bundle, when the stack gives one.
BACKUP_CA_CONFIG_MAP: Final = "database-backup-ca"
BACKUP_CA_DIR: Final = "/etc/mlstack/backup-ca"
# The `backups` container's /metrics (the backups' age and count, the WAL archive's state).
BACKUP_METRICS_PORT: Final = 9188
BACKUP_RESOURCES: Final = pod.Resources("20m", "64Mi", "1", "256Mi")
# The containers of an instance: PostgreSQL under Patroni (patronictl runs there), and the
# base backups with their metrics (pgBackRest's commands run there).
POSTGRES_CONTAINER: Final = "postgres"
BACKUPS_CONTAINER: Final = "backups"
# The `backups` container's /tmp (not the `postgres` container's pod.TMP_VOLUME).
BACKUPS_TMP_VOLUME: Final = "backups-tmp"
# How long a pod has to stop: Patroni shuts PostgreSQL down (fast) and, on the primary, hands
# the leader lock over before it exits.
STOP_SECONDS: Final = 60
# How long a rolled instance stays Ready before the roll goes on to the next (the primary last):
# Patroni's readiness answers once the instance streams, and the primary names it its
# synchronous standby only at its next loop (loop_wait, 2 s) and a loop after that. A primary
# stopped before then hands over to no one (a standby outside the synchronous set may not take
# the lock) and takes it back once its own pod is up again: on two instances, a roll paused
# writes for the primary's whole restart (README, "High availability").
MIN_READY_SECONDS: Final = 10


def connection_url(
    host: str, password: str, *, user: str, port: int = PORT, dbname: str = DB_NAME
) -> str:
    """A postgresql:// URL. Every part is percent-encoded (libpq and asyncpg decode each one):
    pasted in as it is, a password's '/', '?' or '#' would end the host part early and an '@'
    would move it, so any character may be in the secret."""

    def part(text: str) -> str:
        return urllib.parse.quote(text, safe="")

    return f"postgresql://{part(user)}:{part(password)}@{part(host)}:{port}/{part(dbname)}"


def pod_name(index: int) -> str:
    return f"{NAME}-{index}"


def claim_name(index: int) -> str:
    """The claim a StatefulSet gives its pod: <template>-<set>-<ordinal>."""
    return f"{CLAIM_TEMPLATE}-{pod_name(index)}"


@dataclass(frozen=True)
class BackupVolume:
    """The claim a `posix` repository lives on (BACKUP_CLAIM)."""

    size: str
    storage_class: str | None = None


@dataclass(frozen=True)
class BackupArgs:
    """pgBackRest's repository: its options (`repo1-...`) but the secret ones, which are the
    database Secret's `secret_keys` (option -> key), a CA bundle for its endpoint, the volume it
    lives on when it is one, the annotations that give the database's ServiceAccount the
    repository's cloud identity, and when the `backups` container takes base backups."""

    options: Mapping[str, pulumi.Input[str]]
    secret_keys: Mapping[str, str]
    ca_certificate: str | None = None
    volume: BackupVolume | None = None
    service_account_annotations: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    full_every_hours: int = 24
    diff_every_hours: int = 6


@dataclass(frozen=True)
class DatabaseArgs:
    stack: str
    namespace: pulumi.Input[str]
    storage_size: str
    storage_class: str | None
    image: pulumi.Input[str]
    # The Secret mounted as files, by name (components/app.py says why), the Secret itself to
    # be created first, and a digest of its values that rolls the pods when one changes.
    secret_name: str
    secrets_checksum: pulumi.Input[str] | None = None
    after: tuple[pulumi.Resource, ...] = ()
    replicas: int = 1
    # Spread the instances over zones as well as nodes (clouds with zones).
    zone_spread: bool = False
    # `protect` on the volumes: a stray destroy stops before it deletes the data.
    protect: bool = False
    # The WAL archive and base backups; None: none.
    backup: BackupArgs | None = None


class Database(pulumi.ComponentResource):
    """The volumes are resources of their own (the StatefulSet adopts each claim by name) so that
    they can be protected, and so that deleting the StatefulSet never deletes data."""

    service: k8s.core.v1.Service
    read_service: k8s.core.v1.Service
    headless_service: k8s.core.v1.Service
    stateful_set: k8s.apps.v1.StatefulSet
    volume_claims: list[k8s.core.v1.PersistentVolumeClaim]
    # A `posix` backup repository's claim (database.backup.volume), else None.
    backup_claim: k8s.core.v1.PersistentVolumeClaim | None
    role: k8s.rbac.v1.Role
    disruption_budget: k8s.policy.v1.PodDisruptionBudget
    # The API server's refusal to lower the instances by more than one at once.
    scale_in_policy: k8s.admissionregistration.v1.ValidatingAdmissionPolicyBinding
    host: pulumi.Output[str]
    read_host: pulumi.Output[str]

    def __init__(
        self, name: str, args: DatabaseArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlstack:app:Database", name, None, opts)
        self.service = self._role_service(name, args, NAME, PRIMARY)
        # The standbys; the primary while it is alone.
        self.read_service = self._role_service(
            f"{name}-read", args, READ_NAME, REPLICA if args.replicas > 1 else PRIMARY
        )
        self.headless_service = self._headless_service(f"{name}-headless", args)
        account = self._service_account(name, args)
        self.role = self._patroni_role(name, args)
        binding = self._patroni_role_binding(name, args, account, self.role)
        self.disruption_budget = self._disruption_budget(name, args)
        # The claims made here and the StatefulSet's claim template ask for the same volume.
        data = _claim_spec(args.storage_size, args.storage_class)
        self.volume_claims = self._data_claims(name, args, data)
        self.backup_claim = self._backup_claim(name, args)
        backup_ca = self._backup_ca(name, args)
        # Made before the StatefulSet changes; the API server applies a new policy within
        # moments, so not always to the update that follows it at once (README).
        self.scale_in_policy = scale_in_policy(
            f"{name}-scale-in",
            args.namespace,
            args.stack,
            NAME,
            pulumi.ResourceOptions(parent=self),
        )
        self.stateful_set = self._stateful_set(
            name,
            args,
            data,
            after=[
                *self.volume_claims,
                binding,
                self.scale_in_policy,
                self.headless_service,
                *args.after,
                *(each for each in (self.backup_claim, backup_ca) if each is not None),
            ],
        )
        self.host = _host(NAME, args.namespace)
        self.read_host = _host(READ_NAME, args.namespace)
        self.register_outputs({"host": self.host, "read_host": self.read_host})

    def _role_service(
        self, resource: str, args: DatabaseArgs, service_name: str, role: str
    ) -> k8s.core.v1.Service:
        """The ClusterIP Service `service_name` in front of the instances Patroni labels `role`."""
        return k8s.core.v1.Service(
            resource,
            metadata=_object_metadata(args, service_name),
            spec={
                "type": "ClusterIP",
                "selector": {**selector(NAME, args.stack), ROLE_LABEL: role},
                "ports": _service_ports(),
            },
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _headless_service(self, resource: str, args: DatabaseArgs) -> k8s.core.v1.Service:
        """The StatefulSet's governing Service (HEADLESS_NAME): a stable DNS name per pod."""
        return k8s.core.v1.Service(
            resource,
            metadata=_object_metadata(args, HEADLESS_NAME),
            # Headless, published before the pods are Ready: peers find each other by it.
            spec={
                "cluster_ip": "None",
                "publish_not_ready_addresses": True,
                "selector": selector(NAME, args.stack),
                "ports": _service_ports(),
            },
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _service_account(self, name: str, args: DatabaseArgs) -> k8s.core.v1.ServiceAccount:
        """The database's ServiceAccount, the one Patroni reaches the API server through."""
        # The token is mounted into the database's pods alone (their spec asks for it).
        return pod.service_account(
            f"{name}-account",
            {
                **_object_metadata(args, NAME),
                # The backup repository's cloud identity (Workload Identity, IAM roles for
                # service accounts), when the repository is a bucket the program made.
                **(
                    {"annotations": dict(args.backup.service_account_annotations)}
                    if args.backup is not None and args.backup.service_account_annotations
                    else {}
                ),
            },
            pulumi.ResourceOptions(parent=self),
        )

    def _patroni_role(self, name: str, args: DatabaseArgs) -> k8s.rbac.v1.Role:
        """What Patroni may do in the namespace: PATRONI_RULES, nothing more."""
        return k8s.rbac.v1.Role(
            f"{name}-patroni",
            metadata=_object_metadata(args, NAME),
            rules=[
                {"api_groups": [""], "resources": [resource], "verbs": list(verbs)}
                for resource, verbs in PATRONI_RULES
            ],
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _patroni_role_binding(
        self,
        name: str,
        args: DatabaseArgs,
        account: k8s.core.v1.ServiceAccount,
        role: k8s.rbac.v1.Role,
    ) -> k8s.rbac.v1.RoleBinding:
        """Patroni's Role given to the database's ServiceAccount, after both exist."""
        return k8s.rbac.v1.RoleBinding(
            f"{name}-patroni",
            metadata=_object_metadata(args, NAME),
            role_ref={"api_group": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
            subjects=[{"kind": "ServiceAccount", "name": NAME, "namespace": args.namespace}],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[account, role]),
        )

    def _disruption_budget(
        self, name: str, args: DatabaseArgs
    ) -> k8s.policy.v1.PodDisruptionBudget:
        """One instance at a time may be taken down on purpose (a node drain); Patroni moves the
        primary's role to a synchronous standby when the primary is the one."""
        return k8s.policy.v1.PodDisruptionBudget(
            name,
            metadata=_object_metadata(args, NAME),
            spec={"max_unavailable": 1, "selector": {"match_labels": selector(NAME, args.stack)}},
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _claim(
        self,
        resource: str,
        args: DatabaseArgs,
        object_name: str,
        spec: k8s.core.v1.PersistentVolumeClaimSpecArgsDict,
    ) -> k8s.core.v1.PersistentVolumeClaim:
        """A claim of the database's, protected when the stack protects its data, on the
        StorageClass it was made with."""
        return k8s.core.v1.PersistentVolumeClaim(
            resource,
            metadata={
                **_object_metadata(args, object_name),
                # Binding may wait for the first consumer; the StatefulSet's await covers it.
                "annotations": {"pulumi.com/skipAwait": "true"},
            },
            spec=spec,
            # Kubernetes cannot change a claim's class, and pulumi-kubernetes would replace the
            # claim for a new one, and with it the data or the backups on its volume. A claim keeps
            # its class; a new one is for the claims made after it (README, "A new storage
            # class"). A new size still resizes a claim in place.
            opts=pulumi.ResourceOptions(
                parent=self, protect=args.protect, ignore_changes=["spec.storageClassName"]
            ),
        )

    def _data_claims(
        self, name: str, args: DatabaseArgs, data: k8s.core.v1.PersistentVolumeClaimSpecArgsDict
    ) -> list[k8s.core.v1.PersistentVolumeClaim]:
        """Each instance's data volume, by the name its StatefulSet gives it (`claim_name`)."""
        return [
            self._claim(
                # The first claim's Pulumi name is the one a one-instance stack has always had.
                f"{name}-data" if index == 0 else f"{name}-{index}-data",
                args,
                claim_name(index),
                data,
            )
            for index in range(args.replicas)
        ]

    def _backup_claim(
        self, name: str, args: DatabaseArgs
    ) -> k8s.core.v1.PersistentVolumeClaim | None:
        """The volume a `posix` backup repository lives on (BACKUP_CLAIM), when the stack has
        one."""
        if args.backup is None or args.backup.volume is None:
            return None
        volume = args.backup.volume
        # Protected as the data is: the backups are the way back from a bad statement. Every
        # instance mounts it (ReadWriteOnce): they must share a node (README, "Backups and
        # restore").
        return self._claim(
            f"{name}-backups", args, BACKUP_CLAIM, _claim_spec(volume.size, volume.storage_class)
        )

    def _backup_ca(self, name: str, args: DatabaseArgs) -> k8s.core.v1.ConfigMap | None:
        """The backup repository's CA bundle (BACKUP_CA_CONFIG_MAP), when the stack gives one."""
        if args.backup is None or args.backup.ca_certificate is None:
            return None
        return k8s.core.v1.ConfigMap(
            f"{name}-backup-ca",
            metadata=_object_metadata(args, BACKUP_CA_CONFIG_MAP),
            data={"ca.crt": args.backup.ca_certificate},
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _stateful_set(
        self,
        name: str,
        args: DatabaseArgs,
        data: k8s.core.v1.PersistentVolumeClaimSpecArgsDict,
        after: list[pulumi.Resource],
    ) -> k8s.apps.v1.StatefulSet:
        """The instances: `args.replicas` pods of `_pod_spec`, each on its claim of `data`,
        created after the objects in `after`."""
        meta_labels = labels(NAME, args.stack)
        match = selector(NAME, args.stack)
        return k8s.apps.v1.StatefulSet(
            name,
            metadata={
                **_object_metadata(args, NAME),
                "annotations": {
                    # A `kubectl scale` by hand is taken back by the next `pulumi up`.
                    rollout.PATCH_FORCE: "true",
                    **rollout.await_stateful_set(),
                },
            },
            spec={
                "replicas": args.replicas,
                "service_name": HEADLESS_NAME,
                "selector": {"match_labels": match},
                # Instances start together: Patroni, not start order, decides who leads.
                "pod_management_policy": "Parallel",
                "min_ready_seconds": MIN_READY_SECONDS,
                "persistent_volume_claim_retention_policy": {
                    "when_deleted": "Retain",
                    "when_scaled": "Retain",
                },
                "template": {
                    # Patroni finds its members by these labels and the scope label. No role
                    # label here: Patroni owns it, and a template change never resets it.
                    "metadata": {
                        "labels": {**meta_labels, SCOPE_LABEL: SCOPE},
                        "annotations": _template_annotations(args),
                    },
                    "spec": _pod_spec(args, match),
                },
                "volume_claim_templates": [
                    {
                        "metadata": {"name": CLAIM_TEMPLATE, "labels": meta_labels},
                        "spec": data,
                    }
                ],
            },
            # The objects it names are created first; it takes none of their outputs, so that
            # replacing one of them never replaces it. Kubernetes refuses to update the claim
            # template, so pulumi-kubernetes would replace the StatefulSet (deleted first: every
            # instance stops at once) for any change of it. The claims are the program's own
            # (`_data_claims`, each made before its instance) and resize in place: the template
            # keeps what it was created with.
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=after, ignore_changes=["spec.volumeClaimTemplates"]
            ),
        )


def _object_metadata(args: DatabaseArgs, object_name: str) -> k8s.meta.v1.ObjectMetaArgsDict:
    """The metadata of the database's object `object_name`: its namespace and labels."""
    return metadata(object_name, args.namespace, NAME, args.stack)


def _service_ports() -> list[k8s.core.v1.ServicePortArgsDict]:
    """What each of the database's Services serves: PostgreSQL."""
    return [{"name": "postgres", "port": PORT, "target_port": "postgres", "protocol": "TCP"}]


def _template_annotations(args: DatabaseArgs) -> dict[str, pulumi.Input[str]]:
    """The pod template's annotations: the digest of the Secret's values, when there is one, so
    that a new value rolls the pods."""
    annotations: dict[str, pulumi.Input[str]] = {}
    if args.secrets_checksum is not None:
        annotations[pod.SECRETS_CHECKSUM] = args.secrets_checksum
    return annotations


def _host(service_name: str, namespace: pulumi.Input[str]) -> pulumi.Output[str]:
    """The DNS name of the database's Service `service_name`."""
    # Known from the names alone: whoever connects need not wait for the Service's await.
    return pulumi.Output.concat(service_name, ".", namespace, ".svc")


def backup_env(backup: BackupArgs) -> list[k8s.core.v1.EnvVarArgsDict]:
    """pgBackRest's options as its PGBACKREST_* variables (the secret ones as files, which the
    image's entrypoint writes to PGBACKREST_CONFIG): the same in both containers, so that the
    archive and restore commands PostgreSQL runs and the backups agree."""

    def variable(option: str) -> str:
        return "PGBACKREST_" + option.upper().replace("-", "_")

    options = {
        "stanza": STANZA,
        **backup.options,
        **(
            {"repo1-storage-ca-file": f"{BACKUP_CA_DIR}/ca.crt"}
            if backup.ca_certificate is not None
            else {}
        ),
        "pg1-path": PGDATA,
        "pg1-socket-path": SOCKET_DIR,
        # The root filesystem is read-only: everything pgBackRest writes goes under /tmp.
        "config": "/tmp/pgbackrest/pgbackrest.conf",
        "lock-path": "/tmp/pgbackrest/lock",
        "spool-path": "/tmp/pgbackrest/spool",
        "log-path": "/tmp/pgbackrest/log",
        "log-level-file": "off",
    }
    secrets = {option: pod.secret_file(key) for option, key in backup.secret_keys.items()}
    return [
        *({"name": variable(option), "value": value} for option, value in sorted(options.items())),
        {"name": "DATABASE_BACKUP_SECRETS", "value": json.dumps(secrets, sort_keys=True)},
    ]


def _claim_spec(
    size: str, storage_class: str | None
) -> k8s.core.v1.PersistentVolumeClaimSpecArgsDict:
    return {
        "access_modes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": size}},
        # None: the cluster's default StorageClass.
        "storage_class_name": storage_class,
    }


def _pod_spec(args: DatabaseArgs, match: dict[str, str]) -> k8s.core.v1.PodSpecArgsDict:
    def pod_field(path: str) -> k8s.core.v1.EnvVarSourceArgsDict:
        return {"field_ref": {"field_path": path}}

    env: list[k8s.core.v1.EnvVarArgsDict] = [
        {"name": "POD_NAME", "value_from": pod_field("metadata.name")},
        {"name": "POD_IP", "value_from": pod_field("status.podIP")},
        {"name": "POD_NAMESPACE", "value_from": pod_field("metadata.namespace")},
        # What Patroni selects its pods and ConfigMaps by (plus its scope label).
        {"name": "DATABASE_LABELS", "value": json.dumps(match, sort_keys=True)},
        # The volume's size bounds the WAL PostgreSQL keeps (the image's wal_limits()). A new
        # size rolls the pods, one at a time, so that each applies its volume's.
        {"name": "DATABASE_STORAGE_BYTES", "value": str(quantity_bytes(args.storage_size))},
        *(
            {"name": variable, "value": pod.secret_file(key)}
            for variable, key in (
                ("DATABASE_OWNER_PASSWORD_FILE", OWNER_PASSWORD_KEY),
                ("DATABASE_GATEWAY_PASSWORD_FILE", GATEWAY_PASSWORD_KEY),
                ("DATABASE_REPLICATION_PASSWORD_FILE", REPLICATION_PASSWORD_KEY),
                ("DATABASE_REWIND_PASSWORD_FILE", REWIND_PASSWORD_KEY),
            )
        ),
    ]

    mounts: list[k8s.core.v1.VolumeMountArgsDict] = [
        {"name": CLAIM_TEMPLATE, "mount_path": MOUNT_PATH},
        {"name": "run", "mount_path": SOCKET_DIR},
    ]
    volumes: list[k8s.core.v1.VolumeArgsDict] = [
        pod.tmp_volume(),
        pod.secrets_volume(args.secret_name),
        {"name": "run", "empty_dir": {"size_limit": "16Mi"}},
    ]
    sidecars: list[k8s.core.v1.ContainerArgsDict] = []
    if args.backup is not None:
        env += [
            *backup_env(args.backup),
            {"name": "DATABASE_RESTORE_DIR", "value": RESTORE_DIR},
        ]
        volumes.append(
            {"name": "restore", "config_map": {"name": RESTORE_CONFIG_MAP, "optional": True}}
        )
        if args.backup.ca_certificate is not None:
            mounts.append({"name": "backup-ca", "mount_path": BACKUP_CA_DIR, "read_only": True})
            volumes.append({"name": "backup-ca", "config_map": {"name": BACKUP_CA_CONFIG_MAP}})
        if args.backup.volume is not None:
            # Both containers: PostgreSQL's archive and restore commands, and the backups.
            mounts.append({"name": "backups", "mount_path": BACKUP_VOLUME_DIR})
            volumes.append(
                {"name": "backups", "persistent_volume_claim": {"claim_name": BACKUP_CLAIM}}
            )
        volumes.append(pod.tmp_volume(BACKUPS_TMP_VOLUME))
        sidecars.append(_backups_container(args, args.backup, env, mounts))

    def probe(path: str, *, period: int, failures: int) -> k8s.core.v1.ProbeArgsDict:
        return {
            "http_get": {"path": path, "port": "patroni"},
            "period_seconds": period,
            "timeout_seconds": 3,
            "failure_threshold": failures,
        }

    return {
        "service_account_name": NAME,
        # Patroni's store is the API server: this is the stack's only pod with a token.
        "automount_service_account_token": True,
        # The kubelet gives the volume to the pod's group (fsGroup) only while its root is not
        # the group's yet: by default it would do so on every start, recursively, and PostgreSQL
        # refuses a data folder whose group may write to it.
        "security_context": {
            **pod.pod_security_context(),
            "fs_group_change_policy": "OnRootMismatch",
        },
        "termination_grace_period_seconds": STOP_SECONDS,
        # Whatever the number of instances (one pod has nothing to spread from): the template
        # stays the same when `replicas` changes, so that adding a standby never restarts the
        # primary.
        "topology_spread_constraints": pod.spread(match, zones=args.zone_spread),
        "containers": [
            {
                "name": POSTGRES_CONTAINER,
                "image": args.image,
                "image_pull_policy": pod.pull_policy(args.image),
                "ports": [
                    {"name": "postgres", "container_port": PORT, "protocol": "TCP"},
                    {"name": "patroni", "container_port": API_PORT, "protocol": "TCP"},
                ],
                "env": env,
                "resources": RESOURCES.spec(),
                "security_context": pod.container_security_context(),
                "volume_mounts": pod.mounts(
                    secrets=True,
                    extra=(
                        *mounts,
                        *(
                            [{"name": "restore", "mount_path": RESTORE_DIR, "read_only": True}]
                            if args.backup is not None
                            else []
                        ),
                    ),
                ),
                # Patroni's own answers: alive while its loop runs (a primary whose loop stalls
                # past the lease is not), ready when PostgreSQL runs as the leader or as a
                # streaming standby. A standby's first copy of the primary happens while it is
                # alive and not ready, however long it takes. Readiness is asked every second
                # (an answer from Patroni's memory), so that a new primary takes connections, the
                # gateway's migrations Job first, within a second of being one; six misses in a row,
                # as many seconds as ever, take an instance out of the Services.
                "startup_probe": probe("/liveness", period=1, failures=60),
                "liveness_probe": probe("/liveness", period=10, failures=6),
                "readiness_probe": probe("/readiness", period=1, failures=6),
            },
            *sidecars,
        ],
        "volumes": volumes,
    }


def _backups_container(
    args: DatabaseArgs,
    backup: BackupArgs,
    env: list[k8s.core.v1.EnvVarArgsDict],
    mounts: list[k8s.core.v1.VolumeMountArgsDict],
) -> k8s.core.v1.ContainerArgsDict:
    """Base backups on a schedule where the primary runs, beside its data (pgBackRest reads the
    data folder); their age and the local server's WAL archive (what waits to be archived) as
    metrics (services/database/bin/mlstack-database-backups)."""
    metrics: k8s.core.v1.ProbeArgsDict = {
        "http_get": {"path": "/metrics", "port": "backup-metrics"},
        "period_seconds": 10,
        "timeout_seconds": 3,
        "failure_threshold": 6,
    }
    return {
        "name": BACKUPS_CONTAINER,
        "image": args.image,
        "image_pull_policy": pod.pull_policy(args.image),
        "command": ["mlstack-database-backups"],
        "ports": [
            {"name": "backup-metrics", "container_port": BACKUP_METRICS_PORT, "protocol": "TCP"}
        ],
        "env": [
            *env,
            {"name": "DATABASE_BACKUP_FULL_HOURS", "value": str(backup.full_every_hours)},
            {"name": "DATABASE_BACKUP_DIFF_HOURS", "value": str(backup.diff_every_hours)},
            {"name": "METRICS_PORT", "value": str(BACKUP_METRICS_PORT)},
        ],
        "resources": BACKUP_RESOURCES.spec(),
        "security_context": pod.container_security_context(),
        # Its own /tmp: pgBackRest's configuration and locks are per container.
        "volume_mounts": pod.mounts(secrets=True, tmp=BACKUPS_TMP_VOLUME, extra=tuple(mounts)),
        # Alive while it serves its metrics, which it does from its start whatever the
        # repository does (a failing backup shows in the metrics, never in readiness). Ready
        # unless the repository is another database's (/ready): one that can never take this
        # database's WAL or backups, which fails `pulumi up` rather than fill the volume
        # unnoticed. The pod is Ready only once this container is: its readiness is asked as
        # often as the database's, not at the liveness probe's pace.
        "startup_probe": {**metrics, "period_seconds": 1, "failure_threshold": 60},
        "liveness_probe": metrics,
        "readiness_probe": {
            **metrics,
            "http_get": {"path": "/ready", "port": "backup-metrics"},
            "period_seconds": 2,
            "failure_threshold": 3,
        },
    }
