"""`eks`: an EKS cluster (the pulumi-eks component) with an EKS managed node group."""

from __future__ import annotations

import json
from typing import Final

import pulumi

from components.cluster.base import Cluster
from components.config import EksCluster

# What every EKS worker node's role needs: join the cluster, run the VPC CNI, pull from ECR.
NODE_POLICIES: Final = (
    "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
    "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
)


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

        def in_region() -> pulumi.ResourceOptions:
            # A fresh object each time: the SDK adjusts the options it is given.
            return pulumi.ResourceOptions(parent=self, providers={"aws": region})

        node_role = aws.iam.Role(
            f"{name}-nodes",
            assume_role_policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "ec2.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                }
            ),
            opts=in_region(),
        )
        for index, policy in enumerate(NODE_POLICIES):
            aws.iam.RolePolicyAttachment(
                f"{name}-nodes-{index}", role=node_role.name, policy_arn=policy, opts=in_region()
            )
        cluster = eks.Cluster(
            name,
            version=config.kubernetes_version,
            # The managed node group below replaces the default (launch-configuration) group.
            skip_default_node_group=True,
            instance_roles=[node_role],
            # The VPC CNI enforces NetworkPolicies only with its policy agent switched on.
            vpc_cni_options={"enable_network_policy": True},
            deletion_protection=bool(opts and opts.protect),
            opts=in_region(),
        )
        nodes = eks.ManagedNodeGroup(
            f"{name}-nodes",
            cluster=cluster,
            node_role=node_role,
            instance_types=[config.instance_type],
            scaling_config={
                "desired_size": config.node_count,
                "min_size": config.node_count,
                "max_size": config.node_count,
            },
            opts=in_region(),
        )
        # The application waits for the nodes, and is deleted before them.
        self._finish(cluster.kubeconfig_json, depends_on=[nodes])
