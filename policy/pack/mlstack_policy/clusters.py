"""Rules on the cloud clusters' own resources, read from the inputs components/cluster/ sets."""

from __future__ import annotations

from typing import Any, Final

from pulumi_policy import ReportViolation, ResourceValidationArgs

from .kube import dig
from .services import admits_anyone

GKE_CLUSTER: Final = "gcp:container/cluster:Cluster"
GKE_NODE_POOL: Final = "gcp:container/nodePool:NodePool"
# pulumi-eks's components (components/cluster/eks.py) and the AWS resources they, or any other
# code, create.
EKS_COMPONENT: Final = "eks:index:Cluster"
EKS_CLUSTER: Final = "aws:eks/cluster:Cluster"
EKS_MANAGED_NODE_GROUP: Final = "eks:index:ManagedNodeGroup"
EKS_NODE_GROUP: Final = "aws:eks/nodeGroup:NodeGroup"
LAUNCH_TEMPLATE: Final = "aws:ec2/launchTemplate:LaunchTemplate"
# Every API of the project at the node's service account's rights: any pod that reaches the
# metadata server holds them.
SCOPE_PREFIX: Final = "https://www.googleapis.com/auth/"
CLOUD_PLATFORM_SCOPE: Final = f"{SCOPE_PREFIX}cloud-platform"
# The Compute Engine default service account (Editor on the project by default).
DEFAULT_ACCOUNT_SUFFIX: Final = "-compute@developer.gserviceaccount.com"


def _scope(name: str) -> str:
    """A scope by its URL: the provider takes gcloud's short name `cloud-platform` for the
    cloud-platform scope (an unprefixed name is read under SCOPE_PREFIX, as the provider does)."""
    return name if name.startswith("https://") else SCOPE_PREFIX + name


def _node_config_findings(node_config: Any) -> list[str]:
    account = str(dig(node_config, "serviceAccount") or "")
    findings = []
    if account in ("", "default") or account.endswith(DEFAULT_ACCOUNT_SUFFIX):
        findings.append(
            f"nodes run as the Compute Engine default service account ({account or 'unset'})"
        )
    scopes = [_scope(str(scope)) for scope in dig(node_config, "oauthScopes") or ()]
    if CLOUD_PLATFORM_SCOPE in scopes:
        findings.append(f"nodes hold the {CLOUD_PLATFORM_SCOPE} scope")
    return findings


def check_gke_node_identity(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """GKE nodes run as their own service account, not the Compute Engine default, without the
    cloud-platform scope."""
    # A cluster's own nodeConfig describes its default pool, unless that pool is removed.
    keeps_default_pool = dig(args.props, "removeDefaultNodePool") is not True
    if args.resource_type == GKE_NODE_POOL or (
        args.resource_type == GKE_CLUSTER and keeps_default_pool
    ):
        node_config = dig(args.props, "nodeConfig")
    else:
        return
    for finding in _node_config_findings(node_config):
        report(f"{args.name}: {finding}", None)


def _public_pool(pool: Any) -> bool:
    """A node pool that overrides its cluster's private nodes (unset: it takes the cluster's)."""
    return dig(pool, "networkConfig", "enablePrivateNodes") is False


def check_gke_private_nodes(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """GKE nodes have private addresses only: nothing on the internet reaches a kubelet."""
    if args.resource_type == GKE_NODE_POOL:
        if _public_pool(args.props):
            report(f"{args.name}: networkConfig.enablePrivateNodes is false", None)
        return
    if args.resource_type != GKE_CLUSTER:
        return
    if dig(args.props, "privateClusterConfig", "enablePrivateNodes") is not True:
        report(f"{args.name}: privateClusterConfig.enablePrivateNodes is not true", None)
    for pool in dig(args.props, "nodePools") or ():
        if _public_pool(pool):
            named = f"node pool {dig(pool, 'name') or '?'}"
            report(f"{args.name}: {named}: networkConfig.enablePrivateNodes is false", None)


def check_eks_secrets_encryption(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """EKS encrypts Kubernetes Secrets with a KMS key of the stack's."""
    if args.resource_type == EKS_COMPONENT:
        if not dig(args.props, "encryptionConfigKeyArn"):
            report(f"{args.name}: no encryptionConfigKeyArn (Secrets not envelope-encrypted)", None)
    elif args.resource_type == EKS_CLUSTER:
        encryption = dig(args.props, "encryptionConfig")
        if not dig(encryption, "provider", "keyArn") or "secrets" not in list(
            dig(encryption, "resources") or ()
        ):
            report(f"{args.name}: encryptionConfig does not encrypt secrets with a KMS key", None)


def check_eks_imdsv2(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """EKS nodes require IMDSv2 (a launch template with httpTokens required): a pod tricked into
    a plain GET cannot read the node's credentials."""
    if args.resource_type == LAUNCH_TEMPLATE:
        if dig(args.props, "metadataOptions", "httpTokens") != "required":
            report(f"{args.name}: metadataOptions.httpTokens is not required (IMDSv1 open)", None)
    elif args.resource_type in (EKS_MANAGED_NODE_GROUP, EKS_NODE_GROUP) and not dig(
        args.props, "launchTemplate"
    ):
        report(f"{args.name}: no launch template: the nodes get EKS's default, IMDSv1 open", None)


def check_eks_endpoint_access(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """The EKS API's public endpoint is off or limited to listed CIDRs."""
    if args.resource_type == EKS_COMPONENT:
        public = dig(args.props, "endpointPublicAccess")
        cidrs = list(dig(args.props, "publicAccessCidrs") or ())
    elif args.resource_type == EKS_CLUSTER:
        public = dig(args.props, "vpcConfig", "endpointPublicAccess")
        cidrs = list(dig(args.props, "vpcConfig", "publicAccessCidrs") or ())
    else:
        return
    if public is False:
        return
    # Unset means on (AWS's default), and no CIDR list means 0.0.0.0/0.
    if not cidrs or admits_anyone(cidrs):
        report(f"{args.name}: the public API endpoint admits anyone ({cidrs or 'no CIDRs'})", None)
