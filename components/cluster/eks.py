"""`eks`: an EKS cluster (the pulumi-eks component) with an EKS managed node group.

Hardened as AWS's EKS best practices have it: Secrets are envelope-encrypted with a KMS key of the
stack's own (rotated yearly); the nodes answer only IMDSv2, one hop away, so a pod cannot take
the node role's credentials; the control plane logs its API calls, audit trail and
authentications; its public endpoint admits the stack's `cluster.authorizedNetworks` alone, and
the nodes reach it through the private one. Its IAM OIDC provider lets a Kubernetes
ServiceAccount act as an IAM role of its own (IAM roles for service accounts), so no pod needs a
key or the node's role: the database's backups reach their bucket that way, and the EBS CSI
driver (an add-on) makes the database's volumes so. The cluster's default StorageClass is the
program's own (`STORAGE_CLASS`): gp3 volumes encrypted at rest with the account's EBS key, which
grow in place; the application waits for it, and a destroy deletes it after the claims.
"""

from __future__ import annotations

import json
from typing import Final

import pulumi
import pulumi_kubernetes as k8s

from components.cluster.base import Cluster
from components.config import EksCluster
from components.labels import APP, labels

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
# The EBS CSI driver: EKS provisions EBS volumes through it alone (the in-tree provisioner is gone
# since Kubernetes 1.23), and from 1.30 marks no StorageClass the default. Its controller acts as
# a role of its own, with AWS's policy for the driver: a pod cannot reach the nodes' role. The
# add-on's own default class (`ebs-csi-default-sc`, which asks for no encryption) is turned off
# in so many words, whatever a version of the add-on makes by default. (A cluster first made
# before 1.30 has `gp2` marked default too: a claim that names no class gets the newest default,
# STORAGE_CLASS.)
EBS_CSI_ADDON: Final = "aws-ebs-csi-driver"
EBS_CSI_CONFIGURATION: Final = {"defaultStorageClass": {"enabled": False}}
EBS_CSI_SERVICE_ACCOUNT: Final = ("kube-system", "ebs-csi-controller-sa")
EBS_CSI_POLICY: Final = "arn:aws:iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy"
# The cluster's default StorageClass, the program's own, so that a claim that names no class (the
# database's, without `database.storageClass`) gets a volume whatever the AWS account's settings:
# gp3, encrypted at rest (not only where the account encrypts new volumes by default), growing in
# place when `database.storageSize` grows, and made in the zone of the node its first pod is
# scheduled on. No `kmsKeyId`: the account's EBS key, `aws/ebs`, whose key policy lets any
# principal of the account use it through EC2: the driver's role, under AWS's policy alone,
# included. (An account that made a key of its own its EBS default must grant the driver's role
# the KMS permissions below on it: README, "Configuration".) The stack's Secrets key is not
# reused: the driver's role would need KMS permissions on it (CreateGrant, Decrypt,
# GenerateDataKeyWithoutPlaintext: AWS's policy has none), on a key whose one use is the API
# server's, and it is deleted with the cluster, which a volume or snapshot it encrypted may outlive.
STORAGE_CLASS: Final = "ebs-gp3-encrypted"
EBS_PROVISIONER: Final = "ebs.csi.aws.com"
STORAGE_CLASS_PARAMETERS: Final = {"type": "gp3", "encrypted": "true"}
DEFAULT_CLASS_ANNOTATION: Final = "storageclass.kubernetes.io/is-default-class"
# IMDSv2 only, and a response that survives one hop: the node itself reads it, a pod (one more
# hop, through its own network namespace) gets nothing.
NODE_METADATA_OPTIONS: Final = {
    "http_endpoint": "enabled",
    "http_tokens": "required",
    "http_put_response_hop_limit": 1,
}


def trust_policy(provider_arn: str, issuer: str, namespace: str, account: str) -> str:
    """Only `account` of `namespace`, with a token the cluster issued for STS, may assume the
    role."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Federated": provider_arn},
                    "Action": "sts:AssumeRoleWithWebIdentity",
                    "Condition": {
                        "StringEquals": {
                            f"{issuer}:sub": f"system:serviceaccount:{namespace}:{account}",
                            f"{issuer}:aud": "sts.amazonaws.com",
                        }
                    },
                }
            ],
        }
    )


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
            # EKS upgrades no node group with its control plane, and pulumi-eks gives a group
            # with a launch template of ours no version: the nodes take the control plane's
            # `kubernetesVersion` (after it: the group waits for the cluster), and a new one
            # replaces them one at a time, each drained first. Without one, EKS makes them at
            # the control plane's version.
            version=config.kubernetes_version,
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
        # metrics-server runs on the nodes: the add-on is created once they have joined. The
        # component makes its AWS resource with the provider it is given: this one, unlike every
        # other part of the cluster, with none, so the default provider, as the release that first
        # made it did. The engine replaces a resource whose provider changes, and a second
        # metrics-server add-on cannot be made beside the first: giving it `region` would break
        # the next `up` of every running stack. The default provider is held to the cluster's
        # region instead (components/config.py, _check_default_aws_region).
        metrics = eks.Addon(
            f"{name}-metrics-server",
            cluster=cluster,
            addon_name=METRICS_SERVER_ADDON,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[nodes]),
        )
        driver_role = aws.iam.Role(
            f"{name}-ebs-csi-driver",
            description=f"The EBS CSI driver's controller of EKS cluster {name}",
            assume_role_policy=pulumi.Output.all(
                cluster.oidc_provider_arn, cluster.oidc_issuer
            ).apply(lambda found: trust_policy(found[0], found[1], *EBS_CSI_SERVICE_ACCOUNT)),
            opts=in_region,
        )
        driver_grant = aws.iam.RolePolicyAttachment(
            f"{name}-ebs-csi-driver",
            role=driver_role.name,
            policy_arn=EBS_CSI_POLICY,
            opts=in_region,
        )
        # The driver's controller runs on the nodes, with its role's grant.
        volumes = eks.Addon(
            f"{name}-ebs-csi-driver",
            cluster=cluster,
            addon_name=EBS_CSI_ADDON,
            service_account_role_arn=driver_role.arn,
            configuration_values=EBS_CSI_CONFIGURATION,
            opts=pulumi.ResourceOptions(
                parent=self, providers={"aws": region}, depends_on=[nodes, driver_grant]
            ),
        )
        self.aws_provider = region
        self.oidc_provider_arn = cluster.oidc_provider_arn
        self.oidc_issuer = cluster.oidc_issuer
        # The application waits for the nodes, the Metrics API and the volumes' driver, and is
        # deleted before them.
        self._finish(cluster.kubeconfig_json, depends_on=[nodes, metrics, volumes])
        # Made through the provider, it cannot be one of the provider's own dependencies: the
        # application's objects wait for it instead (and its claims are deleted before it).
        self.prerequisites = (self._default_storage_class(name),)

    def _default_storage_class(self, name: str) -> k8s.storage.v1.StorageClass:
        """STORAGE_CLASS, the cluster's default."""
        return k8s.storage.v1.StorageClass(
            f"{name}-{STORAGE_CLASS}",
            metadata={
                "name": STORAGE_CLASS,
                "labels": labels(APP, pulumi.get_stack()),
                "annotations": {DEFAULT_CLASS_ANNOTATION: "true"},
            },
            provisioner=EBS_PROVISIONER,
            parameters=STORAGE_CLASS_PARAMETERS,
            allow_volume_expansion=True,
            # A volume is made in the zone of the node its pod is scheduled on: EBS volumes are
            # zonal, and the instances spread over zones.
            volume_binding_mode="WaitForFirstConsumer",
            # A claim's volume goes with the claim: the claims are protected where the stack
            # protects its data (`protect`).
            reclaim_policy="Delete",
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider),
        )
