"""The cluster an mlstack stack deploys onto, chosen by `mlstack:cluster.provider`.

Every kind yields one `kubernetes.Provider` that all application resources use. The cloud kinds
import their Pulumi packages only when chosen, so a laptop never needs them installed.
"""

from __future__ import annotations

import pulumi

from components.cluster.base import Cluster
from components.config import (
    EksCluster,
    ExistingCluster,
    GkeCluster,
    LocalCluster,
    StackConfig,
)

__all__ = ["Cluster", "create_cluster"]


def create_cluster(config: StackConfig) -> Cluster:
    # The cluster's resources, and the cloud's names made from theirs, are the stack's in a cloud
    # account or on a machine that other stacks, of other projects too, share.
    name = config.qualified_name
    # Protecting the cluster protects everything on it: a stray `destroy` stops at once.
    opts = pulumi.ResourceOptions(protect=config.protect)
    cluster = config.cluster
    if isinstance(cluster, LocalCluster):
        from components.cluster.local import LocalK3sCluster

        return LocalK3sCluster(name, cluster, opts)
    if isinstance(cluster, ExistingCluster):
        from components.cluster.existing import ExistingKubeconfigCluster

        return ExistingKubeconfigCluster(name, cluster, opts)
    if isinstance(cluster, GkeCluster):
        from components.cluster.gke import GkeStandardCluster

        return GkeStandardCluster(name, cluster, opts)
    if isinstance(cluster, EksCluster):
        from components.cluster.eks import EksManagedCluster

        return EksManagedCluster(name, cluster, opts)
    raise AssertionError(f"unhandled cluster provider {cluster!r}")
