"""`eks`: an EKS cluster with a managed node group, built with the pulumi-eks component."""

from __future__ import annotations

import pulumi

from components.cluster.base import Cluster
from components.config import EksCluster


class EksManagedCluster(Cluster):
    def __init__(
        self, name: str, config: EksCluster, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlstack:cluster:Eks", name, None, opts)
        import pulumi_aws as aws
        import pulumi_eks as eks

        region = aws.Provider(
            f"{name}-aws", region=config.region, opts=pulumi.ResourceOptions(parent=self)
        )
        cluster = eks.Cluster(
            name,
            version=config.kubernetes_version,
            instance_type=config.instance_type,
            desired_capacity=config.node_count,
            min_size=config.node_count,
            max_size=config.node_count,
            # The VPC CNI enforces NetworkPolicies only with its policy agent switched on.
            vpc_cni_options={"enable_network_policy": True},
            deletion_protection=bool(opts and opts.protect),
            opts=pulumi.ResourceOptions(parent=self, providers={"aws": region}),
        )
        self._finish(cluster.kubeconfig_json)
