"""`eks`: an EKS cluster (the pulumi-eks component) with an EKS managed node group.

Hardened as AWS's EKS best practices have it: Secrets are envelope-encrypted with a KMS key of the
stack's own (rotated yearly); the nodes answer only IMDSv2, one hop away, so a pod cannot take
the node role's credentials; the control plane logs its API calls, audit trail and
authentications; its public endpoint admits the stack's `cluster.authorizedNetworks` alone, and
the nodes reach it through the private one. Its IAM OIDC provider lets a Kubernetes
ServiceAccount act as an IAM role of its own (IAM roles for service accounts), so no pod needs a
key or the node's role: the database's backups reach their bucket that way.
"""

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
# The control-plane logs that answer "who did what": every request, the audit trail, and who
# authenticated as whom (controllerManager and scheduler logs are for debugging the control plane).
CONTROL_PLANE_LOGS: Final = ("api", "audit", "authenticator")
# The Kubernetes Metrics API (`v1beta1.metrics.k8s.io`) that HorizontalPodAutoscalers read: EKS,
# unlike GKE and k3s, has no metrics-server of its own, so the cluster gets the EKS add-on
# (pulumi-eks's Addon, which takes the cluster itself).
METRICS_SERVER_ADDON: Final = "metrics-server"
# IMDSv2 only, and a response that survives one hop: the node itself reads it, a pod (one more
# hop, through its own network namespace) gets nothing.
NODE_METADATA_OPTIONS: Final = {
    "http_endpoint": "enabled",
    "http_tokens": "required",
    "http_put_response_hop_limit": 1,
}


class EksManagedCluster(Cluster):
    # The AWS provider of the cluster's region: the stack's other AWS resources use it too.
    aws_provider: pulumi.ProviderResource
    # The cluster's IAM OIDC provider, and its issuer (the URL without `https://`), which a
    # role's trust policy names to admit one ServiceAccount of the cluster.
    oidc_provider_arn: pulumi.Output[str]
    oidc_issuer: pulumi.Output[str]

    def __init__(
        self, name: str, config: EksCluster, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlstack:cluster:Eks", name, None, opts)
        import pulumi_aws as aws
        import pulumi_eks as eks

        region = aws.Provider(
            f"{name}-aws", region=config.region, opts=pulumi.ResourceOptions(parent=self)
        )

        in_region = pulumi.ResourceOptions(parent=self, providers={"aws": region})

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
            opts=in_region,
        )
        for index, policy in enumerate(NODE_POLICIES):
            aws.iam.RolePolicyAttachment(
                f"{name}-nodes-{index}", role=node_role.name, policy_arn=policy, opts=in_region
            )
        secrets_key = aws.kms.Key(
            f"{name}-secrets",
            description=f"Envelope encryption of the Kubernetes Secrets of EKS cluster {name}",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            opts=in_region,
        )
        # The managed node group takes the metadata options from a launch template of ours.
        launch_template = aws.ec2.LaunchTemplate(
            f"{name}-nodes",
            metadata_options=NODE_METADATA_OPTIONS,
            update_default_version=True,
            opts=in_region,
        )
        networks = list(config.authorized_networks)
        cluster = eks.Cluster(
            name,
            version=config.kubernetes_version,
            encryption_config_key_arn=secrets_key.arn,
            enabled_cluster_log_types=list(CONTROL_PLANE_LOGS),
            endpoint_private_access=True,
            # No authorized network: the public endpoint is off, the API is reached from the
            # VPC (a bastion, a VPN, a self-hosted runner).
            endpoint_public_access=bool(networks),
            public_access_cidrs=networks or None,
            # The managed node group below replaces the default (launch-configuration) group.
            skip_default_node_group=True,
            instance_roles=[node_role],
            # The VPC CNI enforces NetworkPolicies only with its policy agent switched on.
            vpc_cni_options={"enable_network_policy": True},
            # IAM roles for service accounts: pods get a role of their own, never a key.
            create_oidc_provider=True,
            deletion_protection=bool(opts and opts.protect),
            opts=in_region,
        )
        nodes = eks.ManagedNodeGroup(
            f"{name}-nodes",
            cluster=cluster,
            node_role=node_role,
            instance_types=[config.instance_type],
            launch_template={
                "id": launch_template.id,
                "version": launch_template.latest_version.apply(str),
            },
            scaling_config={
                "desired_size": config.node_count,
                "min_size": config.node_count,
                "max_size": config.node_count,
            },
            opts=in_region,
        )
        # metrics-server runs on the nodes: the add-on is created once they have joined. In the
        # cluster's region as every part of it: the component makes its AWS resource with the
        # provider it is given, the default one (the environment's region) without.
        metrics = eks.Addon(
            f"{name}-metrics-server",
            cluster=cluster,
            addon_name=METRICS_SERVER_ADDON,
            opts=pulumi.ResourceOptions(parent=self, providers={"aws": region}, depends_on=[nodes]),
        )
        self.aws_provider = region
        self.oidc_provider_arn = cluster.oidc_provider_arn
        self.oidc_issuer = cluster.oidc_issuer
        # The application waits for the nodes and the Metrics API, and is deleted before them.
        self._finish(cluster.kubeconfig_json, depends_on=[nodes, metrics])
