"""`local`: a k3s server in Docker plus a local image registry, all with pulumi-docker.

The registry listens on 127.0.0.1:<registryPort> for pushes from the user's machine; k3s pulls
the same `localhost:<registryPort>/...` references through a mirror that points at the registry
container on their shared network. k3s's built-in ServiceLB gives LoadBalancer Services an
address on the node, whose port 80 is published on 127.0.0.1:<httpPort>.
"""

from __future__ import annotations

from pathlib import Path

import pulumi

from components.cluster.base import Cluster
from components.cluster.kubeconfig_file import HostFolder, KubeconfigFile
from components.config import LocalCluster
from components.labels import PART_OF, PART_OF_LABEL

K3S_API_PORT = 6443
REGISTRY_PORT = 5000


def registries_yaml(registry_port: int, registry_host: str) -> str:
    """k3s's registry mirror configuration for the stack's local registry."""
    return (
        "mirrors:\n"
        f'  "localhost:{registry_port}":\n'
        "    endpoint:\n"
        f'      - "http://{registry_host}:{REGISTRY_PORT}"\n'
    )


class LocalK3sCluster(Cluster):
    def __init__(
        self, name: str, config: LocalCluster, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlstack:cluster:LocalK3s", name, None, opts)
        import pulumi_docker as docker

        child = pulumi.ResourceOptions(parent=self)
        labels = [docker.ContainerLabelArgs(label=PART_OF_LABEL, value=PART_OF)]
        network = docker.Network(name, name=name, opts=child)
        registry_image = docker.RemoteImage(
            f"{name}-registry", name=config.registry_image, keep_locally=True, opts=child
        )
        k3s_image = docker.RemoteImage(
            f"{name}-k3s", name=config.k3s_image, keep_locally=True, opts=child
        )
        registry_data = docker.Volume(f"{name}-registry-data", name=f"{name}-registry", opts=child)
        k3s_data = docker.Volume(f"{name}-k3s-data", name=f"{name}-k3s", opts=child)

        registry_host = f"{name}-registry"
        registry = docker.Container(
            f"{name}-registry",
            name=registry_host,
            image=registry_image.image_id,
            restart="unless-stopped",
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=network.name)],
            ports=[
                docker.ContainerPortArgs(
                    internal=REGISTRY_PORT, external=config.registry_port, ip="127.0.0.1"
                )
            ],
            volumes=[
                docker.ContainerVolumeArgs(
                    volume_name=registry_data.name, container_path="/var/lib/registry"
                )
            ],
            labels=labels,
            opts=child,
        )

        # k3s writes its kubeconfig here on the user's machine; KubeconfigFile reads it. The folder
        # is created by the user before the container mounts it, and deleted on destroy.
        output_dir = Path.home() / ".mlstack" / name
        output = HostFolder(f"{name}-output", path=str(output_dir), opts=child)
        server = docker.Container(
            f"{name}-k3s",
            name=f"{name}-k3s",
            image=k3s_image.image_id,
            privileged=True,
            restart="unless-stopped",
            command=[
                "server",
                "--disable=traefik",
                "--tls-san=127.0.0.1",
                "--write-kubeconfig-mode=644",
                "--write-kubeconfig=/output/kubeconfig.yaml",
            ],
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=network.name)],
            ports=[
                docker.ContainerPortArgs(
                    internal=K3S_API_PORT, external=config.api_port, ip="127.0.0.1"
                ),
                docker.ContainerPortArgs(internal=80, external=config.http_port, ip="127.0.0.1"),
            ],
            volumes=[
                docker.ContainerVolumeArgs(
                    volume_name=k3s_data.name, container_path="/var/lib/rancher/k3s"
                ),
                docker.ContainerVolumeArgs(host_path=output.path, container_path="/output"),
            ],
            # The k3s image declares anonymous volumes (/var/lib/kubelet, /var/lib/cni, /var/log):
            # they go with the container.
            remove_volumes=True,
            uploads=[
                docker.ContainerUploadArgs(
                    file="/etc/rancher/k3s/registries.yaml",
                    content=registries_yaml(config.registry_port, registry_host),
                )
            ],
            tmpfs={"/run": "", "/var/run": ""},
            # Healthy also means the kubeconfig is written, which KubeconfigFile relies on.
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=["CMD", "kubectl", "get", "--raw=/readyz"],
                interval="5s",
                timeout="5s",
                retries=36,
                start_period="10s",
            ),
            wait=True,
            wait_timeout=240,
            labels=labels,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[registry]),
        )
        kubeconfig = KubeconfigFile(
            f"{name}-kubeconfig",
            path=str(output_dir / "kubeconfig.yaml"),
            api_port=config.api_port,
            k3s_api_port=K3S_API_PORT,
            container_id=server.id,
            opts=child,
        )
        # Pushes go to the published port; the registry container must be up first.
        self.image_registry = registry.id.apply(lambda _: f"localhost:{config.registry_port}")
        self.local_gateway_url = pulumi.Output.from_input(f"http://localhost:{config.http_port}")
        # The cluster's state is in the k3s volume: a container replaced for a new k3s image or
        # port keeps it, and its objects are updated, not replaced (which would fail: they are
        # still there). A new volume is a new cluster.
        self._finish(kubeconfig.kubeconfig, cluster_identifier=k3s_data.name)
