"""Protection and teardown, under Pulumi's mocks: what `pulumi destroy` would meet on each stack.

The engine refuses to delete a protected resource, and children inherit `protect` from their
parent (the SDK fills it in when a child sets none), so a protected cluster component protects
the whole cluster. On destroy the engine deletes a resource only after everything that depends on
it: a Kubernetes object depends on the provider it is created with, and the provider on the
cluster whose kubeconfig it holds.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from components.cluster.kubeconfig_file import _HostFolderProvider, _KubeconfigFileProvider
from harness.program import ProgramRun, Registered, run_program, stack_config
from tests.unit.runs import single

CLUSTER_COMPONENT = "mlstack:cluster:"
K8S_PROVIDER = "pulumi:providers:kubernetes"


@pytest.fixture(scope="module")
def runs() -> dict[str, ProgramRun]:
    return {stack: run_program(stack) for stack in ("dev", "staging", "prod")}


def cluster_component(run: ProgramRun) -> Registered:
    found = [r for r in run.resources if r.type.startswith(CLUSTER_COMPONENT)]
    assert len(found) == 1, [r.type for r in found]
    return found[0]


def database_volume(run: ProgramRun) -> Registered:
    return run.one("PersistentVolumeClaim", "data-database-0")


def protected(run: ProgramRun) -> set[str]:
    return {f"{r.type}::{r.name}" for r in run.resources if r.protect}


# --- protect -----------------------------------------------------------------------------------


def test_prod_protects_its_cluster_its_database_volumes_and_its_backups(
    runs: dict[str, ProgramRun],
) -> None:
    prod = runs["prod"]
    assert cluster_component(prod).protect
    assert database_volume(prod).protect
    # The cloud's own guard too: GKE refuses to delete the cluster until an `up` lifts it.
    gke = single(prod, "gcp:container/cluster:Cluster")
    assert gke.inputs["deletionProtection"] is True
    # Exactly those are protected explicitly (the cluster, the namespace, every database
    # instance's volume, the backups' bucket); the rest of the cluster inherits it.
    assert protected(prod) == {
        f"{cluster_component(prod).type}::mlstack-prod",
        "kubernetes:core/v1:Namespace::mlstack",
        "kubernetes:core/v1:PersistentVolumeClaim::mlstack-database-data",
        "kubernetes:core/v1:PersistentVolumeClaim::mlstack-database-1-data",
        "kubernetes:core/v1:PersistentVolumeClaim::mlstack-database-2-data",
        "gcp:storage/bucket:Bucket::mlstack-prod-backups",
    }


@pytest.mark.parametrize("stack", ["dev", "staging"])
def test_unprotected_stacks_protect_nothing(runs: dict[str, ProgramRun], stack: str) -> None:
    run = runs[stack]
    assert "mlstack:protect" not in stack_config(stack)
    assert protected(run) == set()
    for cloud_cluster in run.by_type("eks:index:Cluster") + run.by_type(
        "gcp:container/cluster:Cluster"
    ):
        assert cloud_cluster.inputs["deletionProtection"] is False


# What holds the backups, by stack: dev's volume; staging's bucket and the key it is encrypted with.
BACKUPS: dict[str, set[str]] = {
    "dev": {"kubernetes:core/v1:PersistentVolumeClaim::mlstack-database-backups"},
    "staging": {
        "aws:s3/bucket:Bucket::mlstack-staging-backups",
        "aws:kms/key:Key::mlstack-staging-backups",
    },
}


@pytest.mark.parametrize("stack", ["dev", "staging"])
def test_protect_true_in_config_protects_cluster_namespace_volumes_and_backups(stack: str) -> None:
    run = run_program(stack, {**stack_config(stack), "mlstack:protect": True})
    assert cluster_component(run).protect
    assert database_volume(run).protect
    assert BACKUPS[stack] <= protected(run)
    instances = int(stack_config(stack)["mlstack:database"].get("replicas", 1))
    assert "kubernetes:core/v1:Namespace::mlstack" in protected(run)
    assert len(protected(run)) == 2 + instances + len(BACKUPS[stack])


def test_protect_false_unprotects_prod() -> None:
    """The documented way to tear prod down: `mlstack:protect false`, then `up`."""
    run = run_program("prod", {**stack_config("prod"), "mlstack:protect": False})
    assert protected(run) == set()
    gke = single(run, "gcp:container/cluster:Cluster")
    assert gke.inputs["deletionProtection"] is False


# --- teardown order on a cloud cluster ---------------------------------------------------------


def provider_urn_name(reference: str | None) -> str:
    """`mlstack-prod-k8s` for `urn:pulumi:prod::mlstack::...::mlstack-prod-k8s::<id>`."""
    assert reference, "created with the default provider"
    urn, _, _id = reference.rpartition("::")
    return urn.rsplit("::", 1)[-1]


@pytest.mark.parametrize(
    ("stack", "cloud_type", "component_type"),
    [
        ("prod", "gcp:container/cluster:Cluster", "mlstack:cluster:Gke"),
        ("staging", "eks:index:Cluster", "mlstack:cluster:Eks"),
    ],
)
def test_load_balancer_is_deleted_before_the_cluster(
    runs: dict[str, ProgramRun], stack: str, cloud_type: str, component_type: str
) -> None:
    run = runs[stack]
    component = cluster_component(run)
    assert component.type == component_type

    # The gateway's LoadBalancer Service is created with the cluster's provider ...
    gateway = run.one("Service", "gateway")
    assert gateway.inputs["spec"]["type"] == "LoadBalancer"
    provider = single(run, K8S_PROVIDER)
    assert provider_urn_name(gateway.provider) == provider.name
    # ... which is a child of the cluster component (its URN's type chain says so too) ...
    assert provider.parent == component.name
    assert gateway.provider is not None
    assert f"::{component_type}${K8S_PROVIDER}::" in gateway.provider
    # ... and is built from the cloud cluster's outputs, so it depends on that cluster.
    cloud = single(run, cloud_type)
    assert cloud.parent == component.name
    kubeconfig = str(provider.inputs["kubeconfig"])
    if cloud_type.startswith("gcp:"):
        assert "server: https://198.51.100.1" in kubeconfig  # the mock cluster's endpoint
    else:
        assert kubeconfig == '{"apiVersion": "v1", "kind": "Config"}'  # its kubeconfigJson
    assert "kubeconfig" in provider.secret_paths

    # No Kubernetes object escapes that order through a default provider.
    kubernetes = [r for r in run.resources if r.type.startswith("kubernetes:")]
    assert kubernetes
    assert {provider_urn_name(r.provider) for r in kubernetes} == {provider.name}


# --- local: everything is a resource of the stack ----------------------------------------------


def test_local_cluster_leaves_nothing_behind(runs: dict[str, ProgramRun]) -> None:
    dev = runs["dev"]
    component = cluster_component(dev)
    docker = [r for r in dev.resources if r.type.startswith("docker:index/")]
    kinds = sorted(r.type.split(":")[-1] for r in docker if r.parent == component.name)
    assert kinds == [
        "Container",
        "Container",
        "Network",
        "RemoteImage",
        "RemoteImage",
        "Volume",
        "Volume",
    ]

    volumes = {r.inputs["name"] for r in dev.by_type("docker:index/volume:Volume")}
    (folder,) = [
        r
        for r in dev.by_type("pulumi-python:dynamic:Resource")
        if r.name == f"{component.name}-output"
    ]
    assert folder.parent == component.name
    folder_path = Path(folder.inputs["path"])
    assert folder_path == Path.home() / ".mlstack" / component.name

    containers = {r.inputs["name"]: r for r in dev.by_type("docker:index/container:Container")}
    assert set(containers) == {f"{component.name}-k3s", f"{component.name}-registry"}
    for container in containers.values():
        # Every mount is a volume of the stack or the stack's host folder.
        for mount in container.inputs.get("volumes") or []:
            assert mount.get("volumeName") in volumes or mount.get("hostPath") == str(
                folder_path
            ), mount
        networks = {n["name"] for n in container.inputs["networksAdvanced"]}
        assert networks == {r.inputs["name"] for r in dev.by_type("docker:index/network:Network")}
    # k3s's image declares anonymous volumes: they are removed with the container.
    assert containers[f"{component.name}-k3s"].inputs["removeVolumes"] is True
    # The kubeconfig is read once the container is healthy, which it is only once k3s wrote it.
    assert containers[f"{component.name}-k3s"].inputs["wait"] is True

    (kubeconfig,) = [
        r
        for r in dev.by_type("pulumi-python:dynamic:Resource")
        if r.name == f"{component.name}-kubeconfig"
    ]
    assert Path(kubeconfig.inputs["path"]).parent == folder_path


def test_host_folder_is_created_private_and_deleted_with_its_contents(tmp_path: Path) -> None:
    provider = _HostFolderProvider()
    parent = tmp_path / ".mlstack"
    folder = parent / "mlstack-dev"
    other = parent / "mlstack-other"
    props: dict[str, Any] = {"path": str(folder)}

    created = provider.create(props)
    provider.create({"path": str(other)})
    assert created.id == str(folder)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    (folder / "kubeconfig.yaml").write_text("apiVersion: v1\n")

    provider.delete(str(folder), props)
    assert not folder.exists()
    assert parent.is_dir()  # another stack's folder is still there

    provider.delete(str(other), {"path": str(other)})
    assert not parent.exists()  # the last one takes ~/.mlstack with it
    provider.delete(str(folder), props)  # already gone: nothing to do


def test_host_folder_replaced_when_its_path_changes() -> None:
    provider = _HostFolderProvider()
    same = provider.diff("id", {"path": "/a"}, {"path": "/a"})
    moved = provider.diff("id", {"path": "/a"}, {"path": "/b"})
    assert not same.changes
    assert moved.changes
    assert moved.replaces == ["path"]
    assert moved.delete_before_replace


@pytest.mark.parametrize("k3s_api_port", [6443, 7443])
def test_kubeconfig_is_read_with_the_published_api_port(tmp_path: Path, k3s_api_port: int) -> None:
    path = tmp_path / "kubeconfig.yaml"
    path.write_text(
        "clusters:\n- cluster:\n    certificate-authority-data: Q0E=\n"
        f"    server: https://127.0.0.1:{k3s_api_port}\n"
    )
    props = {
        "path": str(path),
        "api_port": 16443,
        "k3s_api_port": k3s_api_port,
        "container_id": "c1",
    }

    created = _KubeconfigFileProvider().create(props)

    assert created.id == str(path)
    assert created.outs is not None
    assert "server: https://127.0.0.1:16443\n" in created.outs["kubeconfig"]


def test_the_kubeconfig_names_the_port_k3s_listens_on_and_the_one_published(
    runs: dict[str, ProgramRun],
) -> None:
    run = runs["dev"]
    (kubeconfig,) = [r for r in run.resources if r.name.endswith("-kubeconfig")]
    (server,) = [
        r for r in run.by_type("docker:index/container:Container") if r.name.endswith("-k3s")
    ]
    published = [
        p for p in server.inputs["ports"] if p["external"] == kubeconfig.inputs["api_port"]
    ]
    assert [p["internal"] for p in published] == [kubeconfig.inputs["k3s_api_port"]]


def test_a_kubeconfig_recorded_without_the_k3s_port_is_kept(tmp_path: Path) -> None:
    """A replacement deletes the file, which k3s does not write again for the same container."""
    olds = {"path": "/k", "api_port": 16443, "container_id": "c1"}
    kept = _KubeconfigFileProvider().diff("/k", olds, {**olds, "k3s_api_port": 6443})
    assert not kept.changes


@pytest.mark.parametrize("text", [None, "apiVersion: v1\n"])
def test_a_missing_kubeconfig_fails_the_create_at_once(tmp_path: Path, text: str | None) -> None:
    path = tmp_path / "kubeconfig.yaml"
    if text is not None:
        path.write_text(text)
    props = {"path": str(path), "api_port": 16443, "k3s_api_port": 6443, "container_id": "c1"}
    with pytest.raises(RuntimeError, match="holds no kubeconfig"):
        _KubeconfigFileProvider().create(props)
