"""The stack configuration (the project's keys, `mlstack:`), typed and validated up front.

Every check runs before a single resource is registered. `load()` raises `ConfigError` at the
first mistake; `load_or_exit()`, the program's entry point, logs that one line and exits.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import json
import os
import re
import ssl
import tempfile
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias, cast

import pulumi
from pulumi.runtime import config as runtime_config

from components.database import LEAST_STORAGE_SIZE
from components.database import MAX_REPLICAS as MAX_DATABASE_REPLICAS
from components.network_policy import DnsPods
from components.quantity import QUANTITY, quantity_bytes
from components.stack_file import ORIGINAL_PROJECT, project_name, project_values

Provider: TypeAlias = Literal["local", "existing", "gke", "eks"]
ServiceType: TypeAlias = Literal["LoadBalancer", "ClusterIP", "NodePort"]

PROVIDERS: Final[tuple[Provider, ...]] = ("local", "existing", "gke", "eks")
SERVICE_TYPES: Final[tuple[ServiceType, ...]] = ("LoadBalancer", "ClusterIP", "NodePort")
# The trained models the model image carries; the newest is the default.
MODEL_VERSIONS: Final = ("v1", "v2")
MAX_REPLICAS: Final = 1000
# The oldest Kubernetes minor mlstack supports: the local cluster's default k3s runs it, Pod
# Security admission evaluates pods by its rules (components/app.py), and the policy gate checks
# every object against its schemas (tools/policy.py).
OLDEST_KUBERNETES: Final = "1.31"
# The gateway's drain by default: longer than a cloud load balancer takes to stop sending to a
# pod that has left the Service's endpoints (a single node's kube-proxy takes about a second).
GATEWAY_DRAIN_SECONDS: Final = 30
# The model's drain: its only clients are the gateways, through kube-proxy on their nodes, which
# stops sending to a pod that has left the endpoints within a second or two. A model that stopped
# listening before then would refuse those connections, and once its pod's network is gone they
# would hang until the gateway's model timeout (a 503 where a retry would have been answered).
MODEL_DRAIN_SECONDS: Final = 5
# The most replicas an autoscaler may run of one service: a ceiling that a runaway metric (or a
# flood) cannot push past, well under what one namespace's quota would hold.
MAX_AUTOSCALED_REPLICAS: Final = 20
# The digest key's minimum length: what `make up` generates (24 random bytes, URL-safe base64).
SECRETS_DIGEST_KEY_CHARACTERS: Final = 32
# The exit code that tells Pulumi's language host "the user has been shown the error": the CLI
# then prints the one line we logged and nothing else.
USER_TOLD_EXIT_CODE: Final = 32

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_IMAGE_REF = re.compile(r"^[^\s]+$")
# An HTTP header value that every client sends as it is: visible ASCII characters, with spaces
# and tabs only between them (RFC 9110, 5.5, for a field defined anew, as X-API-Key is).
_HEADER_VALUE = re.compile(r"[\x21-\x7e](?:[\x21-\x7e \t]*[\x21-\x7e])?")
# What no header value holds at all: control characters, but the tab.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CLOCK = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
# GKE's release channels; EXTENDED is for clusters that must stay on a minor for longer.
RELEASE_CHANNELS: Final = ("RAPID", "REGULAR", "STABLE", "EXTENDED")
# Days as RFC 5545 (the recurrence GKE reads) writes them.
WEEKDAYS: Final = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
# Where the PEM blocks the gateway's OpenSSL reads its pair from begin: the certificate, and the
# private key as PKCS#8 (`PRIVATE KEY`, `ENCRYPTED PRIVATE KEY`) or in its algorithm's older form
# (`RSA PRIVATE KEY`, as cert-manager writes an RSA key by default; `EC PRIVATE KEY`).
_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE")
_PEM_PRIVATE_KEY = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )?PRIVATE KEY")
# A label's name (after an optional DNS-subdomain prefix and `/`) and its value.
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


class ConfigError(pulumi.RunError):
    """A stack configuration mistake: the message names the key, the value and what is allowed."""


def config_namespace() -> str:
    """The namespace of the program's own config keys: its project's name, `mlstack` (Pulumi puts
    there a key given without a namespace and the keys Pulumi.yaml declares). A running program
    (under the engine or the mocks) has it from the engine, which takes it from Pulumi.yaml; the
    tools that read a stack's config without running the program, from Pulumi.yaml."""
    if pulumi.runtime.settings.get_monitor() is None:
        return project_name()
    return pulumi.get_project()


def _key(key: str) -> str:
    """`key` in the project's namespace, as a message names it: `mlstack:gateway.replicas`."""
    return f"{config_namespace()}:{key}"


@dataclass(frozen=True)
class LocalCluster:
    """A k3s server in Docker with a local image registry beside it."""

    k3s_image: str = f"rancher/k3s:v{OLDEST_KUBERNETES}.4-k3s1"
    registry_image: str = "registry:2.8.3"
    api_port: int = 6443
    registry_port: int = 5001
    http_port: int = 8088
    provider: Literal["local"] = "local"


@dataclass(frozen=True)
class ExistingCluster:
    """A cluster the user already has, reached through a kubeconfig context."""

    context: str | None = None
    kubeconfig: str | None = None
    provider: Literal["existing"] = "existing"


@dataclass(frozen=True)
class MaintenanceWindow:
    """When GKE may upgrade and repair: `hours` from `start` (UTC, HH:MM) on each of `days`."""

    start: str = "03:00"
    hours: int = 4
    days: tuple[str, ...] = WEEKDAYS


@dataclass(frozen=True)
class GkeCluster:
    region: str
    project: str
    # CIDRs allowed to reach the control plane's public endpoint; empty: private endpoint only.
    authorized_networks: tuple[str, ...]
    # In each of the region's zones: the node pool is regional.
    node_count: int = 3
    machine_type: str = "e2-standard-4"
    kubernetes_version: str | None = None
    release_channel: str = "REGULAR"
    maintenance_window: MaintenanceWindow = MaintenanceWindow()
    provider: Literal["gke"] = "gke"


@dataclass(frozen=True)
class EksCluster:
    region: str
    # CIDRs allowed to reach the API's public endpoint; empty: the private endpoint only.
    authorized_networks: tuple[str, ...]
    node_count: int = 3
    instance_type: str = "t3.large"
    kubernetes_version: str | None = None
    provider: Literal["eks"] = "eks"


ClusterConfig: TypeAlias = LocalCluster | ExistingCluster | GkeCluster | EksCluster


@dataclass(frozen=True)
class Autoscaling:
    """A HorizontalPodAutoscaler on CPU: between the service's `replicas` (the floor) and
    `max_replicas`, aiming at `cpu_utilization` percent of the pods' CPU requests."""

    max_replicas: int
    cpu_utilization: int = 70
    # How long the HPA keeps the highest recommendation of the window before scaling down
    # (Kubernetes' default: 300).
    scale_down_stabilization_seconds: int = 300


@dataclass(frozen=True)
class ServiceConfig:
    replicas: int
    service_type: ServiceType
    # None: `replicas` is a fixed count.
    autoscaling: Autoscaling | None = None


@dataclass(frozen=True)
class GatewayTls:
    """HTTPS on the gateway: an existing `kubernetes.io/tls` Secret by name, or (secret_name None)
    the certificate and key from the stack secrets `gatewayTlsCert` / `gatewayTlsKey`."""

    secret_name: str | None = None
    certificate: pulumi.Output[str] | None = None
    private_key: pulumi.Output[str] | None = None


@dataclass(frozen=True)
class GatewayConfig(ServiceConfig):
    tls: GatewayTls | None = None
    # CIDRs allowed through the LoadBalancer (loadBalancerSourceRanges); empty: anyone.
    source_ranges: tuple[str, ...] = ()
    # Namespaces whose pods may scrape the gateway's metrics port; empty: nobody.
    metrics_namespaces: tuple[str, ...] = ()
    # How long a stopping pod goes on answering after it has left the Service's endpoints.
    drain_seconds: int = 30


@dataclass(frozen=True)
class ModelConfig(ServiceConfig):
    version: str = MODEL_VERSIONS[-1]


@dataclass(frozen=True)
class DatabaseConfig:
    storage_size: str
    storage_class: str | None
    # Instances: Patroni keeps one primary and `replicas - 1` standbys, one of them synchronous.
    replicas: int = 1
    # The WAL archive and base backups (pgBackRest); None: none are taken.
    backup: BackupConfig | None = None


@dataclass(frozen=True)
class S3Repository:
    """An S3-compatible bucket the stack's backups go to (pgBackRest's `s3` repository)."""

    # https://host[:port]: pgBackRest speaks HTTPS only.
    host: str
    port: int
    bucket: str
    region: str
    # `path` (https://host/bucket, most S3-compatible servers) or `host` (bucket.host, AWS).
    uri_style: str = "host"
    # A PEM CA bundle the endpoint's certificate is verified against; None: the system's.
    ca_certificate: str | None = None


@dataclass(frozen=True)
class VolumeRepository:
    """A PersistentVolumeClaim of the stack's, mounted in every database pod (pgBackRest's
    `posix` repository): only right where every instance runs on one node (README, "Backups and
    restore")."""

    size: str
    storage_class: str | None = None


@dataclass(frozen=True)
class CloudBucket:
    """A bucket the program creates in the cluster's own cloud (GCS on gke, S3 on eks), reached
    with the database pods' own cloud identity: no keys."""


# Where the backups go: named by the stack (local, existing) or made by the program (gke, eks).
BackupRepository: TypeAlias = S3Repository | VolumeRepository | CloudBucket


@dataclass(frozen=True)
class BackupConfig:
    repository: BackupRepository
    # Full backups kept; older ones, and the WAL only they need, are expired.
    retention_full: int = 2
    full_every_hours: int = 24
    diff_every_hours: int = 6


@dataclass(frozen=True)
class ImagesConfig:
    build: bool
    registry: str
    gateway: str
    model: str
    database: str


@dataclass(frozen=True)
class StackConfig:
    stack: str
    # The project's name (Pulumi.yaml's), `mlstack`: its config namespace too.
    project: str
    cluster: ClusterConfig
    namespace: str
    gateway: GatewayConfig
    model: ModelConfig
    database: DatabaseConfig
    images: ImagesConfig
    protect: bool
    # The gateway's role's password; the owner's (schema migrations); Patroni's replication and
    # rewind roles'.
    database_password: pulumi.Output[str]
    database_owner_password: pulumi.Output[str]
    replication_password: pulumi.Output[str]
    rewind_password: pulumi.Output[str]
    api_key: pulumi.Output[str]
    # The key of the digest of secret values in pod templates (pod.secrets_checksum).
    secrets_digest_key: pulumi.Output[str]
    # During a rotation, the key being replaced: still accepted until it is removed.
    api_key_previous: pulumi.Output[str] | None = None
    # With database.backup: those of BACKUP_SECRETS its repository takes, by key.
    backup_secrets: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)
    # The cluster DNS pods every pod may reach on port 53.
    dns: DnsPods = field(default_factory=DnsPods)

    @property
    def qualified_name(self) -> str:
        """The stack's name where stacks of several projects may meet (a cluster, a cloud
        account, an endpoint's bucket): its project's and its own, `mlstack-prod`. Two copies of
        mlstack named apart give their `prod` stacks names apart there (README, "Copying
        mlstack"); for this project's stacks it is what it always was."""
        return qualified_name(self.project, self.stack)


def qualified_name(project: str, stack: str) -> str:
    """`<project>-<stack>`: StackConfig.qualified_name, for what needs it before one exists."""
    return f"{project}-{stack}"


# Every key the program understands, with the sub-keys of the structured ones.
_OBJECT_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "gateway": (
        "replicas",
        "autoscaling",
        "serviceType",
        "tls",
        "sourceRanges",
        "metricsNamespaces",
        "drainSeconds",
    ),
    "model": ("replicas", "autoscaling", "serviceType", "version"),
    "database": ("replicas", "storageSize", "storageClass", "backup"),
    "images": ("build", "registry", "gateway", "model", "database"),
    "dns": ("namespace", "podLabels"),
}
_CLUSTER_KEYS: Final[dict[Provider, tuple[str, ...]]] = {
    "local": ("provider", "k3sImage", "registryImage", "apiPort", "registryPort", "httpPort"),
    "existing": ("provider", "context", "kubeconfig"),
    "gke": (
        "provider",
        "region",
        "project",
        "authorizedNetworks",
        "nodeCount",
        "machineType",
        "kubernetesVersion",
        "releaseChannel",
        "maintenanceWindow",
    ),
    "eks": (
        "provider",
        "region",
        "authorizedNetworks",
        "nodeCount",
        "instanceType",
        "kubernetesVersion",
    ),
}
_BACKUP_KEYS: Final = ("s3", "volume", "retentionFull", "fullEveryHours", "diffEveryHours")
_S3_KEYS: Final = ("endpoint", "bucket", "region", "uriStyle", "caCertificate")
_VOLUME_KEYS: Final = ("size", "storageClass")
# The key pgBackRest encrypts the repository with: every stack with backups has one.
BACKUP_CIPHER_SECRET: Final = "databaseBackupCipherPassword"
# The keys of an S3-compatible endpoint's bucket (`database.backup.s3` alone: the program's own
# buckets and a volume take none), which its provider issues.
BACKUP_S3_ACCESS_KEY: Final = "databaseBackupS3AccessKey"
BACKUP_S3_SECRET_KEY: Final = "databaseBackupS3SecretKey"
# The secrets of backups: the repository's encryption key and the endpoint's keys.
BACKUP_SECRETS: Final = (BACKUP_CIPHER_SECRET, BACKUP_S3_ACCESS_KEY, BACKUP_S3_SECRET_KEY)
# The endpoint's keys, with what each is.
BUCKET_KEYS: Final = {
    BACKUP_S3_ACCESS_KEY: "the bucket's access key ID",
    BACKUP_S3_SECRET_KEY: "the bucket's secret access key",
}
# The passwords of the database's roles: the gateway's, the schema owner's, Patroni's replication
# and rewind roles'.
_DATABASE_PASSWORDS: Final = (
    "databasePassword",
    "databaseOwnerPassword",
    "databaseReplicationPassword",
    "databaseRewindPassword",
)
# The passwords of Patroni's own roles, which it writes to its password file (pgpass) and sets at
# a new cluster's bootstrap.
_PATRONI_PASSWORDS: Final = ("databaseReplicationPassword", "databaseRewindPassword")
# The stack secrets nobody has to choose: `make stack`, the review workflow and `make e2e-cluster`
# draw each one a stack lacks (tools/stack_secrets.py). The bucket's keys come from its provider;
# apiKeyPrevious and the gateway's certificate are set by hand.
GENERATED_SECRETS: Final = (
    *_DATABASE_PASSWORDS,
    BACKUP_CIPHER_SECRET,
    "apiKey",
    "secretsDigestKey",
)
# Every stack secret the program reads: GENERATED_SECRETS, and those a person gives (the bucket's
# keys, apiKeyPrevious during a rotation, the gateway's certificate and key). Pulumi.yaml declares
# the generated ones and names the rest (tests/unit/test_project_config.py).
SECRET_KEYS: Final = (
    *_DATABASE_PASSWORDS,
    *BACKUP_SECRETS,
    "apiKey",
    "apiKeyPrevious",
    "secretsDigestKey",
    "gatewayTlsCert",
    "gatewayTlsKey",
)
_SCALAR_KEYS: Final = ("namespace", "protect", *SECRET_KEYS)
# The scalar keys whose values are text, whatever they look like: never decoded as JSON.
_STRING_KEYS: Final = tuple(key for key in _SCALAR_KEYS if key != "protect")
_TLS_KEYS: Final = ("secretName",)
_AUTOSCALING_KEYS: Final = ("maxReplicas", "cpuUtilization", "scaleDownStabilizationSeconds")
KNOWN_KEYS: Final = ("cluster", *_OBJECT_KEYS, *_SCALAR_KEYS)


def _show(value: object) -> str:
    return json.dumps(value) if not isinstance(value, str) else f'"{value}"'


def _suggest(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in choices}
        if word.lower() in lowered:
            close = [lowered[word.lower()]]
    return f' (did you mean "{close[0]}"?)' if close else ""


def _fail(key: str, value: object, allowed: str) -> ConfigError:
    return ConfigError(f"{_key(key)}: {_show(value)} is not allowed: {allowed}")


class _Section:
    """One structured key (`mlstack:gateway`, ...): typed getters that name the full key path."""

    def __init__(self, key: str, raw: object, allowed_keys: tuple[str, ...]) -> None:
        self.key = key
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            keys = ", ".join(allowed_keys)
            raise _fail(key, raw, f"expected an object with the keys {keys}")
        for sub in raw:
            if sub not in allowed_keys:
                hint = _suggest(sub, allowed_keys)
                raise ConfigError(
                    f'{_key(key)}: unknown key "{sub}"{hint}; known keys: {", ".join(allowed_keys)}'
                )
        self.raw: dict[str, Any] = raw

    def path(self, sub: str) -> str:
        return f"{self.key}.{sub}"

    def integer(self, sub: str, default: int, minimum: int, maximum: int) -> int:
        value = self.raw.get(sub, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not (minimum <= value <= maximum)
        ):
            raise _fail(
                self.path(sub), value, f"expected a whole number from {minimum} to {maximum}"
            )
        return value

    def port(self, sub: str, default: int) -> int:
        return self.integer(sub, default, 1, 65535)

    def string(self, sub: str, default: str | None = None) -> str | None:
        value = self.raw.get(sub, default)
        if value is not None and not isinstance(value, str):
            raise _fail(self.path(sub), value, "expected a string")
        return value

    def required_string(self, sub: str) -> str:
        value = self.string(sub)
        if not value:
            raise ConfigError(f"{_key(self.path(sub))} is required for this provider")
        return value

    def boolean(self, sub: str, default: bool) -> bool:
        value = self.raw.get(sub, default)
        if not isinstance(value, bool):
            raise _fail(self.path(sub), value, "expected true or false")
        return value

    def strings(self, sub: str) -> tuple[str, ...]:
        value = self.raw.get(sub, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _fail(self.path(sub), value, "expected a list of strings")
        return tuple(value)

    def choice(self, sub: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.raw.get(sub, default)
        if value not in choices:
            hint = _suggest(value, choices) if isinstance(value, str) else ""
            raise _fail(self.path(sub), value, f"expected one of {', '.join(choices)}{hint}")
        return cast(str, value)


def _replicas(section: _Section, default: int) -> int:
    return section.integer("replicas", default, 1, MAX_REPLICAS)


def _autoscaling(section: _Section, replicas: int) -> Autoscaling | None:
    """`<service>.autoscaling`: absent (or null) for a fixed count; `replicas` is then the floor.
    The default ceiling is three times the floor, within MAX_AUTOSCALED_REPLICAS."""
    if section.raw.get("autoscaling") is None:
        return None
    scaling = _Section(section.path("autoscaling"), section.raw["autoscaling"], _AUTOSCALING_KEYS)
    if replicas > MAX_AUTOSCALED_REPLICAS:
        raise _fail(
            section.path("replicas"),
            replicas,
            f"under autoscaling, replicas is the floor and the ceiling is at most "
            f"{MAX_AUTOSCALED_REPLICAS}; expected a whole number from 1 to "
            f"{MAX_AUTOSCALED_REPLICAS}",
        )
    default_max = min(MAX_AUTOSCALED_REPLICAS, 3 * replicas)
    maximum = scaling.raw.get("maxReplicas", default_max)
    if (
        isinstance(maximum, bool)
        or not isinstance(maximum, int)
        or not (replicas <= maximum <= MAX_AUTOSCALED_REPLICAS)
    ):
        raise _fail(
            scaling.path("maxReplicas"),
            maximum,
            f"expected a whole number from {section.path('replicas')} ({replicas}, the floor) "
            f"to {MAX_AUTOSCALED_REPLICAS}",
        )
    defaults = Autoscaling(max_replicas=maximum)
    return Autoscaling(
        max_replicas=maximum,
        cpu_utilization=scaling.integer("cpuUtilization", defaults.cpu_utilization, 1, 100),
        scale_down_stabilization_seconds=scaling.integer(
            "scaleDownStabilizationSeconds", defaults.scale_down_stabilization_seconds, 0, 3600
        ),
    )


def _service_type(section: _Section, default: ServiceType) -> ServiceType:
    return cast(ServiceType, section.choice("serviceType", default, SERVICE_TYPES))


def parse_cluster(raw: object) -> ClusterConfig:
    """`mlstack:cluster`, typed: for the program, and for the tools that reach its cluster."""
    if raw is None:
        raise ConfigError(
            f"{_key('cluster')} is required: set {_key('cluster.provider')} to one of "
            f"{', '.join(PROVIDERS)} (no stack silently gets a default cluster)"
        )
    if not isinstance(raw, dict):
        raise _fail("cluster", raw, "expected an object with a provider key")
    provider = _Section("cluster", {"provider": raw.get("provider")}, ("provider",)).choice(
        "provider", "", PROVIDERS
    )
    section = _Section("cluster", raw, _CLUSTER_KEYS[cast(Provider, provider)])
    if provider == "local":
        defaults = LocalCluster()
        return LocalCluster(
            k3s_image=section.string("k3sImage") or defaults.k3s_image,
            registry_image=section.string("registryImage") or defaults.registry_image,
            api_port=section.port("apiPort", defaults.api_port),
            registry_port=section.port("registryPort", defaults.registry_port),
            http_port=section.port("httpPort", defaults.http_port),
        )
    if provider == "existing":
        return ExistingCluster(
            context=section.string("context"), kubeconfig=section.string("kubeconfig")
        )
    if provider == "gke":
        return GkeCluster(
            region=section.required_string("region"),
            project=section.required_string("project"),
            authorized_networks=_parse_authorized_networks(section),
            node_count=section.integer("nodeCount", 3, 1, MAX_REPLICAS),
            machine_type=section.string("machineType") or "e2-standard-4",
            kubernetes_version=_kubernetes_version(section, _GKE_VERSION),
            release_channel=section.choice("releaseChannel", "REGULAR", RELEASE_CHANNELS),
            maintenance_window=_parse_maintenance_window(section),
        )
    return EksCluster(
        region=section.required_string("region"),
        authorized_networks=_parse_authorized_networks(section),
        node_count=section.integer("nodeCount", 3, 1, MAX_REPLICAS),
        instance_type=section.string("instanceType") or "t3.large",
        kubernetes_version=_kubernetes_version(section, _EKS_VERSION),
    )


# A control plane's version as EKS takes it, a minor (1.31), and as GKE does, a minor or a patch
# (1.31.6, 1.31.6-gke.1020000).
_EKS_VERSION = re.compile(r"(\d+)\.(\d+)", re.ASCII)
_GKE_VERSION = re.compile(r"(\d+)\.(\d+)(\.\d+(-gke\.\d+)?)?", re.ASCII)


def _kubernetes_version(section: _Section, form: re.Pattern[str]) -> str | None:
    """`cluster.kubernetesVersion`, when given: a version in `form` from OLDEST_KUBERNETES on,
    the oldest whose APIs the program's objects use (the Pod Security level, the database's
    scale-in policy); an older cluster would fail at them, the control plane already made."""
    version = section.string("kubernetesVersion")
    if version is None:
        return None
    found = form.fullmatch(version)
    oldest = tuple(int(part) for part in OLDEST_KUBERNETES.split("."))
    if found is None or (int(found[1]), int(found[2])) < oldest:
        raise _fail(
            section.path("kubernetesVersion"),
            version,
            f"expected a Kubernetes version from {OLDEST_KUBERNETES} on, such as "
            f"{OLDEST_KUBERNETES} (mlstack's oldest)",
        )
    return version


def _parse_authorized_networks(section: _Section) -> tuple[str, ...]:
    """`cluster.authorizedNetworks`: required of a cloud cluster, so that no control plane is
    open to the internet by default; `[]` is the explicit choice of a private endpoint only."""
    key = section.path("authorizedNetworks")
    if "authorizedNetworks" not in section.raw:
        raise ConfigError(
            f"{_key(key)} is required for this provider: the IPv4 CIDRs allowed to reach "
            "the cluster's API endpoint (your operators' and CI runners' egress ranges), "
            "or [] for a private endpoint reachable from inside the network only"
        )
    networks = _cidrs(
        section,
        "authorizedNetworks",
        ipaddress.IPv4Network,
        "expected IPv4 CIDRs with no host bits set, such as 203.0.113.0/24",
    )
    if len(set(networks)) != len(networks):
        raise _fail(key, list(networks), "expected each CIDR once")
    return networks


def _parse_maintenance_window(section: _Section) -> MaintenanceWindow:
    """`cluster.maintenanceWindow` (gke): GKE wants at least 48 hours of maintenance in any
    32 days, 4 hours at a time; 12 hours a week is the least that always gives that."""
    default = MaintenanceWindow()
    window = _Section(
        section.path("maintenanceWindow"),
        section.raw.get("maintenanceWindow"),
        ("start", "hours", "days"),
    )
    start = window.string("start", default.start)
    if start is None or not _CLOCK.match(start):
        raise _fail(
            window.path("start"), start, "expected a UTC time of day as HH:MM, such as 03:00"
        )
    hours = window.integer("hours", default.hours, 4, 24)
    days = window.strings("days") if "days" in window.raw else default.days
    for day in days:
        if day not in WEEKDAYS:
            hint = _suggest(day, WEEKDAYS)
            raise _fail(window.path("days"), day, f"expected days from {', '.join(WEEKDAYS)}{hint}")
    if not days or len(set(days)) != len(days):
        raise _fail(window.path("days"), list(days), "expected one or more distinct days")
    if hours * len(days) < 12:
        raise _fail(
            window.path("hours"),
            hours,
            f"GKE needs at least 48 hours of maintenance in any 32 days, so at least 12 hours "
            f"a week, and {len(days)} day(s) of {hours} hours is {hours * len(days)}",
        )
    return MaintenanceWindow(start=start, hours=hours, days=days)


# Keys of earlier releases, and what took their place: named, instead of "unknown key". Only a
# stack made before the database ran on Patroni has them, and `pulumi up` does not carry its
# database over: the refusal says so before the key is removed.
_REMOVED_DATABASE_KEYS: Final = {
    "primary": "Patroni chooses the primary and fails over on its own; a planned change of "
    'primary is `make switchover` (README, "High availability")',
    "synchronousCommit": "with more than one instance every commit waits for a synchronous "
    'standby (README, "High availability")',
}


def _refuse_removed_keys(raw: object) -> None:
    if isinstance(raw, dict):
        for key, instead in _REMOVED_DATABASE_KEYS.items():
            if key in raw:
                raise ConfigError(
                    f"{_key('database.' + key)} is no longer a setting: {instead}; remove it "
                    "(the database of a stack made before Patroni is not carried over: "
                    'README, "A stack made before Patroni")'
                )


def _positive_quantity(section: _Section, sub: str, default: str) -> str:
    value = section.raw.get(sub, default)
    match = QUANTITY.match(value) if isinstance(value, str) else None
    if match is None or float(match.group("number")) <= 0:
        raise _fail(
            section.path(sub),
            value,
            "expected a positive Kubernetes quantity such as 1Gi, 500Mi or 10G",
        )
    return cast(str, value)


def _storage_size(section: _Section) -> str:
    """`database.storageSize`: a Kubernetes quantity no less than LEAST_STORAGE_SIZE, the least
    volume half of which holds the WAL PostgreSQL keeps (components/database.py says why)."""
    value = section.raw.get("storageSize", "1Gi")
    least = quantity_bytes(LEAST_STORAGE_SIZE)
    if not isinstance(value, str) or not QUANTITY.match(value) or quantity_bytes(value) < least:
        raise _fail(
            section.path("storageSize"),
            value,
            f"expected a Kubernetes quantity of at least {LEAST_STORAGE_SIZE} ({least} bytes), "
            "such as 1Gi, 20Gi or 10G: the WAL PostgreSQL keeps takes up to half the volume, "
            'and more than half of a smaller one (README, "High availability")',
        )
    return value


def _twice(quantity: str) -> str:
    """Twice a Kubernetes quantity, in its own unit: `1Gi` -> `2Gi`, `1.5G` -> `3G`."""
    match = QUANTITY.match(quantity)
    assert match is not None, quantity
    number = format(Decimal(match.group("number")) * 2, "f")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return f"{number}{match.group('suffix') or ''}"


def parse_database_replicas(raw: object) -> int:
    """`mlstack:database.replicas`, typed: for the tools that scale a stopped database back."""
    return _database_replicas(_Section("database", raw, _OBJECT_KEYS["database"]))


def _database_replicas(section: _Section) -> int:
    return section.integer("replicas", 1, 1, MAX_DATABASE_REPLICAS)


def _parse_database(section: _Section, cluster: ClusterConfig) -> DatabaseConfig:
    replicas = _database_replicas(section)
    size = _storage_size(section)
    storage_class = section.string("storageClass")
    return DatabaseConfig(
        storage_size=size,
        storage_class=storage_class,
        replicas=replicas,
        backup=_backup(section, cluster, size, storage_class),
    )


def _backup(
    section: _Section, cluster: ClusterConfig, storage_size: str, storage_class: str | None
) -> BackupConfig | None:
    """`database.backup`: absent (or null) for none. Its repository: on gke and eks the bucket
    the program creates; on local and existing clusters the S3-compatible endpoint `s3` names,
    or else a volume (`volume`, its defaults when it is not given)."""
    if section.raw.get("backup") is None:
        return None
    backup = _Section(section.path("backup"), section.raw["backup"], _BACKUP_KEYS)
    given = [key for key in ("s3", "volume") if backup.raw.get(key) is not None]
    repository: BackupRepository
    if cluster.provider in ("gke", "eks"):
        if given:
            bucket = "GCS" if cluster.provider == "gke" else "S3"
            raise ConfigError(
                f"{_key(backup.path(given[0]))} is not allowed on a {cluster.provider} "
                f"cluster: the program creates the stack's backup bucket there ({bucket}, reached "
                "with the database pods' own cloud identity, no keys); remove it (s3 and volume "
                'name a repository on local and existing clusters; README, "Backups and restore")'
            )
        repository = CloudBucket()
    elif len(given) > 1:
        raise ConfigError(
            f"{_key(backup.path('s3'))} and {_key(backup.path('volume'))} are both "
            "set: the backups go to one repository; keep one"
        )
    elif given == ["s3"]:
        repository = _s3_repository(backup)
    else:
        repository = _volume_repository(backup, storage_size, storage_class)
    full = backup.integer("fullEveryHours", 24, 1, 24 * 31)
    return BackupConfig(
        repository=repository,
        retention_full=backup.integer("retentionFull", 2, 1, 100),
        full_every_hours=full,
        diff_every_hours=backup.integer("diffEveryHours", min(6, full), 1, full),
    )


def _volume_repository(
    backup: _Section, storage_size: str, storage_class: str | None
) -> VolumeRepository:
    """`database.backup.volume`: by default twice the database's own size (a full backup is
    compressed, and `retentionFull` of them are kept with their WAL), of its StorageClass."""
    volume = _Section(backup.path("volume"), backup.raw.get("volume"), _VOLUME_KEYS)
    own_class = volume.string("storageClass")
    if own_class is not None and not _DNS_SUBDOMAIN.match(own_class):
        raise _fail(volume.path("storageClass"), own_class, "expected a StorageClass name")
    return VolumeRepository(
        size=_positive_quantity(volume, "size", _twice(storage_size)),
        storage_class=own_class or storage_class,
    )


def _s3_repository(backup: _Section) -> S3Repository:
    """`database.backup.s3`: an S3-compatible endpoint the stack names, with the bucket's keys
    as stack secrets."""
    s3 = _Section(backup.path("s3"), backup.raw["s3"], _S3_KEYS)
    endpoint = s3.string("endpoint") or ""
    parsed = urllib.parse.urlsplit(endpoint)
    try:
        # No port: HTTPS's. An explicit :0 is no port at all.
        port = parsed.port if parsed.port is not None else 443
    except ValueError:
        port = 0
    if parsed.scheme != "https" or not parsed.hostname or parsed.path not in ("", "/") or not port:
        raise _fail(
            s3.path("endpoint"),
            endpoint,
            "expected https://host or https://host:port (pgBackRest speaks HTTPS only)",
        )
    for key in ("bucket", "region"):
        if not s3.string(key):
            raise _fail(s3.path(key), s3.raw.get(key), "expected a non-empty string")
    ca = s3.string("caCertificate")
    if ca is not None and "-----BEGIN CERTIFICATE-----" not in ca:
        raise _fail(s3.path("caCertificate"), "<text>", "expected a PEM certificate bundle")
    return S3Repository(
        host=parsed.hostname,
        port=port,
        bucket=cast(str, s3.string("bucket")),
        region=cast(str, s3.string("region")),
        uri_style=s3.choice("uriStyle", "host", ("host", "path")),
        ca_certificate=ca,
    )


def _cidrs(
    section: _Section, name: str, network: Callable[..., object], rule: str
) -> tuple[str, ...]:
    """The list `name` of CIDRs, each parsed by `network` (strict: no host bits set)."""
    cidrs = section.strings(name)
    for cidr in cidrs:
        try:
            network(cidr, strict=True)
        except ValueError:
            raise _fail(section.path(name), cidr, rule) from None
    return cidrs


def _parse_source_ranges(section: _Section, service_type: ServiceType) -> tuple[str, ...]:
    ranges = _cidrs(
        section,
        "sourceRanges",
        ipaddress.ip_network,
        "expected CIDRs with no host bits set, such as 203.0.113.0/24 or 2001:db8::/32",
    )
    if ranges and service_type != "LoadBalancer":
        raise _fail(
            section.path("sourceRanges"),
            list(ranges),
            f"source ranges restrict a LoadBalancer, and gateway.serviceType is {service_type}",
        )
    return ranges


def _pem(raw: Mapping[str, object], key: str, begins: re.Pattern[str], what: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not begins.search(value):
        shown = "missing" if value is None else "not PEM"
        raise ConfigError(
            f"{_key(key)} is {shown}: gateway.tls without a secretName takes the PEM "
            f"{what} from it: `pulumi config set --secret {_key(key)} < file.pem`"
        )
    return value


class _EncryptedKeyError(Exception):
    """OpenSSL asked for the passphrase of an encrypted key, which the gateway is never given."""


def _no_passphrase() -> str:
    raise _EncryptedKeyError


def _certificates_parse(chain: str) -> bool:
    """Whether each certificate in the PEM `chain` parses, read from memory: what tells, once
    the pair has not loaded, whether the certificate is to blame. True when it cannot be told
    so: ssl reads ASCII text alone there, and a chain's file may hold other text between its
    certificates (`openssl x509 -text` writes a certificate's names, in UTF-8, before it)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=chain)
    except ssl.SSLError:
        return False
    except TypeError:
        return True
    return True


# What a client's verification of a certificate finds that makes every client refuse it,
# whoever it trusts (OpenSSL's X509_V_ERR_ codes): its dates, by this machine's clock.
_REFUSED_BY_CLIENTS: Final = {
    9: "is not valid yet (its start date is still to come)",
    10: "has expired",
}
_FIRST_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----", re.ASCII
)


def private_file(path: Path, text: str) -> Path:
    """`text` (UTF-8) in a new file at `path` that only this user may read: for the TLS check
    here, and the tools' kubeconfig (tools/stack.py)."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        out.write(text.encode())
    return path


def _client_refusal(folder: Path, chain: str, key_file: Path) -> str | None:
    """What makes every client refuse the chain's first certificate (_REFUSED_BY_CLIENTS),
    found by a TLS handshake in memory: a server with that certificate alone and its key (in
    `key_file`), a client that trusts that certificate itself (a partial chain). OpenSSL then
    checks that certificate's dates, and neither who issued it nor the rest of the chain, which
    a client may build otherwise (a cross-signed root past its end). None: nothing such, or no
    handshake to tell."""
    first = _FIRST_CERTIFICATE.search(chain)
    if first is None:
        return None
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        leaf = private_file(folder / "leaf.crt", first.group())
        server.load_cert_chain(leaf, key_file, password=_no_passphrase)
    except (OSError, _EncryptedKeyError):  # not the certificate OpenSSL took for the first
        return None
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    client.load_verify_locations(cadata=first.group())
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    ends = (
        client.wrap_bio(to_client, to_server),
        server.wrap_bio(to_server, to_client, server_side=True),
    )
    try:
        # Each turn lets each side read what the other wrote: the client holds the certificate
        # after the second.
        for _ in range(4):
            for end in ends:
                with contextlib.suppress(ssl.SSLWantReadError):
                    end.do_handshake()
    except ssl.SSLCertVerificationError as refused:
        return _REFUSED_BY_CLIENTS.get(refused.verify_code)
    except ssl.SSLError:
        return None
    return None


def _check_tls_pair(certificate: str, private_key: str) -> None:
    """Load the stack's certificate chain and private key as the gateway loads its files at start
    (services/gateway/mlstack_gateway/settings.py `_tls_files`, which calls certificates.py
    `load_pair`): Python's ssl, a server context, no passphrase given, and none asked for (OpenSSL
    would ask on the terminal). A pair the gateway would refuse then stops `pulumi preview`,
    not the gateway's pods, whose rollout `pulumi up` would wait for without end. The program
    cannot import the gateway's package (an image of its own): these few lines are its copy.
    A pair that loads is then served to a client in memory (_client_refusal): a certificate
    that every client would refuse, past its end or before its start, stops the preview too,
    since the gateway would start with it.

    OpenSSL reads a pair from files alone: they are written, as the Secret's stringData gives
    them to the pods (UTF-8), into a folder of the system's temporary one that only this user
    may open (0700, the files 0600), removed as soon as they are read, whatever happens. The
    messages name the keys, never any part of their values."""
    cert_key, key_key = _key("gatewayTlsCert"), _key("gatewayTlsKey")
    stops = "the gateway would stop at start"
    set_cert = f"`pulumi config set --secret {cert_key} < chain.pem`"
    set_key = f"`pulumi config set --secret {key_key} < key.pem`"
    with tempfile.TemporaryDirectory(prefix="mlstack-tls-check-") as temporary:
        folder = Path(temporary)
        files = [
            private_file(folder / name, text)
            for name, text in (("tls.crt", certificate), ("tls.key", private_key))
        ]
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(files[0], files[1], password=_no_passphrase)
        except _EncryptedKeyError:
            raise ConfigError(
                f"{key_key} is encrypted with a passphrase, which the gateway is never given: "
                f"{stops}; set the key without one with {set_key}"
            ) from None
        except OSError as error:  # ssl.SSLError, as the gateway's own check catches it
            if getattr(error, "reason", None) == "KEY_VALUES_MISMATCH":
                raise ConfigError(
                    f"{key_key} is not the private key of the certificate in {cert_key} (the "
                    f"chain's first): {stops}; set the key that belongs to it with {set_key}"
                ) from None
            if not _certificates_parse(certificate):
                raise ConfigError(
                    f"{cert_key} does not load as a PEM certificate chain (a certificate in it "
                    f"does not parse): {stops}; set it with {set_cert}"
                ) from None
            reason = re.sub(r" \(_ssl\.c:\d+\)$", "", error.strerror or "")
            raise ConfigError(
                f"{cert_key} and {key_key} do not load as a certificate chain and its private "
                f"key (OpenSSL: {reason}): {stops}; set them with {set_cert} and {set_key}"
            ) from None
        refusal = _client_refusal(folder, certificate, files[1])
    if refusal is not None:
        raise ConfigError(
            f"the certificate in {cert_key} (the chain's first) {refusal}: clients would refuse "
            f"the gateway's HTTPS; set another with {set_cert}"
        )


def _parse_tls(section: _Section, raw: Mapping[str, object]) -> GatewayTls | None:
    given = [key for key in ("gatewayTlsCert", "gatewayTlsKey") if raw.get(key) is not None]
    if section.raw.get("tls") is None:
        if given:
            raise ConfigError(
                f"{_key(given[0])} is set but {_key(section.path('tls'))} is not: "
                "set gateway.tls: {} to serve HTTPS with it, or remove it"
            )
        return None
    tls = _Section(section.path("tls"), section.raw["tls"], _TLS_KEYS)
    secret_name = tls.string("secretName")
    if secret_name:
        if not _DNS_SUBDOMAIN.match(secret_name):
            raise _fail(tls.path("secretName"), secret_name, "expected a Kubernetes Secret name")
        if given:
            raise ConfigError(
                f"{_key(tls.path('secretName'))} and {_key(given[0])} are both set: "
                "give the certificate either as an existing Secret or as stack secrets, not both"
            )
        return GatewayTls(secret_name=secret_name)
    # The engine gives a stack secret's value to the program in plain text (_read_raw), as it
    # gives any other: the pair is checked as it is, then held as a secret.
    certificate = _pem(raw, "gatewayTlsCert", _PEM_CERTIFICATE, "certificate (chain)")
    private_key = _pem(raw, "gatewayTlsKey", _PEM_PRIVATE_KEY, "private key")
    _check_tls_pair(certificate, private_key)
    return GatewayTls(
        certificate=pulumi.Output.secret(certificate),
        private_key=pulumi.Output.secret(private_key),
    )


def _parse_gateway(
    section: _Section, raw: Mapping[str, object], cluster: ClusterConfig
) -> GatewayConfig:
    service_type = _service_type(section, "LoadBalancer")
    tls = _parse_tls(section, raw)
    if tls is not None and cluster.provider == "local":
        raise _fail(
            section.path("tls"),
            section.raw["tls"],
            "the local cluster publishes the gateway's plain HTTP port only (cluster.httpPort); "
            "use TLS on a cluster with a real load balancer",
        )
    namespaces = section.strings("metricsNamespaces")
    for name in namespaces:
        if not _DNS_LABEL.match(name):
            raise _fail(section.path("metricsNamespaces"), name, "expected a namespace name")
    replicas = _replicas(section, 1)
    return GatewayConfig(
        replicas=replicas,
        service_type=service_type,
        autoscaling=_autoscaling(section, replicas),
        tls=tls,
        source_ranges=_parse_source_ranges(section, service_type),
        metrics_namespaces=namespaces,
        drain_seconds=section.integer("drainSeconds", GATEWAY_DRAIN_SECONDS, 1, 300),
    )


def _parse_model(section: _Section) -> ModelConfig:
    service_type = _service_type(section, "ClusterIP")
    if service_type != "ClusterIP":
        raise _fail(
            section.path("serviceType"),
            service_type,
            "the model is reachable only from the gateway (its NetworkPolicy admits nothing "
            "else), so a Service outside the cluster could never answer; expected ClusterIP",
        )
    replicas = _replicas(section, 1)
    return ModelConfig(
        replicas=replicas,
        service_type=service_type,
        autoscaling=_autoscaling(section, replicas),
        version=section.choice("version", MODEL_VERSIONS[-1], MODEL_VERSIONS),
    )


def _parse_images(section: _Section, cluster: ClusterConfig) -> ImagesConfig:
    build = section.boolean("build", True)
    registry = section.string("registry", "") or ""
    refs = {name: section.string(name, "") or "" for name in ("gateway", "model", "database")}
    for name, ref in refs.items():
        if ref and not _IMAGE_REF.match(ref):
            raise _fail(section.path(name), ref, "expected an image reference without spaces")
        if not build and not ref:
            raise ConfigError(
                f"{_key(section.path(name))} is required when images.build is false: "
                "give the image reference to deploy (tag@sha256:digest in production)"
            )
        if build and ref:
            raise _fail(
                section.path(name),
                ref,
                "a reference is deployed only with images.build: false (with build true, the "
                "program builds the image and deploys that): set images.build: false to deploy "
                "the three references, or remove this one",
            )
    if not build and registry:
        raise _fail(
            section.path("registry"),
            registry,
            "images are pushed to a registry only when they are built (images.build: true); "
            "with build false, each reference names its own registry: remove images.registry",
        )
    if build and not registry and cluster.provider != "local":
        raise _fail(
            section.path("registry"),
            registry,
            f"building images for the {cluster.provider} provider needs a registry to push to "
            "(only the local cluster has one of its own); set images.registry, "
            "or set images.build: false with image references",
        )
    return ImagesConfig(build=build, registry=registry, **refs)


def _label_error(key: str) -> str | None:
    """What is wrong with a label key, or None: an optional DNS-subdomain prefix and `/`, then a
    name of at most 63 characters."""
    prefix, _, name = key.rpartition("/")
    if prefix and not _DNS_SUBDOMAIN.match(prefix):
        return "its prefix (before /) must be a DNS subdomain"
    if not _LABEL_NAME.match(name):
        return (
            "its name must be 1-63 letters, digits, '-', '_' or '.', starting and ending "
            "alphanumeric"
        )
    return None


def _parse_dns(section: _Section) -> DnsPods:
    defaults = DnsPods()
    namespace = section.string("namespace") or defaults.namespace
    if not _DNS_LABEL.match(namespace):
        raise _fail(section.path("namespace"), namespace, "expected a namespace name")
    labels = section.raw.get("podLabels", defaults.labels)
    if not isinstance(labels, dict) or not labels:
        raise _fail(
            section.path("podLabels"),
            labels,
            'expected the labels of the cluster\'s DNS pods, such as {"k8s-app": "kube-dns"} '
            "(at least one: an empty selector would admit every pod of the namespace)",
        )
    for key, value in labels.items():
        problem = _label_error(key)
        if problem is not None:
            raise _fail(section.path("podLabels"), key, f"not a label key: {problem}")
        if not isinstance(value, str) or (value and not _LABEL_NAME.match(value)):
            raise _fail(
                section.path(f"podLabels.{key}"),
                value,
                "expected a label value: at most 63 letters, digits, '-', '_' or '.', "
                "starting and ending alphanumeric",
            )
    return DnsPods(namespace=namespace, labels=dict(labels))


def _check_stack_name(stack: str) -> None:
    """The stack's name is the `app.kubernetes.io/instance` label of every object the program
    makes: Pulumi allows names (up to 100 characters, ending in '-', '_' or '.') that a label
    value does not, which the API server would refuse only partway through `pulumi up`."""
    if not _LABEL_NAME.match(stack):
        raise ConfigError(
            f"stack {stack!r}: its name is the app.kubernetes.io/instance label of every object "
            "the stack makes, so it must be at most 63 letters, digits, '-', '_' or '.', "
            "starting and ending alphanumeric: use another stack name"
        )


# The cloud names a gke or eks stack's resources take from `<project>-<stack>` (its
# qualified_name), to which Pulumi's auto-naming adds 8 characters (`-` and 7 random ones): the
# characters all of them allow, and the longest `<project>-<stack>` that keeps the tightest within
# its cloud's limit. A name beyond them passes a preview and fails `pulumi up` partway.
_CLOUD_NAMES: Final[dict[str, tuple[re.Pattern[str], str, int, str]]] = {
    "gke": (
        re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$"),
        "lower-case letters, digits and '-', from a letter (GKE's and Compute Engine's names)",
        26,
        "the node pool's name, `<project>-<stack>-nodes-` and 7 more, may hold 40",
    ),
    "eks": (
        re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        "lower-case letters, digits and '-' (the backups' S3 bucket takes no capital letter or "
        "'_', the EKS cluster no '.')",
        41,
        "the IAM role of the EBS CSI driver, `<project>-<stack>-ebs-csi-driver-` and 7 more, "
        "may hold 64",
    ),
}


def _check_cloud_names(cluster: ClusterConfig, project: str, stack: str) -> None:
    """A gke or eks stack names its cloud resources after `<project>-<stack>`: refuse, before
    any resource exists, one that would give them names the cloud refuses."""
    if cluster.provider not in _CLOUD_NAMES:
        return
    pattern, characters, longest, why = _CLOUD_NAMES[cluster.provider]
    name = qualified_name(project, stack)
    if not pattern.match(name) or len(name) > longest:
        raise ConfigError(
            f"stack {stack!r} of project {project!r}: on {cluster.provider} its cloud resources "
            f"are named after {name!r}, which must be {characters}, at most {longest} "
            f"characters ({why}): use another stack name"
        )


def _parse_namespace(raw: object, project: str, stack: str) -> str:
    given = raw not in (None, "")
    namespace = raw if given else qualified_name(project, stack)
    if not isinstance(namespace, str) or not _DNS_LABEL.match(namespace):
        raise _fail(
            "namespace",
            namespace,
            "expected a DNS label: lower-case letters, digits and '-', at most 63 characters"
            + ("" if given else f" (the default, {project}-<stack>: set {_key('namespace')})"),
        )
    if namespace == "default" or namespace.startswith("kube-"):
        raise _fail(
            "namespace",
            namespace,
            "it is Kubernetes' own: the program makes the stack's namespace, takes over one that "
            "is there, and `pulumi destroy` deletes it with everything in it",
        )
    return namespace


def _engine_config() -> dict[str, str]:
    """Every key the engine gave the program, in every namespace, by either way it gives config
    (PULUMI_CONFIG, `set_all_config`)."""
    return {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}


def _read_raw() -> dict[str, object]:
    """Every key of the project's namespace the engine gave the program, values decoded from
    JSON but for the string keys (the namespace and the secrets), which are taken as they are."""
    return project_values(_engine_config(), config_namespace(), _STRING_KEYS)


def _refuse_original_namespace() -> None:
    """A copy of mlstack whose project is renamed reads its keys in its own namespace (Pulumi.yaml
    declares its secrets there too): keys still spelled `mlstack:` would be left unread, the
    stack's cluster or protection among them, so they stop the program instead."""
    project = config_namespace()
    if project == ORIGINAL_PROJECT:
        return
    stale = sorted(project_values(_engine_config(), ORIGINAL_PROJECT))
    if stale:
        raise ConfigError(
            f"{ORIGINAL_PROJECT}:{stale[0]}: this project is named {project} (Pulumi.yaml), so "
            f"its config keys are {project}:<key>, where Pulumi puts the keys it declares and "
            f"those set without a namespace: rename the stack's {ORIGINAL_PROJECT}: keys "
            f'({", ".join(stale)}) to {project}: (README, "Copying mlstack")'
        )


def _given_as_secret(key: str) -> bool:
    """Whether the engine gave the project's `key` as a secret (a value the stack keeps
    encrypted), by either way it gives config (those _read_raw reads): `set_all_config`'s secret
    keys, or PULUMI_CONFIG_SECRET_KEYS beside PULUMI_CONFIG. (Its environment may spell a key
    `<namespace>:config:<key>`.)"""
    spellings = (_key(key), _key(f"config:{key}"))
    from_environment = runtime_config.get_config_secret_keys_env()
    return any(
        runtime_config.is_config_secret(name) or name in from_environment for name in spellings
    )


def _refuse_plain_text_secrets(raw: Mapping[str, object]) -> None:
    """A stack secret set in plain text (`pulumi config set` without `--secret`, a value typed
    into the stack file) is in the stack file in the clear, and in the repository once committed.
    The CLI refuses that only for the secrets Pulumi.yaml declares; the others (a rotation's
    previous key, the gateway's certificate and key, a bucket's keys) are refused here. The
    message never shows the value."""
    for key in SECRET_KEYS:
        if key in raw and not _given_as_secret(key):
            raise ConfigError(
                f"{_key(key)} is in plain text in the stack's config, not encrypted: "
                f"set it with `pulumi config set --secret {_key(key)} "
                "<value>` (a password or private key committed in plain text is no secret any "
                "more: replace it)"
            )


def _secret(
    raw: Mapping[str, object],
    key: str,
    stack: str,
    minimum: int = 12,
    origin: str | None = None,
) -> pulumi.Output[str]:
    """The stack secret `key`, at least `minimum` characters long. `origin` says where a missing
    one comes from; by default, for one it generates, `make stack`, which writes them without
    deploying (a `pulumi preview` or `up` run by hand, or in a workflow, needs them too)."""
    value = raw.get(key)
    if not isinstance(value, str) or len(value) < minimum:
        if value is None:
            shown = "missing"
        elif value == "":
            shown = "empty"
        else:
            shown = f"too short (at least {minimum} characters)"
        # `make stack` fills in a missing secret only: one set too short, it keeps.
        if origin is None and key in GENERATED_SECRETS and value is None:
            origin = f"`make stack STACK={stack}` generates one, as `make up` does"
        raise ConfigError(
            f"{_key(key)} is {shown}: set it with "
            f"`pulumi config set --secret {_key(key)} <value>`" + (f" ({origin})" if origin else "")
        )
    return pulumi.Output.secret(value)


def _refused_secret(key: str, problem: str, fix: str = "set it") -> ConfigError:
    """The error that refuses the stack secret `key` for `problem` (what is wrong with it, and
    why), then says how to set it again (`fix`, then the command)."""
    return ConfigError(
        f"{_key(key)} {problem}; {fix} with `pulumi config set --secret {_key(key)} <value>`"
    )


def _refuse_nul(raw: Mapping[str, object], key: str, reader: str) -> None:
    """The secret `key` read by `reader`, whose strings end at a NUL character (U+0000): it would
    use what comes before one, as if that were the whole secret, and say nothing."""
    if "\0" in str(raw[key]):
        raise _refused_secret(
            key,
            f"holds a NUL character (U+0000), where {reader} would cut it short",
            "set it without one",
        )


def _refuse_line_break(raw: Mapping[str, object], key: str, dropped: str, reader: str) -> None:
    """The secret `key`, which `reader` takes from a file of one entry a line: a line break in it
    but among the final characters `dropped` (which the database's containers, or the reader,
    take off) would end the entry there."""
    if any(brk in str(raw[key]).rstrip(dropped) for brk in "\r\n"):
        raise _refused_secret(key, f"holds a line break: {reader}", "set it to one line")


def _database_password(raw: Mapping[str, object], key: str, stack: str) -> pulumi.Output[str]:
    """One of _DATABASE_PASSWORDS: the password of a role, which the database image sets with
    psql (services/database/bin/mlstack-database-roles, roles.sql). A psql variable ends at a NUL
    character: the role would get the part before it, and its client (a URL carries the whole
    value) would be refused at every connection; PostgreSQL's text cannot hold one either.

    Patroni's two (_PATRONI_PASSWORDS) are read from their files without their final line
    breaks (services/database/bin/mlstack-database), and Patroni writes each to its password
    file, one `host:port:db:user:password` entry a line, which libpq reads for a standby's copy
    and stream and for pg_rewind: a line break inside would end the entry early, and libpq drops
    a carriage return at a line's end, so a final `\r` would be sent without it.

    When it makes a cluster (the first start, a restore), Patroni sets them with a statement
    inside a dollar-quoted block, `DO $$ ... $$`, which a `$$` in the password would end: the
    statement fails, and Patroni gives up the new cluster and tries again, at every start."""
    value = _secret(raw, key, stack)
    _refuse_nul(raw, key, "the database's psql")
    if key in _PATRONI_PASSWORDS:
        _refuse_line_break(
            raw, key, "\n", "Patroni writes it to a password file of one entry a line (pgpass)"
        )
        if "$$" in str(raw[key]):
            raise _refused_secret(
                key,
                "holds `$$`: Patroni sets it inside a `DO $$ ... $$` block when it makes the "
                "cluster, which `$$` would end",
                "set it without `$$`",
            )
    return value


def _api_key(raw: Mapping[str, object], key: str, stack: str) -> pulumi.Output[str]:
    """`apiKey` or `apiKeyPrevious`: what clients send as the X-API-Key header, which the gateway
    compares, byte for byte, with its file read without the spaces and line breaks at its ends
    (services/gateway/mlstack_gateway/settings.py). A header cannot carry a control character
    (a line break inside, a NUL: the gateway answers 400), and clients send anything but ASCII
    each their own way (curl UTF-8, Python's http.client Latin-1 or not at all): such a key
    would be refused to some clients or all. A space or tab at either end is no part of a header
    value, and the gateway would not hold the key as the stack does (a key ending in a space,
    sent as it is, is refused 401). Final line breaks, which the gateway drops, are taken.

    `apiKeyPrevious` is the key clients send now, which a rotation replaces: it is held only to
    what no header can carry (a control character), so that a stack whose key was chosen before
    these rules, and works for its clients, can rotate away from it."""
    value = _secret(raw, key, stack)
    text = str(raw[key]).rstrip("\r\n")
    if key == "apiKeyPrevious":
        if _CONTROL.search(text):
            raise _refused_secret(
                key,
                "holds a control character (a line break inside, a NUL), which no X-API-Key "
                "header carries: no client can send it",
            )
    elif not _HEADER_VALUE.fullmatch(text):
        raise _refused_secret(
            key,
            "holds a character that clients cannot all send as it is in the X-API-Key header: "
            "use visible ASCII characters, with spaces or tabs only between them (the key "
            'clients send now stays accepted as apiKeyPrevious meanwhile: README, "Rotating the '
            'API key")',
        )
    return value


def _backup_secret(raw: Mapping[str, object], key: str, stack: str) -> pulumi.Output[str]:
    """One of BACKUP_SECRETS. The bucket's keys are its provider's, as it issued them (of any
    length; MinIO's default one has 10 characters): `make up` cannot generate them.

    pgBackRest reads each from its configuration file, one option a line, which the database's
    containers write at start from the Secret's files, read as text without their final line
    breaks (services/database/bin/mlstack-database, write_backup_secrets): a line break inside
    one stops them at every start, so it stops the program here. pgBackRest's options are C
    strings, which a NUL character ends: refused too. And pgBackRest trims the spaces and tabs
    at both ends of each option it reads from the file: it would encrypt with, or sign with,
    another secret than the stack's (a copy kept outside the stack, given to pgBackRest any
    other way, would not read the backups), so a space or tab at either end is refused."""
    if key in BUCKET_KEYS:
        value = _secret(raw, key, stack, 1, f"{BUCKET_KEYS[key]}, from the bucket's provider")
    else:
        value = _secret(raw, key, stack)
    _refuse_line_break(raw, key, "\r\n", "pgBackRest reads it from a file of one option a line")
    _refuse_nul(raw, key, "pgBackRest")
    line = str(raw[key]).rstrip("\r\n")
    if line != line.strip(" \t"):
        raise _refused_secret(
            key,
            "begins or ends with a space or tab, which pgBackRest drops from the options it "
            "reads from a file: it uses the value without them, not the stack's",
            "set it to that value, without them (the one pgBackRest has used)",
        )
    return value


def _backup_secrets(
    raw: Mapping[str, object], backup: BackupConfig | None, stack: str
) -> dict[str, pulumi.Output[str]]:
    """The encryption key with any backups; the bucket's keys with an S3-compatible endpoint
    alone. Keys given to a stack whose repository takes none are a mistake (left over from an
    endpoint, or meant for the program's own bucket, which is reached without keys): named,
    rather than ignored."""
    endpoint = backup is not None and isinstance(backup.repository, S3Repository)
    for key in BUCKET_KEYS:
        if raw.get(key) is not None and not endpoint:
            raise ConfigError(
                f"{_key(key)} is set but {_key('database.backup.s3')} is not: only an "
                "S3-compatible endpoint the stack names takes keys (the program's own bucket on "
                "gke and eks is reached with the database pods' cloud identity, a volume needs "
                f"none); remove it (`pulumi config rm {_key(key)}`)"
            )
    if backup is None:
        return {}
    needed = BACKUP_SECRETS if endpoint else (BACKUP_CIPHER_SECRET,)
    return {key: _backup_secret(raw, key, stack) for key in needed}


# Where the default AWS provider takes its region from, first found first (pulumi-aws's order):
# the stack's `aws:region`, else these environment variables.
DEFAULT_AWS_REGION_VARIABLES: Final = ("AWS_REGION", "AWS_DEFAULT_REGION")


def _check_default_aws_region(cluster: EksCluster) -> None:
    """An EKS cluster's metrics-server add-on is made with the default AWS provider (the release
    that first made it gave it no other, and a new provider would replace it: see
    components/cluster/eks.py): where that provider is told a region, it must be the cluster's,
    or the add-on is asked for in a region without the cluster. (Told none, it takes the AWS
    profile's, which the program cannot read, or fails saying it has none.)"""
    given = [
        (source, value)
        for source, value in (
            ("aws:region", pulumi.Config("aws").get("region")),
            *((name, os.environ.get(name)) for name in DEFAULT_AWS_REGION_VARIABLES),
        )
        if value
    ]
    if given and given[0][1] != cluster.region:
        source, value = given[0]
        how = (
            f"`pulumi config set aws:region {cluster.region}`"
            if source == "aws:region"
            else f"`export {source}={cluster.region}`"
        )
        raise ConfigError(
            f"{_key('cluster.region')} is {cluster.region} but the default AWS provider's "
            f"region is {value} (from {source}), where the cluster's metrics-server add-on would "
            f"be asked for: {how}"
        )


def load(stack: str | None = None) -> StackConfig:
    """Read and validate every key of the project's namespace; raise `ConfigError` on the first
    mistake."""
    stack = stack or pulumi.get_stack()
    _check_stack_name(stack)
    _refuse_original_namespace()
    raw = _read_raw()
    for key in raw:
        if key not in KNOWN_KEYS:
            raise ConfigError(
                f"{_key(key)}: unknown key{_suggest(key, KNOWN_KEYS)}; "
                f"known keys: {', '.join(KNOWN_KEYS)}"
            )
    _refuse_plain_text_secrets(raw)
    cluster = parse_cluster(raw.get("cluster"))
    project = config_namespace()
    _check_cloud_names(cluster, project, stack)
    if isinstance(cluster, EksCluster):
        _check_default_aws_region(cluster)
    _refuse_removed_keys(raw.get("database"))
    sections = {name: _Section(name, raw.get(name), keys) for name, keys in _OBJECT_KEYS.items()}
    protect = raw.get("protect", False)
    if not isinstance(protect, bool):
        raise _fail("protect", protect, "expected true or false")
    database = _parse_database(sections["database"], cluster)
    namespace = _parse_namespace(raw.get("namespace"), project, stack)
    gateway = _parse_gateway(sections["gateway"], raw, cluster)
    model = _parse_model(sections["model"])
    images = _parse_images(sections["images"], cluster)
    database_password = _database_password(raw, "databasePassword", stack)
    database_owner_password = _database_password(raw, "databaseOwnerPassword", stack)
    replication_password = _database_password(raw, "databaseReplicationPassword", stack)
    rewind_password = _database_password(raw, "databaseRewindPassword", stack)
    backup_secrets = _backup_secrets(raw, database.backup, stack)
    api_key = _api_key(raw, "apiKey", stack)
    secrets_digest_key = _secret(raw, "secretsDigestKey", stack, SECRETS_DIGEST_KEY_CHARACTERS)
    api_key_previous = None
    if raw.get("apiKeyPrevious") is not None:
        api_key_previous = _api_key(raw, "apiKeyPrevious", stack)
        # Compared as the gateway reads them, without the whitespace at their ends (str.strip):
        # two that differ in that alone are one key there, and the gateway refuses to start with
        # it twice.
        if str(raw["apiKeyPrevious"]).strip() == str(raw["apiKey"]).strip():
            raise ConfigError(
                f"{_key('apiKeyPrevious')} is the same as {_key('apiKey')}: during a rotation "
                "apiKey is the new key and apiKeyPrevious the one it replaces; remove "
                f"apiKeyPrevious (`pulumi config rm {_key('apiKeyPrevious')}`) when no "
                "rotation is under way"
            )
    return StackConfig(
        stack=stack,
        project=project,
        cluster=cluster,
        namespace=namespace,
        gateway=gateway,
        model=model,
        database=database,
        images=images,
        protect=protect,
        database_password=database_password,
        api_key=api_key,
        secrets_digest_key=secrets_digest_key,
        api_key_previous=api_key_previous,
        database_owner_password=database_owner_password,
        replication_password=replication_password,
        rewind_password=rewind_password,
        backup_secrets=backup_secrets,
        dns=_parse_dns(sections["dns"]),
    )


def load_or_exit() -> StackConfig:
    """`load()` for the program's entry point: a mistake is logged as one line and the program
    exits with `USER_TOLD_EXIT_CODE`, so the CLI shows that line and nothing else."""
    try:
        return load()
    except ConfigError as error:
        pulumi.log.error(str(error))
        raise SystemExit(USER_TOLD_EXIT_CODE) from None
