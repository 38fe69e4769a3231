"""Pod and container settings shared by every workload: the Pod Security Standard `restricted`
profile, resource sizes, a writable /tmp on a read-only root, and secrets mounted as files."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypedDict

import pulumi
import pulumi_kubernetes as k8s

# Every image of the stack runs as this numeric, unprivileged user (see services/**/Dockerfile).
RUN_AS_USER: Final = 10001
SECRETS_DIR: Final = "/etc/mlstack/secrets"
SECRETS_VOLUME: Final = "secrets"
# The pod template annotation that carries a keyed digest of the secrets the pods read.
SECRETS_CHECKSUM: Final = "mlstack/secrets-hmac-sha256"
TMP_VOLUME: Final = "tmp"


@dataclass(frozen=True)
class Resources:
    cpu_request: str
    memory_request: str
    cpu_limit: str
    memory_limit: str
    # Container logs and writable layers count too: a container that fills the node's disk is
    # evicted at its own limit instead of starving the node.
    ephemeral_storage_request: str = "64Mi"
    ephemeral_storage_limit: str = "256Mi"

    def spec(self) -> k8s.core.v1.ResourceRequirementsArgsDict:
        return {
            "requests": {
                "cpu": self.cpu_request,
                "memory": self.memory_request,
                "ephemeral-storage": self.ephemeral_storage_request,
            },
            "limits": {
                "cpu": self.cpu_limit,
                "memory": self.memory_limit,
                "ephemeral-storage": self.ephemeral_storage_limit,
            },
        }


class _Identity(TypedDict):
    run_as_non_root: bool
    run_as_user: int
    run_as_group: int
    seccomp_profile: k8s.core.v1.SeccompProfileArgsDict


def _identity() -> _Identity:
    """Who runs, and under which system-call filter: the same on the pod and on each of its
    containers."""
    return {
        "run_as_non_root": True,
        "run_as_user": RUN_AS_USER,
        "run_as_group": RUN_AS_USER,
        "seccomp_profile": {"type": "RuntimeDefault"},
    }


def pod_security_context() -> k8s.core.v1.PodSecurityContextArgsDict:
    return {**_identity(), "fs_group": RUN_AS_USER}


def container_security_context() -> k8s.core.v1.SecurityContextArgsDict:
    return {
        **_identity(),
        "allow_privilege_escalation": False,
        "read_only_root_filesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def service_account(
    resource_name: str,
    metadata: k8s.meta.v1.ObjectMetaArgsDict,
    opts: pulumi.ResourceOptions,
) -> k8s.core.v1.ServiceAccount:
    """A workload's own ServiceAccount that mounts no API token: the app's pods never call the
    Kubernetes API (the database's pods, which Patroni needs it in, ask for it in their spec)."""
    return k8s.core.v1.ServiceAccount(
        resource_name, metadata=metadata, automount_service_account_token=False, opts=opts
    )


def pull_policy(image: pulumi.Input[str]) -> pulumi.Output[str]:
    """`IfNotPresent` for an image pinned by digest (a node's cached copy is the same bytes);
    `Always` for a tag, so that every node resolves the tag at the registry (and re-checks the
    pull credentials) instead of running whichever build of it that node happened to cache."""
    return pulumi.Output.from_input(image).apply(
        lambda found: "IfNotPresent" if "@sha256:" in found else "Always"
    )


def tmp_volume(name: str = TMP_VOLUME) -> k8s.core.v1.VolumeArgsDict:
    return {"name": name, "empty_dir": {"size_limit": "64Mi"}}


def secrets_volume(secret_name: str, name: str = SECRETS_VOLUME) -> k8s.core.v1.VolumeArgsDict:
    # Mode 0440 with the pod's fsGroup: readable by the app user only.
    return {
        "name": name,
        "secret": {"secret_name": secret_name, "default_mode": 0o440},
    }


def mounts(
    *,
    secrets: bool,
    tmp: str = TMP_VOLUME,
    extra: tuple[k8s.core.v1.VolumeMountArgsDict, ...] = (),
) -> list[k8s.core.v1.VolumeMountArgsDict]:
    """/tmp from the volume `tmp`, the stack's secrets when `secrets`, then `extra`."""
    found: list[k8s.core.v1.VolumeMountArgsDict] = [{"name": tmp, "mount_path": "/tmp"}]
    if secrets:
        found.append({"name": SECRETS_VOLUME, "mount_path": SECRETS_DIR, "read_only": True})
    return [*found, *extra]


def _text(values: Mapping[str, str]) -> bytes:
    return "\0".join(f"{key}={values[key]}" for key in sorted(values)).encode()


def checksum(values: Mapping[str, pulumi.Input[str]]) -> pulumi.Output[str]:
    """A digest of values that are not secret (scripts, configuration files) for a pod
    template: it changes with any of them, so that pods which read them at start are rolled."""
    return pulumi.Output.all(**values).apply(lambda found: hashlib.sha256(_text(found)).hexdigest())


def secrets_checksum(
    values: Mapping[str, pulumi.Input[str]], key: pulumi.Input[str]
) -> pulumi.Output[str]:
    """A digest of secret values for a pod template, keyed: HMAC-SHA256 under `key` (the stack
    secret `secretsDigestKey`, which no object in the cluster holds). It changes with any value,
    so that the pods which read them at start are rolled, and stays the same while none does;
    without the key, a guess at a value cannot be checked against it (a plain hash of weak
    values could be, by anyone allowed to read the pod templates)."""

    def digest(found: list[Any]) -> str:
        digest_key, resolved = found
        return hmac.new(str(digest_key).encode(), _text(resolved), hashlib.sha256).hexdigest()

    # Not marked secret: a secret anywhere in a Deployment's spec would make its whole spec
    # output secret, and with it the gateway Service's selector and URL.
    return pulumi.Output.unsecret(
        pulumi.Output.all(pulumi.Output.from_input(key), pulumi.Output.all(**values)).apply(digest)
    )


def spread(
    match: Mapping[str, str], *, zones: bool
) -> list[k8s.core.v1.TopologySpreadConstraintArgsDict]:
    """Pods spread over nodes and, where the cluster has zones (`zones`), over zones; a
    constraint that cannot be met never refuses to schedule."""
    keys = ["kubernetes.io/hostname", *(["topology.kubernetes.io/zone"] if zones else [])]
    return [
        {
            "max_skew": 1,
            "topology_key": key,
            "when_unsatisfiable": "ScheduleAnyway",
            "label_selector": {"match_labels": dict(match)},
        }
        for key in keys
    ]


def secret_file(key: str) -> str:
    """Where the secret `key` appears inside a container that mounts the stack's secrets."""
    return f"{SECRETS_DIR}/{key}"
